"""The proximity actor: TFmini readings → ``Distance`` and ``PresenceChanged`` events, health."""
from __future__ import annotations

from typing import Callable

import trio

from drivers.proximity.driver import ProximitySensor
from palmnode.actors import EventBus, HealthRegistry
from palmnode.config import ProximityConfig
from palmnode.devices.session import CounterMirror
from palmnode.gate.presence import PresenceDetector

NAME = "proximity"


async def serve(cfg: ProximityConfig, health: HealthRegistry, bus: EventBus,
                ready: Callable[[], None]) -> None:
    presence = PresenceDetector()
    drops = CounterMirror(health, NAME)
    sensor: ProximitySensor | None = None
    try:
        async with await ProximitySensor.open(cfg.port, baudrate=cfg.baudrate,
                                              frame_rate_hz=cfg.frame_rate_hz,
                                              read_interval_s=cfg.read_interval_s,
                                              gap_timeout=cfg.stall_timeout_s) as sensor:
            ready()
            async for reading in sensor.measurements():
                health.seen(NAME, reading.at)
                bus.publish(reading)
                change = presence.update(reading.distance_mm, reading.at)
                if change is not None:
                    bus.publish(change)
                drops.update(sensor.stats.drops)
    finally:
        if sensor is not None:  # the bad frames since the last reading, e.g. all those that ended it
            drops.update(sensor.stats.drops)
        drops_left = presence.reset(trio.current_time())  # the hand may be there; we cannot tell
        if drops_left is not None:
            bus.publish(drops_left)
