"""Trio driver for a Benewake TFmini-S / TFmini Plus on a serial port.

``sensor = await ProximitySensor.open(path)`` reads the firmware version, sets the output unit and
frame rate and enables output (each command retried: replies interleave with a 100 Hz stream of
data frames and the first answer after power-up can be late). ``async for d in
sensor.measurements()`` then yields :class:`Distance` readings; a stream gap longer than
``gap_timeout`` raises :class:`DeviceTimeout` so the supervisor can reset the sensor, and an
unplugged port raises :class:`DeviceLost`.
"""
from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable
from typing import Literal

import attrs
import trio

from drivers.errors import DeviceLost, DeviceTimeout
from drivers.proximity import codec
from drivers.serialport import SerialPort

DEVICE = "proximity sensor (TFmini)"
ATTEMPT_S = 0.25  # a command unanswered this long is sent again (the sensor answers in ms)
MIN_GAP_TIMEOUT_S = 0.2
GAP_PERIODS = 10  # frames that may go missing before the stream counts as stalled
#: the output unit is sent again this often while streaming: a sensor reset behind a port that
#: stays (brown-out) reloads its saved unit (cm from the factory), which no frame shows
REASSERT_S = 5.0
_UNITS = {"mm": (codec.OutputFormat.STANDARD_MM, 1), "cm": (codec.OutputFormat.STANDARD_CM, 10)}


@attrs.frozen
class Distance:
    """One reading. ``distance_mm`` is ``None`` when the sensor flags it unreliable (weak or
    saturated signal, blind zone, nothing in range); ``at`` is ``trio.current_time()`` on receipt."""

    distance_mm: int | None
    strength: int
    temperature_c: float
    at: float


@attrs.define
class ProximityStats:
    """Health counters for the diagnostics registry."""

    frames_ok: int = 0  # data frames with a good checksum
    unreliable: int = 0  # of those, readings the sensor flagged unreliable
    replies: int = 0  # command replies received
    drops: collections.Counter[str] = attrs.Factory(collections.Counter)  # by DropReason value
    last_frame_at: float | None = None
    timeouts: int = 0
    reasserts: int = 0  # output unit sent again while streaming (REASSERT_S)


class ProximitySensor:
    """An open TFmini. Use :meth:`open`; close with :meth:`aclose` (or ``async with``)."""

    def __init__(self, port: SerialPort, *, frame_rate_hz: int, unit: str, gap_timeout: float,
                 reassert_s: float = REASSERT_S) -> None:
        self._port = port
        self.reassert_s = reassert_s
        self._decoder = codec.SensorDecoder()
        self.path = port.path
        self.frame_rate_hz = frame_rate_hz
        self.unit = unit
        self._scale = _UNITS[unit][1]
        self.gap_timeout = gap_timeout
        self.firmware_version: codec.FirmwareVersion | None = None
        self.stats = ProximityStats()

    @classmethod
    async def open(cls, path: str, *, baudrate: int = 115200, frame_rate_hz: int = 100,
                   unit: Literal["mm", "cm"] = "mm", timeout: float = 2.0,
                   gap_timeout: float | None = None, read_interval_s: float = 0.0,
                   reassert_s: float = REASSERT_S) -> "ProximitySensor":
        """Open ``path`` and configure the sensor; :class:`DeviceTimeout` if it does not answer
        within ``timeout`` seconds, :class:`PortUnavailable` if the port cannot be opened.
        ``read_interval_s`` batches reads like a USB-serial latency timer (see SerialPort.open):
        a reading's ``at`` is then up to that much later than the frame's arrival. While streaming,
        the output unit is sent again every ``reassert_s`` (a sensor that reset behind the port
        would otherwise report in its saved unit, unseen)."""
        if unit not in _UNITS:
            raise ValueError(f"proximity unit must be 'mm' or 'cm', not {unit!r}")
        if not 1 <= frame_rate_hz <= codec.MAX_FRAME_RATE_HZ:
            raise ValueError(f"proximity frame rate must be 1..{codec.MAX_FRAME_RATE_HZ} Hz, "
                             f"not {frame_rate_hz}")
        if gap_timeout is None:
            gap_timeout = max(MIN_GAP_TIMEOUT_S, GAP_PERIODS / frame_rate_hz)
        port = SerialPort.open(path, baudrate, read_interval_s=read_interval_s)
        sensor = cls(port, frame_rate_hz=frame_rate_hz, unit=unit, gap_timeout=gap_timeout, reassert_s=reassert_s)
        try:
            port.reset_input_buffer()
            await sensor._handshake(timeout)
        except BaseException:
            await port.aclose()
            raise
        return sensor

    async def _handshake(self, timeout: float) -> None:
        fmt = _UNITS[self.unit][0]
        steps: list[tuple[str, codec.Command, Callable[[object], bool]]] = [
            ("firmware version", codec.GetFirmwareVersion(),
             lambda e: isinstance(e, codec.FirmwareVersion)),
            (f"output format {self.unit}", codec.SetOutputFormat(fmt),
             lambda e: e == codec.OutputFormatReply(fmt)),
            (f"frame rate {self.frame_rate_hz} Hz", codec.SetFrameRate(self.frame_rate_hz),
             lambda e: e == codec.FrameRateReply(self.frame_rate_hz)),
            ("enable output", codec.EnableOutput(True),
             lambda e: e == codec.OutputEnableReply(True)),
        ]
        step = steps[0][0]
        with trio.move_on_after(timeout):
            for step, command, matches in steps:
                reply = await self._command(command, matches)
                if isinstance(reply, codec.FirmwareVersion):
                    self.firmware_version = reply
            return
        raise DeviceTimeout(self._describe(
            f"no answer to '{step}' within {timeout:g}s: check the wiring (sensor TX to host RX), "
            f"power and that the sensor runs at {self._port.baudrate} baud"))

    async def _command(self, command: codec.Command, matches: Callable[[object], bool]) -> object:
        """Send ``command`` until a matching reply arrives (cancel to give up)."""
        frame = codec.encode_command(command)
        while True:
            await self._port.send_all(frame)
            with trio.move_on_after(ATTEMPT_S):
                while True:
                    event = await self._next_event()
                    if matches(event):
                        return event

    async def _next_event(self) -> object:
        """The next decoded event, reading the port as needed; bookkeeping in :attr:`stats`."""
        while True:
            event = self._decoder.next_event()
            if event is None:
                self._decoder.receive_data(await self._port.receive_some())
                continue
            if isinstance(event, codec.Malformed):
                self.stats.drops[event.reason.value] += 1
            elif isinstance(event, codec.Measurement):
                self.stats.frames_ok += 1
                self.stats.last_frame_at = trio.current_time()
                if not event.reliable:
                    self.stats.unreliable += 1
            elif not isinstance(event, codec.PixhawkDistance):
                self.stats.replies += 1
            return event

    async def measurements(self) -> AsyncIterator[Distance]:
        """Readings as they arrive (one consumer at a time); :class:`DeviceTimeout` after ``gap_timeout`` without one,
        :class:`DeviceLost` when the port vanishes (the port is closed then)."""
        try:
            deadline = trio.current_time() + self.gap_timeout
            reassert_at = trio.current_time() + self.reassert_s
            while True:
                event = None
                with trio.move_on_at(deadline):
                    while not isinstance(event, codec.Measurement):
                        event = await self._next_event()
                if not isinstance(event, codec.Measurement):
                    self.stats.timeouts += 1
                    raise DeviceTimeout(self._describe(
                        f"no data frame for {self.gap_timeout:g}s (expected {self.frame_rate_hz} Hz): "
                        "the sensor stalled; reset or power-cycle it"))
                now = trio.current_time()
                deadline = now + self.gap_timeout
                if now >= reassert_at:  # RAM only (no flash wear); the reply is counted and skipped
                    await self._port.send_all(codec.encode_command(codec.SetOutputFormat(_UNITS[self.unit][0])))
                    self.stats.reasserts += 1
                    reassert_at = now + self.reassert_s
                distance = event.distance * self._scale if event.reliable and event.distance > 0 else None
                yield Distance(distance, event.strength, event.temperature_c, now)
        except DeviceLost:
            await self._port.aclose()
            raise

    def _describe(self, problem: str) -> str:
        dump = self._port.traffic.dump(8)
        tail = ("; recent traffic:\n  " + "\n  ".join(dump)) if dump else ""
        return f"{DEVICE} at {self.path}: {problem}{tail}"

    @property
    def traffic(self):
        return self._port.traffic

    async def aclose(self) -> None:
        await self._port.aclose()

    async def __aenter__(self) -> "ProximitySensor":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
