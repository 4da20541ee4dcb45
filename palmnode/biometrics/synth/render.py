"""Render a capture: warp the cached skin into the frame, light it, add the sensor.

Per frame only cheap OpenCV work is done: polygon fill + blur for the soft silhouette, one remap
of the skin canvas, a coarse illumination field, noise from a pre-drawn bank, JPEG round trip.
"""
from __future__ import annotations

import functools
import math

import attrs
import cv2
import numpy as np

from .capture import Capture
from .identity import Identity
from .pose import CaptureTruth, Pose, canvas_map, make_pose, silhouette_polygons, truth
from .skin import channel_canvases

LIGHTINGS = ("nir", "surface", "dark")

#: NIR-lit palm grey at exposure 1 before fall-off; measured palm median ~107 (docs/synthetic-hands.md)
PALM_LEVEL = 118.0
#: the hand outline: a step blurred over ~6 px (10–90 %) → Gaussian sigma ≈ 6 / 2.56
EDGE_SIGMA = 2.0
READ_NOISE = 0.9         # grey levels, dark sensor
SHOT_NOISE = 0.02        # variance per grey level of signal
DOME = 0.25              # the palm bulges toward the light: its centre is brightest
TILT_SHADE = 0.5         # relative brightness change per palm width at sin(tilt) = 1
DARK_OFFSET = 1.5        # the empty scene is a little brighter when the LEDs light the housing


@attrs.frozen(eq=False)
class Scene:
    """The lighting-independent part of one capture, shared by the channels of a pair."""

    pose: Pose
    mask: np.ndarray        # float32 0..1 soft silhouette
    map_x: np.ndarray
    map_y: np.ndarray
    light: np.ndarray       # float32: palm grey per pixel for reflectance 1 (exposure included)
    background: np.ndarray  # float32 grey of the empty lit scene
    dark_level: float


def _fill(polys: list[np.ndarray], size: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Union of polygons (frame coords × ``scale``) as a uint8 0/255 image, anti-aliased."""
    w, h = size
    img = np.zeros((h, w), np.uint8)
    for p in polys:
        q = np.round(((p + 0.5) * scale - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(img, [q], 255, cv2.LINE_AA, 4)
    return img


def scene(identity: Identity, capture: Capture, width: int = 640, height: int = 480) -> Scene:
    pose = make_pose(identity, capture, width, height)
    polys = silhouette_polygons(pose)
    mask = cv2.GaussianBlur(_fill(polys, (width, height)), (0, 0), EDGE_SIGMA)
    mask = mask.astype(np.float32) * (1 / 255)
    mx, my, q = canvas_map(pose)
    mx, my = cv2.convertMaps(mx, my, cv2.CV_16SC2)  # fixed-point maps remap faster
    lh, lw = q.shape[:2]
    step = width / lw
    # coarse light field: LED cone around the optical axis, darker toward the hand's edges
    # (the skin turns away from camera and light), and the arm falling away beyond the wrist
    coarse = _fill(polys, (lw, lh), 1.0 / step).astype(np.float32) * (1 / 255)
    inner = cv2.GaussianBlur(coarse, (0, 0), 0.25 * pose.palm_px / step)
    ys, xs = np.mgrid[0:lh, 0:lw].astype(np.float32)
    xs = (xs + 0.5) * step - width / 2
    ys = (ys + 0.5) * (height / lh) - height / 2
    r2 = (xs * xs + ys * ys) / (0.25 * (width * width + height * height))
    cone = 1.0 - 0.28 * r2
    edge = 0.5 + 0.5 * np.clip(inner / 0.9, 0, 1)
    # the palm is a shallow dome toward the camera: brightest at its centre
    c = pose.matrix[:, 2]
    r2p = ((xs + width / 2 - c[0]) ** 2 + (ys + height / 2 - c[1]) ** 2) / (pose.palm_px ** 2)
    dome = (1.0 - DOME) + DOME * np.exp(-r2p / (2 * 0.45 ** 2))
    wrist = 0.5 * pose.model.palm_length
    arm = np.exp(-np.clip(q[..., 1] - wrist - 0.1, 0, None) / 1.6)
    exposure = capture.exposure * (identity.habit(capture.session).exposure if capture.habitual else 1.0)
    habit = identity.habit(capture.session)
    # a tilted palm has one side nearer the LEDs: a gentle brightness gradient across it
    t = math.radians(capture.tilt_dir_deg)
    lean = 1.0 + TILT_SHADE * math.sin(math.radians(capture.tilt_deg)) * (
        (math.cos(t) * (xs + width / 2 - c[0]) + math.sin(t) * (ys + height / 2 - c[1])) / pose.palm_px)
    light = (PALM_LEVEL * exposure) * cone * edge * dome * arm * np.clip(lean, 0.7, 1.3)
    # the empty scene: black level plus a faint, smooth stray-light gradient
    g = np.random.default_rng([capture.noise_seed & 0xFFFFFFFF, 5]).normal(0, 0.6, 3)
    bg = habit.background + g[0] * xs / width * 2 + g[1] * ys / height * 2 + g[2] * (r2 - 0.3)
    both = cv2.resize(np.dstack([light, bg]).astype(np.float32), (width, height),
                      interpolation=cv2.INTER_LINEAR)
    return Scene(pose=pose, mask=mask, map_x=mx, map_y=my, light=np.ascontiguousarray(both[..., 0]),
                 background=np.ascontiguousarray(both[..., 1]),
                 dark_level=habit.background - DARK_OFFSET)


@functools.lru_cache(maxsize=4)
def _noise_bank(width: int, height: int) -> np.ndarray:
    return np.random.default_rng(20240611).standard_normal((2 * height, 2 * width), np.float32)


def _noise(capture: Capture, width: int, height: int, stream: int) -> np.ndarray:
    bank = _noise_bank(width, height)
    r = np.random.default_rng([capture.noise_seed & 0xFFFFFFFF, 3, stream])
    oy, ox = int(r.integers(height)), int(r.integers(width))
    n = bank[oy:oy + height, ox:ox + width]
    return n[::-1] if r.random() < 0.5 else n


def _glare(frame: np.ndarray, capture: Capture, s: Scene, t: CaptureTruth) -> None:
    """A housing reflection: a bright soft streak along the border the arm crosses, beside it."""
    h, w = frame.shape
    r = np.random.default_rng([capture.glare_seed & 0xFFFFFFFF, 9])
    wx, wy = t.wrist
    ux, uy = -t.up[0], -t.up[1]
    horizontal = t.border in ("top", "bottom")
    # where the arm crosses the border
    if horizontal:
        edge_y = 0.0 if t.border == "top" else h - 1.0
        k = (edge_y - wy) / uy if uy else 0.0
        cx = wx + k * ux
        cx += r.choice([-1, 1]) * (0.45 * s.pose.palm_px + r.uniform(10, 70))
        cy = edge_y + (1 if t.border == "top" else -1) * r.uniform(0.01, 0.08) * h
        sa, sb = r.uniform(15, 40), r.uniform(5, 12)
    else:
        edge_x = 0.0 if t.border == "left" else w - 1.0
        k = (edge_x - wx) / ux if ux else 0.0
        cy = wy + k * uy
        cy += r.choice([-1, 1]) * (0.45 * s.pose.palm_px + r.uniform(10, 70))
        cx = edge_x + (1 if t.border == "left" else -1) * r.uniform(0.01, 0.08) * w
        sb, sa = r.uniform(15, 40), r.uniform(5, 12)
        sa, sb = sb, sa
    sx, sy = (sa, sb) if horizontal else (sb, sa)
    x0, x1 = int(max(0, cx - 3 * sx)), int(min(w, cx + 3 * sx + 1))
    y0, y1 = int(max(0, cy - 3 * sy)), int(min(h, cy + 3 * sy + 1))
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    blob = np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2)) * (capture.glare * 1.6)
    frame[y0:y1, x0:x1] += np.minimum(blob, capture.glare)


def _motion_blur(frame: np.ndarray, length: float, angle_deg: float) -> np.ndarray:
    k = int(math.ceil(length)) | 1
    kernel = np.zeros((k, k), np.float32)
    c = k // 2
    dx, dy = math.cos(math.radians(angle_deg)) * length / 2, math.sin(math.radians(angle_deg)) * length / 2
    cv2.line(kernel, (round((c - dx) * 16), round((c - dy) * 16)), (round((c + dx) * 16), round((c + dy) * 16)),
             1.0, 1, cv2.LINE_AA, 4)
    kernel /= kernel.sum()
    return cv2.filter2D(frame, -1, kernel, borderType=cv2.BORDER_REFLECT)


def _sensor(frame: np.ndarray, capture: Capture, stream: int) -> np.ndarray:
    h, w = frame.shape
    sigma = cv2.sqrt(np.maximum(frame, 0) * SHOT_NOISE + READ_NOISE ** 2) * capture.noise
    frame += sigma * _noise(capture, w, h, stream)
    frame += 0.5
    np.clip(frame, 0, 255, out=frame)
    out = frame.astype(np.uint8)
    if capture.jpeg_quality:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(capture.jpeg_quality)])
        out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out


def _lit(s: Scene, reflect: np.ndarray, capture: Capture, t: CaptureTruth | None,
         stream: int) -> np.ndarray:
    frame = s.light * reflect
    frame -= s.background
    frame *= s.mask
    frame += s.background
    if capture.glare > 0 and t is not None:
        _glare(frame, capture, s, t)
    if capture.motion_blur_px >= 1.5:
        frame = _motion_blur(frame, capture.motion_blur_px, capture.motion_blur_deg)
    return _sensor(frame, capture, stream)


def _check(lighting: str) -> None:
    if lighting not in LIGHTINGS:
        raise ValueError(f"lighting must be one of {LIGHTINGS}, got {lighting!r}")


def render(identity: Identity, capture: Capture, lighting: str = "nir", *, width: int = 640,
           height: int = 480) -> np.ndarray:
    """One 8-bit grey frame (height × width) of ``identity`` in ``capture`` under ``lighting``:
    "nir" (veins strong, lines weak), "surface" (lines and creases, no veins) or "dark"."""
    _check(lighting)
    if lighting == "dark":
        habit = identity.habit(capture.session)
        frame = np.full((height, width), habit.background - DARK_OFFSET, np.float32)
        return _sensor(frame, capture, LIGHTINGS.index(lighting))
    s = scene(identity, capture, width, height)
    canvas = channel_canvases(identity, capture.session)
    reflect = cv2.remap(canvas[0 if lighting == "nir" else 1], s.map_x, s.map_y,
                        cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return _lit(s, reflect, capture, truth(s.pose, identity.hand), LIGHTINGS.index(lighting))


def render_pair(identity: Identity, capture: Capture, *, width: int = 640,
                height: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """(nir, surface) frames of the same pose, as the gate captures them back to back."""
    s = scene(identity, capture, width, height)
    canvas = channel_canvases(identity, capture.session)
    nir, surface = (cv2.remap(c, s.map_x, s.map_y, cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101) for c in canvas)
    t = truth(s.pose, identity.hand)
    return _lit(s, nir, capture, t, 0), _lit(s, surface, capture, t, 1)


def capture_truth(identity: Identity, capture: Capture, *, width: int = 640,
                  height: int = 480) -> CaptureTruth:
    """Where the palm, its valleys and fingertips are in the frame, and which hand it is."""
    return truth(make_pose(identity, capture, width, height), identity.hand)


def hand_mask(identity: Identity, capture: Capture, *, width: int = 640,
              height: int = 480) -> np.ndarray:
    """The soft silhouette (float32 0..1) of the hand in the frame, before the sensor."""
    pose = make_pose(identity, capture, width, height)
    mask = cv2.GaussianBlur(_fill(silhouette_polygons(pose), (width, height)), (0, 0), EDGE_SIGMA)
    return mask.astype(np.float32) * (1 / 255)
