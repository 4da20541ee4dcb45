"""``palmnode bench --suite gate``: the working gate at a store's scale.

The demo's store (reference controller, virtual gate, node with a vault, mutual TLS) with a crowd
of ``--enrolled`` synthetic palms already in the gallery (each modality quadrant drawn from a
different rendered person, as the engine bench builds its galleries), then people enrolled
through the real enrol flow and a stream of arrivals: enrolled people with hands from a later
session, and strangers. Measured: hand present → decision latency (p50/p99), enrolment time of
one palm, correct decisions for enrolled people, strangers admitted. Baseline, measured in the
same run: ``lit_frame_floor`` — the time the first attempt spent waiting for its two lit
camera frames, which no processing can shorten.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
import sys

import numpy as np

from palmnode import demo
from palmnode.biometrics import bench as engine_bench
from palmnode.biometrics import matcher


def add_arguments(ap: argparse.ArgumentParser) -> None:
    from palmnode import cliargs

    ap.add_argument("--enrolled", type=cliargs.count, default=100_000,
                    help="gate suite: synthetic palms in the gallery before the run; node suite: people in the "
                    "vault of the node whose memory is measured (default 100000)")
    ap.add_argument("--people", type=cliargs.count, default=20,
                    help="gate suite: people enrolled through the enrol flow (default 20)")
    ap.add_argument("--arrivals", type=cliargs.count, default=150, help="gate suite: arrivals (default 150)")


def crowd(n: int, args: argparse.Namespace):
    """A gallery of ``n`` synthetic palms, quadrant-mixed from rendered people (cached renders)."""
    templates, _, _, _ = engine_bench.render_set(30_000, args.ids, args.cache)
    recs = matcher.pack_records(templates)[0]
    mixed, sigs = engine_bench.synth_entries(recs, n, np.random.default_rng(3))
    return engine_bench.gallery_of(mixed, sigs, args.threads)


def arrivals(counts: Mapping[str, int]) -> tuple[int, int]:
    """(enrolled people's arrivals, strangers') from the demo's outcome counts; an arrival that
    ended asked to try again counts for whoever it was ("stranger retry (...)" for a stranger)."""
    enrolled = sum(counts.get(k, 0) for k in ("identified correctly", "wrong person", "enrolled not recognised")) \
        + sum(v for k, v in counts.items() if k.startswith("retry"))
    strangers = counts.get("stranger refused", 0) + counts.get("stranger admitted", 0) \
        + sum(v for k, v in counts.items() if k.startswith("stranger retry"))
    return enrolled, strangers


def main(args: argparse.Namespace) -> dict:
    print(f"gate bench: building a gallery of {args.enrolled} synthetic palms", file=sys.stderr, flush=True)
    gallery = crowd(args.enrolled, args)
    plan = demo.Plan(people=args.people, arrivals=args.arrivals, strangers=0.25, unplug_camera=False, payment=False)
    from palmnode import stopsignals

    summary = stopsignals.run_trio(lambda: demo.play(plan, out=sys.stderr, gallery=gallery))  # Ctrl-C, SIGTERM: unwound
    counts = summary.counts
    enrolled_arrivals, strangers = arrivals(counts)
    lat = np.array(summary.latencies_ms)
    floor = np.array(summary.frame_waits_ms)
    p50 = float(np.percentile(lat, 50)) if lat.size else None
    floor50 = float(np.percentile(floor, 50)) if floor.size else None
    return {
        "benchmark": "gate_identify",
        "gallery_palms": args.enrolled + len(summary.enrolled),
        "search_threads": args.threads,
        "enrolled_through_flow": len(summary.enrolled),
        "enrol_one_palm_s": {"median": _r(np.median(summary.enrol_s)) if summary.enrol_s else None,
                             "max": _r(max(summary.enrol_s)) if summary.enrol_s else None, "budget": 5.0},
        "enrol_failures": len(summary.enrol_failed),
        "decisions": len(lat),
        "latency_ms": {"p50": _r(p50), "p95": _r(np.percentile(lat, 95)) if lat.size else None,
                       "p99": _r(np.percentile(lat, 99)) if lat.size else None,
                       "max": _r(lat.max()) if lat.size else None, "budget_p50": 150, "budget_p99": 300},
        "baseline": "lit_frame_floor",
        "baseline_p50_ms": _r(floor50),
        "ratio_p50_to_baseline": _r(p50 / floor50) if p50 and floor50 else None,
        "enrolled_arrivals": enrolled_arrivals,
        "correct_for_enrolled": _r(counts["identified correctly"] / enrolled_arrivals, 4) if enrolled_arrivals else None,
        "stranger_arrivals": strangers,
        "strangers_admitted": counts["stranger admitted"],
        "outcomes": dict(sorted(counts.items())),
        "silent": counts["no decision"],
    }


def _r(x, digits: int = 1):
    return None if x is None else round(float(x), digits)
