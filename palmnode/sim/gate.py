"""The virtual gate: one emulator per device, at stable paths in a run folder, driven by scenarios.

The node under test never knows: it opens the same kind of ports and URL a real gate has.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Callable, Mapping

import attrs
import numpy as np
import trio

from drivers.camera.emulator import CameraEmulator, Lighting
from drivers.card_reader.cards import Badge, EmvCard
from drivers.card_reader.emv import MASTERCARD_AID, VISA_AID
from drivers.card_reader.emulator import CardReaderEmulator
from drivers.illuminator.emulator import IlluminatorEmulator
from drivers.proximity.emulator import ProximityEmulator
from palmnode.logs import event
from palmnode.sim import scenario as sc
from palmnode.sim.scene import HandScene

log = logging.getLogger("palmnode.sim")

DEFAULT_RUN_DIR = Path("/tmp/palmnode-sim")
DEFAULT_CAMERA_PORT = 8554


@attrs.frozen
class Endpoints:
    """Where the node finds each device of the virtual gate."""
    proximity: str
    card_reader: str
    illuminator: str
    camera: str

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))


class VirtualGate:
    """Every device emulator of one gate. Start with ``endpoints = await nursery.start(gate.run)``."""

    def __init__(self, run_dir: Path = DEFAULT_RUN_DIR, *, camera_port: int = DEFAULT_CAMERA_PORT,
                 seed: int = 0, channels: Mapping[str, int] | None = None, thermistor_pin: int = 0,
                 fps: int = 30, width: int = 640, height: int = 480,
                 scene: Callable[[Lighting, float], np.ndarray] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.channels = dict(channels or {"ir": 9, "surface": 10})
        self.hand = HandScene(width=width, height=height, seed=seed)
        self.proximity = ProximityEmulator(self.run_dir / "proximity", seed=seed)
        self.card_reader = CardReaderEmulator(self.run_dir / "card_reader", seed=seed + 1)
        self.illuminator = IlluminatorEmulator(self.run_dir / "illuminator", seed=seed + 2,
                                               thermistor_pin=thermistor_pin)
        self.camera = CameraEmulator(scene=scene or self.hand.render, lighting=self.lighting,
                                     port=camera_port, fps=fps, width=width, height=height, seed=seed + 3)
        self.devices = {"proximity": self.proximity, "card_reader": self.card_reader,
                        "illuminator": self.illuminator, "camera": self.camera}

    def lighting(self) -> Lighting:
        """Which lights the illuminator board has on right now (the camera renders with it)."""
        return Lighting(ir=self.illuminator.pwm(self.channels["ir"]),
                        surface=self.illuminator.pwm(self.channels["surface"]))

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(proximity=str(self.proximity.link), card_reader=str(self.card_reader.link),
                         illuminator=str(self.illuminator.link), camera=self.camera.url)

    async def run(self, *, task_status: trio.TaskStatus[Endpoints] = trio.TASK_STATUS_IGNORED) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        async with trio.open_nursery() as nursery:
            for emulator in self.devices.values():
                await nursery.start(emulator.run)
            nursery.start_soon(self._watch)
            task_status.started(self.endpoints)

    async def _watch(self) -> None:
        """Log what the devices see: hosts attaching and leaving, lights changing."""
        seen: dict[str, object] = {}
        while True:
            now = {name: getattr(emu, "host_attached", None) for name, emu in self.devices.items()}
            now["lights"] = attrs.astuple(self.lighting())
            for key, value in now.items():
                if seen.get(key, value if key != "lights" else None) != value:
                    if key == "lights":
                        event(log, "lights", ir=round(value[0], 3), surface=round(value[1], 3))
                    elif value is not None:
                        event(log, "host attached" if value else "host detached", device=key)
                    seen[key] = value
            await trio.sleep(0.1)

    # ---- scenario actions ----------------------------------------------------------------
    async def play(self, scenario: sc.Scenario) -> None:
        """Play every step at its time; returns when the last step has finished."""
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for step in scenario.steps:
                await trio.sleep_until(start + step.at)
                event(log, "scenario step", action=type(step).__name__.lower(), **_describe(step))
                nursery.start_soon(self.apply, step)

    async def apply(self, step: sc.Step) -> None:
        match step:
            case sc.Hand():
                await self.hover(step.distance_mm, step.seconds, approach_s=step.approach_s,
                                 identity=step.identity, session=step.session, hand=step.hand)
            case sc.Card():
                await self.tap(_card(step), step.seconds)
            case sc.Unplug():
                await self.devices[step.device].unplug(step.seconds)
            case sc.Garbage() if step.device == "camera":
                self.camera.inject_garbage(1)  # one corrupt JPEG part
            case sc.Garbage():
                self.devices[step.device].inject_garbage(step.bytes)
            case sc.Corrupt():
                self.devices[step.device].corrupt_next(step.frames)
            case sc.Stall():
                self.devices[step.device].stall(step.seconds)
            case sc.SlowFirstAnswer():
                self.devices[step.device].slow_first_answer(step.seconds)
            case sc.Heat():
                self.illuminator.set_ambient(step.celsius)

    async def hover(self, distance_mm: float, seconds: float, *, approach_s: float = 0.4,
                    identity: int = 0, session: int = 1, hand: str | None = None,
                    far_mm: float = 450.0) -> None:
        """Person ``identity``'s ``hand`` (a renderer seed; ``session`` 1 or 2, as a month apart)
        comes in from ``far_mm``, hovers at ``distance_mm`` with a slight tremor, and leaves.

        The renderer is warmed first (it runs in this process), so a new person's first frame
        costs the camera no more than any other: a real camera has no render time."""
        self.hand.present(identity, session=session, hand=hand)
        self.hand.distance_mm = distance_mm
        for light in (Lighting(ir=1.0), Lighting(surface=1.0)):
            await trio.to_thread.run_sync(self.hand.render, light, 0.0)
        self.hand.distance_mm = None
        t0 = trio.current_time()
        total = approach_s * 2 + seconds
        try:
            while (t := trio.current_time() - t0) < total:
                if t < approach_s:
                    d = far_mm + (distance_mm - far_mm) * _ease(t / approach_s)
                elif t < approach_s + seconds:
                    d = distance_mm + 3.0 * math.sin(2 * math.pi * 1.3 * t)
                else:
                    d = distance_mm + (far_mm - distance_mm) * _ease((t - approach_s - seconds) / approach_s)
                self.proximity.set_target(d)
                self.hand.distance_mm = d
                await trio.sleep(0.01)
        finally:
            self.proximity.set_target(None)
            self.hand.absent()

    async def tap(self, card: Badge | EmvCard, seconds: float) -> None:
        """Hold ``card`` in the reader's field for ``seconds``."""
        self.card_reader.place(card)
        try:
            await trio.sleep(seconds)
        finally:
            self.card_reader.remove()


def _ease(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def _card(step: sc.Card) -> Badge | EmvCard:
    if step.kind == "emv":  # the card's application follows its number's scheme
        aid = MASTERCARD_AID if step.pan[0] in "25" else VISA_AID
        return EmvCard(pan=step.pan, expiry=step.expiry, aid=aid)
    return Badge(uid=bytes.fromhex(step.uid))


def _describe(step: sc.Step) -> dict[str, object]:
    fields = attrs.asdict(step)
    fields.pop("pan", None)  # a card number never reaches a log, even a simulated one,
    fields.pop("expiry", None)  # nor its expiry (the node logs neither of a card read)
    return fields
