"""The node: config → supervision tree of device actors, health, event bus and structured logs."""
from __future__ import annotations

import functools
import logging
from typing import Awaitable, Callable

import attrs
import trio

from drivers.card_reader.reads import BadgeRead, PaymentCardRead
from drivers.illuminator.driver import BoardNotice, Cooled, DeadmanTripped, OverTemperature
from palmnode.actors import (Backoff, ChildContext, ChildSpec, DeviceStateChanged, EventBus,
                             GateStateChanged, HealthRegistry, Supervisor)
from palmnode.config import Config
from palmnode.devices import camera, card_reader, illuminator, proximity
from palmnode.devices.session import DeviceSession
from palmnode.gate.presence import PresenceChanged
from palmnode.logs import event

log = logging.getLogger("palmnode.node")

#: what the node logs as it happens (nothing biometric; cards as token prefix and last four)
LOGGED_EVENTS = (PresenceChanged, BadgeRead, PaymentCardRead, DeviceStateChanged, GateStateChanged,
                 OverTemperature, Cooled, DeadmanTripped, BoardNotice)


class Node:
    """One gate's node. ``await nursery.start(node.run)`` returns once every actor has started."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bus = EventBus()
        self.lights = illuminator.Lights()
        self.frames = camera.FrameSource()
        self.health: HealthRegistry | None = None
        self.supervisor: Supervisor | None = None

    def _device_specs(self, health: HealthRegistry, backoff: Backoff) -> list[ChildSpec]:
        cfg = self.config
        token_key = card_reader.load_token_key(cfg.card_reader.token_key_file)
        serves: list[tuple[str, bool, Callable[[Callable[[], None]], Awaitable[None]]]] = [
            (illuminator.NAME, cfg.illuminator.enabled,
             functools.partial(illuminator.serve, cfg.illuminator, health, self.bus, self.lights)),
            (proximity.NAME, cfg.proximity.enabled,
             functools.partial(proximity.serve, cfg.proximity, health, self.bus)),
            (camera.NAME, cfg.camera.enabled,
             functools.partial(camera.serve, cfg.camera, health, self.bus, self.frames)),
            (card_reader.NAME, cfg.card_reader.enabled,
             functools.partial(card_reader.serve, cfg.card_reader, token_key, health, self.bus)),
        ]
        specs = []
        for name, enabled, serve in serves:
            if not enabled:
                continue
            health.register(name)
            session = DeviceSession(name, health, backoff)
            specs.append(ChildSpec(name, _session_child(session, serve), device=name))
        return specs

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sup = self.config.supervision
        self.health = HealthRegistry(self.bus)
        backoff = Backoff(initial=sup.backoff_initial_s, maximum=sup.backoff_max_s)
        devices = Supervisor("devices", self._device_specs(self.health, backoff), strategy="one_for_one",
                             intensity=sup.intensity, period=sup.period_s, backoff=backoff,
                             health=self.health, bus=self.bus)
        self.supervisor = Supervisor("node", [
            ChildSpec("event-log", self._log_events, signals_started=True),
            devices.as_child(id="devices"),
        ], strategy="rest_for_one", intensity=sup.intensity, period=sup.period_s, backoff=backoff,
            bus=self.bus)
        event(log, "node starting", node_id=self.config.node.node_id,
              config=str(self.config.source) if self.config.source else None)
        await self.supervisor.run(task_status=task_status)

    async def _log_events(self, ctx: ChildContext) -> None:
        async with self.bus.subscribe(*LOGGED_EVENTS, buffer=256) as events:
            ctx.started()
            async for ev in events:
                event(log, _EVENT_NAMES.get(type(ev), type(ev).__name__), **_fields(ev))


def _session_child(session: DeviceSession,
                   serve: Callable[[Callable[[], None]], Awaitable[None]]) -> Callable[[ChildContext], Awaitable[None]]:
    async def child(ctx: ChildContext) -> None:
        await session.run(serve)
    return child


_EVENT_NAMES = {
    PresenceChanged: "presence", BadgeRead: "card read", PaymentCardRead: "card read",
    DeviceStateChanged: "device state", GateStateChanged: "gate state",
    OverTemperature: "over temperature", Cooled: "cooled", DeadmanTripped: "dead-man tripped",
    BoardNotice: "board notice",
}


def _fields(ev: object) -> dict[str, object]:
    fields = {}
    for key, value in attrs.asdict(ev, recurse=False).items():
        if hasattr(value, "value") and not isinstance(value, (int, float, str)):
            value = value.value  # enums
        elif not isinstance(value, (int, float, str, bool, type(None))):
            value = str(value)
        fields[key] = value
    if isinstance(ev, PaymentCardRead):
        fields["kind"] = "payment"
    elif isinstance(ev, BadgeRead):
        fields["kind"] = "badge"
    return fields
