"""Probe variants (variants.py) and the matcher's search over them (match_probe, match_probe_records)."""
import math

import cv2
import numpy as np
import pytest

import fake_palms  # tests/biometrics is on sys.path (pytest rootdir import mode)
from palmnode.biometrics import features, matcher, roi, variants
from palmnode.biometrics.matcher import match, match_probe, match_probe_records, pack_records
from palmnode.biometrics.types import BadImage, PalmTemplate, Roi
from palmnode.biometrics.variants import IDENTITY, VARIANTS, ProbeTemplates, Variant

N = 10


def _roi(transform) -> Roi:
    return Roi(transform=np.asarray(transform, np.float64), size=128, hand="right", palm_width_px=100.0,
               keypoints=())


@pytest.fixture(scope="module")
def rois():
    """N identities x 2 captures of (surface ROI, vein ROI)."""
    return [[fake_palms.capture(fake_palms.identity(i), 100 * i + s) for s in range(2)] for i in range(N)]


@pytest.fixture(scope="module")
def probes(rois):
    return [variants.from_rois(*r[1]) for r in rois]


@pytest.fixture(scope="module")
def enrolled(rois):
    return [features.encode(*r[0]) for r in rois]


def _same(a: PalmTemplate, b: PalmTemplate) -> bool:
    return a.to_bytes() == b.to_bytes()


def test_variant_set_starts_with_the_roi_as_found():
    assert VARIANTS[0] == IDENTITY and IDENTITY.is_identity
    assert len(set(VARIANTS)) == len(VARIANTS)
    assert np.allclose(IDENTITY.matrix(), [[1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError):
        Variant(0, 0)
    with pytest.raises(ValueError):
        variants.from_rois(*fake_palms.capture(fake_palms.identity(0), 1), variants=(Variant(4, 1), IDENTITY))


def test_probe_templates_validation(enrolled):
    t = enrolled[0]
    assert ProbeTemplates.single(t).base is t and len(ProbeTemplates.single(t)) == 1
    with pytest.raises(ValueError):
        ProbeTemplates((), ())
    with pytest.raises(ValueError):
        ProbeTemplates((t, t), (IDENTITY,))
    with pytest.raises(ValueError):
        ProbeTemplates((t,), (Variant(4, 1),))
    with pytest.raises(TypeError):
        ProbeTemplates((t, "x"), (IDENTITY, Variant(4, 1)))


def test_recut_rotates_and_scales_about_the_roi_centre():
    rng = np.random.default_rng(3)
    frame = cv2.GaussianBlur(rng.integers(30, 220, (300, 400)).astype(np.uint8), (0, 0), 1.5)
    found = _roi([[1, 0, -100], [0, 1, -70]])              # the ROI is frame[70:198, 100:228]
    base = roi.warp(frame, found)
    assert np.array_equal(base, frame[70:198, 100:228])
    assert np.allclose(variants.recut_transform(found, IDENTITY), found.transform)
    # a quarter turn about the centre (63.5, 63.5) is a rot90 of the base ROI, pixel for pixel
    quarter = cv2.warpAffine(frame, variants.recut_transform(found, Variant(90, 1)), (128, 128))
    assert np.abs(quarter.astype(int) - np.rot90(base).astype(int)).max() <= 1
    # scale 2 about the centre: the ROI's central half, magnified (centre pixel stays)
    double = cv2.warpAffine(frame, variants.recut_transform(found, Variant(0, 2)), (128, 128))
    half = cv2.resize(base[32:96, 32:96], (128, 128), interpolation=cv2.INTER_LINEAR)
    assert np.abs(double[8:120, 8:120].astype(int) - half[8:120, 8:120].astype(int)).mean() < 3


def test_from_frames_base_is_the_plain_template_and_variants_are_frame_recuts():
    ident = fake_palms.identity(5)
    surface_roi, vein_roi = fake_palms.capture(ident, 7)
    # a whole "frame" with the ROI inside, so re-cuts bring in real pixels from beyond it
    surface = cv2.copyMakeBorder(surface_roi, 40, 40, 60, 60, cv2.BORDER_REFLECT)
    nir = cv2.copyMakeBorder(vein_roi, 40, 40, 60, 60, cv2.BORDER_REFLECT)
    found = _roi([[1, 0, -60], [0, 1, -40]])
    p = variants.from_frames(surface, nir, found)
    assert p.variants == VARIANTS
    assert _same(p.base, features.encode(surface_roi, vein_roi))
    for t, v in zip(p.templates[1:], p.variants[1:]):
        m = variants.recut_transform(found, v)
        cut = [cv2.warpAffine(f, m, (128, 128), flags=cv2.INTER_LINEAR) for f in (surface, nir)]
        assert _same(t, features.encode(*cut))
        assert not _same(t, p.base)
    given = features.encode(surface_roi, vein_roi)
    assert variants.from_frames(surface, nir, found, base=given).base is given
    assert variants.from_frames(None, nir, found).base.surface is None
    with pytest.raises(BadImage):
        variants.from_frames(None, None, found)


def test_from_rois_masks_what_comes_from_outside_and_drops_unencodable_variants():
    surface_roi, vein_roi = fake_palms.capture(fake_palms.identity(2), 3)
    p = variants.from_rois(surface_roi, vein_roi, (IDENTITY, Variant(30, 1), Variant(0, 0.3)))
    # 30 deg: the corners come from outside the ROI (0 = dark) -> those cells are masked
    assert p.variants == (IDENTITY, Variant(30, 1))
    assert p.templates[1].surface.valid_cells() < p.base.surface.valid_cells()
    rotated = cv2.warpAffine(surface_roi, Variant(30, 1).matrix(), (128, 128))
    corner_cells = features.encode_modality(rotated, features.SURFACE)
    assert _same(PalmTemplate(corner_cells, p.templates[1].vein), p.templates[1])
    # (0, 0.3): a small picture in a black square, too little texture -> left out, not an error
    with pytest.raises(BadImage):
        features.encode(cv2.warpAffine(surface_roi, Variant(0, 0.3).matrix(), (128, 128)), None)


def test_match_probe_is_the_best_variant(probes, enrolled):
    for p, t in zip(probes, enrolled):
        scores = [match(v, t) for v in p.templates]
        best = match_probe(p, t)
        assert best.fused == max(s.fused for s in scores)
        assert best == scores[[s.fused for s in scores].index(best.fused)]     # first on ties
        assert best.fused >= match(p.base, t).fused
    # a lone base is a plain match
    assert match_probe(ProbeTemplates.single(probes[0].base), enrolled[0]) == match(probes[0].base, enrolled[0])


def test_match_probe_first_variant_on_ties_and_nan_ranks_last(enrolled):
    t = enrolled[1]
    twice = ProbeTemplates((enrolled[0], enrolled[0]), (IDENTITY, Variant(4, 1)))
    assert match_probe(twice, t) == match(enrolled[0], t)
    # base has only a surface code, the template only a vein code: NaN; a variant with a vein wins
    surface_only = PalmTemplate(enrolled[0].surface, None)
    vein_only = PalmTemplate(None, t.vein)
    p = ProbeTemplates((surface_only, enrolled[0]), (IDENTITY, Variant(4, 1)))
    s = match_probe(p, vein_only)
    assert not math.isnan(s.fused) and s.fused == match(enrolled[0], vein_only).fused
    assert math.isnan(match_probe(ProbeTemplates.single(surface_only), vein_only).fused)
    with pytest.raises(TypeError):
        match_probe(enrolled[0], t)


def test_variants_recover_a_rotated_capture(rois, enrolled):
    """A probe turned by one variant step against its enrolment: the search finds it back."""
    gains = []
    for i in range(N):
        surface_roi, vein_roi = rois[i][0]
        turn = cv2.getRotationMatrix2D((63.5, 63.5), -VARIANTS[1].angle_deg, 1.0)
        probe = [cv2.warpAffine(r, turn, (128, 128), borderMode=cv2.BORDER_REFLECT) for r in (surface_roi, vein_roi)]
        p = variants.from_rois(*probe)
        gains.append(match_probe(p, enrolled[i]).fused - match(p.base, enrolled[i]).fused)
    assert min(gains) >= 0 and np.median(gains) > 0.05


def test_match_probe_records_equals_match_probe_entry_by_entry(probes, enrolled):
    gallery = list(enrolled)
    gallery += [PalmTemplate(t.surface, None) for t in enrolled[:3]] + [PalmTemplate(None, t.vein) for t in enrolled[3:6]]
    records, flags = pack_records(gallery)
    assert records.shape == (len(gallery), matcher.RECORD_WORDS)
    idx = np.arange(len(gallery) - 1, -1, -1, dtype=np.int64)      # any order, any subset
    odd = [PalmTemplate(probes[0].base.surface, None), probes[1].templates[1], PalmTemplate(None, probes[2].base.vein)]
    cases = list(probes) + [ProbeTemplates(odd, (IDENTITY, Variant(4, 1), Variant(-4, 1)))]
    for p in cases:
        s, v, f = match_probe_records(p, records, idx, flags)
        for k, i in enumerate(idx):
            want = match_probe(p, gallery[i])
            for got, exp in ((s[k], want.surface), (v[k], want.vein), (f[k], want.fused)):
                assert (math.isnan(got) and math.isnan(exp)) or got == exp
        base = match_probe_records(ProbeTemplates.single(p.base), records, idx, flags)[2]
        assert (np.nan_to_num(f, nan=-9) >= np.nan_to_num(base, nan=-9)).all()
    with pytest.raises(ValueError):
        match_probe_records(probes[0], records, idx, flags[:-1])
    with pytest.raises(TypeError):
        match_probe_records(enrolled[0], records, idx, flags)


def test_genuine_beats_impostors_with_variants(probes, enrolled):
    records, flags = pack_records(enrolled)
    idx = np.arange(N, dtype=np.int64)
    for i, p in enumerate(probes):
        fused = match_probe_records(p, records, idx, flags)[2]
        assert int(np.argmax(fused)) == i
