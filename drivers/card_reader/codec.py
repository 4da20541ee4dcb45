"""PN532 host-link frames, sans-IO (NXP UM0701-02 §6.2.1).

Two decoders share one frame parser: :class:`ChipFrameDecoder` reads what the PN532 sends (the
driver uses it), :class:`HostFrameDecoder` reads what a host sends (the emulator uses it). Feed
bytes with ``receive_data`` and pull typed events with ``next_event`` until it returns ``None``.
Malformed input becomes a :class:`Malformed` event; the decoder then resynchronises on the next
start code, and its buffer never grows past :data:`MAX_BUFFER`.
"""
from __future__ import annotations

import abc
import attrs

PREAMBLE = 0x00  # §6.2.1.1: optional, any number of 0x00 before the start code
START_CODE = b"\x00\xff"  # §6.2.1.1
POSTAMBLE = 0x00  # §6.2.1.1
TFI_HOST_TO_PN532 = 0xD4  # §6.2.1.1 frame identifier, host controller → PN532
TFI_PN532_TO_HOST = 0xD5  # §6.2.1.1 frame identifier, PN532 → host controller
TFI_ERROR = 0x7F  # §6.2.1.5 application-level error frame: LEN 01, "TFI" 7F, DCS 81

ACK_FRAME = bytes.fromhex("0000ff00ff00")  # §6.2.1.3
NACK_FRAME = bytes.fromhex("0000ffff0000")  # §6.2.1.4
ERROR_FRAME = bytes.fromhex("0000ff01ff7f8100")  # §6.2.1.5
EXTENDED_MARK = b"\xff\xff"  # §6.2.1.2 LEN=FF LCS=FF announces LENM LENL LCS

#: §6.2.1.2 / §7: the PN532 buffers at most 265 bytes of TFI + PD0..PDn (262 data + TFI + code + Tg)
MAX_FRAME_DATA = 265
#: decoder buffer cap: two of the longest frames (extended header 8 + data + DCS + postamble)
MAX_BUFFER = 2 * (8 + MAX_FRAME_DATA + 2)


# ---- events --------------------------------------------------------------------------------
@attrs.frozen
class Ack:
    """ACK frame (§6.2.1.3): the previous frame was received correctly, or "abort" from the host."""


@attrs.frozen
class Nack:
    """NACK frame (§6.2.1.4): "send your last response again"."""


@attrs.frozen
class ErrorFrame:
    """Application-level syntax error frame (§6.2.1.5) sent by the PN532."""


@attrs.frozen
class Response:
    """A PN532 → host information frame answering ``command`` (its code byte is ``command + 1``)."""

    command: int
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")

    @property
    def code(self) -> int:
        return (self.command + 1) & 0xFF


@attrs.frozen
class Command:
    """A host → PN532 information frame: command ``code`` and its parameters."""

    code: int
    data: bytes = b""


@attrs.frozen
class Malformed:
    """Bytes that are not a valid frame; ``reason`` names why, ``dropped`` how many bytes went."""

    reason: str
    dropped: int = 0


Event = Ack | Nack | ErrorFrame | Response | Command | Malformed


# ---- encoders ------------------------------------------------------------------------------
def encode_frame(tfi: int, payload: bytes, *, preamble: bool = True) -> bytes:
    """An information frame: normal (§6.2.1.1) up to 255 bytes of TFI+PD, extended (§6.2.1.2) above."""
    body = bytes([tfi]) + bytes(payload)
    if len(body) > MAX_FRAME_DATA:
        raise ValueError(f"PN532 frames carry at most {MAX_FRAME_DATA} bytes, not {len(body)}")
    if len(body) <= 0xFF:
        head = START_CODE + bytes([len(body), (-len(body)) & 0xFF])
    else:
        lenm, lenl = len(body) >> 8, len(body) & 0xFF
        head = START_CODE + EXTENDED_MARK + bytes([lenm, lenl, (-(lenm + lenl)) & 0xFF])
    dcs = (-sum(body)) & 0xFF
    frame = head + body + bytes([dcs])
    return (bytes([PREAMBLE]) + frame + bytes([POSTAMBLE])) if preamble else frame


def encode_command(command: Command) -> bytes:
    """Host → PN532 frame for ``command`` (TFI D4)."""
    return encode_frame(TFI_HOST_TO_PN532, bytes([command.code]) + command.data)


def encode_response(command: int, data: bytes, *, preamble: bool = True) -> bytes:
    """PN532 → host frame answering ``command`` (TFI D5, code ``command + 1``)."""
    return encode_frame(TFI_PN532_TO_HOST, bytes([(command + 1) & 0xFF]) + data, preamble=preamble)


# ---- decoders ------------------------------------------------------------------------------
class _FrameDecoder(abc.ABC):
    """Common frame parser; subclasses turn a checked TFI + payload into an event."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.dropped_bytes = 0
        self.overflows = 0

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > MAX_BUFFER:
            # keep the newest bytes: a frame in progress is at the tail
            excess = len(self._buf) - MAX_BUFFER
            del self._buf[:excess]
            self.dropped_bytes += excess
            self.overflows += 1

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        self._buf.clear()

    def next_event(self) -> Event | None:
        if self.overflows:
            self.overflows = 0
            return Malformed("buffer overflow")
        buf = self._buf
        start = buf.find(START_CODE)
        if start < 0:
            # keep a trailing 0x00: it may be the first half of a start code
            keep = 1 if buf.endswith(b"\x00") else 0
            garbage = len(buf) - keep
            junk = any(buf[:garbage])
            del buf[:garbage]
            if junk:
                self.dropped_bytes += garbage
                return Malformed("garbage before start code", garbage)
            return None
        if any(buf[:start]):
            junk = len(bytes(buf[:start]).rstrip(b"\x00"))  # zeros right before are preamble
            del buf[:start]
            self.dropped_bytes += junk
            return Malformed("garbage before start code", junk)
        del buf[:start]  # preamble zeros
        if len(buf) < 4:
            return None
        length, lcs = buf[2], buf[3]
        if length == 0x00 and lcs == 0xFF:
            del buf[:4]
            return Ack()
        if length == 0xFF and lcs == 0x00:
            del buf[:4]
            return Nack()
        if length == 0xFF and lcs == 0xFF:
            if len(buf) < 7:
                return None
            lenm, lenl, elcs = buf[4], buf[5], buf[6]
            if (lenm + lenl + elcs) & 0xFF:
                return self._resync("extended length checksum error")
            length, header = (lenm << 8) | lenl, 7
        elif (length + lcs) & 0xFF:
            return self._resync("length checksum error")
        else:
            header = 4
        if length == 0:
            return self._resync("empty information frame")
        if length > MAX_FRAME_DATA:
            return self._resync("frame longer than the PN532 buffer")
        if len(buf) < header + length + 1:
            return None
        body = bytes(buf[header:header + length])
        dcs = buf[header + length]
        if (sum(body) + dcs) & 0xFF:
            return self._resync("data checksum error")
        # the postamble (and any next preamble) is skipped as leading zeros on the next call
        del buf[:header + length + 1]
        return self._event(body[0], body[1:])

    def give_up(self) -> Malformed | None:
        """The caller's deadline passed inside a frame (its body never came: the chip reset
        mid-answer, or noise shaped like a header): drop that frame's start code as a bad
        checksum does, so the bytes held as its body are searched again. ``None`` when no frame
        is in progress."""
        if not self._buf.startswith(START_CODE):
            return None
        return self._resync("truncated frame")

    def _resync(self, reason: str) -> Malformed:
        # drop only the start code: a real frame may begin inside what looked like this one
        del self._buf[:2]
        self.dropped_bytes += 2
        return Malformed(reason, 2)

    @abc.abstractmethod
    def _event(self, tfi: int, payload: bytes) -> Event:
        """The typed event of one checked frame (each direction has its own)."""


class ChipFrameDecoder(_FrameDecoder):
    """Decodes PN532 → host frames: :class:`Ack`, :class:`Nack`, :class:`ErrorFrame`, :class:`Response`."""

    def _event(self, tfi: int, payload: bytes) -> Event:
        if tfi == TFI_ERROR and not payload:
            return ErrorFrame()
        if tfi != TFI_PN532_TO_HOST:
            return Malformed(f"frame identifier 0x{tfi:02X} is not PN532-to-host")
        if not payload:
            return Malformed("response without a code")
        if payload[0] % 2 == 0:
            return Malformed("response code is even")
        return Response((payload[0] - 1) & 0xFF, bytes(payload[1:]))


class HostFrameDecoder(_FrameDecoder):
    """Decodes host → PN532 frames: :class:`Ack`, :class:`Nack`, :class:`Command`."""

    def _event(self, tfi: int, payload: bytes) -> Event:
        if tfi != TFI_HOST_TO_PN532:
            return Malformed(f"frame identifier 0x{tfi:02X} is not host-to-PN532")
        if not payload:
            return Malformed("command frame without a code")
        return Command(payload[0], bytes(payload[1:]))
