"""One capture's parameters (pose, optics, sensor) and how a gate session draws them."""
from __future__ import annotations

import math

import attrs
import numpy as np

ROTATION_MODES = ("upright", "any")

# within-session jitter (docs/synthetic-hands.md: ~2° / ~3% / ~1.6 grey levels between two captures)
CAPTURE_ROTATION_SD_DEG = 1.8
CAPTURE_SCALE_SD = 0.032
CAPTURE_SHIFT_SD = 0.015       # fraction of frame height per axis (~7 px at 480)
CAPTURE_EXPOSURE_SD = 0.0157
UPRIGHT_SPREAD_SD_DEG = 0.0    # the person's habit already spreads rotations over ~±13° (5–95%)
MOTION_BLUR_RATE = 0.08
GLARE_RATE = 0.25
#: real captures are often JPEG-compressed at about this quality
JPEG_QUALITY = 75


@attrs.frozen
class Capture:
    """Everything that changes from one capture to the next.

    With ``habitual`` (the default) rotation, scale, shift, exposure and spread are relative to the
    person's habit for ``session`` (see ``Identity.habit``); with ``habitual=False`` they are taken
    as they are, which lets a test place a hand exactly. ``capture_truth`` gives the final pose.
    """

    session: int = 1
    rotation_deg: float = 0.0          # counterclockwise on screen; 0 = fingers up, arm to the bottom
    scale: float = 1.0                 # image scale (1/distance), 1 = nominal hover height
    shift: tuple[float, float] = (0.0, 0.0)  # palm offset from its fitted place, fraction of height
    spread: float = 0.0                # added to the habit's finger spread (0 together .. 1 wide)
    exposure: float = 1.0              # light gain
    bend: float = 0.012                # non-rigid bend amplitude, palm units
    wrist_deg: float = 0.0             # forearm's angle to the hand axis (wrist deviation)
    tilt_deg: float = 0.0              # palm tilted out of the image plane (foreshortening, shading)
    tilt_dir_deg: float = 0.0          # frame direction (degrees, x toward y) of the tilt
    pose_seed: int = 0                 # bend field and small per-finger angle jitter
    noise_seed: int = 0
    noise: float = 1.0                 # sensor noise multiplier
    motion_blur_px: float = 0.0        # blur streak length in pixels (0 = still)
    motion_blur_deg: float = 0.0
    glare: float = 0.0                 # housing-reflection peak, grey levels (0 = none)
    glare_seed: int = 0
    jpeg_quality: int | None = JPEG_QUALITY
    habitual: bool = True


def sample_capture(rng: np.random.Generator | int, *, session: int = 1, rotation: str = "upright",
                   jpeg: bool = True) -> Capture:
    """A capture as a gate sees it in ``session``.

    ``rotation="upright"``: the arm comes from the bottom border, rotation within ~±13° (5–95%:
    the person's habit plus ~2° jitter) — the common gate case. ``"any"``: any rotation on the full
    circle, so the arm can leave through any border. Which palm (left/right) is the Identity's.
    """
    if rotation not in ROTATION_MODES:
        raise ValueError(f"rotation must be one of {ROTATION_MODES}, got {rotation!r}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    rot = float(rng.normal(0.0, CAPTURE_ROTATION_SD_DEG))
    if rotation == "any":
        rot = float(rng.uniform(-180.0, 180.0))
    blur = rng.random() < MOTION_BLUR_RATE
    glare = rng.random() < GLARE_RATE
    return Capture(
        session=int(session),
        rotation_deg=rot,
        scale=float(math.exp(rng.normal(0.0, CAPTURE_SCALE_SD))),
        shift=(float(rng.normal(0.0, CAPTURE_SHIFT_SD)), float(rng.normal(0.0, CAPTURE_SHIFT_SD))),
        spread=float(rng.normal(0.0, 0.12)),
        exposure=float(math.exp(rng.normal(0.0, CAPTURE_EXPOSURE_SD))),
        bend=float(rng.uniform(0.005, 0.02)),
        wrist_deg=float(rng.normal(0.0, 8.0)),
        tilt_deg=float(abs(rng.normal(0.0, 9.0))),
        tilt_dir_deg=float(rng.uniform(0.0, 360.0)),
        pose_seed=int(rng.integers(2**31)),
        noise_seed=int(rng.integers(2**31)),
        noise=float(rng.uniform(0.8, 1.3)),
        motion_blur_px=float(rng.uniform(4.0, 14.0)) if blur else 0.0,
        motion_blur_deg=float(rng.uniform(0.0, 180.0)),
        glare=float(rng.uniform(90.0, 240.0)) if glare else 0.0,
        glare_seed=int(rng.integers(2**31)),
        jpeg_quality=JPEG_QUALITY if jpeg else None,
    )
