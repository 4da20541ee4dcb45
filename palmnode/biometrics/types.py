"""Value types shared by the biometric engine's stages (ROI, quality, features, matching)."""
from __future__ import annotations

import enum

import attrs
import numpy as np

#: frames larger than this (pixels) are refused rather than processed slowly
MAX_FRAME_PIXELS = 4096 * 4096


class BadImage(ValueError):
    """An image array the engine cannot use; the message names the problem in one line."""


class FailureReason(enum.Enum):
    """Why no ROI came out of a frame; ``feedback`` is what the gate tells the person."""

    NO_HAND = "no_hand"
    PARTIAL_HAND = "partial_hand"
    TOO_CLOSE = "too_close"
    TOO_FAR = "too_far"
    MOTION_BLUR = "motion_blur"
    OVER_EXPOSED = "over_exposed"
    UNDER_EXPOSED = "under_exposed"

    @property
    def feedback(self) -> str:
        return _FEEDBACK[self]


_FEEDBACK = {
    FailureReason.NO_HAND: "hold your palm over the gate",
    FailureReason.PARTIAL_HAND: "move your hand into view",
    FailureReason.TOO_CLOSE: "move your hand a little higher",
    FailureReason.TOO_FAR: "move your hand a little closer",
    FailureReason.MOTION_BLUR: "hold still",
    FailureReason.OVER_EXPOSED: "move your hand a little higher",
    FailureReason.UNDER_EXPOSED: "move your hand a little closer",
}


@attrs.frozen
class RoiFailure:
    reason: FailureReason
    detail: str


@attrs.frozen(eq=False)
class Roi:
    """Where the palm is: ``transform`` maps frame pixels to ROI pixels (2×3 affine)."""

    transform: np.ndarray
    size: int
    hand: str
    palm_width_px: float
    keypoints: tuple[tuple[float, float], ...]


@attrs.frozen
class Quality:
    """Each in 0..1; ``score`` combines them (see quality.py)."""

    sharpness: float
    exposure: float
    completeness: float
    score: float


def check_frame(image: object, *, name: str = "image") -> np.ndarray:
    """``image`` as a 2-D uint8 array, or :class:`BadImage` saying what is wrong with it.

    Colour (H×W×3) is converted to grey; float images in 0..1 or 0..255 are converted when finite.
    """
    if not isinstance(image, np.ndarray):
        raise BadImage(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise BadImage(f"{name} is empty (shape {image.shape})")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[..., :3].mean(axis=2) if image.dtype != np.uint8 else \
            np.asarray(image[..., :3].mean(axis=2), dtype=np.uint8)
    if image.ndim != 2:
        raise BadImage(f"{name} must be 2-D grey (or H×W×3), got shape {image.shape}")
    if image.shape[0] * image.shape[1] > MAX_FRAME_PIXELS:
        raise BadImage(f"{name} is {image.shape[1]}×{image.shape[0]}: larger than the "
                       f"{MAX_FRAME_PIXELS} pixels the engine accepts")
    if image.shape[0] < 16 or image.shape[1] < 16:
        raise BadImage(f"{name} is {image.shape[1]}×{image.shape[0]}: too small to hold a palm")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise BadImage(f"{name} holds NaN or infinite values")
        top = float(image.max())
        scale = 255.0 if top <= 1.0 else 1.0
        return np.clip(image * scale, 0, 255).astype(np.uint8)
    if image.dtype.kind in "ui" and image.dtype != np.uint8:
        if image.dtype.itemsize == 2:  # 16-bit sensors: keep the top 8 bits
            return (np.clip(image, 0, 65535) >> 8).astype(np.uint8)
        raise BadImage(f"{name} has dtype {image.dtype}; use uint8 (or uint16, float)")
    raise BadImage(f"{name} has dtype {image.dtype}; use uint8 (or uint16, float)")
