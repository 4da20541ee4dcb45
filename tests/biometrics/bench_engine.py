"""Engine speed and pre-filter recall (a script, not a test): features, 1:1, 1:N, faiss.

    .venv/bin/python tests/biometrics/bench_engine.py [--sizes 10000,100000,1000000] [--faiss]

Prints one JSON object. 1:N galleries are built directly in the packed arrays from a pool of
encoded ROI-like palms (tests/biometrics/fake_palms.py) with random shifts and bit noise per
entry ("random but realistic"), since encoding 1M palms would take minutes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import fake_palms  # noqa: E402

from palmnode.biometrics import features, gallery as gal, kernels, matcher  # noqa: E402


def median_ms(fn, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def realistic_gallery(pool, n, rng, shortlist):
    """A Gallery of n entries: pool templates moved by up to ±2 cells, 15% of code bits flipped."""
    g = gal.Gallery(shortlist=shortlist, segment_size=1 << 16, first_capacity=1 << 16)
    recs = np.stack([gal._record(t)[0] for t in pool])
    sigs = np.stack([features.signature(t) for t in pool])
    start = 0
    segs = []
    while start < n:
        m = min(1 << 16, n - start)
        seg = gal._Segment(1 << 16)
        src = rng.integers(0, len(pool), m)
        r = recs[src].copy()
        noise = rng.random((m, r.shape[1], 32)) < 0.15
        flip = np.packbits(noise, axis=2, bitorder="little").view(np.uint32)[..., 0]
        code_words = np.ones(r.shape[1], bool)
        code_words[96:128] = False           # surface mask plane
        code_words[176:192] = False          # vein mask plane
        r[:, code_words] ^= flip[:, code_words]
        r[:, 128:192] &= np.uint32(0xFFFF)
        r = np.roll(r, 0)
        s = sigs[src].copy()
        sflip = rng.integers(0, 2**64, (m, 8), dtype=np.uint64) & rng.integers(0, 2**64, (m, 8), dtype=np.uint64) \
            & rng.integers(0, 2**64, (m, 8), dtype=np.uint64)
        sflip[:, [3, 7]] = 0
        s ^= sflip
        seg.records[:m], seg.sigs[:m], seg.live[:m], seg.flags[:m] = r, s, 1, 3
        seg.person[:m] = np.arange(start, start + m)
        seg.count = m
        segs.append(seg)
        start += m
    g._segments = tuple(segs)
    g._person_ids = [f"p{i}" for i in range(n)]
    g._live = n
    return g


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--faiss", action="store_true")
    ap.add_argument("--recall-ids", type=int, default=300)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    out: dict = {"dispatch_level": kernels.dispatch_level()}

    idents = [fake_palms.identity(i) for i in range(args.recall_ids)]
    caps = [[fake_palms.capture(idents[i], 1000 * i + s) for s in range(2)] for i in range(args.recall_ids)]
    s_roi, v_roi = caps[0][0]
    out["features_both_ms"] = median_ms(lambda: features.encode(s_roi, v_roi), 200)
    out["features_surface_ms"] = median_ms(lambda: features.encode(s_roi, None), 200)
    out["features_vein_ms"] = median_ms(lambda: features.encode(None, v_roi), 200)
    enrol = [features.encode(*c[0]) for c in caps]
    probe = [features.encode(*c[1]) for c in caps]
    a, b = probe[0], enrol[0]
    out["match_1to1_us"] = median_ms(lambda: matcher.match(a, b), 2000) * 1e3
    out["template_bytes"] = len(a.to_bytes())

    # pre-filter recall loss: genuine mates the full match ranks first but the pre-filter drops.
    # Per probe: its mate's pre-filter score vs the pooled impostor score distribution; at a
    # gallery of N the shortlist S keeps scores up to the S/N impostor quantile.
    full = np.array([[matcher.match(p, e).fused for e in enrol] for p in probe])
    first = np.argmax(full, axis=1) == np.arange(len(probe))
    sigs = np.stack([features.signature(t) for t in enrol])
    live = np.ones(len(enrol), np.uint8)
    gen, imp = [], []
    for i, p in enumerate(probe):
        sc = kernels.prefilter_scores(features.signature_variants(p), sigs, live).astype(np.int64)
        gen.append(sc[i])
        imp.append(np.delete(sc, i))
    gen, imp = np.array(gen), np.concatenate(imp)
    out["recall"] = {"identities": len(probe), "full_match_rank1": float(first.mean()),
                     "impostor_scores": int(imp.size), "by_gallery": {}}
    for n in (10_000, 100_000, 1_000_000):
        q = np.quantile(imp, gal.SHORTLIST / n, method="lower")
        lost = first & (gen > q)
        out["recall"]["by_gallery"][str(n)] = {"shortlist": gal.SHORTLIST, "impostor_quantile": gal.SHORTLIST / n,
                                               "cut_score": int(q), "recall_loss": float(lost.sum() / max(first.sum(), 1))}

    # 1:N timing
    out["search"] = {}
    for n in [int(x) for x in args.sizes.split(",") if x]:
        g = realistic_gallery(enrol, n, rng, gal.SHORTLIST)
        p = probe[1]
        t = median_ms(lambda: g.search(p, k=5), 7)
        row = {"ms": t, "bytes_per_palm": g.memory_bytes() / n}
        scores_ms = median_ms(lambda: [kernels.prefilter_scores(features.signature_variants(p), s.sigs[:s.count], s.live[:s.count]) for s in g._segments], 5)
        row["prefilter_scan_ms"] = scores_ms
        if args.faiss:
            import faiss
            codes = np.concatenate([s.records[:s.count] for s in g._segments]).view(np.uint8)
            index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
            index.add(codes)
            q = np.ascontiguousarray(gal._record(p)[0].view(np.uint8)[None, :])
            faiss.omp_set_num_threads(1)
            row["faiss_binaryflat_ms"] = median_ms(lambda: index.search(q, 5), 5)
            row["faiss_bits"] = int(codes.shape[1] * 8)
            del index, codes
        out["search"][str(n)] = row
        print(n, row, file=sys.stderr)
        del g
    print(json.dumps(out))


if __name__ == "__main__":
    main()
