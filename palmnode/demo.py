"""``palmnode demo``: a virtual gate, a node on it and a scenario, shown live, then a summary.

The node is configured exactly as on a real gate (ports and a camera URL); only the endpoints
come from the virtual gate started beside it.
"""
from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import trio

from drivers.card_reader.reads import BadgeRead, PaymentCardRead
from drivers.illuminator.driver import DeadmanTripped, OverTemperature
from palmnode import config
from palmnode.actors import DeviceHealth, DeviceState, DeviceStateChanged, GateState, GateStateChanged
from palmnode.gate.presence import PresenceChanged
from palmnode.node import Node
from palmnode.sim import scenario as sc
from palmnode.sim.gate import Endpoints, VirtualGate

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "config" / "scenarios" / "demo.toml"
READY_TIMEOUT_S = 10.0


def node_config(endpoints: Endpoints, folder: Path, node_id: str = "demo-gate") -> config.Config:
    """A node config for the given endpoints, the same shape as config/sim.toml."""
    return config.from_dict({
        "node": {"node_id": node_id, "log_level": "warning"},
        "devices": {
            "proximity": {"port": endpoints.proximity},
            "card_reader": {"port": endpoints.card_reader, "token_key_file": str(folder / "card_token.key")},
            "illuminator": {"port": endpoints.illuminator},
            "camera": {"source": endpoints.camera},
        },
    }, base=folder)


class Summary:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.lost_at: dict[str, float] = {}
        self.recoveries: list[tuple[str, float]] = []
        self.health: tuple[DeviceHealth, ...] = ()

    def record(self, ev: object, t: float, out: TextIO) -> None:
        line = None
        match ev:
            case PresenceChanged(present=True, distance_mm=d):
                self.counts["hands"] += 1
                line = f"hand present at {d} mm"
            case PresenceChanged(present=False):
                line = "hand gone"
            case PaymentCardRead():
                self.counts["payment cards"] += 1
                line = f"payment card {ev.scheme} …{ev.last4} exp {ev.expiry} token {ev.token!r}"
            case BadgeRead():
                self.counts["badges"] += 1
                line = f"badge uid {ev.uid_hex}"
            case DeviceStateChanged(name=name, new=DeviceState.LOST, error=err):
                self.lost_at[name] = t
                self.counts["devices lost"] += 1
                line = f"{name} LOST ({err})"
            case DeviceStateChanged(name=name, new=DeviceState.READY):
                if name in self.lost_at:
                    self.recoveries.append((name, t - self.lost_at.pop(name)))
                line = f"{name} READY"
            case GateStateChanged(new=new):
                line = f"gate {new.value.upper()}"
            case OverTemperature() | DeadmanTripped():
                self.counts[type(ev).__name__] += 1
                line = f"illuminator: {ev!r}"
        if line:
            print(f"{t:7.2f}s  {line}", file=out, flush=True)


async def play(script: sc.Scenario, *, seed: int = 0, out: TextIO = sys.stdout) -> Summary:
    summary = Summary()
    with tempfile.TemporaryDirectory(prefix="palmnode-demo-") as tmp:
        folder = Path(tmp)
        gate = VirtualGate(folder / "sim", camera_port=0, seed=seed)
        async with trio.open_nursery() as sim:
            endpoints = await sim.start(gate.run)
            node = Node(node_config(endpoints, folder))
            t0 = trio.current_time()
            async with trio.open_nursery() as nursery, node.bus.subscribe(buffer=1024) as events:
                async def show() -> None:
                    async for ev in events:
                        summary.record(ev, trio.current_time() - t0, out)

                nursery.start_soon(show)
                await nursery.start(node.run)
                with trio.move_on_after(READY_TIMEOUT_S):
                    while node.health.gate is not GateState.READY:
                        await trio.sleep(0.05)
                print(f"{trio.current_time() - t0:7.2f}s  every device ready: playing {script.name} "
                      f"({script.duration:.0f} s)", file=out, flush=True)
                await gate.play(script)
                await trio.sleep(2.5)  # let the last replugged device come back
                summary.health = node.health.snapshot()
                nursery.cancel_scope.cancel()  # the node stops first, lights off, ports closed
            sim.cancel_scope.cancel()
    return summary


def report(summary: Summary, out: TextIO = sys.stdout) -> None:
    print("\nsummary", file=out)
    for key, n in sorted(summary.counts.items()):
        print(f"  {key:<16} {n}", file=out)
    for name, seconds in summary.recoveries:
        print(f"  {name} recovered after {seconds:.2f} s lost", file=out)
    for h in summary.health:
        dropped = sum(v for k, v in h.counters.items() if k.startswith("dropped_"))
        print(f"  {h.name:<12} {h.state.value:<8} restarts {h.restarts:<3} dropped {dropped}", file=out)
