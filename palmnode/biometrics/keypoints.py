"""Finger-valley keypoints from the hand outline (radial profile about the palm circle).

The outline is cut where the arm leaves the frame, leaving one path around the hand. Along it the
distance to the palm centre rises to each fingertip and falls into each valley. The four fingers
are the four consecutive tips packed most tightly in angle about the palm centre (the thumb stands
off at a wider angle than any two fingers, whatever the spread); the valleys are the lowest points
between them, and the thumb is the tip beyond them on the wider-gap side. Fingers held together
leave only a shallow notch between their tips: such a "valley" is marked as not deep.
"""
from __future__ import annotations

import math

import attrs
import cv2
import numpy as np


@attrs.frozen(eq=False)
class Fingers:
    """The four fingers found on the outline (working px), ordered index → little.

    ``valleys`` are the lowest outline points between neighbouring tips (index–middle,
    middle–ring, ring–little); ``deep`` says which of them are real valleys rather than the
    notch between two fingertips held together (a valley must sink well below both tips).
    """

    tips: np.ndarray          # (4, 2)
    valleys: np.ndarray       # (3, 2)
    deep: tuple[bool, bool, bool]
    thumb_seen: bool          # the thumb's own tip was found (handedness is then reliable)


_KERNEL5 = np.ones((5, 5), np.uint8)


def outline_path(contour: np.ndarray, shape: tuple[int, int], arm: np.ndarray | None,
                 centre: np.ndarray, arm_dir: np.ndarray | None = None) -> np.ndarray:
    """The outline as one open path from one side of the arm round the hand to the other.

    ``arm`` holds the (x, y) border pixels where the arm leaves the frame: outline points on or
    next to them are the arm's cut and are dropped; the longest remaining stretch is the hand
    (fingertips cut by another border stay in it). Without them, the path is opened at the
    outline point farthest along ``arm_dir`` (the forearm's end, when the arm fades out before
    the border), else at the point opposite the farthest one (the middle fingertip).
    """
    if arm is not None and len(arm):
        # (flat indices: cheaper than 2-D fancy indexing for these ~1,500 points)
        w = shape[1]
        zone = np.zeros(shape, np.uint8)
        zone.ravel()[arm[:, 1] * w + arm[:, 0]] = 1
        zone = cv2.dilate(zone, _KERNEL5)
        cut = zone.ravel().take(contour[:, 1] * w + contour[:, 0]).view(bool)
        if cut.any() and not cut.all():
            shift = int(np.argmax(cut))          # start on a cut point: stretches never wrap
            rolled = ~np.concatenate([cut[shift:], cut[:shift]])   # (np.roll, cheaper)
            edges = np.diff(np.concatenate([[0], rolled.astype(np.int8), [0]]))
            starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            k = int(np.argmax(ends - starts))
            # (the stretch [starts[k], ends[k]) of the outline rolled by `shift`)
            return np.concatenate([contour, contour])[starts[k] + shift:ends[k] + shift].astype(np.float64)
    pts = contour.astype(np.float64)
    rel = pts - centre
    if arm_dir is not None:
        start = int(np.argmax(rel @ arm_dir))
    else:
        far = int(np.argmax((rel ** 2).sum(1)))
        start = int(np.argmax(rel @ -rel[far]))
    return np.roll(pts, -start, axis=0)


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.concatenate([np.full(radius, values[0]), values, np.full(radius, values[-1])])  # edge pad
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
    cand = np.concatenate([[0], turns, [len(r) - 1]])
    value = dict(zip(cand.tolist(), r[cand].tolist()))   # (plain floats: the walk reads them often)
    cand = cand.tolist()
    peaks: list[int] = []
    mins: list[int] = []
    mode = "up"
    best_i = cand[0]
    for i in cand[1:]:
        if mode == "up":
            if value[i] > value[best_i]:
                best_i = i
            elif value[best_i] - value[i] >= prominence:
                peaks.append(best_i)
                mode, best_i = "down", i
        else:
            if value[i] < value[best_i]:
                best_i = i
            elif value[i] - value[best_i] >= prominence:
                mins.append(best_i)
                mode, best_i = "up", i
    # the path's ends are where the arm leaves the frame, not fingertips
    peaks = [p for p in peaks if 0 < p < len(r) - 1]
    return peaks, mins


#: degrees between the index and thumb tips (seen from the palm centre) beyond which it is no thumb
MAX_THUMB_GAP = 100.0
#: a valley sinks at least this far (palm radii) below the lower of its two fingertips
MIN_VALLEY_DEPTH = 0.45


#: two fingers held together can show one tip: the four tips then take in the thumb, which is
#: told by its wide angle from its neighbour (degrees) and its short reach (share of the longest)
MERGED_THUMB_GAP = 25.0
MERGED_THUMB_REACH = 0.735
#: valleys either side of the pair's tip nearer than this (palm radii) lie one finger apart
MERGED_ONE_FINGER_SPAN = 0.7


def _thumb_among(reach: np.ndarray, gaps: np.ndarray) -> int | None:
    """0 or 3 when the tip at that end of the four is the thumb (two fingers showing one tip),
    else None: the thumb stands off wider than fingers and reaches much less far."""
    found = None
    for end, gap in ((0, gaps[0]), (3, gaps[2])):
        if gap > MERGED_THUMB_GAP and reach[end] < MERGED_THUMB_REACH * reach.max():
            if found is None or reach[end] < reach[found]:
                found = end
    return found


def _with_merged_pair(path: np.ndarray, r: np.ndarray, tips: list[int], thumb: int,
                      radius: float = 0.0) -> Fingers:
    """Three finger tips and the thumb: taken as index, middle and ring held together (one tip),
    little; the index–middle and ring–little valleys are the ones on either side of the pair,
    the middle–ring valley is hidden (not deep; placed midway between the other two).
    When the two valleys lie one finger apart (< MERGED_ONE_FINGER_SPAN × ``radius``, the palm
    radius in path px; 0 turns this off), the pair is index + middle or ring + little instead,
    told by which of the thumb-side tips reaches farther."""
    three = tips[1:] if thumb == 0 else tips[:3]
    valleys = [three[j] + int(np.argmin(r[three[j]:three[j + 1] + 1])) for j in range(2)]
    if thumb == 3:                                     # order from the thumb's side
        three, valleys = three[::-1], valleys[::-1]
    v = path[valleys]
    if (float(np.linalg.norm(v[0] - v[1])) < MERGED_ONE_FINGER_SPAN * radius
            and r[three[0]] > r[three[1]]):
        # the valleys either side of the middle tip lie one finger apart, not two, and the tip
        # on the thumb's side reaches farther (the middle finger's reach): the pair held
        # together is index and middle, the middle tip the ring finger, the two valleys the
        # middle–ring and ring–little ones (the stand-in frame then takes over)
        tip_pts = path[[three[0], three[0], three[1], three[2]]].copy()
        far = v[0] + (v[0] - v[1])       # (an index–middle stand-in, not deep: never used as one)
        return Fingers(tips=tip_pts, valleys=np.stack([far, v[0], v[1]]), deep=(False, True, True),
                       thumb_seen=True)
    if float(np.linalg.norm(v[0] - v[1])) < MERGED_ONE_FINGER_SPAN * radius:
        # one finger apart with the thumb-side tip the shorter: index, middle, then ring and
        # little held together; the valleys are the index–middle and middle–ring ones
        tip_pts = path[[three[0], three[1], three[2], three[2]]].copy()
        far = v[1] + (v[1] - v[0])       # (a ring–little stand-in, not deep: never used as one)
        return Fingers(tips=tip_pts, valleys=np.stack([v[0], v[1], far]), deep=(True, True, False),
                       thumb_seen=True)
    tip_pts = path[[three[0], three[1], three[1], three[2]]].copy()
    valley_pts = np.stack([v[0], 0.5 * (v[0] + v[1]), v[1]])
    return Fingers(tips=tip_pts, valleys=valley_pts, deep=(True, False, True), thumb_seen=True)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Degrees between two directions."""
    return float(np.degrees(abs(np.arctan2(a[0] * b[1] - a[1] * b[0], a @ b))))


def _beyond(out: list[int], tips: list[int], rel: np.ndarray):
    """(tip, degrees from the first finger) before the four along the path and likewise after
    them, among all tips beyond the palm circle, each None when there is none."""
    first, last = out.index(tips[0]), out.index(tips[3])
    before = (out[first - 1], _angle(rel[out[first - 1]], rel[tips[0]])) if first > 0 else None
    after = (out[last + 1], _angle(rel[tips[3]], rel[out[last + 1]])) if last + 1 < len(out) else None
    return before, after


def _unwrapped_gaps(angles: list[float]) -> list[float]:
    """``np.degrees(np.abs(np.diff(np.unwrap(angles))))`` for a handful of angles, in plain
    floats (the same operations in the same order: numpy's per-call overhead was the cost)."""
    out, prev, correction = [], angles[0], 0.0
    for i in range(1, len(angles)):
        dd = angles[i] - angles[i - 1]
        ddmod = (dd + np.pi) % (2 * np.pi) - np.pi
        if ddmod == -np.pi and dd > 0:
            ddmod = np.pi
        correction += 0.0 if abs(dd) < np.pi else ddmod - dd
        cur = angles[i] + correction
        out.append(math.degrees(abs(cur - prev)))
        prev = cur
    return out


def find_fingers(path: np.ndarray, centre: np.ndarray, radius: float,
                 finger_dir: np.ndarray | None) -> Fingers | None:
    """The four fingers along ``path`` (see module doc), or None.

    ``finger_dir`` (unit, from the palm centre away from the arm) limits where tips may be.
    """
    if len(path) < 20 or radius <= 0:
        return None
    rel = path - centre
    r = np.hypot(rel[:, 0], rel[:, 1])
    r = _smooth(r, max(1.0, 0.03 * radius))
    peaks, _ = _extrema(r, prominence=0.04 * radius)
    # a fingertip lies well outside the palm circle, on the side away from the arm (the thumb,
    # held out sideways, may point towards the arm's side: it is looked for among all of them)
    out = [p for p in peaks if r[p] > 1.3 * radius]
    if finger_dir is not None:
        # (rel[p] @ finger_dir in plain floats: numpy's 2-vector dot is fx x + fy y)
        fx, fy = float(finger_dir[0]), float(finger_dir[1])
        out_rel = rel[out].tolist() if out else []
        peaks = [p for p, (x, y) in zip(out, out_rel) if x * fx + y * fy > -0.2 * r[p]]
    else:
        peaks = list(out)
    if len(peaks) < 4:
        return None
    # tip directions seen from the palm centre, unwrapped along the path
    gaps = _unwrapped_gaps(np.arctan2(rel[peaks, 1], rel[peaks, 0]).tolist())
    # the four fingers are the four consecutive tips packed most tightly in angle: the thumb
    # stands off at a much wider angle than any two fingers do
    k = min(range(len(peaks) - 3), key=lambda k: max(gaps[k:k + 3]))
    tips = peaks[k:k + 4]
    # the tip just beyond the first / the last finger: a thumb stands within ~100° of its index
    # finger; anything farther round is the arm's ragged edge, not a thumb
    before = (peaks[k - 1], gaps[k - 1]) if k > 0 and gaps[k - 1] < MAX_THUMB_GAP else None
    after = (peaks[k + 4], gaps[k + 3]) if k + 4 < len(peaks) and gaps[k + 3] < MAX_THUMB_GAP else None
    merged = _thumb_among(r[tips], gaps[k:k + 3])
    # (unless a tip beyond the other end is the thumb: the short end finger is the little one)
    if merged is not None and (before if merged == 3 else after) is None:
        return _with_merged_pair(path, r, tips, merged, radius)
    if before is None and after is None:
        # none on the fingers' side: a thumb held far out sideways can point towards the arm's
        before, after = _beyond(out, tips, rel)
        before = before if before is not None and before[1] < MAX_THUMB_GAP else None
        after = after if after is not None and after[1] < MAX_THUMB_GAP else None
    valleys = [tips[j] + int(np.argmin(r[tips[j]:tips[j + 1] + 1])) for j in range(3)]
    if before is not None and after is not None:
        # a tip on both sides (the other one a bump of the palm's edge or the wrist): the thumb
        # stands out from its web far more than a bump does from the little finger's base
        stand_before = r[before[0]] - float(r[before[0]:tips[0] + 1].min())
        stand_after = r[after[0]] - float(r[tips[3]:after[0] + 1].min())
        thumb_first = stand_before > stand_after
    elif before is not None or after is not None:
        thumb_first = before is not None
    else:
        # thumb tucked in: the outline runs longer near the palm on its side (round its base)
        near = r < 2.0 * radius
        steps = np.linalg.norm(np.diff(path, axis=0), axis=1) * near[1:]
        thumb_first = float(steps[:valleys[0]].sum()) >= float(steps[valleys[2]:].sum())
    deep = tuple(bool(min(r[tips[j]], r[tips[j + 1]]) - r[valleys[j]] >= MIN_VALLEY_DEPTH * radius)
                 for j in range(3))
    tip_pts, valley_pts = path[tips].copy(), path[valleys].copy()
    if not thumb_first:
        tip_pts, valley_pts, deep = tip_pts[::-1].copy(), valley_pts[::-1].copy(), deep[::-1]
    return Fingers(tips=tip_pts, valleys=valley_pts, deep=deep,
                   thumb_seen=before is not None or after is not None)
