"""ROI-like test images (not the renderer): smooth random curves on a shaded palm.

An identity is a fixed set of curves (surface: 3 long principal lines + ~25 short creases,
~3 px wide, 2-3 grey levels deep; vein: ~10 broad curves ~8 px wide, ~6 levels deep); a
capture moves, rotates and re-exposes them and adds sensor noise.
"""
from __future__ import annotations

import cv2
import numpy as np

SIZE = 128
_UP = 4  # draw at 4x and area-downsample: soft, anti-aliased profiles


def _curves(rng: np.random.Generator, n: int, length: tuple[float, float]) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        start = rng.uniform(-10, SIZE + 10, 2)
        angle = rng.uniform(0, np.pi)
        ln = rng.uniform(*length)
        bend = rng.normal(0, 0.4)
        t = np.linspace(0, 1, 24)[:, None]
        ang = angle + bend * (t - 0.5)
        steps = np.concatenate([[[0, 0]], np.cumsum(np.hstack([np.cos(ang), np.sin(ang)])[1:] * ln / 23, axis=0)])
        out.append(start + steps)
    return out


def identity(seed: int) -> dict:
    rng = np.random.default_rng([seed, 11])
    return {
        "lines": _curves(rng, 3, (90, 140)) + _curves(rng, 25, (15, 45)),
        "line_depth": rng.uniform(2.0, 3.0, 28),
        "veins": _curves(rng, 10, (50, 120)),
        "vein_depth": rng.uniform(5.0, 7.0, 10),
    }


def _draw(curves, depths, width, transform) -> np.ndarray:
    canvas = np.zeros((SIZE * _UP, SIZE * _UP), np.float32)
    for c, d in zip(curves, depths):
        pts = (c @ transform[:, :2].T + transform[:, 2]) * _UP
        layer = np.zeros_like(canvas)
        cv2.polylines(layer, [np.round(pts * 16).astype(np.int32)], False, float(d), int(width * _UP), cv2.LINE_AA, 4)
        canvas = np.maximum(canvas, layer)
    canvas = cv2.GaussianBlur(canvas, (0, 0), _UP * width / 4)
    return cv2.resize(canvas, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def capture(ident: dict, seed: int, *, shift: float = 3.0, rot_deg: float = 2.0, noise: float = 1.0,
            exposure: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """(surface ROI, vein ROI) uint8 of one capture of ``ident``."""
    rng = np.random.default_rng([seed, 22])
    a = np.deg2rad(rng.normal(0, rot_deg))
    t = rng.normal(0, shift, 2)
    c = SIZE / 2
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    transform = np.hstack([rot, (np.array([c, c]) - rot @ [c, c] + t)[:, None]])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    base = 107 + rng.normal(0, exposure) + 10 * (xx / SIZE - 0.5) * rng.normal(0, 1) + 10 * (yy / SIZE - 0.5)
    lines = _draw(ident["lines"], ident["line_depth"], 3, transform)
    veins = _draw(ident["veins"], ident["vein_depth"], 8, transform)
    surface = base - lines + rng.normal(0, noise, base.shape)
    vein = base - veins - 0.3 * lines + rng.normal(0, noise, base.shape)
    return (np.clip(np.round(surface), 0, 255).astype(np.uint8), np.clip(np.round(vein), 0, 255).astype(np.uint8))
