"""Metrics against hand-computed cases and a brute-force threshold sweep."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palmnode.biometrics import metrics as m


def sweep(gen, imp):
    """Brute force: (threshold, FMR, FNMR) at every distinct score and just above it."""
    values = sorted(set(gen) | set(imp))
    cands = sorted(set(values) | {float(np.nextafter(v, math.inf)) for v in values} | {-math.inf})
    out = []
    for t in cands:
        fmr = sum(1 for x in imp if x >= t) / len(imp)
        fnmr = sum(1 for x in gen if x < t) / len(gen)
        out.append((t, fmr, fnmr))
    return out


def brute_eer(gen, imp):
    pts = [(t, a, b) for t, a, b in sweep(gen, imp) if t in set(gen) | set(imp)]
    pts.append((math.inf, 0.0, 1.0))
    for i, (t, fmr, fnmr) in enumerate(pts):
        if fnmr - fmr >= 0:
            if fnmr == fmr:
                return fmr
            _, fmr0, fnmr0 = pts[i - 1]
            d0, d1 = fnmr0 - fmr0, fnmr - fmr
            a = -d0 / (d1 - d0)
            return fmr0 + a * (fmr - fmr0)
    raise AssertionError("no crossing")


def brute_fnmr_at(gen, imp, target):
    allowed = math.floor(round(target * len(imp), 9))
    for t, fmr, fnmr in sweep(gen, imp):
        if fmr * len(imp) <= allowed + 1e-9:
            return t, fmr, fnmr
    raise AssertionError


# ------------------------------------------------------------------------------ hand-computed


def test_eer_exact_crossing_at_a_threshold():
    # t=0.7: FMR = 1/3 (0.7), FNMR = 1/3 (0.6) -> crossing exactly there
    s = m.ScoreSet.from_arrays([0.6, 0.8, 0.9], [0.1, 0.2, 0.7])
    e = m.eer(s)
    assert e.rate == pytest.approx(1 / 3)
    assert e.threshold == 0.7


def test_eer_interpolated_between_thresholds():
    # t=0.5: (FMR 1/2, FNMR 0); t=0.9: (0, 1/2) -> the segment meets FMR=FNMR half way: 1/4
    s = m.ScoreSet.from_arrays([0.5, 0.9], [0.1, 0.5])
    e = m.eer(s)
    assert e.rate == pytest.approx(0.25)
    assert e.threshold == pytest.approx(0.7)


def test_eer_interpolated_along_a_flat_fmr():
    # t=0.8: (1/3, 1/4); t=0.85: (1/3, 1/2): alpha = (1/12)/(1/4) = 1/3 -> EER 1/3 at 0.8 + 0.05/3
    s = m.ScoreSet.from_arrays([0.4, 0.8, 0.9, 0.95], [0.1, 0.5, 0.85])
    e = m.eer(s)
    assert e.rate == pytest.approx(1 / 3)
    assert e.threshold == pytest.approx(0.8 + 0.05 / 3)


def test_eer_perfect_separation_is_zero():
    s = m.ScoreSet.from_arrays([0.8, 0.9], [0.1, 0.2, 0.3])
    assert m.eer(s).rate == 0.0


def test_eer_all_impostors_above_is_one():
    s = m.ScoreSet.from_arrays([0.1, 0.2], [0.8, 0.9])
    assert m.eer(s).rate == pytest.approx(1.0)


def test_fnmr_at_fmr_hand_case():
    # 10 impostors, target 0.1 allows one false match: threshold just above the 2nd highest (0.8)
    imp = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.95]
    gen = [0.5, 0.8, 0.85, 0.9, 0.99]
    p = m.fnmr_at_fmr(m.ScoreSet.from_arrays(gen, imp), 0.1, min_trials=1)
    assert p.threshold == np.nextafter(0.8, 1)
    assert p.false_matches == 1 and p.fmr == 0.1
    assert p.fnmr == pytest.approx(2 / 5)  # 0.5 and the tie at 0.8 are rejected


def test_fnmr_at_fmr_ties_at_the_cut_are_rejected():
    # one false match allowed, but the two highest impostors tie: both must go, FMR falls to 0
    imp = [0.1] * 8 + [0.9, 0.9]
    gen = [0.9, 0.95]
    p = m.fnmr_at_fmr(m.ScoreSet.from_arrays(gen, imp), 0.1, min_trials=1)
    assert p.false_matches == 0 and p.fmr == 0.0
    assert p.threshold > 0.9
    assert p.fnmr == 0.5  # the genuine 0.9 ties with impostors: counted as a non-match


def test_fnmr_at_fmr_rule_of_three():
    s = m.ScoreSet.from_arrays([1.0], np.zeros(299))
    r = m.fnmr_at_fmr(s, 1e-2)
    assert isinstance(r, m.NotSupported)
    assert r.note == "needs 300 impostor pairs, have 299"
    assert isinstance(m.fnmr_at_fmr(m.ScoreSet.from_arrays([1.0], np.zeros(300)), 1e-2), m.OperatingPoint)
    assert [m.required_trials(t) for t in m.FMR_TARGETS] == [300, 3000, 30000, 300000, 3000000]


def test_fmr_and_fnmr_at_thresholds():
    s = m.ScoreSet.from_arrays([0.2, 0.4, 0.6], [0.1, 0.4, 0.5, 0.7])
    assert list(s.fmr(np.array([0.0, 0.4, 0.41, 1.0]))) == [1.0, 0.75, 0.5, 0.0]
    assert list(s.fnmr(np.array([0.0, 0.4, 0.41, 1.0]))) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])


def test_det_curve_points_are_exact_and_monotone():
    rng = np.random.default_rng(1)
    s = m.ScoreSet.from_arrays(rng.normal(2, 1, 5000), rng.normal(0, 1, 200_000))
    d = m.det_curve(s, max_points=400)
    assert d.thresholds.size <= 410
    assert np.all(np.diff(d.fmr) <= 0) and np.all(np.diff(d.fnmr) >= 0)
    assert d.fmr[-1] == 0.0 and d.fnmr[-1] == 1.0
    assert d.fmr.min() == 0 and np.sort(d.fmr[d.fmr > 0])[0] == pytest.approx(1 / 200_000)
    k = d.thresholds.size // 2
    t = d.thresholds[k]
    assert d.fmr[k] == np.mean(s.impostor >= t) and d.fnmr[k] == np.mean(s.genuine < t)


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="no genuine"):
        m.ScoreSet.from_arrays([], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        m.ScoreSet.from_arrays([0.1], [np.nan])


# ------------------------------------------------------------------------------ brute-force parity

scores = st.lists(st.integers(0, 12).map(lambda i: i / 12), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(scores, scores)
def test_eer_matches_brute_force(gen, imp):
    assert m.eer(m.ScoreSet.from_arrays(gen, imp)).rate == pytest.approx(brute_eer(gen, imp), abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(scores, scores, st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.29, 0.5]))
def test_fnmr_at_fmr_matches_brute_force(gen, imp, target):
    p = m.fnmr_at_fmr(m.ScoreSet.from_arrays(gen, imp), target, min_trials=1)
    t, fmr, fnmr = brute_fnmr_at(gen, imp, target)
    assert p.fmr == pytest.approx(fmr) and p.fnmr == pytest.approx(fnmr)
    assert p.fmr <= target
    if not math.isinf(t):
        assert p.threshold == t


def test_large_arrays_are_fast_enough():
    rng = np.random.default_rng(0)
    s = m.ScoreSet.from_arrays(rng.normal(3, 1, 30_000).astype(np.float32),
                               rng.normal(0, 1, 3_000_000).astype(np.float32))
    e = m.eer(s)
    # two unit normals 3 apart cross at 1.5: EER = 1 - Phi(1.5) = 0.0668
    assert e.rate == pytest.approx(0.0668, abs=0.004)
    p = m.fnmr_at_fmr(s, 1e-6)
    assert p.false_matches <= 3


# ------------------------------------------------------------------------------ identification


def test_rank1_counts_ties_as_misses_and_skips_unenrolled():
    o = m.SearchOutcomes.from_arrays([0.9, 0.5, 0.7, np.nan], [0.3, 0.6, 0.7, 0.8])
    assert m.rank1_rate(o) == pytest.approx(1 / 3)
    assert o.mated_searches == 3 and o.nonmated_searches == 4
    assert m.rank1_rate(m.SearchOutcomes.from_arrays([np.nan], [0.1])) is None
    # -inf: enrolled, but nothing could be compared -> a mated search that misses
    o = m.SearchOutcomes.from_arrays([0.9, -np.inf], [0.1, -np.inf])
    assert m.rank1_rate(o) == 0.5 and o.mated_searches == 2 and o.nonmated_searches == 1


def test_fnir_at_fpir_hand_case():
    # 4 non-mated top scores 0.2 0.4 0.6 0.8; target 0.25 allows one: threshold just above 0.6
    o = m.SearchOutcomes.from_arrays([0.9, 0.65, 0.61, 0.95, np.nan], [0.2, 0.4, 0.6, 0.99, 0.8])
    # note the 4th probe's rival (0.99) beats its mate: a miss at any threshold; 5 non-mated searches
    p = m.fnir_at_fpir(o, 0.25, min_trials=1)
    # non-mated sorted: .2 .4 .6 .8 .99, one allowed (floor(1.25)) -> above 0.8
    assert p.threshold == np.nextafter(0.8, 1)
    assert p.false_positives == 1 and p.fpir == pytest.approx(0.2)
    assert p.mated_searches == 4
    # only the first mated search (0.9, ranked first, above threshold) is a hit
    assert p.fnir == pytest.approx(3 / 4)
    assert isinstance(m.fnir_at_fpir(o, 0.01), m.NotSupported)
    assert m.fnir_at_fpir(o, 0.01).note == "needs 300 non-mated searches, have 5"
