"""Structured logs: one JSON object a line on stderr, never biometric data, card or phone numbers,
nor person ids: a log outlives a deletion (journald keeps it on disk), so a person id there would
keep their visits after they deleted themselves."""
from __future__ import annotations

import json
import logging
import sys
import time

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
            exc = record.exc_info[1]
            entry["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return json.dumps(entry, default=str)


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
