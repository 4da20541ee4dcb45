"""The illuminator actor: keeps the LED board open and fed, serves light requests, reports heat.

Other actors switch lights through :class:`Lights` (a mailbox the actor serves), so only this
actor ever talks to the board; while the board is away a request fails at once with
``DeviceError`` instead of waiting. Closing the board (stop, loss) turns every light off.
"""
from __future__ import annotations

import logging
from typing import Callable

import attrs
import trio

from drivers.errors import DeviceError, DeviceLost
from drivers.illuminator.driver import Illuminator
from palmnode.actors import Call, EventBus, HealthRegistry, Mailbox, OverflowPolicy
from palmnode.config import IlluminatorConfig
from palmnode.devices.session import mirror_stats

NAME = "illuminator"
log = logging.getLogger("palmnode.devices")


@attrs.frozen
class SetLight:
    channel: str
    level: float


class Lights:
    """Ask the illuminator actor to drive a channel; answered once the board has the command."""

    def __init__(self, capacity: int = 16) -> None:
        self.mailbox: Mailbox[Call[SetLight, None]] = Mailbox(capacity, OverflowPolicy.BLOCK, name=NAME)
        self.online = False

    async def set(self, channel: str, level: float, *, timeout: float = 1.0) -> None:
        if not self.online:
            raise DeviceError("illuminator is not ready (lost or still opening)")
        await self.mailbox.call(SetLight(channel, level), timeout)


async def serve(cfg: IlluminatorConfig, health: HealthRegistry, bus: EventBus, lights: Lights,
                ready: Callable[[], None]) -> None:
    async with await Illuminator.open(cfg.port, channels=cfg.channels, thermistor_pin=cfg.thermistor_pin,
                                      deadman_ms=cfg.deadman_ms, max_temperature_c=cfg.max_temperature_c,
                                      sampling_interval_ms=cfg.sampling_interval_ms,
                                      baudrate=cfg.baudrate) as board:
        ready()
        lights.online = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_forward_events, board, bus)
                nursery.start_soon(_serve_requests, board, lights)
                nursery.start_soon(mirror_stats, health, NAME,
                                   lambda: (board.stats.last_frame_at, board.stats.drops))
                await board.run()
                raise DeviceLost(f"illuminator {cfg.port}: the board stopped")
        finally:
            lights.online = False


async def _forward_events(board: Illuminator, bus: EventBus) -> None:
    async for event in board.events():
        bus.publish(event)


async def _serve_requests(board: Illuminator, lights: Lights) -> None:
    async for call in lights.mailbox:
        if call.abandoned:  # its caller was told it failed (e.g. queued before the board was lost)
            continue
        try:
            await board.set_level(call.request.channel, call.request.level)
        except (ValueError, DeviceError) as exc:
            call.fail(exc)
        else:
            call.reply(None)
