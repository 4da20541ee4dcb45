"""The synthetic hand renderer: determinism, identities, sessions, lighting channels, ground truth."""
from __future__ import annotations

import attrs
import cv2
import numpy as np
import pytest

from palmnode.biometrics.synth import (Capture, Identity, capture_truth, clear_caches, contact_sheet,
                                       hand_mask, render, render_pair, sample_capture)
from palmnode.biometrics.synth import stats
from palmnode.biometrics.synth.render import scene
from palmnode.biometrics.synth.skin import skin_layers


def _cap(seed: int, **kw) -> Capture:
    return sample_capture(np.random.default_rng(seed), **kw)


def test_same_seed_same_bytes_even_after_the_caches_are_dropped():
    ident, cap = Identity.from_seed(11, hand="left"), _cap(3, session=2, rotation="any")
    nir, surface = render_pair(ident, cap)
    clear_caches()
    nir2, surface2 = render_pair(Identity.from_seed(11, hand="left"), cap)
    assert nir.tobytes() == nir2.tobytes() and surface.tobytes() == surface2.tobytes()
    assert render(ident, cap, "nir").tobytes() == nir.tobytes()
    assert render(ident, cap, "surface").tobytes() == surface.tobytes()
    assert nir.dtype == np.uint8 and nir.shape == (480, 640)


def test_frame_size_follows_the_arguments():
    ident, cap = Identity.from_seed(1), _cap(1)
    assert render(ident, cap, "nir", width=800, height=600).shape == (600, 800)
    t = capture_truth(ident, cap, width=800, height=600)
    assert 0 < t.palm_centre[0] < 800 and 0 < t.palm_centre[1] < 600


def test_identity_from_seed():
    a = Identity.from_seed(5, hand="right")
    assert a == Identity.from_seed(5, hand="right")
    assert a.shape == Identity.from_seed(5, hand="left").shape  # one person, two palms
    assert Identity.from_seed(5).hand in ("left", "right")
    assert a.shape != Identity.from_seed(6, hand="right").shape
    with pytest.raises(ValueError):
        Identity.from_seed(5, hand="middle")


def _patches(ident, caps, channel):
    out = []
    for cap in caps:
        frame = render(ident, cap, channel)
        out.append(stats.palm_patch(frame, capture_truth(ident, cap)))
    return out


@pytest.mark.parametrize("channel", ["nir", "surface"])
def test_palms_differ_between_people_and_agree_within_one(channel):
    still = dict(motion_blur_px=0.0, glare=0.0)
    caps = [attrs.evolve(_cap(k, session=1), **still) for k in range(2)]
    same, other = [], []
    for person in range(4):
        a = _patches(Identity.from_seed(person, hand="right"), caps, channel)
        other_cap = attrs.evolve(caps[0], noise_seed=caps[0].noise_seed + 1)  # own sensor noise
        b = _patches(Identity.from_seed(person + 100, hand="right"), [other_cap], channel)
        same.append(stats.similarity(a[0], a[1]))
        other.append(stats.similarity(a[0], b[0]))
    assert min(same) > max(other) + 0.1, (same, other)
    assert max(other) < 0.3


def test_sessions_differ_more_than_captures_within_a_session():
    rng = np.random.default_rng(7)
    within, between = [], []
    for person in range(6):
        ident = Identity.from_seed(300 + person, hand="right")
        caps = {s: [attrs.evolve(sample_capture(rng, session=s), motion_blur_px=0.0, glare=0.0)
                    for _ in range(2)] for s in (1, 2)}
        p = {s: _patches(ident, cs, "surface") for s, cs in caps.items()}
        within += [stats.similarity(*p[1]), stats.similarity(*p[2])]
        between += [stats.similarity(p[1][0], p[2][0]), stats.similarity(p[1][1], p[2][1])]
        t = {s: [capture_truth(ident, c) for c in cs] for s, cs in caps.items()}
        assert t[1][0].palm_centre != t[2][0].palm_centre
    assert np.mean(within) > np.mean(between) + 0.02, (within, between)


def test_dark_frame_is_background_and_sensor_noise_only():
    ident, cap = Identity.from_seed(2), _cap(2, session=1)
    dark = render(ident, cap, "dark").astype(float)
    assert 8 <= dark.mean() <= 17 and dark.std() < 3 and dark.max() < 40


def _vein_in_frame(ident, cap):
    s = scene(ident, cap)
    m1, m2 = cv2.convertMaps(s.map_x, s.map_y, cv2.CV_32FC1) if s.map_y.dtype != np.float32 \
        else (s.map_x, s.map_y)
    vein = cv2.remap(skin_layers(ident).vein, m1, m2, cv2.INTER_LINEAR)
    inside = cv2.erode((s.mask > 0.99).astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
    return vein, inside


def _band(frame):
    f = frame.astype(np.float32)
    return cv2.GaussianBlur(f, (0, 0), 2.0) - cv2.GaussianBlur(f, (0, 0), 12.0)


def test_veins_show_in_nir_and_not_in_surface_light():
    for seed in range(3):
        ident = Identity.from_seed(40 + seed, hand="right")
        cap = attrs.evolve(_cap(seed, session=1), motion_blur_px=0.0, glare=0.0)
        nir, surface = render_pair(ident, cap)
        vein, inside = _vein_in_frame(ident, cap)
        v = _band(vein * 100)[inside]
        corr = lambda f: float(np.corrcoef(_band(f)[inside], v)[0, 1])  # noqa: E731
        assert corr(nir) < -0.3, corr(nir)          # dark where the veins are
        assert abs(corr(surface)) < 0.1, corr(surface)


def test_truth_points_sit_on_the_hand_and_the_thumb_on_its_side():
    for seed in range(12):
        hand = ("left", "right")[seed % 2]
        ident = Identity.from_seed(60 + seed, hand=hand)
        cap = _cap(seed, session=1, rotation="upright" if seed < 6 else "any")
        t = capture_truth(ident, cap)
        mask = hand_mask(ident, cap)
        x, y = (int(round(v)) for v in t.palm_centre)
        assert mask[y, x] > 0.99
        # valleys lie between the fingers: at the hand's edge, not deep inside or far outside
        for vx, vy in t.valleys:
            if 0 <= vx < 640 and 0 <= vy < 480:
                assert 0.02 < mask[int(vy), int(vx)] <= 1.0
        # the thumb side: right palm seen from the camera has the thumb to the right of the axis
        up = np.array(t.up)
        right_of_axis = np.array([-up[1], up[0]])
        side = (np.array(t.thumb_valley) - np.array(t.palm_centre)) @ right_of_axis
        assert (side > 0) == (hand == "right"), (hand, side)
        assert 0.05 < stats.border_cover(mask, t.border) < 0.9


def test_sample_capture_modes():
    rng = np.random.default_rng(0)
    ident = Identity.from_seed(3)
    upright = [capture_truth(ident, sample_capture(rng, session=1)) for _ in range(60)]
    assert all(t.border == "bottom" and abs(t.rotation_deg) < 35 for t in upright)
    anyway = [capture_truth(ident, sample_capture(rng, session=1, rotation="any")) for _ in range(80)]
    assert {t.border for t in anyway} == {"top", "bottom", "left", "right"}
    with pytest.raises(ValueError):
        sample_capture(rng, session=1, rotation="sideways")
    assert sample_capture(1, session=1, jpeg=False).jpeg_quality is None


def test_unknown_lighting_is_refused():
    with pytest.raises(ValueError, match="lighting"):
        render(Identity.from_seed(1), Capture(), "uv")


def test_glare_sits_near_the_frame_edge_outside_the_hand():
    ident = Identity.from_seed(8)
    cap = attrs.evolve(_cap(8, session=1), glare=200.0, motion_blur_px=0.0)
    nir = render(ident, cap, "nir").astype(float)
    mask = hand_mask(ident, cap)
    bright = (nir > 80) & (mask < 0.01)
    ys, xs = np.nonzero(bright)
    assert len(ys) > 20
    edge = np.minimum.reduce([ys, 479 - ys, xs, 639 - xs])
    assert np.percentile(edge, 90) <= 0.1 * 480


def test_statistics_close_to_real_captures():
    out = stats_summary = __import__("palmnode.biometrics.synth.validate", fromlist=["measure"]).measure(6)
    m = out["measured"]
    assert 24 <= m["coverage_%"][0] <= 36, stats_summary
    assert 95 <= m["palm_grey"][0] <= 120
    assert 12 <= m["background"][0] <= 17
    assert 4 <= m["edge_10_90_px"][0] <= 8
    assert 12 <= m["palm_falloff"][0] <= 28
    assert 4 <= m["vein_depth"][0] <= 8.5
    assert 1.5 <= m["crease_depth_surface"][0] <= 3.5
    assert out["within_session_median_abs_diff"]["rotation"] < out["session_median_abs_diff"]["rotation"]


def test_contact_sheet_writes_a_png(tmp_path):
    ident = Identity.from_seed(1)
    nir, surface = render_pair(ident, _cap(1))
    path = contact_sheet([nir, surface], ["nir", "surface"], tmp_path / "sheet.png", tile_width=200)
    img = cv2.imread(str(path))
    assert img is not None and img.shape[1] == 2 * 204
    with pytest.raises(ValueError):
        contact_sheet([nir], ["a", "b"], tmp_path / "x.png")
