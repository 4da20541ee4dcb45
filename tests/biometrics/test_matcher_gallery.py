"""Matcher, calibration and gallery: fused scores, FMR thresholds, 1:N search with the
pre-filter, add/remove while searches run in worker threads."""
import math
import threading

import numpy as np
import pytest

import fake_palms  # tests/biometrics is on sys.path (pytest rootdir import mode)
from palmnode.biometrics import features, kernels, matcher
from palmnode.biometrics import gallery as gal
from palmnode.biometrics import prefilter as pf
from palmnode.biometrics.gallery import Gallery
from palmnode.biometrics.matcher import Calibration, Score, match
from palmnode.biometrics.types import ModalityCode, PalmTemplate

N = 24


@pytest.fixture(scope="module")
def templates():
    """N identities x 2 captures (enrol, probe)."""
    return [[features.encode(*fake_palms.capture(fake_palms.identity(i), 100 * i + s)) for s in range(2)]
            for i in range(N)]


def _random_template(rng):
    def code(rows):
        planes = rng.integers(0, 2**32, (4, rows), dtype=np.uint64).astype(np.uint32)
        if rows < 32:
            planes &= np.uint32((1 << rows) - 1)
        return ModalityCode.from_planes(planes)
    return PalmTemplate(surface=code(32), vein=code(16))


def test_match_identical_and_fusion(templates):
    a = templates[0][0]
    s = match(a, a)
    assert s.surface > 0.5 and s.vein > 0.5
    assert s.fused == pytest.approx((s.surface + s.vein) / 2)
    only = match(PalmTemplate(surface=a.surface, vein=None), a)
    assert math.isnan(only.vein) and only.fused == only.surface


def test_match_is_the_gallery_score(templates):
    g = Gallery(shortlist=1000)
    for i, (enrol, _) in enumerate(templates):
        g.add(f"p{i}", "left", enrol)
    probe = templates[3][1]
    found = {c.person_id: c.score for c in g.search(probe, k=N)}
    for i, (enrol, _) in enumerate(templates):
        assert found[f"p{i}"] == match(probe, enrol)


def test_search_ranks_the_mate_first_with_and_without_prefilter(templates):
    for shortlist in (1000, 4):
        g = Gallery(shortlist=shortlist)
        for i, (enrol, _) in enumerate(templates):
            g.add(f"p{i}", "right", enrol)
        hits = [g.search(probe, k=3)[0].person_id == f"p{i}" for i, (_, probe) in enumerate(templates)]
        assert all(hits), shortlist


def test_search_best_palm_per_person_and_remove(templates):
    g = Gallery(first_capacity=2, segment_size=4, shortlist=3)
    for i in range(6):
        g.add(f"p{i}", "left", templates[i][0])
        g.add(f"p{i}", "right", templates[i + 6][0])
    assert len(g) == 12
    res = g.search(templates[8][1], k=5)
    assert res[0].person_id == "p2" and res[0].palm == "right"
    assert len({c.person_id for c in res}) == len(res)
    assert "p2" in g and "nobody" not in g
    assert g.remove("p2") == 2 and g.remove("p2") == 0 and len(g) == 10
    assert "p2" not in g and "p3" in g
    assert all(c.person_id != "p2" for c in g.search(templates[8][1], k=10))
    for i in (0, 1, 3):      # compaction of full segments keeps the others findable
        g.remove(f"p{i}")
    assert g.search(templates[4][1], k=1)[0].person_id == "p4"
    assert g.search(templates[11][1], k=1)[0].person_id == "p5"


def test_empty_gallery_and_bad_arguments(templates):
    g = Gallery()
    assert g.search(templates[0][1]) == [] and len(g) == 0
    with pytest.raises(ValueError):
        g.add("", "left", templates[0][0])
    with pytest.raises(ValueError):
        g.add("x", "middle", templates[0][0])
    with pytest.raises(ValueError):
        g.search(PalmTemplate(surface=None, vein=None))
    with pytest.raises(TypeError):
        match(templates[0][0], "nope")
    for threads in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            Gallery(threads=threads)


def test_add_many_is_add_one_by_one(templates):
    """The batch the node fills its gallery with at start: the same rows, keys and searches as
    add() per entry, across segment growth and new segments; a bad entry anywhere adds nothing."""
    rng = np.random.default_rng(1)
    veinless = PalmTemplate(surface=templates[0][0].surface, vein=None)
    entries = [(f"p{i % 7}", gal.PALMS[i % 3], _random_template(rng)) for i in range(40)]
    entries += [(f"q{i}", "left", t) for i, (t, _) in enumerate(templates)] + [("q0", "right", veinless)]
    one, many = (Gallery(segment_size=16, first_capacity=4) for _ in range(2))
    for e in entries:
        one.add(*e)
    assert many.add_many(entries[:5]) == 5 and many.add_many(entries[5:]) == len(entries) - 5
    assert len(many) == len(one) == len(entries) and len(many._segments) == len(one._segments) > 2
    for a, b in zip(one._segments, many._segments):
        assert a.count == b.count and a.capacity == b.capacity
        for name in ("index", "records", "live", "flags", "person", "palm"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert one._people.ids() == many._people.ids()
    assert np.array_equal(pf.index_rows([veinless, templates[1][0]]),
                          np.stack([np.zeros(pf.INDEX_WORDS, np.uint64), pf.signature(templates[1][0])]))
    probe = templates[3][1]
    assert many.search(probe, k=3) == one.search(probe, k=3)
    assert many.remove("q3") == one.remove("q3") == 1
    with pytest.raises(ValueError, match="palm must be one of"):
        many.add_many([("r1", "left", templates[5][0]), ("r2", "middle", templates[6][0])])
    with pytest.raises(ValueError, match="at least one modality"):
        many.add_many([("r1", "left", templates[5][0]), ("r2", "left", PalmTemplate(None, None))])
    assert len(many) == len(entries) - 1 and "r1" not in many._people


def test_memory_is_linear_in_palms():
    rng = np.random.default_rng(0)
    g = Gallery(segment_size=1024, first_capacity=1024)
    sizes = []
    for n in range(1, 4097):
        g.add(f"p{n}", "left", _random_template(rng))
        if n % 1024 == 0:
            sizes.append(sum(seg.nbytes() for seg in g._segments))
    per = np.diff([0] + sizes) / 1024
    assert np.all(per == per[0]) and per[0] < 1024
    # the person table (ids in an arena, a hash index): ~60 B a person, growing by doubling
    assert g._people.nbytes() / len(g) < 128 and g.memory_bytes() == sizes[-1] + g._people.nbytes()


def test_the_open_segment_holds_at_most_an_eighth_idle_so_a_palm_stays_under_1_kib():
    """The budget is 1 KiB per enrolled palm (a row is 839 B). The open segment grew by doubling,
    so half its rows could be idle: 1,100 B per palm at 100k people (65,536 + 34,464 rows in a
    second segment of 65,536). It now grows by an eighth (or by what is being added): at every
    size, a palm costs at most 9/8 of its row beyond the first segment's floor."""
    rng = np.random.default_rng(0)
    g = Gallery(segment_size=4096, first_capacity=64)

    def packed() -> int:
        return sum(seg.nbytes() for seg in g._segments)
    row = None
    for n in range(1, 3 * 4096 + 1):
        g.add(f"p{n}", "left", _random_template(rng))
        row = row or packed() // 64
        if n >= 64:
            assert packed() <= row * (n + n // 8 + 1), n
    assert row < 1024 * 8 / 9
    for n in range(3 * 4096, 3 * 4096 + 5000, 1024):   # the node loads its vault in batches of 1,024
        g.add_many([(f"q{n}-{i}", "left", _random_template(rng)) for i in range(1024)])
        assert packed() <= row * (len(g) + len(g) // 8 + 1024)
    assert g.memory_bytes() / len(g) < 1024   # the person table too


def test_searches_in_threads_never_see_half_written_entries(templates):
    """Writers add and remove while worker threads search: every result names a person that
    was enrolled at some point, and a probe's mate (never removed) is always found."""
    g = Gallery(shortlist=8, first_capacity=2, segment_size=16)
    g.add("mate", "left", templates[0][0])
    rng = np.random.default_rng(1)
    stop = threading.Event()
    errors = []

    def searcher():
        try:
            while not stop.is_set():
                res = g.search(templates[0][1], k=3)
                assert res[0].person_id == "mate"
                assert all(c.person_id == "mate" or c.person_id.startswith("r") for c in res)
        except Exception as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for n in range(300):
            g.add(f"r{n}", "left", _random_template(rng))
            if n % 3 == 0:
                g.remove(f"r{n // 2}")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[0]


def test_calibration_thresholds_from_impostors():
    rng = np.random.default_rng(3)
    imp = rng.normal(0, 1, 10_000)
    cal = Calibration.from_impostors(imp)
    for fmr in (0.1, 0.01, 1e-3, 1e-4):
        t = cal.threshold_for(fmr)
        assert (imp >= t).mean() <= fmr
        assert cal.fmr_of(t) <= fmr
        assert (imp >= np.nextafter(np.sort(imp)[::-1][int(fmr * imp.size)], -np.inf)).mean() > fmr  # lowest such
    with pytest.raises(ValueError, match="below 1/10000"):
        cal.threshold_for(1e-5)
    assert cal.fmr_of(imp.max() + 1) == 0 and cal.fmr_of(imp.min()) == 1.0
    back = Calibration.from_json(cal.to_json())
    assert back.threshold_for(1e-3) == cal.threshold_for(1e-3) and back.n == cal.n
    small = Calibration.from_impostors(imp, keep=50)
    assert small.threshold_for(1e-3) == cal.threshold_for(1e-3)
    with pytest.raises(ValueError):
        Calibration.from_impostors(np.array([np.nan]))


def test_score_fields_are_floats(templates):
    s = match(templates[0][0], templates[1][1])
    assert isinstance(s, Score) and all(isinstance(x, float) for x in (s.surface, s.vein, s.fused))
    assert matcher.fuse(np.nan, np.nan) != matcher.fuse(np.nan, np.nan)  # NaN


def test_signature_variants_equal_signatures_of_shifted_codes(templates):
    offsets = pf.PROBE_OFFSETS + ((2, -1), (-3, 2), (20, 0))
    for enrol, probe in templates[:8]:
        for t in (enrol, probe, PalmTemplate(surface=None, vein=probe.vein)):
            ref = np.stack([pf.signature(PalmTemplate(
                surface=None if t.surface is None else pf.shift_code(t.surface, 2 * dy, 2 * dx),
                vein=pf.shift_code(t.vein, dy, dx))) for dy, dx in offsets])
            assert np.array_equal(pf.signature_variants(t, offsets), ref)


def test_signature_is_vein_only_and_a_probe_without_vein_is_matched_exhaustively(templates):
    """The pre-filter signature comes from the vein code alone; a surface-only probe cannot be
    ranked by it, so every live entry gets the full match (its scores are matcher.match's)."""
    t = templates[0][0]
    assert np.array_equal(pf.signature(t), pf.signature(PalmTemplate(surface=None, vein=t.vein)))
    assert not pf.signature(PalmTemplate(surface=t.surface, vein=None)).any()
    g = Gallery(shortlist=4)
    for i, (enrol, _) in enumerate(templates):
        g.add(f"p{i}", "left", enrol)
    probe = PalmTemplate(surface=templates[5][1].surface, vein=None)
    found = g.search(probe, k=N)
    assert found[0].person_id == "p5" and len(found) == N
    for c in found:
        want = match(probe, templates[int(c.person_id[1:])][0])
        assert (c.score.surface, c.score.fused) == (want.surface, want.fused) and math.isnan(c.score.vein)


def test_shortlist_is_a_fixed_fraction_within_bounds():
    g = Gallery()
    assert g.prefilter.shortlist_size(1_000) == 100 and g.prefilter.shortlist_size(10_000) == 200
    assert g.prefilter.shortlist_size(100_000) == 2000 and g.prefilter.shortlist_size(500_000) == 10_000
    assert g.prefilter.shortlist_size(1_000_000) == 20_000 and g.prefilter.shortlist_size(5_000_000) == 20_000
    assert g.prefilter.stage1_size(20_000) == 3000 and g.prefilter.stage1_size(1_000_000) == 150_000
    assert g.prefilter.stage1_size(2_000) == 1000 and g.prefilter.stage1_size(5_000_000) == 150_000
    assert g.prefilter.fast_sizes(10_000) == (1000, 100) and g.prefilter.fast_sizes(1_000_000) == (3000, 150)
    assert Gallery(shortlist=4).prefilter.shortlist_size(10_000) == 4
    with pytest.raises(ValueError):
        Gallery(shortlist_fraction=0.0)


def test_two_stage_prefilter_keeps_the_closest_vein_codes(templates):
    """Prefilter.select: the signature scan keeps stage1_size entries, the rigid vein match at
    block-wise vein match (4x4-cell blocks within ±VEIN_STAGE_RADIUS) ranks them and the
    shortlist_size closest (ties by index) go on."""
    g = Gallery(shortlist=5)
    for i, (enrol, _) in enumerate(templates):
        g.add(f"p{i}", "left", enrol)
    probe = templates[7][1]
    snap = g._snapshot()
    starts = np.concatenate([[0], np.cumsum([n for _, n, _ in snap])])
    got = g.prefilter.select(probe, snap, starts)
    recs = matcher.pack_records([e for e, _ in templates])[0]
    spec = matcher.VEIN_MATCH
    centre = np.full(N, 8 * 32 + 8, np.int32)
    hd, _ = kernels.match_elastic_reference(probe.vein.planes(), recs, np.arange(N, dtype=np.int64), centre,
                                            offset=spec.offset, bh=4, bw=4, radius=pf.VEIN_STAGE_RADIUS,
                                            n_ref=spec.n_ref)
    want = np.sort(np.lexsort((np.arange(N), hd))[:5])
    assert g.prefilter.stage1_size(N) >= N and np.array_equal(got, want) and 7 in got


def test_smallest_by_partition_equals_a_stable_sort():
    from palmnode.biometrics.prefilter import smallest as _smallest

    rng = np.random.default_rng(0)
    for _ in range(300):
        n, k = int(rng.integers(0, 40)), int(rng.integers(1, 50))
        v = rng.integers(0, 5, n).astype(np.float64)               # many ties
        assert np.array_equal(_smallest(v, k), np.sort(np.lexsort((np.arange(n), v))[:k]))


def test_gallery_fusion_equals_matcher_fuse():
    from palmnode.biometrics.gallery import _fused

    rng = np.random.default_rng(2)
    s, v = rng.normal(0.2, 0.1, 500), rng.normal(0.2, 0.1, 500)
    s[rng.random(500) < 0.2] = np.nan
    v[rng.random(500) < 0.2] = np.nan
    want = matcher.fuse(s, v)
    got = _fused(s, v)
    assert np.array_equal(np.where(np.isnan(want), -np.inf, want), got)


def test_scores_are_the_matchers_when_the_shortlist_is_gathered_in_chunks(templates, monkeypatch):
    """The shortlist's records are gathered across segments in chunks of _GATHER (here 5): every
    score is still matcher.match's, with and without the vein code in the probe."""
    monkeypatch.setattr(gal, "_GATHER", 5)
    g = Gallery(shortlist=1000, segment_size=4, first_capacity=2)
    for i, (enrol, _) in enumerate(templates):
        g.add(f"p{i}", "left", enrol)
    for probe in (templates[9][1], PalmTemplate(surface=templates[9][1].surface, vein=None)):
        found = g.search(probe, k=N)
        assert found[0].person_id == "p9" and len(found) == N
        for c in found:
            want = match(probe, templates[int(c.person_id[1:])][0])
            assert (c.score.surface, c.score.fused) == (want.surface, want.fused)
            assert c.score.vein == want.vein or (math.isnan(c.score.vein) and math.isnan(want.vein))


def test_removed_person_leaves_no_codes_or_id_in_memory(templates):
    g = Gallery()
    for i in range(3):
        g.add(f"person-{i}", "right", templates[i][0])
    rec = matcher.pack_records([templates[1][0]])[0][0]
    def holds(record) -> bool:
        return any((seg.records[:seg.count] == record).all(axis=1).any() for seg in g._segments)
    assert holds(rec)
    assert g.remove("person-1") == 1
    assert not holds(rec) and "person-1" not in g._people and b"person-1" not in g._people._arena
    assert all(c.person_id != "person-1" for c in g.search(templates[1][1], k=3))
    g.add("person-1", "right", templates[1][0])  # the same id can come back (replication)
    assert g.search(templates[1][1], k=1)[0].person_id == "person-1"


def test_fast_pass_stops_at_exit_score_else_the_full_prefilter_joins(templates):
    """Gallery.search runs the fast pass (fast_offsets, fast_sizes) and stops when its best final
    score reaches exit_score; otherwise the full pre-filter's shortlist joins the fast one. The
    scores are matcher.match's either way; exit_score=None is the full pre-filter alone."""
    probe = templates[6][1]
    chosen_by = {}
    for exit_score in (-1.0, 2.0, None):
        g = Gallery(shortlist=6, exit_score=exit_score)
        for i, (enrol, _) in enumerate(templates):
            g.add(f"p{i}", "left", enrol)
        snap = g._snapshot()
        starts = np.concatenate([[0], np.cumsum([n for _, n, _ in snap])])
        found, chosen, fast = g.search_with_shortlist(probe, k=3)
        assert found[0].person_id == "p6"
        for c in found:
            assert c.score == match(probe, templates[int(c.person_id[1:])][0])
        fast_sel = g.prefilter.select(probe, snap, starts, fast=True)
        full_sel = g.prefilter.select(probe, snap, starts)
        assert fast_sel.size == g.prefilter.fast_sizes(N)[1] <= full_sel.size == 6
        if exit_score == -1.0:
            assert fast and np.array_equal(chosen, fast_sel)
        elif exit_score == 2.0:
            assert not fast and np.array_equal(chosen, np.union1d(fast_sel, full_sel))
        else:
            assert not fast and np.array_equal(chosen, full_sel)
        chosen_by[exit_score] = chosen
    assert not g.prefilter.has_fast_pass(probe, N) and not Gallery().prefilter.has_fast_pass(probe, 10)
    assert not Gallery(shortlist=6).prefilter.has_fast_pass(PalmTemplate(surface=probe.surface, vein=None), N)


def test_full_pass_ranks_by_the_probes_variants_too(templates):
    """The full pre-filter pass scores every entry by its best over the probe and its variants
    (each at every probe offset) and gives the vein stage the better of the probe and the variant
    that scored it best: a mate only a re-cut matches is shortlisted, and not without the re-cut."""
    from palmnode.biometrics.variants import IDENTITY, ProbeTemplates, Variant

    g = Gallery(shortlist=3, exit_score=None)
    for i, (enrol, _) in enumerate(templates):
        g.add(f"p{i}", "left", enrol)
    snap = g._snapshot()
    starts = np.concatenate([[0], np.cumsum([n for _, n, _ in snap])])
    base, recut = templates[2][1], templates[11][1]        # the "re-cut" matches p11, the base p2
    assert 11 not in g.prefilter.select(base, snap, starts)
    assert 11 in g.prefilter.select(base, snap, starts, variants=[recut])
    assert 2 in g.prefilter.select(base, snap, starts, variants=[recut])
    best_first = g.prefilter.select(base, snap, starts, variants=[recut], ranked=True)
    assert np.array_equal(np.sort(best_first), g.prefilter.select(base, snap, starts, variants=[recut]))
    assert best_first[0] in (2, 11) and not np.array_equal(best_first, np.sort(best_first))
    probe = ProbeTemplates((base, recut), (IDENTITY, Variant(6, 1)))
    assert {c.person_id for c in g.search(probe, k=3)} >= {"p2", "p11"}


@pytest.fixture(scope="module")
def crowded(templates):
    """A gallery of 1,500 random palms then the N identities' enrolments (more than the stage 1)."""
    rng = np.random.default_rng(9)
    g = Gallery(shortlist=1200, shortlist_fraction=1.0, exit_score=None)
    g.add_many([(f"r{i}", "left", _random_template(rng)) for i in range(1500)]
               + [(f"p{i}", "left", enrol) for i, (enrol, _) in enumerate(templates)])
    snap = g._snapshot()
    return g, snap, np.concatenate([[0], np.cumsum([n for _, n, _ in snap])])


def test_pair_norms_standardise_every_pair_on_the_gallery(crowded, templates):
    g, snap, starts = crowded
    psig = pf.probe_signatures([templates[4][1], templates[9][1]])
    norms = pf.pair_norms(psig, snap, starts)
    sample = pf.sample_signatures(snap, starts)
    assert norms.shape == (2, len(pf.PROBE_OFFSETS), 2) and len(sample) == len(g)   # < NORM_SAMPLE: all
    live = np.ones(len(sample), np.uint8)
    for t in range(2):
        for o in range(len(pf.PROBE_OFFSETS)):
            z = kernels.prefilter_scores(psig[t, o], sample, live, norm=norms[t, o][None]).astype(float)
            assert abs(z.mean() - pf.NORM_CENTRE) < 1.0 and abs(z.std() - pf.NORM_STEP) < 1.0


def test_full_pass_stage1_is_the_minimum_of_standardised_pairs(crowded, templates):
    """Every (template, offset) pair's scores standardised before the minimum
    (kernels.prefilter_scores' norm from pf.pair_norms): the stage 1 is the reference's, and not
    the one raw scores would keep."""
    g, snap, starts = crowded
    probe, recut = templates[4][1], templates[9][1]
    total = int(starts[-1])
    k = g.prefilter.shortlist_size(total)
    assert g.prefilter.stage1_size(total) <= k < total    # the scan's selection is the output
    got = g.prefilter.select(probe, snap, starts, variants=[recut])
    psig = pf.probe_signatures([probe, recut])
    norms = pf.pair_norms(psig, snap, starts)
    sigs = np.concatenate([seg.index[:n] for seg, n, _ in snap])
    live = np.ones(total, np.uint8)
    best = np.minimum(*(kernels.prefilter_scores_reference(psig[t], sigs, live, norm=norms[t]) for t in range(2)))
    raw = np.minimum(*(kernels.prefilter_scores_reference(psig[t], sigs, live) for t in range(2)))
    assert np.array_equal(got, kernels.select_smallest_reference(best, k))
    assert not np.array_equal(got, kernels.select_smallest_reference(raw, k))
    assert {1504, 1509} <= set(got.tolist())               # the two mates


def test_the_full_passs_best_reach_the_final_stage(templates, monkeypatch):
    """The shortlist ranking sees the probe as found; the full pre-filter pass also ranks by its
    re-cuts. Its best entries get the final (variant) scores even when the shortlist ranking
    would not keep them: a mate only a re-cut matches is found."""
    from palmnode.biometrics.variants import IDENTITY, ProbeTemplates, Variant

    monkeypatch.setattr(gal, "RERANK", 1)                   # the final stage: 8 entries for k=1
    monkeypatch.setattr(gal, "FULL_RERANK_FRACTION", 0.0)   # and the full pass's best one
    g = Gallery(shortlist=20, exit_score=None)
    for i, (enrol, _) in enumerate(templates):
        g.add(f"p{i}", "left", enrol)
    base, recut = templates[2][1], templates[11][1]
    by_base = [c.person_id for c in g.search(base, k=N)]
    assert by_base.index("p11") >= 8                         # the probe as found ranks 8 others higher
    probe = ProbeTemplates((base, recut), (IDENTITY, Variant(6, 1)))
    found = g.search(probe, k=1)
    assert found[0].person_id == "p11"
    assert found[0].score == matcher.match_probe(probe, templates[11][0])


def test_the_full_passs_second_group_is_a_fraction_of_its_shortlist(templates, monkeypatch):
    """Ranks grow with the gallery: the full pass's best FULL_RERANK_FRACTION of its shortlist
    reach the final stage, and never fewer than RERANK."""
    g = Gallery(shortlist=20, exit_score=None)
    for i, (enrol, _) in enumerate(templates):
        g.add(f"p{i}", "left", enrol)
    seen = []
    rank = Gallery._rank

    def spy(self, *args, also=None, **kwargs):
        seen.append(also.size)
        return rank(self, *args, also=also, **kwargs)
    monkeypatch.setattr(Gallery, "_rank", spy)
    monkeypatch.setattr(gal, "RERANK", 1)
    for fraction, size in ((0.25, 5), (0.01, 1)):            # ceil(0.25 * 20); at least RERANK
        monkeypatch.setattr(gal, "FULL_RERANK_FRACTION", fraction)
        seen.clear()
        g.search(templates[0][1], k=1)
        assert seen == [size]


class _StopAfter(threading.Event):
    """A stop flag that reads as set from its ``after``-th check on, counting the checks."""

    def __init__(self, after: float = math.inf) -> None:
        super().__init__()
        self.after, self.checks = after, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.after


def test_a_search_stops_at_its_next_c_call_once_its_caller_gives_up(templates):
    """The identify flow sets ``stop`` when it gives up on a search (match timeout, deadline, hand
    gone): the worker thread it abandoned raises SearchCancelled at its next check instead of
    finishing a full pass nobody waits for. Checked per segment of the signature scans and the
    vein stages, per gathered chunk and before the final stage."""
    rng = np.random.default_rng(4)
    g = Gallery(segment_size=512, exit_score=2.0)   # the full pass always runs, over 7 segments
    g.add_many([(f"r{i}", "left", _random_template(rng)) for i in range(3000)]
               + [(f"p{i}", "left", enrol) for i, (enrol, _) in enumerate(templates)])
    probe = templates[5][1]
    never = _StopAfter()
    found = g.search(probe, k=3, stop=never)
    assert found == g.search(probe, k=3) and found[0].person_id == "p5"
    assert never.checks >= 3 * len(g._segments)       # both passes' scans and the vein stage, per segment
    for after in range(never.checks):
        stop = _StopAfter(after)
        with pytest.raises(pf.SearchCancelled):
            g.search(probe, k=3, stop=stop)
        assert stop.checks == after + 1                # it stopped at that very check
    assert g.search(probe, k=3) == found               # the gallery is untouched


@pytest.mark.parametrize("exit_score", [pf.EXIT_SCORE, 2.0])
def test_a_search_split_over_threads_finds_what_one_thread_finds(templates, monkeypatch, exit_score):
    """Gallery(threads=2) runs the signature scans and vein stages per segment and the shortlist
    ranking per chunk in its thread pool: the same candidates and scores as one thread (the fast
    pass, and with exit_score 2.0 the full pass always), strangers too; a stop still cancels it."""
    rng = np.random.default_rng(5)
    entries = ([(f"r{i}", "left", _random_template(rng)) for i in range(3000)]
               + [(f"p{i}", "left", enrol) for i, (enrol, _) in enumerate(templates)])
    one = Gallery(segment_size=512, exit_score=exit_score)
    two = Gallery(segment_size=512, exit_score=exit_score, threads=2)
    one.add_many(entries)
    two.add_many(entries)
    scanned_in = set()
    scan = kernels.prefilter_best

    def watched(*args, **kwargs):
        scanned_in.add(threading.current_thread().name)
        return scan(*args, **kwargs)
    monkeypatch.setattr(kernels, "prefilter_best", watched)
    probes = [templates[i][1] for i in range(0, N, 3)] + [_random_template(rng) for _ in range(2)]
    for probe in probes:
        found = two.search(probe, k=5)
        assert {name.split("_")[0] for name in scanned_in} == {"gallery-search"}   # the pool's threads
        scanned_in.clear()
        assert found == one.search(probe, k=5)
        assert scanned_in == {threading.current_thread().name}
        scanned_in.clear()
    assert found[0].person_id.startswith("r")                       # a stranger: the full pass ran
    stop = threading.Event()
    stop.set()
    with pytest.raises(pf.SearchCancelled):
        two.search(probes[0], k=5, stop=stop)
    assert two.search(probes[0], k=5) == one.search(probes[0], k=5)


def _check_entries(g: Gallery) -> None:
    """Every live row belongs to a person held, and every person held has a live row."""
    keys = [int(k) for seg in g._segments for k in seg.person[:seg.count][seg.live[:seg.count] != 0]]
    assert len(keys) == len(g)
    held = g._people.ids()
    assert set(keys) == set(held.values()) and len(held) == g._people.live
    assert all(g._people.key_of(pid) == key for pid, key in held.items())


def test_memory_stays_bounded_under_add_remove_churn(templates):
    """The node's people come and go: with a steady number of enrolled palms, memory, segments
    and searched rows stay bounded however many were ever added and removed (removed rows are
    compacted away in every segment, emptied closed segments dropped), and removing everything
    and adding again starts from a small gallery."""
    rng = np.random.default_rng(6)
    pool = [_random_template(rng) for _ in range(64)]
    g = Gallery(segment_size=16, first_capacity=4)
    for i in range(10):
        g.add(f"staff{i}", "left", pool[i])
    sizes = []
    for n in range(1200):
        g.add(f"v{n}", gal.PALMS[n % 3], pool[n % 64])
        if n >= 30:
            assert g.remove(f"v{n - 30}") == 1
        if n % 200 == 199:
            _check_entries(g)
            sizes.append((sum(seg.nbytes() for seg in g._segments), len(g._segments),
                          sum(seg.count for seg in g._segments)))
            assert len(g._people._arena) <= 2 * sum(len(p) for p in g._people.ids()) + 64  # holes compacted
            assert g._people._slots.size <= 8 * g._people.live  # the index too
    assert len(g) == 40 and max(sizes) == max(sizes[:2])
    assert sum(seg.count for seg in g._segments) <= 2 * len(g) + 16
    assert g.search(pool[5], k=1)[0].person_id == "staff5"
    for i in range(10):
        g.remove(f"staff{i}")
    for n in range(1170, 1200):
        g.remove(f"v{n}")
    assert len(g) == 0 and len(g._segments) == 1 and g._segments[0].count == 0 and g.search(pool[0]) == []
    g.add_many([(f"w{i}", "right", pool[i]) for i in range(40)])
    _check_entries(g)
    assert g.search(pool[7], k=1)[0].person_id == "w7"


def test_person_table_follows_the_people_enrolled_not_those_ever_added(templates):
    """A gate's people come and go, and a sync gives back people it holds (removed, then added
    again): the table of person ids stays the size of the most people held at once, not of
    every person ever added (it grew by one per addition, for the gallery's whole life)."""
    rng = np.random.default_rng(8)
    pool = [_random_template(rng) for _ in range(16)]
    g = Gallery(segment_size=16, first_capacity=4)
    for i in range(10):
        g.add(f"staff{i}", "left", pool[i])
    for n in range(1000):
        g.add(f"v{n}", "right", pool[n % 16])
        if n >= 5:
            assert g.remove(f"v{n - 5}") == 1
        g.remove(f"staff{n % 10}")          # a sync's upsert of someone held: removed, added again
        g.add(f"staff{n % 10}", "left", pool[n % 10])
    assert len(g) == 15
    assert g._people.keys <= 17, g._people.keys
    _check_entries(g)
    assert g.search(pool[3], k=1)[0].person_id == "staff3"
    assert {c.person_id for c in g.search(pool[0], k=20)} == {f"staff{i}" for i in range(10)} | {
        f"v{n}" for n in range(995, 1000)}


class _PauseAt:
    """A search's ``stop`` that holds the search at its ``at``-th check (the searching thread
    waits there until released) and never stops it; counts the checks."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.calls = at, 0
        self.reached, self.release = threading.Event(), threading.Event()

    def is_set(self) -> bool:
        self.calls += 1
        if self.calls == self.at:
            self.reached.set()
            assert self.release.wait(10)
        return False


def test_a_search_never_names_a_newcomer_for_a_person_removed_while_it_ran(templates):
    """A search that read a person's entry before their removal finds it removed and names no
    one for it, even when a newcomer is enrolled meanwhile: the newcomer never takes the removed
    person's key while such a search runs (it does once none does, so the table stays small)."""
    g = Gallery()
    for i in range(4):
        g.add(f"p{i}", "right", templates[i][0])
    probe = templates[1][1]
    dry = _PauseAt()
    assert g.search(probe, k=1, stop=dry)[0].person_id == "p1"
    pause = _PauseAt(at=dry.calls)          # its last check: every entry's record read already
    found = []
    searcher = threading.Thread(target=lambda: found.extend(g.search(probe, k=4, stop=pause)))
    searcher.start()
    try:
        assert pause.reached.wait(10)
        assert g.remove("p1") == 1
        g.add("newcomer", "right", templates[9][0])
    finally:
        pause.release.set()
        searcher.join(10)
    assert found and all(c.person_id not in ("p1", "newcomer") for c in found), found
    assert g.search(templates[9][1], k=1)[0].person_id == "newcomer"
    g.remove("newcomer")
    g.add("later", "right", templates[10][0])   # no search runs now: a freed key is taken again
    assert g._people.keys == 5 and g.search(templates[10][1], k=1)[0].person_id == "later"
