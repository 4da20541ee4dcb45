"""Quality assessment: each factor moves the way it should, the score and policy behave."""
from __future__ import annotations

import attrs
import cv2
import numpy as np
import pytest

from palmnode import config
from palmnode.biometrics import quality, roi
from palmnode.biometrics.synth import Identity, render, sample_capture
from palmnode.biometrics.types import BadImage, Roi


def placed(**changes):
    ident = Identity.from_seed(31, "right")
    cap = attrs.evolve(sample_capture(np.random.default_rng(4), session=1), habitual=False,
                       rotation_deg=10.0, scale=1.0, shift=(0.0, 0.0), motion_blur_px=0.0, glare=0.0,
                       spread=0.5)
    return render(ident, attrs.evolve(cap, **changes), "nir")


def assess(frame):
    found = roi.extract_roi(frame)
    assert isinstance(found, Roi), found
    return found, quality.assess(frame, found, roi.warp(frame, found))


def test_good_capture_scores_high_and_is_accepted():
    _, q = assess(placed())
    assert q.score > 0.8 and quality.DEFAULT_POLICY.accepts(q)
    assert all(0.0 <= v <= 1.0 for v in (q.sharpness, q.exposure, q.completeness, q.score))


def test_darker_exposure_lowers_the_exposure_factor():
    _, good = assess(placed())
    _, dim = assess(placed(exposure=0.55))
    assert dim.exposure < good.exposure


def test_motion_blur_lowers_sharpness():
    _, still = assess(placed())
    _, moving = assess(placed(motion_blur_px=14.0, motion_blur_deg=0.0))
    assert moving.sharpness < still.sharpness


def test_roi_hanging_out_of_the_frame_is_incomplete():
    frame = placed()
    found, _ = assess(frame)
    moved = attrs.evolve(found, transform=found.transform + np.array([[0, 0, 60.0], [0, 0, 0]]))
    q = quality.assess(frame, moved, roi.warp(frame, moved))
    assert q.completeness < 0.8 and not quality.DEFAULT_POLICY.accepts(q)


def test_policy_thresholds_come_from_config_values(tmp_path):
    """A gate whose optics blur the outline less sets a stricter sharpness ramp in its config."""
    frame = placed()
    found, q = assess(frame)
    assert quality.DEFAULT_POLICY.accepts(q)
    path = tmp_path / "gate.toml"
    path.write_text("[quality]\nedge_width_sharp = 1.0\nedge_width_blurred = 2.0\n")
    policy, limits = config.capture_thresholds(path)
    strict = quality.assess(frame, found, roi.warp(frame, found), policy=policy, limits=limits)
    assert strict.sharpness == 0.0 and not policy.accepts(strict)


def test_bad_roi_image_is_a_typed_error():
    frame = placed()
    found, _ = assess(frame)
    with pytest.raises(BadImage):
        quality.assess(frame, found, np.zeros((64, 64), np.uint8))
    with pytest.raises(BadImage):
        quality.assess(frame, found, np.full((128, 128), np.nan, np.float32))


def test_edge_width_reused_from_extract_roi_equals_a_fresh_measurement():
    frames = [placed(), placed(motion_blur_px=6.0), placed(rotation_deg=120.0)]
    for frame in frames:
        roi._LAST_EDGE_WIDTH = None
        fresh = roi.outline_edge_width(frame)
        assert isinstance(roi.extract_roi(frame), Roi)
        assert roi._LAST_EDGE_WIDTH is not None
        assert roi.outline_edge_width(frame) == fresh
    # a different frame after extract_roi is measured afresh, not given the last one's width
    roi.extract_roi(frames[1])
    roi._LAST_EDGE_WIDTH = (roi._LAST_EDGE_WIDTH[0], roi._LAST_EDGE_WIDTH[1], -1.0)
    assert roi.outline_edge_width(frames[0]) != -1.0
    assert roi.outline_edge_width(frames[1]) == -1.0   # (the same frame does take the stored one)


def test_edge_width_kept_for_a_working_size_frame_is_a_copy():
    # at 320×240 the area downscale is the frame itself: the kept key must not follow the
    # caller's array when it is changed in place afterwards
    frame = np.ascontiguousarray(cv2.resize(placed(), (320, 240), interpolation=cv2.INTER_AREA))
    roi._LAST_EDGE_WIDTH = None
    assert isinstance(roi.extract_roi(frame), Roi)
    kept = roi._LAST_EDGE_WIDTH
    assert kept is not None and kept[0] is not frame
    roi._LAST_EDGE_WIDTH = (kept[0], kept[1], -1.0)
    assert roi.outline_edge_width(frame) == -1.0
    frame[:, :] = 0
    assert roi.outline_edge_width(frame) is None
