"""Hand present → decision on the virtual gate: latency percentiles and where the time goes.

``python -m palmnode.gate.latency --people 12 --trials 40`` (or a CLI subcommand wired with
``add_arguments``/``main``): starts a virtual gate and a node in one process, enrols rendered
people (session-1 captures) plus rendered fillers, then holds session-2 hands of enrolled people
and, one in four, strangers over the gate; prints each decision with its attempts
(``IdentifyFlow.last_trace``) and the first pair's split (``Capturer.timings``), then medians and
percentiles. The camera emulator renders in the same process, so its frame rate and latency
suffer from any load on the host: read the load average printed at the end with the numbers.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import trio

from drivers.camera.scene import Lighting
from palmnode.actors import GateState
from palmnode.biometrics import features, roi, synth
from palmnode.biometrics.gallery import Gallery
from palmnode.biometrics.types import BadImage, PalmTemplate, RoiFailure
from palmnode.gate.capture import CapturePolicy, Capturer
from palmnode.gate.events import Decision
from palmnode.gate.identify import IdentifyFlow, IdentifyPolicy
from palmnode.gate.people import People

READY_TIMEOUT_S = 15.0


def enrolment_templates(seed: int, captures: int = 3) -> list[PalmTemplate]:
    """Templates of ``seed``'s right palm from ``captures`` session-1 renders."""
    ident = synth.Identity.from_seed(seed, hand="right")
    out = []
    for k in range(captures):
        cap = synth.sample_capture(np.random.default_rng([seed, k]), session=1)
        nir, surface = synth.render_pair(ident, cap)
        found = roi.extract_roi(nir)
        if isinstance(found, RoiFailure):
            continue
        try:
            out.append(features.encode(roi.warp(surface, found), roi.warp(nir, found)))
        except BadImage:
            continue
    return out


async def hover(gate, identity: int, *, session: int = 1, hand: str | None = "right", seconds: float = 0.8,
                distance_mm: float = 150.0, approach_s: float = 0.3, far_mm: float = 450.0) -> None:
    """A rendered hand comes in, hovers with a slight tremor, leaves (renderer warmed first: a
    real camera has no render time, and a new person's first render costs the emulator ~50 ms)."""
    scene = gate.hand
    scene.present(identity, session=session, hand=hand)
    scene.distance_mm = distance_mm
    await trio.to_thread.run_sync(scene.render, Lighting(ir=1.0), 0.0)
    await trio.to_thread.run_sync(scene.render, Lighting(surface=1.0), 0.0)
    scene.distance_mm = None
    t0 = trio.current_time()
    total = approach_s * 2 + seconds
    try:
        while (t := trio.current_time() - t0) < total:
            if t < approach_s:
                x = t / approach_s
                d = far_mm + (distance_mm - far_mm) * x * x * (3 - 2 * x)
            elif t < approach_s + seconds:
                d = distance_mm + 3.0 * math.sin(2 * math.pi * 1.3 * t)
            else:
                x = min((t - approach_s - seconds) / approach_s, 1.0)
                d = distance_mm + (far_mm - distance_mm) * x * x * (3 - 2 * x)
            gate.proximity.set_target(d)
            scene.distance_mm = d
            await trio.sleep(0.01)
    finally:
        gate.proximity.set_target(None)
        scene.absent()


async def measure(*, people: int = 12, trials: int = 40, fillers: int = 0, threshold: float = 0.30,
                  out=sys.stdout) -> dict:
    from palmnode.demo import (
        node_config,  # the node's config for a virtual gate (lead's module)
    )
    from palmnode.metrics import Metrics
    from palmnode.node import Node
    from palmnode.sim.gate import VirtualGate
    from palmnode.vault import Vault, VaultKeys

    rows = []
    with tempfile.TemporaryDirectory(prefix="palmnode-latency-") as tmp:
        folder = Path(tmp)
        gate = VirtualGate(folder / "sim", camera_port=0, seed=5)
        async with trio.open_nursery() as nursery:
            node = Node(node_config(await nursery.start(gate.run), folder))
            await nursery.start(node.run)
            vault = Vault.open(folder / "vault.db", VaultKeys.from_secret(os.urandom(32)), node_id="latency")
            gallery, metrics = Gallery(), Metrics()
            register = People(vault, gallery, "latency", node.bus, metrics)
            for i in range(fillers):  # other people's palms: a bigger search, not in the trials
                for t in await trio.to_thread.run_sync(enrolment_templates, 100_000 + i, 1):
                    gallery.add(f"filler-{i}", "right", t)
            seeds = list(range(500, 500 + people))
            ids = {}
            for s in seeds:
                templates = await trio.to_thread.run_sync(enrolment_templates, s)
                ids[s] = (await register.enrol(None, None, {"right": templates})).person_id
            with trio.fail_after(READY_TIMEOUT_S):
                while node.health.gate is not GateState.READY:
                    await trio.sleep(0.05)
            capturer = Capturer(node.lights, node.frames, CapturePolicy())
            flow = IdentifyFlow(node.bus, capturer, gallery, people=register, metrics=metrics,
                                policy=IdentifyPolicy(threshold=threshold))
            await nursery.start(flow.run)
            async with node.bus.subscribe(Decision, buffer=64) as decisions:
                for k in range(trials):
                    stranger = k % 4 == 3
                    seed = 900_000 + k if stranger else seeds[k % people]
                    async with trio.open_nursery() as hands:
                        hands.start_soon(functools.partial(hover, gate, seed, session=2))
                        d = await decisions.receive()
                    ok = d.outcome == "unknown" if stranger else d.person_id == ids[seed]
                    t = capturer.timings
                    rows.append((stranger, ok, d, flow.last_trace, t))
                    attempts = " ".join(f"[{a.started_ms:.0f}+{a.waited_ms:.0f}+{a.search_ms:.0f} {a.result}]"
                                        for a in flow.last_trace)
                    print(f"{'stranger' if stranger else 'enrolled'} {d.outcome:<10} {'ok ' if ok else 'BAD'} "
                          f"{d.latency_ms:6.1f} ms  first pair: lights {t.lights_ms:.1f} nir {t.nir_wait_ms:.1f} "
                          f"surface {t.surface_wait_ms:.1f} finish {t.process_ms:.1f} (settle {t.settle_ms:.0f}, "
                          f"skipped {t.skipped})  attempts {attempts}", file=out, flush=True)
            vault.close()
            nursery.cancel_scope.cancel()
    return summarise(rows, out)


def summarise(rows, out=sys.stdout) -> dict:
    def pct(values, q):
        return float(np.percentile(values, q)) if values else float("nan")

    every = [r[2].latency_ms for r in rows]
    known = [r[2].latency_ms for r in rows if not r[0]]
    strangers = [r[2].latency_ms for r in rows if r[0]]
    later = [a.waited_ms for r in rows for a in r[3][1:]]
    searches = [a.search_ms for r in rows for a in r[3] if a.result == "probe"]
    result = {
        "decisions": len(rows), "correct": sum(r[1] for r in rows),
        "p50_ms": pct(every, 50), "p90_ms": pct(every, 90), "p99_ms": pct(every, 99), "max_ms": max(every, default=0),
        "enrolled_p50_ms": pct(known, 50), "strangers_p50_ms": pct(strangers, 50),
        "lights_ms": statistics.median(r[4].lights_ms for r in rows),
        "nir_wait_ms": statistics.median(r[4].nir_wait_ms for r in rows),
        "surface_wait_ms": statistics.median(r[4].surface_wait_ms for r in rows),
        "finish_ms": statistics.median(r[4].process_ms for r in rows),
        "later_pair_ms": statistics.median(later) if later else float("nan"),
        "search_ms": statistics.median(searches) if searches else float("nan"),
        "load": os.getloadavg(),
    }
    print("\n".join(f"{k:>18}: {v:.1f}" if isinstance(v, float) else f"{k:>18}: {v}" for k, v in result.items()),
          file=out)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--people", type=int, default=12, help="enrolled rendered people (default 12)")
    parser.add_argument("--trials", type=int, default=40, help="hands held over the gate (1 in 4 a stranger)")
    parser.add_argument("--fillers", type=int, default=0, help="extra rendered palms in the gallery")
    parser.add_argument("--threshold", type=float, default=0.30, help="fused-score decision threshold")


def main(args: argparse.Namespace) -> int:
    trio.run(lambda: measure(people=args.people, trials=args.trials, fillers=args.fillers,
                             threshold=args.threshold))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(main(ap.parse_args()))
