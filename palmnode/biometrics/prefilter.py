"""The 1:N pre-filter: which few gallery entries get the full match.

Every enrolled palm has a pre-filter index row (:func:`index_rows`, kept by the gallery beside
its record). A search (docs/engine.md, "1:N search") narrows the gallery in two stages before
the full match:

1. the signature scan: every entry's 64-byte vein signature (two 8x8 coarse codes of the vein
   code) against the probe's signature at a few grid offsets (minimum kept; native AVX2
   popcount), keeping a stage 1;
2. the vein stage: the block-wise match of the full vein code (4x4-cell blocks, each free to
   move ±VEIN_STAGE_RADIUS cells: kernels.match_elastic16) on those, keeping a shortlist.

Both run in two passes: the fast pass (the probe as found at FAST_OFFSETS, ``fast_sizes``:
small) and the full pass (``stage1_size`` / ``shortlist_size``), which the gallery runs only when
the fast pass's best final score stays below ``exit_score``. The full pass also ranks by the
probe's re-cuts (variants.ProbeTemplates): the scan keeps each entry's best score over the probe
and its re-cuts at every PROBE_OFFSETS offset, each such pair's scores first standardised to
the gallery's (:func:`pair_norms`), and the vein stage the better of the probe's
distance and that of the re-cut whose signature scored the entry best, so a capture whose ROI
is off in rotation or scale is not lost to the signature it cannot match.
:meth:`Prefilter.select` runs one pass over a gallery snapshot; the gallery does the rest.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import attrs
import numpy as np

from palmnode.biometrics import kernels
from palmnode.biometrics.features import CIRCULAR_CODE, N_ORIENT
from palmnode.biometrics.matcher import HAS_VEIN, VEIN_MATCH
from palmnode.biometrics.types import ModalityCode, PalmTemplate

#: shortlist after the full pre-filter pass: SHORTLIST_FRACTION of the gallery, at least
#: MIN_SHORTLIST and at most SHORTLIST entries (a fixed impostor quantile, so the recall loss does
#: not depend on the gallery size up to SHORTLIST / SHORTLIST_FRACTION = 1M); recall loss measured
#: in docs/engine.md. The full pass runs for strangers and poorly aligned mates only (the fast
#: pass is enough for the others), so it is sized for recall (docs/engine.md, "1:N search":
#: with standardised pairs a 15% stage 1 loses fewer mates than 25% did with raw scores)
SHORTLIST = 20_000
SHORTLIST_FRACTION = 0.02
MIN_SHORTLIST = 100
#: the signature scan keeps STAGE1_FRACTION of the gallery (at least MIN_STAGE1, at most STAGE1
#: entries) for the vein stage
STAGE1_FRACTION = 0.15
MIN_STAGE1 = 1000
STAGE1 = 150_000
VEIN_STAGE_RADIUS = 2
#: The fast pass (docs/engine.md, "1:N search"): the probe's signature at FAST_OFFSETS only, a
#: stage 1 of FAST_STAGE1_FRACTION (within [MIN_STAGE1, FAST_STAGE1]) and a shortlist of
#: FAST_SHORTLIST_FRACTION (within [min_shortlist, FAST_SHORTLIST]). Gallery.search stops there
#: when its best final score reaches EXIT_SCORE, a fused score above every impostor score seen
#: (bench, 587 probes x 1M: best impostor 0.361; with probe variants the highest of 8.9M impostor
#: pairs is 0.3745 and the 1e-9 threshold 0.3907); otherwise it runs the full pre-filter
#: (PROBE_OFFSETS, stage1_size, shortlist_size). The node and the benches pass the gate's
#: decision threshold instead.
FAST_OFFSETS = ((0, 0),)
FAST_STAGE1_FRACTION = 0.003
FAST_STAGE1 = 3000
FAST_SHORTLIST_FRACTION = 0.00015
FAST_SHORTLIST = 150
EXIT_SCORE = 0.39
#: The full pass's (template, offset) pairs score on one scale (:func:`pair_norms`): each pair's
#: scores standardised to the gallery's (NORM_STEP score units per standard deviation about
#: NORM_CENTRE, measured on NORM_SAMPLE entries spread over the gallery). Raw scores favour the
#: pairs with the lowest typical score (an offset moves cells out, and an unknown bit counts half
#: a difference): a mate whose best pair is another lost to impostors' chances on those
#: (docs/engine.md, "1:N search")
NORM_STEP = 32
NORM_CENTRE = 512
NORM_SAMPLE = 4096
#: uint64 words of one entry's pre-filter index row
INDEX_WORDS = kernels.SIGNATURE_WORDS


#: how a search runs its per-segment (or per-chunk) work: the builtin ``map`` runs it in the
#: caller's thread, a thread pool's ``map`` on several cores (Gallery(threads=...)); the C calls
#: release the GIL and every task writes its own slice of the results
Mapper = Callable[[Callable, Iterable], Iterable]


class SearchCancelled(Exception):
    """A search stopped at its caller's request (``stop`` set): its caller gave up on it."""


def check(stop: threading.Event | None) -> None:
    """Raise :class:`SearchCancelled` if ``stop`` is set: a search calls this between its C
    calls, so one its caller abandoned (a timeout, the hand gone) frees the core within one call."""
    if stop is not None and stop.is_set():
        raise SearchCancelled("search cancelled")


# ---------------------------------------------------------------- signature
#: agreement between orientations j and k: round(100 * cos(2 * 30° * (j - k))) (doubled angles,
#: since orientation is periodic in 180°); a block's orientation is the argmax of the summed votes
_AGREE = np.round(100 * np.cos(2 * np.pi / N_ORIENT * (np.arange(6)[:, None] - np.arange(6)[None, :]))).astype(np.int64)
_DECODE = np.full(8, -1, np.int64)
_DECODE[CIRCULAR_CODE] = np.arange(N_ORIENT)
SIGNATURE_GRID = 8
#: The signature is vein-only: two 8x8 coarse codes of the vein code's 2x2-cell blocks, words 0-3
#: with blocks starting at even cells, words 4-7 at odd cells (the code moved by SIGNATURE_PHASE):
#: overlapping blocks, so a misalignment of one cell still finds half the blocks in step. The
#: surface's coarse code ranked mates barely better than chance (docs/engine.md) and is not used.
SIGNATURE_PHASE = (-1, -1)


def _orientations(code: ModalityCode) -> tuple[np.ndarray, np.ndarray]:
    planes = code.planes()
    bits = ((planes[:, :, None] >> np.arange(code.rows, dtype=np.uint32)) & 1).astype(np.uint8)
    value = bits[0] | (bits[1] << 1) | (bits[2] << 2)
    return _DECODE[value], bits[3].astype(bool)


_BIT64 = np.uint64(1) << np.arange(64, dtype=np.uint64)


def _coarse_words(orient: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint64 (P, 4): 8x8 coarse codes (3 planes + mask) pooled from P cell grids (P, R, R)
    (the reference formulation; :func:`_coarse_from_votes` is the same rule on block votes)."""
    p, rows = valid.shape[0], valid.shape[1]
    b = rows // SIGNATURE_GRID
    onehot = (orient[..., None] == np.arange(N_ORIENT)) & valid[..., None]
    votes = onehot.reshape(p, SIGNATURE_GRID, b, SIGNATURE_GRID, b, N_ORIENT).sum(axis=(2, 4))
    support = votes.sum(axis=3)
    agree = votes @ _AGREE                                    # (P, 8, 8, 6) integer
    best = np.argmax(agree, axis=3)
    # a block needs a quarter of its cells valid and a clear dominant orientation
    block_valid = (support * 4 >= b * b) & (agree.max(axis=3) * 2 >= support * 100 // 2)
    c = CIRCULAR_CODE[best].reshape(p, -1).astype(np.uint64)
    out = np.empty((p, 4), np.uint64)
    for q in range(3):
        out[:, q] = np.bitwise_or.reduce(((c >> np.uint64(q)) & np.uint64(1)) * _BIT64, axis=1)
    out[:, 3] = np.bitwise_or.reduce(block_valid.reshape(p, -1).astype(np.uint64) * _BIT64, axis=1)
    return out


def shift_code(code: ModalityCode, dy: int, dx: int) -> ModalityCode:
    """The code moved by (dy, dx) cells (cell (y, x) -> (y+dy, x+dx)); cells moved in are invalid."""
    planes = code.planes()
    rows = planes.shape[1]
    moved = (planes << np.uint32(dx)) if dx >= 0 else (planes >> np.uint32(-dx))
    if rows < 32:
        moved &= np.uint32((1 << rows) - 1)
    out = np.zeros_like(moved)
    if abs(dy) < rows:
        if dy >= 0:
            out[:, dy:] = moved[:, :rows - dy]
        else:
            out[:, :rows + dy] = moved[:, -dy:]
    return ModalityCode.from_planes(out)


def signature_reference(template: PalmTemplate) -> np.ndarray:
    """:func:`signature` by its definition (slow): the vein code's coarse code, then the coarse
    code of the vein code moved by SIGNATURE_PHASE; zero (no valid block) without a vein code."""
    if template.vein is None:
        return np.zeros(8, np.uint64)
    words = []
    for code in (template.vein, shift_code(template.vein, *SIGNATURE_PHASE)):
        orient, valid = _orientations(code)
        words.append(_coarse_words(orient[None], valid[None])[0])
    return np.concatenate(words)


def signature(template: PalmTemplate) -> np.ndarray:
    """The 64-byte pre-filter signature (uint64[8]) derived from a template's vein code
    (equal to :func:`signature_reference`)."""
    return signature_variants(template, ((0, 0),))[0]


def signatures_of_codes(planes: np.ndarray) -> np.ndarray:
    """uint64 (N, 8): the signatures of N vein codes given as uint32 planes (N, 4, 16)
    (e.g. gallery records), vectorised; equal to :func:`signature` of each."""
    return kernels.vein_signatures(planes, ((0, 0),))[:, 0]


#: probe-side pre-filter variants of the full pass, in vein cells (8 px): the 3x3 neighbourhood
#: and two cells along each axis (the bench's lost mates were misaligned by up to 2 cells). Each
#: (template, offset) pair is standardised (pair_norms), so more pairs no longer favour the
#: impostors: with raw scores the anti-diagonals (1, -1), (-1, 1) lost more mates than they
#: found, standardised they keep a mate at 0.398 that needed (-2, -1) (docs/engine.md)
PROBE_OFFSETS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1), (0, 2), (0, -2), (2, 0), (-2, 0))


def signature_variants(template: PalmTemplate, offsets=PROBE_OFFSETS) -> np.ndarray:
    """uint64 (len(offsets), 8): the probe's signature with its vein code moved by each offset
    (vein cells) — equal to ``signature(PalmTemplate(None, shift_code(vein, dy, dx)))`` per
    offset, computed for all offsets at once; zero rows (no valid block) without a vein code."""
    offsets = tuple(offsets)
    if template.vein is None:
        return np.zeros((len(offsets), 8), np.uint64)
    return kernels.vein_signatures(template.vein.planes(), offsets)[0]


def probe_signatures(templates: Sequence[PalmTemplate], offsets=PROBE_OFFSETS) -> np.ndarray:
    """uint64 (len(templates), len(offsets), 8): :func:`signature_variants` of each template
    (a probe and its re-cuts, each with a vein code); the scan keeps each entry's minimum."""
    return np.stack([signature_variants(t, offsets) for t in templates])


def index_rows(templates: Sequence[PalmTemplate]) -> np.ndarray:
    """uint64 (len(templates), INDEX_WORDS): what the pre-filter keeps of each enrolled template
    (its :func:`signature`), in one native call."""
    out = np.zeros((len(templates), INDEX_WORDS), np.uint64)
    veined = [i for i, t in enumerate(templates) if t.vein is not None]
    if veined:
        out[veined] = signatures_of_codes(np.stack([templates[i].vein.planes() for i in veined]))
    return out


def smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest (value, position), ascending position (a partition, not a sort)."""
    if k >= values.size:
        return np.arange(values.size)
    t = np.partition(values, k - 1)[k - 1]
    below = values < t
    ties = np.flatnonzero(values == t)[:k - int(np.count_nonzero(below))]
    below[ties] = True
    return np.flatnonzero(below)


def by_segment(chosen: np.ndarray, starts: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(segment, positions in ``chosen``) for ascending global indices ``chosen``: slices, no sort."""
    bounds = np.searchsorted(chosen, starts)
    for s in range(len(starts) - 1):
        if bounds[s + 1] > bounds[s]:
            yield s, np.arange(bounds[s], bounds[s + 1])


@attrs.frozen
class Prefilter:
    """Sizes and probe offsets of the two pre-filter stages.

    ``select`` reads a gallery snapshot: a sequence of (segment, published count, live flags)
    whose segments have ``index`` (rows of :func:`index_rows`), ``records`` (the matcher's
    packed codes) and ``flags`` (bit 2: has a vein code) arrays; ``starts`` are the segments'
    first global indices plus the total.
    """

    shortlist: int = SHORTLIST
    shortlist_fraction: float = SHORTLIST_FRACTION
    min_shortlist: int = MIN_SHORTLIST
    probe_offsets: tuple[tuple[int, int], ...] = attrs.field(default=PROBE_OFFSETS, converter=tuple)
    fast_offsets: tuple[tuple[int, int], ...] = attrs.field(default=FAST_OFFSETS, converter=tuple)
    #: None: no fast pass (every search runs the full pre-filter)
    exit_score: float | None = EXIT_SCORE

    def __attrs_post_init__(self) -> None:
        if self.shortlist < 1 or self.min_shortlist < 1 or not self.probe_offsets or not self.fast_offsets:
            raise ValueError("shortlist and min_shortlist must be positive, probe_offsets and fast_offsets non-empty")
        if not 0.0 < self.shortlist_fraction <= 1.0:
            raise ValueError(f"shortlist_fraction must be in (0, 1], got {self.shortlist_fraction!r}")

    def shortlist_size(self, total: int) -> int:
        """Entries fully matched after the pre-filter in a gallery of ``total`` live entries:
        ``ceil(shortlist_fraction * total)`` clamped to [min(min_shortlist, shortlist), shortlist]."""
        return int(min(self.shortlist, max(min(self.min_shortlist, self.shortlist),
                                           -(-int(total * self.shortlist_fraction * 1e6) // 1_000_000))))

    def stage1_size(self, total: int) -> int:
        """Entries the signature scan keeps for the vein stage in a gallery of ``total`` live entries."""
        return int(min(STAGE1, max(MIN_STAGE1, -(-int(total * STAGE1_FRACTION * 1e6) // 1_000_000))))

    def fast_sizes(self, total: int) -> tuple[int, int]:
        """(stage 1, shortlist) of the fast pass in a gallery of ``total`` live entries (never
        more than the full pass's)."""
        k1 = min(self.stage1_size(total), max(MIN_STAGE1, -(-int(total * FAST_STAGE1_FRACTION * 1e6) // 1_000_000)),
                 FAST_STAGE1)
        full = self.shortlist_size(total)
        size = min(full, max(min(self.min_shortlist, full),
                             -(-int(total * FAST_SHORTLIST_FRACTION * 1e6) // 1_000_000)), FAST_SHORTLIST)
        return int(k1), int(size)

    def has_fast_pass(self, probe: PalmTemplate, total: int) -> bool:
        """Whether a search may stop after the fast pass (exit_score set, a vein code to rank
        by, a gallery larger than the full shortlist)."""
        return self.exit_score is not None and probe.vein is not None and total > self.shortlist_size(total)

    def signature_scores(self, probes: Sequence[PalmTemplate], snap: Sequence, starts: np.ndarray, *,
                         fast: bool = False, stop: threading.Event | None = None,
                         map_: Mapper = map) -> tuple[np.ndarray, np.ndarray]:
        """(uint16 (total,), uint8 (total,)): every entry's stage-1 score, its best signature
        score over the probe templates (each with a vein code) at every offset (fast_offsets
        when ``fast``, else probe_offsets), the (template, offset) pairs standardised first when
        there is more than one (:func:`pair_norms`), and the template that scored it best (its
        *owner*, the first on ties). One task per segment through ``map_``."""
        psig = probe_signatures(probes, self.fast_offsets if fast else self.probe_offsets)
        # one pair alone needs no common scale: the fast pass ranks by its raw scores
        norms = None if psig.shape[0] * psig.shape[1] == 1 else pair_norms(psig, snap, starts)
        total = int(starts[-1])
        best, owner = np.empty(total, np.uint16), np.empty(total, np.uint8)

        def scan(s: int) -> None:
            check(stop)
            (seg, n, live), a = snap[s], starts[s]
            kernels.prefilter_best(psig, seg.index[:n], live[:n], norm=norms, out=best[a:a + n], owner=owner[a:a + n])
        list(map_(scan, range(len(snap))))
        return best, owner

    def select(self, probe: PalmTemplate, snap: Sequence, starts: np.ndarray, *, fast: bool = False,
               variants: Sequence[PalmTemplate] = (), ranked: bool = False,
               stop: threading.Event | None = None, map_: Mapper = map) -> np.ndarray:
        """Ascending global indices of the entries that get the full match (every live entry
        when the gallery is no bigger than the shortlist or the probe has no vein code);
        ``fast``: the fast pass's (fast_offsets, fast_sizes), the probe alone. ``variants``:
        the probe's other re-cuts (variants.ProbeTemplates), which the full pass also ranks by:
        an entry's signature score is its best over the probe and its variants at every
        probe offset (with more than one such pair each pair's scores standardised first:
        :func:`pair_norms`), and its vein-stage distance the better of the probe's and that of the
        re-cut that scored it best (the probe itself on ties). ``ranked``: the entries best
        first by the pass's own last ranking (vein-stage distance, or signature score without a
        vein stage; ties by index) instead of by index (by index still when every live entry is
        kept: nothing was ranked). ``stop``: checked between C calls (:func:`check`); ``map_`` runs
        the per-segment work of the scan and the vein stage (:data:`Mapper`)."""
        total = int(starts[-1])
        size = self.shortlist_size(total)
        if total <= size or probe.vein is None:   # the signature is vein-only: no vein, no ranking
            return np.concatenate([np.flatnonzero(live[:n]) + a for (_, n, live), a in zip(snap, starts[:-1])])
        probes = [probe] if fast else [probe, *(t for t in variants if t.vein is not None)]
        best, owner = self.signature_scores(probes, snap, starts, fast=fast, stop=stop, map_=map_)
        k1 = self.stage1_size(total)
        if fast:
            k1, size = self.fast_sizes(total)
        if k1 <= size:
            chosen = kernels.select_smallest(best, size)
            return chosen[np.lexsort((chosen, best[chosen]))] if ranked else chosen
        first = kernels.select_smallest(best, k1)
        hd = vein_stage(probe, snap, starts, first, stop, map_)
        owner = owner[first]                                   # the template that scored it best
        for v in range(1, len(probes)):
            mine = np.flatnonzero(owner == v)
            if mine.size:
                hd[mine] = np.minimum(hd[mine], vein_stage(probes[v], snap, starts, first[mine], stop, map_))
        keep = smallest(hd, size)
        return first[keep[np.lexsort((keep, hd[keep]))]] if ranked else first[keep]


def sample_signatures(snap: Sequence, starts: np.ndarray, size: int = NORM_SAMPLE) -> np.ndarray:
    """Index rows of up to ``size`` live entries spread evenly over the gallery snapshot."""
    total = int(starts[-1])
    at = np.arange(0, total, max(1, total // size))
    parts = []
    for s, pos in by_segment(at, starts):
        seg, n, live = snap[s]
        rows = at[pos] - starts[s]
        parts.append(seg.index[rows[live[rows] != 0]])
    return np.concatenate(parts) if parts else np.zeros((0, INDEX_WORDS), np.uint64)


def pair_norms(psig: np.ndarray, snap: Sequence, starts: np.ndarray) -> np.ndarray:
    """int32 (T, O, 2): kernels.prefilter_scores' ``norm`` for each (template, offset) pair of
    probe signatures (T, O, 8): its score standardised against the gallery's, NORM_CENTRE +
    NORM_STEP * (score - mean) / std, the mean and standard deviation measured on
    :func:`sample_signatures` (almost all impostors)."""
    sample = sample_signatures(snap, starts)
    flat = psig.reshape(-1, INDEX_WORDS)
    if sample.shape[0]:
        scores = kernels.prefilter_scores_each(flat, sample, np.ones(sample.shape[0], np.uint8))
    else:                                                        # no live entry sampled: chance
        scores = np.full((flat.shape[0], 1), 384, np.uint16)
    mean, std = scores.mean(axis=1), np.maximum(scores.std(axis=1), 1.0)
    one = 1 << kernels.NORM_SHIFT
    norms = np.stack([np.round(NORM_STEP * one / std), np.round((NORM_CENTRE - NORM_STEP * mean / std) * one)], axis=1)
    return norms.astype(np.int32).reshape(*psig.shape[:2], 2)


def vein_stage(probe: PalmTemplate, snap: Sequence, starts: np.ndarray, chosen: np.ndarray,
               stop: threading.Event | None = None, map_: Mapper = map) -> np.ndarray:
    """Block-wise vein distance (kernels.match_elastic16: 4x4-cell blocks, each within
    ±VEIN_STAGE_RADIUS cells of shift 0) of each chosen entry; 0.5 without vein. One task per
    segment through ``map_``."""
    hd = np.full(chosen.size, 0.5)
    spec = VEIN_MATCH
    planes = probe.vein.planes()

    def stage(part: tuple[int, np.ndarray]) -> None:
        check(stop)
        s, pos = part
        seg = snap[s][0]
        rows = (chosen[pos] - starts[s]).astype(np.int64)
        h = kernels.match_elastic16(planes, seg.records, rows, offset=spec.offset,
                                    radius=VEIN_STAGE_RADIUS, n_ref=spec.n_ref)
        hd[pos] = np.where(seg.flags[rows] & HAS_VEIN, h, 0.5)
    list(map_(stage, by_segment(chosen, starts)))
    return hd
