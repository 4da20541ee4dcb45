"""Synthetic contactless NIR hand captures: the data for development, tests and the camera emulator.

    ident = Identity.from_seed(42, hand="right")
    cap = sample_capture(np.random.default_rng(0), session=1)       # or rotation="any"
    nir, surface = render_pair(ident, cap)                            # 640×480 uint8 each
    truth = capture_truth(ident, cap)                                 # palm centre, valleys, ...

See docs/synthetic-hands.md for the model and the measured statistics.
"""
from .capture import Capture, sample_capture
from .contact_sheet import contact_sheet
from .identity import HANDS, HandShape, Identity, SessionHabit
from .pose import CaptureTruth
from .render import LIGHTINGS, capture_truth, hand_mask, render, render_pair
from .skin import clear_caches

__all__ = ["Capture", "CaptureTruth", "HANDS", "HandShape", "Identity", "LIGHTINGS", "SessionHabit",
           "capture_truth", "clear_caches", "contact_sheet", "hand_mask", "render", "render_pair",
           "sample_capture"]
