"""Rendering speed on one core: ``python -m palmnode.biometrics.synth.benchmark [--frames 300]``.

Prints one JSON object: frames/s for single frames and for NIR+surface pairs at 640×480 (skin
already cached, as in a session or the camera emulator), and the one-off cost of a new palm.
Medians of several rounds, since the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import cv2
import numpy as np

from .capture import sample_capture
from .identity import Identity
from .render import render, render_pair
from .skin import channel_canvases, clear_caches


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    idents = [Identity.from_seed(900 + i) for i in range(4)]
    rng = np.random.default_rng(0)
    caps = [sample_capture(rng, session=1, rotation="any") for _ in range(args.frames // args.rounds)]
    for ident in idents:
        render_pair(ident, caps[0])
    single, pair = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for k, cap in enumerate(caps):
            render(idents[k % 4], cap, "nir")
        single.append(len(caps) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for k, cap in enumerate(caps):
            render_pair(idents[k % 4], cap)
        pair.append(2 * len(caps) / (time.perf_counter() - t0))
        print(f"round: single {single[-1]:.0f} frames/s, pairs {pair[-1]:.0f} frames/s", file=sys.stderr)
    clear_caches()
    build = []
    for i in range(20):
        ident = Identity.from_seed(5000 + i)
        t0 = time.perf_counter()
        channel_canvases(ident, 1)
        channel_canvases(ident, 2)
        build.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({
        "size": "640x480", "threads": 1,
        "single_frames_per_s": round(statistics.median(single), 1),
        "pair_frames_per_s": round(statistics.median(pair), 1),
        "new_palm_two_sessions_ms": round(statistics.median(build), 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
