"""Sans-IO framing of the link (docs/protocols/controller.md §2): uint32 length + one msgpack map.

``encode(msg) -> bytes`` makes a frame; :class:`Decoder` turns received bytes into messages::

    decoder.receive_data(chunk)          # b"" means the stream ended
    while (ev := decoder.next_event()) is not None:
        ...                              # a Message, or one terminal Malformed

No sockets, trio or clocks here. A length-prefixed stream cannot be resynchronised after a bad
frame, so the first :class:`Malformed` is terminal: the decoder drops its buffer, ignores further
data and returns ``None`` from then on (``decoder.failed`` keeps the reason). The length is checked
as soon as the 4 header bytes arrive, before any of the body is buffered, and the buffer never holds
more than ``max_buffer`` bytes.
"""
from __future__ import annotations

import struct

import msgpack

from palmnode.link.messages import DropReason, Malformed, Message, from_wire, one_line

MAX_FRAME = 1 << 20  # §2: a body is at most 1 MiB
HEADER = struct.Struct(">I")  # §2: 4-byte big-endian unsigned length of the body
MAX_DEPTH = 32  # §2: maps/arrays nest at most this deep
MAX_CONTAINERS = 65536  # §2: maps and arrays in one frame at most: what a 1 MiB body may unpack to is
# bounded (a body of 1M empty arrays is ~100 MB of Python lists); a page of 1000 people needs ~7000
RECEIVE_CHUNK = 65536  # bytes a reader asks the stream for at a time; part of the buffer bound


class FrameTooLarge(ValueError):
    """``encode`` was asked for a frame over the cap: page the data (a sender's bug, §2)."""


def _reject_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def encode(msg: Message, *, max_frame: int = MAX_FRAME) -> bytes:
    """One frame carrying ``msg``; raises :class:`FrameTooLarge` over ``max_frame``."""
    body = msgpack.packb(msg.to_wire(), use_bin_type=True, datetime=False)
    if len(body) > max_frame:
        raise FrameTooLarge(f"a {type(msg).__name__} of {len(body)} bytes exceeds the {max_frame}-byte frame cap")
    return HEADER.pack(len(body)) + body


class _TooManyContainers(Exception):
    pass


def _container_counter():
    """A msgpack list/object hook that stops the unpacking at the (MAX_CONTAINERS + 1)th container,
    before the rest of the body is turned into objects."""
    count = 0

    def hook(value):
        nonlocal count
        count += 1
        if count > MAX_CONTAINERS:
            raise _TooManyContainers
        return value
    return hook


_SCALARS = (bool, int, float, str, bytes)


def _shape_error(obj: object) -> str | None:
    """Why ``obj`` holds a type the link does not carry (or nests too deep); None when fine.
    Walks with one iterator per level (memory bounded by the depth, not the number of values)."""
    stack = [iter((obj,))]
    while stack:
        for value in stack[-1]:
            if isinstance(value, (dict, list)):
                if len(stack) > MAX_DEPTH:
                    return f"nesting deeper than {MAX_DEPTH}"
                if isinstance(value, dict) and not all(type(k) is str for k in value):
                    return "map keys must be strings"   # strict_map_key lets bytes keys through
                stack.append(iter(value.values() if isinstance(value, dict) else value))
                break
            if value is not None and type(value) not in _SCALARS:
                return f"{type(value).__name__} values are not allowed"
        else:
            stack.pop()
    return None


def decode_body(body: bytes) -> Message | Malformed:
    """The message in one frame body, or :class:`Malformed` (never raises)."""
    if not body:
        return Malformed("empty frame", DropReason.MSGPACK)
    count = _container_counter()
    try:
        obj = msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True, ext_hook=_reject_ext, timestamp=0,
            list_hook=count, object_hook=count,
        )
    except msgpack.ExtraData:
        return Malformed("bytes after the msgpack object", DropReason.MSGPACK)
    except _TooManyContainers:
        return Malformed(f"more than {MAX_CONTAINERS} maps and arrays", DropReason.MSGPACK)
    except msgpack.StackError:  # msgpack's own nesting limit (its message is empty)
        return Malformed(f"nesting deeper than {MAX_DEPTH}", DropReason.MSGPACK)
    except Exception as exc:  # noqa: BLE001 - the msgpack boundary: any failure to unpack is malformed
        return Malformed(f"bad msgpack: {one_line(exc, 120) or type(exc).__name__}", DropReason.MSGPACK)
    error = _shape_error(obj)
    if error is not None:
        return Malformed(error, DropReason.MSGPACK)
    return from_wire(obj)


class Decoder:
    """Frames in, messages out (h11 style). See the module docstring."""

    def __init__(self, *, max_frame: int = MAX_FRAME, max_buffer: int | None = None) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be >= 1")
        self.max_frame = max_frame
        #: the bound on buffered bytes: one whole frame plus one read's worth of the next
        self.max_buffer = max_buffer if max_buffer is not None else HEADER.size + max_frame + RECEIVE_CHUNK
        self._buffer = bytearray()
        self._body_len: int | None = None  # the current frame's length once its header is in
        self._ended = False
        self.failed: Malformed | None = None
        self._failure_reported = False
        self.frames = 0  # frames decoded into messages
        self.last_size = 0  # bytes (header and body) of the frame next_event last returned

    @property
    def buffered(self) -> int:
        """Bytes held, waiting for the rest of a frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the stream; ``b""`` means the stream ended."""
        if self.failed is not None:
            return
        if not data:
            self._ended = True
            return
        if self._ended:
            raise RuntimeError("receive_data after the end of the stream")
        if len(self._buffer) + len(data) > self.max_buffer:
            self._fail(Malformed(f"receive buffer over {self.max_buffer} bytes", DropReason.OVERFLOW))
            return
        self._buffer += data
        self._read_header()  # refuse an oversize length before holding its body

    def next_event(self) -> Message | Malformed | None:
        """The next message, the terminal :class:`Malformed` (once), or None for more data."""
        if self.failed is not None:
            if self._failure_reported:
                return None
            self._failure_reported = True
            return self.failed
        self._read_header()
        if self.failed is not None:
            return self.next_event()
        if self._body_len is not None and len(self._buffer) >= HEADER.size + self._body_len:
            end = HEADER.size + self._body_len
            body = bytes(self._buffer[HEADER.size:end])
            del self._buffer[:end]
            self._body_len = None
            self.last_size = end
            event = decode_body(body)
            if isinstance(event, Malformed):
                self._fail(event)
                return self.next_event()
            self.frames += 1
            return event
        if self._ended and self._buffer:
            self._fail(Malformed(f"stream ended inside a frame ({len(self._buffer)} bytes)", DropReason.TRUNCATED))
            return self.next_event()
        return None

    def _read_header(self) -> None:
        if self._body_len is None and len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_frame:
                self._fail(Malformed(f"frame of {length} bytes exceeds the {self.max_frame}-byte cap",
                                     DropReason.OVERSIZE))
            elif length == 0:
                self._fail(Malformed("empty frame", DropReason.MSGPACK))
            else:
                self._body_len = length

    def _fail(self, malformed: Malformed) -> None:
        if self.failed is None:
            self.failed = malformed
            self._buffer = bytearray()
            self._body_len = None
