"""The 1:N gallery: packed templates in RAM, coarse-to-fine search, add/remove during searches.

Layout per enrolled palm (see docs/engine.md): a 64-byte pre-filter signature (two 8x8 coarse
codes of the vein code, features.signature), a 768-byte record (surface 4x32 uint32 rows,
vein 4x16 uint32 rows), a live flag, a modality flag and a person/palm key: ~840 bytes.

Search = (1) the pre-filter scan of every signature (native AVX2 popcount) against the
probe's signature at a few grid offsets (features.PROBE_OFFSETS, minimum kept), keeping
``stage1_size`` entries, (2) the block-wise match of the full vein code (4x4-cell blocks each
free to move ±VEIN_STAGE_RADIUS cells) on those, keeping the ``shortlist_size`` closest, (3) on
the shortlist the rigid shift-tolerant match of both modalities and the elastic vein match
(the final vein score), ranked by their fused score, (4) the elastic surface match of the best
RERANK entries, whose fused scores are then final (= matcher.match); best per person, top k.
A probe without a vein code skips (1)-(2): every live entry gets (3)-(4).

Concurrency: writers (add/remove) are serialised by a lock. Entries live in segments of
packed arrays; a search snapshots (segment, filled count, live flags) for every segment under
that lock (microseconds) and then runs without it, and a writer only ever (a) writes rows beyond every published count and
then publishes the new count, (b) replaces a segment's live-flag array by a modified copy
(remove), or (c) replaces a whole segment by a grown or compacted copy. A search therefore
sees one consistent state, and never a half-written entry.
"""
from __future__ import annotations

import threading

import attrs
import numpy as np

from palmnode.biometrics import features, kernels
from palmnode.biometrics.matcher import (FUSION_WEIGHTS, RECORD_WORDS, SURFACE_MATCH, VEIN_MATCH, Score,
                                         elastic_distances, rigid_distances, similarity)
from palmnode.biometrics.types import PalmTemplate

#: shortlist after the pre-filter: SHORTLIST_FRACTION of the gallery, at least MIN_SHORTLIST and
#: at most SHORTLIST entries (a fixed impostor quantile, so the recall loss does not depend on the
#: gallery size up to SHORTLIST / SHORTLIST_FRACTION = 1M); recall loss measured in docs/engine.md
SHORTLIST = 2000
SHORTLIST_FRACTION = 0.002
MIN_SHORTLIST = 100
#: two-stage pre-filter: the signature scan keeps STAGE1_FRACTION of the gallery (at least
#: MIN_STAGE1, at most STAGE1 entries), then the block-wise match of the full vein code (4x4-cell
#: blocks, each within ±VEIN_STAGE_RADIUS cells: kernels.match_elastic16) ranks those and keeps
#: shortlist_size(N) for the full match
STAGE1_FRACTION = 0.05
MIN_STAGE1 = 1000
STAGE1 = 50_000
VEIN_STAGE_RADIUS = 2
#: the best RERANK shortlist entries by rigid surface + elastic vein score (at least 8 per
#: requested candidate) get the elastic surface match, which completes the final scores
RERANK = 64
#: shortlisted records gathered into one array per kernel call at most this many at a time
_GATHER = 8192
PALMS = ("left", "right", "unknown")
_HAS_SURFACE, _HAS_VEIN = 1, 2


@attrs.frozen
class Candidate:
    person_id: str
    palm: str
    score: Score


class _Segment:
    """Packed arrays for up to ``capacity`` entries; ``count`` rows are published."""

    __slots__ = ("capacity", "count", "sigs", "records", "live", "flags", "person", "palm")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.count = 0
        self.sigs = np.zeros((capacity, kernels.SIGNATURE_WORDS), np.uint64)
        self.records = np.zeros((capacity, RECORD_WORDS), np.uint32)
        self.live = np.zeros(capacity, np.uint8)
        self.flags = np.zeros(capacity, np.uint8)
        self.person = np.zeros(capacity, np.int32)
        self.palm = np.zeros(capacity, np.uint8)

    def copy(self, capacity: int, rows: np.ndarray | None = None) -> _Segment:
        """A new segment holding these rows (all published ones by default)."""
        rows = np.arange(self.count) if rows is None else rows
        new = _Segment(capacity)
        n = rows.size
        for name in ("sigs", "records", "live", "flags", "person", "palm"):
            getattr(new, name)[:n] = getattr(self, name)[rows]
        new.count = n
        return new

    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in ("sigs", "records", "live", "flags", "person", "palm"))


def _record(template: PalmTemplate) -> tuple[np.ndarray, int]:
    rec = np.zeros(RECORD_WORDS, np.uint32)
    flags = 0
    if template.surface is not None:
        rec[SURFACE_MATCH.offset:SURFACE_MATCH.offset + 4 * SURFACE_MATCH.rows] = template.surface.planes().ravel()
        flags |= _HAS_SURFACE
    if template.vein is not None:
        rec[VEIN_MATCH.offset:VEIN_MATCH.offset + 4 * VEIN_MATCH.rows] = template.vein.planes().ravel()
        flags |= _HAS_VEIN
    return rec, flags


def _fused(surface: np.ndarray, vein: np.ndarray) -> np.ndarray:
    """matcher.fuse of similarity arrays (the same float operations, so equal values), -inf where
    neither modality is present: without fuse's NaN cleaning, which costs more than the sum."""
    ws, wv = FUSION_WEIGHTS["surface"], FUSION_WEIGHTS["vein"]
    has_s, has_v = ~np.isnan(surface), ~np.isnan(vein)
    num = np.where(has_s, ws * surface, 0.0) + np.where(has_v, wv * vein, 0.0)
    den = np.where(has_s, ws, 0.0) + np.where(has_v, wv, 0.0)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), -np.inf)


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest (value, position), ascending position (a partition, not a sort)."""
    if k >= values.size:
        return np.arange(values.size)
    t = np.partition(values, k - 1)[k - 1]
    below = values < t
    ties = np.flatnonzero(values == t)[:k - int(np.count_nonzero(below))]
    below[ties] = True
    return np.flatnonzero(below)


def _gather(segs, which: np.ndarray, rows: np.ndarray, person: np.ndarray, palm: np.ndarray,
            flags: np.ndarray) -> np.ndarray:
    """Records (len(rows), RECORD_WORDS) of the entries (segment which[i], row rows[i]), which
    ascending; their person keys, palms and modality flags into the given arrays."""
    recs = np.empty((rows.size, RECORD_WORDS), np.uint32)
    cuts = np.flatnonzero(np.diff(which)) + 1
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), rows.size]):
        seg, r = segs[which[a]], rows[a:b]
        recs[a:b] = seg.records[r]
        person[a:b] = seg.person[r]
        palm[a:b] = seg.palm[r]
        flags[a:b] = seg.flags[r]
    return recs


def _by_segment(chosen: np.ndarray, starts: np.ndarray):
    """(segment, positions in ``chosen``) for ascending global indices ``chosen``: slices, no sort."""
    bounds = np.searchsorted(chosen, starts)
    for s in range(len(starts) - 1):
        if bounds[s + 1] > bounds[s]:
            yield s, np.arange(bounds[s], bounds[s + 1])


class Gallery:
    """Enrolled palms, searchable 1:N while palms are added and removed.

    ``add``/``remove`` may run in any thread while ``search`` runs in others (each search
    sees a consistent snapshot, taken under the writers' lock). Native calls release the GIL.
    """

    def __init__(self, *, shortlist: int = SHORTLIST, probe_offsets=features.PROBE_OFFSETS,
                 segment_size: int = 1 << 16, first_capacity: int = 256,
                 shortlist_fraction: float = SHORTLIST_FRACTION, min_shortlist: int = MIN_SHORTLIST):
        if shortlist < 1 or segment_size < 1 or first_capacity < 1 or not probe_offsets or min_shortlist < 1:
            raise ValueError("shortlist, min_shortlist, segment_size, first_capacity and probe_offsets must be positive/non-empty")
        if not 0.0 < shortlist_fraction <= 1.0:
            raise ValueError(f"shortlist_fraction must be in (0, 1], got {shortlist_fraction!r}")
        self.shortlist = shortlist
        self.shortlist_fraction = shortlist_fraction
        self.min_shortlist = min_shortlist
        self.probe_offsets = tuple(probe_offsets)
        self._segment_size = segment_size
        self._first = min(first_capacity, segment_size)
        self._segments: tuple[_Segment, ...] = ()
        self._lock = threading.Lock()
        self._person_ids: list[str] = []
        self._person_key: dict[str, int] = {}
        self._entries: dict[int, list[tuple[int, int]]] = {}  # person key -> (segment, row)
        self._live = 0

    # ---------------------------------------------------------------- writers
    def add(self, person_id: str, palm: str, template: PalmTemplate) -> None:
        """Enrol one template of ``person_id``'s ``palm`` ("left", "right" or "unknown")."""
        if not isinstance(person_id, str) or not person_id:
            raise ValueError("person_id must be a non-empty string")
        if palm not in PALMS:
            raise ValueError(f"palm must be one of {PALMS}, got {palm!r}")
        if not isinstance(template, PalmTemplate) or (template.surface is None and template.vein is None):
            raise ValueError("template must be a PalmTemplate with at least one modality")
        rec, flags = _record(template)
        sig = features.signature(template)
        with self._lock:
            key = self._person_key.get(person_id)
            if key is None:
                key = len(self._person_ids)
                self._person_ids.append(person_id)
                self._person_key[person_id] = key
            segments = list(self._segments)
            if not segments or segments[-1].count == segments[-1].capacity:
                last = segments[-1] if segments else None
                if last is not None and last.capacity < self._segment_size:
                    segments[-1] = last.copy(min(2 * last.capacity, self._segment_size))
                else:
                    segments.append(_Segment(self._first))
                self._segments = tuple(segments)      # publish the grown/new segment
            seg = segments[-1]
            row = seg.count
            seg.sigs[row] = sig
            seg.records[row] = rec
            seg.flags[row] = flags
            seg.person[row] = key
            seg.palm[row] = PALMS.index(palm)
            seg.live[row] = 1
            seg.count = row + 1                       # publish the entry, fully written
            self._entries.setdefault(key, []).append((len(segments) - 1, row))
            self._live += 1

    def remove(self, person_id: str) -> int:
        """Forget every template of ``person_id`` — codes zeroed, id dropped — at once; returns
        how many were removed."""
        with self._lock:
            key = self._person_key.get(person_id)
            entries = self._entries.pop(key, []) if key is not None else []
            if not entries:
                return 0
            segments = list(self._segments)
            by_segment: dict[int, list[int]] = {}
            for s, r in entries:
                by_segment.setdefault(s, []).append(r)
            self._person_key.pop(person_id)
            self._person_ids[key] = ""               # nothing of them stays in memory: not even the id
            for s, rows in by_segment.items():
                seg = segments[s]
                seg.records[rows] = 0                 # nor their codes (a search running on a snapshot
                seg.sigs[rows] = 0                    # that still holds them finds no valid bits)
                live = seg.live.copy()
                live[rows] = 0
                if seg.count == seg.capacity and live[:seg.count].sum() * 2 < seg.count:
                    segments[s] = self._compact(s, seg, live)
                else:
                    seg.live = live                   # copy-on-write: snapshots keep the old flags
            self._segments = tuple(segments)
            self._live -= len(entries)
            return len(entries)

    def _compact(self, s: int, seg: _Segment, live: np.ndarray) -> _Segment:
        keep = np.flatnonzero(live[:seg.count])
        new = seg.copy(seg.capacity, keep)
        for row_new, row_old in enumerate(keep):
            entries = self._entries[int(seg.person[row_old])]
            entries[entries.index((s, int(row_old)))] = (s, row_new)
        return new

    # ---------------------------------------------------------------- readers
    def __len__(self) -> int:
        return self._live

    def memory_bytes(self) -> int:
        """Bytes held by the packed arrays (the per-person id table is extra)."""
        return sum(seg.nbytes() for seg in self._segments)

    def shortlist_size(self, total: int) -> int:
        """Entries fully matched after the pre-filter in a gallery of ``total`` live entries:
        ``ceil(shortlist_fraction * total)`` clamped to [min(min_shortlist, shortlist), shortlist]."""
        return int(min(self.shortlist, max(min(self.min_shortlist, self.shortlist),
                                           -(-int(total * self.shortlist_fraction * 1e6) // 1_000_000))))

    def stage1_size(self, total: int) -> int:
        """Entries the signature scan keeps for the vein stage in a gallery of ``total`` live entries."""
        return int(min(STAGE1, max(MIN_STAGE1, -(-int(total * STAGE1_FRACTION * 1e6) // 1_000_000))))

    def _snapshot(self) -> list[tuple[_Segment, int, np.ndarray]]:
        with self._lock:  # writers hold it only to write one row or swap arrays
            return [(seg, seg.count, seg.live) for seg in self._segments]

    def _shortlist(self, probe: PalmTemplate, snap, starts: np.ndarray) -> np.ndarray:
        total = int(starts[-1])
        size = self.shortlist_size(total)
        if total <= size or probe.vein is None:   # the signature is vein-only: no vein, no ranking
            return np.concatenate([np.flatnonzero(live[:n]) + a for (_, n, live), a in zip(snap, starts[:-1])])
        psig = features.signature_variants(probe, self.probe_offsets)
        scores = np.empty(total, np.uint16)
        for (seg, n, live), a in zip(snap, starts[:-1]):
            kernels.prefilter_scores(psig, seg.sigs[:n], live[:n], out=scores[a:a + n])
        k1 = self.stage1_size(total)
        if k1 <= size:
            return kernels.select_smallest(scores, size)
        first = kernels.select_smallest(scores, k1)
        hd = self._vein_stage(probe, snap, starts, first)
        return first[_smallest(hd, size)]

    @staticmethod
    def _vein_stage(probe: PalmTemplate, snap, starts: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """Block-wise vein distance (kernels.match_elastic16: 4x4-cell blocks, each within
        ±VEIN_STAGE_RADIUS cells of shift 0) of each chosen entry; 0.5 without vein."""
        hd = np.full(chosen.size, 0.5)
        spec = VEIN_MATCH
        for s, pos in _by_segment(chosen, starts):
            seg = snap[s][0]
            rows = (chosen[pos] - starts[s]).astype(np.int64)
            h = kernels.match_elastic16(probe.vein.planes(), seg.records, rows, offset=spec.offset,
                                        radius=VEIN_STAGE_RADIUS, n_ref=spec.n_ref)
            hd[pos] = np.where(seg.flags[rows] & _HAS_VEIN, h, 0.5)
        return hd

    def search(self, probe: PalmTemplate, k: int = 5) -> list[Candidate]:
        """The ``k`` best-scoring people (best palm template each), highest fused score first."""
        if not isinstance(probe, PalmTemplate) or (probe.surface is None and probe.vein is None):
            raise ValueError("probe must be a PalmTemplate with at least one modality")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        snap = self._snapshot()
        counts = np.array([n for _, n, _ in snap], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        total = int(starts[-1])
        if total == 0:
            return []
        # (1)+(2) pre-filter: signature scan, vein stage, shortlist (every live entry when small)
        chosen = self._shortlist(probe, snap, starts)
        if chosen.size == 0:
            return []
        # (3) rigid shifted match of the shortlist, segment by segment; (4) elastic match of the
        # best entries, whose scores are then the matcher's (matcher.match) exactly
        n = chosen.size
        which = np.searchsorted(starts, chosen, side="right") - 1
        rows_all = (chosen - starts[which]).astype(np.int64)
        segs = [seg for seg, _, _ in snap]
        surf = np.full(n, np.nan)
        vein = np.full(n, np.nan)
        shifts = {"surface": np.zeros(n, np.int32), "vein": np.zeros(n, np.int32)}
        person = np.empty(n, np.int32)
        palm = np.empty(n, np.uint8)
        flags = np.empty(n, np.uint8)
        specs = (("surface", probe.surface, SURFACE_MATCH, surf, _HAS_SURFACE),
                 ("vein", probe.vein, VEIN_MATCH, vein, _HAS_VEIN))
        for a in range(0, n, _GATHER):       # one kernel call per chunk, not per segment
            part = slice(a, min(n, a + _GATHER))
            recs = _gather(segs, which[part], rows_all[part], person[part], palm[part], flags[part])
            idx = np.arange(recs.shape[0], dtype=np.int64)
            for name, code, spec, out, bit in specs:
                if code is None:
                    continue
                hd, shifts[name][part] = rigid_distances(code, recs, idx, spec)
                if name == "vein" and spec.radius > 0 and idx.size:   # cheap: final vein scores now
                    hd = elastic_distances(code, recs, idx, shifts[name][part], spec)
                out[part] = np.where(flags[part] & bit, similarity(hd), np.nan)
        # rank by rigid surface + elastic vein; the best RERANK get the elastic surface match
        fused = _fused(surf, vein)
        keep = np.lexsort((chosen, -fused))[:max(RERANK, 8 * k)]
        keep = keep[np.isfinite(fused[keep])]
        spec = SURFACE_MATCH
        if probe.surface is not None and spec.radius > 0 and keep.size:
            if n <= _GATHER:                 # the one chunk's records are still at hand
                hd = elastic_distances(probe.surface, recs, keep.astype(np.int64), shifts["surface"][keep], spec)
            else:
                keep = np.sort(keep)
                recs = _gather(segs, which[keep], rows_all[keep], *(np.empty(keep.size, t) for t in (np.int32, np.uint8, np.uint8)))
                hd = elastic_distances(probe.surface, recs, np.arange(keep.size, dtype=np.int64),
                                       shifts["surface"][keep], spec)
            surf[keep] = np.where(flags[keep] & _HAS_SURFACE, similarity(hd), np.nan)
        fused = _fused(surf[keep], vein[keep])
        surf, vein, person, palm, chosen = surf[keep], vein[keep], person[keep], palm[keep], chosen[keep]
        order = np.lexsort((chosen, -fused))           # best first, ties by enrolment order
        out: list[Candidate] = []
        seen: set[int] = set()
        for i in order:
            p = int(person[i])
            person_id = self._person_ids[p]
            if p in seen or not person_id:            # "": removed while this search ran
                continue
            seen.add(p)
            out.append(Candidate(person_id=person_id, palm=PALMS[palm[i]],
                                 score=Score(surface=float(surf[i]), vein=float(vein[i]), fused=float(fused[i]))))
            if len(out) == k:
                break
        return out
