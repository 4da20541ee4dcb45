"""The one thin layer over the C kernels in native/, each beside its NumPy reference.

Every native call releases the GIL (cffi API mode does so for every call), so a trio
program can run kernels in ``trio.to_thread.run_sync`` without stalling its loop, and
several searches can run on several cores. The C side assumes valid sizes: every function
here checks dtypes, shapes and ranges first and raises TypeError / ValueError, so no
argument can crash the process. The ``*_reference`` functions are plain NumPy and define
the exact result (integer arithmetic, or the same float64 operations in the same order):
tests/biometrics/test_kernels_native.py asserts equality, not closeness.
"""
from __future__ import annotations

import numpy as np

from palmnode import _native

_ffi, _lib = _native.ffi, _native.lib

#: limits the C side is written for (native/match.c, native/gabor.c)
MAX_ROWS = 64
MAX_SHIFT = 8
MAX_ORIENT = 16
#: pre-filter scores of live entries are below this; removed entries score 0xFFFF
SCORE_BINS = 1024
SIGNATURE_WORDS = 8


#: the CPU paths of the popcount kernels: portable, POPCNT, AVX2, AVX-512 (VPOPCNTDQ + BITALG)
LEVELS = (0, 1, 2, 3)


def dispatch_level(request: int | None = None) -> int:
    """The CPU path the popcount kernels use: 0 portable, 1 POPCNT, 2 AVX2, 3 AVX-512.

    ``request`` selects min(request, what the CPU has) for all later calls (tests use it to
    check every path against the reference); None only reports.
    """
    if request is not None and request not in LEVELS:
        raise ValueError(f"dispatch level must be one of {LEVELS}, got {request!r}")
    return int(_lib.pn_dispatch_level(-1 if request is None else request))


def _array(a: object, dtype: type, ndim: int, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim:
        raise TypeError(f"{name} must be a {ndim}-D numpy array of {np.dtype(dtype).name}, got "
                        f"{getattr(a, 'dtype', type(a).__name__)} with ndim {getattr(a, 'ndim', '-')}")
    return np.ascontiguousarray(a)


def _ptr(ctype: str, a: np.ndarray):
    return _ffi.cast(ctype, _ffi.from_buffer(a))


def _popcount(a: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a).astype(np.int64)


# --------------------------------------------------------------------- masked Hamming
def _words(a: np.ndarray, name: str) -> np.ndarray:
    return _array(a, np.uint64, 1, name)


def hamming_masked(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray) -> tuple[int, int]:
    """(bits that differ where both masks are valid, bits valid in both masks), in C."""
    a, b, ma, mb = (_words(x, n) for x, n in ((a, "a"), (b, "b"), (ma, "ma"), (mb, "mb")))
    n = a.shape[0]
    if not (b.shape[0] == ma.shape[0] == mb.shape[0] == n):
        raise ValueError("codes and masks must have the same number of words")
    out = _ffi.new("uint64_t[2]")
    ptr = lambda x: _ptr("const uint64_t *", x)  # noqa: E731
    _lib.pn_hamming_masked(ptr(a), ptr(b), ptr(ma), ptr(mb), n, out, out + 1)
    return int(out[0]), int(out[1])


def hamming_masked_reference(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray) -> tuple[int, int]:
    """NumPy reference of :func:`hamming_masked`."""
    m = ma & mb
    return int(_popcount((a ^ b) & m).sum()), int(_popcount(m).sum())


# --------------------------------------------------------------------- filter responses
def _check_responses_args(img, bank, y0, x0, step, gh, gw):
    img = _array(img, np.int16, 2, "img")
    bank = _array(bank, np.int16, 3, "bank")
    n_orient, kh, kw = bank.shape
    if not 1 <= n_orient <= MAX_ORIENT:
        raise ValueError(f"bank must hold 1..{MAX_ORIENT} filters, got {n_orient}")
    if kh < 1 or kw < 8 or kw % 8:
        raise ValueError(f"filters must be kh x kw with kw a multiple of 8, got {kh}x{kw}")
    for name, v in (("y0", y0), ("x0", x0), ("step", step), ("gh", gh), ("gw", gw)):
        if not isinstance(v, (int, np.integer)) or v < (1 if name in ("step", "gh", "gw") else 0):
            raise ValueError(f"{name} must be a non-negative int (step, gh, gw >= 1), got {v!r}")
    bottom = y0 + (gh - 1) * step + kh
    right = x0 + (gw - 1) * step + kw
    if bottom > img.shape[0] or right > img.shape[1]:
        raise ValueError(f"the grid's filter windows reach {right}x{bottom} beyond the "
                         f"{img.shape[1]}x{img.shape[0]} image: pad it first")
    return img, bank


def gabor_responses(img: np.ndarray, bank: np.ndarray, *, y0: int, x0: int, step: int,
                    gh: int, gw: int) -> np.ndarray:
    """Bank responses at grid points, in C: int32 (gh, gw, n_orient).

    Cell (i, j) is the dot product of each filter with the window whose top-left pixel is
    (y0 + i*step, x0 + j*step); ``img`` int16 2-D, ``bank`` int16 (n_orient, kh, kw), kw a
    multiple of 8 (zero-padded on the right). Every window must lie inside ``img``.
    """
    img, bank = _check_responses_args(img, bank, y0, x0, step, gh, gw)
    n_orient, kh, kw = bank.shape
    out = np.empty((gh, gw, n_orient), np.int32)
    _lib.pn_gabor_responses(_ptr("const int16_t *", img), img.shape[1], _ptr("const int16_t *", bank),
                            n_orient, kh, kw, int(y0), int(x0), int(step), int(gh), int(gw),
                            _ptr("int32_t *", out))
    return out


def gabor_responses_reference(img: np.ndarray, bank: np.ndarray, *, y0: int, x0: int, step: int,
                              gh: int, gw: int) -> np.ndarray:
    """NumPy reference of :func:`gabor_responses` (int64 sums, exact)."""
    img, bank = _check_responses_args(img, bank, y0, x0, step, gh, gw)
    _, kh, kw = bank.shape
    win = np.lib.stride_tricks.sliding_window_view(img, (kh, kw))
    win = win[y0:y0 + (gh - 1) * step + 1:step, x0:x0 + (gw - 1) * step + 1:step]
    out = np.einsum("ijrc,orc->ijo", win.astype(np.int64), bank.astype(np.int64))
    return out.astype(np.int32)


# --------------------------------------------------------------------- shifted match
def _check_match_args(probe, records, offset, idx, max_dx, max_dy, n_ref):
    probe = _array(probe, np.uint32, 2, "probe")
    records = _array(records, np.uint32, 2, "records")
    idx = _array(idx, np.int64, 1, "idx")
    if probe.shape[0] != 4:
        raise ValueError(f"probe must be 4 planes (3 code + mask) x rows, got shape {probe.shape}")
    rows = probe.shape[1]
    if rows < 2 or rows % 2 or rows > MAX_ROWS:
        raise ValueError(f"rows must be even and 2..{MAX_ROWS}, got {rows}")
    if not (0 <= max_dx <= MAX_SHIFT and 0 <= max_dy <= MAX_SHIFT):
        raise ValueError(f"shifts must be 0..{MAX_SHIFT} cells, got dx {max_dx}, dy {max_dy}")
    if not (0 <= offset and offset + 4 * rows <= records.shape[1]):
        raise ValueError(f"a modality at word {offset} of {4 * rows} words overruns "
                         f"{records.shape[1]}-word records")
    if idx.size and (idx.min() < 0 or idx.max() >= records.shape[0]):
        raise ValueError(f"record indices must be in 0..{records.shape[0] - 1}")
    if not (np.isfinite(n_ref) and n_ref > 0):
        raise ValueError(f"n_ref must be a positive finite number, got {n_ref!r}")
    return probe, records, idx


def match_shifted(probe: np.ndarray, records: np.ndarray, idx: np.ndarray, *, offset: int = 0,
                  max_dx: int, max_dy: int, n_ref: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shift-tolerant masked match of one probe modality against ``records[idx]``, in C.

    ``probe``: uint32 (4, rows) = 3 code bit-planes and the mask plane, bit x of row y is
    cell (y, x). ``records``: uint32 (N, words), the modality at words
    ``offset .. offset + 4*rows`` in the same layout. Returns (hd, shift, valid) per index:
    the minimum over shifts |dx| <= max_dx, |dy| <= max_dy of the normalised distance
    ``0.5 - (0.5 - D/V) * sqrt(V / n_ref)`` (0.5 when V = 0), the shift code
    ``(dy+8)*32 + (dx+8)`` and V (jointly valid bits) at that shift.
    """
    probe, records, idx = _check_match_args(probe, records, offset, idx, max_dx, max_dy, n_ref)
    n = idx.shape[0]
    hd = np.empty(n, np.float64)
    shift = np.empty(n, np.int32)
    valid = np.empty(n, np.int32)
    _lib.pn_match_shifted(_ptr("const uint32_t *", probe), probe.shape[1], int(max_dx), int(max_dy),
                          _ptr("const uint32_t *", records), records.shape[1], int(offset),
                          _ptr("const int64_t *", idx), n, float(n_ref),
                          _ptr("double *", hd), _ptr("int32_t *", shift), _ptr("int32_t *", valid))
    return hd, shift, valid


def match_shifted_reference(probe: np.ndarray, records: np.ndarray, idx: np.ndarray, *, offset: int = 0,
                            max_dx: int, max_dy: int, n_ref: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy reference of :func:`match_shifted` (same float64 operations, same tie order)."""
    probe, records, idx = _check_match_args(probe, records, offset, idx, max_dx, max_dy, n_ref)
    rows = probe.shape[1]
    rec = records[idx, offset:offset + 4 * rows].reshape(-1, 4, rows)
    n = rec.shape[0]
    best = np.full(n, 2.0)
    best_shift = np.zeros(n, np.int32)
    best_valid = np.zeros(n, np.int32)
    for dy in range(-max_dy, max_dy + 1):
        for dx in range(-max_dx, max_dx + 1):
            a = (probe << np.uint32(dx)) if dx >= 0 else (probe >> np.uint32(-dx))
            shifted = np.zeros_like(a)  # record row j meets probe row j - dy
            if abs(dy) >= rows:
                pass
            elif dy >= 0:
                shifted[:, dy:] = a[:, :rows - dy]
            else:
                shifted[:, :rows + dy] = a[:, -dy:]
            m = shifted[3] & rec[:, 3]
            d = _popcount((shifted[:3] ^ rec[:, :3]) & m[:, None]).sum(axis=(1, 2))
            v = 3 * _popcount(m).sum(axis=1)
            vv = v.astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                hd = np.where(v > 0, 0.5 - (0.5 - d.astype(np.float64) / vv) * np.sqrt(vv / n_ref), 0.5)
            better = hd < best
            best = np.where(better, hd, best)
            best_shift = np.where(better, (dy + MAX_SHIFT) * 32 + (dx + MAX_SHIFT), best_shift).astype(np.int32)
            best_valid = np.where(better, v, best_valid).astype(np.int32)
    return best, best_shift, best_valid


def match_shifted16(probe: np.ndarray, records: np.ndarray, idx: np.ndarray, *, offset: int = 0,
                    max_dx: int, max_dy: int, n_ref: float) -> np.ndarray:
    """:func:`match_shifted`'s distance for 16-row codes of 16 columns (the vein code), in C:
    bits 16..31 of every probe and record row are ignored. AVX2 keeps one plane in a register
    (about twice as fast as the general kernel): the pre-filter's vein stage."""
    probe, records, idx = _check_match_args(probe, records, offset, idx, max_dx, max_dy, n_ref)
    if probe.shape[1] != 16:
        raise ValueError(f"match_shifted16 takes 16-row codes, got {probe.shape[1]} rows")
    probe = probe & np.uint32(0xFFFF)
    hd = np.empty(idx.shape[0], np.float64)
    _lib.pn_match_shifted16(_ptr("const uint32_t *", probe), int(max_dx), int(max_dy),
                            _ptr("const uint32_t *", records), records.shape[1], int(offset),
                            _ptr("const int64_t *", idx), idx.shape[0], float(n_ref), _ptr("double *", hd))
    return hd


def match_shifted16_reference(probe: np.ndarray, records: np.ndarray, idx: np.ndarray, *, offset: int = 0,
                              max_dx: int, max_dy: int, n_ref: float) -> np.ndarray:
    """NumPy reference of :func:`match_shifted16`."""
    probe, records, idx = _check_match_args(probe, records, offset, idx, max_dx, max_dy, n_ref)
    if probe.shape[1] != 16:
        raise ValueError(f"match_shifted16 takes 16-row codes, got {probe.shape[1]} rows")
    low = np.uint32(0xFFFF)
    rec = records[:, offset:offset + 64] & low
    hd, _, _ = match_shifted_reference(probe & low, rec, idx, max_dx=max_dx, max_dy=max_dy, n_ref=n_ref)
    return hd


# --------------------------------------------------------------------- elastic (block-wise) match
MAX_BLOCKS = 64


def _check_elastic_args(probe, records, offset, idx, centre, bh, bw, radius, n_ref):
    probe, records, idx = _check_match_args(probe, records, offset, idx, 0, 0, n_ref)
    centre = _array(centre, np.int32, 1, "centre")
    rows = probe.shape[1]
    if centre.shape[0] != idx.shape[0]:
        raise ValueError(f"centre has {centre.shape[0]} shifts for {idx.shape[0]} indices")
    for name, v in (("bh", bh), ("bw", bw), ("radius", radius)):
        if not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an int, got {v!r}")
    if not (1 <= bh <= rows and rows % bh == 0 and 1 <= bw <= 32 and 32 % bw == 0):
        raise ValueError(f"blocks must divide the {rows}x32 grid, got {bh}x{bw}")
    if (rows // bh) * (32 // bw) > MAX_BLOCKS:
        raise ValueError(f"at most {MAX_BLOCKS} blocks, got {(rows // bh) * (32 // bw)}")
    if not 0 <= radius <= MAX_SHIFT:
        raise ValueError(f"radius must be 0..{MAX_SHIFT}, got {radius}")
    if centre.size and not (0 <= centre.min() and centre.max() < _CENTRES.shape[1] and _CENTRES[radius][centre].all()):
        raise ValueError(f"centre shifts plus the radius must stay within ±{MAX_SHIFT} cells")
    return probe, records, idx, centre


def _valid_centres() -> np.ndarray:
    """[radius, shift code] -> the code's (dy, dx) plus the radius stays within ±MAX_SHIFT."""
    code = np.arange((2 * MAX_SHIFT + 1) * 32)
    dy, dx = code // 32 - MAX_SHIFT, code % 32 - MAX_SHIFT
    r = np.arange(MAX_SHIFT + 1)[:, None]
    return (np.abs(dy) + r <= MAX_SHIFT) & (np.abs(dx) + r <= MAX_SHIFT) & (code % 32 <= 2 * MAX_SHIFT)


_CENTRES = _valid_centres()


def match_elastic(probe: np.ndarray, records: np.ndarray, idx: np.ndarray, centre: np.ndarray, *,
                  offset: int = 0, bh: int, bw: int, radius: int, n_ref: float) -> tuple[np.ndarray, np.ndarray]:
    """Block-wise (elastic) match of one probe modality against ``records[idx]``, in C.

    The grid is cut into blocks of ``bh`` rows x ``bw`` columns; every block takes its own
    shift within ``radius`` cells of ``centre[k]`` (a shift code as returned by
    :func:`match_shifted`), the one with the most agreeing minus differing code bits. Returns
    (hd, valid): the normalised distance of the summed (D, V) over blocks and V.
    """
    probe, records, idx, centre = _check_elastic_args(probe, records, offset, idx, centre, bh, bw, radius, n_ref)
    n = idx.shape[0]
    hd = np.empty(n, np.float64)
    valid = np.empty(n, np.int32)
    _lib.pn_match_elastic(_ptr("const uint32_t *", probe), probe.shape[1], int(bh), int(bw), int(radius),
                          _ptr("const uint32_t *", records), records.shape[1], int(offset),
                          _ptr("const int64_t *", idx), _ptr("const int32_t *", centre), n, float(n_ref),
                          _ptr("double *", hd), _ptr("int32_t *", valid))
    return hd, valid


def _shift_planes(planes: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Probe planes (..., rows) moved so that record row j meets probe row j - dy, cell x meets x + dx."""
    a = (planes << np.uint32(dx)) if dx >= 0 else (planes >> np.uint32(-dx))
    out = np.zeros_like(a)
    rows = a.shape[-1]
    if abs(dy) < rows:
        if dy >= 0:
            out[..., dy:] = a[..., :rows - dy]
        else:
            out[..., :rows + dy] = a[..., -dy:]
    return out


def match_elastic_reference(probe: np.ndarray, records: np.ndarray, idx: np.ndarray, centre: np.ndarray, *,
                            offset: int = 0, bh: int, bw: int, radius: int,
                            n_ref: float) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of :func:`match_elastic`."""
    probe, records, idx, centre = _check_elastic_args(probe, records, offset, idx, centre, bh, bw, radius, n_ref)
    rows = probe.shape[1]
    rec = records[idx, offset:offset + 4 * rows].reshape(-1, 4, rows)
    n = rec.shape[0]
    nby, nbx = rows // bh, 32 // bw
    sel = (np.uint64((1 << bw) - 1) << (np.arange(nbx, dtype=np.uint64) * np.uint64(bw))).astype(np.uint32)
    best_g = np.full((n, nby * nbx), np.iinfo(np.int64).min, np.int64)
    best_d = np.zeros((n, nby * nbx), np.int64)
    best_v = np.zeros((n, nby * nbx), np.int64)
    cdy, cdx = centre // 32 - MAX_SHIFT, centre % 32 - MAX_SHIFT
    for ey in range(-radius, radius + 1):
        for ex in range(-radius, radius + 1):
            a = np.stack([_shift_planes(probe, int(y + ey), int(x + ex)) for y, x in zip(cdy, cdx)]) \
                if n else np.zeros((0, 4, rows), np.uint32)
            m = a[:, 3] & rec[:, 3]                                            # (n, rows)
            x = (a[:, :3] ^ rec[:, :3]) & m[:, None]                           # (n, 3, rows)
            d = _popcount(x[:, :, :, None] & sel).sum(axis=1)                 # (n, rows, nbx)
            v = 3 * _popcount(m[:, :, None] & sel)
            d = d.reshape(n, nby, bh, nbx).sum(axis=2).reshape(n, -1)
            v = v.reshape(n, nby, bh, nbx).sum(axis=2).reshape(n, -1)
            g = v - 2 * d
            better = g > best_g
            best_g = np.where(better, g, best_g)
            best_d = np.where(better, d, best_d)
            best_v = np.where(better, v, best_v)
    dsum, vsum = best_d.sum(axis=1), best_v.sum(axis=1)
    vv = vsum.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        hd = np.where(vsum > 0, 0.5 - (0.5 - dsum.astype(np.float64) / vv) * np.sqrt(vv / n_ref), 0.5)
    return hd, vsum.astype(np.int32)


# --------------------------------------------------------------------- 16x16 block-wise match (vein stage)
_ORIGIN = (MAX_SHIFT * 32 + MAX_SHIFT)   # shift code of (dy, dx) = (0, 0)


def _check_elastic16_args(probe, records, offset, idx, radius, n_ref):
    probe, records, idx = _check_match_args(probe, records, offset, idx, 0, 0, n_ref)
    if probe.shape[1] != 16:
        raise ValueError(f"match_elastic16 takes 16-row codes, got {probe.shape[1]} rows")
    if not isinstance(radius, (int, np.integer)) or not 0 <= radius <= MAX_SHIFT:
        raise ValueError(f"radius must be an int 0..{MAX_SHIFT}, got {radius!r}")
    return probe & np.uint32(0xFFFF), records, idx


def match_elastic16(probe: np.ndarray, records: np.ndarray, idx: np.ndarray, *, offset: int = 0,
                    radius: int, n_ref: float) -> np.ndarray:
    """Block-wise match of a 16-row, 16-column code (the vein code) against ``records[idx]`` around
    shift 0, in C: 16 blocks of 4x4 cells, each free to move ``radius`` cells (the pre-filter's
    vein stage). Equal to :func:`match_elastic` with 4x4 blocks and centre (0, 0) on the codes'
    low 16 columns; returns the normalised distances."""
    probe, records, idx = _check_elastic16_args(probe, records, offset, idx, radius, n_ref)
    hd = np.empty(idx.shape[0], np.float64)
    _lib.pn_match_elastic16(_ptr("const uint32_t *", probe), int(radius), _ptr("const uint32_t *", records),
                            records.shape[1], int(offset), _ptr("const int64_t *", idx), idx.shape[0],
                            float(n_ref), _ptr("double *", hd))
    return hd


def match_elastic16_reference(probe: np.ndarray, records: np.ndarray, idx: np.ndarray, *, offset: int = 0,
                              radius: int, n_ref: float) -> np.ndarray:
    """NumPy reference of :func:`match_elastic16` (via :func:`match_elastic_reference`)."""
    probe, records, idx = _check_elastic16_args(probe, records, offset, idx, radius, n_ref)
    if idx.size == 0:
        return np.empty(0, np.float64)
    rec = records[:, offset:offset + 64] & np.uint32(0xFFFF)
    centre = np.full(idx.shape[0], _ORIGIN, np.int32)
    hd, _ = match_elastic_reference(probe, rec, idx, centre, bh=4, bw=4, radius=int(radius), n_ref=n_ref)
    return hd


# --------------------------------------------------------------------- pre-filter signatures
#: orientation index -> 3-bit circular code and back (features.CIRCULAR_CODE; -1: not a code value)
_SIG_CODE = np.array([0b000, 0b001, 0b011, 0b111, 0b110, 0b100], np.uint8)
_SIG_DECODE = np.full(8, -1, np.int64)
_SIG_DECODE[_SIG_CODE] = np.arange(6)
_SIG_AGREE = np.round(100 * np.cos(np.pi / 3 * (np.arange(6)[:, None] - np.arange(6)[None, :]))).astype(np.float32)


def _check_signature_args(planes, offsets):
    if isinstance(planes, np.ndarray) and planes.ndim == 2:
        planes = planes[None]
    planes = _array(planes, np.uint32, 3, "planes")
    if planes.shape[1:] != (4, 16):
        raise ValueError(f"vein codes are 4 planes x 16 rows, got shape {planes.shape[1:]}")
    offsets = np.asarray(offsets)
    if offsets.ndim != 2 or offsets.shape[1] != 2 or offsets.shape[0] < 1 or offsets.dtype.kind not in "iu":
        raise ValueError("offsets must be a non-empty sequence of (dy, dx) integer pairs")
    if np.abs(offsets.astype(np.int64)).max() > 1 << 20:
        raise ValueError("offsets must be within ±2**20 cells")
    return planes, np.ascontiguousarray(offsets, np.int32)


def vein_signatures(planes: np.ndarray, offsets) -> np.ndarray:
    """Pre-filter signatures (uint64 (N, P, 8)) of N vein codes ``planes`` uint32 (N, 4, 16) (or
    one (4, 16)), each moved by P ``offsets`` (dy, dx) cells, in C (native pn_vein_signatures:
    two 8x8 coarse codes of the moved code's 2x2-cell blocks at even and at odd cells)."""
    planes, offsets = _check_signature_args(planes, offsets)
    out = np.empty((planes.shape[0], offsets.shape[0], SIGNATURE_WORDS), np.uint64)
    _lib.pn_vein_signatures(_ptr("const uint32_t *", planes), planes.shape[0], _ptr("const int32_t *", offsets),
                            offsets.shape[0], _ptr("uint64_t *", out))
    return out


def _packed(bits: np.ndarray) -> np.ndarray:
    """(..., 64) bool -> (...) uint64 with bit i = element i."""
    return np.packbits(bits, axis=-1, bitorder="little").view("<u8")[..., 0].astype(np.uint64)


def vein_signatures_reference(planes: np.ndarray, offsets) -> np.ndarray:
    """NumPy reference of :func:`vein_signatures` (2x2 window vote sums over the moved grids)."""
    planes, offsets = _check_signature_args(planes, offsets)
    n, rows = planes.shape[0], 16
    bits = ((planes[:, :, :, None] >> np.arange(rows, dtype=np.uint32)) & 1).astype(np.uint8)
    orient = _SIG_DECODE[bits[:, 0] | (bits[:, 1] << 1) | (bits[:, 2] << 2)]
    valid = bits[:, 3].astype(bool)
    offs = [(max(-rows, min(rows, int(dy))), max(-rows, min(rows, int(dx)))) for dy, dx in offsets]
    p = len(offs)
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offs)
    onehot = np.zeros((n, rows + 2 * pad, rows + 2 * pad, 6), np.uint8)
    onehot[:, pad:pad + rows, pad:pad + rows] = (orient[..., None] == np.arange(6)) & valid[..., None]
    moved = np.zeros((n, p, rows + 1, rows + 1, 6), np.uint8)   # + one empty row/column
    for i, (dy, dx) in enumerate(offs):
        moved[:, i, :rows, :rows] = onehot[:, pad - dy:pad - dy + rows, pad - dx:pad - dx + rows]
    win = moved[:, :, :-1, :-1] + moved[:, :, 1:, :-1] + moved[:, :, :-1, 1:] + moved[:, :, 1:, 1:]
    votes = np.stack([win[:, :, 0::2, 0::2], win[:, :, 1::2, 1::2]], axis=2)     # (N, P, 2, 8, 8, 6)
    support = votes.sum(axis=-1, dtype=np.int32)
    agree = votes.astype(np.float32) @ _SIG_AGREE          # exact: |sums| <= 4 * 100
    best = np.argmax(agree, axis=-1)
    block_valid = (support * 4 >= 4) & (agree.max(axis=-1).astype(np.int32) * 2 >= support * 100 // 2)
    c = _SIG_CODE[best].reshape(n, p, 2, 64)
    out = np.empty((n, p, 2, 4), np.uint64)
    for q in range(3):
        out[..., q] = _packed(((c >> q) & 1).astype(bool))
    out[..., 3] = _packed(block_valid.reshape(n, p, 2, 64))
    return out.reshape(n, p, SIGNATURE_WORDS)


# --------------------------------------------------------------------- pre-filter
def _check_scan_args(probe_sig, sigs, live):
    """probe_sig as uint64 (G, P, 8), G groups of P probe signatures (1-D: one signature, 2-D: one group)."""
    if isinstance(probe_sig, np.ndarray) and probe_sig.ndim in (1, 2):
        probe_sig = probe_sig.reshape((1,) * (3 - probe_sig.ndim) + probe_sig.shape)
    probe_sig = _array(probe_sig, np.uint64, 3, "probe_sig")
    sigs = _array(sigs, np.uint64, 2, "sigs")
    live = _array(live, np.uint8, 1, "live")
    if probe_sig.shape[0] < 1 or probe_sig.shape[1] < 1 or probe_sig.shape[2] != SIGNATURE_WORDS \
            or sigs.shape[1] != SIGNATURE_WORDS:
        raise ValueError(f"signatures are {SIGNATURE_WORDS} uint64 words")
    if live.shape[0] != sigs.shape[0]:
        raise ValueError(f"live has {live.shape[0]} flags for {sigs.shape[0]} signatures")
    return probe_sig, sigs, live


#: pair normalisation of :func:`prefilter_scores` (the header's PN_NORM_SHIFT / PN_NORM_MAX): a
#: probe's score s becomes clamp((s * m + c) >> NORM_SHIFT, 0, NORM_MAX)
NORM_SHIFT = int(_lib.PN_NORM_SHIFT)
NORM_MAX = int(_lib.PN_NORM_MAX)


def _check_norm(norm, shape: tuple[int, int]) -> np.ndarray | None:
    """norm as int32 (G, P, 2) for probe signatures of shape (G, P)."""
    if norm is None:
        return None
    if isinstance(norm, np.ndarray) and norm.ndim == 2:
        norm = norm[None]
    norm = _array(norm, np.int32, 3, "norm")
    if norm.shape != (*shape, 2):
        raise ValueError(f"norm must be int32 {(*shape, 2)}: a multiplier and an offset per probe signature")
    if norm[..., 0].min() < 1 or norm[..., 0].max() > 65535:
        raise ValueError("norm's multipliers must be in 1..65535")
    return norm


def prefilter_scores(probe_sig: np.ndarray, sigs: np.ndarray, live: np.ndarray, *, norm: np.ndarray | None = None,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Pre-filter score of every signature (uint64 (N, 8)) against the probe's, in C.

    ``probe_sig``: uint64 (8,) or (P, 8) for P variants of the probe (e.g. at grid offsets):
    each entry scores the minimum over the variants.

    ``384 + 2*D - V`` over both halves' 8x8 coarse codes (D differing bits where both are
    valid, V jointly valid bits: an unknown bit counts half a difference; lower = closer, 0..768);
    entries with ``live == 0`` score 0xFFFF. ``norm``: int32 (P, 2), variant q's score s counts
    as ``clamp((s * norm[q, 0] + norm[q, 1]) >> NORM_SHIFT, 0, NORM_MAX)`` (puts the variants on
    one scale: prefilter.pair_norms). Uses AVX-512 or AVX2 where the CPU has them. ``out``: an
    optional writeable contiguous uint16 array of N scores to fill (e.g. a gallery-wide array's slice).
    """
    if isinstance(probe_sig, np.ndarray) and probe_sig.ndim == 3:
        raise ValueError("probe_sig must be uint64 (8,) or (P, 8); groups of variants: prefilter_best")
    probe_sig, sigs, live = _check_scan_args(probe_sig, sigs, live)
    norm = _check_norm(norm, probe_sig.shape[:2])
    out = _check_out(out, np.uint16, sigs.shape[0], "out")
    _scan(probe_sig, norm, sigs, live, out, sigs.shape[0])
    return out


def prefilter_scores_reference(probe_sig: np.ndarray, sigs: np.ndarray, live: np.ndarray, *,
                               norm: np.ndarray | None = None) -> np.ndarray:
    """NumPy reference of :func:`prefilter_scores`; uint16 (G, N) for G groups of variants
    (uint64 (G, P, 8)), the minimum within each group."""
    grouped = isinstance(probe_sig, np.ndarray) and probe_sig.ndim == 3
    probe_sig, sigs, live = _check_scan_args(probe_sig, sigs, live)
    norm = _check_norm(norm, probe_sig.shape[:2])
    s = sigs.reshape(-1, 2, 4)
    rows = []
    for g, group in enumerate(probe_sig):
        score = np.full(sigs.shape[0], 0xFFFF, np.int64)
        for q, variant in enumerate(group):
            p = variant.reshape(2, 4)
            m = s[:, :, 3] & p[:, 3]
            d = _popcount((s[:, :, :3] ^ p[:, :3]) & m[:, :, None]).sum(axis=(1, 2))
            v = 3 * _popcount(m).sum(axis=1)
            mine = 384 + 2 * d - v
            if norm is not None:
                mine = np.clip((mine * int(norm[g, q, 0]) + int(norm[g, q, 1])) >> NORM_SHIFT, 0, NORM_MAX)
            score = np.minimum(score, mine)
        rows.append(np.where(live != 0, score, 0xFFFF).astype(np.uint16))
    return np.stack(rows) if grouped else rows[0]


def prefilter_scores_each(probe_sigs: np.ndarray, sigs: np.ndarray, live: np.ndarray) -> np.ndarray:
    """uint16 (P, N): :func:`prefilter_scores` of each of P probe signatures (uint64 (P, 8)) on
    its own (no minimum, no norm), in one C call: P groups of one, a row each."""
    probe_sigs, sigs, live = _check_scan_args(_array(probe_sigs, np.uint64, 2, "probe_sigs")[:, None], sigs, live)
    out = np.empty((probe_sigs.shape[0], sigs.shape[0]), np.uint16)
    _scan(probe_sigs, None, sigs, live, out, sigs.shape[0])
    return out


def _scan(probe_sig: np.ndarray, norm: np.ndarray | None, sigs: np.ndarray, live: np.ndarray, out: np.ndarray,
          out_stride: int, owner: np.ndarray | None = None) -> None:
    g, p, _ = probe_sig.shape
    _lib.pn_prefilter_scores(_ptr("const uint64_t *", probe_sig), g, p,
                             _ffi.NULL if norm is None else _ptr("const int32_t *", norm),
                             _ptr("const uint64_t *", sigs), _ptr("const uint8_t *", live), sigs.shape[0],
                             _ffi.cast("uint16_t *", out.ctypes.data), out_stride,
                             _ffi.NULL if owner is None else _ffi.cast("uint8_t *", owner.ctypes.data))


def _check_out(a, dtype: type, n: int, name: str) -> np.ndarray:
    if a is None:
        return np.empty(n, dtype)
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != (n,) or not a.flags.writeable \
            or a.strides[0] != a.itemsize:
        raise ValueError(f"{name} must be a writeable contiguous {np.dtype(dtype).name} array of {n} entries")
    return a


def prefilter_best(probe_sig: np.ndarray, sigs: np.ndarray, live: np.ndarray, *, norm: np.ndarray | None = None,
                   out: np.ndarray | None = None, owner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 (N,), uint8 (N,)): each entry's minimum of :func:`prefilter_scores` over the G
    groups of ``probe_sig`` (uint64 (G, P, 8), G <= 256) and the first group attaining it (0 for
    removed entries), in C, in one pass and without the (G, N) rows. ``out`` / ``owner``:
    optional writeable contiguous arrays to fill (e.g. slices of gallery-wide arrays)."""
    probe_sig = _array(probe_sig, np.uint64, 3, "probe_sig")
    probe_sig, sigs, live = _check_scan_args(probe_sig, sigs, live)
    if probe_sig.shape[0] > 256:
        raise ValueError(f"at most 256 groups, got {probe_sig.shape[0]}")
    norm = _check_norm(norm, probe_sig.shape[:2])
    n = sigs.shape[0]
    out, owner = _check_out(out, np.uint16, n, "out"), _check_out(owner, np.uint8, n, "owner")
    _scan(probe_sig, norm, sigs, live, out, 0, owner)
    return out, owner


def prefilter_best_reference(probe_sig: np.ndarray, sigs: np.ndarray, live: np.ndarray, *,
                             norm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of :func:`prefilter_best`."""
    rows = prefilter_scores_reference(_array(probe_sig, np.uint64, 3, "probe_sig"), sigs, live, norm=norm)
    return rows.min(axis=0), rows.argmin(axis=0).astype(np.uint8)


def select_smallest(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest (score, index) among scores < 1024, ascending index, in C."""
    scores = _array(scores, np.uint16, 1, "scores")
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    out = np.empty(min(int(k), scores.shape[0]), np.int64)
    m = _lib.pn_select_smallest(_ptr("const uint16_t *", scores), scores.shape[0], out.shape[0],
                                _ptr("int64_t *", out))
    return out[:m]


def select_smallest_reference(scores: np.ndarray, k: int) -> np.ndarray:
    """NumPy reference of :func:`select_smallest`."""
    scores = _array(scores, np.uint16, 1, "scores")
    order = np.argsort(scores, kind="stable")
    order = order[scores[order] < SCORE_BINS][:k]
    return np.sort(order).astype(np.int64)
