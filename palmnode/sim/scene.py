"""What the virtual camera sees: a hand-shaped silhouette at the hovering distance, lit by the gate.

A simple stand-in until the synthetic hand renderer of the biometric engine replaces it:
NIR light shows the hand bright on a dark background, surface light a little dimmer,
nothing lit gives a dark frame with sensor noise only.
"""
from __future__ import annotations

import cv2
import numpy as np

REFERENCE_MM = 150.0  # the distance at which the hand covers ~30% of the frame


class HandScene:
    def __init__(self, *, width: int = 640, height: int = 480, seed: int = 0) -> None:
        self.width, self.height = width, height
        self.distance_mm: float | None = None
        self.identity = 0
        rng = np.random.default_rng(seed)
        self._noise = rng.normal(0.0, 1.5, size=(height * 2, width)).astype(np.float32)
        self._rng = rng
        self._mask = _silhouette(width, height)

    def present(self, identity: int = 0) -> None:
        self.identity = identity

    def absent(self) -> None:
        self.distance_mm = None

    def render(self, lighting, t: float) -> np.ndarray:
        """One 8-bit grey frame for the given lighting (``.ir`` and ``.surface`` in 0..1)."""
        level = 0.9 * float(lighting.ir) + 0.7 * float(lighting.surface)
        off = int(self._rng.integers(0, self.height))
        frame = 3.0 + self._noise[off:off + self.height]
        if level > 0:
            frame = frame + 15.0 * min(level, 1.0)
            if self.distance_mm is not None and self.distance_mm < 400:
                scale = REFERENCE_MM / max(self.distance_mm, 40.0)
                frame = frame + (110.0 * min(level, 1.0)) * _scaled(self._mask, scale)
        return np.clip(frame, 0, 255).astype(np.uint8)


def _silhouette(width: int, height: int) -> np.ndarray:
    """A soft palm-and-fingers mask (float 0..1) entering from the bottom border."""
    mask = np.zeros((height, width), np.uint8)
    cx, cy = width // 2, int(height * 0.62)
    palm_w, palm_h = int(width * 0.16), int(height * 0.2)
    cv2.ellipse(mask, (cx, cy), (palm_w, palm_h), 0, 0, 360, 255, -1)
    cv2.rectangle(mask, (cx - palm_w + 20, cy), (cx + palm_w - 20, height), 255, -1)  # wrist and arm
    for i, (dx, length) in enumerate(((-0.75, 0.55), (-0.25, 0.65), (0.25, 0.62), (0.7, 0.5))):
        x = int(cx + dx * palm_w)
        top = int(cy - palm_h - length * palm_h * 1.6)
        cv2.line(mask, (x, cy - palm_h // 2), (x + int(dx * 12), top), 255, int(width * 0.035))
    cv2.line(mask, (cx - palm_w, cy + palm_h // 3), (cx - int(palm_w * 1.9), cy - palm_h // 3), 255,
             int(width * 0.04))  # thumb
    return cv2.GaussianBlur(mask, (0, 0), 3.0).astype(np.float32) / 255.0


def _scaled(mask: np.ndarray, scale: float) -> np.ndarray:
    h, w = mask.shape
    m = cv2.warpAffine(mask, np.float32([[scale, 0, w / 2 * (1 - scale)], [0, scale, h * (1 - scale)]]),
                       (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return m
