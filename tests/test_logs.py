import io
import json
import logging

from palmnode import logs


def test_event_fields_may_use_any_name_and_lines_are_json():
    stream = io.StringIO()
    logs.setup("info", stream=stream)
    try:
        log = logging.getLogger("t")
        logs.event(log, "device state", name="camera", level="shadowed?", new="ready")
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "device state" and first["level_"] == "shadowed?" and first["level"] == "info"
    assert first["name"] == "camera" and first["new"] == "ready"
    assert second["error"] == "ValueError: bad" and second["level"] == "error"
