"""What the emulated camera sees: which lights are on, and a default scene to render under them.

A scene is any callable ``scene(lighting, t) -> H×W uint8`` array; the camera emulator calls it
once per frame with the illuminator state at that moment and the seconds since the stream started.
:class:`DiscScene` is the simple stand-in used until the synthetic hand renderer plugs in.
"""
from __future__ import annotations

from typing import Callable

import attrs
import cv2
import numpy as np


def _unit(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} light level must be within 0..1, got {value!r}")


@attrs.frozen
class Lighting:
    """How strongly each illuminator channel is lit right now (0 = off, 1 = full duty)."""

    ir: float = attrs.field(default=0.0, converter=float, validator=_unit)
    surface: float = attrs.field(default=0.0, converter=float, validator=_unit)

    @property
    def dark(self) -> bool:
        return self.ir == 0.0 and self.surface == 0.0


DARK = Lighting()
FULL_IR = Lighting(ir=1.0)

Scene = Callable[[Lighting, float], np.ndarray]

#: grey levels of a lit scene, from real 940 nm captures (docs/synthetic-hands.md, "Measured against the real-capture targets"):
#: palm ~107 with ~20 levels of fall-off towards its edge, background ~15
PALM_IR = 107.0
BACKGROUND_IR = 12.0
#: polarised white lights the surface a little brighter and flatter than NIR does
PALM_SURFACE = 120.0
BACKGROUND_SURFACE = 10.0
#: sensor black level: the mean of a dark frame (noise only)
BLACK_LEVEL = 3.0


class DiscScene:
    """A soft-edged grey disc (a hand stand-in) on a dark background, lit by ``lighting``, with noise.

    Deterministic per ``seed``: sensor noise comes from a small bank of precomputed noise frames,
    picked by ``t``, so the same (lighting, t) sequence renders the same frames. Rendering costs
    one scaled conversion and one saturating add (well under a millisecond at 640×480).
    """

    def __init__(self, width: int = 640, height: int = 480, *, seed: int | None = None,
                 radius: float | None = None, noise_sigma: float = 1.5, noise_frames: int = 8,
                 frame_rate: float = 30.0) -> None:
        self.width = width
        self.height = height
        self.frame_rate = frame_rate
        rng = np.random.default_rng(seed)
        r = radius if radius is not None else 0.33 * min(width, height)  # ~25% of a 4:3 frame
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        cx, cy = 0.5 * width, 0.55 * height
        d = np.hypot(xx - cx, yy - cy) / r
        # reflectance 1.0 at the centre falling by ~20% (≈20 grey levels) at the rim
        disc = np.where(d <= 1.0, 1.0 - 0.2 * d * d, 0.0).astype(np.float32)
        # the outline is soft: a step blurred over ~6 px
        self._disc = cv2.GaussianBlur(disc, (0, 0), 2.0)
        # noise is added as a non-negative offset (mean = the black level), so one saturating add does it
        bank = rng.normal(BLACK_LEVEL, noise_sigma, size=(max(1, noise_frames), height, width))
        self._noise = np.clip(np.rint(bank), 0, 255).astype(np.uint8)

    def __call__(self, lighting: Lighting, t: float) -> np.ndarray:
        noise = self._noise[int(t * self.frame_rate) % len(self._noise)]
        if lighting.dark:
            return noise.copy()
        palm = lighting.ir * PALM_IR + lighting.surface * PALM_SURFACE
        background = lighting.ir * BACKGROUND_IR + lighting.surface * BACKGROUND_SURFACE
        lit = cv2.convertScaleAbs(self._disc, alpha=palm - background, beta=background)
        return cv2.add(lit, noise)
