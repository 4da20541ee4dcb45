"""Hand segmentation on a downscaled NIR frame: the filled hand mask, its outline and the palm circle.

Works at about 320 px on the long side (the frame is area-downscaled by an integer factor), which
keeps the whole ROI stage within ~2 ms while valleys of fingers held together stay resolvable.
"""
from __future__ import annotations

import functools

import attrs
import cv2
import numpy as np

#: long side of the working image; frames are area-downscaled by an integer factor to about this
WORK_LONG_SIDE = 320
#: grey level from which a pixel counts as a housing reflection (glare), not skin
GLARE_LEVEL = 240


@attrs.frozen(eq=False)
class HandMask:
    """The segmented hand at working scale (``factor`` frame px per working px)."""

    small: np.ndarray          # downscaled grey frame
    mask: np.ndarray           # uint8 0/1, filled, frame border rows/cols forced to 0
    contour: np.ndarray        # (N, 2) int32 outline of the mask, CHAIN_APPROX_NONE order
    factor: int
    threshold: float           # the Otsu level that separated hand from background
    background: float          # mean background grey
    area_fraction: float       # hand pixels / frame pixels
    centre: np.ndarray         # (2,) float: the palm circle's centre (working px)
    radius: float              # the palm circle's radius (largest inscribed circle, working px)
    inscribed: np.ndarray      # float32 distance to the outline on every other pixel (half-res px)


def downscale(frame: np.ndarray) -> tuple[np.ndarray, int]:
    """``frame`` area-averaged by an integer factor so its long side is about WORK_LONG_SIDE."""
    resized, factor = area_downscale(frame)
    return smooth(resized), factor


def area_downscale(frame: np.ndarray) -> tuple[np.ndarray, int]:
    """The first half of :func:`downscale`: the area-averaged frame (``frame`` itself when the
    factor is 1) and the factor."""
    h, w = frame.shape
    factor = max(1, int(round(max(h, w) / WORK_LONG_SIDE)))
    small = frame if factor == 1 else cv2.resize(frame, (w // factor, h // factor),
                                                 interpolation=cv2.INTER_AREA)
    return small, factor


def smooth(resized: np.ndarray) -> np.ndarray:
    """The second half of :func:`downscale`: a light blur keeps the outline smooth where a dim
    arm fades into the background."""
    return cv2.GaussianBlur(resized, (5, 5), 1.0)


def otsu_split(small: np.ndarray) -> tuple[float, float, float]:
    """(threshold, background mean, foreground mean) from Otsu's method on ``small``."""
    threshold, above = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n_fg = cv2.countNonZero(above)
    total = float(cv2.sumElems(small)[0])
    fg_sum = float(cv2.sumElems(cv2.multiply(small, above))[0]) if n_fg else 0.0
    n_bg = small.size - n_fg
    bg = (total - fg_sum) / n_bg if n_bg else float(threshold)
    fg = fg_sum / n_fg if n_fg else float(threshold)
    return float(threshold), float(bg), float(fg)


def segment(small: np.ndarray, factor: int, threshold: float, background: float,
            contrast: float) -> HandMask | None:
    """The largest bright region of ``small`` above ``threshold`` (glare cut out, holes filled).

    Narrow dark seams (fingers held together, touching) are cut out of the region, so the outline
    dips into the valleys between them: a seam is where the grey image lies more than
    SEAM_DEPTH × ``contrast`` below its morphological closing.
    None when nothing of any size stands above the threshold.
    """
    h, w = small.shape
    # (uint8 0/1 images from cv2.threshold: a uint8 image is above a float level exactly when
    # it is above that level's floor, which is how cv2.threshold reads a float threshold)
    skin = cv2.threshold(small, threshold, 1, cv2.THRESH_BINARY)[1]
    seams = cv2.morphologyEx(small, cv2.MORPH_BLACKHAT, _SEAM_KERNEL)
    # seams <= SEAM_DEPTH × contrast (the floor again: seams are whole grey levels)
    raw = cv2.threshold(seams, SEAM_DEPTH * contrast, 1, cv2.THRESH_BINARY_INV)[1]
    raw &= skin
    glare = cv2.threshold(small, GLARE_LEVEL - 1, 1, cv2.THRESH_BINARY)[1]
    n_glare = cv2.countNonZero(glare)
    if n_glare and n_glare < 0.2 * cv2.countNonZero(skin):
        # housing reflections (not a saturated hand): cut them out with their halo
        raw &= 1 - cv2.dilate(glare, _GLARE_HALO)
    raw[0, :] = raw[-1, :] = 0
    raw[:, 0] = raw[:, -1] = 0
    # opening cuts thin bridges (a glare halo touching the arm, a speck of noise)
    raw = cv2.morphologyEx(raw, cv2.MORPH_OPEN, _KERNEL3)
    contours, _ = cv2.findContours(raw, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    areas = [cv2.contourArea(c) for c in contours]
    best = int(np.argmax(areas))
    if areas[best] < 16:
        return None
    contour = contours[best]
    mask = np.zeros((h, w), np.uint8)
    cv2.drawContours(mask, [contour], 0, 1, thickness=cv2.FILLED)
    # the palm circle: the largest disc inside the hand (the frame border counts as outside,
    # so an arm leaving the frame cannot win)
    # (on every other pixel: the circle steers the valley search, it does not place the ROI)
    half = np.ascontiguousarray(mask[::2, ::2])
    half[-1, :] = half[:, -1] = 0
    dist = cv2.distanceTransform(half, cv2.DIST_L2, cv2.DIST_MASK_5)
    _, radius, _, loc = cv2.minMaxLoc(dist)
    radius, loc = 2.0 * radius, (2.0 * loc[0] + 0.5, 2.0 * loc[1] + 0.5)
    return HandMask(
        small=small, mask=mask, contour=contour.reshape(-1, 2), factor=factor,
        threshold=threshold, background=background,
        area_fraction=float(cv2.countNonZero(mask)) / mask.size,
        centre=np.array(loc, dtype=np.float64), radius=float(radius), inscribed=dist)


_KERNEL3 = np.ones((3, 3), np.uint8)
#: seams narrower than this (working px) between touching fingers are found by a black top-hat
_SEAM_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
_GLARE_HALO = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
#: a seam is at least this share of the skin/background contrast darker than its surroundings
SEAM_DEPTH = 0.2


#: a part of the hand this far out from the palm centre (palm radii) and this thick (distance to
#: the outline, palm radii) is the forearm: fingers and the thumb are far thinner (half-widths
#: ~0.2 R), the palm itself lies within ~1.2 R
ARM_REACH = 1.3
ARM_THICKNESS = 0.4


def arm_direction(hand: HandMask) -> np.ndarray | None:
    """Unit direction (working px) from the palm centre to the forearm, told by its thickness, or
    None when nothing that thick lies beyond the palm (a hand held with the wrist out of view).

    For a forearm that fades out before the frame border (dimly lit, far from the light) and so
    leaves no border contact to name it."""
    dist = hand.inscribed
    h, w = dist.shape
    c, rad = hand.centre / 2, hand.radius / 2              # in half-res px
    yy, xx = np.arange(h)[:, None], np.arange(w)[None, :]   # (np.ogrid, cheaper)
    px, py = xx - c[0], yy - c[1]
    r2 = px * px + py * py
    keep = (r2 > (ARM_REACH * rad) ** 2) & (dist > ARM_THICKNESS * rad)
    count = np.count_nonzero(keep)
    if count < 10:
        return None
    r = np.sqrt(np.where(keep, r2, 1.0))
    u = np.array([float(np.sum(np.where(keep, px / r, 0.0))), float(np.sum(np.where(keep, py / r, 0.0)))])
    norm = float(np.linalg.norm(u))
    if norm < 0.5 * count:                                 # thick parts on opposite sides: unclear
        return None
    return u / norm


@functools.lru_cache(maxsize=8)
def _ring(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xs, ys, flat index) of the ring 1 px in from the border of an h×w image, clockwise from
    the top-left corner (the same few shapes come again and again: built once)."""
    xs = np.concatenate([np.arange(1, w - 1), np.full(h - 2, w - 2), np.arange(w - 2, 0, -1), np.full(h - 2, 1)])
    ys = np.concatenate([np.full(w - 2, 1), np.arange(1, h - 1), np.full(w - 2, h - 2), np.arange(h - 2, 0, -1)])
    for a in (xs, ys):
        a.flags.writeable = False
    flat = ys * w + xs
    flat.flags.writeable = False
    return xs, ys, flat


def border_runs(mask: np.ndarray, max_gap: int = 0) -> list[tuple[int, int, np.ndarray]]:
    """Stretches where the hand touches the frame border (row/col 1 in from the edge).

    Each run is (start, length, points) along the border ring walked clockwise from the
    top-left corner; ``points`` are the (x, y) working-px coordinates of the run. Gaps of up to
    ``max_gap`` px are bridged (a reflection cut out of the arm where it leaves the frame).
    """
    xs, ys, flat = _ring(*mask.shape)
    ring = mask.ravel().take(flat).astype(bool) if mask.flags.c_contiguous else mask[ys, xs].astype(bool)
    n = ring.size
    if not ring.any():
        return []
    if ring.all():
        return [(0, n, np.stack([xs, ys], 1))]
    if max_gap > 0:  # 1-D closing of the ring
        k = np.ones(2 * max_gap + 1, np.uint8)
        wrapped = np.concatenate([ring[-max_gap:], ring, ring[:max_gap]]).astype(np.uint8)
        grown = cv2.dilate(wrapped.reshape(1, -1), k.reshape(1, -1))
        ring = cv2.erode(grown, k.reshape(1, -1)).ravel()[max_gap:-max_gap].astype(bool)
        if ring.all():
            return [(0, n, np.stack([xs, ys], 1))]
    # rotate so the ring starts on an off pixel: runs then never wrap
    shift = int(np.argmin(ring))
    rolled = np.concatenate([ring[shift:], ring[:shift]])     # (np.roll, cheaper)
    edges = np.diff(np.concatenate([[0], rolled.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    # (the ring's points twice over: a run that wraps past the start is one slice)
    xy2 = _ring_points_twice(*mask.shape)
    return [(int((s + shift) % n), int(e - s), xy2[s + shift:e + shift]) for s, e in zip(starts.tolist(), ends.tolist())]


@functools.lru_cache(maxsize=8)
def _ring_points_twice(h: int, w: int) -> np.ndarray:
    """(2n, 2) int: the (x, y) points of :func:`_ring`, the ring walked twice, read-only."""
    xs, ys, _ = _ring(h, w)
    xy = np.stack([xs, ys], 1)
    xy2 = np.concatenate([xy, xy])
    xy2.flags.writeable = False
    return xy2
