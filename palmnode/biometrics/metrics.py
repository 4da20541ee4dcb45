"""Accuracy metrics on comparison scores and search outcomes (pure functions, NumPy only).

Conventions, used everywhere in this module:
- scores are similarities: higher means more alike;
- a comparison is *accepted* at threshold ``t`` when ``score >= t``, so
  ``FMR(t) = #{impostor >= t} / #impostor`` and ``FNMR(t) = #{genuine < t} / #genuine``;
- an operating point for a target rate is the lowest threshold whose measured false-accept rate
  is <= the target. Ties are resolved conservatively: when impostor scores tie at the cut, the
  threshold moves above all of them (fewer false matches than allowed, never more), and a
  genuine score equal to that tied value is counted as a non-match.
- a target rate ``r`` is only reported when at least ``ceil(3 / r)`` impostor comparisons (or
  non-mated searches) back it: the "rule of three" (no errors in ``n`` trials bounds the true rate
  below ``3 / n`` at 95% confidence), so rarer targets would be guesses.

Everything works on sorted float64 copies with ``searchsorted``: O(n log n) for millions of
scores, no Python loops over scores.
"""
from __future__ import annotations

import math

import attrs
import numpy as np

#: the false-match rates ``palmnode eval`` reports FNMR at
FMR_TARGETS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: the false-positive identification rate ``palmnode eval`` reports FNIR at
FPIR_TARGETS = (1e-2,)


def _scores(values: object, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"no {name} scores")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} scores hold NaN or infinite values")
    return np.sort(a, kind="stable")


@attrs.frozen(eq=False)
class ScoreSet:
    """Genuine (same palm) and impostor (different palms) comparison scores, each sorted ascending."""

    genuine: np.ndarray
    impostor: np.ndarray

    @classmethod
    def from_arrays(cls, genuine: object, impostor: object) -> ScoreSet:
        return cls(_scores(genuine, "genuine"), _scores(impostor, "impostor"))

    def fmr(self, threshold: float | np.ndarray) -> np.ndarray:
        """Fraction of impostor scores >= ``threshold``."""
        n = self.impostor.size
        return (n - np.searchsorted(self.impostor, threshold, side="left")) / n

    def fnmr(self, threshold: float | np.ndarray) -> np.ndarray:
        """Fraction of genuine scores < ``threshold``."""
        return np.searchsorted(self.genuine, threshold, side="left") / self.genuine.size


def required_trials(target: float) -> int:
    """Impostor comparisons (or non-mated searches) needed to report a rate of ``target``."""
    if not 0 < target < 1:
        raise ValueError(f"target rate must be between 0 and 1, got {target}")
    return math.ceil(round(3.0 / target, 6))


@attrs.frozen
class NotSupported:
    """A target rate the data cannot back (rule of three)."""

    target: float
    needed: int
    have: int
    unit: str = "impostor pairs"

    @property
    def note(self) -> str:
        return f"needs {self.needed} {self.unit}, have {self.have}"


@attrs.frozen
class OperatingPoint:
    """Verification at the lowest threshold with FMR <= target (accept when score >= threshold)."""

    target: float
    threshold: float
    fmr: float
    fnmr: float
    false_matches: int
    impostors: int


def threshold_for_rate(sorted_negatives: np.ndarray, target: float) -> tuple[float, int]:
    """(lowest threshold t with #{x >= t} <= floor(target·n), that count) over ascending ``sorted_negatives``.

    When the cut falls inside a run of tied scores, t moves just above the whole run.
    """
    n = sorted_negatives.size
    allowed = math.floor(round(target * n, 9))
    if allowed >= n:
        return -math.inf, n
    cut = float(sorted_negatives[n - 1 - allowed])  # the (allowed+1)-th highest: must be rejected
    threshold = float(np.nextafter(cut, math.inf))
    above = n - int(np.searchsorted(sorted_negatives, threshold, side="left"))
    return threshold, above


def fnmr_at_fmr(scores: ScoreSet, target: float, *, min_trials: int | None = None) -> OperatingPoint | NotSupported:
    """FNMR at the lowest threshold whose FMR <= ``target``, or :class:`NotSupported` when fewer
    than ``min_trials`` (default :func:`required_trials`) impostor scores exist."""
    need = required_trials(target) if min_trials is None else min_trials
    n = scores.impostor.size
    if n < need:
        return NotSupported(target, need, n)
    threshold, false_matches = threshold_for_rate(scores.impostor, target)
    return OperatingPoint(target=target, threshold=threshold, fmr=false_matches / n,
                          fnmr=float(scores.fnmr(threshold)), false_matches=false_matches, impostors=n)


@attrs.frozen
class Eer:
    """Equal error rate: where the ROC (FMR, FNMR) polyline crosses FMR = FNMR, linearly
    interpolated between the two neighbouring thresholds; ``threshold`` interpolated likewise."""

    rate: float
    threshold: float


def eer(scores: ScoreSet) -> Eer:
    """The equal error rate of ``scores`` (see :class:`Eer`), in O(n log n) without a threshold sweep.

    d(t) = FNMR(t) - FMR(t) never decreases with t, so the crossing is found by bisection over the
    sorted impostor scores and a vectorised pass over the (fewer) distinct genuine scores.
    """
    gen, imp = scores.genuine, scores.impostor

    def d(t: float | np.ndarray) -> np.ndarray:
        return scores.fnmr(t) - scores.fmr(t)

    # lowest score (over both sets, or +inf) at which d >= 0
    g_unique = np.unique(gen)
    g_ok = np.nonzero(d(g_unique) >= 0)[0]
    best = float(g_unique[g_ok[0]]) if g_ok.size else math.inf
    lo, hi = 0, imp.size  # first index j with d(imp[j]) >= 0
    while lo < hi:
        mid = (lo + hi) // 2
        if d(float(imp[mid])) >= 0:
            hi = mid
        else:
            lo = mid + 1
    if lo < imp.size:
        best = min(best, float(imp[lo]))
    # d(min of all scores) = -1 (FMR 1, FNMR 0), so a lower neighbour always exists
    below = [float(x[i - 1]) for x in (gen, imp) if (i := int(np.searchsorted(x, best, side="left"))) > 0]
    prev = max(below)
    fmr0, fnmr0 = float(scores.fmr(prev)), float(scores.fnmr(prev))
    if math.isinf(best):
        fmr1, fnmr1 = 0.0, 1.0
    else:
        fmr1, fnmr1 = float(scores.fmr(best)), float(scores.fnmr(best))
    d0, d1 = fnmr0 - fmr0, fnmr1 - fmr1
    if d1 == 0:
        return Eer(rate=fmr1, threshold=best)
    alpha = -d0 / (d1 - d0)
    rate = fmr0 + alpha * (fmr1 - fmr0)
    top = best if not math.isinf(best) else float(np.nextafter(max(gen[-1], imp[-1]), math.inf))
    return Eer(rate=rate, threshold=prev + alpha * (top - prev))


@attrs.frozen(eq=False)
class DetCurve:
    """Exact (FMR, FNMR) pairs at ``thresholds`` (ascending; FMR falls, FNMR rises along it)."""

    thresholds: np.ndarray
    fmr: np.ndarray
    fnmr: np.ndarray


def det_curve(scores: ScoreSet, *, max_points: int = 1000) -> DetCurve:
    """A DET curve of at most ~``max_points`` exact operating points.

    Thresholds: distinct genuine scores (thinned evenly) and impostor scores at geometrically
    spaced ranks from the top, so the low-FMR end (where a gate operates) keeps its detail.
    """
    gen, imp = scores.genuine, scores.impostor
    half = max(2, max_points // 2)
    g = np.unique(gen)
    if g.size > half:
        g = g[np.linspace(0, g.size - 1, half).round().astype(np.int64)]
    ranks = np.unique(np.geomspace(1, imp.size, half).round().astype(np.int64))
    i = imp[imp.size - ranks]
    t = np.unique(np.concatenate([g, i, [np.nextafter(max(gen[-1], imp[-1]), np.inf)]]))
    return DetCurve(thresholds=t, fmr=scores.fmr(t), fnmr=scores.fnmr(t))


# ---------------------------------------------------------------------------------- identification


@attrs.frozen(eq=False)
class SearchOutcomes:
    """One 1:N search per probe against a gallery of identities.

    ``mated``: the best score of the probe's own identity in the gallery (NaN when that identity is
    not enrolled: no mated search; -inf when it is enrolled but nothing could be compared: a
    miss); ``nonmated``: the best score of any *other* identity (-inf when there is none).
    Each probe thereby gives one mated search (when its identity is enrolled) and one non-mated
    search — the same search with the probe's own identity left out of the gallery
    (leave-one-identity-out).
    """

    mated: np.ndarray
    nonmated: np.ndarray

    @classmethod
    def from_arrays(cls, mated: object, nonmated: object) -> SearchOutcomes:
        m = np.asarray(mated, dtype=np.float64).ravel()
        n = np.asarray(nonmated, dtype=np.float64).ravel()
        if m.shape != n.shape:
            raise ValueError("mated and nonmated must have one entry per probe")
        return cls(m, n)

    @property
    def mated_searches(self) -> int:
        return int((~np.isnan(self.mated)).sum())

    @property
    def nonmated_searches(self) -> int:
        return int(np.isfinite(self.nonmated).sum())


def rank1_rate(outcomes: SearchOutcomes) -> float | None:
    """Fraction of mated searches whose top candidate is the mate (a tie with another identity is a
    miss); None without mated searches."""
    ok = ~np.isnan(outcomes.mated)
    if not ok.any():
        return None
    return float((outcomes.mated[ok] > outcomes.nonmated[ok]).mean())


@attrs.frozen
class IdentificationPoint:
    """Open-set identification at the lowest threshold with FPIR <= target (candidate list of one:
    a mated search succeeds when the mate is ranked first and scores >= threshold)."""

    target: float
    threshold: float
    fpir: float
    fnir: float
    false_positives: int
    nonmated_searches: int
    mated_searches: int


def fnir_at_fpir(outcomes: SearchOutcomes, target: float, *,
                 min_trials: int | None = None) -> IdentificationPoint | NotSupported | None:
    """FNIR at the lowest threshold whose FPIR (non-mated searches returning anyone at or above the
    threshold) is <= ``target``; :class:`NotSupported` with too few non-mated searches, None
    without mated searches."""
    neg = np.sort(outcomes.nonmated[np.isfinite(outcomes.nonmated)])
    need = required_trials(target) if min_trials is None else min_trials
    if neg.size < need:
        return NotSupported(target, need, int(neg.size), unit="non-mated searches")
    ok = ~np.isnan(outcomes.mated)
    if not ok.any():
        return None
    threshold, false_positives = threshold_for_rate(neg, target)
    mated, rival = outcomes.mated[ok], outcomes.nonmated[ok]
    hit = (mated > rival) & (mated >= threshold)
    return IdentificationPoint(target=target, threshold=threshold, fpir=false_positives / neg.size,
                               fnir=float(1.0 - hit.mean()), false_positives=false_positives,
                               nonmated_searches=int(neg.size), mated_searches=int(ok.sum()))
