"""The Gabor response kernel at every CPU path equals its NumPy reference: on the real filter
banks with ROI-like and extreme images, and on random banks of many shapes (the AVX2 path pairs
window rows for the last 8 columns and takes the orientations 6 at a time)."""
import cv2
import numpy as np
from hypothesis import given, settings, strategies as st

from palmnode.biometrics import features, kernels

LEVELS = sorted({kernels.dispatch_level(lv) for lv in kernels.LEVELS})


def _padded(img: np.ndarray, spec: features.CodeSpec) -> np.ndarray:
    r, kw = spec.radius, features._BANKS[spec.name].shape[2]
    return cv2.copyMakeBorder(img, r, r, r, r + kw - (2 * r + 1), cv2.BORDER_REFLECT_101).astype(np.int16)


def test_real_banks_every_level():
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (128, 128)).astype(np.uint8), np.full((128, 128), 255, np.uint8),
              np.zeros((128, 128), np.uint8), (np.indices((128, 128)).sum(0) % 7 * 36).astype(np.uint8)]
    try:
        for img in images:
            for spec in (features.SURFACE, features.VEIN):
                side = features.ROI_SIZE // spec.downsample
                padded = _padded(cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA), spec)
                bank, step = features._BANKS[spec.name], spec.step
                args = dict(y0=step // 2, x0=step // 2, step=step, gh=spec.grid, gw=spec.grid)
                want = kernels.gabor_responses_reference(padded, bank, **args)
                for lv in LEVELS:
                    kernels.dispatch_level(lv)
                    assert np.array_equal(kernels.gabor_responses(padded, bank, **args), want), (spec.name, lv)
    finally:
        kernels.dispatch_level(kernels.LEVELS[-1])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kh=st.integers(1, 40), kwb=st.integers(1, 5),
       n_orient=st.integers(1, 16), step=st.integers(1, 5), gh=st.integers(1, 6), gw=st.integers(1, 6),
       extreme=st.booleans())
def test_random_banks_every_level(seed, kh, kwb, n_orient, step, gh, gw, extreme):
    rng = np.random.default_rng(seed)
    kw = 8 * kwb
    y0, x0 = (int(v) for v in rng.integers(0, 4, 2))
    shape = (y0 + (gh - 1) * step + kh + int(rng.integers(0, 3)), x0 + (gw - 1) * step + kw + int(rng.integers(0, 3)))
    img = rng.integers(-255, 256, shape).astype(np.int16)
    bank = rng.integers(-1024, 1025, (n_orient, kh, kw)).astype(np.int16)
    if extreme:          # the largest products pmaddwd pairs: exact int32 still
        img = np.where(img >= 0, 255, -255).astype(np.int16)
        bank = np.where(bank >= 0, 1023, -1024).astype(np.int16)
    args = dict(y0=y0, x0=x0, step=step, gh=gh, gw=gw)
    want = kernels.gabor_responses_reference(img, bank, **args)
    try:
        for lv in LEVELS:
            kernels.dispatch_level(lv)
            assert np.array_equal(kernels.gabor_responses(img, bank, **args), want)
    finally:
        kernels.dispatch_level(kernels.LEVELS[-1])


def test_valid_count_is_the_codes_valid_cells():
    rng = np.random.default_rng(9)
    for spec in (features.SURFACE, features.VEIN):
        for trial in range(20):
            g = spec.grid
            resp = (rng.integers(-50, 50, (g, g, 6)) * int(rng.integers(0, 1000))).astype(np.int32)
            bad = (rng.random((g, g)) * rng.random() * 0.6).astype(np.float32)
            code, n_valid = features._code(resp, bad, spec)
            assert n_valid == code.valid_cells()
            assert code.planes().tobytes() == features.code_from_responses(resp, bad, spec).planes().tobytes()
