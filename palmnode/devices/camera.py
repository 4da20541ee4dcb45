"""The camera actor: keeps the camera open and supervised; flows take frames when they need them.

The driver reads every frame but decodes only on demand (see drivers/camera/driver.py), so this
actor takes no frames: it watches the stream (``Camera.watch``: DeviceLost when it ends,
DeviceTimeout when it stalls, both end the session and the supervisor reopens) and every
``HEALTH_PERIOD_S`` copies the driver's stats into the health registry. The settings the
camera's backend did not accept (all of them on a stream URL) are logged in one line the first
time in a node run, not at every reopen.
"""
from __future__ import annotations

import logging
from typing import Callable

import trio

from drivers.camera.driver import Camera, Frame
from drivers.camera.source import parse_source
from palmnode.actors import EventBus, HealthRegistry
from palmnode.config import CameraConfig
from palmnode.devices.session import CounterMirror

log = logging.getLogger("palmnode.devices")

NAME = "camera"
#: how often the actor copies the driver's stats (last frame time, drop counters) into health
HEALTH_PERIOD_S = 0.5
#: no frame read for this long ends the session (the stream's own read timeout is 2 s too)
STALL_TIMEOUT_S = 2.0


class FrameSource:
    """Where flows get frames: the open camera while there is one. ``await next_frame()`` during
    a burst (each new frame), ``await newest()`` for one fresh frame, ``latest()`` for the newest
    frame decoded so far without waiting (it may be old after an idle spell)."""

    def __init__(self) -> None:
        self.camera: Camera | None = None
        #: the settings (config name → value asked) a camera's backend did not accept in this
        #: node run: each is logged the first time only, not again at every reopen
        self.not_accepted: dict[str, float] = {}

    def latest(self) -> Frame | None:
        return None if self.camera is None else self.camera.latest()

    async def next_frame(self, timeout: float | None = 1.0) -> Frame:
        return await self._camera().next_frame(timeout)

    def forget_frames(self) -> None:
        """The open camera drops the decoded frame it keeps (a palm image: People.delete)."""
        if self.camera is not None:
            self.camera.forget_frames()

    async def newest(self, timeout: float | None = 1.0) -> Frame:
        return await self._camera().newest(timeout)

    def _camera(self) -> Camera:
        if self.camera is None:
            raise trio.ClosedResourceError("the camera is not open (LOST or starting): no frames")
        return self.camera


def _report_settings(camera: Camera, reported: dict[str, float]) -> None:
    """One line for the settings the backend did not accept that this node run has not yet told of
    (a stream URL accepts none: the camera decides its own format); none at a reopen that changes
    nothing."""
    new = [r for r in camera.settings if not r.accepted and reported.get(r.name) != r.requested]
    if not new:
        return
    reported.update((r.name, r.requested) for r in new)
    log.info("camera %s: backend %s did not accept %s (logged once a run)", camera.source,
             camera.backend, ", ".join(f"{r.name}={r.requested:g}" for r in new))


async def serve(cfg: CameraConfig, health: HealthRegistry, bus: EventBus, frames: FrameSource,
                ready: Callable[[], None]) -> None:
    counters = CounterMirror(health, NAME, prefix="")
    async with await Camera.open(parse_source(cfg.source), width=cfg.width, height=cfg.height, fps=cfg.fps,
                                 exposure=cfg.exposure, gain=cfg.gain) as camera:
        _report_settings(camera, frames.not_accepted)
        ready()
        frames.camera = camera

        def mirror() -> None:
            stats = camera.stats
            if stats.last_frame_at is not None:
                health.seen(NAME, stats.last_frame_at)
            # stats.drops: frames passed over while the capture waited for a lit one (the newest
            # is taken), by design: not lost, so not counted as drops
            counters.update({"dropped_decode": stats.decode_errors, "frames_skipped": stats.drops})

        try:
            while True:
                mirror()
                with trio.move_on_after(HEALTH_PERIOD_S) as period:
                    await camera.watch(STALL_TIMEOUT_S)  # raises DeviceLost / DeviceTimeout
                if not period.cancelled_caught:
                    return  # the camera was closed
        finally:
            mirror()  # what happened since the last period, e.g. the bad parts that ended the session
            frames.camera = None
