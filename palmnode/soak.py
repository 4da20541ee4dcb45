"""Bad input on every port while the node runs: drops are counted, memory does not grow.

Part of ``palmnode bench``. A virtual gate and a node run in this process; every port gets, over
and over: random bytes, truncated frames, frames with wrong checksums and frames whose length
field is oversize (each in the device's own framing), and the camera corrupt JPEG parts. The
result is the node's resident memory before and after, the drops each device counted and the
gate state at the end (it must be READY once the abuse stops).
"""
from __future__ import annotations

import random
import resource
import sys
import tempfile
from pathlib import Path

import trio

from palmnode.actors import GateState
from palmnode.demo import node_config
from palmnode.node import Node
from palmnode.sim.gate import VirtualGate

PAGE_KB = resource.getpagesize() // 1024


def rss_kb() -> int:
    """This process's resident set size, in KiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_KB


def _abuse(rng: random.Random) -> dict[str, bytes]:
    """One round of bad input per serial device, in each device's own framing."""
    noise = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
    return {
        # TFmini: a truncated data frame, a frame with a wrong checksum, random bytes
        "proximity": b"\x59\x59\x96\x00" + b"\x59\x59\x96\x00\x10\x0b\x00\x08\x00" + noise,
        # PN532: an extended frame claiming 65535 bytes, a frame with a bad LCS, random bytes
        "card_reader": b"\x00\x00\xff\xff\xff\xff\xff\x02\xd5" + b"\x00\x00\xff\x05\x00\xd5" + noise,
        # Firmata: a sysex that never ends (oversize), a truncated analog message, random bytes
        "illuminator": b"\xf0\x71" + bytes(rng.getrandbits(7) for _ in range(3000)) + b"\xe0\x01" + noise,
    }


async def soak(seconds: float, *, warmup: float = 3.0, seed: int = 1) -> dict:
    rng = random.Random(seed)
    injected = 0
    with tempfile.TemporaryDirectory(prefix="palmnode-soak-") as tmp:
        folder = Path(tmp)
        gate = VirtualGate(folder / "sim", camera_port=0, seed=seed)
        async with trio.open_nursery() as sim:
            endpoints = await sim.start(gate.run)
            node = Node(node_config(endpoints, folder))
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                await trio.sleep(warmup)
                rss_before = rss_kb()
                end = trio.current_time() + seconds
                while trio.current_time() < end:
                    for name, data in _abuse(rng).items():
                        gate.devices[name].inject_garbage(data)
                        injected += len(data)
                    gate.proximity.corrupt_next(3)
                    gate.camera.inject_garbage(1)
                    await trio.sleep(0.05)
                rss_after = rss_kb()
                with trio.move_on_after(5.0):
                    while node.health.gate is not GateState.READY:
                        await trio.sleep(0.05)
                health = node.health.snapshot()
                gate_end = node.health.gate
                nursery.cancel_scope.cancel()
            sim.cancel_scope.cancel()
    return {
        "benchmark": "bad_input_soak",
        "window_s": seconds,
        "bytes_injected": injected,
        "drops": {h.name: {k: v for k, v in h.counters.items() if k.startswith("dropped_")} for h in health},
        "device_restarts": {h.name: h.restarts for h in health},
        "rss_kb_before": rss_before,
        "rss_kb_after": rss_after,
        "rss_growth_kb": rss_after - rss_before,
        "gate_state_after": gate_end.value,
    }


def main(seconds: float) -> dict:
    print(f"bad input on every port for {seconds:.0f} s ...", file=sys.stderr)
    from palmnode import stopsignals

    return stopsignals.run_trio(soak, seconds)  # a Ctrl-C or SIGTERM stops the node and the gate
