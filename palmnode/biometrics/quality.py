"""How usable a palm ROI is: sharpness, exposure and completeness, each 0..1, and one score.

- sharpness: how much of the ROI's gradient energy survives a light blur is a contrast-free
  measure of focus and motion: a sharp ROI loses much of its fine-scale energy when blurred, an
  already-blurred one barely changes (ratio of gradient energy before/after a σ=1.5 blur).
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

from palmnode.biometrics import segment
from palmnode.biometrics.types import BadImage, Quality, Roi, check_frame


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
    #: sharpness ratio (gradient energy / energy after a σ=1.5 blur) mapping to 0 and to 1
    sharpness_blurred: float = 1.15
    sharpness_sharp: float = 1.6
    #: weights of the geometric mean
    weight_sharpness: float = 1.0
    weight_exposure: float = 1.0
    weight_completeness: float = 2.0
    #: a capture is used when its score and each factor reach these
    min_score: float = 0.5
    min_sharpness: float = 0.25
    min_exposure: float = 0.25
    min_completeness: float = 0.9

    def accepts(self, quality: Quality) -> bool:
        """True when ``quality`` is good enough to encode and match."""
        return (quality.score >= self.min_score and quality.sharpness >= self.min_sharpness
                and quality.exposure >= self.min_exposure
                and quality.completeness >= self.min_completeness)


DEFAULT_POLICY = QualityPolicy()


def assess(frame: object, roi: Roi, roi_image: object, *,
           policy: QualityPolicy = DEFAULT_POLICY) -> Quality:
    """Quality of ``roi_image`` (the ROI warped from ``frame``, the NIR frame ``roi`` came from)."""
    image = check_frame(frame, name="frame")
    patch = check_frame(roi_image, name="roi_image")
    if patch.shape != (roi.size, roi.size):
        raise BadImage(f"roi_image is {patch.shape[1]}×{patch.shape[0]}, expected {roi.size}×{roi.size}")
    # the skin/background split of the frame (a strided sample is plenty for a histogram)
    threshold, _, _ = segment.otsu_split(image[::4, ::4])
    inside = _inside_frame(image.shape, roi)
    skin = (patch > threshold) & inside
    completeness = float(skin.mean())
    sharpness = _sharpness(patch, skin, policy)
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
    idx = np.arange(roi.size, dtype=np.float64)
    u, v = np.meshgrid(idx, idx)
    x = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    y = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    return (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)


def _ramp(x: float, zero: float, one: float) -> float:
    return float(np.clip((x - zero) / (one - zero), 0.0, 1.0))


def _sharpness(patch: np.ndarray, skin: np.ndarray, policy: QualityPolicy) -> float:
    core = cv2.erode(skin.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    if core.sum() < 64:
        return 0.0
    p = patch.astype(np.float32)
    blurred = cv2.GaussianBlur(p, (0, 0), 1.5)
    def energy(img: np.ndarray) -> float:
        gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
        return float(np.mean((gx * gx + gy * gy)[core]))
    sharp_e, soft_e = energy(p), energy(blurred)
    if soft_e <= 1e-6:
        return 0.0  # a flat ROI carries no pattern at all
    ratio = float(np.sqrt(sharp_e / soft_e))
    return _ramp(ratio, policy.sharpness_blurred, policy.sharpness_sharp)


def _exposure(patch: np.ndarray, skin: np.ndarray, policy: QualityPolicy) -> float:
    values = patch[skin]
    if values.size == 0:
        return 0.0
    grey = float(np.median(values))
    if grey < policy.exposure_good_low:
        level = _ramp(grey, policy.exposure_bad_low, policy.exposure_good_low)
    elif grey > policy.exposure_good_high:
        level = 1.0 - _ramp(grey, policy.exposure_good_high, policy.exposure_bad_high)
    else:
        level = 1.0
    clipped = float(np.mean(values >= policy.clip_level))
    return level * (1.0 - clipped)
