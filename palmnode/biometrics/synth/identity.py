"""Who is in front of the camera: hand shape and posture habits, all drawn from one seed.

Geometry is in *palm units* (the palm's width is 1), image axes (x right, y down), for a right
palm seen from the camera with the fingers up: the thumb is on the +x side, the little finger on
the −x side, the wrist at +y.  A left hand is the mirror image (done when posing, see pose.py).
The skin (lines, creases, veins, texture) is drawn from the same seed in skin.py.
"""
from __future__ import annotations

import math

import attrs
import numpy as np

HANDS = ("left", "right")

#: order of the fingers everywhere in this package (the thumb comes last where it is included)
FINGERS = ("little", "ring", "middle", "index")

# person-level posture habits (persist across sessions), then session-level deviations; chosen so
# that two sessions a month apart differ by ~5° / ~4% / ~40 px / ~13 grey levels (median) while
# captures within a session differ by ~2° / ~3% / ~1.6 levels (docs/synthetic-hands.md, real captures)
PERSON_ROTATION_SD_DEG = 6.0
SESSION_ROTATION_SD_DEG = 4.8
PERSON_SCALE_SD = 0.05
SESSION_SCALE_SD = 0.04
SESSION_SHIFT_SD = 0.036       # fraction of the frame height, per axis (~15 px at 480)
PERSON_EXPOSURE_SD = 0.03      # log gain: skin reflectance
SESSION_EXPOSURE_SD = 0.125    # log gain: skin condition, sensor ageing, ambient
PERSON_SIZE_SD = 0.06          # palm width relative to the average adult palm


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


@attrs.frozen
class HandShape:
    """Hand geometry in palm units (palm width = 1)."""

    size: float                                       # palm width relative to the average palm
    palm_length: float                                # wrist crease to index base, / palm width
    finger_length: tuple[float, float, float, float]  # little, ring, middle, index (base to tip)
    finger_width: tuple[float, float, float, float]
    finger_base_x: tuple[float, float, float, float]
    top_slope: float                                  # little-finger base sits lower, / palm length
    thumb_length: float
    thumb_width: float
    wrist_width: float
    together_deg: tuple[float, float, float, float, float]  # little..index, thumb; + is toward the thumb
    spread_deg: tuple[float, float, float, float, float]


@attrs.frozen
class SessionHabit:
    """How this person holds the hand in one session (derived from seed and session)."""

    rotation_deg: float           # added to the capture's rotation (counterclockwise on screen)
    scale: float                  # multiplies the capture's scale (closer = larger)
    shift: tuple[float, float]    # added to the capture's shift, fraction of frame height
    exposure: float               # multiplies the capture's exposure
    spread: float                 # typical finger spread 0 (together) .. 1 (wide)
    background: float             # grey level of the empty scene
    crease_gain: float            # skin condition: how marked the creases are today
    vein_gain: float              # warm hands show fuller, darker veins than cold ones


@attrs.frozen
class Identity:
    """One palm of one person: ``Identity.from_seed(seed, hand)``; left and right palms of a seed
    share the hand's size and proportions but have their own lines, creases and veins."""

    seed: int
    hand: str
    shape: HandShape

    @classmethod
    def from_seed(cls, seed: int, hand: str | None = None) -> Identity:
        """``hand`` is "left", "right" or None (then drawn from the seed)."""
        seed = int(seed)
        if hand is None:
            hand = HANDS[int(_rng(seed, 7).integers(2))]
        if hand not in HANDS:
            raise ValueError(f"hand must be 'left' or 'right', got {hand!r}")
        return cls(seed=seed, hand=hand, shape=_shape(seed))

    @property
    def palm_key(self) -> tuple[int, int]:
        """Seeds the skin: distinct for the two palms of one person."""
        return (self.seed, HANDS.index(self.hand))

    def habit(self, session: int) -> SessionHabit:
        person = _rng(self.seed, 101)
        p_rot = person.normal(0.0, PERSON_ROTATION_SD_DEG)
        p_scale = person.normal(0.0, PERSON_SCALE_SD)
        p_exp = person.normal(0.0, PERSON_EXPOSURE_SD)
        p_spread = person.uniform(0.2, 0.9)
        s = _rng(self.seed, HANDS.index(self.hand), 202, session)
        return SessionHabit(
            rotation_deg=float(p_rot + s.normal(0.0, SESSION_ROTATION_SD_DEG)),
            scale=float(math.exp(p_scale + s.normal(0.0, SESSION_SCALE_SD))),
            shift=(float(s.normal(0.0, SESSION_SHIFT_SD)), float(s.normal(0.0, SESSION_SHIFT_SD))),
            exposure=float(math.exp(p_exp + s.normal(0.0, SESSION_EXPOSURE_SD))),
            spread=float(np.clip(p_spread + s.normal(0.0, 0.15), 0.0, 1.0)),
            background=float(np.clip(s.normal(14.5, 1.2), 11.5, 16.5)),
            crease_gain=float(np.clip(s.normal(1.0, 0.1), 0.75, 1.3)),
            vein_gain=float(np.clip(s.normal(1.0, 0.15), 0.7, 1.35)),
        )


def _shape(seed: int) -> HandShape:
    r = _rng(seed, 11)
    size = float(np.clip(r.normal(1.0, PERSON_SIZE_SD), 0.85, 1.15))
    palm_length = float(r.normal(1.12, 0.05))
    long_fingers = float(r.normal(1.0, 0.05))  # people with long or short fingers overall
    base = np.array([0.64, 0.82, 0.90, 0.79])
    lengths = base * long_fingers * (1 + r.normal(0, 0.03, 4))
    widths = np.array([0.18, 0.205, 0.22, 0.215]) * (1 + r.normal(0, 0.05)) * (1 + r.normal(0, 0.03, 4))
    base_x = np.array([-0.36, -0.12, 0.12, 0.36]) + r.normal(0, 0.012, 4)
    together = np.array([-1.0, -0.5, 0.0, 1.0, 24.0]) + r.normal(0, 1.5, 5)
    spread = np.array([-30.0, -11.0, 1.0, 16.0, 52.0]) + r.normal(0, 4.0, 5)
    return HandShape(
        size=size,
        palm_length=palm_length,
        finger_length=tuple(float(v) for v in lengths),
        finger_width=tuple(float(v) for v in widths),
        finger_base_x=tuple(float(v) for v in base_x),
        top_slope=float(np.clip(r.normal(0.10, 0.025), 0.04, 0.16)),
        thumb_length=float(r.normal(0.86, 0.04)),
        thumb_width=float(r.normal(0.30, 0.015)),
        wrist_width=float(r.normal(0.80, 0.04)),
        together_deg=tuple(float(v) for v in together),
        spread_deg=tuple(float(v) for v in spread),
    )
