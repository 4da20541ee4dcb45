"""Every C kernel against its NumPy reference on every CPU path: identical values, not close ones."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from palmnode.biometrics import kernels

LEVELS = sorted({kernels.dispatch_level(lv) for lv in kernels.LEVELS})
kernels.dispatch_level(kernels.LEVELS[-1])


@pytest.fixture(params=LEVELS, ids=lambda lv: f"level{lv}")
def level(request):
    kernels.dispatch_level(request.param)
    yield request.param
    kernels.dispatch_level(kernels.LEVELS[-1])


def _code(rng, rows, cols, valid=0.8):
    """A random modality code: 3 bit-planes from orientation indices, mask plane, uint32 rows."""
    table = np.array([0b000, 0b001, 0b011, 0b111, 0b110, 0b100], np.uint32)
    idx = rng.integers(0, 6, (rows, cols))
    mask = rng.random((rows, cols)) < valid
    w = np.uint32(1) << np.arange(cols, dtype=np.uint32)
    planes = [((table[idx] >> p) & 1).astype(np.uint32) for p in range(3)] + [mask.astype(np.uint32)]
    return np.stack([(pl * w).sum(axis=1, dtype=np.uint32) for pl in planes])


def test_every_path_is_reachable_on_this_cpu():
    assert 0 in LEVELS and kernels.dispatch_level() in LEVELS


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 40))
def test_hamming_parity_all_levels(seed, n):
    rng = np.random.default_rng(seed)
    a, b, ma, mb = (rng.integers(0, 2**64, n, dtype=np.uint64) for _ in range(4))
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        assert kernels.hamming_masked(a, b, ma, mb) == kernels.hamming_masked_reference(a, b, ma, mb)
    kernels.dispatch_level(kernels.LEVELS[-1])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kh=st.integers(1, 21), kwb=st.integers(1, 3),
       n_orient=st.integers(1, 8), step=st.integers(1, 5), gh=st.integers(1, 9), gw=st.integers(1, 9))
def test_gabor_responses_parity(seed, kh, kwb, n_orient, step, gh, gw):
    rng = np.random.default_rng(seed)
    kw = 8 * kwb
    y0, x0 = rng.integers(0, 4, 2)
    img = rng.integers(-255, 256, (y0 + (gh - 1) * step + kh + 3, x0 + (gw - 1) * step + kw + 2)).astype(np.int16)
    bank = rng.integers(-1024, 1025, (n_orient, kh, kw)).astype(np.int16)
    args = dict(y0=int(y0), x0=int(x0), step=step, gh=gh, gw=gw)
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        got = kernels.gabor_responses(img, bank, **args)
        assert np.array_equal(got, kernels.gabor_responses_reference(img, bank, **args))
    kernels.dispatch_level(kernels.LEVELS[-1])


def test_gabor_responses_known_value():
    img = np.zeros((20, 20), np.int16)
    img[5, 6] = 3
    bank = np.zeros((2, 3, 8), np.int16)
    bank[0, 1, 2] = 7
    bank[1, 0, 0] = -2
    out = kernels.gabor_responses(img, bank, y0=4, x0=4, step=1, gh=2, gw=3)
    assert out.shape == (2, 3, 2)
    assert out[0, 0, 0] == 21 and out[1, 2, 1] == -6 and np.count_nonzero(out) == 2


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.sampled_from([2, 8, 16, 32]), cols=st.integers(1, 32),
       max_dx=st.integers(0, 4), max_dy=st.integers(0, 4), valid=st.floats(0.0, 1.0))
def test_match_shifted_parity(seed, rows, cols, max_dx, max_dy, valid):
    rng = np.random.default_rng(seed)
    probe = _code(rng, rows, cols, valid)
    n = 12
    gallery = np.stack([_code(rng, rows, cols, valid).ravel() for _ in range(n)])
    gallery[3] = probe.ravel()                                   # an exact mate
    gallery[5] = np.roll(probe, 1, axis=1).ravel()               # a shifted mate
    records = np.concatenate([rng.integers(0, 2**32, (n, 5), dtype=np.uint32), gallery], axis=1)
    idx = rng.permutation(n).astype(np.int64)
    args = dict(offset=5, max_dx=max_dx, max_dy=max_dy, n_ref=float(rows * cols))
    ref = kernels.match_shifted_reference(probe, records, idx, **args)
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        got = kernels.match_shifted(probe, records, idx, **args)
        for g, r in zip(got, ref):
            assert np.array_equal(g, r)
    kernels.dispatch_level(kernels.LEVELS[-1])


def test_match_shifted_finds_the_shift(level):
    rng = np.random.default_rng(1)
    a = _code(rng, 32, 32, valid=0.9)
    b = np.zeros_like(a)
    b[:, 2:] = a[:, :-2] << np.uint32(1)       # record cell (y+2, x+1) = probe cell (y, x)
    hd, shift, valid = kernels.match_shifted(a, b.reshape(1, -1), np.zeros(1, np.int64),
                                             max_dx=3, max_dy=3, n_ref=3072.0)
    assert shift[0] == (2 + 8) * 32 + (1 + 8)
    assert valid[0] > 2000 and hd[0] == 0.5 - 0.5 * np.sqrt(valid[0] / 3072.0)   # D = 0


def test_match_shifted_no_overlap_is_chance(level):
    a = np.zeros((4, 8), np.uint32)
    hd, _, valid = kernels.match_shifted(a, a.reshape(1, -1), np.zeros(1, np.int64), max_dx=1, max_dy=1, n_ref=100.0)
    assert hd[0] == 0.5 and valid[0] == 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), dead=st.floats(0, 1))
def test_prefilter_and_select_parity(seed, n, dead):
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2**64, (n, 8), dtype=np.uint64)
    sigs[:, [3, 7]] &= rng.integers(0, 2**64, (n, 2), dtype=np.uint64)   # sparser masks
    live = (rng.random(n) >= dead).astype(np.uint8)
    probe = rng.integers(0, 2**64, 8, dtype=np.uint64)
    ref = kernels.prefilter_scores_reference(probe, sigs, live)
    assert (ref[live == 1] < kernels.SCORE_BINS).all() and (ref[live == 0] == 0xFFFF).all()
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        assert np.array_equal(kernels.prefilter_scores(probe, sigs, live), ref)
    kernels.dispatch_level(kernels.LEVELS[-1])
    for k in (0, 1, 7, n // 2, n, n + 5):
        assert np.array_equal(kernels.select_smallest(ref, k), kernels.select_smallest_reference(ref, k))


def test_prefilter_known_values(level):
    probe = np.zeros(8, np.uint64)
    probe[[3, 7]] = np.uint64(2**64 - 1)
    same = probe.copy()
    opposite = probe.copy()
    opposite[[0, 1, 2, 4, 5, 6]] = np.uint64(2**64 - 1)
    unknown = np.zeros(8, np.uint64)
    scores = kernels.prefilter_scores(probe, np.stack([same, opposite, unknown]), np.ones(3, np.uint8))
    assert scores.tolist() == [0, 768, 384]   # identical, all bits differ, nothing known


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3000), spread=st.integers(1, 40))
def test_select_smallest_parity_crowded_scores(seed, n, spread):
    # scores crowded into a few bins (many ties at the threshold), dead entries, n not a multiple of 16
    rng = np.random.default_rng(seed)
    scores = (340 + rng.integers(0, spread, n)).astype(np.uint16)
    scores[rng.random(n) < 0.1] = 0xFFFF
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        for k in (0, 1, 15, 16, 17, n // 20, n // 2, n, n + 5):
            assert np.array_equal(kernels.select_smallest(scores, k), kernels.select_smallest_reference(scores, k))
    kernels.dispatch_level(kernels.LEVELS[-1])


def test_prefilter_scores_into_out():
    rng = np.random.default_rng(5)
    sigs = rng.integers(0, 2**64, (37, 8), dtype=np.uint64)
    live = np.ones(37, np.uint8)
    probe = rng.integers(0, 2**64, (3, 8), dtype=np.uint64)
    whole = np.zeros(50, np.uint16)
    got = kernels.prefilter_scores(probe, sigs, live, out=whole[5:42])
    assert np.shares_memory(got, whole)
    assert np.array_equal(whole[5:42], kernels.prefilter_scores_reference(probe, sigs, live))
    assert (whole[:5] == 0).all() and (whole[42:] == 0).all()
    for bad in (np.zeros(36, np.uint16), np.zeros(37, np.int32), np.zeros(74, np.uint16)[::2]):
        with pytest.raises(ValueError):
            kernels.prefilter_scores(probe, sigs, live, out=bad)


def test_select_smallest_ties_by_index():
    scores = np.array([5, 3, 5, 3, 0xFFFF, 5, 1], np.uint16)
    assert kernels.select_smallest(scores, 4).tolist() == [0, 1, 3, 6]
    assert kernels.select_smallest(scores, 10).tolist() == [0, 1, 2, 3, 5, 6]


@pytest.mark.parametrize("call", [
    lambda: kernels.gabor_responses(np.zeros((10, 10), np.uint8), np.zeros((1, 3, 8), np.int16), y0=0, x0=0, step=1, gh=1, gw=1),
    lambda: kernels.gabor_responses(np.zeros((10, 10), np.int16), np.zeros((1, 3, 5), np.int16), y0=0, x0=0, step=1, gh=1, gw=1),
    lambda: kernels.gabor_responses(np.zeros((10, 10), np.int16), np.zeros((1, 3, 8), np.int16), y0=0, x0=0, step=1, gh=1, gw=4),
    lambda: kernels.gabor_responses(np.zeros((10, 10), np.int16), np.zeros((1, 3, 8), np.int16), y0=-1, x0=0, step=1, gh=1, gw=1),
    lambda: kernels.match_shifted(np.zeros((4, 3), np.uint32), np.zeros((2, 12), np.uint32), np.zeros(1, np.int64), max_dx=1, max_dy=1, n_ref=1.0),
    lambda: kernels.match_shifted(np.zeros((4, 4), np.uint32), np.zeros((2, 12), np.uint32), np.zeros(1, np.int64), max_dx=1, max_dy=1, n_ref=1.0),
    lambda: kernels.match_shifted(np.zeros((4, 2), np.uint32), np.zeros((2, 8), np.uint32), np.array([2]), max_dx=1, max_dy=1, n_ref=1.0),
    lambda: kernels.match_shifted(np.zeros((4, 2), np.uint32), np.zeros((2, 8), np.uint32), np.array([0]), max_dx=9, max_dy=1, n_ref=1.0),
    lambda: kernels.match_shifted(np.zeros((4, 2), np.uint32), np.zeros((2, 8), np.uint32), np.array([0]), max_dx=1, max_dy=1, n_ref=float("nan")),
    lambda: kernels.prefilter_scores(np.zeros(8, np.uint64), np.zeros((3, 8), np.uint64), np.ones(2, np.uint8)),
    lambda: kernels.prefilter_scores(np.zeros(7, np.uint64), np.zeros((3, 8), np.uint64), np.ones(3, np.uint8)),
    lambda: kernels.prefilter_best(np.zeros((1, 1, 8), np.uint64), np.zeros((3, 8), np.uint64), np.ones(3, np.uint8),
                                   out=np.zeros(2, np.uint16)),
    lambda: kernels.prefilter_best(np.zeros((1, 1, 8), np.uint64), np.zeros((3, 8), np.uint64), np.ones(3, np.uint8),
                                   owner=np.zeros(6, np.uint8)[::2]),
    lambda: kernels.prefilter_best(np.zeros((257, 1, 8), np.uint64), np.zeros((3, 8), np.uint64), np.ones(3, np.uint8)),
    lambda: kernels.prefilter_best(np.zeros((1, 8), np.uint64), np.zeros((3, 8), np.uint64), np.ones(3, np.uint8)),
    lambda: kernels.select_smallest(np.zeros(3, np.int32), 1),
    lambda: kernels.select_smallest(np.zeros(3, np.uint16), -1),
    lambda: kernels.dispatch_level(4),
])
def test_bad_arguments_are_typed_errors_before_c(call):
    with pytest.raises((TypeError, ValueError)):
        call()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.sampled_from([8, 16, 24, 32, 64]), max_dx=st.integers(0, 8),
       max_dy=st.integers(0, 8), n_ref=st.sampled_from([0.5, 3.0, 600.0, 2400.0]))
def test_match_shifted_avx2_rows_parity(seed, rows, max_dx, max_dy, n_ref):
    """The AVX2 path (rows a multiple of 8): every shift range up to 8, large and tiny n_ref
    (distances above 2.0 never win: shift 0, valid 0, like the scalar path)."""
    rng = np.random.default_rng(seed)
    probe = _code(rng, rows, 32, rng.random())
    records = np.stack([_code(rng, rows, 32, rng.random()).ravel() for _ in range(9)])
    records[2] = probe.ravel()
    idx = rng.integers(0, 9, 15).astype(np.int64)
    args = dict(max_dx=max_dx, max_dy=max_dy, n_ref=n_ref)
    ref = kernels.match_shifted_reference(probe, records, idx, **args)
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        for g, r in zip(kernels.match_shifted(probe, records, idx, **args), ref):
            assert np.array_equal(g, r)
    kernels.dispatch_level(kernels.LEVELS[-1])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.sampled_from([8, 16, 32, 64]), cols=st.integers(1, 32),
       block=st.sampled_from([(8, 8), (4, 4), (8, 16), (2, 32)]), radius=st.integers(0, 3),
       valid=st.floats(0.0, 1.0))
def test_match_elastic_parity(seed, rows, cols, block, radius, valid):
    rng = np.random.default_rng(seed)
    bh, bw = block
    assume((rows // min(bh, rows)) * (32 // bw) <= kernels.MAX_BLOCKS)
    probe = _code(rng, rows, cols, valid)
    n = 10
    gallery = np.stack([_code(rng, rows, cols, valid).ravel() for _ in range(n)])
    gallery[4] = probe.ravel()
    idx = rng.integers(0, n, 14).astype(np.int64)
    lim = kernels.MAX_SHIFT - radius
    centre = ((rng.integers(-lim, lim + 1, 14) + 8) * 32 + rng.integers(-lim, lim + 1, 14) + 8).astype(np.int32)
    args = dict(bh=min(bh, rows), bw=bw, radius=radius, n_ref=300.0)
    want = kernels.match_elastic_reference(probe, gallery, idx, centre, **args)
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        got = kernels.match_elastic(probe, gallery, idx, centre, **args)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    kernels.dispatch_level(kernels.LEVELS[-1])


def test_match_elastic_follows_blocks_that_moved_apart():
    """Each 8x8 block of a code moved by its own shift (±1 cell): the rigid match cannot align
    them all, the elastic one (radius 1) finds every block: distance 0."""
    rng = np.random.default_rng(3)
    probe = _code(rng, 32, 32, 1.0)
    bits = np.unpackbits(probe.view(np.uint8).reshape(4, 32, 4), axis=2, bitorder="little")  # (4, 32, 32)
    moved = np.zeros_like(bits)
    for by in range(4):
        for bx in range(4):
            dy, dx = rng.integers(-1, 2, 2)
            ys, xs = slice(8 * by, 8 * by + 8), slice(8 * bx, 8 * bx + 8)
            moved[:, ys, xs] = np.roll(np.roll(bits, dy, axis=1), dx, axis=2)[:, ys, xs]
    rec = np.packbits(moved, axis=2, bitorder="little").view(np.uint32).reshape(1, -1)
    idx = np.zeros(1, np.int64)
    hd, shift, _ = kernels.match_shifted(probe, rec, idx, max_dx=3, max_dy=3, n_ref=3072.0)
    assert hd[0] > 0.1
    centre = np.array([(8 * 32) + 8], np.int32)
    ehd, valid = kernels.match_elastic(probe, rec, idx, centre, bh=8, bw=8, radius=1, n_ref=3072.0)
    assert ehd[0] < 0.05 and ehd[0] == kernels.match_elastic_reference(probe, rec, idx, centre, bh=8, bw=8,
                                                                          radius=1, n_ref=3072.0)[0][0]


def test_match_elastic_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    probe = _code(rng, 16, 16)
    rec = probe.reshape(1, -1)
    idx = np.zeros(1, np.int64)
    ok = np.array([8 * 32 + 8], np.int32)
    with pytest.raises(ValueError):
        kernels.match_elastic(probe, rec, idx, ok, bh=5, bw=8, radius=1, n_ref=1.0)
    with pytest.raises(ValueError):
        kernels.match_elastic(probe, rec, idx, np.array([16 * 32 + 8], np.int32), bh=8, bw=8, radius=1, n_ref=1.0)
    with pytest.raises(ValueError):
        kernels.match_elastic(probe, rec, idx, np.zeros(2, np.int32), bh=8, bw=8, radius=1, n_ref=1.0)
    with pytest.raises(TypeError):
        kernels.match_elastic(probe, rec, idx, ok.astype(np.int64), bh=8, bw=8, radius=1, n_ref=1.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 23), variants=st.sampled_from([1, 2, 5, 64, 65]),
       dead=st.floats(0.0, 1.0))
def test_prefilter_parity_with_probe_variants(seed, n, variants, dead):
    """Several probe variants (the 4-entries-per-register AVX2 scan up to 64, the per-entry one
    beyond), entry counts that are not multiples of 4 (scalar tail): the reference's minimum."""
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2**64, (n, 8), dtype=np.uint64)
    sigs[:, [3, 7]] &= rng.integers(0, 2**64, (n, 2), dtype=np.uint64)
    live = (rng.random(n) >= dead).astype(np.uint8)
    probes = rng.integers(0, 2**64, (variants, 8), dtype=np.uint64)
    if n:
        probes[-1] = sigs[rng.integers(0, n)]
    ref = kernels.prefilter_scores_reference(probes, sigs, live)
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        assert np.array_equal(kernels.prefilter_scores(probes, sigs, live), ref)
    kernels.dispatch_level(kernels.LEVELS[-1])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 23), variants=st.sampled_from([1, 2, 5, 64, 65]),
       dead=st.floats(0.0, 1.0))
def test_prefilter_parity_with_normalised_variants(seed, n, variants, dead):
    """Each variant's score on its own scale (norm: multipliers 1..65535, offsets of either sign,
    results clamped to 0..NORM_MAX): every CPU path equals the reference."""
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2**64, (n, 8), dtype=np.uint64)
    sigs[:, [3, 7]] &= rng.integers(0, 2**64, (n, 2), dtype=np.uint64)
    live = (rng.random(n) >= dead).astype(np.uint8)
    probes = rng.integers(0, 2**64, (variants, 8), dtype=np.uint64)
    norm = np.stack([rng.integers(1, 65536, variants), rng.integers(-2**31, 2**31, variants)], 1).astype(np.int32)
    norm[0] = (1 << kernels.NORM_SHIFT, 0)                # the identity
    ref = kernels.prefilter_scores_reference(probes, sigs, live, norm=norm)
    assert (ref[live == 1] <= kernels.NORM_MAX).all()
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        assert np.array_equal(kernels.prefilter_scores(probes, sigs, live, norm=norm), ref)
    kernels.dispatch_level(kernels.LEVELS[-1])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 50), groups=st.integers(1, 6), variants=st.integers(1, 14),
       normed=st.booleans(), repeat=st.booleans())
def test_prefilter_best_is_the_minimum_over_groups_and_its_first_group(seed, n, groups, variants, normed, repeat):
    """prefilter_best (one row: the minimum over the groups, and the first group attaining it)
    equals the minimum and argmin of the groups' rows on every path; a repeated group never owns
    an entry (ties go to the first), removed entries score 0xFFFF owned by group 0."""
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2**64, (n, 8), dtype=np.uint64)
    sigs[:, [3, 7]] &= rng.integers(0, 2**64, (n, 2), dtype=np.uint64)
    live = (rng.random(n) >= 0.2).astype(np.uint8)
    probes = rng.integers(0, 2**64, (groups, variants, 8), dtype=np.uint64)
    norm = None
    if normed:
        norm = np.stack([rng.integers(1, 65536, (groups, variants)),
                         rng.integers(-2**31, 2**31, (groups, variants))], -1).astype(np.int32)
    if repeat and groups > 1:
        probes[-1] = probes[0]
        if norm is not None:
            norm[-1] = norm[0]
    rows = kernels.prefilter_scores_reference(probes, sigs, live, norm=norm)
    want = kernels.prefilter_best_reference(probes, sigs, live, norm=norm)
    assert np.array_equal(want[0], rows.min(axis=0)) and np.array_equal(want[1], rows.argmin(axis=0))
    if repeat and groups > 1:
        assert not (want[1] == groups - 1).any()
    assert (want[0][live == 0] == 0xFFFF).all() and (want[1][live == 0] == 0).all()
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        best = np.full(n + 3, 7, np.uint16)
        owner = np.full(n + 3, 9, np.uint8)
        got = kernels.prefilter_best(probes, sigs, live, norm=norm, out=best[1:n + 1], owner=owner[1:n + 1])
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert best[0] == best[-2] == best[-1] == 7 and owner[0] == owner[-2] == owner[-1] == 9
    kernels.dispatch_level(kernels.LEVELS[-1])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 50), variants=st.integers(1, 70))
def test_prefilter_scores_each_is_every_variant_alone(seed, n, variants):
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2**64, (n, 8), dtype=np.uint64)
    live = (rng.random(n) >= 0.2).astype(np.uint8)
    probes = rng.integers(0, 2**64, (variants, 8), dtype=np.uint64)
    want = np.stack([kernels.prefilter_scores_reference(p, sigs, live) for p in probes])
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        assert np.array_equal(kernels.prefilter_scores_each(probes, sigs, live), want)
    kernels.dispatch_level(kernels.LEVELS[-1])


def test_prefilter_norm_known_values(level):
    probe = np.zeros((2, 8), np.uint64)
    probe[:, [3, 7]] = np.uint64(2**64 - 1)
    opposite = probe[0].copy()
    opposite[[0, 1, 2, 4, 5, 6]] = np.uint64(2**64 - 1)
    sigs, live = np.stack([probe[0], opposite]), np.ones(2, np.uint8)
    one = 1 << kernels.NORM_SHIFT
    # variant 0 halved and moved up by 100, variant 1 doubled: min(100, 0) for the same, min(484, 1536 -> 1023)
    norm = np.array([[one // 2, 100 * one], [2 * one, 0]], np.int32)
    assert kernels.prefilter_scores(probe, sigs, live, norm=norm).tolist() == [0, 484]
    assert kernels.prefilter_scores(probe[1], sigs, live, norm=norm[1:]).tolist() == [0, 1023]
    assert kernels.prefilter_scores(probe[:1], sigs, live, norm=np.array([[one, -500 * one]], np.int32)).tolist() == [0, 268]
    for bad in ([[0, 0], [one, 0]], [[one, 0]], [[70000, 0], [one, 0]]):
        with pytest.raises(ValueError):
            kernels.prefilter_scores(probe, sigs, live, norm=np.array(bad, np.int32))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cols=st.integers(1, 32), max_dx=st.integers(0, 4),
       max_dy=st.integers(0, 4), valid=st.floats(0.0, 1.0))
def test_match_shifted16_parity(seed, cols, max_dx, max_dy, valid):
    """The vein-stage kernel == its reference on every path (bits beyond column 16, in probe or
    records, ignored), and == match_shifted's distance for codes of <= 16 columns."""
    rng = np.random.default_rng(seed)
    probe = _code(rng, 16, cols, valid)
    n = 9
    gallery = np.stack([np.concatenate([rng.integers(0, 2**32, 5, dtype=np.uint64).astype(np.uint32),
                                        _code(rng, 16, cols, valid).ravel()]) for _ in range(n)])
    gallery[2, 5:] = probe.ravel()
    idx = rng.integers(0, n, 13).astype(np.int64)
    args = dict(offset=5, max_dx=max_dx, max_dy=max_dy, n_ref=300.0)
    want = kernels.match_shifted16_reference(probe, gallery, idx, **args)
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        assert np.array_equal(kernels.match_shifted16(probe, gallery, idx, **args), want)
    kernels.dispatch_level(kernels.LEVELS[-1])
    if cols <= 16:
        assert np.array_equal(want, kernels.match_shifted_reference(probe, gallery, idx, **args)[0])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), offsets=st.integers(1, 9),
       valid=st.sampled_from([0.0, 0.3, 0.8, 1.0]), raw=st.booleans())
def test_vein_signatures_parity(seed, n, offsets, valid, raw):
    """pn_vein_signatures == its NumPy reference: codes from orientations or raw random planes
    (non-code values 010/101, bits 16-31 set), offsets inside, across and beyond the grid."""
    rng = np.random.default_rng(seed)
    if raw:
        planes = rng.integers(0, 2**32, (n, 4, 16), dtype=np.uint64).astype(np.uint32)
    else:
        planes = np.stack([_code(rng, 16, 16, valid) for _ in range(n)])
    offs = rng.integers(-18, 19, (offsets, 2))
    got = kernels.vein_signatures(planes, offs)
    assert got.shape == (n, offsets, 8)
    assert np.array_equal(got, kernels.vein_signatures_reference(planes, offs))


def test_vein_signatures_follow_their_definition():
    """The signature of a moved code = the coarse codes of the moved code at even and odd blocks
    (pf.signature_reference, by shift_code and the block pooling rule)."""
    from palmnode.biometrics import prefilter as pf
    from palmnode.biometrics.types import ModalityCode, PalmTemplate

    rng = np.random.default_rng(3)
    offs = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (2, -1), (-3, 2), (20, 0), (0, -16))
    for _ in range(30):
        code = ModalityCode.from_planes(_code(rng, 16, 16, rng.random()))
        want = np.stack([pf.signature_reference(PalmTemplate(None, pf.shift_code(code, dy, dx)))
                         for dy, dx in offs])
        assert np.array_equal(kernels.vein_signatures(code.planes(), offs)[0], want)


@pytest.mark.parametrize("call", [
    lambda: kernels.vein_signatures(np.zeros((4, 15), np.uint32), [(0, 0)]),
    lambda: kernels.vein_signatures(np.zeros((2, 4, 16), np.int32), [(0, 0)]),
    lambda: kernels.vein_signatures(np.zeros((4, 16), np.uint32), []),
    lambda: kernels.vein_signatures(np.zeros((4, 16), np.uint32), [(0, 0, 0)]),
    lambda: kernels.vein_signatures(np.zeros((4, 16), np.uint32), [(0.5, 0)]),
    lambda: kernels.vein_signatures(np.zeros((4, 16), np.uint32), [(2**31, 0)]),
])
def test_vein_signatures_bad_arguments(call):
    with pytest.raises((TypeError, ValueError)):
        call()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), radius=st.integers(0, 8), valid=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
       raw=st.booleans(), n_ref=st.sampled_from([0.5, 600.0]))
def test_match_elastic16_parity(seed, radius, valid, raw, n_ref):
    """pn_match_elastic16 == match_elastic (4x4 blocks, centre 0) on the low 16 columns, every
    path: codes from orientations or raw random words (bits 16-31 set), any radius up to 8."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    if raw:
        records = rng.integers(0, 2**32, (n, 72), dtype=np.uint64).astype(np.uint32)
        probe = rng.integers(0, 2**32, (4, 16), dtype=np.uint64).astype(np.uint32)
    else:
        records = np.concatenate([rng.integers(0, 2**32, (n, 8), dtype=np.uint64).astype(np.uint32),
                                  np.stack([_code(rng, 16, 16, valid).ravel() for _ in range(n)])], axis=1)
        probe = _code(rng, 16, 16, valid)
    idx = rng.integers(0, n, int(rng.integers(0, 30))).astype(np.int64)
    args = dict(offset=8, radius=radius, n_ref=n_ref)
    want = kernels.match_elastic16_reference(probe, records, idx, **args)
    for lv in LEVELS:
        kernels.dispatch_level(lv)
        assert np.array_equal(kernels.match_elastic16(probe, records, idx, **args), want)
    kernels.dispatch_level(kernels.LEVELS[-1])
