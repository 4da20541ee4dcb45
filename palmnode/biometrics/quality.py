"""How usable a palm ROI is: sharpness, exposure and completeness, each 0..1, and one score.

- sharpness: the width of the hand's outline edge (roi.outline_edge_width): a still, focused
  hand has a soft but narrow step (~6-8 px at 640×480); motion and defocus widen it. The edge is
  used rather than the palm's own texture because sensor noise dominates the palm's fine-scale
  gradient energy, so texture measures barely move with blur, while the outline is a strong,
  person-independent step.
- exposure: the palm's median grey inside a good window, falling off linearly outside it, times
  the share of pixels that are not clipped.
- completeness: the share of the ROI that is skin (above the frame's skin/background split) and
  inside the frame.
The score is a weighted geometric mean, so any one bad factor pulls it down; ``QualityPolicy``
holds every number (the node's config exposes them) and decides acceptance.
"""
from __future__ import annotations

import attrs
import cv2
import numpy as np

from palmnode.biometrics import roi as roi_module
from palmnode.biometrics.types import BadImage, Quality, Roi, check_frame


#: a factor's weight at most: only their ratios count, and 100:1 already ignores the other factors
#: (a weight near the float limit would make the score nan: no capture ever used)
MAX_WEIGHT = 100.0


@attrs.frozen
class QualityPolicy:
    """Thresholds of the quality stage (grey levels are 8-bit)."""

    #: palm median grey inside [good_low, good_high] scores 1, falling to 0 at bad_low / bad_high
    exposure_good_low: float = 70.0
    exposure_good_high: float = 170.0
    exposure_bad_low: float = 35.0
    exposure_bad_high: float = 235.0
    #: pixels at or above this grey count as clipped (their share lowers the exposure score)
    clip_level: int = 250
    #: outline edge width (frame px) scoring 1 (sharp) and 0 (smeared)
    edge_width_sharp: float = 9.0
    edge_width_blurred: float = 17.0
    #: weights of the geometric mean
    weight_sharpness: float = 1.0
    weight_exposure: float = 1.0
    weight_completeness: float = 2.0
    #: a capture is used when its score and each factor reach these
    min_score: float = 0.5
    min_sharpness: float = 0.25
    min_exposure: float = 0.25
    min_completeness: float = 0.9

    def __attrs_post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        """The first rule a value breaks, in one line naming the key, its value and what is allowed
        (the node's config shows it as ``[quality]: …``); None when every value is usable."""
        exposure = ("exposure_bad_low", "exposure_good_low", "exposure_good_high", "exposure_bad_high")
        for name in exposure:
            if not 0 <= getattr(self, name) <= 255:
                return f"{name} must be 0 to 255 (a grey level), got {getattr(self, name)!r}"
        order = "exposure_bad_low < exposure_good_low <= exposure_good_high < exposure_bad_high"
        for low, high, strict in zip(exposure, exposure[1:], (True, False, True)):
            a, b = getattr(self, low), getattr(self, high)
            if not (a < b if strict else a <= b):
                return f"{low} ({a!r}) must be {'below' if strict else 'at most'} {high} ({b!r}): {order}"
        if not 0 < self.clip_level <= 255:
            return f"clip_level must be 1 to 255 (a grey level), got {self.clip_level!r}"
        if not self.edge_width_sharp > 0:
            return f"edge_width_sharp must be above 0 (px), got {self.edge_width_sharp!r}"
        for name in ("edge_width_sharp", "edge_width_blurred"):  # (a wider edge is never measured)
            if not getattr(self, name) <= roi_module.MAX_EDGE_WIDTH_PX:
                return (f"{name} must be at most {roi_module.MAX_EDGE_WIDTH_PX:g} (px at full scale), "
                        f"got {getattr(self, name)!r}")
        if not self.edge_width_sharp < self.edge_width_blurred:
            return (f"edge_width_sharp ({self.edge_width_sharp!r}) must be below edge_width_blurred "
                    f"({self.edge_width_blurred!r})")
        weights = ("weight_sharpness", "weight_exposure", "weight_completeness")
        for name in weights:
            if not getattr(self, name) >= 0:
                return f"{name} must not be negative, got {getattr(self, name)!r}"
            if not getattr(self, name) <= MAX_WEIGHT:
                return (f"{name} must be 0 to {MAX_WEIGHT:g} (only the weights' ratios count), "
                        f"got {getattr(self, name)!r}")
        if not sum(getattr(self, name) for name in weights) > 0:
            return "weight_sharpness, weight_exposure and weight_completeness are all 0: at least one must be above 0"
        for name in ("min_score", "min_sharpness", "min_exposure", "min_completeness"):
            if not 0 <= getattr(self, name) <= 1:
                return f"{name} must be 0 to 1, got {getattr(self, name)!r}"
        return None

    def accepts(self, quality: Quality) -> bool:
        """True when ``quality`` is good enough to encode and match."""
        return (quality.score >= self.min_score and quality.sharpness >= self.min_sharpness
                and quality.exposure >= self.min_exposure
                and quality.completeness >= self.min_completeness)


DEFAULT_POLICY = QualityPolicy()


def assess(frame: object, roi: Roi, roi_image: object, *, policy: QualityPolicy = DEFAULT_POLICY,
           limits: roi_module.RoiLimits = roi_module.DEFAULT_LIMITS) -> Quality:
    """Quality of ``roi_image`` (the ROI warped from ``frame``, the NIR frame ``roi`` came from
    with ``limits``)."""
    image = check_frame(frame, name="frame")
    patch = check_frame(roi_image, name="roi_image")
    if patch.shape != (roi.size, roi.size):
        raise BadImage(f"roi_image is {patch.shape[1]}×{patch.shape[0]}, expected {roi.size}×{roi.size}")
    # the skin/background split of the frame (a strided sample is plenty for a histogram)
    threshold, _ = cv2.threshold(np.ascontiguousarray(image[::4, ::4]), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    inside = _inside_frame(image.shape, roi)
    skin = (patch > threshold) & inside
    completeness = float(skin.mean())
    sharpness = _sharpness(image, policy, limits)
    exposure = _exposure(patch, skin, policy)
    parts = np.array([sharpness, exposure, completeness])
    weights = np.array([policy.weight_sharpness, policy.weight_exposure, policy.weight_completeness])
    score = float(np.exp(np.sum(weights * np.log(np.maximum(parts, 1e-6))) / weights.sum()))
    if parts.min() <= 0:
        score = 0.0
    return Quality(sharpness=sharpness, exposure=exposure, completeness=completeness, score=score)


def _inside_frame(shape: tuple[int, int], roi: Roi) -> np.ndarray:
    """ROI pixels whose source lies inside the frame."""
    h, w = shape
    inv = cv2.invertAffineTransform(roi.transform)
    # the source of every ROI pixel lies between those of the four corner pixels (an affine
    # map); with the corners inside by more than float rounding, so is every pixel
    last = float(roi.size - 1)
    xs = [inv[0, 0] * u + inv[0, 1] * v + inv[0, 2] for u in (0.0, last) for v in (0.0, last)]
    ys = [inv[1, 0] * u + inv[1, 1] * v + inv[1, 2] for u in (0.0, last) for v in (0.0, last)]
    if min(xs) >= _MARGIN and min(ys) >= _MARGIN and max(xs) <= w - 1 - _MARGIN and max(ys) <= h - 1 - _MARGIN:
        return np.ones((roi.size, roi.size), bool)
    idx = np.arange(roi.size, dtype=np.float64)
    u, v = idx[None, :], idx[:, None]      # (broadcast: the same sums as over a meshgrid)
    x = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    y = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    return (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)


#: frame px: far more than the rounding of an ROI pixel's source position (~1e-12)
_MARGIN = 1e-6


def _ramp(x: float, zero: float, one: float) -> float:
    return float(np.clip((x - zero) / (one - zero), 0.0, 1.0))


def _sharpness(image: np.ndarray, policy: QualityPolicy, limits: roi_module.RoiLimits) -> float:
    width = roi_module.outline_edge_width(image, limits=limits)
    if width is None:
        return 0.0
    return 1.0 - _ramp(width, policy.edge_width_sharp, policy.edge_width_blurred)


def _exposure(patch: np.ndarray, skin: np.ndarray, policy: QualityPolicy) -> float:
    # the median and the clipped share from the skin's grey histogram (exact: np.median's and
    # np.mean's values, without sorting)
    hist = np.bincount(patch[skin], minlength=256)
    n = int(hist.sum())
    if n == 0:
        return 0.0
    ranks = np.cumsum(hist)
    lo, hi = np.searchsorted(ranks, [(n - 1) // 2, n // 2], side="right")
    grey = float(lo) + 0.5 * (float(hi) - float(lo))
    if grey < policy.exposure_good_low:
        level = _ramp(grey, policy.exposure_bad_low, policy.exposure_good_low)
    elif grey > policy.exposure_good_high:
        level = 1.0 - _ramp(grey, policy.exposure_good_high, policy.exposure_bad_high)
    else:
        level = 1.0
    clipped = float(hist[min(max(int(np.ceil(policy.clip_level)), 0), 256):].sum()) / n
    return level * (1.0 - clipped)
