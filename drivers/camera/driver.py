"""The camera for trio: OpenCV ``VideoCapture`` on a device index, a V4L2 path or a stream URL.

One dedicated thread owns the ``VideoCapture`` for its whole life (open, configure, read, release:
OpenCV captures are not thread-safe, so nothing else ever touches it). It hands each decoded grey
frame to trio without ever waiting for the consumer, into a latest-frame slot of size one: the
newest frame wins and the frame it replaces is counted as a drop. A stream that ends, a server
that goes away or a camera that stops for longer than ``read_timeout`` is a clean
:class:`~drivers.errors.DeviceLost`, so a supervisor can reopen it.

MJPEG sources (every IP camera stream, and the emulator) are read in the backend's raw mode: the
FFmpeg backend hands over each JPEG as bytes and the driver decodes it with ``cv2.imdecode`` straight
to grey (libjpeg decodes only the luma plane), which is cheaper than a BGR decode plus conversion
and makes a corrupt JPEG visible (counted in ``stats.decode_errors`` and skipped) instead of being
silently concealed. Other sources are decoded by the backend and converted to grey if needed.

Time: ``Frame.captured_at`` is in trio's clock (``trio.current_time()``), taken as the moment
``VideoCapture.read`` returned the frame: the reader thread notes ``time.perf_counter()`` then, and
the trio side subtracts the hand-off delay (measured with the same ``perf_counter``) from
``trio.current_time()``. This holds for any trio clock, including a MockClock; it is when the frame
reached the host, which lags the sensor's exposure by the transport and buffering delay.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import queue
import threading
import time
from typing import AsyncIterator, Callable

import attrs

# FFmpeg prints its own complaints (e.g. a stream cut mid-part) to stderr; this driver turns
# every failure into a typed error instead, so keep FFmpeg quiet unless the operator asks.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
import cv2  # noqa: E402
import numpy as np
import trio

from drivers.errors import DeviceError, DeviceLost, DeviceTimeout, PortUnavailable

log = logging.getLogger(__name__)

DEFAULT_OPEN_TIMEOUT_S = 5.0
#: a stream silent for this long is dropped by the backend (FFmpeg interrupt callback) and lost
DEFAULT_READ_TIMEOUT_S = 2.0
#: how long aclose waits for the reader beyond one read timeout before leaving it to finish alone
CLOSE_GRACE_S = 1.0
#: a second of undecodable JPEGs at 30 fps: the stream is broken, not one part
MAX_CONSECUTIVE_DECODE_ERRORS = 30
#: backend-decoded sources: a failed read may be one bad frame; this many in a row is a lost camera
MAX_CONSECUTIVE_READ_FAILURES = 3
#: frames over which ``stats.fps`` is measured
FPS_WINDOW = 30

#: properties the driver may set, by the name reported in :class:`PropertyResult`
PROPERTIES = {
    "width": cv2.CAP_PROP_FRAME_WIDTH,
    "height": cv2.CAP_PROP_FRAME_HEIGHT,
    "fps": cv2.CAP_PROP_FPS,
    "exposure": cv2.CAP_PROP_EXPOSURE,
    "gain": cv2.CAP_PROP_GAIN,
    "buffersize": cv2.CAP_PROP_BUFFERSIZE,
}


@attrs.frozen(eq=False)
class Frame:
    """One grey frame: ``image`` is H×W uint8 (read-only), ``seq`` counts frames read since open
    (from 0), ``captured_at`` is trio time, ``dropped_before`` how many newer-wins drops preceded it."""

    image: np.ndarray
    seq: int
    captured_at: float
    dropped_before: int = 0


@attrs.frozen
class PropertyResult:
    """What the backend made of one property: ``accepted`` is what ``VideoCapture.set`` returned,
    ``actual`` what ``get`` reads back afterwards (None if the backend does not report it)."""

    name: str
    requested: float
    accepted: bool
    actual: float | None


@attrs.define
class CameraStats:
    frames: int = 0
    #: frames replaced in the latest-frame slot before anyone took them (the consumer was slower)
    drops: int = 0
    #: parts that did not decode (corrupt JPEG) or failed reads of backend-decoded sources
    decode_errors: int = 0
    #: measured over the last FPS_WINDOW frames
    fps: float = 0.0
    last_frame_at: float | None = None


@attrs.frozen
class _Opened:
    backend: str
    raw_jpeg: bool
    settings: tuple[PropertyResult, ...]


@attrs.define(eq=False)
class _Command:
    name: str
    prop: int
    value: float
    done: trio.Event = attrs.field(factory=trio.Event)
    result: PropertyResult | None = None


def _classify(source: int | str) -> tuple[str, int]:
    """(kind, OpenCV API preference) of a source."""
    if isinstance(source, int) and not isinstance(source, bool):
        return "device", cv2.CAP_V4L2
    if isinstance(source, str):
        if "://" in source:
            return "stream", cv2.CAP_FFMPEG
        if source.startswith("/dev/"):
            return "device", cv2.CAP_V4L2
    raise ValueError(f"camera source {source!r} is not a device index, a /dev/videoN path or a "
                     f"stream URL such as http://127.0.0.1:8080/stream.mjpg")


class _Reader:
    """The body of the reader thread. Talks to trio only through ``token.run_sync_soon``."""

    def __init__(self, camera: "Camera", token: trio.lowlevel.TrioToken, *, api: int,
                 params: list[int], requested: list[tuple[str, float]], open_timeout: float,
                 read_timeout: float) -> None:
        self.camera = camera
        self.source = camera.source
        self.kind = camera.kind
        self.token = token
        self.api = api
        self.params = params
        self.requested = requested
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.stop = threading.Event()
        self.commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()

    def post(self, fn: Callable[..., None], *args: object) -> bool:
        try:
            self.token.run_sync_soon(fn, *args)
            return True
        except trio.RunFinishedError:
            self.stop.set()  # trio is gone: nobody left to deliver to
            return False

    def run(self) -> None:
        cap = None
        try:
            started = time.perf_counter()
            cap = cv2.VideoCapture(self.source, self.api, self.params)
            if self.stop.is_set():
                return
            if not cap.isOpened():
                self.post(self.camera._fail, self._open_error(time.perf_counter() - started))
                return
            settings = tuple(self._apply(cap, name, PROPERTIES[name], value)
                             for name, value in self.requested)
            fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little")
            # MJPEG: take the JPEG bytes and decode them to grey ourselves (cheaper, errors visible)
            raw = fourcc == b"MJPG" and self.kind == "stream" and cap.set(cv2.CAP_PROP_FORMAT, -1)
            self.post(self.camera._opened_ok, _Opened(cap.getBackendName(), bool(raw), settings))
            self._read_loop(cap, bool(raw))
        except Exception as exc:  # cv2.error and friends: the backend failed under us
            log.exception("camera %s reader failed", self.source)
            self.post(self.camera._fail, DeviceLost(f"camera {self.source}: backend error: {exc}"))
        finally:
            if cap is not None:
                cap.release()
            self.post(self.camera._reader_done)

    def _open_error(self, elapsed: float) -> DeviceError:
        if self.kind == "stream" and elapsed >= 0.9 * self.open_timeout:
            return DeviceTimeout(f"camera {self.source}: no stream within {self.open_timeout:.1f}s; "
                                 f"check that the camera is up and answers at that URL")
        if self.kind == "stream":
            return PortUnavailable(f"camera {self.source}: cannot open the stream (refused, wrong "
                                   f"path or not MJPEG); check the URL and that the camera is up")
        return PortUnavailable(f"camera {self.source}: cannot open the device (missing, busy or no "
                               f"permission); check the index/path and that nothing else uses it")

    def _apply(self, cap: cv2.VideoCapture, name: str, prop: int, value: float) -> PropertyResult:
        accepted = bool(cap.set(prop, value))
        actual = cap.get(prop)
        return PropertyResult(name, value, accepted, None if actual == -1 else float(actual))

    def _run_commands(self, cap: cv2.VideoCapture) -> None:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            result = self._apply(cap, command.name, command.prop, command.value)
            self.post(self.camera._command_done, command, result)

    def _read_loop(self, cap: cv2.VideoCapture, raw: bool) -> None:
        seq = 0
        bad_in_a_row = 0
        while not self.stop.is_set():
            self._run_commands(cap)
            started = time.perf_counter()
            ok, data = cap.read()
            read_at = time.perf_counter()
            if self.stop.is_set():
                return
            if not ok or data is None:
                if raw or bad_in_a_row + 1 >= MAX_CONSECUTIVE_READ_FAILURES:
                    self.post(self.camera._fail, self._lost(read_at - started))
                    return
                bad_in_a_row += 1
                self.post(self.camera._decode_error)
                continue
            image = self._to_grey(data, raw)
            if image is None:
                bad_in_a_row += 1
                self.post(self.camera._decode_error)
                if bad_in_a_row >= MAX_CONSECUTIVE_DECODE_ERRORS:
                    self.post(self.camera._fail, DeviceLost(
                        f"camera {self.source}: {bad_in_a_row} undecodable frames in a row; "
                        f"the stream is corrupt, reopen it"))
                    return
                continue
            bad_in_a_row = 0
            image.flags.writeable = False  # shared with every consumer of latest()
            if not self.post(self.camera._deliver, image, seq, read_at):
                return
            seq += 1

    @staticmethod
    def _to_grey(data: np.ndarray, raw: bool) -> np.ndarray | None:
        if raw:
            return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)  # None when the JPEG is corrupt
        if data.ndim == 2:
            return data
        if data.shape[2] == 1:
            return data[:, :, 0]
        return cv2.cvtColor(data, cv2.COLOR_BGRA2GRAY if data.shape[2] == 4 else cv2.COLOR_BGR2GRAY)

    def _lost(self, read_took: float) -> DeviceLost:
        if self.kind == "stream" and read_took >= 0.9 * self.read_timeout:
            return DeviceLost(f"camera {self.source}: no frame for {self.read_timeout:.1f}s, stream "
                              f"dropped; reopen it (check the camera if this repeats)")
        return DeviceLost(f"camera {self.source}: stream ended (camera unplugged or server gone); "
                          f"reopen it")


class Camera:
    """An open camera. Use ``cam = await Camera.open(source)`` (or ``async with await Camera.open(...)``)
    and close with :meth:`aclose`."""

    def __init__(self, source: int | str, kind: str, read_timeout: float) -> None:
        self.source = source
        self.kind = kind
        self.stats = CameraStats()
        #: the backend OpenCV chose ("FFMPEG", "V4L2"), set once open
        self.backend = ""
        #: True when the driver decodes JPEG bytes itself (MJPEG streams), False when the backend decodes
        self.raw_jpeg = False
        self._read_timeout = read_timeout
        self._settings: dict[str, PropertyResult] = {}
        self._send, self._recv = trio.open_memory_channel[Frame](1)
        self._latest: Frame | None = None
        self._error: DeviceError | None = None
        self._closed = False
        self._opened = trio.Event()
        self._reader_finished = trio.Event()
        self._commands: set[_Command] = set()
        self._fps_times: collections.deque[float] = collections.deque(maxlen=FPS_WINDOW)
        self._reader: _Reader | None = None
        self._thread: threading.Thread | None = None

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    async def open(cls, source: int | str, *, width: int | None = None, height: int | None = None,
                   fps: float | None = None, exposure: float | None = None, gain: float | None = None,
                   open_timeout: float = DEFAULT_OPEN_TIMEOUT_S,
                   read_timeout: float = DEFAULT_READ_TIMEOUT_S) -> "Camera":
        """Open ``source`` (device index, ``/dev/videoN`` or stream URL) and start reading frames.

        Requested properties are applied right after opening; see :attr:`settings` for which ones
        the backend accepted (a stream URL accepts none of them: the camera decides).
        Raises DeviceTimeout when nothing answers within ``open_timeout``, PortUnavailable when
        the source cannot be opened at all.
        """
        kind, api = _classify(source)
        params: list[int] = []
        if kind == "stream":  # the FFmpeg backend's interrupt callback enforces both
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(1, int(open_timeout * 1000)),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(1, int(read_timeout * 1000))]
        requested = [(name, float(value)) for name, value in (
            ("width", width), ("height", height), ("fps", fps), ("exposure", exposure), ("gain", gain))
            if value is not None]
        if kind == "device":
            requested.append(("buffersize", 1.0))  # V4L2: hold one buffer so frames are never stale
        camera = cls(source, kind, read_timeout)
        reader = _Reader(camera, trio.lowlevel.current_trio_token(), api=api, params=params,
                         requested=requested, open_timeout=open_timeout, read_timeout=read_timeout)
        camera._reader = reader
        camera._thread = threading.Thread(target=reader.run, name=f"camera-reader {source}", daemon=True)
        camera._thread.start()
        try:
            # the backend gives up by itself after open_timeout; the grace covers backends that don't
            with trio.move_on_after(open_timeout + CLOSE_GRACE_S):
                await camera._opened.wait()
        except BaseException:
            await camera.aclose()
            raise
        if not camera._opened.is_set():
            reader.stop.set()  # the thread releases the capture when the backend finally returns
            camera._closed = True
            raise DeviceTimeout(f"camera {source}: no answer within {open_timeout:.1f}s; check that "
                                f"the camera is connected and answers")
        if camera._error is not None:
            error = camera._error
            await camera.aclose()
            raise _fresh(error)
        for result in camera._settings.values():
            if not result.accepted:
                log.info("camera %s: backend %s did not accept %s=%s", source, camera.backend,
                         result.name, result.requested)
        return camera

    # ---- frames -------------------------------------------------------------------------
    async def next_frame(self, timeout: float | None = 1.0) -> Frame:
        """The next frame not yet taken (the newest one if several arrived); DeviceTimeout if none
        arrives within ``timeout`` seconds, DeviceLost if the camera went away."""
        if self._closed:
            raise trio.ClosedResourceError(f"camera {self.source} is closed")
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                return await self._recv.receive()
        except trio.TooSlowError:
            raise DeviceTimeout(f"camera {self.source}: no frame within {timeout:.2f}s "
                                f"(stalled camera or network?)") from None
        except trio.EndOfChannel:
            if self._error is not None:
                raise _fresh(self._error) from None
            raise trio.ClosedResourceError(f"camera {self.source} is closed") from None

    def latest(self) -> Frame | None:
        """The newest frame read so far, taken or not (None before the first)."""
        return self._latest

    def frames(self, *, timeout: float | None = None) -> AsyncIterator[Frame]:
        """``async for frame in camera.frames()``: each new frame (newest wins) until the camera is
        closed; raises DeviceLost / DeviceTimeout like :meth:`next_frame`."""
        return _FrameIterator(self, timeout)

    # ---- properties ---------------------------------------------------------------------
    @property
    def settings(self) -> tuple[PropertyResult, ...]:
        """The latest outcome of every property the driver tried to set, one per name."""
        return tuple(self._settings.values())

    @property
    def accepted(self) -> frozenset[str]:
        """Names of the properties the backend accepted (empty for a stream URL)."""
        return frozenset(name for name, r in self._settings.items() if r.accepted)

    async def set_exposure(self, value: float) -> PropertyResult:
        """Ask the backend for ``CAP_PROP_EXPOSURE = value`` (backend units); see ``accepted``."""
        return await self._set_property("exposure", value)

    async def set_gain(self, value: float) -> PropertyResult:
        """Ask the backend for ``CAP_PROP_GAIN = value`` (backend units); see ``accepted``."""
        return await self._set_property("gain", value)

    async def _set_property(self, name: str, value: float) -> PropertyResult:
        if self._closed:
            raise trio.ClosedResourceError(f"camera {self.source} is closed")
        if self._error is not None:
            raise _fresh(self._error)
        assert self._reader is not None
        command = _Command(name, PROPERTIES[name], float(value))
        self._commands.add(command)
        self._reader.commands.put(command)  # applied by the reader between two frames
        try:
            with trio.move_on_after(self._read_timeout + CLOSE_GRACE_S):
                await command.done.wait()
        finally:
            self._commands.discard(command)
        if command.result is not None:
            return command.result
        if self._error is not None:
            raise _fresh(self._error)
        if self._closed:
            raise trio.ClosedResourceError(f"camera {self.source} is closed")
        raise DeviceTimeout(f"camera {self.source}: setting {name} got no answer within "
                            f"{self._read_timeout + CLOSE_GRACE_S:.1f}s")

    # ---- closing ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop the reader thread and release the capture. Prompt while frames flow; during a stall
        it waits at most one read timeout (the backend cannot be interrupted mid-read)."""
        self._closed = True
        self._send.close()
        for command in list(self._commands):
            command.done.set()
        if self._reader is not None:
            self._reader.stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._read_timeout + CLOSE_GRACE_S):
                    await self._reader_finished.wait()
            thread.join(timeout=0.1)
            if thread.is_alive():
                log.warning("camera %s: reader thread still blocked in the backend; left to finish",
                            self.source)
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> "Camera":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- called on the trio thread by the reader (via run_sync_soon): never raise -------
    def _opened_ok(self, opened: _Opened) -> None:
        self.backend = opened.backend
        self.raw_jpeg = opened.raw_jpeg
        for result in opened.settings:
            self._settings[result.name] = result
        self._opened.set()

    def _deliver(self, image: np.ndarray, seq: int, read_at: float) -> None:
        if self._closed or self._error is not None:
            return
        captured_at = trio.current_time() - max(0.0, time.perf_counter() - read_at)
        dropped = 0
        try:
            stale = self._recv.receive_nowait()  # newest wins: nobody took the previous one
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            pass
        else:
            dropped = stale.dropped_before + 1
            self.stats.drops += 1
        frame = Frame(image, seq, captured_at, dropped)
        try:
            self._send.send_nowait(frame)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return
        self._latest = frame
        self.stats.frames += 1
        self.stats.last_frame_at = captured_at
        times = self._fps_times
        times.append(captured_at)
        if len(times) >= 2 and times[-1] > times[0]:
            self.stats.fps = (len(times) - 1) / (times[-1] - times[0])

    def _decode_error(self) -> None:
        self.stats.decode_errors += 1

    def _fail(self, error: DeviceError) -> None:
        if self._error is None and not self._closed:
            log.warning("%s", error)
            self._error = error
        self._send.close()  # takers get the frames already read, then the error
        for command in list(self._commands):
            command.done.set()
        self._opened.set()

    def _command_done(self, command: _Command, result: PropertyResult) -> None:
        command.result = result
        self._settings[result.name] = result
        command.done.set()

    def _reader_done(self) -> None:
        self._reader_finished.set()
        if not self._closed and self._error is None:
            self._fail(DeviceLost(f"camera {self.source}: reader stopped; reopen the camera"))


class _FrameIterator:
    def __init__(self, camera: Camera, timeout: float | None) -> None:
        self._camera = camera
        self._timeout = timeout

    def __aiter__(self) -> "_FrameIterator":
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self._camera.next_frame(self._timeout)
        except trio.ClosedResourceError:
            raise StopAsyncIteration from None


def _fresh(error: DeviceError) -> DeviceError:
    """A new exception like ``error``, so raising it twice does not chain tracebacks."""
    return type(error)(*error.args)
