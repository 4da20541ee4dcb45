"""The first C kernel against its NumPy reference: identical counts, typed errors on bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from palmnode.biometrics import kernels


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 64), seed=st.integers(0, 2**32 - 1))
def test_hamming_masked_matches_reference(n, seed):
    rng = np.random.default_rng(seed)
    a, b, ma, mb = (rng.integers(0, 2**64, n, dtype=np.uint64) for _ in range(4))
    assert kernels.hamming_masked(a, b, ma, mb) == kernels.hamming_masked_reference(a, b, ma, mb)


def test_hamming_masked_known_values():
    ones = np.full(2, np.uint64(2**64 - 1))
    zeros = np.zeros(2, np.uint64)
    assert kernels.hamming_masked(ones, zeros, ones, ones) == (128, 128)
    assert kernels.hamming_masked(ones, zeros, zeros, ones) == (0, 0)


def test_hamming_masked_rejects_bad_arrays():
    good = np.zeros(4, np.uint64)
    with pytest.raises(TypeError, match="uint64"):
        kernels.hamming_masked(np.zeros(4, np.float64), good, good, good)
    with pytest.raises(ValueError, match="same number of words"):
        kernels.hamming_masked(good, np.zeros(3, np.uint64), good, good)
