"""The camera for trio: OpenCV ``VideoCapture`` on a device index, a V4L2 path or a stream URL.

One dedicated thread owns the ``VideoCapture`` for its whole life (open, configure, read, release:
OpenCV captures are not thread-safe, so nothing else ever touches it). It reads every frame the
camera sends, so the camera stays live and the newest frame is always at hand, but it decodes
only on demand:

- **The decode rule.** The reader keeps the newest frame read (encoded JPEG bytes on an MJPEG
  stream) with its ``seq`` and read time in a lock-protected slot, replacing the previous one.
  It decodes a frame itself, right after reading it, only while there is *demand*: a task is
  waiting in :meth:`Camera.next_frame` / ``frames()``, or one asked for a frame (``next_frame``,
  ``newest``, ``latest``) within the last ``DEMAND_WINDOW_S``. Otherwise nothing is decoded.
  When a task asks and the newest frame read is still encoded (the first ask of a burst), that
  frame is decoded right then in a worker thread (``trio.to_thread``; never on the trio thread:
  a colour 640×480 JPEG costs ~2.5 ms), so the caller gets a frame at most one frame period old
  with no wait for the next one. During a burst the reader decodes each frame as it arrives.
- **No wakeups nobody needs.** The reader calls into trio (``TrioToken.run_sync_soon``) only when
  a task is waiting for a frame, and then once per frame at most; counters and the read time
  live in the slot, which :attr:`Camera.stats` reads under the lock.
- **Liveness without taking frames.** :meth:`Camera.watch` raises DeviceLost when the stream ends
  (or the reader fails) and DeviceTimeout when no frame was read for ``stall_timeout``, so an
  actor can supervise the camera while no one takes frames.

A stream that ends, a server that goes away or a camera that stops for longer than
``read_timeout`` is a clean :class:`~drivers.errors.DeviceLost`, so a supervisor can reopen it.

MJPEG sources (every IP camera stream, and the emulator) are read in the backend's raw mode: the
FFmpeg backend hands over each JPEG as bytes and the driver decodes it with ``cv2.imdecode`` straight
to grey (libjpeg decodes only the luma plane), which is cheaper than a BGR decode plus conversion
and makes a corrupt JPEG visible instead of being silently concealed. Every part read gets a cheap
structure check (SOI, marker segments up to SOS, frame size, scan count, EOI: microseconds, no
decoding), so a broken part is counted in ``stats.decode_errors`` even when nobody decodes. Other sources (V4L2) are
``grab()``-bed every frame and ``retrieve()``-d (decoded by the backend, converted to grey if
needed) only on demand; there a first ask waits for the next frame (≤ one frame period).

Time: ``Frame.captured_at`` is in trio's clock (``trio.current_time()``), taken as the moment
``VideoCapture.read`` returned the frame: the reader thread notes ``time.perf_counter()`` then, and
the trio side subtracts the delay since (measured with the same ``perf_counter``) from
``trio.current_time()``, once per frame (the frame, ``latest()`` and ``stats.last_frame_at`` carry
that one value). This holds for any trio clock, including a MockClock; it is when the frame
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

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # errors only: OpenCV's warnings on a vanished stream duplicate our typed errors
import numpy as np
import trio

from drivers.camera.source import source_kind
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
#: after a task asked for a frame, the reader decodes every frame it reads for this long (a burst);
#: a frame taken more than this after the previous one starts a new burst (no drops counted)
DEMAND_WINDOW_S = 1.0
#: JPEG markers (ITU-T T.81 Annex B.1.1.3, Table B.1)
_SOI, _EOI, _SOS, _TEM = 0xD8, 0xD9, 0xDA, 0x01
#: standalone markers without a length field: TEM and RST0..7 (T.81 B.1.1.3, B.1.1.4)
_STANDALONE = frozenset({_TEM, *range(0xD0, 0xD8)})
#: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) (T.81 Table B.1)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: an EOI may be followed by a little padding (a CRLF left by a boundary scan, fill bytes)
_EOI_SLACK = 16
#: header segments walked before giving up on finding SOS (real files have ~10)
_MAX_SEGMENTS = 64
#: largest frame a part may declare in its SOF (width x height): a 16 MiB grey image, far above
#: any palm camera; a few header bytes would otherwise make imdecode allocate and fill GBs
MAX_FRAME_PIXELS = 4096 * 4096
#: most scans a part may carry: baseline has one per component at most, libjpeg's progressive
#: script 6 (grey) or 10 (colour). Every scan costs libjpeg a pass over the whole frame, so a
#: 100 KB part repeating one tiny scan 1000 times took 11 s to decode at 4096x4096
MAX_SCANS = 32

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
    (from 0), ``captured_at`` is trio time, ``dropped_before`` how many frames were read since the
    previous frame :meth:`Camera.next_frame` handed out (0 when that was longer than
    ``DEMAND_WINDOW_S`` ago: a new burst)."""

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
    """A snapshot (``Camera.stats`` builds a new one on every access)."""

    #: frames read from the camera (decoded or not)
    frames: int = 0
    #: frames read while a consumer was taking frames but never handed to it (it was slower)
    drops: int = 0
    #: parts that failed the structure check or the decode, or failed reads of backend-decoded sources
    decode_errors: int = 0
    #: frames read per second, measured over the last FPS_WINDOW frames
    fps: float = 0.0
    #: trio time of the newest frame read
    last_frame_at: float | None = None
    #: frames decoded (only on demand: stays 0 while nobody asks)
    decoded: int = 0


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


@attrs.define(eq=False)
class _Newest:
    """The newest usable frame read (guarded by ``Camera._lock``): the JPEG bytes on a raw MJPEG
    stream, the decoded grey image once someone decoded it."""

    seq: int
    read_at: float  # perf_counter
    encoded: np.ndarray | None
    image: np.ndarray | None
    bad: bool = False  # the on-demand decode failed


def _classify(source: int | str) -> tuple[str, int]:
    """(kind, OpenCV API preference) of a source."""
    kind = source_kind(source)
    return kind, cv2.CAP_V4L2 if kind == "device" else cv2.CAP_FFMPEG


def jpeg_looks_whole(data: np.ndarray) -> bool:
    """Cheap structure check of one JPEG (no entropy decoding): SOI, then length-framed marker
    segments including a SOF up to SOS (T.81 B.2.1: frame = SOI, tables/misc, SOF, scan), and an
    EOI at the end (allowing ``_EOI_SLACK`` bytes of padding). The SOF must declare a non-empty
    frame of at most ``MAX_FRAME_PIXELS`` (T.81 B.2.2: P, Y, X after the length), and the part
    may hold at most ``MAX_SCANS`` SOS markers (entropy-coded data stuffs every FF byte, B.1.1.5,
    so each FF DA after the first SOS is another scan)."""
    flat = np.ascontiguousarray(data).reshape(-1)
    b = memoryview(flat)
    n = len(b)
    if n < 4 or b[0] != 0xFF or b[1] != _SOI:
        return False
    tail = bytes(b[max(2, n - _EOI_SLACK - 2):])
    if b"\xff\xd9" not in tail:
        return False
    i, sof = 2, False
    for _ in range(_MAX_SEGMENTS):
        if i + 4 > n or b[i] != 0xFF:
            return False
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte before a marker (T.81 B.1.1.2)
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (_SOI, _EOI):
            return False
        length = (b[i + 2] << 8) | b[i + 3]
        if length < 2 or i + 2 + length > n:
            return False
        if marker == _SOS:
            before_da = np.flatnonzero(flat[i + 1:] == _SOS) + i  # where an FF DA would start
            return sof and np.count_nonzero(flat[before_da] == 0xFF) <= MAX_SCANS
        if marker in _SOF:
            if length < 8:
                return False
            height, width = (b[i + 5] << 8) | b[i + 6], (b[i + 7] << 8) | b[i + 8]
            if not 0 < width * height <= MAX_FRAME_PIXELS:
                return False
            sof = True
        i += 2 + length
    return False


def _to_grey(data: np.ndarray, raw: bool) -> np.ndarray | None:
    """Grey image of a raw JPEG (None when it does not decode) or of a backend-decoded image."""
    if raw:
        try:
            image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)  # None when the JPEG is corrupt
        except cv2.error:  # it refuses some instead (more pixels than CV_IO_MAX_IMAGE_PIXELS)
            image = None
    elif data.ndim == 2:
        image = data
    elif data.shape[2] == 1:
        image = data[:, :, 0]
    else:
        image = cv2.cvtColor(data, cv2.COLOR_BGRA2GRAY if data.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    if image is not None:
        image.flags.writeable = False  # shared with every consumer of latest()
    return image


class _Reader:
    """The body of the reader thread. Shares the newest-frame slot with the trio side under
    ``camera._lock``, and calls into trio (``token.run_sync_soon``) only for open/failure/command
    results and to wake a task that waits for a frame."""

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
            self.camera._opened_at = time.perf_counter()
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
        camera = self.camera
        seq = 0
        bad_in_a_row = 0
        while not self.stop.is_set():
            if not self.commands.empty():
                self._run_commands(cap)
            started = time.perf_counter()
            if raw:
                ok, data = cap.read()
            else:
                ok, data = cap.grab(), None  # the backend converts only on retrieve()
            read_at = time.perf_counter()
            if self.stop.is_set():
                return
            if not ok or (raw and data is None):
                if raw or bad_in_a_row + 1 >= MAX_CONSECUTIVE_READ_FAILURES:
                    self.post(camera._fail, self._lost(read_at - started, first=seq == 0))
                    return
                bad_in_a_row += 1
                camera._count_error()
                continue
            this_seq = seq
            seq += 1
            image = None
            if raw and not jpeg_looks_whole(data):
                good = False
            elif camera._demanded(read_at):
                if not raw:
                    ok, data = cap.retrieve()
                image = _to_grey(data, raw) if ok and data is not None else None
                good = image is not None
            else:
                good = True
            if not good:
                bad_in_a_row += 1
                camera._count_error()
                if bad_in_a_row >= MAX_CONSECUTIVE_DECODE_ERRORS:
                    self.post(camera._fail, DeviceLost(
                        f"camera {self.source}: {bad_in_a_row} undecodable frames in a row; "
                        f"the stream is corrupt, reopen it"))
                    return
                camera._note_read(read_at, None)
                continue
            bad_in_a_row = 0
            wake = camera._note_read(read_at, _Newest(this_seq, read_at, data if raw else None, image))
            if wake and not self.post(camera._wake):
                return

    def _lost(self, read_took: float, first: bool) -> DeviceLost:
        if self.kind == "stream" and read_took >= 0.9 * self.read_timeout:
            return DeviceLost(f"camera {self.source}: no frame for {self.read_timeout:.1f}s, stream "
                              f"dropped; reopen it (check the camera if this repeats)")
        if self.kind == "stream" and first:
            return DeviceLost(f"camera {self.source}: stream ended before its first frame (not "
                              f"multipart parts of Content-Type image/jpeg, or the server closed it); "
                              f"check the URL and the camera's stream format")
        return DeviceLost(f"camera {self.source}: stream ended (camera unplugged or server gone); "
                          f"reopen it")


class Camera:
    """An open camera. Use ``cam = await Camera.open(source)`` (or ``async with await Camera.open(...)``)
    and close with :meth:`aclose`."""

    def __init__(self, source: int | str, kind: str, read_timeout: float) -> None:
        self.source = source
        self.kind = kind
        #: the backend OpenCV chose ("FFMPEG", "V4L2"), set once open
        self.backend = ""
        #: True when the driver decodes JPEG bytes itself (MJPEG streams), False when the backend decodes
        self.raw_jpeg = False
        self._read_timeout = read_timeout
        self._settings: dict[str, PropertyResult] = {}
        self._error: DeviceError | None = None
        self._closed = False
        self._opened = trio.Event()
        self._reader_finished = trio.Event()
        self._ended = trio.Event()  # set on failure and on close (watch() waits for it)
        self._commands: set[_Command] = set()
        self._reader: _Reader | None = None
        self._thread: threading.Thread | None = None
        # ---- shared with the reader thread, under _lock -------------------------------
        self._lock = threading.Lock()
        self._newest: _Newest | None = None
        self._frames_read = 0
        self._decoded = 0
        self._decode_errors = 0
        self._drops = 0
        self._last_read_at: float | None = None  # perf_counter
        self._read_times: collections.deque[float] = collections.deque(maxlen=FPS_WINDOW)
        self._waiters = 0  # tasks blocked in next_frame (the reader wakes trio only for them)
        self._wake_pending = False
        #: perf_counter time until which the reader decodes eagerly (a plain float: GIL-atomic)
        self._demand_until = 0.0
        self._opened_at = time.perf_counter()
        # ---- trio side only -------------------------------------------------------------
        self._new_frame = trio.Event()
        self._taken_seq = -1
        self._taken_at = -math.inf  # perf_counter
        self._latest: Frame | None = None
        self._last_converted = (math.nan, math.nan)  # (perf_counter, trio time): see _trio_time

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
        refused = [r for r in camera.settings if not r.accepted]
        if refused:  # one line; what to tell an operator is the caller's (the node: once per run)
            log.debug("camera %s: backend %s did not accept %s", source, camera.backend,
                      ", ".join(f"{r.name}={r.requested:g}" for r in refused))
        return camera

    # ---- frames -------------------------------------------------------------------------
    async def next_frame(self, timeout: float | None = 1.0) -> Frame:
        """The next frame not yet taken: the newest one read since the previous call (decoded now,
        off the trio thread, if the reader has not), else the next one read. DeviceTimeout if none
        arrives within ``timeout`` seconds, DeviceLost if the camera went away (after the frames
        already read)."""
        return await self._get(timeout, take=True)

    async def newest(self, timeout: float | None = 1.0) -> Frame:
        """The newest frame read, taken or not, decoded now off the trio thread if needed (so at
        most one frame period old); waits for the first frame if none was read yet. Does not
        count as taking it (``next_frame`` still hands it out). Errors as :meth:`next_frame`."""
        latest = self._latest
        with self._lock:
            newest = self._newest
        if latest is not None and newest is not None and latest.seq == newest.seq:
            self._ask()
            return latest
        return await self._get(timeout, take=False)

    async def _get(self, timeout: float | None, *, take: bool) -> Frame:
        self._check_open()
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                while True:
                    self._ask()
                    with self._lock:
                        newest = self._newest
                        if newest is not None and (newest.seq > self._taken_seq or not take) \
                                and not newest.bad \
                                and (newest.image is not None or newest.encoded is not None):
                            previous, previous_at = self._taken_seq, self._taken_at
                            if take:
                                self._taken_seq, self._taken_at = newest.seq, time.perf_counter()
                            waiting = None
                        else:
                            if self._error is not None or self._closed:
                                break
                            self._waiters += 1
                            waiting = self._new_frame
                    if waiting is None:
                        frame = await self._materialise(newest, previous if take else -1, previous_at)
                        if frame is not None:
                            return frame
                        continue  # did not decode (counted): wait for the next one
                    try:
                        await waiting.wait()
                    finally:
                        with self._lock:
                            self._waiters -= 1
        except trio.TooSlowError:
            raise DeviceTimeout(f"camera {self.source}: no frame within {timeout:.2f}s "
                                f"(stalled camera or network?)") from None
        if self._error is not None:
            raise _fresh(self._error)
        raise trio.ClosedResourceError(f"camera {self.source} is closed")

    def latest(self) -> Frame | None:
        """The newest frame decoded so far, taken or not (None before the first decode, and after
        :meth:`forget_frames`). Never decodes on the calling (trio) thread: while frames are being
        asked for it is the newest frame read or the one before; after an idle spell it can be old,
        and it restarts decoding, so call it again a frame period later, or use :meth:`newest` for
        a fresh frame."""
        self._ask()
        with self._lock:
            newest = self._newest
        if newest is not None and newest.image is not None and (
                self._latest is None or self._latest.seq < newest.seq):
            self._latest = Frame(newest.image, newest.seq, self._trio_time(newest.read_at))
        return self._latest

    def forget_frames(self) -> None:
        """Drop the decoded frame kept for :meth:`latest` (after a capture, a palm image of whoever
        was last at the gate, kept until the next decode): :meth:`latest` is None again until then."""
        self._latest = None

    def frames(self, *, timeout: float | None = None) -> AsyncIterator[Frame]:
        """``async for frame in camera.frames()``: each new frame (newest wins) until the camera is
        closed; raises DeviceLost / DeviceTimeout like :meth:`next_frame`."""
        return _FrameIterator(self, timeout)

    async def watch(self, stall_timeout: float | None = None) -> None:
        """Supervise the camera without taking frames: returns when the camera is closed, raises
        DeviceLost when the stream ends or the reader fails, DeviceTimeout when no frame was read
        for ``stall_timeout`` seconds (default: the read timeout). Wakes about once per
        ``stall_timeout`` while frames flow."""
        stall = self._read_timeout if stall_timeout is None else stall_timeout
        while True:
            if self._error is not None:
                raise _fresh(self._error)
            if self._closed:
                return
            with self._lock:
                last = self._opened_at if self._last_read_at is None else self._last_read_at
            silent = time.perf_counter() - last
            if silent >= stall:
                raise DeviceTimeout(f"camera {self.source}: no frame read for {silent:.1f}s "
                                    f"(stalled camera or network?)")
            with trio.move_on_after(stall - silent):
                await self._ended.wait()

    @property
    def stats(self) -> CameraStats:
        """A snapshot of the counters (frames read, decoded, drops, decode errors, fps, last frame)."""
        with self._lock:
            times = self._read_times
            fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) >= 2 and times[-1] > times[0] \
                else 0.0
            last = self._last_read_at
            stats = CameraStats(frames=self._frames_read, drops=self._drops,
                                decode_errors=self._decode_errors, fps=fps, decoded=self._decoded)
        if last is not None:
            stats.last_frame_at = self._trio_time(last)
        return stats

    # ---- helpers (trio side) --------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"camera {self.source} is closed")

    def _ask(self) -> None:
        self._demand_until = time.perf_counter() + DEMAND_WINDOW_S

    def _trio_time(self, perf_at: float) -> float:
        # the two clocks are read one after the other, so converting the same moment twice can
        # differ by a fraction of a microsecond: a frame's time is converted once, and its frame,
        # latest() and stats.last_frame_at all carry that one value
        if self._last_converted[0] != perf_at:
            self._last_converted = (perf_at, trio.current_time() - max(0.0, time.perf_counter() - perf_at))
        return self._last_converted[1]

    async def _materialise(self, newest: _Newest, previous: int, previous_at: float) -> Frame | None:
        image = newest.image
        if image is None:
            assert newest.encoded is not None
            image = await trio.to_thread.run_sync(_to_grey, newest.encoded, True)
            with self._lock:
                if image is None:
                    self._decode_errors += 1
                    newest.bad = True
                else:
                    self._decoded += 1
                    newest.image = image
            if image is None:
                return None
        dropped = 0
        if time.perf_counter() - previous_at <= DEMAND_WINDOW_S and newest.seq > previous >= 0:
            dropped = newest.seq - previous - 1
            with self._lock:
                self._drops += dropped
        frame = Frame(image, newest.seq, self._trio_time(newest.read_at), dropped)
        if self._latest is None or self._latest.seq <= frame.seq:
            self._latest = frame
        return frame

    # ---- called by the reader thread: short, under the lock, never raise --------------------
    def _demanded(self, now: float) -> bool:
        return self._waiters > 0 or now < self._demand_until

    def _count_error(self) -> None:
        with self._lock:
            self._decode_errors += 1

    def _note_read(self, read_at: float, newest: _Newest | None) -> bool:
        """Count one frame read (``newest`` None: it was unusable); True when trio must be woken."""
        with self._lock:
            self._frames_read += 1
            self._last_read_at = read_at
            self._read_times.append(read_at)
            if newest is None:
                return False
            if newest.image is not None:
                self._decoded += 1
            self._newest = newest
            if self._waiters and not self._wake_pending:
                self._wake_pending = True
                return True
            return False

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
        self._wake()
        self._ended.set()
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

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
            event, self._new_frame = self._new_frame, trio.Event()
        event.set()

    def _fail(self, error: DeviceError) -> None:
        if self._error is None and not self._closed:
            # debug only: the error reaches the caller as the exception of its next read, and a
            # node retrying an absent camera every second would log a warning every second
            log.debug("%s", error)
            self._error = error
        self._wake()  # waiting takers get the frame already read, then the error
        self._ended.set()
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
