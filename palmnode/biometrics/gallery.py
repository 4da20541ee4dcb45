"""The 1:N gallery: packed templates in RAM, coarse-to-fine search, add/remove during searches.

Layout per enrolled palm (see docs/engine.md): a pre-filter index row (prefilter.index_rows:
today the 64-byte vein signature), a 768-byte record (surface 4x32 uint32 rows, vein 4x16
uint32 rows), a live flag, a modality flag and a person/palm key: ~840 bytes.

Search = (1)-(2) the pre-filter (prefilter.Prefilter.select: signature scan, vein stage) keeps
a shortlist, (3) on those the rigid shift-tolerant match of both modalities and the elastic vein
match (the final vein score), ranked by their fused score, (4) the final stage (Gallery._final):
the elastic surface match of the best RERANK entries (with a probe's variants: every variant's
match, matcher.match_probe_records), whose fused scores are then final (= matcher.match /
match_probe); best per person, top k. (1)-(4) run first on the fast pass's small shortlist;
when its best final score stays below ``Prefilter.exit_score``, the full pass's shortlist joins
it and (3)-(4) run again on both, the full pass's own best also reaching (4). A probe
without a vein code skips (1)-(2): every live entry gets (3)-(4).

Concurrency: writers (add/remove) are serialised by a lock. Entries live in segments of
packed arrays; a search snapshots (segment, filled count, live flags) for every segment under
that lock (microseconds) and then runs without it, and a writer only ever (a) writes rows beyond every published count and
then publishes the new count, (b) replaces a segment's live-flag array by a modified copy
(remove), or (c) replaces a whole segment by a grown or compacted copy, or drops one whose
entries are all removed (a new tuple of segments). A search therefore
sees one consistent state, and never a half-written entry.
"""
from __future__ import annotations

import collections
import math
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import attrs
import numpy as np

from palmnode.biometrics import prefilter as pf
from palmnode.biometrics.matcher import (FUSION_WEIGHTS, HAS_SURFACE, HAS_VEIN, RECORD_WORDS, SURFACE_MATCH,
                                         VEIN_MATCH, Score, elastic_distances, match_probe_records, pack_records,
                                         rigid_distances, similarity)
from palmnode.biometrics.person_table import PersonTable
from palmnode.biometrics.types import PalmTemplate
from palmnode.biometrics.variants import ProbeTemplates

#: the best RERANK shortlist entries by rigid surface + elastic vein score (at least 8 per
#: requested candidate) get the elastic surface match, which completes the final scores
RERANK = 64
#: the full pre-filter pass's best FULL_RERANK_FRACTION of its shortlist (at least RERANK) by its
#: own vein stage (which also ranks by the probe's re-cuts) reach the final stage too: the
#: shortlist ranking sees the probe as found only, so a mate only a re-cut matches can rank far
#: down in it (one accepted mate at 1M ranked 1,795th there and 356th of 20,000 by the vein stage;
#: docs/engine.md, "1:N search" step 5). A fraction, as ranks grow with the gallery
FULL_RERANK_FRACTION = 0.025
#: shortlisted records gathered into one array per kernel call at most this many at a time
_GATHER = 8192
PALMS = ("left", "right", "unknown")


@attrs.frozen
class Candidate:
    person_id: str
    palm: str
    score: Score


@attrs.frozen
class _Ranked:
    """The entries whose scores are final (global ``index``), with their scores and keys."""

    surface: np.ndarray
    vein: np.ndarray
    fused: np.ndarray
    person: np.ndarray
    palm: np.ndarray
    index: np.ndarray


class _Segment:
    """Packed arrays for up to ``capacity`` entries; ``count`` rows are published."""

    __slots__ = ("capacity", "count", "index", "records", "live", "flags", "person", "palm")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.count = 0
        self.index = np.zeros((capacity, pf.INDEX_WORDS), np.uint64)
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
        for name in ("index", "records", "live", "flags", "person", "palm"):
            getattr(new, name)[:n] = getattr(self, name)[rows]
        new.count = n
        return new

    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in ("index", "records", "live", "flags", "person", "palm"))


def _fused(surface: np.ndarray, vein: np.ndarray) -> np.ndarray:
    """matcher.fuse of similarity arrays (the same float operations, so equal values), -inf where
    neither modality is present: without fuse's NaN cleaning, which costs more than the sum."""
    ws, wv = FUSION_WEIGHTS["surface"], FUSION_WEIGHTS["vein"]
    has_s, has_v = ~np.isnan(surface), ~np.isnan(vein)
    num = np.where(has_s, ws * surface, 0.0) + np.where(has_v, wv * vein, 0.0)
    den = np.where(has_s, ws, 0.0) + np.where(has_v, wv, 0.0)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), -np.inf)


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


#: the open segment grows by an eighth of its rows, or by what is being added if more: at most an
#: eighth of its rows idle, so a palm costs at most 9/8 of its 839 B row (under the 1 KiB budget)
GROWTH = 8


class Gallery:
    """Enrolled palms, searchable 1:N while palms are added and removed.

    ``add``/``remove`` may run in any thread while ``search`` runs in others (each search
    sees a consistent snapshot, taken under the writers' lock). Native calls release the GIL.
    """

    def __init__(self, *, segment_size: int = 1 << 16, first_capacity: int = 256, threads: int = 1, **prefilter):
        """``threads``: how many threads one search's scan, vein stage and shortlist ranking are
        split over (segments and chunks; 1: the caller's thread alone). ``prefilter``:
        :class:`prefilter.Prefilter` fields (shortlist, shortlist_fraction, min_shortlist,
        probe_offsets, fast_offsets, exit_score)."""
        if segment_size < 1 or first_capacity < 1:
            raise ValueError("segment_size and first_capacity must be positive")
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.prefilter = pf.Prefilter(**prefilter)
        self.threads = threads
        self._map: pf.Mapper = map if threads == 1 else ThreadPoolExecutor(threads, "gallery-search").map
        self._segment_size = segment_size
        self._first = min(first_capacity, segment_size)
        self._segments: tuple[_Segment, ...] = ()
        self._lock = threading.Lock()
        self._people = PersonTable()        # person id <-> key
        self._live = 0
        # A removed person's key is given to a newcomer only once no search that may still hold
        # their entries runs (one that began before the removal would name the newcomer for
        # them), so the id table follows the people held at once, not every person ever added.
        self._free_keys: list[int] = []
        self._retired: collections.deque[tuple[int, int]] = collections.deque()  # (searches begun then, key)
        self._searches_begun = 0
        self._searching: set[int] = set()  # the ordinal of each search running

    # ---------------------------------------------------------------- writers
    def add(self, person_id: str, palm: str, template: PalmTemplate) -> None:
        """Enrol one template of ``person_id``'s ``palm`` ("left", "right" or "unknown")."""
        self.add_many([(person_id, palm, template)])

    def add_many(self, entries: Iterable[tuple[str, str, PalmTemplate]]) -> int:
        """:meth:`add` of many (person_id, palm, template) entries at once (the gallery filled
        from the vault at start): records and signatures computed together, rows written a
        segment's worth at a time. Every entry is checked before any is added; returns how many."""
        entries = list(entries)
        for person_id, palm, template in entries:
            if not isinstance(person_id, str) or not person_id:
                raise ValueError("person_id must be a non-empty string")
            if palm not in PALMS:
                raise ValueError(f"palm must be one of {PALMS}, got {palm!r}")
            if not isinstance(template, PalmTemplate) or (template.surface is None and template.vein is None):
                raise ValueError("template must be a PalmTemplate with at least one modality")
        templates = [t for _, _, t in entries]
        records, flags = pack_records(templates)
        index = pf.index_rows(templates)
        palms = np.array([PALMS.index(palm) for _, palm, _ in entries], np.uint8)
        with self._lock:
            keys = np.array([self._key(person_id) for person_id, _, _ in entries], np.int32)
            segments = list(self._segments)
            done = 0
            while done < len(entries):
                if not segments or segments[-1].count == segments[-1].capacity:
                    last = segments[-1] if segments else None
                    if last is not None and last.capacity < self._segment_size:
                        grown = last.capacity + max(last.capacity // GROWTH, len(entries) - done)
                        segments[-1] = last.copy(min(grown, self._segment_size))
                    else:
                        segments.append(_Segment(self._first))
                    self._segments = tuple(segments)      # publish the grown/new segment
                seg, first = segments[-1], segments[-1].count
                take = min(len(entries) - done, seg.capacity - first)
                rows, part = slice(first, first + take), slice(done, done + take)
                seg.index[rows] = index[part]
                seg.records[rows] = records[part]
                seg.flags[rows] = flags[part]
                seg.person[rows] = keys[part]
                seg.palm[rows] = palms[part]
                seg.live[rows] = 1
                seg.count = first + take                  # publish the entries, fully written
                done += take
            self._live += len(entries)
        return len(entries)

    def _key(self, person_id: str) -> int:
        """The person's key; for a new person a removed person's key that no running search can
        still hold, else a new one (under the writers' lock)."""
        key = self._people.key_of(person_id)
        if key is None:
            oldest = min(self._searching, default=self._searches_begun)
            while self._retired and self._retired[0][0] <= oldest:  # every search holding it has ended
                self._free_keys.append(self._retired.popleft()[1])
            key = self._free_keys.pop() if self._free_keys else self._people.keys
            self._people.set(key, person_id)
        return key

    def remove(self, person_id: str) -> int:
        """Forget every template of ``person_id`` — codes zeroed, id dropped — at once; returns
        how many were removed."""
        with self._lock:
            key = self._people.drop(person_id)   # nothing of them stays in memory: not even the id
            if key is None:
                return 0
            segments = list(self._segments)
            # their live rows, found by key (~0.4 ms at 1M palms): a table of every person's rows
            # cost ~300 B a palm in Python objects, more than the removals it sped up were worth
            by_segment = {}
            for s, seg in enumerate(segments):
                rows = np.flatnonzero((seg.person[:seg.count] == key) & (seg.live[:seg.count] != 0))
                if rows.size:
                    by_segment[s] = rows
            removed = sum(rows.size for rows in by_segment.values())
            self._retired.append((self._searches_begun, key))  # free once the searches begun so far end
            last = len(segments) - 1
            for s, rows in by_segment.items():
                seg = segments[s]
                seg.records[rows] = 0                 # nor their codes (a search running on a snapshot
                seg.index[rows] = 0                   # that still holds them finds no valid bits)
                live = seg.live.copy()
                live[rows] = 0
                if live[:seg.count].sum() * 2 < seg.count:   # mostly removed rows: compact, so that
                    segments[s] = self._compact(seg, live, open_=s == last)   # churn stays bounded
                else:
                    seg.live = live                   # copy-on-write: snapshots keep the old flags
            empty = [s for s in by_segment if s != last and segments[s].count == 0]
            if empty:                                 # a closed segment with no entry left: dropped
                segments = [seg for s, seg in enumerate(segments) if s not in empty]
            self._segments = tuple(segments)
            self._live -= removed
            return removed

    @staticmethod
    def _compact(seg: _Segment, live: np.ndarray, open_: bool) -> _Segment:
        """A copy of ``seg`` holding its live rows only: the open (last) segment keeps its
        capacity for the entries to come, a closed one shrinks to its live rows (never added to)."""
        keep = np.flatnonzero(live[:seg.count])
        return seg.copy(seg.capacity if open_ else max(1, keep.size), keep)

    # ---------------------------------------------------------------- readers
    def __len__(self) -> int:
        return self._live

    def __contains__(self, person_id: object) -> bool:
        """Whether ``person_id`` has a palm in the gallery now (not removed)."""
        with self._lock:
            return person_id in self._people

    def memory_bytes(self) -> int:
        """Bytes held: the packed arrays and the table of person ids."""
        return sum(seg.nbytes() for seg in self._segments) + self._people.nbytes()

    def _snapshot(self) -> list[tuple[_Segment, int, np.ndarray]]:
        with self._lock:  # writers hold it only to write one row or swap arrays
            return [(seg, seg.count, seg.live) for seg in self._segments]

    def search(self, probe: PalmTemplate | ProbeTemplates, k: int = 5, *,
               stop: threading.Event | None = None) -> list[Candidate]:
        """The ``k`` best-scoring people (best palm template each), highest fused score first.

        A probe with variants (:class:`~palmnode.biometrics.variants.ProbeTemplates`, the gate's
        probes) is ranked by its base in the fast pass and the shortlist ranking, by the base and
        its variants in the full pre-filter pass, and the final stage's scores are its best
        variant's: ``matcher.match_probe`` exactly. ``stop`` set (by the caller, from another
        thread) makes the search raise ``prefilter.SearchCancelled`` at its next C call."""
        return self.search_with_shortlist(probe, k, stop=stop)[0]

    def search_with_shortlist(self, probe: PalmTemplate | ProbeTemplates, k: int = 5, *,
                              stop: threading.Event | None = None) -> tuple[list[Candidate], np.ndarray, bool]:
        """:meth:`search`, plus the ascending global indices of the entries that got the full
        match and whether the fast pass sufficed (for the bench's recall)."""
        variants = probe if isinstance(probe, ProbeTemplates) and len(probe) > 1 else None
        if isinstance(probe, ProbeTemplates):
            probe = probe.base
        if not isinstance(probe, PalmTemplate) or (probe.surface is None and probe.vein is None):
            raise ValueError("probe must be a PalmTemplate (or ProbeTemplates) with at least one modality")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        with self._lock:  # registered before its snapshot: no key its entries name is reused meanwhile
            ordinal = self._searches_begun
            self._searches_begun += 1
            self._searching.add(ordinal)
        try:
            return self._search(probe, variants, k, stop)
        finally:
            with self._lock:
                self._searching.discard(ordinal)

    def _search(self, probe: PalmTemplate, variants: ProbeTemplates | None, k: int,
                stop: threading.Event | None) -> tuple[list[Candidate], np.ndarray, bool]:
        snap = self._snapshot()
        counts = np.array([n for _, n, _ in snap], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        total = int(starts[-1])
        if total == 0:
            return [], np.empty(0, np.int64), False
        pre = self.prefilter
        # (1)+(2) pre-filter: the fast pass first; it is enough when its best final score
        # reaches exit_score, else the full pre-filter's shortlist joins it
        chosen = np.empty(0, np.int64)
        if pre.has_fast_pass(probe, total):
            chosen = pre.select(probe, snap, starts, fast=True, stop=stop, map_=self._map)
            ranked = self._rank(probe, snap, starts, chosen, k, variants, stop=stop)
            if ranked.fused.size and ranked.fused.max() >= pre.exit_score:
                return self._candidates(ranked, k), chosen, True
        full = pre.select(probe, snap, starts, variants=variants.templates[1:] if variants is not None else (),
                          ranked=True, stop=stop, map_=self._map)
        chosen = np.union1d(chosen, full)
        best = max(RERANK, math.ceil(FULL_RERANK_FRACTION * full.size))
        ranked = self._rank(probe, snap, starts, chosen, k, variants, also=full[:best], stop=stop)
        return self._candidates(ranked, k), chosen, False

    def _rank(self, probe: PalmTemplate, snap, starts: np.ndarray, chosen: np.ndarray, k: int,
              variants: ProbeTemplates | None = None, also: np.ndarray | None = None,
              stop: threading.Event | None = None) -> _Ranked:
        """(3) rigid shifted match of the chosen entries and the elastic vein match (final vein
        scores), ranked by rigid surface + elastic vein; (4) the final stage on the best
        max(RERANK, 8k) of them (:meth:`_final`) and on the chosen entries ``also`` names (the
        full pre-filter pass's best: its vein stage also ranks by the probe's variants, which
        this ranking does not)."""
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
        specs = (("surface", probe.surface, SURFACE_MATCH, surf, HAS_SURFACE),
                 ("vein", probe.vein, VEIN_MATCH, vein, HAS_VEIN))

        def chunk(part: slice) -> np.ndarray:    # one kernel call per chunk, not per segment
            pf.check(stop)
            recs = _gather(segs, which[part], rows_all[part], person[part], palm[part], flags[part])
            idx = np.arange(recs.shape[0], dtype=np.int64)
            for name, code, spec, out, bit in specs:
                if code is None:
                    continue
                hd, shifts[name][part] = rigid_distances(code, recs, idx, spec)
                if name == "vein" and spec.radius > 0 and idx.size:   # cheap: final vein scores now
                    hd = elastic_distances(code, recs, idx, shifts[name][part], spec)
                out[part] = np.where(flags[part] & bit, similarity(hd), np.nan)
            return recs
        # at most _GATHER entries a chunk, as many chunks as make every thread's share equal
        chunks = self.threads * max(1, math.ceil(n / (self.threads * _GATHER)))
        size = max(1, math.ceil(n / chunks))
        parts = [slice(a, min(n, a + size)) for a in range(0, n, size)]
        done = list(self._map(chunk, parts))
        recs = done[-1] if done else np.empty((0, RECORD_WORDS), np.uint32)
        fused = _fused(surf, vein)
        keep = np.lexsort((chosen, -fused))[:max(RERANK, 8 * k)]
        if also is not None:
            keep = np.union1d(keep, np.searchsorted(chosen, also))
        keep = keep[np.isfinite(fused[keep])]
        if len(parts) > 1:                   # the last chunk's records are not all of them
            keep = np.sort(keep)
            recs = _gather(segs, which[keep], rows_all[keep], *(np.empty(keep.size, t) for t in (np.int32, np.uint8, np.uint8)))
            at = np.arange(keep.size, dtype=np.int64)
        else:
            at = keep.astype(np.int64)
        pf.check(stop)
        if variants is not None:             # the final scores: the best variant's (matcher.match_probe)
            rflags = np.zeros(recs.shape[0], np.uint8)
            rflags[at] = flags[keep]
            s, v, _ = match_probe_records(variants, recs, at, rflags)
            return _Ranked(s, v, _fused(s, v), person[keep], palm[keep], chosen[keep])
        return self._final(probe, recs, at, shifts["surface"][keep], surf[keep], vein[keep], person[keep],
                           palm[keep], flags[keep], chosen[keep])

    @staticmethod
    def _final(probe: PalmTemplate, recs: np.ndarray, at: np.ndarray, surface_shift: np.ndarray, surf: np.ndarray,
               vein: np.ndarray, person: np.ndarray, palm: np.ndarray, flags: np.ndarray, index: np.ndarray) -> _Ranked:
        """(4) the final stage: the elastic surface match of the kept entries (records
        ``recs[at]``, rigid best shift ``surface_shift``) completes their fused scores, which are
        then matcher.match's exactly."""
        spec = SURFACE_MATCH
        surf = surf.copy()
        if probe.surface is not None and spec.radius > 0 and at.size:
            hd = elastic_distances(probe.surface, recs, at, surface_shift, spec)
            surf = np.where(flags & HAS_SURFACE, similarity(hd), np.nan)
        return _Ranked(surf, vein, _fused(surf, vein), person, palm, index)

    def _candidates(self, r: _Ranked, k: int) -> list[Candidate]:
        """Best entry per person, top k, highest fused score first (ties by enrolment order)."""
        order = np.lexsort((r.index, -r.fused))
        out: list[Candidate] = []
        seen: set[int] = set()
        for i in order:
            p = int(r.person[i])
            with self._lock:                          # the table may be rewritten by a writer
                person_id = self._people.id_of(p)
            if p in seen or not person_id:            # "": removed while this search ran
                continue
            seen.add(p)
            out.append(Candidate(person_id=person_id, palm=PALMS[r.palm[i]],
                                 score=Score(surface=float(r.surface[i]), vein=float(r.vein[i]), fused=float(r.fused[i]))))
            if len(out) == k:
                break
        return out
