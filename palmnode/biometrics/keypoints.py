"""Finger-valley keypoints from the hand outline (radial profile about the palm circle).

The outline is cut where the arm leaves the frame, leaving one path around the hand. Along it the
distance to the palm centre rises to each fingertip and falls into each valley; the three valleys
between the four fingers are the three consecutive minima whose spacing is most even (the
thumb–index web sits much farther out), and the thumb lies on the side of the remaining outline.
"""
from __future__ import annotations

import attrs
import numpy as np


@attrs.frozen(eq=False)
class Valleys:
    """Valley points in working px: index–middle, middle–ring, ring–little (the thumb is beyond index)."""

    index_middle: np.ndarray
    middle_ring: np.ndarray
    ring_little: np.ndarray
    depth: float             # shallowest of the three valleys' depth, in palm radii


def outline_path(contour: np.ndarray, shape: tuple[int, int], arm_dir: np.ndarray | None,
                 centre: np.ndarray) -> np.ndarray:
    """The outline as one open path from one side of the arm round the hand to the other.

    Points on the frame border (the arm's cut) are dropped; the longest remaining stretch is the
    hand. Without an arm on the border, the path is opened at the point facing ``arm_dir`` or,
    failing that, opposite the farthest point.
    """
    h, w = shape
    x, y = contour[:, 0], contour[:, 1]
    on_border = (x <= 1) | (y <= 1) | (x >= w - 2) | (y >= h - 2)
    n = len(contour)
    if on_border.any() and not on_border.all():
        shift = int(np.argmax(on_border))          # start on a border point: stretches never wrap
        rolled = np.roll(~on_border, -shift)
        edges = np.diff(np.concatenate([[0], rolled.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        k = int(np.argmax(ends - starts))
        idx = (np.arange(starts[k], ends[k]) + shift) % n
        return contour[idx].astype(np.float64)
    pts = contour.astype(np.float64)
    rel = pts - centre
    if arm_dir is None:
        far = int(np.argmax((rel ** 2).sum(1)))
        arm_dir = -rel[far] / (np.linalg.norm(rel[far]) + 1e-9)
    start = int(np.argmax(rel @ arm_dir))
    return np.roll(pts, -start, axis=0)


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(values, radius, mode="edge")
    return np.convolve(padded, k, mode="valid")


def _extrema(r: np.ndarray, prominence: float) -> tuple[list[int], list[int]]:
    """Alternating peaks and minima of ``r`` (peaks first), each standing out by ``prominence``."""
    # candidates: every local turning point (few, the profile is smoothed); then a hysteresis
    # walk over them keeps a turning point once the profile has moved away by `prominence`
    d = np.sign(np.diff(r))
    nz = np.flatnonzero(d)
    if nz.size == 0:
        return [], []
    turns = nz[1:][d[nz[1:]] != d[nz[:-1]]]
    cand = np.concatenate([[0], turns, [len(r) - 1]]).tolist()
    peaks: list[int] = []
    mins: list[int] = []
    mode = "up"
    best_i = cand[0]
    for i in cand[1:]:
        if mode == "up":
            if r[i] > r[best_i]:
                best_i = i
            elif r[best_i] - r[i] >= prominence:
                peaks.append(best_i)
                mode, best_i = "down", i
        else:
            if r[i] < r[best_i]:
                best_i = i
            elif r[i] - r[best_i] >= prominence:
                mins.append(best_i)
                mode, best_i = "up", i
    # the path's ends are where the arm leaves the frame, not fingertips
    peaks = [p for p in peaks if 0 < p < len(r) - 1]
    return peaks, mins


def find_valleys(path: np.ndarray, centre: np.ndarray, radius: float) -> Valleys | None:
    """The three inter-finger valleys along ``path`` (see module doc), or None."""
    if len(path) < 20 or radius <= 0:
        return None
    rel = path - centre
    r = np.hypot(rel[:, 0], rel[:, 1])
    r = _smooth(r, max(1.0, 0.04 * radius))
    peaks, mins = _extrema(r, prominence=0.06 * radius)
    # a valley sits between two fingertips
    mins = [m for m in mins if peaks and peaks[0] < m < peaks[-1]]
    if len(mins) < 3:
        return None
    best = None
    for j in range(len(mins) - 2):
        a, b, c = (path[mins[j + k]] for k in range(3))
        d1, d2 = np.linalg.norm(b - a), np.linalg.norm(c - b)
        span = d1 + d2
        if span < 0.4 * radius or span > 3.0 * radius:
            continue
        # valleys of fingers are evenly spaced and about equally far from the palm centre
        radii = r[[mins[j], mins[j + 1], mins[j + 2]]]
        cost = abs(d1 - d2) / span + 0.5 * (radii.max() - radii.min()) / radius
        if best is None or cost < best[0]:
            best = (cost, j)
    if best is None:
        return None
    j = best[1]
    i0, i1, i2 = mins[j], mins[j + 1], mins[j + 2]
    # the thumb side: beyond the index finger comes the thumb, a further tip; beyond the little
    # finger only the hand's edge. With the thumb tucked in, the side whose outline runs longer
    # near the palm (round the thumb's base) decides.
    tips_before = sum(1 for p in peaks if p < i0)
    tips_after = sum(1 for p in peaks if p > i2)
    if tips_before != tips_after:
        thumb_first = tips_before > tips_after
    else:
        near = r < 2.0 * radius
        steps = np.linalg.norm(np.diff(path, axis=0), axis=1) * near[1:]
        thumb_first = float(steps[:i0].sum()) >= float(steps[i2:].sum())
    first, last = path[i0], path[i2]
    im, rl = (first, last) if thumb_first else (last, first)
    # depth: how far each valley lies below the lower of its two neighbouring tips
    depths = []
    for m in (i0, i1, i2):
        prev_peak = max(p for p in peaks if p < m)
        next_peak = min(p for p in peaks if p > m)
        depths.append(min(r[prev_peak], r[next_peak]) - r[m])
    depth = float(min(depths) / radius)
    return Valleys(index_middle=im.copy(), middle_ring=path[i1].copy(), ring_little=rl.copy(),
                   depth=depth)
