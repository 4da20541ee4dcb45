"""The link's messages (docs/protocols/controller.md §3) as typed values.

Each message is a frozen attrs class with ``to_wire() -> dict`` (the msgpack map, with its
``type``) and ``from_wire(dict) -> message | Malformed``. :func:`from_wire` dispatches on
``type``. Construction validates field types (a wrong type is a programming error:
``TypeError``/``ValueError``); decoding never raises, it returns :class:`Malformed`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeAlias

import attrs

PROTOCOL_VERSION = 1  # §4: the highest (and only) version this code speaks
MIN_PROTOCOL_VERSION = 1  # §4: the lowest version this code accepts
MAX_REASON = 200  # §7: a goodbye/error reason is one line of at most this many characters
MAX_ID = 2**63 - 1  # §3: ids and seqs are msgpack ints; keep them in int64 so any peer can hold them
ROLES = ("node", "controller")  # §4


class DropReason:
    """Why a frame was refused (docs/protocols/controller.md §7); the keys of the drop counters."""

    OVERSIZE = "oversize"  # length over MAX_FRAME
    MSGPACK = "msgpack"  # not exactly one valid msgpack object of allowed types
    SHAPE = "shape"  # valid msgpack, not a known message
    TRUNCATED = "truncated"  # the stream ended inside a frame
    OVERFLOW = "overflow"  # the caller fed the decoder more than its buffer bound
    PROTOCOL = "protocol"  # a well-formed message out of order (hello rules, direction)
    STALLED = "stalled"  # a frame not finished, or not taken by the peer, within the channel's frame timeout


def one_line(text: object, limit: int = MAX_REASON) -> str:
    """``text`` as one line of at most ``limit`` characters (for reasons and errors)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@attrs.frozen
class Malformed:
    """A frame that could not be decoded; terminal for its connection (§7)."""

    reason: str  # one line for logs and the goodbye
    kind: str = DropReason.SHAPE  # a DropReason value, for counting


# ---- field checks: return an error string or None -------------------------------------------


def _int_error(value: object) -> str | None:
    if type(value) is not int:
        return f"expected an int, got {type(value).__name__}"
    if not 0 <= value <= MAX_ID:
        return f"{value} out of range 0..2**63-1"
    return None


def _str_error(value: object, *, non_empty: bool = False) -> str | None:
    if not isinstance(value, str):
        return f"expected a str, got {type(value).__name__}"
    if non_empty and not value:
        return "must not be empty"
    return None


def _map_error(value: object) -> str | None:
    if not isinstance(value, dict):
        return f"expected a map, got {type(value).__name__}"
    if not all(isinstance(k, str) for k in value):
        return "map keys must be str"
    return None


def _float_error(value: object) -> str | None:
    if type(value) not in (int, float):
        return f"expected a float, got {type(value).__name__}"
    if not math.isfinite(value):
        return "must be finite"
    return None


def _check(cls_name: str, field: str, error: str | None) -> None:
    if error is not None:
        raise TypeError(f"{cls_name}.{field}: {error}")


def _validator(check, **kw):
    def validate(instance: object, attribute: attrs.Attribute, value: object) -> None:
        _check(type(instance).__name__, attribute.name, check(value, **kw))

    return validate


_id = _validator(_int_error)
_str = _validator(_str_error)
_nonempty = _validator(_str_error, non_empty=True)
_map = _validator(_map_error)


def _capabilities(value: object) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else value  # type: ignore[return-value]


def _capabilities_error(value: object) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        return "expected an array of str"
    return None


def _role_error(value: object) -> str | None:
    if value not in ROLES:
        return f"role must be 'node' or 'controller', got {one_line(repr(value), 40)}"
    return None


def _version_error(value: object) -> str | None:
    if type(value) is not int or not 1 <= value <= MAX_ID:
        return f"version must be an int >= 1, got {one_line(repr(value), 40)}"
    return None


def _error_error(value: object) -> str | None:
    return None if value is None else _str_error(value)


# ---- messages ---------------------------------------------------------------------------------


class _Message:
    TYPE: ClassVar[str]
    #: field name -> check(value) -> error | None, for decoding
    _CHECKS: ClassVar[dict[str, Any]]

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.TYPE}
        for field in attrs.fields(type(self)):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            wire[field.name] = list(value) if isinstance(value, tuple) else value
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]):  # -> Self | Malformed
        values = {}
        for name, check in cls._CHECKS.items():
            if name not in wire:
                return Malformed(f"{cls.TYPE}: missing field {name!r}")
            error = check(wire[name])
            if error is not None:
                return Malformed(f"{cls.TYPE}.{name}: {error}")
            values[name] = wire[name]
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            return Malformed(f"{cls.TYPE}: {one_line(exc)}")


@attrs.frozen
class Hello(_Message):
    """First frame each way (§4)."""

    TYPE: ClassVar[str] = "hello"
    version: int = attrs.field(validator=_validator(_version_error))
    node_id: str = attrs.field(validator=_nonempty)
    role: Literal["node", "controller"] = attrs.field(validator=_validator(_role_error))
    capabilities: tuple[str, ...] = attrs.field(
        default=(), converter=_capabilities, validator=_validator(_capabilities_error)
    )


@attrs.frozen
class Request(_Message):
    """Ask the peer to run ``op`` (§5); answered by one :class:`Response` with the same id."""

    TYPE: ClassVar[str] = "request"
    id: int = attrs.field(validator=_id)
    op: str = attrs.field(validator=_nonempty)
    args: dict[str, Any] = attrs.field(factory=dict, validator=_map)


@attrs.frozen
class Response(_Message):
    """The answer to request ``id`` (§5): ``result`` when ``ok``, else a one-line ``error``."""

    TYPE: ClassVar[str] = "response"
    id: int = attrs.field(validator=_id)
    ok: bool = attrs.field(validator=_validator(lambda v: None if type(v) is bool else "expected a bool"))
    result: dict[str, Any] = attrs.field(factory=dict, validator=_map)
    error: str | None = attrs.field(default=None, validator=_validator(_error_error))

    def __attrs_post_init__(self) -> None:
        if self.ok and self.error is not None:
            raise ValueError("Response.error must be None when ok")
        if not self.ok and not self.error:
            raise ValueError("Response.error must say why when not ok")

    @classmethod
    def success(cls, id: int, result: dict[str, Any] | None = None) -> Response:
        return cls(id=id, ok=True, result=result or {}, error=None)

    @classmethod
    def failure(cls, id: int, error: object) -> Response:
        return cls(id=id, ok=False, result={}, error=one_line(error) or "failed")


@attrs.frozen
class Event(_Message):
    """Something that happened at a node (§6), delivered at least once, applied once by ``key``."""

    TYPE: ClassVar[str] = "event"
    seq: int = attrs.field(validator=_id)
    key: str = attrs.field(validator=_nonempty)
    kind: str = attrs.field(validator=_nonempty)
    node_id: str = attrs.field(validator=_str)
    at: float = attrs.field(converter=lambda v: float(v) if type(v) is int else v,
                            validator=_validator(_float_error))
    data: dict[str, Any] = attrs.field(factory=dict, validator=_map)


@attrs.frozen
class Ack(_Message):
    """The controller applied (or had already applied) event ``seq``/``key`` (§6)."""

    TYPE: ClassVar[str] = "ack"
    seq: int = attrs.field(validator=_id)
    key: str = attrs.field(validator=_nonempty)


@attrs.frozen
class Goodbye(_Message):
    """The sender is closing the connection, and why (§7; an addition to the brief's set)."""

    TYPE: ClassVar[str] = "goodbye"
    reason: str = attrs.field(converter=lambda v: one_line(v) if isinstance(v, str) else v, validator=_str)


Hello._CHECKS = {"version": _version_error, "node_id": lambda v: _str_error(v, non_empty=True),
                 "role": _role_error, "capabilities": _capabilities_error}
Request._CHECKS = {"id": _int_error, "op": lambda v: _str_error(v, non_empty=True), "args": _map_error}
Response._CHECKS = {"id": _int_error, "ok": lambda v: None if type(v) is bool else "expected a bool",
                    "result": _map_error, "error": _error_error}
Event._CHECKS = {"seq": _int_error, "key": lambda v: _str_error(v, non_empty=True),
                 "kind": lambda v: _str_error(v, non_empty=True), "node_id": _str_error,
                 "at": _float_error, "data": _map_error}
Ack._CHECKS = {"seq": _int_error, "key": lambda v: _str_error(v, non_empty=True)}
Goodbye._CHECKS = {"reason": _str_error}

Message: TypeAlias = Hello | Request | Response | Event | Ack | Goodbye
MESSAGE_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (Hello, Request, Response, Event, Ack, Goodbye)}


def from_wire(obj: object) -> Message | Malformed:
    """The message a decoded msgpack body stands for, or :class:`Malformed` (never raises)."""
    if not isinstance(obj, dict):
        return Malformed(f"a frame must hold a map, got {type(obj).__name__}")
    kind = obj.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return Malformed(f"unknown message type {one_line(repr(kind), 40)}")
    return cls.from_wire(obj)
