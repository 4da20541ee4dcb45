"""The camera actor: keeps the camera open and its newest frame at hand for the flows."""
from __future__ import annotations

from typing import Callable

from drivers.camera.driver import Camera, Frame
from palmnode.actors import EventBus, HealthRegistry
from palmnode.config import CameraConfig
from palmnode.devices.session import DropCounter

NAME = "camera"


class FrameSource:
    """Where flows get frames: the open camera while there is one."""

    def __init__(self) -> None:
        self.camera: Camera | None = None

    def latest(self) -> Frame | None:
        return None if self.camera is None else self.camera.latest()


def _source(text: str) -> int | str:
    return int(text) if text.isdigit() else text


async def serve(cfg: CameraConfig, health: HealthRegistry, bus: EventBus, frames: FrameSource,
                ready: Callable[[], None]) -> None:
    drops = DropCounter(health, NAME)
    async with await Camera.open(_source(cfg.source), width=cfg.width, height=cfg.height, fps=cfg.fps,
                                 exposure=cfg.exposure, gain=cfg.gain) as camera:
        ready()
        frames.camera = camera
        try:
            async for frame in camera.frames(timeout=2.0):
                health.seen(NAME, frame.captured_at)
                drops.update({"stale": camera.stats.drops, "decode": camera.stats.decode_errors})
        finally:
            frames.camera = None
