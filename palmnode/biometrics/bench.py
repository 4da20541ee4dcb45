"""The engine part of ``palmnode bench``: speed and pre-filter recall on rendered palms.

    palmnode bench --suite engine [--sizes 10000,100000,1000000] [--ids 300] [--genuine-seed 10000] [--threads 1]
    python -m palmnode.biometrics.bench [the same options]

One JSON object on stdout (progress on stderr): ROI and feature times per frame beside an
OpenCV+NumPy pipeline baseline (Otsu + largest contour + min-area rectangle for the ROI; six
full-image Gabor filters with cv2.filter2D, argmin and np.packbits for the codes), 1:1 µs,
1:N ms at each size (median of repeated probes) beside faiss IndexBinaryFlat (exhaustive, no
shifts, as many threads as the search: ``--threads``, 1 by default) and a NumPy exhaustive
masked-Hamming baseline (no shifts) on the same records (the same gallery as for the recall),
the ratios, and the recall losses.

Data. Genuine pairs: ``--ids`` identities rendered by palmnode.biometrics.synth from seed
``--genuine-seed`` on (10000: the reported set; others are held-out sets) (session 0
enrols, two session-1 captures probe) through roi.extract_roi / roi.warp / features.encode,
i.e. cross-session pairs through the real ROI. Impostors at scale: another ``--ids`` rendered
identities (seeds from SOURCE_SEED) are the *source pool*; a gallery entry of any size is synthesised by taking each
quadrant of each modality's code (surface 16x16 cells, vein 8x8 cells) from an independently
drawn source template (same quadrant position); its pre-filter signature is computed from the
synthesised vein code. The source pool shares no identity with the probes. The
script prints the full-match and pre-filter impostor score distributions of synthesised entries
beside those of the real rendered impostors so the two can be compared.

Recall at gallery size N: the gallery holds N synthesised impostors and then every enrolled
template (the mates, last: index ties go against them). Among genuine probes whose mate the full
match (matcher.match) ranks above every impostor, ``recall_loss`` is the fraction whose mate
Gallery.search never fully matched (not in the fast pass's shortlist, nor in the full pass's when
the fast pass was not enough: ``Gallery.search_with_shortlist``; ``recall_loss_stage1``: the part
the full pass's signature stage alone drops, ties counted against the mate) and ``search_loss``
the fraction for which Gallery.search does not return the mate first (pre-filter plus the ranking
before the elastic surface match); ``fast_pass_sufficed``: the fraction of genuine probes whose
search stopped after the fast pass. ``recall_loss_accepted`` / ``search_loss_accepted``: the same
among the mates whose full score also reaches the gate's decision threshold
(``decision_threshold``: palmnode/biometrics/calibration.json at the target FMR 1e-9 per comparison; the gate
identifies nobody below it). ``ms`` times genuine probes, ``stranger_ms`` the same probes
with their mates removed (they always run the full pass). "Ranks above every impostor" is checked against the exhaustive full
match over the first 10k synthesised entries and the other enrolled templates plus the full
match of the gallery's shortlist (the impostors most likely to beat the mate).
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from palmnode.cliargs import count, counts
from palmnode.config import SHIPPED_CALIBRATION, GateConfig
from palmnode.private_files import replace_file
from palmnode.progress import Progress
from palmnode.biometrics import features, gallery as gal, kernels, matcher, prefilter as pf, roi, synth, variants
from palmnode.biometrics.types import BadImage, PalmTemplate, RoiFailure
from palmnode.biometrics.variants import ProbeTemplates

S_ROWS, V_ROWS = matcher.SURFACE_MATCH.rows, matcher.VEIN_MATCH.rows
#: entries per gallery segment in the bench's galleries
SEGMENT = 1 << 16
#: seed of the first identity of the impostor source pool (never a genuine identity)
SOURCE_SEED = 500_000


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def median_ms(fn, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def _pipeline_version() -> str:
    """Hash of the renderer, ROI and feature sources: a cached template set is reused only
    while the code that made it is unchanged."""
    import hashlib

    from palmnode.biometrics import keypoints, segment

    h = hashlib.sha1()
    for mod in (synth, roi, keypoints, segment, features, variants):
        files = [mod.__file__]
        if mod.__file__.endswith("__init__.py"):
            files = sorted(str(p) for p in Path(mod.__file__).parent.glob("*.py"))
        for f in files:
            h.update(Path(f).read_bytes())
    return h.hexdigest()[:10]


def render_set(first_seed: int, n_ids: int, cache: Path) -> tuple[list[PalmTemplate], np.ndarray, np.ndarray,
                                                                   list[ProbeTemplates | None]]:
    """Templates of n_ids rendered identities x (session 0, session 1, session 1), cached; the
    session-1 captures (probes) also as their probe variants (variants.from_frames, as the gate)."""
    path = cache / f"rendered_{first_seed}_{n_ids}_{_pipeline_version()}_variants.npz"
    if not path.exists():
        blobs, ids, caps, vblobs, vowner, vkind = [], [], [], [], [], []
        progress = Progress(f"rendering {n_ids} identities from seed {first_seed}", n_ids)
        for i in range(n_ids):
            ident = synth.Identity.from_seed(first_seed + i)
            for session, k in ((0, 0), (1, 1), (1, 2)):
                cap = synth.sample_capture(np.random.default_rng([first_seed + i, k]), session=session)
                nir, surface = synth.render_pair(ident, cap)
                r = roi.extract_roi(nir)
                if isinstance(r, RoiFailure):
                    continue
                try:
                    t = features.encode(roi.warp(surface, r), roi.warp(nir, r))
                except BadImage:
                    continue
                if session == 1:
                    probe = variants.from_frames(surface, nir, r, base=t)
                    for v, kind in zip(probe.templates[1:], probe.variants[1:]):
                        vblobs.append(v.to_bytes())
                        vowner.append(len(blobs))
                        vkind.append(variants.VARIANTS.index(kind))
                blobs.append(np.frombuffer(t.to_bytes(), np.uint8))
                ids.append(i)
                caps.append(k)
            progress.update()
        progress.close()
        cache.mkdir(parents=True, exist_ok=True)
        # whole or not at all: a Ctrl-C or a full disk mid-way left a truncated file at the name the
        # next run takes as a finished cache (and stopped on it with a BadZipFile traceback)
        saved = io.BytesIO()
        np.savez(saved, blobs=np.stack(blobs), ids=np.array(ids), caps=np.array(caps),
                 vbytes=np.frombuffer(b"".join(vblobs), np.uint8),
                 vlen=np.array([len(b) for b in vblobs], np.int64), vowner=np.array(vowner, np.int64),
                 vkind=np.array(vkind, np.int64))
        replace_file(path, saved.getvalue(), 0o600)
    d = np.load(path)
    templates = [PalmTemplate.from_bytes(b.tobytes()) for b in d["blobs"]]
    extra: dict[int, list[tuple[PalmTemplate, variants.Variant]]] = {}
    at = 0
    for n, owner, kind in zip(d["vlen"].tolist(), d["vowner"].tolist(), d["vkind"].tolist()):
        extra.setdefault(owner, []).append((PalmTemplate.from_bytes(d["vbytes"][at:at + n].tobytes()),
                                            variants.VARIANTS[kind]))
        at += n
    probes = [None if c == 0 else ProbeTemplates((t, *(v for v, _ in extra.get(j, []))),
                                                 (variants.IDENTITY, *(k for _, k in extra.get(j, []))))
              for j, (t, c) in enumerate(zip(templates, d["caps"]))]
    return templates, d["ids"], d["caps"], probes


def _quadrant_masks():
    """Per quadrant q (qy*2+qx): record word selector and per-row bit mask."""
    rec_rows, rec_bits = [], []
    for qy in (0, 1):
        for qx in (0, 1):
            rows = np.zeros(matcher.RECORD_WORDS, bool)
            bits = np.zeros(matcher.RECORD_WORDS, np.uint32)
            for spec in (matcher.SURFACE_MATCH, matcher.VEIN_MATCH):
                h = spec.rows // 2
                lo = ((1 << h) - 1) << (h * qx)
                for p in range(4):
                    a = spec.offset + p * spec.rows + qy * h
                    rows[a:a + h] = True
                    bits[a:a + h] = lo
            rec_rows.append(rows)
            rec_bits.append(bits)
    return rec_rows, rec_bits


def synth_entries(src_recs: np.ndarray, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """n synthesised (records, signatures): every modality quadrant from its own random source;
    the signatures are computed from the synthesised vein codes (pf.signatures_of_codes)."""
    rec_rows, rec_bits = _quadrant_masks()
    recs = np.zeros((n, matcher.RECORD_WORDS), np.uint32)
    progress = Progress(f"synthesising {n} entries", 8)
    for q in range(4):
        for half, spec in ((0, matcher.SURFACE_MATCH), (1, matcher.VEIN_MATCH)):
            src = rng.integers(0, len(src_recs), n)
            sel = rec_rows[q].copy()
            other = matcher.VEIN_MATCH if half == 0 else matcher.SURFACE_MATCH
            sel[other.offset:other.offset + 4 * other.rows] = False
            cols = np.flatnonzero(sel)
            recs[:, cols] |= src_recs[src][:, cols] & rec_bits[q][cols]
            progress.update()
    progress.close()
    return recs, signatures_of(recs)


def signatures_of(recs: np.ndarray) -> np.ndarray:
    """Pre-filter signatures of packed records (their vein codes), in chunks."""
    v = matcher.VEIN_MATCH
    out = np.empty((len(recs), kernels.SIGNATURE_WORDS), np.uint64)
    progress = Progress(f"signatures of {len(recs)} entries", len(recs))
    for a in range(0, len(recs), 1 << 16):
        part = recs[a:a + (1 << 16), v.offset:v.offset + 4 * v.rows].reshape(-1, 4, v.rows)
        out[a:a + len(part)] = pf.signatures_of_codes(part)
        progress.update(len(part))
    progress.close()
    return out


@functools.cache
def shipped_calibration() -> matcher.Calibration:
    """palmnode/biometrics/calibration.json, read once a run (OSError without the file)."""
    return matcher.Calibration.from_json(SHIPPED_CALIBRATION.read_text())


def decision_threshold() -> float | None:
    """The gate's decision threshold: the shipped calibration at the gate's default target FMR
    (None without the file)."""
    try:
        return shipped_calibration().decision_threshold(GateConfig().target_fmr)
    except OSError:
        return None


def full_scores(probe: ProbeTemplates, recs: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """The full fused score (the best variant's, as Gallery.search) of the probe against records
    holding both modalities."""
    idx = np.arange(len(recs), dtype=np.int64) if idx is None else idx.astype(np.int64)
    flags = np.full(len(recs), matcher.HAS_SURFACE | matcher.HAS_VEIN, np.uint8)
    return matcher.match_probe_records(probe, recs, idx, flags)[2]


def gallery_of(recs: np.ndarray, sigs: np.ndarray, threads: int = 1, ids: list[str] | None = None) -> gal.Gallery:
    """A Gallery holding these packed entries, one person each, ``ids`` (default p0, p1, ...) (filled
    directly: add() per entry would take minutes). Its fast pass stops where the node's does: at
    the gate's decision threshold."""
    n = len(recs)
    seg_size = SEGMENT
    threshold = decision_threshold()
    g = gal.Gallery(segment_size=seg_size, first_capacity=seg_size, threads=threads,
                    exit_score=pf.EXIT_SCORE if threshold is None else threshold)
    segs = []
    for start in range(0, n, seg_size):
        m = min(seg_size, n - start)
        seg = gal._Segment(seg_size)
        seg.records[:m], seg.index[:m], seg.live[:m], seg.flags[:m] = recs[start:start + m], sigs[start:start + m], 1, 3
        seg.person[:m] = np.arange(start, start + m)
        seg.count = m
        segs.append(seg)
    g._segments = tuple(segs)
    for key, person_id in enumerate(ids if ids is not None else (f"p{i}" for i in range(n))):
        g._people.set(key, person_id)
    g._live = n
    return g


#: other palms whose vein codes each probe's surface replica is made with (bench ``vein_check``)
REPLICA_SOURCES = 10


def surface_replicas(probes: list[tuple[int, ProbeTemplates]], enrol: dict[int, PalmTemplate]) -> dict:
    """The gate's vein check (docs/flows.md) against perfect surface replicas: each probe's own
    surface code with the vein code of each of the next REPLICA_SOURCES probes of other palms,
    every variant, against the probe's own enrolment; how many reach the decision threshold, and
    how many also the shipped calibration's vein floor at the default ``[gate] vein_fmr``.
    Genuine probes beside them."""
    threshold = decision_threshold()
    floor = shipped_calibration().vein_floor(GateConfig().vein_fmr)
    genuine, replica = [], []
    for k, (i, p) in enumerate(probes):
        genuine.append(matcher.match_probe(p, enrol[i]))
        for j, other in probes[k + 1:k + 1 + REPLICA_SOURCES]:
            if j == i:
                continue
            n = min(len(p.templates), len(other.templates))
            mixed = ProbeTemplates(tuple(PalmTemplate(surface=a.surface, vein=b.vein)
                                         for a, b in zip(p.templates[:n], other.templates[:n])), p.variants[:n])
            replica.append(matcher.match_probe(mixed, enrol[i]))

    def accepted(scores, vein_check: bool) -> int:
        return sum(s.fused >= threshold and (not vein_check or s.vein >= floor) for s in scores)
    return {"probes": len(probes), "replicas": len(replica), "decision_threshold": threshold, "vein_floor": floor,
            "genuine_accepted": accepted(genuine, False), "genuine_accepted_with_vein_check": accepted(genuine, True),
            "replicas_accepted": accepted(replica, False), "replicas_accepted_with_vein_check": accepted(replica, True),
            "replica_fused_max": max(s.fused for s in replica), "replica_vein_max": max(s.vein for s in replica)}


def numpy_search(q_bits: np.ndarray, q_mask: np.ndarray, bits: np.ndarray, masks: np.ndarray, k: int = 5):
    """Exhaustive masked Hamming (no shifts) in NumPy, in chunks: the plain-NumPy 1:N baseline."""
    best = []
    for a in range(0, len(bits), 65536):
        m = masks[a:a + 65536] & q_mask
        d = np.bitwise_count((bits[a:a + 65536] ^ q_bits) & np.repeat(m, 3, axis=1)).sum(axis=1, dtype=np.int64)
        v = np.bitwise_count(m).sum(axis=1, dtype=np.int64)
        best.append(np.argsort(d / np.maximum(v, 1))[:k] + a)
    return np.concatenate(best)


def _split_record(recs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """records -> (code planes as uint64 (n, 3*W), masks (n, W)) for the NumPy baseline."""
    parts_b, parts_m = [], []
    for spec in (matcher.SURFACE_MATCH, matcher.VEIN_MATCH):
        r = recs[:, spec.offset:spec.offset + 4 * spec.rows].reshape(len(recs), 4, spec.rows)
        parts_b.append(np.ascontiguousarray(r[:, :3]).view(np.uint64).reshape(len(recs), 3, -1))
        parts_m.append(np.ascontiguousarray(r[:, 3]).view(np.uint64))
    masks = np.concatenate(parts_m, axis=1)
    # reorder bits to (word, plane) so np.repeat(mask, 3) lines up
    w = [p.shape[2] for p in parts_b]
    bits = np.concatenate([b.transpose(0, 2, 1).reshape(len(recs), -1) for b in parts_b], axis=1)
    assert bits.shape[1] == 3 * sum(w)
    return np.ascontiguousarray(bits), np.ascontiguousarray(masks)


def baseline_roi(frame: np.ndarray) -> np.ndarray | None:
    """The OpenCV+NumPy ROI baseline: Otsu mask, largest contour, its min-area rectangle's core."""
    small = cv2.resize(frame, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    _, mask = cv2.threshold(cv2.GaussianBlur(small, (5, 5), 0), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    (cx, cy), (w, h), angle = cv2.minAreaRect(max(contours, key=cv2.contourArea))
    side = 0.5 * min(w, h) * 4
    m = cv2.getRotationMatrix2D((cx * 4, cy * 4), angle, 128 / side)
    m[:, 2] += (64 - cx * 4, 64 - cy * 4)
    return cv2.warpAffine(frame, m, (128, 128), flags=cv2.INTER_LINEAR)


_GABOR = [cv2.getGaborKernel((17, 17), 4.0, np.pi * k / 6, 8.0, 0.5, 0, cv2.CV_32F) for k in range(6)]


def baseline_features(surface_roi: np.ndarray, vein_roi: np.ndarray) -> tuple[bytes, bytes]:
    """The OpenCV+NumPy feature baseline: full-image Gabor bank, winner orientation, packed bits."""
    out = []
    for img, step in ((surface_roi, 4), (cv2.resize(vein_roi, (64, 64)), 4)):
        f = img.astype(np.float32)
        resp = np.stack([cv2.filter2D(f, cv2.CV_32F, k) for k in _GABOR])
        win = resp[:, ::step, ::step].argmin(axis=0).astype(np.uint8)
        out.append(np.packbits(np.unpackbits(win[..., None], axis=-1)[..., -3:]).tobytes())
    return out[0], out[1]


def pipeline_timings(n: int, seed: int = 20_000) -> dict:
    """Median per-frame ms of ROI (extract + two warps) and features (both modalities), ours
    beside the OpenCV+NumPy baseline, over ``n`` rendered frame pairs."""
    frames = []
    progress = Progress("ROI and features", 2 * n)
    for i in range(n):
        ident = synth.Identity.from_seed(seed + i)
        frames.append(synth.render_pair(ident, synth.sample_capture(np.random.default_rng(seed + i), session=1)))
        progress.update()
    t_roi, t_feat, t_broi, t_bfeat = [], [], [], []
    for nir, surface in frames:
        progress.update()
        t0 = time.perf_counter()
        r = roi.extract_roi(nir)
        if isinstance(r, RoiFailure):
            continue
        vein_roi, surface_roi = roi.warp(nir, r), roi.warp(surface, r)
        t1 = time.perf_counter()
        features.encode(surface_roi, vein_roi)
        t2 = time.perf_counter()
        t_roi.append(t1 - t0)
        t_feat.append(t2 - t1)
        t3 = time.perf_counter()
        b = baseline_roi(nir)
        t4 = time.perf_counter()
        if b is not None:
            t_broi.append(t4 - t3)
            baseline_features(surface_roi, vein_roi)
            t_bfeat.append(time.perf_counter() - t4)
    progress.close()
    ms = lambda xs: round(float(np.median(xs)) * 1e3, 3)  # noqa: E731
    ours = {"roi_ms": ms(t_roi), "features_ms": ms(t_feat)}
    ours["roi_plus_features_ms"] = round(ours["roi_ms"] + ours["features_ms"], 3)
    base = {"roi_ms": ms(t_broi), "features_ms": ms(t_bfeat)}
    return {"frames": len(t_roi), **ours, "baseline": "opencv_numpy", "baseline_roi_ms": base["roi_ms"],
            "baseline_features_ms": base["features_ms"],
            "ratio_roi": round(base["roi_ms"] / ours["roi_ms"], 2),
            "ratio_features": round(base["features_ms"] / ours["features_ms"], 2),
            "budget_roi_plus_features_ms": 4.0}


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ap.add_argument("--sizes", type=counts, default="10000,100000,1000000",
                    help="gallery sizes for 1:N (comma-separated)")
    ap.add_argument("--ids", type=count, default=300, help="identities for genuine pairs (and as many as impostor sources)")
    ap.add_argument("--genuine-seed", type=count, default=10_000,
                    help="seed of the first genuine identity (10000: the reported set; another for development)")
    ap.add_argument("--frames", type=count, default=200, help="rendered frames for the ROI and feature timings")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "palmnode-bench",
                    help="where rendered templates are cached between runs (never raw images)")
    ap.add_argument("--no-faiss", action="store_true", help="skip the faiss IndexBinaryFlat baseline")
    ap.add_argument("--repeat", type=count, default=15, help="probes per 1:N timing")
    ap.add_argument("--threads", type=count, default=1,
                    help="threads a 1:N search is split over (engine and gate suites) and faiss's (1: the one-core budget)")
    ap.add_argument("--cpu-path", type=int, choices=kernels.LEVELS, default=None,
                    help="the kernels' CPU path at most (0 portable, 1 POPCNT, 2 AVX2, 3 AVX-512; default: "
                         "the best this CPU has), e.g. 2 to compare with AVX-512 on the same machine")
    return ap


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse at once, before any suite runs: a --genuine-seed whose identities overlap the
    impostor source pool, or the faiss baseline wanted but not installed (with the fix)."""
    if args.genuine_seed < SOURCE_SEED + args.ids and SOURCE_SEED < args.genuine_seed + args.ids:
        raise SystemExit(f"palmnode bench: --genuine-seed {args.genuine_seed} with --ids {args.ids} overlaps the "
                         f"impostor source pool (seeds {SOURCE_SEED}..{SOURCE_SEED + args.ids - 1})")
    if not args.no_faiss:
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise SystemExit("palmnode bench: the faiss baseline needs faiss-cpu: "
                             "pip install -e '.[bench]' (or pass --no-faiss)") from None


def main(args: argparse.Namespace | None = None) -> dict:
    if args is None:
        args = add_arguments(argparse.ArgumentParser()).parse_args()
    sizes = list(args.sizes)
    check_arguments(args)
    rng = np.random.default_rng(0)
    if args.cpu_path is not None:
        kernels.dispatch_level(args.cpu_path)
    out: dict = {"dispatch_level": kernels.dispatch_level(), "search_threads": args.threads}
    log(f"ROI and features on {args.frames} rendered frames ...")
    out["pipeline"] = pipeline_timings(args.frames)
    log("pipeline", json.dumps(out["pipeline"]))

    gen_t, gen_ids, gen_caps, gen_probes = render_set(args.genuine_seed, args.ids, args.cache)
    out["genuine_seed"] = args.genuine_seed
    src_t, _, _, _ = render_set(SOURCE_SEED, args.ids, args.cache)
    enrol = {int(i): t for t, i, c in zip(gen_t, gen_ids, gen_caps) if c == 0}
    probes = [(int(i), p) for p, i in zip(gen_probes, gen_ids) if p is not None and int(i) in enrol]
    a, b = probes[0][1], enrol[probes[0][0]]
    out["match_1to1_us"] = median_ms(lambda: matcher.match(a.base, b), 3000) * 1e3
    out["match_probe_1to1_us"] = median_ms(lambda: matcher.match_probe(a, b), 1000) * 1e3
    out["probe_variants"] = len(a)
    out["template_bytes"] = len(a.base.to_bytes())
    out["vein_check"] = surface_replicas(probes, enrol)
    log("vein check", json.dumps(out["vein_check"]))

    src_recs = matcher.pack_records(src_t)[0]
    src_sigs = signatures_of(src_recs)
    n_max = max(sizes)
    recs, sigs = synth_entries(src_recs, n_max, rng)
    log(f"synthesised {n_max} impostor entries from {len(src_t)} rendered templates")

    # impostor distributions: synthesised entries vs real rendered impostors (the source pool)
    n_chk = min(5000, n_max)
    real_imp, syn_imp, real_pf, syn_pf = [], [], [], []
    live_src = np.ones(len(src_t), np.uint8)
    progress = Progress("impostor distributions", min(100, len(probes)))
    for _, p in probes[:100]:
        real_imp.append(full_scores(p, src_recs))
        syn_imp.append(full_scores(p, recs[:n_chk]))
        psig = pf.signature_variants(p.base)
        real_pf.append(kernels.prefilter_scores(psig, src_sigs, live_src))
        syn_pf.append(kernels.prefilter_scores(psig, sigs[:n_chk], np.ones(n_chk, np.uint8)))
        progress.update()
    progress.close()

    def summary(x):
        x = np.concatenate(x).astype(np.float64)
        return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std()),
                "p99": float(np.quantile(x, 0.99)), "p99.9": float(np.quantile(x, 0.999)), "max": float(x.max())}
    out["impostors"] = {"full_real": summary(real_imp), "full_synthesised": summary(syn_imp),
                        "prefilter_real": summary(real_pf), "prefilter_synthesised": summary(syn_pf)}
    log("impostors", json.dumps(out["impostors"]))

    # recall and 1:N timing per size: Gallery.search vs faiss IndexBinaryFlat vs NumPy, same records
    enrol_ids = sorted(enrol)
    enrol_recs = matcher.pack_records([enrol[i] for i in enrol_ids])[0]
    enrol_sigs = signatures_of(enrol_recs)
    slot = {i: j for j, i in enumerate(enrol_ids)}
    n_exh = min(10_000, n_max)
    exh_max, mate_full = [], []
    progress = Progress(f"mates and {n_exh} impostors fully matched", len(probes))
    for i, p in probes:
        others = np.array([j != slot[i] for j in range(len(enrol_ids))])
        exh_max.append(max(float(full_scores(p, recs[:n_exh]).max()), float(full_scores(p, enrol_recs[others]).max())))
        mate_full.append(float(full_scores(p, enrol_recs[slot[i]][None])[0]))
        progress.update()
    progress.close()
    threshold = decision_threshold()
    out["recall"] = {"genuine_probes": len(probes), "decision_threshold": threshold, "by_gallery": {}}
    out["search"] = {}
    test_probes = [p for _, p in probes[:args.repeat]]
    for n in sizes:
        g = gallery_of(np.concatenate([recs[:n], enrol_recs]), np.concatenate([sigs[:n], enrol_sigs]), args.threads,
                       [f"p{i}" for i in range(n)] + [f"mate{i}" for i in enrol_ids])
        total = n + len(enrol_ids)
        size, k1 = g.prefilter.shortlist_size(total), g.prefilter.stage1_size(total)
        progress = Progress(f"recall at {n}", len(probes))
        first, dropped, missed, drop_stage1, fast = [], [], [], [], []
        for j, (i, p) in enumerate(probes):
            mate = n + slot[i]
            snap = g._snapshot()
            res, short, was_fast = g.search_with_shortlist(p, k=1)
            imp = short[short != mate]
            top = max(exh_max[j], float(full_scores(p, np.concatenate([recs[:n], enrol_recs]), imp).max()) if imp.size else -np.inf)
            first.append(mate_full[j] > top)
            dropped.append(mate not in set(short.tolist()))
            fast.append(was_fast)
            starts = np.concatenate([[0], np.cumsum([c for _, c, _ in snap])])
            scan = g.prefilter.signature_scores([t for t in p.templates if t.vein is not None], snap, starts)[0]
            drop_stage1.append(int(np.count_nonzero(scan[:mate] <= scan[mate])) + int(np.count_nonzero(scan[mate + 1:] < scan[mate])) >= k1)
            missed.append(not res or res[0].person_id != f"mate{i}")
            progress.update()
        progress.close()
        f, d, m, d1 = (np.array(x) for x in (first, dropped, missed, drop_stage1))
        acc = f & (np.array(mate_full) >= threshold) if threshold is not None else None
        out["recall"]["by_gallery"][str(n)] = {
            "shortlist": size, "stage1": k1, "full_match_first": int(f.sum()),
            "recall_loss": float((d & f).sum() / max(f.sum(), 1)), "dropped_any": float(d.mean()),
            "recall_loss_stage1": float((d1 & f).sum() / max(f.sum(), 1)),
            "search_loss": float((m & f).sum() / max(f.sum(), 1)),
            "fast_pass_sufficed": float(np.mean(fast)),
            "accepted_mates": None if acc is None else int(acc.sum()),
            "recall_loss_accepted": None if acc is None else float((d & acc).sum() / max(acc.sum(), 1)),
            "search_loss_accepted": None if acc is None else float((m & acc).sum() / max(acc.sum(), 1))}
        log(n, out["recall"]["by_gallery"][str(n)])

        progress = Progress(f"1:N timing at {n}", 2 * len(test_probes))

        def median_search_ms(gallery: gal.Gallery) -> float:
            ts = []
            for p in test_probes:
                t1 = time.perf_counter()
                gallery.search(p, k=5)
                ts.append(time.perf_counter() - t1)
                progress.update()
            return float(np.median(ts) * 1e3)

        for p in test_probes[:2]:
            g.search(p, k=5)                          # warm
        row = {"ms": median_search_ms(g), "entries": total, "shortlist": size,
               "bytes_per_palm": g.memory_bytes() / total}
        # the same probes as strangers: their mates' entries removed (live flags of copies)
        kept = [seg.live for seg in g._segments]
        for seg in g._segments:
            seg.live = seg.live.copy()
        for mate in range(n, total):
            g._segments[mate // SEGMENT].live[mate % SEGMENT] = 0
        row["stranger_ms"] = median_search_ms(g)
        progress.close()
        for seg, live in zip(g._segments, kept):
            seg.live = live
        psig0 = pf.signature_variants(test_probes[0].base)          # once per search, as Gallery.search does
        row["prefilter_scan_ms"] = median_ms(lambda g=g, psig0=psig0: [kernels.prefilter_scores(
            psig0, s.index[:s.count], s.live[:s.count]) for s in g._segments], 5)
        all_recs = np.concatenate([recs[:n], enrol_recs])
        bits, masks = _split_record(all_recs)
        qb, qm = _split_record(matcher.pack_records([test_probes[0].base])[0])
        row["numpy_ms"] = median_ms(lambda q=(qb[0], qm[0], bits, masks): numpy_search(*q), 3)
        row["numpy_ratio"] = row["numpy_ms"] / row["ms"]
        del bits, masks
        if not args.no_faiss:
            import faiss
            faiss.omp_set_num_threads(args.threads)
            codes = all_recs.view(np.uint8)
            index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
            index.add(codes)
            qs = [matcher.pack_records([p.base])[0].view(np.uint8) for p in test_probes]
            fts = []
            for q in qs:
                t1 = time.perf_counter()
                index.search(q, 5)
                fts.append(time.perf_counter() - t1)
            row["faiss_binaryflat_ms"] = float(np.median(fts) * 1e3)
            row["faiss_bits"] = int(codes.shape[1] * 8)
            row["faiss_ratio"] = row["faiss_binaryflat_ms"] / row["ms"]
            del index
        out["search"][str(n)] = row
        log(n, row)
        del g, all_recs
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
