"""Palm ROI extraction: from a whole-hand NIR frame to a scale- and rotation-normalised square.

Pipeline (all on a frame area-downscaled to ~320 px, mapped back for the final warp; details and
measurements in docs/roi.md):
1. exposure sanity and an Otsu split between background and skin; glare cut out, seams between
   touching fingers cut in (segment.py);
2. the largest region, holes filled; the palm circle = the largest inscribed disc;
3. where the hand meets the frame border: the longest run is the arm; other contacts near the palm
   mean the hand is cut (fingers far out are tolerated);
4. the outline's edge width (motion blur), then the outline opened at the arm and its radial
   profile about the palm centre → the four fingertips, the valleys between them and the thumb
   side (keypoints.py);
5. the palm frame from the finger valleys (the index–middle to ring–little valley line, with
   stand-ins where fingers held together misplace a valley; `_valley_lines`), the palm-circle
   frame only where no valley line holds; the ROI is a square of 1.3 valley distances, so it is
   scale-normalised.
In the ROI image the fingers are at the top (row 0) and the wrist at the bottom; the frame is a
proper rotation (never mirrored), so a left palm's ROI is a left palm as seen by the camera.
"""
from __future__ import annotations

import math

import attrs
import cv2
import numpy as np

from palmnode.biometrics import keypoints, segment
from palmnode.biometrics.types import FailureReason, Roi, RoiFailure, check_frame

ROI_SIZE = 128
#: an outline edge width (px at full scale) at most, as a limit: the width is measured across ±8
#: working px (``_STEP_REACH``), so a smooth ramp reads ~17 of them, ~221 px at the largest frame's
#: 13x downscale (4096 px / segment.WORK_LONG_SIDE); a larger limit is never reached (the check is off)
MAX_EDGE_WIDTH_PX = 255.0


@attrs.frozen
class RoiLimits:
    """When a frame is refused instead of giving an ROI; defaults suit ~640×480 NIR captures."""

    #: skin must stand this many grey levels above the background (else: no hand)
    min_contrast: float = 20.0
    #: palm median grey below this: under-exposed; above ``max_palm_grey``: over-exposed
    min_palm_grey: float = 45.0
    max_palm_grey: float = 225.0
    #: fraction of palm pixels at >= 250 that makes the palm over-exposed
    max_clipped: float = 0.2
    #: hand area / frame area below this: nothing hand-sized in view
    min_hand_area: float = 0.03
    #: skin/background cut, as a share of the way from the background mean to the skin mean
    skin_cut: float = 0.4
    #: hand (and arm) area / frame area above this: too close (a hand held across the frame at
    #: the near end of the ±20% distance range covers up to ~58% and is still usable)
    max_hand_area: float = 0.6
    #: a hand cut by the frame and covering more than this share of it is too close, not misplaced
    cut_hand_too_close: float = 0.4
    #: palm-circle diameter / frame short side outside this range: too far / too close
    min_palm_diameter: float = 0.28
    max_palm_diameter: float = 0.75
    #: the outline's edge width (px at full scale) above which the frame counts as motion-blurred
    max_edge_width: float = 17.0
    #: the arm's contact with the border longer than this (palm radii) means the palm is cut
    max_arm_width: float = 4.0
    #: a border contact other than the arm nearer than this (palm radii) to the palm centre means
    #: the hand is cut (farther out, only fingers are: the valleys lie at ~1.0-1.2 radii, and a
    #: palm that is itself cut is caught by the ROI corner check and the quality's completeness)
    min_tip_cut: float = 1.3
    #: ROI side, and its centre from the palm circle's centre (towards the fingers, towards the
    #: thumb), in palm-circle radii
    side_per_palm_radius: float = 1.14
    #: valley frame (used when the index–middle and ring–little valleys are both open): ROI
    #: centre from the valleys' midpoint (along the palm normal, towards the thumb) and ROI side,
    #: in valley distances; the palm axis's lean from the valley line's normal towards the thumb.
    #: Fitted on development renders (seed 0) to agree on average with the palm-circle frame;
    #: the side (1.3 L, ~0.64 palm widths) measured best of 1.15/1.3/1.45/1.6 on them, the
    #: centre 0.8 L below the valleys best of 0.7/0.8/0.92/1.0 (nearer the valleys, an angle
    #: error displaces the texture less).
    valley_centre: tuple[float, float] = (-0.8, -0.155)
    valley_side: float = 1.3
    valley_lean_deg: float = 8.4
    #: valley distance / palm radius outside this: not a valley pair
    valley_span: tuple[float, float] = (0.7, 1.35)
    #: ... widened by this factor for the pair of open valleys where the palm circle meets the
    #: frame border (which stops it short of the palm's width)
    cut_circle_span: float = 1.4
    #: the middle–ring valley's place along the pair's line (share of their distance, from the
    #: ring–little valley) and its largest distance off the line: else a valley is misplaced
    middle_valley_at: tuple[float, float] = (0.43, 0.56)
    middle_valley_off: float = 0.06
    middle_valley_mean: float = 0.484
    #: the middle and ring fingers' mean axis leans this far towards the thumb from the valley
    #: line's normal when they are held together (development renders: 8.3°, sd 3°)
    finger_axis_lean_deg: float = 8.0
    #: the index–little pair is refused when that axis leans more than this from its normal
    #: towards the index finger (the index–middle valley is then a notch up the seam)
    #: (median 6°; pairs with the index–middle valley up a seam: 16–36°; 12/16/20 measured on
    #: development renders, 16 and 20 alike, 12 worse)
    pair_max_lean_deg: float = 16.0
    #: ... and when it leans less than this (the ring–little valley is then a notch up the seam)
    pair_min_lean_deg: float = -10.0
    #: ... with middle and ring held together (one tip, keypoints._with_merged_pair) the axis
    #: from that tip to the midpoint of the pair's valleys leans more loosely: refused beyond
    #: this (development renders, seeds 0, 2, 3: pairs whose frame is right lean 5–21°, those
    #: with a notch up a seam 27–40°; with 16°, 20 right ones fell to the pressed fingers'
    #: axis, 5–15° off their palm's median frame, now 0–5°)
    merged_pair_max_lean_deg: float = 24.0
    #: where only one web is trusted, a ring–little valley lying more than this (palm radii)
    #: beyond the middle–ring one along the fingers' axis is a notch up the seam (ring and little
    #: held together), and the middle–ring valley anchors the line instead (development renders,
    #: seeds 2 and 3: right ones -0.06 R and below, notches +0.17..+0.6 R)
    ring_web_above: float = 0.05
    #: a stand-in line (half as long, so twice as tilted by the same error) is refused when the
    #: axis leans outside this from its normal (its middle–ring valley is a notch up the seam)
    standin_lean_deg: tuple[float, float] = (-18.0, 24.0)
    #: how far (share of the ROI side) an ROI corner may lie outside the frame (the lost cells are
    #: masked by the features; the quality's completeness >= 0.9 bounds how much may be lost)
    corner_out: float = 0.2
    valley_max_disagree_deg: float = 25.0
    #: a valley frame's ROI centre lies at least this far along its "up" from the palm circle's
    #: centre (palm radii): two estimates of the palm's middle, one from the finger webs, one from
    #: the silhouette's bulk. The circle can sit too low (a wrist as wide as the palm, even in the
    #: forearm), never too high (the fingers are thinner than the palm), so an ROI centre well
    #: below it means misread keypoints (a long adducted thumb taken for the index finger, the
    #: hand mirrored) and the capture is refused. Not where the frame border cuts the circle.
    #: (Development renders, seeds 0, 2 and 3: right frames with the circle not cut all above
    #: -0.2, 99% above +0.03; misreads -0.6..-0.25.)
    min_valley_centre_up: float = -0.2
    centre_up: float = 0.22
    centre_thumbward: float = 0.0
    #: without a valley frame, fall back on the palm-circle frame (above) instead of refusing the
    #: capture. Off: that frame lies 5–12% of the side and a few degrees from a palm's valley
    #: frames (genuine pairs mixing the two failed ~80% at FMR 1e-3), and without any open web
    #: the fingers themselves are often misread (development renders, seeds 0, 2, 3 after the
    #: middle–ring line: 3 of 12,600 captures, two of them with fingertips found on the arm's
    #: end, 170° off)
    palm_circle_fallback: bool = False

    def __attrs_post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        """The first rule an operator's limit breaks, in one line naming the key, its value and
        what is allowed (the node's config shows it as ``[roi]: …``); None when all are usable."""
        ranges = (  # (key, above, at most, unit): each value alone
            ("min_contrast", 0, 255, "grey levels"), ("min_palm_grey", None, 255, "a grey level"),
            ("max_palm_grey", None, 255, "a grey level"), ("max_clipped", 0, 1, "a share of the palm"),
            ("min_hand_area", 0, 1, "a share of the frame"), ("max_hand_area", 0, 1, "a share of the frame"),
            ("cut_hand_too_close", 0, 1, "a share of the frame"),
            # the palm circle lies inside the hand, inside the frame: 1 at most (min 1: always too far)
            ("min_palm_diameter", 0, 1, "a share of the frame's short side"),
            ("max_palm_diameter", 0, 1, "a share of the frame's short side"),
            ("max_edge_width", 0, MAX_EDGE_WIDTH_PX, "px at full scale"),
        )
        for name, above, at_most, unit in ranges:
            value = getattr(self, name)
            low_ok = value >= 0 if above is None else value > above
            if not (low_ok and (at_most is None or value <= at_most)):
                allowed = ("0" if above is None else f"above {above}") + (
                    f" to {at_most}" if above is None else f", at most {at_most}" if at_most is not None else "")
                return f"{name} must be {allowed} ({unit}), got {value!r}"
        for low, high in (("min_palm_grey", "max_palm_grey"), ("min_hand_area", "max_hand_area"),
                          ("min_palm_diameter", "max_palm_diameter")):
            if not getattr(self, low) < getattr(self, high):
                return f"{low} ({getattr(self, low)!r}) must be below {high} ({getattr(self, high)!r})"
        return None


#: the limits a gate's config may set (``[roi]``: docs/roi.md): when a frame is refused as too
#: close, too far, badly exposed or blurred. The others place the ROI in the hand: changing them
#: would move every ROI, and no enrolled template would match.
OPERATOR_LIMITS = ("min_contrast", "min_palm_grey", "max_palm_grey", "max_clipped", "min_hand_area",
                   "max_hand_area", "cut_hand_too_close", "min_palm_diameter", "max_palm_diameter",
                   "max_edge_width")
DEFAULT_LIMITS = RoiLimits()


def extract_roi(frame: object, *, limits: RoiLimits = DEFAULT_LIMITS) -> Roi | RoiFailure:
    """The palm ROI of a whole-hand NIR frame, or why there is none.

    Raises :class:`~palmnode.biometrics.types.BadImage` for arrays that are not images at all
    (empty, wrong dtype, NaN, huge); every image gives a ``Roi`` or a typed ``RoiFailure``.
    """
    image = check_frame(frame, name="frame")
    resized, factor = segment.area_downscale(image)
    return _locate(segment.smooth(resized), factor, limits, resized)


def warp(frame: object, roi: Roi) -> np.ndarray:
    """The ``roi.size``² ROI of any channel taken in the same pose as the frame ``roi`` came from."""
    image = check_frame(frame, name="frame")
    return cv2.warpAffine(image, roi.transform, (roi.size, roi.size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _fail(reason: FailureReason, detail: str) -> RoiFailure:
    return RoiFailure(reason=reason, detail=detail)


def _cut(hand: segment.HandMask, limits: RoiLimits, detail: str) -> RoiFailure:
    """A hand cut by the frame: too close when it is also big (the fix is to move away)."""
    if hand.area_fraction > limits.cut_hand_too_close:
        return _fail(FailureReason.TOO_CLOSE, f"{detail}; the hand covers {hand.area_fraction:.0%}")
    return _fail(FailureReason.PARTIAL_HAND, detail)


def _locate(small: np.ndarray, factor: int, limits: RoiLimits, key: np.ndarray) -> Roi | RoiFailure:
    """(``key``: the area-downscaled frame before its blur, under which the edge width is kept;
    the caller's own frame at factor 1)"""
    lo, hi, _, _ = cv2.minMaxLoc(small)
    lo, hi = int(lo), int(hi)
    if hi - lo < limits.min_contrast:
        if lo >= 200:
            return _fail(FailureReason.OVER_EXPOSED, f"the frame is uniformly bright (grey {lo}..{hi})")
        return _fail(FailureReason.NO_HAND, f"the frame is uniform (grey {lo}..{hi})")
    threshold, bg_mean, fg_mean = segment.otsu_split(small)
    if fg_mean - bg_mean < limits.min_contrast:
        # a faint but hand-sized region: the light is too weak for this hand, not an empty scene
        if fg_mean - bg_mean >= limits.min_contrast / 2.5 and fg_mean < limits.min_palm_grey:
            faint = segment.segment(small, factor, threshold, bg_mean, fg_mean - bg_mean)
            if faint is not None and faint.area_fraction >= limits.min_hand_area and faint.radius >= 8:
                return _fail(FailureReason.UNDER_EXPOSED, f"the hand is only {fg_mean - bg_mean:.0f} "
                                                          f"grey levels above the background")
        return _fail(FailureReason.NO_HAND, f"nothing stands out from the background "
                                            f"({fg_mean - bg_mean:.0f} grey levels)")
    # cut lower than Otsu's level: the dim far end of the arm stays whole (the background is flat)
    cut = bg_mean + limits.skin_cut * (fg_mean - bg_mean)
    hand = segment.segment(small, factor, cut, bg_mean, fg_mean - bg_mean)
    if hand is None or hand.area_fraction < limits.min_hand_area:
        area = 0.0 if hand is None else hand.area_fraction
        if bg_mean >= 200:
            return _fail(FailureReason.OVER_EXPOSED, "the whole frame is near white")
        return _fail(FailureReason.NO_HAND, f"no hand-sized region (largest covers {area:.1%})")
    h, w = small.shape
    c, rad = hand.centre, hand.radius

    # exposure of the palm itself (inside 0.8 of the palm circle)
    palm = _disc_pixels(small, c, 0.8 * rad)
    palm_grey = _median(palm) if palm.size else 0.0
    clipped = np.count_nonzero(palm >= 250) / palm.size if palm.size else 0.0   # (np.mean's value)
    if palm_grey > limits.max_palm_grey or clipped > limits.max_clipped:
        return _fail(FailureReason.OVER_EXPOSED, f"palm grey {palm_grey:.0f}, {clipped:.0%} clipped")
    if palm_grey < limits.min_palm_grey:
        return _fail(FailureReason.UNDER_EXPOSED, f"palm grey {palm_grey:.0f} < {limits.min_palm_grey:.0f}")

    # size of the palm against the frame
    diameter = 2 * rad / min(h, w)
    if diameter > limits.max_palm_diameter:
        return _fail(FailureReason.TOO_CLOSE, f"palm spans {diameter:.0%} of the frame height")
    if hand.area_fraction > limits.max_hand_area:   # (a palm that close is usually cut too)
        return _fail(FailureReason.TOO_CLOSE, f"hand covers {hand.area_fraction:.0%} of the frame")

    # the border: the arm leaves through one run, any other contact means the hand is cut
    runs = segment.border_runs(hand.mask, max_gap=int(0.3 * rad))
    arm_dir, arm_pts = None, None
    if runs:
        runs.sort(key=lambda run: run[1], reverse=True)
        arm = runs[0]
        # fingertips cut by another border are tolerated (the ROI does not need them): such a
        # contact lies far out from the palm centre; anything nearer means the hand is cut
        # (contacts on the arm's side are the ragged edge of a dim arm, not a cut)
        arm_side = arm[2].mean(axis=0) - c
        arm_side /= np.linalg.norm(arm_side) + 1e-9       # (also the arm's direction, below)
        for run in runs[1:]:
            rel = run[2] - c
            if (run[1] >= 3 and np.hypot(*rel.T).min() < limits.min_tip_cut * rad
                    and float(rel.mean(axis=0) @ arm_side) < 0.5 * float(np.linalg.norm(rel.mean(axis=0)))):
                return _cut(hand, limits, "the hand is cut by the frame border")
        if arm[1] > limits.max_arm_width * rad:
            return _cut(hand, limits, "the palm is cut by the frame border")
        arm_pts = arm[2]
        arm_dir = arm_side
    if arm_dir is None:
        # no border contact: a forearm fading out before the border still shows by its thickness
        arm_dir = segment.arm_direction(hand)
    if diameter < limits.min_palm_diameter:
        return _fail(FailureReason.TOO_FAR, f"palm spans only {diameter:.0%} of the frame height")

    width = _edge_width(small, hand) * factor
    _remember_edge_width(key if factor > 1 else key.copy(), limits, width)
    if width > limits.max_edge_width:
        return _fail(FailureReason.MOTION_BLUR, f"hand outline smeared over {width:.0f} px")
    path = keypoints.outline_path(hand.contour, (h, w), arm_pts, c, arm_dir)
    fingers = keypoints.find_fingers(path, c, rad, None if arm_dir is None else -arm_dir)
    if fingers is None:
        return _fail(FailureReason.PARTIAL_HAND, "four fingers are not visible")
    return _palm_frame(fingers, hand, arm_dir, limits)


_NEIGHBOURS = np.mgrid[-1:2, -1:2].reshape(2, 1, 9)[::-1]  # (dx, dy) of a 3×3 neighbourhood


_STEP_REACH = 8  # working px each side of the outline
_REACH = np.arange(-_STEP_REACH, _STEP_REACH + 1, 2)
_CROSS = np.concatenate([np.stack([_REACH, 0 * _REACH]), np.stack([0 * _REACH, _REACH])],
                        axis=1).reshape(2, 1, -1)


def outline_edge_width(frame: object, *, limits: RoiLimits = DEFAULT_LIMITS) -> float | None:
    """Width in frame px of the hand's outline edge (about 6 px when still; motion and defocus
    widen it), or None without a hand. Used by quality.py for sharpness."""
    image = check_frame(frame, name="frame")
    resized, factor = segment.area_downscale(image)
    known = _LAST_EDGE_WIDTH
    if known is not None and known[1] is limits and np.array_equal(known[0], resized):
        return known[2]          # the frame extract_roi just measured (quality.assess after it)
    small = segment.smooth(resized)
    _, bg_mean, fg_mean = segment.otsu_split(small)
    if fg_mean - bg_mean < limits.min_contrast / 2.5:
        return None
    cut = bg_mean + limits.skin_cut * (fg_mean - bg_mean)
    hand = segment.segment(small, factor, cut, bg_mean, fg_mean - bg_mean)
    if hand is None:
        return None
    return _edge_width(small, hand) * factor


#: (area-downscaled frame before its blur, limits, edge width) of the last frame extract_roi
#: measured: quality.assess asks for the same frame's edge width right after, and the width is a
#: function of that image and the limits alone, so an equal one gives it without blurring and
#: segmenting again (~0.6 ms). One entry, replaced whole (safe across threads); at factor 1 the
#: key is a copy (the area-downscaled frame would be the caller's own array).
_LAST_EDGE_WIDTH: tuple[np.ndarray, RoiLimits, float] | None = None


def _remember_edge_width(key: np.ndarray, limits: RoiLimits, width: float) -> None:
    global _LAST_EDGE_WIDTH
    _LAST_EDGE_WIDTH = (key, limits, width)


def _disc_pixels(small: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    h, w = small.shape
    x0, x1 = max(0, int(centre[0] - radius)), min(w, int(centre[0] + radius) + 1)
    y0, y1 = max(0, int(centre[1] - radius)), min(h, int(centre[1] + radius) + 1)
    yy, xx = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]   # (np.ogrid, cheaper)
    disc = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2
    return small[y0:y1, x0:x1][disc]


def _edge_width(small: np.ndarray, hand: segment.HandMask) -> float:
    """Typical width (working px) of the skin/background step along the outline.

    Local step height (the grey range around each outline point) / the steepest slope there;
    motion smears the edges across the motion, so the widest third of the outline is what counts.
    """
    pts = hand.contour[:: max(1, len(hand.contour) // 120)]
    h, w = small.shape
    m = _STEP_REACH + 1
    keep = (pts[:, 0] >= m) & (pts[:, 1] >= m) & (pts[:, 0] < w - m) & (pts[:, 1] < h - m)
    pts = pts[keep]
    if len(pts) < 10:
        return 0.0
    # steepest central-difference slope within each outline point's 3×3 neighbourhood
    # (flat indices and take(): far cheaper than 2-D fancy indexing for these few points; the
    # neighbours along the first axis, so the max and min are element-wise passes)
    flat = np.ascontiguousarray(small).ravel()
    at = (pts[:, 1] * w + pts[:, 0]).astype(np.intp)[None, :]
    i = (_NEIGHBOURS[1] * w + _NEIGHBOURS[0]).reshape(-1, 1) + at
    gx = flat.take(i + 1).astype(np.int32) - flat.take(i - 1)
    gy = flat.take(i + w).astype(np.int32) - flat.take(i - w)
    slope = np.sqrt(np.maximum.reduce(gx * gx + gy * gy, axis=0)) / 2
    # the step: grey range along a cross of reach _STEP_REACH (covers a soft edge both sides)
    around = flat.take((_CROSS[1] * w + _CROSS[0]).reshape(-1, 1) + at)
    step = np.maximum.reduce(around, axis=0).astype(np.float64) - np.minimum.reduce(around, axis=0)
    widths = step / np.maximum(slope, 0.5)
    return _quantile(widths, 0.67)


def _quantile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, 100 q)`` (linear interpolation) by one partial sort: numpy's
    percentile costs ~0.2 ms of overhead per call, a large share of the ROI stage."""
    values = values.ravel()
    pos = q * (values.size - 1)
    lo = int(pos)
    hi = min(lo + 1, values.size - 1)
    part = np.partition(values, (lo, hi))
    a, b = float(part[lo]), float(part[hi])
    return a + (pos - lo) * (b - a)


def _median(values: np.ndarray) -> float:
    """``np.median(values)`` without its per-call overhead."""
    return _quantile(values, 0.5)


def _heel_centroid(hand: segment.HandMask, up: np.ndarray) -> np.ndarray | None:
    """Centroid (working px) of the hand inside 1.5 palm radii of the centre and more than 0.3
    radii towards the wrist: the heel of the hand and the wrist, symmetric about the palm axis."""
    # on every other pixel: a centroid of thousands of pixels does not need them all
    # (plain floats for the centre and direction, as numpy computes them on their arrays)
    cx, cy, reach = float(hand.centre[0]) / 2, float(hand.centre[1]) / 2, 1.5 * hand.radius / 2
    mask = hand.mask[::2, ::2]
    h, w = mask.shape
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
    px, py = np.arange(x0, x1) - cx, np.arange(y0, y1) - cy       # the grid's columns and rows
    pxr, pyc = px[None, :], py[:, None]
    keep = ((pxr * pxr + pyc * pyc < reach * reach) & (pxr * up[0] + pyc * up[1] < -0.15 * hand.radius)
            & mask[y0:y1, x0:x1].view(bool))
    count = np.count_nonzero(keep)
    if count < 10:
        return None
    # (the centroid of the kept pixels, with no index arrays: sums of the masked grids)
    mx, my = np.dot(keep.sum(axis=0), px) / count, np.dot(keep.sum(axis=1), py) / count
    return np.array([2 * (cx + mx), 2 * (cy + my)])


def _circle_cut(hand: segment.HandMask) -> bool:
    """Whether the palm circle reaches the frame border (which counts as outside the hand)."""
    h, w = hand.mask.shape
    (x, y), rad = hand.centre, hand.radius + 3.0
    return bool(x - rad < 0 or y - rad < 0 or x + rad > w - 1 or y + rad > h - 1)


#: (cos, sin) of directions across the wrist-side half of the heel region, from "down"
_HEEL_ARC = tuple((float(np.cos(a)), float(np.sin(a))) for a in np.linspace(-0.45 * np.pi, 0.45 * np.pi, 9))


def _heel_cut(hand: segment.HandMask, up: np.ndarray) -> bool:
    """Whether the frame border cuts the region _heel_centroid averages (1.5 palm radii about the
    centre, on the wrist side)."""
    h, w = hand.mask.shape
    cx, cy = float(hand.centre[0]), float(hand.centre[1])
    reach = 1.5 * hand.radius
    dx, dy = -float(up[0]), -float(up[1])            # "down", and across it
    for c, s in _HEEL_ARC:
        x = cx + reach * (c * dx - s * dy)
        y = cy + reach * (c * dy + s * dx)
        if x < 0 or y < 0 or x > w - 1 or y > h - 1:
            return True
    return False


def _valley_frame(valleys: np.ndarray, deep: tuple[bool, bool, bool], up: np.ndarray, radius: float,
                  limits: RoiLimits, tips: np.ndarray | None = None, also_up: np.ndarray | None = None,
                  wide_span: bool = False) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(ROI centre, up, side) anchored on the finger valleys, or None.

    The finger webs are points of the skin itself, so where they are open they fix the palm's
    position, orientation and size far more repeatably than the silhouette's bulk (palm circle,
    heel axis), which moves with the thumb, the wrist and the spread (Zhang et al., "Online
    palmprint identification", IEEE PAMI 2003, build the ROI on the index–middle and
    ring–little valleys). The line is the one from the ring–little valley to the index–middle
    one; where the index–middle valley is misplaced (the index finger held against the middle
    one), the middle–ring valley, which lies about midway, stands in for the line's middle.
    The frame is the valley line's, rotated and offset by the average relation of valleys and
    palm centre, so that it agrees on average with the palm-circle frame used where valleys are
    closed. The frame must agree with the rough ``up`` (the palm's heel axis) or, for the pair
    of both open valleys only, with ``also_up`` (the fingertips' mean direction: the heel axis
    leans where the frame cuts the heel of a hand held close). With ``wide_span`` (the frame
    border stops the palm circle short of the palm's width, so ``radius`` is too small) that
    pair may span up to ``cut_circle_span`` times more palm radii.
    """
    # (2-vectors as float pairs here and below: numpy's per-call overhead on two numbers was most
    # of this stage's cost; every expression keeps numpy's operations and their order, so the
    # results are the same to the bit — its 2-vector dot and norm are x0 y0 + x1 y1 and the
    # square root of that)
    found = _frame_from_valleys(valleys, deep, (float(up[0]), float(up[1])), radius, limits, tips,
                                None if also_up is None else (float(also_up[0]), float(also_up[1])), wide_span)
    return None if found is None else (np.array(found[0]), np.array(found[1]), found[2])


def _frame_from_valleys(valleys: np.ndarray, deep: tuple[bool, bool, bool], up_t: tuple[float, float],
                        radius: float, limits: RoiLimits, tips: np.ndarray | None,
                        also: tuple[float, float] | None, wide_span: bool):
    """:func:`_valley_frame` with float pairs for the directions and the result."""
    vs = [(float(v[0]), float(v[1])) for v in valleys]
    a = np.radians(limits.valley_lean_deg)     # the palm axis leans towards the thumb
    cos_a, sin_a = float(np.cos(a)), float(np.sin(a))
    min_agree = float(np.cos(np.radians(limits.valley_max_disagree_deg)))
    for x, v1, v3, length in _lines(vs, deep, up_t, radius, limits, tips):
        pair = v1 == vs[0] and v3 == vs[2]
        widest = limits.valley_span[1] * (limits.cut_circle_span if wide_span and pair else 1.0)
        if not (limits.valley_span[0] * radius <= length <= widest * radius):
            continue
        normal = _normal(x, up_t)
        mid = (0.5 * (v1[0] + v3[0]), 0.5 * (v1[1] + v3[1]))
        c0, c1 = limits.valley_centre
        centre = (mid[0] + (c0 * normal[0] + c1 * x[0]) * length, mid[1] + (c0 * normal[1] + c1 * x[1]) * length)
        new_up = (cos_a * normal[0] + sin_a * x[0], cos_a * normal[1] + sin_a * x[1])
        # the frame must agree with a rough one: a wild valley pair is a mis-detection (only
        # the pair of both open valleys may lean on the fingertips' direction, not a stand-in)
        agree = _dot(new_up, up_t)
        if also is not None and pair:
            agree = max(agree, _dot(new_up, also))
        if agree < min_agree:
            continue
        return centre, new_up, limits.valley_side * length
    return None


def _dot(a: tuple[float, float], b: tuple[float, float]) -> float:
    return a[0] * b[0] + a[1] * b[1]


def _unit(a: tuple[float, float], floor: float) -> tuple[tuple[float, float], float]:
    """(``a`` / max(|a|, floor), |a|)"""
    n = math.sqrt(a[0] * a[0] + a[1] * a[1])
    d = max(n, floor)
    return (a[0] / d, a[1] / d), n


def _normal(x: tuple[float, float], up: tuple[float, float]) -> tuple[float, float]:
    """The normal of a line along ``x``, on the side of ``up``."""
    return _towards((x[1], -x[0]), up)


def _towards(v: tuple[float, float], ref: tuple[float, float]) -> tuple[float, float]:
    """``v`` or ``-v``, whichever does not point away from ``ref``."""
    return (-v[0], -v[1]) if _dot(v, ref) < 0 else v


def _valley_lines(valleys: np.ndarray, deep: tuple[bool, bool, bool], up: np.ndarray, radius: float,
                  limits: RoiLimits, tips: np.ndarray | None):
    """Candidate valley lines, best first: (unit x towards the index finger, index–middle valley,
    ring–little valley, their distance), the ends stood in for where a valley is misplaced."""
    vs = [(float(v[0]), float(v[1])) for v in valleys]
    for x, v1, v3, length in _lines(vs, deep, (float(up[0]), float(up[1])), radius, limits, tips):
        yield np.array(x), np.array(v1), np.array(v3), length


def _lines(valleys: list[tuple[float, float]], deep: tuple[bool, bool, bool], up: tuple[float, float],
           radius: float, limits: RoiLimits, tips: np.ndarray | None):
    """:func:`_valley_lines` on float pairs."""
    v1, v2, v3 = valleys
    axis = None if tips is None else _pressed_axis(valleys, tips)
    skip_middle = index_high = ring_high = False
    # (middle and ring held together show one tip, taken for both: the axis from that tip leans
    # more loosely, see RoiLimits.merged_pair_max_lean_deg)
    merged = tips is not None and bool(np.all(tips[1] == tips[2]))
    if deep[0] and deep[2]:
        # towards the index finger (thumb side)
        x, length = _unit((v1[0] - v3[0], v1[1] - v3[1]), 1e-9)
        normal = _normal(x, up)
        lean = _lean(axis, x, normal)
        # the middle–ring valley sits about midway on the line; a valley misplaced by touching
        # fingers always lies too far towards the fingertips (up the seam), so the side on
        # which the middle one leaves the line says which one is wrong: the middle one too far
        # up (or shallow) leaves the pair standing, an end one too far up does not
        rel = (v2[0] - v3[0], v2[1] - v3[1])
        along, off = _dot(rel, x) / length, _dot(rel, normal) / length
        if lean > (limits.merged_pair_max_lean_deg if merged else limits.pair_max_lean_deg):
            # the line's normal turns away from the fingers' axis, towards the little finger:
            # the index–middle valley is a notch up the seam (touching fingers pull a valley
            # only ever towards the fingertips); with the middle–ring one above the line (or
            # shallow) that one is a notch too, and only the ring–little one is trusted
            index_high = True
            skip_middle = off > limits.middle_valley_off or not deep[1]
        elif lean < limits.pair_min_lean_deg:
            # likewise the other way: the ring–little valley is a notch up the seam
            ring_high = True
            skip_middle = off > limits.middle_valley_off or not deep[1]
        elif off > limits.middle_valley_off or not deep[1] or (
                off >= -limits.middle_valley_off
                and limits.middle_valley_at[0] <= along <= limits.middle_valley_at[1]):
            yield x, v1, v3, length
    if deep[1] and deep[2] and not (skip_middle or ring_high):  # index held against middle
        x, n = _unit((v2[0] - v3[0], v2[1] - v3[1]), 1e-9)
        length = n / limits.middle_valley_mean
        if _leans_in_bounds(axis, x, up, limits):  # (a middle notch up the seam tilts it too)
            yield x, (v3[0] + x[0] * length, v3[1] + x[1] * length), v3, length
    if deep[0] and deep[1] and not (skip_middle or index_high):  # little held against ring
        x, n = _unit((v1[0] - v2[0], v1[1] - v2[1]), 1e-9)
        length = n / (1.0 - limits.middle_valley_mean)
        if _leans_in_bounds(axis, x, up, limits):
            yield x, v1, (v1[0] - x[0] * length, v1[1] - x[1] * length), length
    if ring_high and axis is not None:
        # only the index–middle valley is trusted (middle, ring and little held together):
        # the mirror image of the case below
        x, length = _line_from_axis(axis, v1, v3, limits)
        yield x, v1, (v1[0] - x[0] * length, v1[1] - x[1] * length), length
    # the ring–little web lies below the middle–ring one along the fingers (the palm's edge
    # slopes down to the little finger): one above it is a notch up the seam
    ring_notch = (deep[1] and axis is not None
                  and _dot((v3[0] - v2[0], v3[1] - v2[1]), axis) > limits.ring_web_above * radius)
    if deep[2] and axis is not None and not ring_high and not ring_notch:
        # only the ring–little valley is trusted (index, middle and ring held together): the
        # notches between the pressed fingers lie up the seams, so they keep their place across
        # the fingers; the middle and ring fingers' axes (tip from between their side notches),
        # leaned back by their usual lean from the valley line's normal, give the direction
        x, length = _line_from_axis(axis, v1, v3, limits)
        yield x, (v3[0] + x[0] * length, v3[1] + x[1] * length), v3, length
    if deep[1] and (not deep[2] or ring_notch) and axis is not None and not merged:
        # only the middle–ring valley is trusted (index and middle, ring and little held
        # together): as above, with the line through it at its average share
        x, length = _line_from_axis(axis, v1, v3, limits)
        m = limits.middle_valley_mean * length
        r3 = (v2[0] - x[0] * m, v2[1] - x[1] * m)
        yield x, (r3[0] + x[0] * length, r3[1] + x[1] * length), r3, length


def _line_from_axis(axis: tuple[float, float], v1: tuple[float, float], v3: tuple[float, float],
                    limits: RoiLimits) -> tuple[tuple[float, float], float]:
    """The valley line's direction (towards the index finger) from the fingers' axis leaned back
    by their usual lean, and its length between the outer valleys."""
    span = (v1[0] - v3[0], v1[1] - v3[1])
    across = (axis[1], -axis[0])
    if _dot(across, span) < 0:
        across = (-across[0], -across[1])          # towards the index finger
    length = _dot(span, across)
    a = np.radians(limits.finger_axis_lean_deg)
    c, s = float(np.cos(a)), float(np.sin(a))
    normal = (c * axis[0] - s * across[0], c * axis[1] - s * across[1])
    x = (-normal[1], normal[0])
    if _dot(x, across) < 0:
        x = (-x[0], -x[1])
    return x, length


def _lean(axis: tuple[float, float] | None, x: tuple[float, float], normal: tuple[float, float]) -> float:
    """Degrees the fingers' ``axis`` leans from a valley line's ``normal`` towards ``x`` (the
    index finger); 0 without an axis."""
    return 0.0 if axis is None else math.degrees(math.atan2(_dot(axis, x), _dot(axis, normal)))


def _leans_in_bounds(axis: tuple[float, float] | None, x: tuple[float, float], up: tuple[float, float],
                     limits: RoiLimits) -> bool:
    return limits.standin_lean_deg[0] <= _lean(axis, x, _normal(x, up)) <= limits.standin_lean_deg[1]


def _pressed_axis(valleys: list[tuple[float, float]], tips: np.ndarray) -> tuple[float, float]:
    """Unit mean axis of the middle and ring fingers (each tip from between its side valleys)."""
    v1, v2, v3 = valleys
    ax, ay = 0.0, 0.0
    for tip, a, b in ((tips[1], v1, v2), (tips[2], v2, v3)):
        d, _ = _unit((float(tip[0]) - 0.5 * (a[0] + b[0]), float(tip[1]) - 0.5 * (a[1] + b[1])), 1e-9)
        ax, ay = ax + d[0], ay + d[1]
    return _unit((ax, ay), 1e-9)[0]


def _palm_frame(fingers: keypoints.Fingers, hand: segment.HandMask, arm_dir: np.ndarray | None,
                limits: RoiLimits) -> Roi | RoiFailure:
    # (2-vectors as float pairs, as in _valley_frame: the same operations in the same order)
    f = hand.factor
    to_frame = lambda p: (np.asarray(p, np.float64) + 0.5) * f - 0.5  # noqa: E731
    centre = ((float(hand.centre[0]) + 0.5) * f - 0.5, (float(hand.centre[1]) + 0.5) * f - 0.5)
    radius = hand.radius * f
    tips = to_frame(fingers.tips)
    valleys = to_frame(fingers.valleys)
    # "up" (towards the fingers): first roughly, the fingertips' mean direction from the palm
    # centre; then the palm's own axis, from the middle of its wrist-side part to its centre
    ux = uy = None
    for tx, ty in tips.tolist():
        rx, ry = tx - centre[0], ty - centre[1]
        n = math.sqrt(rx * rx + ry * ry)
        ux, uy = (rx / n, ry / n) if ux is None else (ux + rx / n, uy + ry / n)
    n = math.sqrt(ux * ux + uy * uy) + 1e-12
    up = (ux / n, uy / n)
    # (the fingertips' direction also vouches for a valley frame where the frame border cuts
    # into the heel region, which then pulls the heel axis aside)
    tips_up = up if _heel_cut(hand, up) else None
    heel = _heel_centroid(hand, up)
    if heel is not None:
        axis = (centre[0] - ((float(heel[0]) + 0.5) * f - 0.5), centre[1] - ((float(heel[1]) + 0.5) * f - 0.5))
        n = math.sqrt(axis[0] * axis[0] + axis[1] * axis[1]) + 1e-12
        up = (axis[0] / n, axis[1] / n)
    if arm_dir is not None and float(arm_dir[0]) * up[0] + float(arm_dir[1]) * up[1] > 0.5:
        return _fail(FailureReason.PARTIAL_HAND, "the fingers point towards the arm")
    # the side of the thumb (the index finger's side), across "up"
    spread = (float(tips[0, 0] - tips[3, 0]), float(tips[0, 1] - tips[3, 1]))
    thumb = _towards((-up[1], up[0]), spread)
    side = limits.side_per_palm_radius * radius
    cu, ct = limits.centre_up, limits.centre_thumbward
    roi_centre = (centre[0] + (cu * up[0] + ct * thumb[0]) * radius, centre[1] + (cu * up[1] + ct * thumb[1]) * radius)
    circle_cut = _circle_cut(hand)
    anchored = _frame_from_valleys(valleys, fingers.deep, up, radius, limits, tips, tips_up,
                                   wide_span=circle_cut)
    if anchored is None and circle_cut:
        # no valley frame, and the palm circle (the fallback) is cut short by the frame border
        return _fail(FailureReason.PARTIAL_HAND, "the palm is not fully in view")
    if anchored is None and not limits.palm_circle_fallback:
        # no finger web to anchor on: the palm-circle frame does not match valley frames
        return _fail(FailureReason.FINGERS_UNCLEAR, "the fingers are not clear: no finger web to anchor the palm on")
    if anchored is not None:
        roi_centre, up, side = anchored
        along = ((roi_centre[0] - centre[0]) * up[0] + (roi_centre[1] - centre[1]) * up[1]) / radius
        if not circle_cut and along < limits.min_valley_centre_up:
            # the webs put the palm below its bulk: misread fingers
            return _fail(FailureReason.FINGERS_UNCLEAR, "the fingers are not clear: the finger webs put the palm below its bulk")
        thumb = _towards((-up[1], up[0]), spread)
    down = (-up[0], -up[1])
    right = (down[1], -down[0])   # image x of the ROI: a proper rotation of "down"
    h, w = (n * f for n in hand.mask.shape)
    # a corner a little outside the frame only loses background-coloured cells, which the
    # features mask and the quality stage's completeness counts
    margin = limits.corner_out * side
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        corner_x = roi_centre[0] + (sx * right[0] + sy * down[0]) * side / 2
        corner_y = roi_centre[1] + (sx * right[1] + sy * down[1]) * side / 2
        if not (-margin <= corner_x <= w + margin and -margin <= corner_y <= h + margin):
            return _fail(FailureReason.PARTIAL_HAND, "the palm is not fully in view")
    scale = ROI_SIZE / side
    half = (ROI_SIZE - 1) / 2
    rows = np.array([right, down]) * scale
    transform = np.empty((2, 3), np.float64)
    transform[:, :2] = rows
    transform[:, 2] = half - rows @ np.array(roi_centre)
    # seen with the fingers up, a right palm has its thumb on the right
    hand_name = "right" if _dot(thumb, right) > 0 else "left"
    if not fingers.thumb_seen and not all(fingers.deep):
        hand_name = "unknown"
    return Roi(transform=transform, size=ROI_SIZE, hand=hand_name,
               palm_width_px=float(2 * radius),
               keypoints=tuple((float(p[0]), float(p[1])) for p in (*valleys, *tips)))


def measure(frames: int = 60, repeats: int = 5) -> dict[str, float]:
    """Median and 95th-percentile ms of ``extract_roi`` + ``warp`` on rendered 640×480 frames."""
    import time

    from palmnode.biometrics.synth import Identity, render, sample_capture

    rng = np.random.default_rng(0)
    images = [render(Identity.from_seed(i, ("left", "right")[i % 2]),
                     sample_capture(rng, rotation=("upright", "any")[i % 2])) for i in range(frames)]
    times = []
    for _ in range(repeats):
        for image in images:
            start = time.perf_counter()
            found = extract_roi(image)
            if isinstance(found, Roi):
                warp(image, found)
            times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "frames": frames}


if __name__ == "__main__":  # python -m palmnode.biometrics.roi: the ROI stage's speed on one core
    print(measure())
