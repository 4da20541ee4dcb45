"""An IP camera on loopback: MJPEG over HTTP, rendering the scene lit by the emulated illuminator.

``GET /stream.mjpg`` answers a ``multipart/x-mixed-replace`` stream of JPEG parts (what cheap IP
cameras and mjpg-streamer serve, and what OpenCV's FFmpeg backend reads); ``GET /snapshot.jpg``
answers one JPEG; anything else is 404. Frames are rendered at send time, ``fps`` times a second
while anyone is watching, from ``scene(lighting(), t)``, and JPEG-encoded in a worker thread so the
trio loop stays responsive. Faults on command: unplug (connections dropped, port refuses, then
comes back on the same port), stall, a corrupt JPEG part, a slow first answer.
Run with ``await nursery.start(emulator.run)``; clients connect to :attr:`CameraEmulator.url`.
"""
from __future__ import annotations

import logging
import math
import random
from typing import Callable

import attrs
import cv2
import numpy as np
import trio

from drivers.camera import codec
from drivers.camera.scene import FULL_IR, DiscScene, Lighting, Scene

log = logging.getLogger(__name__)

#: a client that has not sent a complete request head by then is dropped
REQUEST_TIMEOUT_S = 10.0


@attrs.frozen(eq=False)
class EncodedFrame:
    """One rendered frame, ready to send: the JPEG and the whole multipart part around it."""

    seq: int
    t: float
    lighting: Lighting
    jpeg: bytes
    part: bytes
    corrupt: bool = False


@attrs.define
class EmulatorStats:
    frames_rendered: int = 0
    corrupt_parts: int = 0
    parts_sent: int = 0
    snapshots_sent: int = 0
    connections: int = 0
    stream_clients: int = 0


class CameraEmulator:
    """An MJPEG-over-HTTP camera on ``host:port`` (port 0 picks a free one, kept across unplugs)."""

    device = "camera"

    def __init__(self, *, scene: Scene | None = None, lighting: Callable[[], Lighting] | None = None,
                 host: str = "127.0.0.1", port: int = 0, fps: float = 30.0, width: int = 640,
                 height: int = 480, jpeg_quality: int = 75, seed: int | None = None) -> None:
        if fps <= 0:
            raise ValueError(f"camera emulator fps must be positive, got {fps!r}")
        self.width = width
        self.height = height
        self.fps = fps
        self.jpeg_quality = jpeg_quality
        self.host = host
        self.scene: Scene = scene if scene is not None else DiscScene(
            width, height, seed=seed, frame_rate=fps)
        self.lighting: Callable[[], Lighting] = lighting if lighting is not None else (lambda: FULL_IR)
        self.rng = random.Random(seed)
        self.stats = EmulatorStats()
        self._port = port
        self._t0 = 0.0
        self._frame: EncodedFrame | None = None
        self._frame_changed = trio.Event()
        self._demand = 0
        self._demand_changed = trio.Event()
        self._stall_until = -math.inf
        self._garbage_pending = 0
        self._slow_first_s = 0.0
        self._plugged = False
        self._up = trio.Event()
        self._down = trio.Event()
        self._replug = trio.Event()
        self._serve_scope: trio.CancelScope | None = None

    # ---- where to find it ---------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The stream URL, e.g. ``http://127.0.0.1:PORT/stream.mjpg``."""
        return f"http://{self.host}:{self._port}{codec.STREAM_PATH}"

    @property
    def snapshot_url(self) -> str:
        return f"http://{self.host}:{self._port}{codec.SNAPSHOT_PATH}"

    @property
    def plugged(self) -> bool:
        return self._plugged

    @property
    def latest(self) -> EncodedFrame | None:
        """The frame sent last (None before the first client asked for one)."""
        return self._frame

    # ---- running ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self._port, host=self.host)
        self._port = listeners[0].socket.getsockname()[1]
        self._t0 = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._produce)
                self._plug()
                task_status.started()
                while True:
                    with trio.CancelScope() as self._serve_scope:
                        await trio.serve_listeners(self._handle, listeners)
                    # unplugged: serving is cancelled, every connection task has closed its socket
                    for listener in listeners:
                        await trio.aclose_forcefully(listener)
                    self._down.set()
                    await self._replug.wait()
                    self._replug = trio.Event()
                    listeners = await trio.open_tcp_listeners(self._port, host=self.host)
                    self._plug()
        finally:
            self._plugged = False
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    def _plug(self) -> None:
        self._plugged = True
        self._up.set()
        log.info("camera emulator serving %s", self.url)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        try:
            request = await self._read_request(stream)
            if request is None:
                return
            if self._slow_first_s > 0:
                await trio.sleep(self._slow_first_s)
            if isinstance(request, codec.Malformed):
                await stream.send_all(codec.error_response(request.status, request.reason))
            elif request.method != "GET":
                await stream.send_all(codec.error_response(405, f"{request.method} not allowed"))
            elif request.path == codec.STREAM_PATH:
                await self._stream(stream)
            elif request.path == codec.SNAPSHOT_PATH:
                frame = await self._fresh_frame()
                await stream.send_all(codec.snapshot_response(frame.jpeg))
                self.stats.snapshots_sent += 1
            else:
                await stream.send_all(codec.error_response(
                    404, f"no such path {request.path}: try {codec.STREAM_PATH} or {codec.SNAPSHOT_PATH}"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away

    async def _read_request(self, stream: trio.SocketStream) -> codec.Request | codec.Malformed | None:
        decoder = codec.RequestDecoder()
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            while True:
                event = decoder.next_event()
                if event is not None:
                    return event
                data = await stream.receive_some(4096)
                if not data:
                    return None
                decoder.receive_data(data)
        return None

    async def _stream(self, stream: trio.SocketStream) -> None:
        await stream.send_all(codec.stream_response_head())
        self.stats.stream_clients += 1
        self._add_demand(1)
        try:
            last = self._frame.seq if self._frame is not None else -1
            while True:
                # newest wins: a slow client skips frames instead of queueing them
                frame = await self._frame_after(last)
                last = frame.seq
                await stream.send_all(frame.part)
                self.stats.parts_sent += 1
        finally:
            self.stats.stream_clients -= 1
            self._add_demand(-1)

    async def _fresh_frame(self) -> EncodedFrame:
        last = self._frame.seq if self._frame is not None else -1
        self._add_demand(1)
        try:
            return await self._frame_after(last)
        finally:
            self._add_demand(-1)

    async def _frame_after(self, seq: int) -> EncodedFrame:
        while self._frame is None or self._frame.seq <= seq:
            await self._frame_changed.wait()
        return self._frame

    def _add_demand(self, n: int) -> None:
        self._demand += n
        if n > 0:
            self._demand_changed.set()

    async def _produce(self) -> None:
        """Render, encode and publish a frame every 1/fps s while anyone is watching."""
        period = 1.0 / self.fps
        seq = 0
        deadline = trio.current_time()
        while True:
            while self._demand <= 0:
                self._demand_changed = trio.Event()
                await self._demand_changed.wait()
                deadline = trio.current_time()
            await trio.sleep_until(deadline)
            now = trio.current_time()
            deadline = max(deadline + period, now)  # fell behind: skip frames, never burst
            if self.stalled:
                continue
            lighting = self.lighting()
            jpeg = await trio.to_thread.run_sync(self._render, lighting, now - self._t0)
            self.stats.frames_rendered += 1
            corrupt = self._garbage_pending > 0
            if corrupt:
                self._garbage_pending -= 1
                self.stats.corrupt_parts += 1
                jpeg = self._corrupt(jpeg)
            self._publish(EncodedFrame(seq, now - self._t0, lighting, jpeg, codec.mjpeg_part(jpeg), corrupt))
            seq += 1

    def _render(self, lighting: Lighting, t: float) -> bytes:
        image = self.scene(lighting, t)
        if image.shape != (self.height, self.width) or image.dtype != np.uint8:
            raise ValueError(f"camera scene rendered {image.shape} {image.dtype}, expected "
                             f"({self.height}, {self.width}) uint8: make the scene match the emulator size")
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("cv2.imencode failed to encode a camera frame")
        return buf.tobytes()

    def _publish(self, frame: EncodedFrame) -> None:
        self._frame = frame
        self._frame_changed.set()
        self._frame_changed = trio.Event()

    def _corrupt(self, jpeg: bytes) -> bytes:
        # the SOI survives, every header after it is noise: no decoder can make an image of it
        return codec.JPEG_SOI + self.rng.randbytes(max(0, len(jpeg) - len(codec.JPEG_SOI)))

    # ---- faults -------------------------------------------------------------------------
    @property
    def stalled(self) -> bool:
        return trio.current_time() < self._stall_until

    async def unplug(self, seconds: float) -> None:
        """The camera drops off the network: connections close, new ones are refused for ``seconds``."""
        if not self._plugged or self._serve_scope is None:
            raise RuntimeError("camera emulator is not running or already unplugged")
        log.info("camera emulator unplugged for %.1fs", seconds)
        self._plugged = False
        self._up = trio.Event()
        self._down = trio.Event()
        self._serve_scope.cancel()
        await self._down.wait()
        await trio.sleep(seconds)
        self._replug.set()
        await self._up.wait()

    async def replugged(self) -> None:
        """Wait until the camera serves again."""
        while not self._plugged:
            await self._up.wait()

    def stall(self, seconds: float) -> None:
        """The camera hangs for ``seconds``: no frames, but every connection stays open."""
        self._stall_until = trio.current_time() + seconds

    def inject_garbage(self, parts: int = 1) -> None:
        """The next ``parts`` frames go out as well-framed parts whose JPEG is corrupt."""
        self._garbage_pending += parts

    def slow_first_answer(self, seconds: float) -> None:
        """From now on, each new connection waits ``seconds`` before its response starts."""
        self._slow_first_s = seconds
