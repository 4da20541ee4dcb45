"""Structured logs: one JSON object a line on stderr, never biometric data, card or phone numbers,
nor person ids: a log outlives a deletion (journald keeps it on disk), so a person id there would
keep their visits after they deleted themselves."""
from __future__ import annotations

import enum
import json
import logging
import math
import sys
import time
from typing import Any

import attrs

#: event fields never shown, in the REPL or the log, whatever their type (card tokens, expiry,
#: anything biometric or personal)
HIDDEN_FIELDS = frozenset({"token", "expiry", "digest", "card_digest", "phone", "phone_digest",
                           "template", "templates", "image", "images", "nir", "surface", "roi"})
#: and in the log, which outlives a deletion, no person id either (the REPL is live: it may)
LOG_HIDDEN_FIELDS = HIDDEN_FIELDS | {"person_id"}
#: the levels a node or controller logs at (config ``[node] log_level``, ``--log-level``)
LOG_LEVELS = ("debug", "info", "warning", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            entry[key + "_" if key in entry else key] = value  # never shadow ts/level/logger/msg
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = error_text(record.exc_info[1])
        return json.dumps(entry, default=str)


def error_text(exc: BaseException) -> str:
    """An exception as one log line, ``Type: message``; the type alone when its message may name a
    person (``exc.names_person``, e.g. the vault's errors: "card …0001 is already enrolled to
    person p…"), which the log must not keep."""
    if getattr(exc, "names_person", False):
        return f"{type(exc).__name__} (its message names a person: not logged)"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def setup(level: str = "info", stream=sys.stderr) -> None:
    """Route every logger to one JSON-lines handler on ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime


def event(logger: logging.Logger, msg: str, **fields: object) -> None:
    """Log one structured line: ``msg`` plus typed fields."""
    logger.info(msg, extra={"fields": fields})


def event_to_plain(event: object, hidden: frozenset[str] = HIDDEN_FIELDS) -> dict[str, Any]:
    """An event as plain fields: scalars and enums only, never ``hidden`` fields, arrays or bytes;
    a value object inside it (a ``ModeChanged``'s ``GateMode``) as a map of its own plain fields."""
    out: dict[str, Any] = {"type": type(event).__name__}
    for field in attrs.fields(type(event)):
        if field.name in hidden:
            continue
        value = getattr(event, field.name)
        if attrs.has(type(value)):
            value = {k: v for k, v in event_to_plain(value, hidden).items() if k != "type"}
        else:
            value = _scalar(value)
        if value is not _SKIP:
            out[field.name] = value
    return out


_SKIP = object()


def _scalar(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return _SKIP
