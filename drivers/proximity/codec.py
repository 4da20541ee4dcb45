"""Sans-IO codec for the Benewake TFmini-S / TFmini Plus UART protocol.

Spec: Benewake TFmini Plus product manual SJ-PM-TFmini Plus-T-01 A04 ("Plus manual") and the
TFmini-S manual SJ-PM-TFmini-S A01 ("S manual"). Section numbers below are the Plus manual's
unless marked otherwise.

The sensor sends two kinds of frames on one line, interleaved:

* data frames ``59 59 Dist_L Dist_H Strength_L Strength_H Temp_L Temp_H Checksum`` (§5.3 Table 7),
  or ASCII ``"1.21\\r\\n"`` lines (metres) in Pixhawk output format (§5.3);
* command replies ``5A len id payload checksum`` (§7.3 Table 10, §7.4).

The host sends only commands (``5A len id payload checksum``). :class:`SensorDecoder` decodes
what the sensor sends (host side), :class:`CommandDecoder` what the host sends (sensor side, used by
the emulator). Both are h11-style: ``receive_data(bytes)`` then ``next_event()`` until ``None``;
malformed input becomes a :class:`Malformed` event, the decoder resynchronises on ``59 59`` /
``5A`` and its buffer never exceeds :data:`MAX_BUFFER` bytes.
"""
from __future__ import annotations

import abc
import collections
import enum
import re
import struct

import attrs

# ---- constants ------------------------------------------------------------------------------
DATA_HEADER = 0x59  # §5.3 Table 7: Byte0 and Byte1 are 0x59 ("Y")
DATA_FRAME_LEN = 9  # §5.3 Table 7: 9-byte standard data frame
COMMAND_HEAD = 0x5A  # §7.3 Table 10: Byte0 Head = 0x5A
COMMAND_MIN_LEN = 4  # §7.3 Table 10: Head, Len, ID, Checksum with an empty payload
COMMAND_MAX_LEN = 16  # §7.4: the longest documented frame is 9 bytes (I/O mode, 0x3B); margin for others
WEAK_STRENGTH = 100  # §5.4: strength below 100 makes the reading unreliable
SATURATED_STRENGTH = 65535  # §5.4: strength equal to 65535 makes the reading unreliable
#: S manual §5.4 Table 8 abnormal distances (the Plus reports 0 instead, Plus manual §5.4)
S_DIST_WEAK, S_DIST_SATURATED, S_DIST_AMBIENT = -1, -2, -4
TEMP_SCALE, TEMP_OFFSET = 8, 256  # §5.4: degrees Celsius = Temp / 8 - 256
PIXHAWK_MAX_LINE = 10  # §5.3 Pixhawk format: "dd.dd\r\n" (metres); longest plausible line
MAX_BUFFER = 4096  # bound on bytes a decoder holds; past it the oldest are dropped

# §7.4 command IDs
ID_FIRMWARE_VERSION = 0x01
ID_SYSTEM_RESET = 0x02
ID_FRAME_RATE = 0x03
ID_TRIGGER = 0x04
ID_OUTPUT_FORMAT = 0x05
ID_BAUD_RATE = 0x06
ID_OUTPUT_ENABLE = 0x07
ID_RESTORE_FACTORY = 0x10
ID_SAVE_SETTINGS = 0x11

STATUS_OK, STATUS_FAILED = 0x00, 0x01  # §7.4: reset/restore/save reply byte, 00 succeeded, 01 failed
MAX_FRAME_RATE_HZ = 1000  # §7.4 note 1: 1-1000 Hz (1000/n); 0 = triggered mode (§7.4 trigger)


class OutputFormat(enum.IntEnum):
    """§7.4 output format (command 0x05) payload byte."""

    STANDARD_CM = 0x01  # 9-byte frame, distance in cm (factory default)
    PIXHAWK = 0x02  # ASCII metres, "1.21\r\n"
    STANDARD_MM = 0x06  # 9-byte frame, distance in mm


class SignalStatus(enum.Enum):
    """Why a data frame's distance can or cannot be trusted (§5.4; S manual §5.4 Table 8)."""

    OK = "ok"
    WEAK = "weak"  # strength < 100 (Plus: distance 0; S: distance -1)
    SATURATED = "saturated"  # strength == 65535 (Plus: distance 0; S: distance -2)
    AMBIENT_LIGHT = "ambient light"  # S: distance -4, ambient light saturation


class DropReason(enum.Enum):
    """Why bytes were dropped; one :class:`Malformed` event per dropped frame or garbage run."""

    GARBAGE = "garbage"  # bytes that start no frame
    CHECKSUM = "checksum"  # an in-sync 59 59 data frame with a wrong checksum
    COMMAND_CHECKSUM = "command checksum"  # an in-sync 5A frame with a wrong checksum
    OVERFLOW = "overflow"  # more than MAX_BUFFER bytes were fed without being decoded


# ---- events: what the sensor sends ------------------------------------------------------------
@attrs.frozen
class Measurement:
    """One standard data frame (§5.3 Table 7). ``distance`` is in the configured unit (cm or mm),
    signed: the TFmini-S reports -1/-2/-4 for abnormal readings (S manual Table 8)."""

    distance: int
    strength: int
    temperature_c: float
    status: SignalStatus = SignalStatus.OK

    @property
    def reliable(self) -> bool:
        return self.status is SignalStatus.OK


@attrs.frozen
class PixhawkDistance:
    """One Pixhawk-format line (§5.3): distance in metres, no strength or temperature."""

    distance_m: float


@attrs.frozen
class FirmwareVersion:
    """Reply ``5A 07 01 V1 V2 V3 SU`` (§7.4): the version is V3.V2.V1."""

    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


@attrs.frozen
class SystemResetReply:
    """Reply ``5A 05 02 status SU`` (§7.4)."""

    ok: bool


@attrs.frozen
class FrameRateReply:
    """Reply ``5A 06 03 LL HH SU``, an echo of the command (§7.4)."""

    rate_hz: int


@attrs.frozen
class OutputFormatReply:
    """Reply ``5A 05 05 fmt SU``, an echo of the command (§7.4); ``fmt`` is an :class:`OutputFormat`
    value, kept as int so an unknown byte still decodes."""

    fmt: int


@attrs.frozen
class BaudRateReply:
    """Reply ``5A 08 06 H1 H2 H3 H4 SU``, an echo of the command (§7.4)."""

    baudrate: int


@attrs.frozen
class OutputEnableReply:
    """Reply ``5A 05 07 00|01 SU``, an echo of the command (§7.4)."""

    enabled: bool


@attrs.frozen
class RestoreFactoryReply:
    """Reply ``5A 05 10 status SU`` (§7.4)."""

    ok: bool


@attrs.frozen
class SaveSettingsReply:
    """Reply ``5A 05 11 status SU`` (§7.4)."""

    ok: bool


@attrs.frozen
class UnknownFrame:
    """A well-formed ``5A`` frame whose ID or length this codec does not know."""

    frame_id: int
    payload: bytes


@attrs.frozen
class Malformed:
    """Bytes dropped while resynchronising; ``data`` is (the start of) what was dropped."""

    reason: DropReason
    data: bytes = b""


Reply = (FirmwareVersion | SystemResetReply | FrameRateReply | OutputFormatReply | BaudRateReply
         | OutputEnableReply | RestoreFactoryReply | SaveSettingsReply)
SensorEvent = Measurement | PixhawkDistance | Reply | UnknownFrame | Malformed


# ---- commands: what the host sends (§7.4) ------------------------------------------------------
@attrs.frozen
class GetFirmwareVersion:
    """``5A 04 01 5F``"""


@attrs.frozen
class SystemReset:
    """``5A 04 02 60``"""


@attrs.frozen
class SetFrameRate:
    """``5A 06 03 LL HH SU``; 0 stops streaming (trigger mode)."""

    rate_hz: int = attrs.field(validator=attrs.validators.and_(
        attrs.validators.ge(0), attrs.validators.le(0xFFFF)))


@attrs.frozen
class TriggerDetection:
    """``5A 04 04 62``; the sensor answers with one data frame."""


@attrs.frozen
class SetOutputFormat:
    """``5A 05 05 fmt SU``"""

    fmt: int = attrs.field(converter=int, validator=attrs.validators.and_(
        attrs.validators.ge(0), attrs.validators.le(0xFF)))


@attrs.frozen
class SetBaudRate:
    """``5A 08 06 H1 H2 H3 H4 SU`` (little endian)."""

    baudrate: int = attrs.field(validator=attrs.validators.and_(
        attrs.validators.ge(0), attrs.validators.le(0xFFFFFFFF)))


@attrs.frozen
class EnableOutput:
    """``5A 05 07 01 67`` (enable) / ``5A 05 07 00 66`` (disable)."""

    enabled: bool


@attrs.frozen
class RestoreFactorySettings:
    """``5A 04 10 6E``"""


@attrs.frozen
class SaveSettings:
    """``5A 04 11 6F``"""


@attrs.frozen
class UnknownCommand:
    """A well-formed ``5A`` frame from the host that is not one of the commands above."""

    frame_id: int
    payload: bytes


Command = (GetFirmwareVersion | SystemReset | SetFrameRate | TriggerDetection | SetOutputFormat
           | SetBaudRate | EnableOutput | RestoreFactorySettings | SaveSettings)
CommandEvent = Command | UnknownCommand | Malformed


# ---- encoders ---------------------------------------------------------------------------------
def checksum(data: bytes) -> int:
    """§5.3 / §7.3: the low 8 bits of the sum of the bytes before the checksum."""
    return sum(data) & 0xFF


def command_frame(frame_id: int, payload: bytes = b"") -> bytes:
    """``5A len id payload checksum`` (§7.3 Table 10)."""
    body = bytes((COMMAND_HEAD, len(payload) + COMMAND_MIN_LEN, frame_id)) + payload
    return body + bytes((checksum(body),))


def encode_command(command: Command) -> bytes:
    """The bytes the host sends for ``command``."""
    match command:
        case GetFirmwareVersion():
            return command_frame(ID_FIRMWARE_VERSION)
        case SystemReset():
            return command_frame(ID_SYSTEM_RESET)
        case SetFrameRate(rate_hz=rate):
            return command_frame(ID_FRAME_RATE, struct.pack("<H", rate))
        case TriggerDetection():
            return command_frame(ID_TRIGGER)
        case SetOutputFormat(fmt=fmt):
            return command_frame(ID_OUTPUT_FORMAT, bytes((fmt,)))
        case SetBaudRate(baudrate=baud):
            return command_frame(ID_BAUD_RATE, struct.pack("<I", baud))
        case EnableOutput(enabled=enabled):
            return command_frame(ID_OUTPUT_ENABLE, bytes((int(enabled),)))
        case RestoreFactorySettings():
            return command_frame(ID_RESTORE_FACTORY)
        case SaveSettings():
            return command_frame(ID_SAVE_SETTINGS)
    raise TypeError(f"not a TFmini command: {command!r}")


def encode_reply(reply: Reply) -> bytes:
    """The bytes the sensor sends for ``reply`` (§7.4)."""
    match reply:
        case FirmwareVersion(major=major, minor=minor, patch=patch):
            return command_frame(ID_FIRMWARE_VERSION, bytes((patch, minor, major)))
        case SystemResetReply(ok=ok):
            return command_frame(ID_SYSTEM_RESET, bytes((STATUS_OK if ok else STATUS_FAILED,)))
        case FrameRateReply(rate_hz=rate):
            return command_frame(ID_FRAME_RATE, struct.pack("<H", rate))
        case OutputFormatReply(fmt=fmt):
            return command_frame(ID_OUTPUT_FORMAT, bytes((fmt,)))
        case BaudRateReply(baudrate=baud):
            return command_frame(ID_BAUD_RATE, struct.pack("<I", baud))
        case OutputEnableReply(enabled=enabled):
            return command_frame(ID_OUTPUT_ENABLE, bytes((int(enabled),)))
        case RestoreFactoryReply(ok=ok):
            return command_frame(ID_RESTORE_FACTORY, bytes((STATUS_OK if ok else STATUS_FAILED,)))
        case SaveSettingsReply(ok=ok):
            return command_frame(ID_SAVE_SETTINGS, bytes((STATUS_OK if ok else STATUS_FAILED,)))
    raise TypeError(f"not a TFmini reply: {reply!r}")


_DATA = struct.Struct("<BBhHH")


def encode_measurement(distance: int, strength: int, temperature_raw: int) -> bytes:
    """A 9-byte data frame (§5.3 Table 7). ``distance`` is signed (the S reports -1/-2/-4),
    ``temperature_raw`` is the chip's code: degrees Celsius = raw / 8 - 256 (§5.4)."""
    body = _DATA.pack(DATA_HEADER, DATA_HEADER, distance, strength, temperature_raw)
    return body + bytes((sum(body) & 0xFF,))


def temperature_raw(temperature_c: float) -> int:
    """The §5.4 temperature code for ``temperature_c``."""
    return max(0, min(0xFFFF, round((temperature_c + TEMP_OFFSET) * TEMP_SCALE)))


def encode_pixhawk(distance_m: float) -> bytes:
    """A Pixhawk-format line (§5.3): metres with two decimals, then CR LF."""
    return f"{distance_m:.2f}\r\n".encode("ascii")


def signal_status(distance: int, strength: int) -> SignalStatus:
    """§5.4 (Plus) and S manual Table 8: classify a data frame's distance/strength pair."""
    if distance == S_DIST_AMBIENT:
        return SignalStatus.AMBIENT_LIGHT
    if strength == SATURATED_STRENGTH or distance == S_DIST_SATURATED:
        return SignalStatus.SATURATED
    if strength < WEAK_STRENGTH or distance == S_DIST_WEAK:
        return SignalStatus.WEAK
    return SignalStatus.OK


# ---- decoders ---------------------------------------------------------------------------------
_NEED_MORE = object()
_PIXHAWK_LINE = re.compile(rb"-?\d{1,3}\.\d{1,3}\r\n")
_PIXHAWK_START = frozenset(b"-0123456789")


class _FrameDecoder(abc.ABC):
    """The resynchronising byte scanner both decoders share."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._events: collections.deque = collections.deque()
        self._garbage = bytearray()  # the current run of skipped bytes (first 32 kept)
        self._garbage_len = 0
        self._quiet = 0  # bytes still inside a frame reported malformed: not garbage again
        self._overflowed = 0  # bytes dropped by receive_data since the last event
        self._overflow_head = b""
        #: number of :class:`Malformed` events produced, by reason
        self.drops: collections.Counter[DropReason] = collections.Counter()

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the line."""
        self._buf += data
        excess = len(self._buf) - MAX_BUFFER
        if excess > 0:
            if not self._overflowed:
                self._overflow_head = bytes(self._buf[:32])
            self._overflowed += excess
            del self._buf[:excess]

    def clear(self) -> None:
        """Forget buffered bytes (after the host flushed its input)."""
        self._buf.clear()
        self._garbage.clear()
        self._garbage_len = 0
        self._quiet = 0
        self._overflowed = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_event(self):
        """The next decoded event, or ``None`` when more bytes are needed."""
        while True:
            if self._events:
                return self._events.popleft()
            if self._overflowed:
                self._overflowed = 0
                self.drops[DropReason.OVERFLOW] += 1
                return Malformed(DropReason.OVERFLOW, self._overflow_head)
            buf = self._buf
            if not buf:
                return self._flush_garbage()
            result = self._try_frame(buf)
            if result is _NEED_MORE:
                return self._flush_garbage()
            if result is None:  # buf[0] starts no frame
                if self._quiet:
                    self._quiet -= 1  # part of a frame already reported as malformed
                else:
                    if self._garbage_len < 32:
                        self._garbage.append(buf[0])
                    self._garbage_len += 1
                del buf[0]
                continue
            garbage = self._flush_garbage()
            if garbage is not None:
                self._events.append(result)
                return garbage
            return result

    def _flush_garbage(self):
        if not self._garbage_len:
            return None
        data = bytes(self._garbage)
        self._garbage.clear()
        self._garbage_len = 0
        self.drops[DropReason.GARBAGE] += 1
        return Malformed(DropReason.GARBAGE, data)

    def _checked(self, buf: bytearray, n: int, reason: DropReason):
        """The ``n``-byte frame at buf[0] if its checksum holds (consumed), else a Malformed: then
        only buf[0] is dropped, so a good frame starting inside the bad one still decodes, and
        the rest of the bad frame's span is skipped without a second report."""
        if len(buf) < n:
            return _NEED_MORE
        frame = bytes(buf[:n])
        if sum(frame[:-1]) & 0xFF == frame[-1]:
            del buf[:n]
            self._quiet = 0
            return frame
        del buf[0]
        self._quiet = n - 1
        self.drops[reason] += 1
        return Malformed(reason, frame)

    def _command_frame(self, buf: bytearray):
        """A ``5A`` frame at buf[0]: (frame_id, payload), a Malformed, _NEED_MORE or None."""
        if len(buf) < 2:
            return _NEED_MORE
        n = buf[1]
        if not COMMAND_MIN_LEN <= n <= COMMAND_MAX_LEN:
            return None
        frame = self._checked(buf, n, DropReason.COMMAND_CHECKSUM)
        if not isinstance(frame, bytes):
            return frame
        return frame[2], frame[3:-1]

    @abc.abstractmethod
    def _try_frame(self, buf: bytearray):
        """The frame at buf[0] (each direction has its own framing)."""


class SensorDecoder(_FrameDecoder):
    """Decodes what the sensor sends: :class:`Measurement`, :class:`PixhawkDistance`, replies,
    :class:`UnknownFrame` and :class:`Malformed`."""

    def _try_frame(self, buf: bytearray):
        first = buf[0]
        if first == DATA_HEADER:
            if len(buf) < 2:
                return _NEED_MORE
            if buf[1] != DATA_HEADER:
                return None
            frame = self._checked(buf, DATA_FRAME_LEN, DropReason.CHECKSUM)
            if not isinstance(frame, bytes):
                return frame
            _, _, distance, strength, temp = _DATA.unpack_from(frame)
            return Measurement(distance, strength, temp / TEMP_SCALE - TEMP_OFFSET,
                               signal_status(distance, strength))
        if first == COMMAND_HEAD:
            parsed = self._command_frame(buf)
            if not isinstance(parsed, tuple):
                return parsed
            return _reply(*parsed)
        if first in _PIXHAWK_START:
            end = buf.find(b"\n", 0, PIXHAWK_MAX_LINE)
            if end < 0:
                return _NEED_MORE if len(buf) < PIXHAWK_MAX_LINE else None
            line = bytes(buf[:end + 1])
            if not _PIXHAWK_LINE.fullmatch(line):
                return None
            del buf[:end + 1]
            self._quiet = 0
            return PixhawkDistance(float(line[:-2]))
        return None


class CommandDecoder(_FrameDecoder):
    """Decodes what the host sends (the sensor's side): commands, :class:`UnknownCommand`,
    :class:`Malformed`. Anything that is not a ``5A`` frame (e.g. the old TFmini's ``42 57``
    configuration frames) is garbage to a TFmini-S / Plus."""

    def _try_frame(self, buf: bytearray):
        if buf[0] != COMMAND_HEAD:
            return None
        parsed = self._command_frame(buf)
        if not isinstance(parsed, tuple):
            return parsed
        return _command(*parsed)


def _reply(frame_id: int, payload: bytes) -> Reply | UnknownFrame:
    n = len(payload)
    if frame_id == ID_FIRMWARE_VERSION and n == 3:
        return FirmwareVersion(major=payload[2], minor=payload[1], patch=payload[0])
    if frame_id == ID_FRAME_RATE and n == 2:
        return FrameRateReply(struct.unpack("<H", payload)[0])
    if frame_id == ID_BAUD_RATE and n == 4:
        return BaudRateReply(struct.unpack("<I", payload)[0])
    if n == 1:
        value = payload[0]
        if frame_id == ID_OUTPUT_FORMAT:
            return OutputFormatReply(value)
        if frame_id == ID_OUTPUT_ENABLE and value in (0, 1):
            return OutputEnableReply(bool(value))
        if frame_id == ID_SYSTEM_RESET:
            return SystemResetReply(value == STATUS_OK)
        if frame_id == ID_RESTORE_FACTORY:
            return RestoreFactoryReply(value == STATUS_OK)
        if frame_id == ID_SAVE_SETTINGS:
            return SaveSettingsReply(value == STATUS_OK)
    return UnknownFrame(frame_id, payload)


def _command(frame_id: int, payload: bytes) -> Command | UnknownCommand:
    n = len(payload)
    if n == 0:
        simple = {ID_FIRMWARE_VERSION: GetFirmwareVersion, ID_SYSTEM_RESET: SystemReset,
                  ID_TRIGGER: TriggerDetection, ID_RESTORE_FACTORY: RestoreFactorySettings,
                  ID_SAVE_SETTINGS: SaveSettings}.get(frame_id)
        if simple is not None:
            return simple()
    if frame_id == ID_FRAME_RATE and n == 2:
        return SetFrameRate(struct.unpack("<H", payload)[0])
    if frame_id == ID_OUTPUT_FORMAT and n == 1:
        return SetOutputFormat(payload[0])
    if frame_id == ID_BAUD_RATE and n == 4:
        return SetBaudRate(struct.unpack("<I", payload)[0])
    if frame_id == ID_OUTPUT_ENABLE and n == 1 and payload[0] in (0, 1):
        return EnableOutput(bool(payload[0]))
    return UnknownCommand(frame_id, payload)
