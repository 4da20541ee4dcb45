"""ROI extraction on purpose-made frames: bad arrays, each failure reason, glare, both hands.

The frames here are simple drawn silhouettes (palm ellipse, four fingers, thumb, an arm running
out of the frame) at the grey levels of real NIR captures: hand ~107 on ~15, soft edges.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from palmnode.biometrics import quality, roi
from palmnode.biometrics.types import MAX_FRAME_ASPECT, BadImage, FailureReason, Roi, RoiFailure

W, H = 640, 480


def draw_hand(angle: float = 0.0, hand: str = "right", spread: float = 1.0, scale: float = 1.6,
              shift: tuple[float, float] = (0.0, 0.0), skin: float = 107.0, background: float = 15.0,
              edge_sigma: float = 2.5, seed: int = 0) -> np.ndarray:
    """An upright right hand (thumb on the viewer's right, arm to the bottom) turned ``angle``° ccw."""
    # draw on a canvas twice the frame so the arm still runs out of the frame after rotating
    cw, ch = 2 * W, 2 * H
    canvas = np.zeros((ch, cw), np.float32)
    # the hand's middle (a little above the palm centre) sits at the frame centre, turned about it
    cx, cy = cw / 2 + shift[0], ch / 2 + 45 * scale + shift[1]
    pivot = (cw / 2 + shift[0], ch / 2 + shift[1])
    pw, ph = 52 * scale, 58 * scale
    cv2.ellipse(canvas, (int(cx), int(cy)), (int(pw), int(ph)), 0, 0, 360, 1.0, -1)
    cv2.line(canvas, (int(cx), int(cy)), (int(cx), int(cy + 4000)), 1.0, int(80 * scale))
    finger_w = int(20 * scale)
    for x0, length, lean in ((-36, 62, -1), (-12, 80, -0.33), (12, 86, 0.33), (36, 74, 1)):
        bx, by = cx + x0 * scale, cy - ph * 0.78
        a = np.deg2rad(lean * 8 * spread)
        tx, ty = bx + np.sin(a) * length * scale, by - np.cos(a) * length * scale
        cv2.line(canvas, (int(bx), int(by)), (int(tx), int(ty)), 1.0, finger_w)
        cv2.circle(canvas, (int(tx), int(ty)), finger_w // 2, 1.0, -1)
    bx, by = cx + pw * 0.8, cy + 10 * scale
    cv2.line(canvas, (int(bx), int(by)), (int(bx + 50 * scale), int(by - 55 * scale)), 1.0, int(24 * scale))
    if hand == "left":
        canvas = np.ascontiguousarray(canvas[:, ::-1])
        pivot = (cw - 1 - pivot[0], pivot[1])
    turn = cv2.getRotationMatrix2D(pivot, angle, 1.0)
    canvas = cv2.warpAffine(canvas, turn, (cw, ch))[ch // 4: ch // 4 + H, cw // 4: cw // 4 + W]
    img = background + (skin - background) * canvas
    img = cv2.GaussianBlur(img, (0, 0), edge_sigma)
    img += np.random.default_rng(seed).normal(0, 1.5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def reason(result: object) -> FailureReason | None:
    return result.reason if isinstance(result, RoiFailure) else None


@pytest.mark.parametrize("angle", [0, 37, 90, 151, 180, 233, 300])
@pytest.mark.parametrize("hand", ["left", "right"])
@pytest.mark.parametrize("spread", [0.0, 1.0])
def test_drawn_hand_any_rotation_either_hand(angle, hand, spread):
    frame = draw_hand(angle, hand, spread)
    result = roi.extract_roi(frame)
    assert isinstance(result, Roi), result
    assert result.hand == hand
    assert result.transform.shape == (2, 3) and result.size == 128
    # the ROI's "up" (towards row 0) points to the fingers: rotate (0, -1) back into the frame
    lin = result.transform[:, :2]
    up_in_frame = np.linalg.solve(lin, np.array([0.0, -1.0]))
    up_angle = np.degrees(np.arctan2(-up_in_frame[1], up_in_frame[0]))  # ccw from +x, y up
    # (within 10°: the frame is the valley line's normal leaned towards the thumb by the average
    # anatomical lean, roi.RoiLimits.valley_lean_deg; these drawn fingers sit on a level line)
    assert abs((up_angle - (90 + angle) + 180) % 360 - 180) < 12
    assert np.linalg.det(lin) > 0  # a rotation, never a mirror
    patch = roi.warp(frame, result)
    assert patch.shape == (128, 128) and patch.dtype == np.uint8
    assert (patch > 60).mean() > 0.99  # all of it is palm


def test_fingers_together_give_the_same_roi_as_spread():
    a = roi.extract_roi(draw_hand(20, spread=1.0))
    b = roi.extract_roi(draw_hand(20, spread=0.0))
    assert isinstance(a, Roi) and isinstance(b, Roi)
    centre = lambda r: cv2.invertAffineTransform(r.transform) @ np.array([63.5, 63.5, 1.0])  # noqa: E731
    assert np.linalg.norm(centre(a) - centre(b)) < 0.05 * a.palm_width_px


@pytest.mark.parametrize("bad, words", [
    (np.zeros((0, 0), np.uint8), "empty"),
    (np.zeros((480, 640), np.int32), "dtype"),
    (np.zeros((480, 640), bool), "dtype"),
    (np.zeros((480, 640), np.complex64), "dtype"),
    (np.zeros((5000, 5000), np.uint8), "larger"),
    (np.full((480, 640), np.nan, np.float32), "NaN"),
    (np.zeros((2, 480, 640), np.uint8), "2-D"),
    (np.zeros((8, 8), np.uint8), "too small"),
    (np.zeros((480, 640, 3), np.int64), "dtype int64"),   # colour: refused as grey is, not averaged to float
    (np.zeros((480, 640, 3), bool), "dtype bool"),
    (np.zeros((20, 8000), np.uint8), "too elongated"),    # the segmentation's resize had no pixels left
    (np.zeros((10000, 16), np.uint8), "too elongated"),
    ([[1, 2], [3, 4]], "numpy"),
])
def test_unusable_arrays_raise_bad_image(bad, words):
    with pytest.raises(BadImage, match=words):
        roi.extract_roi(bad)


def test_a_template_holds_codes_of_its_modalitys_grid_only():
    """A 16-row code in the surface slot was matched against the 32-row gallery (scores with no
    meaning, ranked by the search); only to_bytes refused it."""
    from palmnode.biometrics.types import BadTemplate, ModalityCode, PalmTemplate

    sixteen = ModalityCode.from_planes(np.zeros((4, 16), np.uint32))
    thirty_two = ModalityCode.from_planes(np.zeros((4, 32), np.uint32))
    with pytest.raises(BadTemplate, match="a surface code of 16 rows where 32 are expected"):
        PalmTemplate(surface=sixteen, vein=None)
    with pytest.raises(BadTemplate, match="a vein code of 32 rows where 16 are expected"):
        PalmTemplate(surface=None, vein=thirty_two)
    assert PalmTemplate(surface=thirty_two, vein=sixteen).to_bytes()[:2] == b"PT"


def test_a_colour_frame_is_its_grey_whatever_the_dtype():
    """A 12-bit colour frame (three equal channels) is the 12-bit grey frame: its mean keeps the
    sensor's bits, as the grey rules do (it was averaged to float and clipped white)."""
    from palmnode.biometrics.types import check_frame

    grey = (np.arange(480 * 640, dtype=np.uint32).reshape(480, 640) % 4096).astype(np.uint16)
    for frame in (grey, grey.astype(np.float32) / 4095):
        assert np.array_equal(check_frame(np.dstack([frame] * 3)), check_frame(frame))
    assert np.array_equal(check_frame(np.dstack([grey] * 4)), check_frame(grey))      # alpha ignored


@pytest.mark.parametrize("frame, expected", [
    (np.zeros((480, 640), np.uint8), FailureReason.NO_HAND),
    (np.full((480, 640), 255, np.uint8), FailureReason.OVER_EXPOSED),
    (np.full((480, 640), 90, np.uint8), FailureReason.NO_HAND),
    (np.random.default_rng(1).normal(15, 3, (480, 640)).clip(0, 255).astype(np.uint8), FailureReason.NO_HAND),
])
def test_empty_scenes_give_typed_failures(frame, expected):
    result = roi.extract_roi(frame)
    assert reason(result) is expected, result
    assert result.reason.feedback  # the gate has something to say


def test_float_and_colour_frames_are_accepted():
    frame = draw_hand(10)
    assert isinstance(roi.extract_roi(frame.astype(np.float32) / 255.0), Roi)
    assert isinstance(roi.extract_roi(np.dstack([frame] * 3)), Roi)


@pytest.mark.parametrize("shift, angle", [
    ((0, -150), 0),      # fingers out of the top
    ((0, -260), 0),      # fingers and palm out of the top
    ((260, 0), 0),       # palm cut on the right
    ((-260, 0), 0),      # palm cut on the left
    ((-170, 0), 90),     # turned: fingers out of the left border
])
def test_hand_cut_by_the_border_is_partial(shift, angle):
    result = roi.extract_roi(draw_hand(angle, shift=shift))
    assert reason(result) is FailureReason.PARTIAL_HAND, result


def test_too_close_and_too_far():
    assert reason(roi.extract_roi(draw_hand(0, scale=4.0, shift=(0, 200)))) in (
        FailureReason.TOO_CLOSE, FailureReason.PARTIAL_HAND)
    assert reason(roi.extract_roi(draw_hand(0, scale=3.4, shift=(0, 120)))) is FailureReason.TOO_CLOSE
    assert reason(roi.extract_roi(draw_hand(0, scale=0.9))) is FailureReason.TOO_FAR


def test_over_and_under_exposed():
    assert reason(roi.extract_roi(draw_hand(0, skin=252))) is FailureReason.OVER_EXPOSED
    assert reason(roi.extract_roi(draw_hand(0, skin=40, background=8))) is FailureReason.UNDER_EXPOSED


def test_motion_blur():
    frame = draw_hand(0)
    assert isinstance(roi.extract_roi(frame), Roi)
    streak = np.zeros((1, 41), np.float32)
    streak[0, :] = 1 / 41
    smeared = cv2.filter2D(frame, -1, cv2.warpAffine(np.pad(streak, ((20, 20), (0, 0))),
                                                     cv2.getRotationMatrix2D((20, 20), 10, 1.0), (41, 41)))
    assert reason(roi.extract_roi(smeared)) is FailureReason.MOTION_BLUR


def test_glare_near_the_edges_does_not_join_the_hand():
    frame = draw_hand(0)
    clean = roi.extract_roi(frame)
    glared = frame.copy()
    # housing reflections: small saturated blobs within 10% of the border, one touching the arm
    for x, y, r in ((300, 470, 9), (20, 240, 7), (620, 30, 6), (360, 455, 8)):
        cv2.circle(glared, (x, y), r, 255, -1)
    glared = cv2.GaussianBlur(glared, (0, 0), 1.0)
    result = roi.extract_roi(glared)
    assert isinstance(result, Roi), result
    assert np.allclose(result.keypoints, clean.keypoints, atol=3.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(16, 700), st.integers(16, 700), st.sampled_from(["u8", "f32", "f64", "u16"]),
       st.integers(0, 2**31 - 1))
def test_random_arrays_never_crash(h, w, kind, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w)).astype(np.uint8)
    if rng.random() < 0.5:  # smooth blobs that look a bit like a hand
        base = cv2.GaussianBlur(base, (0, 0), 6)
        base = ((base > 128) * 110 + 15).astype(np.uint8)
    frame = {"u8": base, "f32": base.astype(np.float32), "f64": base / 255.0,
             "u16": base.astype(np.uint16) * 257}[kind]
    if max(h, w) > MAX_FRAME_ASPECT * min(h, w):
        with pytest.raises(BadImage, match="too elongated"):
            roi.extract_roi(frame)
        return
    result = roi.extract_roi(frame)
    assert isinstance(result, (Roi, RoiFailure))
    if isinstance(result, Roi):
        patch = roi.warp(frame, result)
        q = quality.assess(frame, result, patch)
        assert 0.0 <= q.score <= 1.0
