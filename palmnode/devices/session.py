"""Keeping one device open for the node's lifetime: OPENING → READY ⇄ LOST, reopened with backoff.

Hardware faults (``DeviceError``: unplugged, silent, garbage that breaks the handshake) are the
normal life of a gate, so they are a state here, not a crash: the device shows LOST, the gate
DEGRADED, and the port is reopened with exponential backoff until it answers again. Anything
else is a bug and propagates to the supervisor, which restarts the actor (intensity, period,
escalation).
"""
from __future__ import annotations

import logging
import random
from typing import Awaitable, Callable, Mapping

import trio

from drivers.errors import DeviceError
from palmnode.actors import Backoff, DeviceState, HealthRegistry

log = logging.getLogger("palmnode.devices")

#: a device that stayed READY this long has its reopen backoff reset
HEALTHY_AFTER_S = 5.0

Serve = Callable[[Callable[[], None]], Awaitable[None]]


class DeviceSession:
    """Runs ``serve(ready)`` again and again; ``serve`` opens the device, calls ``ready()`` once
    it answers, and returns or raises ``DeviceError`` when the device is gone."""

    def __init__(self, name: str, health: HealthRegistry, backoff: Backoff,
                 *, rng: random.Random | None = None) -> None:
        self.name = name
        self.health = health
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.ready_at: float | None = None

    def ready(self) -> None:
        self.ready_at = trio.current_time()
        self.health.set_state(self.name, DeviceState.READY)

    async def run(self, serve: Serve) -> None:
        failures = 0
        self.health.set_state(self.name, DeviceState.OPENING)
        while True:
            self.ready_at = None
            try:
                await serve(self.ready)
                error: BaseException | str = "the device stopped answering"
            except* DeviceError as group:  # also from inside a serve function's own nursery
                error = _first_leaf(group)
            # a failed reopen keeps the device LOST (with the newest error) rather than flapping
            self.health.set_state(self.name, DeviceState.LOST, error)
            if self.ready_at is not None and trio.current_time() - self.ready_at >= HEALTHY_AFTER_S:
                failures = 0
            await trio.sleep(self.backoff.delay(failures, self.rng))
            failures += 1
            self.health.note_restart(self.name)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


class CounterMirror:
    """Mirrors a driver's growing counters into the health registry as ``prefix + key``: its
    drops by reason as ``dropped_<reason>`` by default."""

    def __init__(self, health: HealthRegistry, name: str, prefix: str = "dropped_") -> None:
        self.health = health
        self.name = name
        self.prefix = prefix
        self._seen: dict[str, int] = {}

    def update(self, counts: Mapping[str, int]) -> None:
        for key, total in counts.items():
            new = total - self._seen.get(key, 0)
            if new > 0:
                self.health.count(self.name, self.prefix + key, new)
                self._seen[key] = total


#: how often device actors copy their driver's counters into the health registry
HEALTH_PERIOD_S = 0.5


async def mirror_stats(health: HealthRegistry, name: str,
                       read: Callable[[], tuple[float | None, Mapping[str, int]]]) -> None:
    """Every ``HEALTH_PERIOD_S``, copy (last frame time, drops by reason) from ``read()`` into health;
    once more when cancelled (the session's end), so the bad frames that ended it are counted."""
    drops = CounterMirror(health, name)

    def mirror() -> None:
        last_seen, counts = read()
        if last_seen is not None:
            health.seen(name, last_seen)
        drops.update(counts)

    try:
        while True:
            mirror()
            await trio.sleep(HEALTH_PERIOD_S)
    finally:
        mirror()
