"""The one thin layer over the C kernels in native/, each beside its NumPy reference.

Every native call releases the GIL (cffi API mode does so for every call), so a trio
program can run kernels in ``trio.to_thread.run_sync`` without stalling its loop.
"""
from __future__ import annotations

import numpy as np

from palmnode import _native

_ffi, _lib = _native.ffi, _native.lib


def _words(a: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint64 or a.ndim != 1:
        raise TypeError(f"{name} must be a 1-D numpy array of uint64, got {getattr(a, 'dtype', type(a))}")
    return np.ascontiguousarray(a)


def hamming_masked(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray) -> tuple[int, int]:
    """(bits that differ where both masks are valid, bits valid in both masks), in C."""
    a, b, ma, mb = (_words(x, n) for x, n in ((a, "a"), (b, "b"), (ma, "ma"), (mb, "mb")))
    n = a.shape[0]
    if not (b.shape[0] == ma.shape[0] == mb.shape[0] == n):
        raise ValueError("codes and masks must have the same number of words")
    out = _ffi.new("uint64_t[2]")
    ptr = lambda x: _ffi.cast("const uint64_t *", _ffi.from_buffer(x))  # noqa: E731
    _lib.pn_hamming_masked(ptr(a), ptr(b), ptr(ma), ptr(mb), n, out, out + 1)
    return int(out[0]), int(out[1])


def hamming_masked_reference(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray) -> tuple[int, int]:
    """NumPy reference of :func:`hamming_masked`."""
    m = ma & mb
    differ = np.unpackbits(((a ^ b) & m).view(np.uint8)).sum()
    valid = np.unpackbits(m.view(np.uint8)).sum()
    return int(differ), int(valid)
