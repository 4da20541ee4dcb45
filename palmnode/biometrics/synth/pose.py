"""Where the hand is in the frame: silhouette polygons, the frame→skin map, and ground truth.

Chain (forward): palm units (canonical right palm, fingers at their mid pose) → finger rotations
about their bases → small smooth bend → mirror (left hand), scale, rotation, translation → frame.
The silhouette is drawn forward as polygons (exact valleys); the skin is sampled backward through
a map computed on a 4× coarser grid and interpolated (the map is smooth except between fingers,
where the silhouette hides it).
"""
from __future__ import annotations

import functools
import math

import attrs
import numpy as np

from .capture import Capture
from .identity import HandShape, Identity

#: palm width in pixels at scale 1 for a 480-row frame (hand covers ~30% of a 640×480 frame)
NOMINAL_PALM_PX = 223.0
NOMINAL_HEIGHT = 480.0
#: skin canvas: pixels per palm unit and the palm-unit window it covers
CANVAS_PX = 224.0
CANVAS_X0, CANVAS_Y0 = -1.35, -1.85
CANVAS_W, CANVAS_H = 2.7, 3.15
ARM_LENGTH = 6.0           # palm units beyond the wrist: always leaves the frame
MAP_STEP = 8               # coarse grid step of the frame→skin map (exact for the palm: affine)
BORDERS = ("top", "right", "bottom", "left")


def canvas_size() -> tuple[int, int]:
    return int(round(CANVAS_W * CANVAS_PX)), int(round(CANVAS_H * CANVAS_PX))


def _closed_spline(points: np.ndarray, per_segment: int = 8) -> np.ndarray:
    """Catmull-Rom curve through ``points`` (closed)."""
    p = np.asarray(points, np.float64)
    p0, p1, p2, p3 = np.roll(p, 1, 0), p, np.roll(p, -1, 0), np.roll(p, -2, 0)
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None, None]
    out = 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                 + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3)
    return out.transpose(1, 0, 2).reshape(-1, 2)


def direction(angle_deg: float) -> np.ndarray:
    """Unit vector of a finger at ``angle_deg`` (0 = up, + toward the thumb side, +x)."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a), -math.cos(a)])


@attrs.frozen(eq=False)
class HandModel:
    """The canonical hand of one shape (palm units, right palm)."""

    palm: np.ndarray                 # closed outline of palm + wrist + arm
    bases: np.ndarray                # (5, 2): little, ring, middle, index, thumb pivots
    lengths: np.ndarray              # (5,)
    widths: np.ndarray               # (5,)
    valleys: np.ndarray              # (3, 2): index–middle, middle–ring, ring–little
    thumb_valley: np.ndarray         # (2,)
    canonical_deg: np.ndarray        # (5,): finger angles at which the skin canvas is drawn
    palm_length: float


def top_edge_y(shape: HandShape, x: float | np.ndarray) -> float | np.ndarray:
    """y of the palm's upper edge (the finger bases); lower toward the little finger."""
    L = shape.palm_length
    return -0.5 * L + shape.top_slope * L * np.clip((0.36 - x) / 0.72, 0.0, 1.2)


@functools.lru_cache(maxsize=4096)
def hand_model(shape: HandShape) -> HandModel:
    L, ww = shape.palm_length, shape.wrist_width / 2
    bx = np.array(shape.finger_base_x)
    fw = np.array(shape.finger_width)
    top = lambda x: float(top_edge_y(shape, x))  # noqa: E731
    # valleys: midway between adjacent fingers' facing sides, on the top edge
    vx = [(bx[i] + fw[i] / 2 + bx[i + 1] - fw[i + 1] / 2) / 2 for i in range(3)]  # little-ring, ...
    valley_lr, valley_mr, valley_im = ((x, top(x) + 0.015) for x in vx)
    thumb_valley = (0.49, -0.22 * L)
    ctrl = [
        (-ww - 0.08, 0.5 * L + 0.5), (-ww - 0.02, 0.5 * L + 0.08), (-0.45, 0.34 * L), (-0.49, 0.12 * L),
        (-0.50, -0.14 * L), (-0.47, top(-0.47) + 0.13), (bx[0], top(bx[0]) - 0.01), valley_lr,
        (bx[1], top(bx[1]) - 0.01), valley_mr, (bx[2], top(bx[2]) - 0.01), valley_im,
        (bx[3], top(bx[3]) - 0.01), (0.46, top(0.46) + 0.09), thumb_valley,
        (0.53, 0.0 * L), (0.54, 0.2 * L), (ww + 0.06, 0.42 * L), (ww + 0.03, 0.5 * L + 0.08),
        (ww + 0.08, 0.5 * L + 0.5),
    ]
    palm = _closed_spline(np.array(ctrl), 8)
    # the spline's closing segment runs across the forearm; replace it by the arm leaving the frame
    # the forearm slopes down toward the camera, so it widens on the way out of the frame
    d = np.array([0.8, 1.2, 1.7, 2.3, 3.0, 4.0, ARM_LENGTH])
    half = ww + 0.08 + 0.11 * (d - 0.5)
    arm = np.vstack([np.stack([half, 0.5 * L + d], 1), np.stack([-half, 0.5 * L + d], 1)[::-1]])
    palm = np.vstack([palm[:len(palm) - 7], arm])
    bases = np.array([(bx[i], top(bx[i]) + 0.02) for i in range(4)] + [(0.30, 0.12 * L)])
    lengths = np.array(list(shape.finger_length) + [shape.thumb_length])
    widths = np.array(list(shape.finger_width) + [shape.thumb_width])
    canonical = (np.array(shape.together_deg) + np.array(shape.spread_deg)) / 2
    return HandModel(palm=palm, bases=bases, lengths=lengths, widths=widths,
                     valleys=np.array([valley_im, valley_mr, valley_lr]),
                     thumb_valley=np.array(thumb_valley), canonical_deg=canonical,
                     palm_length=L)


def finger_axis(base: np.ndarray, angle_deg: float, length: float, curve: float,
                t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points at ``t`` along a finger's (slightly curved) axis, and the local direction."""
    u = direction(angle_deg)
    n = np.array([-u[1], u[0]])
    f = np.clip(t / length, 0, None)
    pts = base + t[:, None] * u + (curve * length * f ** 2)[:, None] * n
    d = u + (2 * curve * f)[:, None] * n
    return pts, d / np.linalg.norm(d, axis=1, keepdims=True)


def finger_polygon(base: np.ndarray, angle_deg: float, length: float, width: float,
                   *, curve: float = 0.0, thumb: bool = False) -> np.ndarray:
    """Outline of one finger (palm units): from inside the palm to a rounded tip."""
    start = -0.12 if not thumb else -0.2
    t = np.concatenate([np.linspace(start, 0.0, 3)[:-1],
                        np.linspace(0.0, length - width * 0.42, 12)])
    frac = np.clip(t / length, 0, 1)
    half = width / 2 * (1.0 - 0.16 * frac + 0.03 * np.sin(frac * math.pi * 3) ** 2)
    if thumb:  # the thenar eminence: a broad base narrowing to the thumb
        half = half * (1.0 + 0.55 * np.clip(1 - frac / 0.45, 0, 1) ** 2)
    else:  # the sides curve in toward the web between fingers: the valley is a rounded notch
        half = half * (0.8 + 0.2 * np.clip(t / (0.6 * width), 0, 1) ** 0.5)
    axis, d = finger_axis(base, angle_deg, length, curve, t)
    n = np.stack([-d[:, 1], d[:, 0]], 1)  # to the finger's right (toward +x when pointing up)
    left = axis - half[:, None] * n
    right = (axis + half[:, None] * n)[::-1]
    a = np.linspace(math.pi, 0, 9)[1:-1]
    tip = axis[-1] + half[-1] * (np.cos(a)[:, None] * n[-1] + np.sin(a)[:, None] * d[-1])
    return np.vstack([left, tip, right])


def fingertip(model: "HandModel", pose: "Pose", i: int) -> np.ndarray:
    pts, _ = finger_axis(model.bases[i], pose.angles_deg[i], pose.lengths[i], pose.curves[i],
                         np.array([pose.lengths[i]]))
    return pts[0]


@attrs.frozen(eq=False)
class Pose:
    """A hand placed in a frame (all the geometry of one capture)."""

    model: HandModel
    angles_deg: np.ndarray       # (5,) posed finger angles
    lengths: np.ndarray          # (5,) visible finger lengths (curled fingers look shorter)
    curves: np.ndarray           # (5,) sideways curvature of each finger (tip offset / length)
    matrix: np.ndarray           # 2×3: palm units → frame pixels
    inverse: np.ndarray          # 2×3: frame pixels → palm units
    palm_px: float               # palm width in frame pixels
    bend_k: np.ndarray           # (3, 2) wave vectors of the bend field
    bend_phase: np.ndarray       # (3,)
    bend_amp: np.ndarray         # (3, 2)
    rotation_deg: float
    scale: float
    mirror: bool
    wrist_deg: float
    width: int
    height: int

    def bend(self, q: np.ndarray) -> np.ndarray:
        """Displacement (palm units) at points ``q`` (..., 2)."""
        phase = q @ self.bend_k.T + self.bend_phase  # (..., 3)
        return np.sin(phase) @ self.bend_amp

    def to_frame(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float64)
        q = q + self.bend(q)
        return q @ self.matrix[:, :2].T + self.matrix[:, 2]


def make_pose(identity: Identity, capture: Capture, width: int, height: int) -> Pose:
    shape = identity.shape
    model = hand_model(shape)
    rot, scale, shift, spread = capture.rotation_deg, capture.scale, capture.shift, capture.spread
    if capture.habitual:
        habit = identity.habit(capture.session)
        rot += habit.rotation_deg
        scale *= habit.scale
        shift = (shift[0] + habit.shift[0], shift[1] + habit.shift[1])
        spread += habit.spread
    spread = float(np.clip(spread, 0.0, 1.0))
    r = np.random.default_rng([capture.pose_seed & 0xFFFFFFFF, 17])
    together, wide = np.array(shape.together_deg), np.array(shape.spread_deg)
    angles = together + spread * (wide - together) + r.normal(0, 1.5, 5)
    curl = np.clip(np.abs(r.normal(0, 0.06, 5)) + r.uniform(0, 0.04), 0, 0.2)  # fingers half-relaxed
    lengths = model.lengths * (1 - curl)
    # fingers lean a little toward the middle finger, more when held together
    curves = np.array([0.025, 0.012, 0.0, -0.015, 0.0]) * (1.3 - spread) + r.normal(0, 0.012, 5)
    # bend: three smooth waves, wavelengths 1–2.5 palm widths, total amplitude ~capture.bend
    lam = r.uniform(1.0, 2.5, 3)
    th = r.uniform(0, 2 * math.pi, 3)
    k = np.stack([np.cos(th), np.sin(th)], 1) * (2 * math.pi / lam)[:, None]
    phase = r.uniform(0, 2 * math.pi, 3)
    amp_dir = r.uniform(0, 2 * math.pi, 3)
    amp = np.stack([np.cos(amp_dir), np.sin(amp_dir)], 1) * (capture.bend / math.sqrt(3))

    px = NOMINAL_PALM_PX * shape.size * scale * (height / NOMINAL_HEIGHT)
    a = math.radians(rot)
    c, s = math.cos(a), math.sin(a)
    rmat = np.array([[c, s], [-s, c]])  # counterclockwise on screen (y down)
    mirror = identity.hand == "left"
    lin = px * rmat @ (np.diag([-1.0, 1.0]) if mirror else np.eye(2))
    if capture.tilt_deg:  # out-of-plane tilt: the palm is foreshortened along the tilt direction
        t = math.radians(capture.tilt_dir_deg)
        d = np.array([math.cos(t), math.sin(t)])
        lin = (np.eye(2) - (1 - math.cos(math.radians(capture.tilt_deg))) * np.outer(d, d)) @ lin
    # fit: centre the wrist-to-fingertip span on the frame, pushed toward the arm if it is too long
    up = rmat @ np.array([0.0, -1.0])
    L = shape.palm_length
    tip = (-model.bases[2, 1] + model.lengths[2] + 0.05) * px
    back = (0.5 * L + 0.3) * px
    centre = np.array([width / 2.0, height / 2.0])
    with np.errstate(divide="ignore"):
        reach = min(width / 2.0 / abs(up[0]) if up[0] else math.inf,
                    height / 2.0 / abs(up[1]) if up[1] else math.inf)
    half = (tip + back) / 2 + 0.02 * height
    palm_c = centre + up * (back - tip) / 2 - up * max(0.0, half - reach)
    palm_c = palm_c + np.array(shift) * height
    matrix = np.hstack([lin, palm_c[:, None]])
    inv_lin = np.linalg.inv(lin)
    inverse = np.hstack([inv_lin, (-inv_lin @ palm_c)[:, None]])
    return Pose(model=model, angles_deg=angles, lengths=lengths, curves=curves, matrix=matrix, inverse=inverse, palm_px=px,
                bend_k=k, bend_phase=phase, bend_amp=amp, rotation_deg=float(rot),
                scale=float(scale), mirror=mirror, wrist_deg=float(capture.wrist_deg), width=width,
                height=height)


def silhouette_polygons(pose: Pose) -> list[np.ndarray]:
    """The hand's parts (palm+arm, four fingers, thumb) as frame-coordinate polygons."""
    m = pose.model
    palm = m.palm
    if pose.wrist_deg:  # the forearm is seldom in line with the hand: bend it at the wrist
        pivot = np.array([0.0, 0.5 * m.palm_length])
        d = palm - pivot
        a = np.radians(pose.wrist_deg) * np.clip((d[:, 1] - 0.1) / 1.2, 0, 1) ** 1.5
        c, s = np.cos(a), np.sin(a)
        palm = pivot + np.stack([d[:, 0] * c - d[:, 1] * s, d[:, 0] * s + d[:, 1] * c], 1)
    parts = [palm]
    for i in range(5):
        parts.append(finger_polygon(m.bases[i], pose.angles_deg[i], pose.lengths[i], m.widths[i],
                                    curve=pose.curves[i], thumb=i == 4))
    return [pose.to_frame(p) for p in parts]


def skin_coordinates(pose: Pose, xy: np.ndarray) -> np.ndarray:
    """Frame points (..., 2) → canonical palm units (the skin canvas's frame of reference)."""
    q = xy @ pose.inverse[:, :2].T + pose.inverse[:, 2]
    q = q - pose.bend(q)  # first-order inverse of a small smooth field
    m = pose.model
    shape = q.shape
    q = q.reshape(-1, 2)
    # only points beyond the palm's upper edge or out on the thumb side can belong to a finger
    cand = np.nonzero((q[:, 1] < m.bases[:4, 1].max() + 0.05) | (q[:, 0] > 0.25))[0]
    out = q.copy()
    qa = q
    q = q[cand]
    # each point beyond a finger's base follows the nearest finger (lateral distance), blending
    # in over the first 0.12 palm units so the palm itself never moves
    best = np.full(q.shape[:-1], -1, np.int8)
    best_lat = np.full(q.shape[:-1], 0.15)
    weight = np.zeros(q.shape[:-1])
    for i in range(5):
        u = direction(pose.angles_deg[i])
        d = q - m.bases[i]
        t = d @ u
        lat = np.abs(d[..., 0] * -u[1] + d[..., 1] * u[0]) - m.widths[i] / 2
        w = np.clip((t - (0.06 if i == 4 else -0.02)) / 0.12, 0.0, 1.0)
        take = (w > 0) & (lat < best_lat)
        best[take] = i
        best_lat[take] = lat[take]
        weight[take] = w[take]
    for i in range(5):
        sel = best == i
        if not sel.any():
            continue
        delta = math.radians(m.canonical_deg[i] - pose.angles_deg[i])
        c, s = math.cos(delta), math.sin(delta)
        d = q[sel] - m.bases[i]
        moved = m.bases[i] + d @ np.array([[c, -s], [s, c]]).T
        out[cand[sel]] = q[sel] + weight[sel][:, None] * (moved - q[sel])
    del qa
    return out.reshape(shape)


def canvas_map(pose: Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-resolution (map_x, map_y) into the skin canvas, and the coarse canonical (x, y) grid."""
    w, h = pose.width, pose.height
    lw, lh = -(-w // MAP_STEP), -(-h // MAP_STEP)
    gx = (np.arange(lw) + 0.5) * (w / lw) - 0.5
    gy = (np.arange(lh) + 0.5) * (h / lh) - 0.5
    xy = np.stack(np.meshgrid(gx, gy), -1)
    q = skin_coordinates(pose, xy)
    cx = ((q[..., 0] - CANVAS_X0) * CANVAS_PX).astype(np.float32)
    cy = ((q[..., 1] - CANVAS_Y0) * CANVAS_PX).astype(np.float32)
    import cv2
    mx = cv2.resize(cx, (w, h), interpolation=cv2.INTER_LINEAR)
    my = cv2.resize(cy, (w, h), interpolation=cv2.INTER_LINEAR)
    return mx, my, q.astype(np.float32)


@attrs.frozen(eq=False)
class CaptureTruth:
    """Ground truth of one capture in frame pixels (x, y)."""

    hand: str                                  # "left" | "right"
    palm_centre: tuple[float, float]
    up: tuple[float, float]                    # unit vector from the wrist toward the middle finger
    rotation_deg: float                        # counterclockwise on screen; 0 = fingers up
    palm_width_px: float
    valleys: tuple[tuple[float, float], ...]   # index–middle, middle–ring, ring–little
    thumb_valley: tuple[float, float]
    fingertips: tuple[tuple[float, float], ...]  # little, ring, middle, index, thumb
    wrist: tuple[float, float]                 # middle of the wrist crease
    border: str                                # where the arm leaves: top/right/bottom/left
    scale: float


def truth(pose: Pose, hand: str) -> CaptureTruth:
    m = pose.model
    pt = lambda q: tuple(float(v) for v in pose.to_frame(np.asarray(q)))  # noqa: E731
    centre = np.array(pt((0.0, 0.0)))
    wrist = np.array(pt((0.0, 0.5 * m.palm_length)))
    axis = centre - wrist
    up = axis / np.linalg.norm(axis)
    tips = tuple(pt(fingertip(m, pose, i)) for i in range(5))
    # the border the arm crosses: follow the arm from the palm centre until it leaves the frame
    d = -up
    ts = []
    for name, num, den in (("left", -centre[0], d[0]), ("right", pose.width - centre[0], d[0]),
                           ("top", -centre[1], d[1]), ("bottom", pose.height - centre[1], d[1])):
        if den != 0 and num / den > 0:
            ts.append((num / den, name))
    border = min(ts)[1] if ts else "bottom"
    return CaptureTruth(
        hand=hand, palm_centre=tuple(float(v) for v in centre), up=(float(up[0]), float(up[1])),
        rotation_deg=pose.rotation_deg, palm_width_px=float(pose.palm_px),
        valleys=tuple(pt(v) for v in m.valleys), thumb_valley=pt(m.thumb_valley),
        fingertips=tips, wrist=tuple(float(v) for v in wrist), border=border, scale=pose.scale)
