"""What the virtual camera sees: the synthetic hand renderer, lit by the gate's illuminator.

A hand hovering at ``distance_mm`` is a rendered identity (palm lines, veins, hand shape) at the
matching scale; NIR light shows veins, surface light shows lines, both mix by their levels, and
nothing lit (or no hand) gives the background with sensor noise only.
"""
from __future__ import annotations

import attrs
import numpy as np

from palmnode.biometrics.synth import Capture, Identity, render, render_pair, sample_capture

#: the hover height at which the renderer's scale is 1 (the hand covers ~30% of the frame)
NOMINAL_MM = 150.0
BACKGROUND = 15.0  # grey level of the lit background (docs/synthetic-hands.md: ~15)
#: a hovering hand's slow drift: rotation amplitude (degrees), shift amplitude (fraction of the
#: frame height, ~5 px at 480) and its rate
DRIFT_DEG, DRIFT_SHIFT, DRIFT_HZ = 1.5, 0.01, 0.5


class HandScene:
    """``render(lighting, t)`` for the camera emulator; ``present``/``absent`` from the scenario."""

    def __init__(self, *, width: int = 640, height: int = 480, seed: int = 0) -> None:
        self.width, self.height = width, height
        self.distance_mm: float | None = None
        self.identity: Identity | None = None
        self._capture: Capture | None = None
        self._rng = np.random.default_rng(seed)
        self._drift = np.zeros(3)
        self._frames = 0
        self._noise = self._rng.normal(0.0, 1.2, size=(height * 2, width)).astype(np.float32)

    def present(self, identity: int = 0, *, session: int = 1, hand: str | None = None) -> None:
        """Person ``identity`` (a renderer seed) holds a hand over the gate: one pose per hover,
        which drifts a little while the hand hovers (a degree or two, a few pixels) under fresh
        sensor noise in every frame, as a real hand in the air does."""
        self.identity = Identity.from_seed(identity, hand=hand)
        self._capture = sample_capture(self._rng, session=session)
        self._drift = self._rng.uniform(0.0, 2 * np.pi, 3)
        self._frames = 0

    def absent(self) -> None:
        self.distance_mm = None
        self._capture = None

    def render(self, lighting, t: float) -> np.ndarray:
        """One 8-bit grey frame for the given lighting (``.ir`` and ``.surface`` in 0..1)."""
        ir, surface = float(lighting.ir), float(lighting.surface)
        capture = self._capture
        if capture is None or self.distance_mm is None or (ir <= 0 and surface <= 0):
            return self._background(ir + surface)
        self._frames += 1
        a, b, c = self._drift + DRIFT_HZ * 2 * np.pi * t
        capture = attrs.evolve(
            capture, scale=capture.scale * NOMINAL_MM / max(self.distance_mm, 40.0),
            rotation_deg=capture.rotation_deg + DRIFT_DEG * np.sin(a),
            shift=(capture.shift[0] + DRIFT_SHIFT * np.sin(b), capture.shift[1] + DRIFT_SHIFT * np.sin(c)),
            noise_seed=capture.noise_seed + self._frames)
        if ir > 0 and surface > 0:
            nir, surf = render_pair(self.identity, capture, width=self.width, height=self.height)
            mixed = ir * nir.astype(np.float32) + surface * surf.astype(np.float32)
            return np.clip(mixed, 0, 255).astype(np.uint8)
        channel, level = ("nir", ir) if ir > 0 else ("surface", surface)
        frame = render(self.identity, capture, channel, width=self.width, height=self.height)
        return frame if level >= 1.0 else (frame * level).astype(np.uint8)

    def _background(self, level: float) -> np.ndarray:
        off = int(self._rng.integers(0, self.height))
        frame = 2.0 + BACKGROUND * min(level, 1.0) + self._noise[off:off + self.height]
        return np.clip(frame, 0, 255).astype(np.uint8)
