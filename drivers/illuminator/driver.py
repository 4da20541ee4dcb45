"""The LED driver board (StandardFirmata + palmnode dead-man extension) from the host, on trio.

    lights = await Illuminator.open("/dev/ttyACM0", channels={"ir": 9, "surface": 10},
                                    thermistor_pin=0, deadman_ms=500, max_temperature_c=60.0)
    async with lights:                       # closing switches every light off first
        nursery.start_soon(lights.run)       # feeds the dead-man timer, watches the temperature
        await lights.set_level("ir", 0.8)

``run()`` must be running for lights to stay on: when the host goes quiet the board's dead-man
timer switches them off by itself (docs/protocols/illuminator.md). Over-temperature is watched in
two places: here (configurable limit, hysteresis, events) and on the board (a fixed last-resort
cutoff that works even when this host is dead).
"""
from __future__ import annotations

import logging
import math
from typing import Mapping

import attrs
import trio

from drivers.errors import DeviceError, DeviceLost, DeviceTimeout, ProtocolError
from drivers.illuminator import codec as fc
from drivers.illuminator.thermistor import Thermistor
from drivers.serialport import SerialPort

log = logging.getLogger(__name__)

#: StandardFirmata.ino: Firmata.begin(57600)
DEFAULT_BAUDRATE = 57600
#: open()'s default timeout: a handshake step, a silent board (and twice it: no thermistor reading)
DEFAULT_TIMEOUT_S = 2.0
#: a board that announced nothing by then is asked (an Uno talks ~1.6 s after the DTR reset)
FIRST_ASK_AFTER_S = 0.15
#: re-ask an unanswered query this often during the handshake
ASK_EVERY_S = 0.5
#: feed the dead-man timer this many times per timeout
FEEDS_PER_TIMEOUT = 3
#: events kept for a slow consumer before new ones are dropped (and counted)
EVENT_QUEUE = 64


class PinCapabilityError(DeviceError):
    """The configured pins do not fit the board (a channel pin without PWM, a missing channel)."""


class OverTemperatureLockout(DeviceError):
    """A light was asked to go on while the board is too hot."""


@attrs.frozen
class OverTemperature:
    """Lights were switched off for heat: ``source`` "driver" (this driver's ``limit_c``) or
    "board" (the board's own cutoff; its limit is not reported, so ``limit_c`` is None)."""
    temperature_c: float | None
    limit_c: float | None
    source: str


@attrs.frozen
class Cooled:
    """The board cooled below the limit minus the hysteresis: lights are allowed again."""
    temperature_c: float


@attrs.frozen
class DeadmanTripped:
    """The board switched the lights off because the host was silent longer than the timeout."""


@attrs.frozen
class BoardNotice:
    """A STRING_DATA message from the board."""
    text: str


IlluminatorEvent = OverTemperature | Cooled | DeadmanTripped | BoardNotice


@attrs.define
class IlluminatorStats:
    frames_ok: int = 0
    drops: dict[str, int] = attrs.field(factory=dict)
    last_frame_at: float | None = None
    level_writes: int = 0
    deadman_feeds: int = 0
    deadman_acks: int = 0
    deadman_trips: int = 0
    over_temperature_trips: int = 0
    board_cutoffs: int = 0
    notices: int = 0
    events_dropped: int = 0


class Illuminator:
    """One LED driver board. Open with :meth:`open`; run :meth:`run`; close with :meth:`aclose`."""

    device = "illuminator"

    def __init__(self, port: SerialPort, *, channels: Mapping[str, int], thermistor_pin: int,
                 deadman_ms: int, max_temperature_c: float, hysteresis_c: float, timeout: float,
                 sampling_interval_ms: int, thermistor: Thermistor) -> None:
        self._port = port
        self.path = port.path
        self.channels: Mapping[str, int] = dict(channels)
        self.thermistor_pin = thermistor_pin
        self.deadman_ms = deadman_ms
        self.max_temperature_c = max_temperature_c
        self.hysteresis_c = hysteresis_c
        self.timeout = timeout
        self.sampling_interval_ms = sampling_interval_ms
        self.thermistor = thermistor
        self.stats = IlluminatorStats()
        self.firmware: str | None = None
        self.firmware_version: tuple[int, int] | None = None
        self.protocol_version: tuple[int, int] | None = None
        self.capabilities: fc.CapabilityResponse | None = None
        self.analog_mapping: fc.AnalogMappingResponse | None = None
        self._decoder = fc.BoardToHostDecoder()
        self._levels = {name: 0.0 for name in self.channels}
        self._pin_states: dict[int, fc.PinStateResponse] = {}
        self._deadman_ack: int | None = None
        self._unacked_feed_at: float | None = None  # trio time of the oldest feed not yet acknowledged
        self._adc: int | None = None
        self._adc_at: float | None = None  # trio time of the last thermistor reading
        self._hot = False         # this driver's limit is exceeded (latched until cooled)
        self._board_hot = False   # the board reported its own cutoff (latched until it clears it)
        self._ready = False
        self._closed = False
        self._send_lock = trio.Lock()
        self._events_in, self._events_out = trio.open_memory_channel[IlluminatorEvent](EVENT_QUEUE)

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        path: str,
        *,
        channels: Mapping[str, int],
        thermistor_pin: int,
        deadman_ms: int,
        max_temperature_c: float,
        hysteresis_c: float = 5.0,
        baudrate: int = DEFAULT_BAUDRATE,
        timeout: float = DEFAULT_TIMEOUT_S,
        sampling_interval_ms: int = 50,
        thermistor: Thermistor = Thermistor(),
    ) -> "Illuminator":
        """Open the board at ``path``, check it and set it up; every light starts off.

        ``channels`` maps light names to PWM pin numbers, ``thermistor_pin`` is the thermistor's
        analog channel (0 = A0), ``deadman_ms`` the board's dead-man timeout (1..16383 ms; 0
        leaves it disarmed). Raises PortUnavailable, DeviceTimeout (no answer within ``timeout``
        per step), ProtocolError, PinCapabilityError.
        """
        check_settings(channels, thermistor_pin, deadman_ms, max_temperature_c, hysteresis_c,
                       sampling_interval_ms)
        port = SerialPort.open(path, baudrate)
        self = cls(port, channels=channels, thermistor_pin=thermistor_pin, deadman_ms=deadman_ms,
                   max_temperature_c=max_temperature_c, hysteresis_c=hysteresis_c,
                   timeout=timeout, sampling_interval_ms=sampling_interval_ms,
                   thermistor=thermistor)
        try:
            await self._handshake()
        except BaseException:
            await port.aclose()
            raise
        return self

    async def _handshake(self) -> None:
        await self._until(lambda: self.firmware is not None and self.protocol_version is not None,
                          "firmware report", hint="is StandardFirmata flashed, at 57600 baud?",
                          ask=fc.version_query() + fc.firmware_query(), first_ask_after=FIRST_ASK_AFTER_S)
        if self.protocol_version[0] != 2:
            raise ProtocolError(f"{self._name}: Firmata protocol {_version(self.protocol_version)} "
                                f"is not supported; flash StandardFirmata 2.5 or newer 2.x")
        await self._until(lambda: self.capabilities is not None, "capability response",
                          ask=fc.capability_query())
        await self._until(lambda: self.analog_mapping is not None, "analog mapping response",
                          ask=fc.analog_mapping_query())
        pwm_pins = self.capabilities.pins_with(fc.MODE_PWM)
        for name, pin in self.channels.items():
            if pin not in pwm_pins:
                raise PinCapabilityError(
                    f"{self._name}: channel {name!r} is on pin {pin}, which has no PWM on this board; "
                    f"use one of the PWM pins {', '.join(map(str, pwm_pins))}")
        thermistor_pin = self.analog_mapping.pin_of(self.thermistor_pin)
        if thermistor_pin is None:
            channels = [ch for ch in self.analog_mapping.channels if ch is not None]
            raise PinCapabilityError(
                f"{self._name}: thermistor analog channel A{self.thermistor_pin} does not exist on this "
                f"board; it has A0-A{max(channels) if channels else '?'}")
        await self._send(fc.sampling_interval(self.sampling_interval_ms)
                         + b"".join(fc.set_pin_mode(pin, fc.MODE_PWM) for pin in self.channels.values())
                         + b"".join(_analog_write(pin, 0) for pin in self.channels.values())
                         + fc.set_pin_mode(thermistor_pin, fc.MODE_ANALOG)
                         + fc.report_analog(self.thermistor_pin, True))
        for name, pin in self.channels.items():
            self._pin_states.pop(pin, None)
            await self._until(lambda: pin in self._pin_states, f"pin state of pin {pin}",
                              ask=fc.pin_state_query(pin))
            if self._pin_states[pin].mode != fc.MODE_PWM:
                raise PinCapabilityError(f"{self._name}: pin {pin} (channel {name!r}) did not switch "
                                         f"to PWM; check the board's wiring and firmware")
        if self.deadman_ms:
            await self._until(lambda: self._deadman_ack == self.deadman_ms,
                              "dead-man acknowledgement (sysex 0x0D)",
                              hint="flash the palmnode StandardFirmata with the dead-man extension",
                              ask=fc.deadman_arm(self.deadman_ms), error=ProtocolError)
        await self._until(lambda: self._adc is not None, f"thermistor reading on A{self.thermistor_pin}",
                          ask=fc.report_analog(self.thermistor_pin, True))
        self._ready = True
        log.info("%s: %s, protocol %s, channels %s, deadman %d ms", self._name, self.firmware,
                 _version(self.protocol_version), dict(self.channels), self.deadman_ms)
        await self._check_temperature(opening=True)  # a board already too hot locks lights out from the start

    async def _until(self, done, what: str, *, ask: bytes, hint: str = "",
                     first_ask_after: float = 0.0, error: type[DeviceError] = DeviceTimeout) -> None:
        """Read and handle the board's messages until ``done()``; send ``ask`` now and then."""
        start = trio.current_time()
        deadline = start + self.timeout
        next_ask = start + first_ask_after
        while not done():
            now = trio.current_time()
            if now >= deadline:
                self._log_traffic()
                raise error(f"{self._name}: no {what} within {self.timeout:g} s"
                            + (f"; {hint}" if hint else ""))
            if now >= next_ask:
                await self._send(ask)
                next_ask = now + ASK_EVERY_S
            data = b""
            with trio.move_on_at(min(deadline, next_ask)):
                data = await self._port.receive_some()
            if data:
                await self._receive(data)

    # ---- running ------------------------------------------------------------------------
    async def run(self) -> None:
        """Read the board, feed its dead-man timer, watch the temperature. Runs until cancelled
        or :meth:`aclose`; raises DeviceLost (unplugged, board restarted) or DeviceTimeout
        (board silent)."""
        try:
            await self._run()
        except trio.ClosedResourceError:
            if not self._closed:
                raise
            # aclose() ends run()

    async def _run(self) -> None:
        period = self.deadman_ms / 1000.0 / FEEDS_PER_TIMEOUT if self.deadman_ms else math.inf
        next_feed = trio.current_time() if self.deadman_ms else math.inf
        silent_since = trio.current_time()
        self._unacked_feed_at = None
        while True:
            now = trio.current_time()
            if now >= next_feed:
                await self._send(fc.deadman_arm(self.deadman_ms))  # feeds, and re-arms after a trip
                self.stats.deadman_feeds += 1
                if self._unacked_feed_at is None:
                    self._unacked_feed_at = now
                next_feed = now + period
            if now - silent_since >= self.timeout:
                self._log_traffic()
                raise DeviceTimeout(f"{self._name}: board silent for {self.timeout:g} s "
                                    f"(it reports the thermistor every {self.sampling_interval_ms} ms)")
            if self._unacked_feed_at is not None and now - self._unacked_feed_at >= self.timeout:
                # talking, but no longer confirming its dead-man timer: it may not switch off for a dead host
                raise ProtocolError(f"{self._name}: dead-man feed not acknowledged within {self.timeout:g} s; "
                                    f"reset the board")
            # talking, but its temperature no longer known: lights could burn on unwatched (twice the
            # timeout, so that a board gone silent altogether is the DeviceTimeout above first)
            reading_until = self._adc_at + 2 * self.timeout
            if now >= reading_until:
                raise ProtocolError(f"{self._name}: no thermistor reading for {2 * self.timeout:g} s (it should "
                                    f"report every {self.sampling_interval_ms} ms); reset the board")
            data = b""
            unacked_until = math.inf if self._unacked_feed_at is None else self._unacked_feed_at + self.timeout
            with trio.move_on_at(min(next_feed, silent_since + self.timeout, unacked_until, reading_until)):
                data = await self._port.receive_some()
            if data:
                frames = self.stats.frames_ok
                await self._receive(data)
                if self.stats.frames_ok > frames:  # garbage is not a sign of life: it carries no reading
                    silent_since = trio.current_time()

    # ---- lights -------------------------------------------------------------------------
    @property
    def levels(self) -> Mapping[str, float]:
        """Each channel's level as last written (0..1, quantised to the 8-bit PWM)."""
        return dict(self._levels)

    @property
    def temperature_c(self) -> float | None:
        """Board temperature from the thermistor (None before the first reading)."""
        return None if self._adc is None else self.thermistor.celsius(self._adc)

    @property
    def over_temperature(self) -> bool:
        """Lights are refused: too hot here or at the board's own cutoff."""
        return self._hot or self._board_hot

    async def set_level(self, channel: str, level: float) -> None:
        """Drive ``channel`` at ``level`` (0 = off .. 1 = full)."""
        pin = self.channels.get(channel)
        if pin is None:
            known = ", ".join(repr(name) for name in self.channels)
            raise ValueError(f"unknown illuminator channel {channel!r}; known channels: {known}")
        if not (isinstance(level, (int, float)) and 0.0 <= level <= 1.0):
            raise ValueError(f"illuminator level must be between 0 and 1, got {level!r}")
        if level > 0 and self.over_temperature:
            raise OverTemperatureLockout(
                f"{self._name}: lights refused, board at {self._temperature_text()} "
                f"(limit {self.max_temperature_c:g} °C; allowed again below "
                f"{self.max_temperature_c - self.hysteresis_c:g} °C)")
        duty = round(level * 255)
        await self._send(_analog_write(pin, duty))
        self._levels[channel] = duty / 255
        self.stats.level_writes += 1

    async def all_off(self) -> None:
        """Every channel to 0."""
        await self._send(b"".join(_analog_write(pin, 0) for pin in self.channels.values()))
        for name in self._levels:
            self._levels[name] = 0.0

    def events(self) -> trio.MemoryReceiveChannel[IlluminatorEvent]:
        """OverTemperature, Cooled, DeadmanTripped and BoardNotice events (one consumer)."""
        return self._events_out

    # ---- closing ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Switch every light off (best effort, bounded), then close the port."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(min(self.timeout, 0.5)):
                try:
                    await self.all_off()
                except (DeviceError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass  # the port is gone: the board lost power or its dead-man timer acts
            await self._port.aclose()
            self._events_in.close()

    async def __aenter__(self) -> "Illuminator":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- internals ----------------------------------------------------------------------
    @property
    def _name(self) -> str:
        return f"illuminator on {self.path}"

    def _temperature_text(self) -> str:
        t = self.temperature_c
        if t is None:
            return "an unknown temperature"
        if not math.isfinite(t):  # the ADC sits at a rail
            return "a thermistor reading " + ("short circuit" if t > 0 else "open circuit (disconnected?)")
        return f"{t:.1f} °C"

    async def _send(self, data: bytes) -> None:
        # shielded: a cancelled caller must not leave half a message on the line
        with trio.CancelScope(shield=True):
            async with self._send_lock:
                with trio.move_on_after(self.timeout) as scope:
                    await self._port.send_all(data)
        if scope.cancelled_caught:
            raise DeviceTimeout(f"{self._name}: cannot write to the port for {self.timeout:g} s")

    async def _receive(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        while (event := self._decoder.next_event()) is not None:
            await self._handle(event)

    async def _handle(self, event: fc.Event) -> None:
        if isinstance(event, fc.Malformed):
            self.stats.drops[event.reason] = self.stats.drops.get(event.reason, 0) + 1
            log.debug("%s: dropped %s %s", self._name, event.reason, event.data.hex(" "))
            return
        self.stats.frames_ok += 1
        self.stats.last_frame_at = trio.current_time()
        match event:
            case fc.AnalogMessage(channel, value) if channel == self.thermistor_pin:
                self._adc = value
                self._adc_at = trio.current_time()
                if self._ready:
                    await self._check_temperature()
            case fc.DeadmanAck(timeout_ms):
                self._deadman_ack = timeout_ms
                self.stats.deadman_acks += 1
                if self._ready and timeout_ms != self.deadman_ms:  # it would not switch off for a dead host
                    raise ProtocolError(f"{self._name}: the board armed its dead-man timer for {timeout_ms} ms, "
                                        f"not {self.deadman_ms} ms; reset the board")
                self._unacked_feed_at = None
            case fc.SafetyTrip(cause):
                await self._board_tripped(cause)
            case fc.SafetyClear(fc.TRIP_OVER_TEMPERATURE):
                self._board_hot = False
                self._maybe_cooled()
            case fc.StringData(text):
                self.stats.notices += 1
                log.info("%s says: %s", self._name, text)
                self._emit(BoardNotice(text))
            case fc.ProtocolVersion(major, minor):
                self.protocol_version = (major, minor)
            case fc.FirmwareReport(major, minor, name):
                if self._ready:  # only a (re)starting board announces itself unasked
                    raise DeviceLost(f"{self._name}: the board restarted and lost its setup; reopen it")
                self.firmware, self.firmware_version = name, (major, minor)
            case fc.CapabilityResponse():
                self.capabilities = event
            case fc.AnalogMappingResponse():
                self.analog_mapping = event
            case fc.PinStateResponse(pin):
                self._pin_states[pin] = event
            case _:
                pass

    async def _check_temperature(self, *, opening: bool = False) -> None:
        t = self.temperature_c
        # a board just opened may be cooling from a trip this driver did not see (a reconnect, a
        # node restart): then the hysteresis band counts as too hot, as it would have here
        limit = self.max_temperature_c - (self.hysteresis_c if opening else 0.0)
        if not self._hot and (not math.isfinite(t) or t >= limit):  # open/short NTC trips too
            self._hot = True
            self.stats.over_temperature_trips += 1
            log.warning("%s: %s (limit %g °C), lights off", self._name,
                        self._temperature_text(), self.max_temperature_c)
            await self.all_off()
            self._emit(OverTemperature(t, self.max_temperature_c, "driver"))
        elif self._hot and math.isfinite(t) and t < self.max_temperature_c - self.hysteresis_c:
            self._hot = False
            self._maybe_cooled()

    def _maybe_cooled(self) -> None:
        if not self.over_temperature:
            log.info("%s: cooled to %s, lights allowed", self._name, self._temperature_text())
            self._emit(Cooled(self.temperature_c))

    async def _board_tripped(self, cause: int) -> None:
        for name in self._levels:  # the board has already switched every light off
            self._levels[name] = 0.0
        if cause == fc.TRIP_DEADMAN:
            self.stats.deadman_trips += 1
            log.warning("%s: dead-man timer tripped, the board switched the lights off", self._name)
            self._emit(DeadmanTripped())
        elif cause == fc.TRIP_OVER_TEMPERATURE:
            self._board_hot = True
            self.stats.board_cutoffs += 1
            log.warning("%s: the board's own over-temperature cutoff switched the lights off", self._name)
            self._emit(OverTemperature(self.temperature_c, None, "board"))

    def _emit(self, event: IlluminatorEvent) -> None:
        try:
            self._events_in.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.stats.events_dropped += 1

    def _log_traffic(self) -> None:
        lines = self._port.traffic.dump()
        if lines:
            log.warning("%s: recent traffic:\n  %s", self._name, "\n  ".join(lines))


def _analog_write(pin: int, value: int) -> bytes:
    # protocol.md: the analog I/O message reaches pins 0-15; Extended Analog any pin
    return fc.analog_message(pin, value) if pin <= 15 else fc.extended_analog(pin, value)


def _version(version: tuple[int, int] | None) -> str:
    return "?" if version is None else f"{version[0]}.{version[1]}"


def check_settings(channels: Mapping[str, int], thermistor_pin: int, deadman_ms: int,
                   max_temperature_c: float, hysteresis_c: float, sampling_interval_ms: int) -> None:
    """ValueError naming the first setting :meth:`Illuminator.open` cannot use."""
    if not channels:
        raise ValueError("illuminator needs at least one channel, e.g. channels={'ir': 9}")
    for name, pin in channels.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"illuminator channel names must be non-empty strings, got {name!r}")
        if not isinstance(pin, int) or not 0 <= pin <= 127:
            raise ValueError(f"illuminator channel {name!r}: pin must be 0..127, got {pin!r}")
    if len(set(channels.values())) != len(channels):
        raise ValueError(f"illuminator channels share a pin: {dict(channels)}")
    if not isinstance(thermistor_pin, int) or not 0 <= thermistor_pin <= 15:
        raise ValueError(f"illuminator thermistor_pin must be an analog channel 0..15, got {thermistor_pin!r}")
    if not isinstance(deadman_ms, int) or not 0 <= deadman_ms <= fc.MAX_14BIT:
        raise ValueError(f"illuminator deadman_ms must be 0..{fc.MAX_14BIT}, got {deadman_ms!r}")
    if not math.isfinite(max_temperature_c):
        raise ValueError(f"illuminator max_temperature_c must be a finite number, got {max_temperature_c!r}")
    if not hysteresis_c >= 0:
        raise ValueError(f"illuminator hysteresis_c must be 0 or more, got {hysteresis_c!r}")
    if not isinstance(sampling_interval_ms, int) or not 1 <= sampling_interval_ms <= fc.MAX_14BIT:
        raise ValueError(f"illuminator sampling_interval_ms must be 1..{fc.MAX_14BIT}, got {sampling_interval_ms!r}")
