"""Feature coding: C and NumPy give identical templates; bad images are typed errors; the code
separates the same palm from other palms on ROI-like images."""
import numpy as np
import pytest

from palmnode.biometrics import features, kernels, prefilter as pf
from palmnode.biometrics.types import BadImage, BadTemplate, ModalityCode, PalmTemplate

import fake_palms  # tests/biometrics is on sys.path (pytest rootdir import mode)


@pytest.fixture(scope="module")
def captures():
    return [[fake_palms.capture(fake_palms.identity(i), 10 * i + s) for s in range(2)] for i in range(8)]


def test_c_and_reference_templates_are_identical(captures):
    for pair in captures:
        for s, v in pair:
            for lv in sorted({kernels.dispatch_level(x) for x in kernels.LEVELS}):
                kernels.dispatch_level(lv)
                got = features.encode(s, v).to_bytes()
                assert got == features.encode_reference(s, v).to_bytes()
    kernels.dispatch_level(kernels.LEVELS[-1])


def test_circular_code_hamming_is_angular_distance():
    code = features.CIRCULAR_CODE
    for i in range(6):
        for j in range(6):
            assert bin(int(code[i] ^ code[j])).count("1") == min((i - j) % 6, (j - i) % 6)


def test_a_code_owns_its_planes_read_only():
    planes = np.random.default_rng(0).integers(0, 2**32, (4, 16), dtype=np.uint64)
    code = ModalityCode.from_planes(planes)
    planes[0, 0] ^= 1                                          # the caller's array is not the code's
    assert code.planes()[0, 0] != planes[0, 0] and code.planes().dtype == np.uint32 and code.rows == 16
    with pytest.raises(ValueError):
        code.planes()[0, 0] = 0
    assert np.array_equal(code.mask.view(np.uint32), code.planes()[3]) and code.bits.shape == (24,)
    assert code.valid_cells() == int(np.bitwise_count(code.planes()[3]).sum())
    for shape in ((3, 16), (4, 15), (64,)):
        with pytest.raises(ValueError, match="4 planes of an even number of rows"):
            ModalityCode.from_planes(np.zeros(shape, np.uint32))


def test_template_layout_and_size(captures):
    t = features.encode(*captures[0][0])
    data = t.to_bytes()
    assert len(data) == 4 + 512 + 256 <= 1024
    back = PalmTemplate.from_bytes(data)
    assert back.to_bytes() == data
    assert np.array_equal(back.surface.bits, t.surface.bits) and np.array_equal(back.vein.mask, t.vein.mask)
    only_vein = PalmTemplate(surface=None, vein=t.vein)
    assert PalmTemplate.from_bytes(only_vein.to_bytes()).surface is None
    for bad in (b"", b"XX\x01\x03", data[:-1], data + b"\0", b"PT\x09\x03" + data[4:]):
        with pytest.raises(BadTemplate):
            PalmTemplate.from_bytes(bad)


def test_masks_cover_the_palm_but_not_the_dark_border(captures):
    s, v = captures[0][0]
    s = s.copy()
    s[:, :40] = 0                       # out of frame on the left
    t = features.encode(s, v)
    mask = t.surface.planes()[3]
    left = (mask & np.uint32(0xFF)) != 0        # cells x < 8 (pixels < 32)
    assert not left.any()
    assert t.surface.valid_cells() > 0.3 * 1024


def test_same_palm_closer_than_other_palms(captures):
    from palmnode.biometrics.matcher import match
    t = [[features.encode(*c) for c in pair] for pair in captures]
    genuine = [match(a, b).fused for a, b in t]
    impostor = [match(t[i][0], t[j][1]).fused for i in range(len(t)) for j in range(len(t)) if i != j]
    assert min(genuine) > max(impostor)


@pytest.mark.parametrize("image, what", [
    (np.zeros((0, 128), np.uint8), "empty"),
    (np.zeros((128, 128), np.int64), "dtype"),
    (np.full((128, 128), np.nan), "NaN"),
    (np.zeros((64, 64), np.uint8), "128"),
    (np.zeros((128, 128), np.uint8), "texture"),         # all black
    (np.full((128, 128), 255, np.uint8), "texture"),     # all white
    (np.full((128, 128), 120, np.uint8), "texture"),     # flat
    ([[1, 2], [3, 4]], "numpy"),
    (np.zeros((5000, 5000), np.uint8), "larger"),
])
def test_bad_images_are_typed_errors(image, what):
    with pytest.raises(BadImage, match=what):
        features.encode(image, None)
    with pytest.raises(BadImage, match=what):
        features.encode(None, image)


def test_encode_needs_one_roi():
    with pytest.raises(BadImage):
        features.encode(None, None)


def test_signature_is_stable_and_shift_variants_include_it(captures):
    t = features.encode(*captures[0][0])
    sig = pf.signature(t)
    assert sig.dtype == np.uint64 and sig.shape == (8,)
    var = pf.signature_variants(t)
    assert np.array_equal(var[0], sig) and var.shape == (len(pf.PROBE_OFFSETS), 8)
    moved = pf.shift_code(pf.shift_code(t.vein, 1, -1), -1, 1)
    assert moved.valid_cells() < t.vein.valid_cells()
