"""BER-TLV as EMV uses it (EMV Book 3 Annex B, ISO/IEC 8825-1), strict and bounded.

:func:`parse` returns :class:`Tlv` objects; anything that is not well-formed (truncated,
length field too long, nested too deep, bytes left over) raises :class:`TlvError`, whose
message never contains the data itself (records hold card numbers).
"""
from __future__ import annotations

from collections.abc import Iterator

import attrs

MAX_DEPTH = 8  # EMV templates nest 3-4 deep (6F > A5 > BF0C > 61); more is hostile input
MAX_TAG_BYTES = 3  # Book 3 Annex B1: EMV tags are at most 2 bytes; allow one spare
MAX_LENGTH_BYTES = 3  # Book 3 Annex B2: '81' one byte, '82' two, '83' three subsequent length bytes
PADDING = 0x00  # Book 3 Annex B: '00' may occur before, between or after data objects
CONSTRUCTED = 0x20  # ISO/IEC 8825-1 §8.1.2.5: bit 6 of the first tag byte


class TlvError(ValueError):
    """Malformed BER-TLV; ``offset`` is where the parser gave up."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"malformed BER-TLV at byte {offset}: {reason}")
        self.reason = reason
        self.offset = offset


@attrs.frozen
class Tlv:
    """One data object. ``value`` is the raw value; ``children`` is filled for constructed tags."""

    tag: int
    value: bytes = attrs.field(repr=lambda v: f"<{len(v)} bytes>")
    children: tuple["Tlv", ...] = ()

    @property
    def constructed(self) -> bool:
        return bool(_first_tag_byte(self.tag) & CONSTRUCTED)

    def find(self, tag: int) -> "Tlv | None":
        """The first object with ``tag`` in this object's subtree (itself included)."""
        return next(self.walk(tag), None)

    def walk(self, tag: int | None = None) -> Iterator["Tlv"]:
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            yield from child.walk(tag)


def _first_tag_byte(tag: int) -> int:
    while tag > 0xFF:
        tag >>= 8
    return tag


def read_tag(data: bytes, pos: int) -> tuple[int, int]:
    """(tag, next position) for the tag at ``pos``."""
    if pos >= len(data):
        raise TlvError("tag missing", pos)
    first = data[pos]
    tag, pos = first, pos + 1
    if first & 0x1F == 0x1F:  # ISO/IEC 8825-1 §8.1.2.4: subsequent tag bytes follow
        for count in range(1, MAX_TAG_BYTES + 1):
            if pos >= len(data):
                raise TlvError("tag truncated", pos)
            if count == MAX_TAG_BYTES:
                raise TlvError("tag too long", pos)
            byte = data[pos]
            tag, pos = (tag << 8) | byte, pos + 1
            if not byte & 0x80:
                break
    return tag, pos


def read_length(data: bytes, pos: int) -> tuple[int, int]:
    """(length, next position) for the length field at ``pos``."""
    if pos >= len(data):
        raise TlvError("length missing", pos)
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0:
        raise TlvError("indefinite length is not allowed in EMV", pos - 1)
    if count > MAX_LENGTH_BYTES:
        raise TlvError("length field too long", pos - 1)
    if pos + count > len(data):
        raise TlvError("length field truncated", pos)
    return int.from_bytes(data[pos:pos + count], "big"), pos + count


def parse(data: bytes) -> tuple[Tlv, ...]:
    """All data objects in ``data`` (padding zeros between them are skipped)."""
    return _parse(bytes(data), 0, len(data), 0)


def _parse(data: bytes, pos: int, end: int, depth: int) -> tuple[Tlv, ...]:
    if depth > MAX_DEPTH:
        raise TlvError("nested too deep", pos)
    out = []
    while pos < end:
        if data[pos] == PADDING:
            pos += 1
            continue
        tag, pos = read_tag(data[:end], pos)
        length, pos = read_length(data[:end], pos)
        if pos + length > end:
            raise TlvError("value runs past the end of its container", pos)
        value = data[pos:pos + length]
        children: tuple[Tlv, ...] = ()
        if _first_tag_byte(tag) & CONSTRUCTED:
            children = _parse(data, pos, pos + length, depth + 1)
        out.append(Tlv(tag, value, children))
        pos += length
    return tuple(out)


def find(objects: tuple[Tlv, ...], tag: int) -> Tlv | None:
    """The first object with ``tag`` anywhere in ``objects``."""
    for obj in objects:
        hit = obj.find(tag)
        if hit is not None:
            return hit
    return None


def parse_dol(data: bytes) -> tuple[tuple[int, int], ...]:
    """A Data Object List: (tag, length) pairs without values (Book 3 §5.4)."""
    data = bytes(data)
    pos, out = 0, []
    while pos < len(data):
        tag, pos = read_tag(data, pos)
        length, pos = read_length(data, pos)
        out.append((tag, length))
    return tuple(out)


# ---- encoding (the card emulator builds its answers with these) ---------------------------
def encode_tag(tag: int) -> bytes:
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(body) > MAX_LENGTH_BYTES:
        raise ValueError(f"a BER-TLV value of {length} bytes is too long for EMV")
    return bytes([0x80 | len(body)]) + body


def encode(tag: int, *values: bytes) -> bytes:
    """``tag`` with the concatenation of ``values`` (already-encoded children, or raw bytes)."""
    value = b"".join(values)
    return encode_tag(tag) + encode_length(len(value)) + value
