"""The REPL line protocol, sans-IO: JSON lines in both directions (docs/protocols/repl.md).

Client → node: one request a line, ``{"cmd": "health", "args": []}`` (or ``{"cmd": "interrupt"}``
while a command runs). Node → client: first a ``{"hello": {...}}`` line, then for each request zero
or more streaming lines (``{"text": ...}``, ``{"event": {...}}``) and exactly one final line,
``{"ok": true, "result": ..., "text": ...}`` or ``{"ok": false, "error": "one line"}``.

No sockets, no trio here: :class:`LineDecoder` turns received bytes into lines (bounded buffer),
:func:`parse_request` turns a line into a :class:`Request` or a :class:`Malformed`, and the
``encode_*`` functions give the bytes of a line.
"""
from __future__ import annotations

import json
import math
import shlex
from typing import Any

import attrs

#: protocol name and version sent in the hello line (docs/protocols/repl.md §Hello)
VERSION = "palmnode-repl/1"
#: longest request line accepted (bytes, without the newline); longer → one error, line skipped
MAX_LINE = 64 * 1024
#: at most this many arguments in one request
MAX_ARGS = 64
#: the request that cancels the running command (follow, py); ignored when none runs
INTERRUPT = "interrupt"


@attrs.frozen
class Line:
    """One complete line (without its newline)."""

    data: bytes


@attrs.frozen
class LineTooLong:
    """A line longer than the limit was received and skipped (up to its newline)."""

    length: int


@attrs.frozen
class Request:
    cmd: str
    args: tuple[str, ...] = ()


@attrs.frozen
class Malformed:
    """A request line that is not a request; ``reason`` is one line for the client."""

    reason: str


class LineDecoder:
    """Bytes in, :class:`Line` / :class:`LineTooLong` out. Holds at most ``max_line`` bytes."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._skipping = 0  # > 0: inside an over-long line, this many bytes dropped so far
        self._pending: list[bytes] = []
        self.dropped_lines = 0

    def receive_data(self, data: bytes) -> None:
        self._pending.append(bytes(data))

    def next_event(self) -> Line | LineTooLong | None:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[:newline + 1]
                if self._skipping:
                    length, self._skipping = self._skipping + len(line), 0
                    self.dropped_lines += 1
                    return LineTooLong(length)
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > self.max_line:
                    self.dropped_lines += 1
                    return LineTooLong(len(line))
                return Line(line)
            if len(self._buffer) > self.max_line + 1:  # no newline within the limit (+ a CR)
                self._skipping += len(self._buffer)
                self._buffer.clear()
            if not self._pending:
                return None
            # move at most what keeps the buffer within max_line + 2 bytes
            room = self.max_line + 2 - len(self._buffer)
            chunk = self._pending[0]
            self._buffer += chunk[:room]
            if len(chunk) > room:
                self._pending[0] = chunk[room:]
            else:
                self._pending.pop(0)

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def parse_request(line: bytes) -> Request | Malformed:
    """A request line → :class:`Request`, or :class:`Malformed` with a one-line reason."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return Malformed("request is not UTF-8")
    except json.JSONDecodeError as exc:
        return Malformed(f"request is not JSON ({exc.msg} at column {exc.colno})")
    except ValueError as exc:          # e.g. an integer of more digits than int() converts
        return Malformed(f"request is not usable JSON ({exc})")
    except RecursionError:
        return Malformed("request is nested too deeply")
    if not isinstance(obj, dict):
        return Malformed('a request is a JSON object: {"cmd": "health", "args": []}')
    cmd = obj.get("cmd")
    args = obj.get("args", [])
    if not isinstance(cmd, str) or not cmd:
        return Malformed('missing "cmd": a request is {"cmd": "health", "args": []}')
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return Malformed('"args" must be a list of strings')
    if len(args) > MAX_ARGS:
        return Malformed(f"too many arguments (at most {MAX_ARGS})")
    unknown = sorted(set(obj) - {"cmd", "args"})
    if unknown:
        return Malformed(f"unknown request field {unknown[0]!r} (known: cmd, args)")
    return Request(cmd, tuple(args))


def encode(obj: dict[str, Any]) -> bytes:
    """One JSON line (strict JSON: NaN/inf become null)."""
    return json.dumps(_finite(obj), separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def encode_request(cmd: str, *args: str) -> bytes:
    return encode({"cmd": cmd, "args": list(args)})


def encode_ok(result: Any = None, text: str | None = None) -> bytes:
    reply: dict[str, Any] = {"ok": True, "result": result}
    if text is not None:
        reply["text"] = text
    return encode(reply)


def encode_error(reason: str) -> bytes:
    return encode({"ok": False, "error": " ".join(str(reason).split())})


def encode_closing(reason: str, text: str) -> bytes:
    """The line the node sends, unasked, before it closes a session (``reason``: why, one word)."""
    return encode({"closing": reason, "text": " ".join(str(text).split())})


def duration(seconds: float) -> str:
    """``900`` → ``15 min``, ``90`` → ``90 s``, ``7200`` → ``2 h`` (for one-line messages)."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def split_line(line: str) -> tuple[str, tuple[str, ...]]:
    """A typed line → (command, args) with shell-like quoting; ``py`` keeps the rest of the line
    whole (it is Python source). ValueError (one line) for unbalanced quotes."""
    stripped = line.strip()
    name, _, rest = stripped.partition(" ")
    if name == "py":
        return name, ((rest.strip(),) if rest.strip() else ())
    try:
        words = shlex.split(stripped)
    except ValueError as exc:
        raise ValueError(f"cannot split the line: {exc}") from None
    return (words[0], tuple(words[1:])) if words else ("", ())


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


__all__ = ["INTERRUPT", "MAX_ARGS", "MAX_LINE", "VERSION", "Line", "LineDecoder", "LineTooLong",
           "Malformed", "Request", "duration", "encode", "encode_closing", "encode_error", "encode_ok",
           "encode_request", "parse_request", "split_line"]
