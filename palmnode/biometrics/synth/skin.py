"""The palm's skin at the canonical pose: creases, veins, texture — drawn once per palm and cached.

Maps are float32 images over the canvas window of pose.py (palm units × CANVAS_PX). The
per-channel reflectance canvases (what the NIR and surface lights show) are composed per
(palm, session) — skin condition differs a little between sessions — and kept in a bounded LRU.
"""
from __future__ import annotations

import functools
import math

import attrs
import cv2
import numpy as np

from .identity import Identity
from .pose import CANVAS_PX, CANVAS_X0, CANVAS_Y0, canvas_size, direction, hand_model

#: bounded caches: ~8.5 MB of layers per palm, ~3.4 MB of channel canvases per (palm, session)
LAYER_CACHE = 4
CANVAS_CACHE = 16

# contrast in reflectance units (× ~107 grey levels at the palm): docs/synthetic-hands.md, real captures —
# NIR veins ~6 levels deep, creases ~2–3 levels in surface light, principal lines deeper
NIR_VEIN = 0.088
NIR_CREASE = 0.010
SURFACE_CREASE = 0.05
NIR_TEXTURE = (0.005, 0.007)      # fine, medium
SURFACE_TEXTURE = (0.008, 0.009)
SURFACE_LEVEL = 0.92              # surface-lit palm relative to NIR-lit palm

#: canvas pixels per palm unit → vein width: ~8% of the index–little valley distance (~0.48 palm)
VEIN_FWHM = 0.08 * 0.48 * CANVAS_PX


def _to_canvas(q: np.ndarray) -> np.ndarray:
    return (np.asarray(q) - (CANVAS_X0, CANVAS_Y0)) * CANVAS_PX


def _fixed(q: np.ndarray) -> np.ndarray:
    """Canvas points as cv2 fixed-point (shift=3) int32."""
    return np.round(_to_canvas(q) * 8).astype(np.int32)


def _bezier(p: np.ndarray, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t ** 2 * p[2]
            + t ** 3 * p[3])


def _draw_varying(img: np.ndarray, pts: np.ndarray, depth: np.ndarray | float, thickness: int) -> None:
    """Polyline whose value (depth 0..1.5 → 0..240) varies along it; later segments win overlaps."""
    fx = _fixed(pts)
    if np.ndim(depth) == 0:
        cv2.polylines(img, [fx], False, float(np.clip(depth, 0, 1.5)) * 160, thickness, cv2.LINE_AA, 3)
        return
    v = (np.clip(depth, 0, 1.5) * 160).tolist()
    p = fx.tolist()
    for i in range(len(p) - 1):
        cv2.line(img, p[i], p[i + 1], v[i], thickness, cv2.LINE_AA, 3)


@functools.lru_cache(maxsize=8)
def _line_peak(thickness: int, sigma: float) -> float:
    """Peak of a depth-1 line of ``thickness`` after a Gaussian blur of ``sigma`` (for 0..1 maps)."""
    img = np.zeros((64, 64), np.float32)
    cv2.line(img, (32 * 8, 4 * 8), (32 * 8, 60 * 8), 160.0, thickness, cv2.LINE_AA, 3)
    return float(cv2.GaussianBlur(img, (0, 0), sigma).max())


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Low-frequency noise (sd 1), drawn on a coarse grid and interpolated up."""
    f = max(1.0, sigma / 2.0)
    h, w = shape
    small = (max(2, int(w / f) + 2), max(2, int(h / f) + 2))
    n = cv2.GaussianBlur(rng.standard_normal((small[1], small[0]), dtype=np.float32), (0, 0), sigma / f)
    n = cv2.resize(n, (int(small[0] * f), int(small[1] * f)), interpolation=cv2.INTER_CUBIC)[:h, :w]
    return np.ascontiguousarray(n / max(float(n.std()), 1e-6))


#: skin micro-texture banks: each palm takes its own window (offset and flip) of these
_BANK = 1536


@functools.lru_cache(maxsize=1)
def _texture_bank() -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(7001)
    out = []
    for sigma in (0.8, 3.0):
        n = cv2.GaussianBlur(r.standard_normal((_BANK, _BANK), dtype=np.float32), (0, 0), sigma)
        out.append(n / n.std())
    return out[0], out[1]


def _texture(rng: np.random.Generator, shape: tuple[int, int], which: int) -> np.ndarray:
    bank = _texture_bank()[which]
    h, w = shape
    y, x = int(rng.integers(_BANK - h)), int(rng.integers(_BANK - w))
    t = bank[y:y + h, x:x + w]
    flip = int(rng.integers(4))
    t = t[::-1] if flip & 1 else t
    t = t[:, ::-1] if flip & 2 else t
    return np.ascontiguousarray(t)


def _walk(rng: np.random.Generator, start, heading_deg: float, length: float, step: float,
          curl_deg: float) -> np.ndarray:
    """A smooth random curve (palm units); heading as in pose.direction."""
    n = max(2, int(length / step))
    turn = np.cumsum(rng.normal(0, curl_deg, n + 8))
    turn = np.convolve(turn, np.ones(9) / 9, mode="valid")[:n]
    heads = heading_deg + turn
    steps = np.stack([np.sin(np.radians(heads)), -np.cos(np.radians(heads))], 1) * step
    return np.vstack([start, start + np.cumsum(steps, 0)])


@attrs.frozen(eq=False)
class SkinLayers:
    crease: np.ndarray      # 0..~1, principal lines ~1, secondary ~0.3–0.6
    vein: np.ndarray        # 0..~1, trunks ~1
    texture_fine: np.ndarray
    texture_mid: np.ndarray
    shade: np.ndarray       # ~1 ± 0.05: thenar/hypothenar bulges, hollow of the palm


def _principal_lines(rng: np.random.Generator, L: float) -> list[tuple[np.ndarray, float]]:
    j = lambda sx, sy: np.array([rng.normal(0, sx), rng.normal(0, sy)])  # noqa: E731
    heart = np.array([(-0.53, -0.27 * L), (-0.22, -0.30 * L), (0.04, -0.35 * L), (0.24, -0.46 * L)])
    heart += np.stack([j(0.02, 0.03), j(0.05, 0.04), j(0.05, 0.05), j(0.07, 0.04)])
    head_end = (rng.uniform(-0.45, -0.12), rng.uniform(-0.02, 0.2) * L)
    head = np.array([(0.50, -0.20 * L), (0.25, -0.13 * L), (-0.02, -0.03 * L), head_end])
    head += np.stack([j(0.01, 0.03), j(0.05, 0.04), j(0.06, 0.05), j(0.02, 0.02)])
    life = np.array([(0.48, -0.17 * L), (0.16, -0.02 * L), (0.08, 0.30 * L), (0.20, 0.50 * L)])
    life += np.stack([j(0.01, 0.02), j(0.05, 0.04), j(0.05, 0.05), j(0.06, 0.02)])
    lines = [(heart, rng.uniform(1.0, 1.4)), (head, rng.uniform(1.0, 1.4)),
             (life, rng.uniform(1.0, 1.4))]
    if rng.random() < 0.6:  # fate line, fainter
        x0 = rng.normal(0.02, 0.08)
        fate = np.array([(x0, 0.48 * L), (x0 + rng.normal(0, 0.05), 0.2 * L),
                         (x0 + rng.normal(0, 0.05), -0.05 * L), (rng.normal(0.05, 0.06), -0.3 * L)])
        lines.append((fate, rng.uniform(0.4, 0.7)))
    return lines


def _draw_creases(rng: np.random.Generator, identity: Identity, size: tuple[int, int], *,
                  count: int, principal: bool) -> np.ndarray:
    """Principal lines + finger creases (``principal``) or ``count`` short secondary creases."""
    w, h = size
    L = identity.shape.palm_length
    model = hand_model(identity.shape)
    img = np.zeros((h, w), np.float32)
    if principal:
        curves = _principal_lines(rng, L)
        for ctrl, depth in curves:
            pts = _bezier(ctrl, 60)
            t = np.linspace(0, 1, len(pts))
            taper = np.clip(np.minimum(t / 0.12, (1 - t) / 0.18), 0, 1) ** 0.6
            wobble = 0.8 + 0.2 * np.convolve(rng.standard_normal(len(t)), np.ones(9) / 3, "same")
            if rng.random() < 0.25:  # a break in the line
                c = rng.uniform(0.3, 0.7)
                wobble *= np.clip(np.abs(t - c) / 0.04, 0.15, 1)
            _draw_varying(img, pts, depth * taper * wobble, 3)
            for _ in range(rng.integers(1, 4)):  # short branches off the line
                at = pts[rng.integers(5, len(pts) - 5)]
                tan = pts[min(len(pts) - 1, int(np.argmin(np.abs(pts - at).sum(1))) + 2)] - at
                head = math.degrees(math.atan2(tan[0], -tan[1])) + rng.choice([-1, 1]) * rng.uniform(15, 50)
                br = _walk(rng, at, head, rng.uniform(0.06, 0.18), 0.01, 3)
                d = depth * rng.uniform(0.35, 0.6) * np.linspace(1, 0.3, len(br))
                _draw_varying(img, br, d, 2)
        # flexion creases across the fingers and thumb, at the canvas pose
        for i in range(5):
            u = direction(model.canonical_deg[i])
            n = np.array([-u[1], u[0]])
            fr = (0.03, 0.45) if i == 4 else (0.0, 0.40, 0.68)
            for f in fr:
                for dbl in ((0.0, 0.035) if rng.random() < 0.6 else (0.0,)):
                    c = model.bases[i] + u * (model.lengths[i] * f + dbl + 0.04)
                    half = model.widths[i] * 0.48
                    s = np.linspace(-half, half, 9)[:, None]
                    bow = (1 - (s / half) ** 2) * rng.normal(0.0, 0.012)
                    pts = c + s * n + bow * u
                    _draw_varying(img, pts, rng.uniform(0.6, 1.0), 2)
        return cv2.GaussianBlur(img, (0, 0), 1.3) / _line_peak(3, 1.3)
    # secondary creases: short thin curves, half of them following the principal lines' flow
    for _ in range(count):
        x = rng.uniform(-0.46, 0.46)
        y = rng.uniform(-0.42 * L, 0.46 * L)
        if rng.random() < 0.5:
            head = rng.uniform(0, 180)
        else:  # roughly transverse above the head line, oblique on the thenar
            head = rng.normal(95 if y < 0 else (60 if x > 0.1 else 110), 20)
        pts = _walk(rng, np.array([x, y]), head, rng.uniform(0.03, 0.16), 0.008, 5)
        _draw_varying(img, pts, rng.uniform(0.35, 0.75), 2)
    return cv2.GaussianBlur(img, (0, 0), 1.2) / _line_peak(2, 1.2)


def _draw_veins(rng: np.random.Generator, identity: Identity, size: tuple[int, int]) -> np.ndarray:
    """A branching network from the wrist into the palm (subsurface: broad and blurred)."""
    w, h = size
    L = identity.shape.palm_length
    img = np.zeros((h, w), np.float32)
    segments: list[tuple[np.ndarray, float, int]] = []

    def grow(start, head, length, level):
        pts = _walk(rng, start, head, length, 0.02, 4.5)
        segments.append((pts, (1.0, 0.8, 0.6)[level], level))
        if level < 2:
            for _ in range(rng.poisson((1.3, 0.7)[level])):
                k = rng.integers(len(pts) // 4, len(pts) - 2)
                tan = pts[k + 1] - pts[k]
                here = math.degrees(math.atan2(tan[0], -tan[1]))
                side = rng.choice([-1, 1])
                if abs(pts[k][0]) > 0.25:  # near the palm's edge, branch back inward
                    side = -np.sign(pts[k][0]) * np.sign(math.cos(math.radians(here)) or 1)
                grow(pts[k], here + side * rng.uniform(25, 60), length * rng.uniform(0.35, 0.7),
                     level + 1)

    # trunks come up from the forearm and run through the palm toward the finger bases
    n = int(rng.integers(2, 6))
    xs = rng.uniform(-0.35, 0.35, n)
    for x in xs:
        start = np.array([x, 0.5 * L + rng.uniform(0.3, 0.9)])
        target = np.array([rng.uniform(-0.45, 0.45), rng.uniform(-0.55, 0.0) * L])
        d = target - start
        head = math.degrees(math.atan2(d[0], -d[1]))
        grow(start, head, float(np.hypot(*d)) * rng.uniform(1.0, 1.15), 0)
    for _ in range(rng.integers(2, 5)):  # veins lying within the palm, joining the network
        start = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.4) * L])
        grow(start, rng.uniform(-80, 80) + rng.choice([0, 180]), rng.uniform(0.3, 0.6), 1)
    thick = {0: 5, 1: 4, 2: 3}
    for pts, val, level in sorted(segments, key=lambda s: s[1]):
        fade = 0.65 + 0.35 * np.clip(np.convolve(rng.standard_normal(len(pts)), np.ones(15) / 4, "same") + 0.5, 0, 1)
        _draw_varying(img, pts, val * fade, thick[level])
    sigma = max(0.5, math.sqrt(max(VEIN_FWHM ** 2 - 4.5 ** 2, 1.0)) / 2.355)
    return cv2.GaussianBlur(img, (0, 0), sigma) / _line_peak(5, sigma)


def _shade(rng: np.random.Generator, identity: Identity, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    L = identity.shape.palm_length
    step = 4  # smooth: drawn on a coarse grid
    ys, xs = np.mgrid[0:h // step + 1, 0:w // step + 1].astype(np.float32) * step
    qx = xs / CANVAS_PX + CANVAS_X0
    qy = ys / CANVAS_PX + CANVAS_Y0
    g = lambda cx, cy, s: np.exp(-((qx - cx) ** 2 + (qy - cy) ** 2) / (2 * s * s))  # noqa: E731
    shade = (1.0 + rng.uniform(0.02, 0.05) * g(0.28, 0.22 * L, 0.22)
             + rng.uniform(0.01, 0.03) * g(-0.3, 0.2 * L, 0.2)
             - rng.uniform(0.015, 0.04) * g(0.02, -0.05 * L, 0.22))
    shade += 0.008 * _smooth_noise(rng, shade.shape, 0.25 * CANVAS_PX / step)
    big = cv2.resize(shade.astype(np.float32), (shade.shape[1] * step, shade.shape[0] * step),
                     interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(big[:h, :w])


@functools.lru_cache(maxsize=LAYER_CACHE)
def skin_layers(identity: Identity) -> SkinLayers:
    size = canvas_size()
    w, h = size
    key = identity.palm_key
    count = int(np.random.default_rng([*key, 31]).integers(35, 90))
    principal = _draw_creases(np.random.default_rng([*key, 32]), identity, size, count=0,
                              principal=True)
    secondary = _draw_creases(np.random.default_rng([*key, 33]), identity, size, count=count,
                              principal=False)
    crease = np.maximum(principal, secondary)
    vein = _draw_veins(np.random.default_rng([*key, 34]), identity, size)
    t = np.random.default_rng([*key, 35])
    return SkinLayers(crease=crease.astype(np.float32), vein=vein.astype(np.float32),
                      texture_fine=_texture(t, (h, w), 0),
                      texture_mid=_texture(t, (h, w), 1),
                      shade=_shade(np.random.default_rng([*key, 36]), identity, size))


@functools.lru_cache(maxsize=CANVAS_CACHE)
def channel_canvases(identity: Identity, session: int) -> np.ndarray:
    """(2, H, W) float32 reflectance of the palm in NIR (0) and surface (1) light for a session."""
    layers = skin_layers(identity)
    size = canvas_size()
    w, h = size
    habit = identity.habit(session)
    r = np.random.default_rng([*identity.palm_key, 41, session & 0xFFFFFFFF])
    # skin condition today: a new fine texture mixed in, a few temporary wrinkles, crease contrast
    fine = 0.75 * layers.texture_fine + 0.66 * _texture(r, (h, w), 0)
    extra = _draw_creases(r, identity, size, count=int(r.integers(8, 25)), principal=False)
    crease = np.maximum(layers.crease, extra * 0.5) * habit.crease_gain
    nir = layers.shade * (1 + NIR_TEXTURE[0] * fine + NIR_TEXTURE[1] * layers.texture_mid) \
        - (NIR_VEIN * habit.vein_gain) * layers.vein - NIR_CREASE * crease
    surface = SURFACE_LEVEL * (layers.shade * (1 + SURFACE_TEXTURE[0] * fine
                                                + SURFACE_TEXTURE[1] * layers.texture_mid)
                               - SURFACE_CREASE * crease)
    out = np.empty((2, h, w), np.float32)
    out[0] = nir
    out[1] = surface
    return out


def clear_caches() -> None:
    skin_layers.cache_clear()
    channel_canvases.cache_clear()
