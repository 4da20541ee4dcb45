"""The forearm told by its thickness when it fades out before the frame border (no border contact
to name it): segment.arm_direction on drawn masks, and extract_roi on a rendered hand whose dim
arm ends inside the frame (its fingertips were once looked for on the arm's faded end)."""
from __future__ import annotations

import cv2
import numpy as np

from palmnode.biometrics import dataset, roi, segment, synth
from palmnode.biometrics.types import Roi


def drawn_hand(arm_deg: float | None) -> segment.HandMask:
    """A 320×240 working mask: palm disc, four thin fingers opposite the arm, a thick forearm
    that ends inside the frame (or none)."""
    small = np.full((240, 320), 15, np.uint8)
    c = np.array([160.0, 120.0])
    cv2.circle(small, (160, 120), 40, 120, -1)
    towards = np.radians(arm_deg if arm_deg is not None else 90.0)
    arm = np.array([np.cos(towards), np.sin(towards)])
    for k in range(4):                      # fingers fanned around the side away from the arm
        a = towards + np.pi + np.radians(-30 + 20 * k)
        tip = c + 95 * np.array([np.cos(a), np.sin(a)])
        cv2.line(small, (160, 120), tuple(int(v) for v in tip), 120, 14)
    if arm_deg is not None:
        end = c + 80 * arm
        cv2.line(small, (160, 120), tuple(int(v) for v in end), 120, 60)
    hand = segment.segment(small, 2, 60.0, 15.0, 105.0)
    assert hand is not None and not segment.border_runs(hand.mask)   # nothing touches the border
    return hand


def test_thick_forearm_gives_the_arm_direction():
    for deg in (0.0, 75.0, 160.0, -100.0):
        u = segment.arm_direction(drawn_hand(deg))
        assert u is not None
        assert np.degrees(np.arccos(np.clip(u @ [np.cos(np.radians(deg)), np.sin(np.radians(deg))], -1, 1))) < 8


def test_no_forearm_in_view_gives_none():
    assert segment.arm_direction(drawn_hand(None)) is None


def test_dim_arm_ending_inside_the_frame_still_gives_the_valley_frame():
    # development capture (seed 0, person 138, left palm, session 1, capture 1, any rotation):
    # the forearm fades out before the left border
    ident = synth.Identity.from_seed(dataset.identity_seed(0, 138), "left")
    cap = synth.sample_capture(np.random.default_rng((0, 138, 0, 1, 1)), session=1, rotation="any")
    nir = synth.render(ident, cap, "nir")
    small, factor = segment.downscale(nir)
    _, bg, fg = segment.otsu_split(small)
    hand = segment.segment(small, factor, bg + 0.4 * (fg - bg), bg, fg - bg)
    assert not segment.border_runs(hand.mask, max_gap=int(0.3 * hand.radius))  # the case under test
    found = roi.extract_roi(nir)
    assert isinstance(found, Roi)
    truth = synth.capture_truth(ident, cap)
    inv = cv2.invertAffineTransform(found.transform)
    up = inv[:, :2] @ np.array([0.0, -1.0])
    up /= np.linalg.norm(up)
    assert np.degrees(np.arccos(np.clip(up @ np.array(truth.up), -1, 1))) < 10
    # the valleys found are the true ones (within a tenth of the palm width)
    valleys = np.array(found.keypoints[:3])
    assert np.all(np.linalg.norm(valleys - np.array(truth.valleys), axis=1) < 0.1 * truth.palm_width_px)
