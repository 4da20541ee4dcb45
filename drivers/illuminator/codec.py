"""Firmata 2.5 (StandardFirmata) messages plus the palmnode dead-man extension, sans-IO.

Feed bytes with ``receive_data``, take typed events with ``next_event`` (``None``: needs more
data). :class:`BoardToHostDecoder` decodes what a board sends, :class:`HostToBoardDecoder` what a
host sends; they differ only where the spec gives one byte two meanings by direction (0xF9 is a
bare request from the host but ``F9 major minor`` from the board; sysex 0x79 is a query from the
host but the firmware report from the board). Encoders are plain functions returning bytes, and
:func:`encode` turns any event back into its bytes.

Framing follows MIDI, as Firmata does: a byte with the high bit set is a command, data bytes are
7-bit. A command byte arriving where data was expected ends the broken message (``Malformed``) and
starts the new one, so the decoder resynchronises on the next command byte, exactly like
FirmataParser. Sysex payloads are capped; nothing in here grows without bound.

Spec: firmata/protocol ``protocol.md`` (v2.5.1), sections named in the comments below.
"""
from __future__ import annotations

from typing import Iterable, Union

import attrs

# ---- command bytes: protocol.md "Message Types" ----------------------------------------------
ANALOG_MESSAGE = 0xE0         # protocol.md Message Types: analog I/O message, channel = pin (0-15)
DIGITAL_MESSAGE = 0x90        # protocol.md Message Types: digital I/O message, channel = port
REPORT_ANALOG = 0xC0          # protocol.md Message Types: report analog pin, channel = analog pin
REPORT_DIGITAL = 0xD0         # protocol.md Message Types: report digital port, channel = port
START_SYSEX = 0xF0            # protocol.md Message Types: start sysex
SET_PIN_MODE = 0xF4           # protocol.md Message Types: set pin mode (I/O)
SET_DIGITAL_PIN_VALUE = 0xF5  # protocol.md Message Types: set digital pin value (added in v2.5)
END_SYSEX = 0xF7              # protocol.md Message Types: sysex end
REPORT_VERSION = 0xF9         # protocol.md Message Types: protocol version
SYSTEM_RESET = 0xFF           # protocol.md Message Types: system reset

# ---- sysex feature IDs: protocol.md "Sysex Message Format" -----------------------------------
ANALOG_MAPPING_QUERY = 0x69     # protocol.md Sysex Message Format / Analog Mapping Query
ANALOG_MAPPING_RESPONSE = 0x6A  # protocol.md Sysex Message Format / Analog Mapping Query
CAPABILITY_QUERY = 0x6B         # protocol.md Sysex Message Format / Capability Query
CAPABILITY_RESPONSE = 0x6C      # protocol.md Sysex Message Format / Capability Query
PIN_STATE_QUERY = 0x6D          # protocol.md Sysex Message Format / Pin State Query
PIN_STATE_RESPONSE = 0x6E       # protocol.md Sysex Message Format / Pin State Query
EXTENDED_ANALOG = 0x6F          # protocol.md Sysex Message Format / Extended Analog
STRING_DATA = 0x71              # protocol.md Sysex Message Format / String
REPORT_FIRMWARE = 0x79          # protocol.md Sysex Message Format / Query Firmware Name and Version
SAMPLING_INTERVAL = 0x7A        # protocol.md Sysex Message Format / Sampling Interval
#: protocol.md Sysex Message Format: "IDs 0x01 - 0x0F are reserved for user defined commands";
#: palmnode's dead-man / safety extension (docs/protocols/illuminator.md)
PALMNODE_SAFETY = 0x0D

# palmnode safety sub-commands (docs/protocols/illuminator.md "Dead-man extension")
DEADMAN_ARM = 0x01   # host -> board: F0 0D 01 <timeout ms LSB> <MSB> F7 (0 disarms)
DEADMAN_ACK = 0x02   # board -> host: F0 0D 02 <timeout ms LSB> <MSB> F7 (the timeout now in force)
SAFETY_TRIP = 0x03   # board -> host: F0 0D 03 <cause> F7 (the board switched every light off)
SAFETY_CLEAR = 0x04  # board -> host: F0 0D 04 <cause> F7 (a latched cause has cleared)
TRIP_DEADMAN = 0x01  # cause: the host was silent longer than the armed timeout
TRIP_OVER_TEMPERATURE = 0x02  # cause: the board's own thermistor cutoff
#: the extension's fixed cutoff: at or above it the board switches every light off (TRIP_OVER_TEMPERATURE)
BOARD_MAX_TEMPERATURE_C = 80.0

# ---- pin modes: protocol.md "Capability Query / Supported Modes" -----------------------------
MODE_INPUT = 0x00
MODE_OUTPUT = 0x01
MODE_ANALOG = 0x02
MODE_PWM = 0x03
MODE_SERVO = 0x04
MODE_SHIFT = 0x05
MODE_I2C = 0x06
MODE_ONEWIRE = 0x07
MODE_STEPPER = 0x08
MODE_ENCODER = 0x09
MODE_SERIAL = 0x0A
MODE_PULLUP = 0x0B
MODE_IGNORE = 0x7F  # FirmataConstants.h PIN_MODE_IGNORE: pin is not managed by Firmata
#: protocol.md Capability Query: 0x7F ends each pin's list of modes
CAPABILITY_PIN_END = 0x7F
#: protocol.md Analog Mapping Query: 127 = "pin does not support analog"
NO_ANALOG_CHANNEL = 0x7F

#: Firmata.h MAX_DATA_BYTES: the sysex buffer of an AVR StandardFirmata (what a board accepts)
BOARD_MAX_SYSEX = 64
#: largest sysex a host accepts (a Mega's capability response is ~900 bytes)
HOST_MAX_SYSEX = 2048
#: bytes the decoder holds before it drops the oldest (it never grows past this)
MAX_BUFFER = 4096
#: largest value of two 7-bit data bytes
MAX_14BIT = 0x3FFF


# ---- events ---------------------------------------------------------------------------------
@attrs.frozen
class AnalogMessage:
    """0xE0|pin LSB MSB: a PWM/servo write from the host, an analog reading from the board."""
    pin: int
    value: int


@attrs.frozen
class DigitalMessage:
    """0x90|port LSB MSB: the 8 pins of ``port`` as a bit mask."""
    port: int
    mask: int


@attrs.frozen
class ReportAnalog:
    """0xC0|channel 0/1: switch reporting of analog channel ``channel``."""
    channel: int
    enable: bool


@attrs.frozen
class ReportDigital:
    """0xD0|port 0/1: switch reporting of digital port ``port``."""
    port: int
    enable: bool


@attrs.frozen
class SetPinMode:
    """0xF4 pin mode."""
    pin: int
    mode: int


@attrs.frozen
class SetDigitalPinValue:
    """0xF5 pin value (v2.5)."""
    pin: int
    value: int


@attrs.frozen
class VersionQuery:
    """0xF9 alone, from the host: 'report your protocol version'."""


@attrs.frozen
class ProtocolVersion:
    """0xF9 major minor, from the board."""
    major: int
    minor: int


@attrs.frozen
class SystemReset:
    """0xFF: back to the power-up state (every output off)."""


@attrs.frozen
class FirmwareQuery:
    """F0 79 F7 from the host."""


@attrs.frozen
class FirmwareReport:
    """F0 79 major minor name(14-bit chars) F7 from the board."""
    major: int
    minor: int
    name: str


@attrs.frozen
class CapabilityQuery:
    """F0 6B F7."""


@attrs.frozen
class CapabilityResponse:
    """F0 6C ... F7: for each pin, its (mode, resolution) pairs; an empty tuple = unusable pin."""
    pins: tuple[tuple[tuple[int, int], ...], ...]

    def modes(self, pin: int) -> dict[int, int]:
        """{mode: resolution} of ``pin`` (empty when the pin does not exist)."""
        return dict(self.pins[pin]) if 0 <= pin < len(self.pins) else {}

    def pins_with(self, mode: int) -> tuple[int, ...]:
        return tuple(p for p, caps in enumerate(self.pins) if any(m == mode for m, _ in caps))


@attrs.frozen
class AnalogMappingQuery:
    """F0 69 F7."""


@attrs.frozen
class AnalogMappingResponse:
    """F0 6A ... F7: for each pin, its analog channel or None."""
    channels: tuple[int | None, ...]

    def pin_of(self, channel: int) -> int | None:
        """The pin number carrying analog channel ``channel`` (None when there is none)."""
        for pin, ch in enumerate(self.channels):
            if ch == channel:
                return pin
        return None


@attrs.frozen
class PinStateQuery:
    """F0 6D pin F7."""
    pin: int


@attrs.frozen
class PinStateResponse:
    """F0 6E pin mode state... F7; ``mode`` is None when the board has no such pin."""
    pin: int
    mode: int | None
    state: int


@attrs.frozen
class ExtendedAnalog:
    """F0 6F pin value(7 bits per byte, LSB first) F7: an analog write to any pin."""
    pin: int
    value: int


@attrs.frozen
class SamplingInterval:
    """F0 7A LSB MSB F7: analog reporting period in ms."""
    milliseconds: int


@attrs.frozen
class StringData:
    """F0 71 text(14-bit chars) F7: a short message, mostly errors from the board."""
    text: str


@attrs.frozen
class DeadmanArm:
    """F0 0D 01 LSB MSB F7 from the host: arm the dead-man timer (0 disarms)."""
    timeout_ms: int


@attrs.frozen
class DeadmanAck:
    """F0 0D 02 LSB MSB F7 from the board: the timeout now in force (0 = disarmed)."""
    timeout_ms: int


@attrs.frozen
class SafetyTrip:
    """F0 0D 03 cause F7 from the board: it switched every light off by itself."""
    cause: int


@attrs.frozen
class SafetyClear:
    """F0 0D 04 cause F7 from the board: a latched cause (over-temperature) has cleared."""
    cause: int


@attrs.frozen
class UnknownSysex:
    """A well-framed sysex this codec does not interpret (kept, not an error)."""
    command: int
    data: bytes


@attrs.frozen
class Malformed:
    """Bytes that break the framing rules; the decoder has resynchronised past them."""
    reason: str
    data: bytes = b""


Event = Union[
    AnalogMessage, DigitalMessage, ReportAnalog, ReportDigital, SetPinMode, SetDigitalPinValue,
    VersionQuery, ProtocolVersion, SystemReset, FirmwareQuery, FirmwareReport, CapabilityQuery,
    CapabilityResponse, AnalogMappingQuery, AnalogMappingResponse, PinStateQuery,
    PinStateResponse, ExtendedAnalog, SamplingInterval, StringData, DeadmanArm, DeadmanAck,
    SafetyTrip, SafetyClear, UnknownSysex, Malformed,
]

# Malformed reasons (stable strings: drivers count drops by them)
TRUNCATED = "truncated message"
STRAY_DATA = "stray data bytes"
UNKNOWN_COMMAND = "unknown command byte"
SYSEX_UNTERMINATED = "sysex without end"
SYSEX_TOO_LONG = "sysex over size cap"
STRAY_END = "sysex end without start"
BAD_PAYLOAD = "bad sysex payload"
OVERFLOW = "buffer overflow"


class _BadPayload(Exception):
    """Raised inside sysex parsing only; caught at the decoder boundary."""


# ---- decoders -------------------------------------------------------------------------------
_IDLE, _MESSAGE, _SYSEX, _SKIP_SYSEX, _STRAY = range(5)


class _FirmataDecoder:
    _from_board: bool
    _default_max_sysex: int

    def __init__(self, *, max_sysex: int | None = None) -> None:
        self.max_sysex = max_sysex if max_sysex is not None else self._default_max_sysex
        self._buf = bytearray()
        self._pos = 0
        self._state = _IDLE
        self._command = 0
        self._needed = 0
        self._data = bytearray()
        self._pending: list[Event] = []
        #: every Malformed event emitted, by reason
        self.dropped: dict[str, int] = {}

    @property
    def buffered(self) -> int:
        """Bytes held: unparsed input plus the partial message (always <= MAX_BUFFER + max_sysex)."""
        return len(self._buf) - self._pos + len(self._data)

    def receive_data(self, data: bytes) -> None:
        self._compact()
        self._buf += data
        excess = len(self._buf) - MAX_BUFFER
        if excess > 0:  # the caller is not draining events: keep the newest bytes
            lost = bytes(self._buf[:excess])
            del self._buf[:excess]
            self._reset()
            self._pending.append(self._malformed(OVERFLOW, lost[:16]))

    def next_event(self) -> Event | None:
        if self._pending:
            return self._pending.pop(0)
        while self._pos < len(self._buf):
            byte = self._buf[self._pos]
            event, consumed = self._step(byte)
            if consumed:
                self._pos += 1
            if event is not None:
                return event
        self._compact()
        return None

    def __iter__(self):
        """Every complete event now in the buffer."""
        while (event := self.next_event()) is not None:
            yield event

    # -- internals --
    def _compact(self) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0

    def _reset(self) -> None:
        self._state = _IDLE
        self._data = bytearray()

    def _malformed(self, reason: str, data: bytes = b"") -> Malformed:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return Malformed(reason, bytes(data))

    def _step(self, byte: int) -> tuple[Event | None, bool]:
        """Process one byte; returns (event or None, whether the byte was consumed)."""
        state = self._state
        if byte & 0x80:
            if state == _SYSEX:
                if byte == END_SYSEX:
                    data = bytes(self._data)
                    self._reset()
                    return self._sysex(data), True
                broken = bytes([START_SYSEX]) + bytes(self._data[:15])
                self._reset()
                return self._malformed(SYSEX_UNTERMINATED, broken), False
            if state == _MESSAGE:
                broken = bytes([self._command]) + bytes(self._data)
                self._reset()
                return self._malformed(TRUNCATED, broken), False
            if state == _SKIP_SYSEX:
                self._reset()
                return None, byte == END_SYSEX  # the oversize sysex's own end is swallowed
            self._reset()  # _IDLE or _STRAY
            return self._command_byte(byte), True
        # a data byte
        if state == _MESSAGE:
            self._data.append(byte)
            if len(self._data) == self._needed:
                command, data = self._command, bytes(self._data)
                self._reset()
                return self._message(command, data), True
            return None, True
        if state == _SYSEX:
            if len(self._data) >= self.max_sysex:
                head = bytes([START_SYSEX]) + bytes(self._data[:15])
                self._state = _SKIP_SYSEX
                self._data = bytearray()
                return self._malformed(SYSEX_TOO_LONG, head), True
            self._data.append(byte)
            return None, True
        if state in (_SKIP_SYSEX, _STRAY):
            return None, True
        self._state = _STRAY  # one Malformed per run of stray data bytes
        return self._malformed(STRAY_DATA, bytes([byte])), True

    def _command_byte(self, byte: int) -> Event | None:
        high = byte & 0xF0
        if high in (ANALOG_MESSAGE, DIGITAL_MESSAGE):
            return self._expect(byte, 2)
        if high in (REPORT_ANALOG, REPORT_DIGITAL):
            return self._expect(byte, 1)
        if byte in (SET_PIN_MODE, SET_DIGITAL_PIN_VALUE):
            return self._expect(byte, 2)
        if byte == REPORT_VERSION:
            return self._expect(byte, 2) if self._from_board else VersionQuery()
        if byte == SYSTEM_RESET:
            return SystemReset()
        if byte == START_SYSEX:
            self._state = _SYSEX
            self._data = bytearray()
            return None
        if byte == END_SYSEX:
            return self._malformed(STRAY_END, bytes([byte]))
        return self._malformed(UNKNOWN_COMMAND, bytes([byte]))

    def _expect(self, command: int, needed: int) -> None:
        self._state = _MESSAGE
        self._command = command
        self._needed = needed
        self._data = bytearray()
        return None

    def _message(self, command: int, data: bytes) -> Event:
        high, low = command & 0xF0, command & 0x0F
        if high == ANALOG_MESSAGE:
            return AnalogMessage(low, data[0] | data[1] << 7)
        if high == DIGITAL_MESSAGE:
            return DigitalMessage(low, data[0] | data[1] << 7)
        if high == REPORT_ANALOG:
            return ReportAnalog(low, data[0] != 0)
        if high == REPORT_DIGITAL:
            return ReportDigital(low, data[0] != 0)
        if command == SET_PIN_MODE:
            return SetPinMode(data[0], data[1])
        if command == SET_DIGITAL_PIN_VALUE:
            return SetDigitalPinValue(data[0], data[1])
        return ProtocolVersion(data[0], data[1])  # REPORT_VERSION from a board

    def _sysex(self, data: bytes) -> Event:
        if not data:
            return self._malformed(BAD_PAYLOAD, bytes([START_SYSEX, END_SYSEX]))
        command, payload = data[0], data[1:]
        try:
            return self._typed_sysex(command, payload)
        except _BadPayload:
            return self._malformed(BAD_PAYLOAD, bytes([START_SYSEX]) + data[:15])

    def _typed_sysex(self, command: int, payload: bytes) -> Event:
        if command == STRING_DATA:
            return StringData(_decode_14bit_text(payload))
        if command == PALMNODE_SAFETY:
            return self._safety(payload)
        if self._from_board:
            if command == REPORT_FIRMWARE:
                if len(payload) < 2:
                    raise _BadPayload
                return FirmwareReport(payload[0], payload[1], _decode_14bit_text(payload[2:]))
            if command == CAPABILITY_RESPONSE:
                return CapabilityResponse(_decode_capabilities(payload))
            if command == ANALOG_MAPPING_RESPONSE:
                return AnalogMappingResponse(
                    tuple(None if b == NO_ANALOG_CHANNEL else b for b in payload))
            if command == PIN_STATE_RESPONSE:
                if not payload:
                    raise _BadPayload
                if len(payload) == 1:  # StandardFirmata: pin >= TOTAL_PINS gets only the pin back
                    return PinStateResponse(payload[0], None, 0)
                if len(payload) == 2:
                    raise _BadPayload
                return PinStateResponse(payload[0], payload[1], _decode_7bit_int(payload[2:]))
        else:
            if command == REPORT_FIRMWARE:
                return FirmwareQuery()
            if command == CAPABILITY_QUERY:
                return CapabilityQuery()
            if command == ANALOG_MAPPING_QUERY:
                return AnalogMappingQuery()
            if command == PIN_STATE_QUERY:
                if len(payload) != 1:
                    raise _BadPayload
                return PinStateQuery(payload[0])
            if command == EXTENDED_ANALOG:
                if len(payload) < 2:  # StandardFirmata acts only when argc > 1
                    raise _BadPayload
                return ExtendedAnalog(payload[0], _decode_7bit_int(payload[1:]))
            if command == SAMPLING_INTERVAL:
                if len(payload) < 2:  # StandardFirmata acts only when argc > 1
                    raise _BadPayload
                return SamplingInterval(payload[0] | payload[1] << 7)
        return UnknownSysex(command, payload)

    def _safety(self, payload: bytes) -> Event:
        if not payload:
            raise _BadPayload
        sub, args = payload[0], payload[1:]
        if sub == DEADMAN_ARM and not self._from_board:
            if len(args) != 2:
                raise _BadPayload
            return DeadmanArm(args[0] | args[1] << 7)
        if sub == DEADMAN_ACK and self._from_board:
            if len(args) != 2:
                raise _BadPayload
            return DeadmanAck(args[0] | args[1] << 7)
        if sub == SAFETY_TRIP and self._from_board:
            if len(args) != 1:
                raise _BadPayload
            return SafetyTrip(args[0])
        if sub == SAFETY_CLEAR and self._from_board:
            if len(args) != 1:
                raise _BadPayload
            return SafetyClear(args[0])
        return UnknownSysex(PALMNODE_SAFETY, payload)


class BoardToHostDecoder(_FirmataDecoder):
    """Decodes what a Firmata board sends (the driver's decoder)."""
    _from_board = True
    _default_max_sysex = HOST_MAX_SYSEX


class HostToBoardDecoder(_FirmataDecoder):
    """Decodes what a host sends to a board (the emulator's decoder); sysex capped like the MCU's."""
    _from_board = False
    _default_max_sysex = BOARD_MAX_SYSEX


def _decode_14bit_text(payload: bytes) -> str:
    # protocol.md String / Query Firmware: each char is LSB (bits 0-6) then MSB (bits 7-13)
    if len(payload) % 2:
        raise _BadPayload
    return "".join(chr(payload[i] | payload[i + 1] << 7) for i in range(0, len(payload), 2))


def _decode_7bit_int(payload: bytes) -> int:
    value = 0
    for i, b in enumerate(payload):
        value |= b << (7 * i)
    return value


def _decode_capabilities(payload: bytes) -> tuple[tuple[tuple[int, int], ...], ...]:
    pins: list[tuple[tuple[int, int], ...]] = []
    current: list[int] = []
    for b in payload:
        if b == CAPABILITY_PIN_END and len(current) % 2 == 0:
            pins.append(tuple((current[i], current[i + 1]) for i in range(0, len(current), 2)))
            current = []
        else:
            current.append(b)
    if current:
        raise _BadPayload
    return tuple(pins)


# ---- encoders -------------------------------------------------------------------------------
def _check(name: str, value: int, low: int, high: int) -> int:
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def _two7(value: int) -> bytes:
    return bytes([value & 0x7F, value >> 7 & 0x7F])


def _text7(text: str) -> bytes:
    out = bytearray()
    for ch in text:
        out += _two7(_check("character code", ord(ch), 0, MAX_14BIT))
    return bytes(out)


def _7bit_int(value: int, min_bytes: int = 1) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F)
        value >>= 7
        if not value and len(out) >= min_bytes:
            return bytes(out)


def sysex(command: int, data: Iterable[int] = b"") -> bytes:
    """F0 command data... F7 (protocol.md Sysex Message Format); every data byte must be 7-bit."""
    payload = bytes(data)
    _check("sysex command", command, 0, 0x7F)
    if any(b & 0x80 for b in payload):
        raise ValueError("sysex data bytes must be 7-bit")
    return bytes([START_SYSEX, command]) + payload + bytes([END_SYSEX])


def analog_message(pin: int, value: int) -> bytes:
    return bytes([ANALOG_MESSAGE | _check("pin", pin, 0, 15)]) + _two7(_check("value", value, 0, MAX_14BIT))


def digital_message(port: int, mask: int) -> bytes:
    return bytes([DIGITAL_MESSAGE | _check("port", port, 0, 15)]) + _two7(_check("mask", mask, 0, MAX_14BIT))


def report_analog(channel: int, enable: bool) -> bytes:
    return bytes([REPORT_ANALOG | _check("channel", channel, 0, 15), 1 if enable else 0])


def report_digital(port: int, enable: bool) -> bytes:
    return bytes([REPORT_DIGITAL | _check("port", port, 0, 15), 1 if enable else 0])


def set_pin_mode(pin: int, mode: int) -> bytes:
    return bytes([SET_PIN_MODE, _check("pin", pin, 0, 127), _check("mode", mode, 0, 127)])


def set_digital_pin_value(pin: int, value: int) -> bytes:
    return bytes([SET_DIGITAL_PIN_VALUE, _check("pin", pin, 0, 127), 1 if value else 0])


def version_query() -> bytes:
    return bytes([REPORT_VERSION])


def protocol_version(major: int, minor: int) -> bytes:
    return bytes([REPORT_VERSION, _check("major", major, 0, 127), _check("minor", minor, 0, 127)])


def system_reset() -> bytes:
    return bytes([SYSTEM_RESET])


def firmware_query() -> bytes:
    return sysex(REPORT_FIRMWARE)


def firmware_report(major: int, minor: int, name: str) -> bytes:
    return sysex(REPORT_FIRMWARE, bytes([_check("major", major, 0, 127), _check("minor", minor, 0, 127)]) + _text7(name))


def capability_query() -> bytes:
    return sysex(CAPABILITY_QUERY)


def capability_response(pins: Iterable[Iterable[tuple[int, int]]]) -> bytes:
    data = bytearray()
    for caps in pins:
        for mode, resolution in caps:
            data += bytes([_check("mode", mode, 0, 126), _check("resolution", resolution, 0, 127)])
        data.append(CAPABILITY_PIN_END)
    return sysex(CAPABILITY_RESPONSE, data)


def analog_mapping_query() -> bytes:
    return sysex(ANALOG_MAPPING_QUERY)


def analog_mapping_response(channels: Iterable[int | None]) -> bytes:
    return sysex(ANALOG_MAPPING_RESPONSE, bytes(
        NO_ANALOG_CHANNEL if ch is None else _check("channel", ch, 0, 126) for ch in channels))


def pin_state_query(pin: int) -> bytes:
    return sysex(PIN_STATE_QUERY, [_check("pin", pin, 0, 127)])


def pin_state_response(pin: int, mode: int | None, state: int = 0) -> bytes:
    if mode is None:
        return sysex(PIN_STATE_RESPONSE, [_check("pin", pin, 0, 127)])
    return sysex(PIN_STATE_RESPONSE, bytes([_check("pin", pin, 0, 127), _check("mode", mode, 0, 127)])
                 + _7bit_int(_check("state", state, 0, 2**28 - 1)))


def extended_analog(pin: int, value: int) -> bytes:
    return sysex(EXTENDED_ANALOG, bytes([_check("pin", pin, 0, 127)])
                 + _7bit_int(_check("value", value, 0, 2**28 - 1), min_bytes=2))


def sampling_interval(milliseconds: int) -> bytes:
    return sysex(SAMPLING_INTERVAL, _two7(_check("sampling interval", milliseconds, 0, MAX_14BIT)))


def string_data(text: str) -> bytes:
    return sysex(STRING_DATA, _text7(text))


def deadman_arm(timeout_ms: int) -> bytes:
    return sysex(PALMNODE_SAFETY, bytes([DEADMAN_ARM]) + _two7(_check("timeout_ms", timeout_ms, 0, MAX_14BIT)))


def deadman_ack(timeout_ms: int) -> bytes:
    return sysex(PALMNODE_SAFETY, bytes([DEADMAN_ACK]) + _two7(_check("timeout_ms", timeout_ms, 0, MAX_14BIT)))


def safety_trip(cause: int) -> bytes:
    return sysex(PALMNODE_SAFETY, [SAFETY_TRIP, _check("cause", cause, 0, 127)])


def safety_clear(cause: int) -> bytes:
    return sysex(PALMNODE_SAFETY, [SAFETY_CLEAR, _check("cause", cause, 0, 127)])


_ENCODERS = {
    AnalogMessage: lambda e: analog_message(e.pin, e.value),
    DigitalMessage: lambda e: digital_message(e.port, e.mask),
    ReportAnalog: lambda e: report_analog(e.channel, e.enable),
    ReportDigital: lambda e: report_digital(e.port, e.enable),
    SetPinMode: lambda e: set_pin_mode(e.pin, e.mode),
    SetDigitalPinValue: lambda e: set_digital_pin_value(e.pin, e.value),
    VersionQuery: lambda e: version_query(),
    ProtocolVersion: lambda e: protocol_version(e.major, e.minor),
    SystemReset: lambda e: system_reset(),
    FirmwareQuery: lambda e: firmware_query(),
    FirmwareReport: lambda e: firmware_report(e.major, e.minor, e.name),
    CapabilityQuery: lambda e: capability_query(),
    CapabilityResponse: lambda e: capability_response(e.pins),
    AnalogMappingQuery: lambda e: analog_mapping_query(),
    AnalogMappingResponse: lambda e: analog_mapping_response(e.channels),
    PinStateQuery: lambda e: pin_state_query(e.pin),
    PinStateResponse: lambda e: pin_state_response(e.pin, e.mode, e.state),
    ExtendedAnalog: lambda e: extended_analog(e.pin, e.value),
    SamplingInterval: lambda e: sampling_interval(e.milliseconds),
    StringData: lambda e: string_data(e.text),
    DeadmanArm: lambda e: deadman_arm(e.timeout_ms),
    DeadmanAck: lambda e: deadman_ack(e.timeout_ms),
    SafetyTrip: lambda e: safety_trip(e.cause),
    SafetyClear: lambda e: safety_clear(e.cause),
    UnknownSysex: lambda e: sysex(e.command, e.data),
}


def encode(event: Event) -> bytes:
    """The bytes of any event except :class:`Malformed`."""
    try:
        encoder = _ENCODERS[type(event)]
    except KeyError:
        raise TypeError(f"cannot encode {type(event).__name__}") from None
    return encoder(event)
