"""1:1 matching, score fusion and FMR-calibrated thresholds (1:N search: gallery.py).

Per modality the distance is the masked, shift-tolerant Hamming distance of the competitive
codes (native/match.c): the fraction of differing code bits among the bits valid in both
codes, minimised over shifts of up to ±3 cells (surface, 12 px) and ±2 cells (vein, 16 px)
in x and y, each shift normalised for the number of bits it compares (Daugman 2007):

    hd_n = 0.5 - (0.5 - D/V) * sqrt(V / n_ref)

so a shift that overlaps few valid bits cannot produce a lucky low distance. The rigid best
shift is then refined elastically (native pn_match_elastic): the grid is cut into 8x8-cell
blocks, each block takes its own shift within ``radius`` cells of the rigid one (most agreeing
minus differing bits), and the summed (D, V) are normalised the same way — this absorbs the
residual rotation / scale / bend between captures that one global shift cannot (docs/engine.md). The per-modality
similarity is ``s = 1 - 2*hd_n`` = (1 - 2 D/V) * sqrt(V / n_ref): 0 at chance, 1 for identical
codes with the reference number of valid bits; under the impostor (independent bits) model it
is a z-score scaled by 1/sqrt(n_ref), which puts both modalities on one scale. The fused score
is their weighted mean over the modalities both templates hold (weights FUSION_WEIGHTS, equal
by default, fixed in code, not fitted to data). Thresholds are never guessed: build a
:class:`Calibration` from impostor fused scores and ask it for the threshold of a target FMR.

A probe is matched as its best variant (variants.py: its ROI re-cut at small rotations and
scales): :func:`match_probe` 1:1, :func:`match_probe_records` against many packed records; the
calibration's impostor scores are taken the same way (``palmnode eval``'s default).
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence

import attrs
import numpy as np

from palmnode.biometrics import kernels
from palmnode.biometrics.types import SURFACE_ROWS, VEIN_ROWS, ModalityCode, PalmTemplate
from palmnode.biometrics.variants import ProbeTemplates


@attrs.frozen
class ModalityMatch:
    """How one modality is matched: rows of its code, global shift range, reference valid bits,
    and the elastic refinement (blocks of ``block`` x ``block`` cells, each free to move
    ``radius`` cells around the global best shift; radius 0 = rigid match only)."""

    rows: int
    max_shift: int
    n_ref: float
    offset: int  # word offset in a gallery record
    block: int = 8
    radius: int = 0


#: n_ref ~ the jointly valid bits of a typical genuine comparison (3 bits x valid cells).
#: Elastic blocks: surface 4x4 blocks of 8x8 cells (32 px) moving ±2 cells (8 px), vein 2x2
#: blocks of 8x8 cells (64 px) moving ±1 cell (8 px) — see docs/engine.md for the measurements.
SURFACE_MATCH = ModalityMatch(rows=SURFACE_ROWS, max_shift=3, n_ref=2400.0, offset=0, block=8, radius=2)
VEIN_MATCH = ModalityMatch(rows=VEIN_ROWS, max_shift=2, n_ref=600.0, offset=4 * SURFACE_ROWS, block=8, radius=1)
RECORD_WORDS = 4 * SURFACE_ROWS + 4 * VEIN_ROWS
#: bits of a record's modality flags (``match_probe_records``; the gallery's own flags use the same)
HAS_SURFACE, HAS_VEIN = 1, 2
FUSION_WEIGHTS = {"surface": 1.0, "vein": 1.0}


@attrs.frozen
class Score:
    """Similarities (higher = more alike, 0 = chance); NaN for a modality not in both templates."""

    surface: float
    vein: float
    fused: float


def similarity(hd: np.ndarray | float) -> np.ndarray | float:
    """Per-modality similarity from a normalised distance."""
    return 1.0 - 2.0 * hd


def fuse(surface: np.ndarray | float, vein: np.ndarray | float) -> np.ndarray | float:
    """Weighted mean of the per-modality similarities that are not NaN (NaN if both are)."""
    s, v = np.asarray(surface, np.float64), np.asarray(vein, np.float64)
    ws, wv = FUSION_WEIGHTS["surface"], FUSION_WEIGHTS["vein"]
    has_s, has_v = ~np.isnan(s), ~np.isnan(v)
    num = np.where(has_s, ws * np.nan_to_num(s), 0.0) + np.where(has_v, wv * np.nan_to_num(v), 0.0)
    den = np.where(has_s, ws, 0.0) + np.where(has_v, wv, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


_ZERO = np.zeros(1, np.int64)


def rigid_distances(probe: ModalityCode, records: np.ndarray, idx: np.ndarray,
                    spec: ModalityMatch) -> tuple[np.ndarray, np.ndarray]:
    """(hd, best shift code) of the rigid shift-tolerant match of ``probe`` against ``records[idx]``."""
    hd, shift, _ = kernels.match_shifted(probe.planes(), records, idx, offset=spec.offset,
                                         max_dx=spec.max_shift, max_dy=spec.max_shift, n_ref=spec.n_ref)
    return hd, shift


def elastic_distances(probe: ModalityCode, records: np.ndarray, idx: np.ndarray, shift: np.ndarray,
                      spec: ModalityMatch) -> np.ndarray:
    """Block-wise refinement around each record's rigid best ``shift`` (kernels.match_elastic)."""
    hd, _ = kernels.match_elastic(probe.planes(), records, idx, shift, offset=spec.offset,
                                  bh=spec.block, bw=spec.block, radius=spec.radius, n_ref=spec.n_ref)
    return hd


def distances(probe: ModalityCode, records: np.ndarray, idx: np.ndarray, spec: ModalityMatch) -> np.ndarray:
    """The matcher's normalised distance of ``probe`` to each of ``records[idx]`` (packed gallery
    records, ``spec.offset`` the modality's words): the rigid shifted match, then, when
    ``spec.radius`` > 0, the elastic block-wise refinement around its best shift."""
    hd, shift = rigid_distances(probe, records, idx, spec)
    if spec.radius > 0 and idx.size:
        hd = elastic_distances(probe, records, idx, shift, spec)
    return hd


def _one(a: ModalityCode | None, b: ModalityCode | None, spec: ModalityMatch) -> float:
    if a is None or b is None:
        return math.nan
    rec = np.zeros((1, spec.offset + 4 * spec.rows), np.uint32)
    rec[0, spec.offset:] = b.planes().ravel()
    return float(similarity(distances(a, rec, _ZERO, spec)[0]))


def _fused_of(s: float, v: float) -> float:
    ws, wv = FUSION_WEIGHTS["surface"], FUSION_WEIGHTS["vein"]
    if math.isnan(s) or math.isnan(v):      # scalar twin of fuse(), without array overhead
        return v if math.isnan(s) else s
    return (ws * s + wv * v) / (ws + wv)


def match(a: PalmTemplate, b: PalmTemplate) -> Score:
    """1:1 comparison of two templates (symmetric up to the shift direction)."""
    if not isinstance(a, PalmTemplate) or not isinstance(b, PalmTemplate):
        raise TypeError("match() compares two PalmTemplate objects")
    s = _one(a.surface, b.surface, SURFACE_MATCH)
    v = _one(a.vein, b.vein, VEIN_MATCH)
    return Score(surface=s, vein=v, fused=_fused_of(s, v))


# ------------------------------------------------------------------------ probe variants
def match_probe(probe: ProbeTemplates, template: PalmTemplate) -> Score:
    """The probe's variant (variants.py) that matches ``template`` best: the :func:`match` score
    with the highest fused value, the first variant (the base) on ties; a NaN fused score (no
    modality in common) ranks below every number."""
    if not isinstance(probe, ProbeTemplates):
        raise TypeError("match_probe() compares a ProbeTemplates (variants.py) with a PalmTemplate")
    best: Score | None = None
    for t in probe.templates:
        score = match(t, template)
        if best is None or score.fused > best.fused or (math.isnan(best.fused) and not math.isnan(score.fused)):
            best = score
    assert best is not None
    return best


def _record_sims(code: ModalityCode | None, records: np.ndarray, idx: np.ndarray, present: np.ndarray,
                 spec: ModalityMatch) -> np.ndarray:
    out = np.full(idx.size, np.nan)
    if code is not None and idx.size:
        out[:] = np.where(present, similarity(distances(code, records, idx, spec)), np.nan)
    return out


def pack_records(templates: Sequence[PalmTemplate]) -> tuple[np.ndarray, np.ndarray]:
    """``(records, flags)`` of templates in the gallery's packed layout, for
    :func:`match_probe_records` and :func:`distances` (a missing modality: zero words, flag clear)."""
    records = np.zeros((len(templates), RECORD_WORDS), np.uint32)
    flags = np.zeros(len(templates), np.uint8)
    for i, t in enumerate(templates):
        for code, spec, bit in ((t.surface, SURFACE_MATCH, HAS_SURFACE), (t.vein, VEIN_MATCH, HAS_VEIN)):
            if code is not None:
                records[i, spec.offset:spec.offset + 4 * spec.rows] = code.planes().ravel()
                flags[i] |= bit
    return records, flags


def match_probe_records(probe: ProbeTemplates, records: np.ndarray, idx: np.ndarray,
                        flags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`match_probe` of ``probe`` against many packed records at once.

    ``records``: uint32 (n, RECORD_WORDS) in the gallery's layout (surface planes at
    ``SURFACE_MATCH.offset``, vein planes at ``VEIN_MATCH.offset``); ``idx``: int64 rows to score;
    ``flags``: uint8 (n,) modality flags per record (``HAS_SURFACE | HAS_VEIN``: which codes the
    record holds). Returns float64 ``(surface, vein, fused)`` arrays of ``len(idx)``, equal to
    ``match_probe(probe, template of records[idx[i]])`` entry by entry (same kernels, same float
    operations): per variant one rigid + elastic kernel call per modality over all the rows.
    """
    if not isinstance(probe, ProbeTemplates):
        raise TypeError("match_probe_records() takes a ProbeTemplates (variants.py)")
    idx = np.asarray(idx, np.int64)
    flags = np.asarray(flags)
    if flags.shape != (records.shape[0],):
        raise ValueError(f"flags must hold one entry per record ({records.shape[0]}), got shape {flags.shape}")
    f = flags[idx]
    has_s, has_v = (f & HAS_SURFACE) != 0, (f & HAS_VEIN) != 0
    ws, wv = FUSION_WEIGHTS["surface"], FUSION_WEIGHTS["vein"]
    best_s = best_v = best_f = None
    for t in probe.templates:
        s = _record_sims(t.surface, records, idx, has_s, SURFACE_MATCH)
        v = _record_sims(t.vein, records, idx, has_v, VEIN_MATCH)
        nan_s, nan_v = np.isnan(s), np.isnan(v)
        with np.errstate(invalid="ignore"):
            fused = np.where(nan_s, v, np.where(nan_v, s, (ws * s + wv * v) / (ws + wv)))  # as match()
        if best_f is None:
            best_s, best_v, best_f = s, v, fused
            continue
        better = (fused > best_f) | (np.isnan(best_f) & ~np.isnan(fused))     # first variant on ties
        best_s = np.where(better, s, best_s)
        best_v = np.where(better, v, best_v)
        best_f = np.where(better, fused, best_f)
    return best_s, best_v, best_f


# ------------------------------------------------------------------------ calibration
@attrs.frozen(eq=False)
class Calibration:
    """Impostor score distribution -> decision thresholds for a target false-match rate.

    Keeps the number of impostor comparisons and the highest ``keep`` impostor scores (the
    tail that decides low FMRs), sorted high to low. A score is a match when score >= threshold.
    """

    n: int
    tail: np.ndarray
    #: the vein similarity's own impostor tail, beside the fused one (``palmnode eval
    #: --calibration-out`` on both modalities): the gate's vein check (IdentifyPolicy.vein_floor,
    #: docs/flows.md); None in a calibration of one modality or made before the check
    vein: Calibration | None = None
    KEEP = 100_000

    @classmethod
    def from_impostors(cls, scores: np.ndarray, *, keep: int = KEEP) -> Calibration:
        s = np.asarray(scores, np.float64).ravel()
        if s.size == 0 or not np.isfinite(s).all():
            raise ValueError("calibration needs a non-empty array of finite impostor scores")
        k = min(keep, s.size)
        tail = np.sort(np.partition(s, s.size - k)[s.size - k:])[::-1].copy()
        return cls(n=int(s.size), tail=tail)

    @property
    def min_fmr(self) -> float:
        """The smallest FMR these impostor comparisons can support (one in n)."""
        return 1.0 / self.n

    def fmr_of(self, score: float) -> float:
        """Fraction of impostor scores >= ``score`` (a lower bound below the kept tail)."""
        count = int(np.searchsorted(-self.tail, -float(score), side="right"))
        return count / self.n

    def threshold_for(self, fmr: float) -> float:
        """The lowest threshold whose impostor FMR is <= ``fmr``."""
        if not (0.0 < fmr <= 1.0):
            raise ValueError(f"fmr must be in (0, 1], got {fmr!r}")
        allowed = int(math.floor(fmr * self.n + 1e-9))
        if allowed < 1 and fmr < self.min_fmr:
            raise ValueError(f"FMR {fmr:g} is below 1/{self.n} impostor comparisons: calibrate on at "
                             f"least {math.ceil(1 / fmr)} impostor scores")
        if allowed >= self.tail.size:
            if self.tail.size < self.n:
                raise ValueError(f"FMR {fmr:g} lies outside the kept tail of {self.tail.size} scores")
            return -math.inf
        return float(np.nextafter(self.tail[allowed], math.inf))

    def tail_fit(self) -> tuple[float, float]:
        """``(a, b)`` of the probit line ``z = a + b * score`` through the measured impostor tail.

        ``z = -Φ⁻¹(FMR)``: a straight line in these units is a Gaussian tail, what the sum of many
        nearly independent code bits gives (the similarity is a scaled z-score under the
        impostor model, see the module text). Fitted by least squares over the last measured
        decades, FMR 1e-3 (or the kept tail) down to 20 impostors above the threshold: real tails
        are a little heavier than Gaussian at the top, and these points see that.
        """
        top = min(self.tail.size, int(self.n * 1e-3))
        counts = np.unique(np.geomspace(20, max(top, 21), 64).astype(np.int64))
        counts = counts[counts <= self.tail.size]
        if counts.size < 8:
            raise ValueError(f"{self.n} impostor comparisons are too few to fit the tail: calibrate on at "
                             "least 10,000")
        inv = statistics.NormalDist().inv_cdf
        z = np.array([-inv(c / self.n) for c in counts])
        b, a = np.polyfit(self.tail[counts - 1], z, 1)
        if b <= 0:
            raise ValueError("the impostor tail does not fall with the score: the calibration data is unusable")
        return float(a), float(b)

    def threshold_beyond(self, fmr: float) -> float:
        """The threshold for an FMR below what was measured, from the fitted Gaussian tail.

        1:N needs per-comparison FMRs (1e-9 at a million palms) no affordable impostor set
        measures; this extrapolates the tail fitted by :meth:`tail_fit`, and is never below
        the highest impostor score seen.
        """
        if not (0.0 < fmr < 1.0):
            raise ValueError(f"fmr must be in (0, 1), got {fmr!r}")
        a, b = self.tail_fit()
        z = -statistics.NormalDist().inv_cdf(fmr)
        return max((z - a) / b, float(np.nextafter(self.tail[0], math.inf)))

    def decision_threshold(self, fmr: float) -> float:
        """:meth:`threshold_for` where the impostors measure ``fmr``, else :meth:`threshold_beyond`."""
        if fmr * self.n >= 10:
            return self.threshold_for(fmr)
        return self.threshold_beyond(fmr)

    def vein_floor(self, vein_fmr: float) -> float:
        """The gate's vein check floor (IdentifyPolicy.vein_floor): the vein impostor tail's
        decision threshold at ``vein_fmr``; -inf (no check) when ``vein_fmr`` is 0. ValueError (one
        line) for a calibration without a vein tail: made before the check, or on one modality."""
        if vein_fmr == 0:
            return -math.inf
        if self.vein is None:
            raise ValueError("it has no vein impostor tail for the vein check (made before it, or on one modality): "
                             "remake it with `palmnode eval --calibration-out` on both modalities, or set [gate] "
                             "vein_fmr = 0 to identify without the vein check")
        return self.vein.decision_threshold(vein_fmr)

    def to_dict(self) -> dict:
        d = {"version": 1, "n": self.n, "tail": self.tail.tolist()}
        if self.vein is not None:
            d["vein"] = self.vein.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, *, nested: bool = False) -> Calibration:
        if not isinstance(d, dict) or d.get("version") != 1:
            raise ValueError(f"calibration version {d.get('version') if isinstance(d, dict) else d!r} unknown")
        if nested and "vein" in d:
            raise ValueError("calibration data is inconsistent: a vein tail inside the vein tail")
        try:
            tail, n = np.asarray(d["tail"], np.float64), int(d["n"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("calibration data is inconsistent: it needs n and a tail of scores") from None
        if tail.ndim != 1 or n < tail.size or (tail.size > 1 and (np.diff(tail) > 0).any()):
            raise ValueError("calibration data is inconsistent")
        vein = cls.from_dict(d["vein"], nested=True) if "vein" in d else None
        return cls(n=n, tail=tail, vein=vein)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        return cls.from_dict(json.loads(text))
