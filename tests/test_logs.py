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


def test_an_error_whose_message_names_a_person_is_logged_by_its_type_alone():
    """The vault's errors name rows and card owners (for `palmnode vault check` and the
    controller's answer); the log outlives a deletion, so it keeps their type only."""
    from palmnode.vault import DuplicateCard, TamperedData, VaultKeyError

    stream = io.StringIO()
    logs.setup("info", stream=stream)
    try:
        log = logging.getLogger("t")
        for exc in (DuplicateCard("card …0001 is already enrolled to person p000001-cd3d"),
                    TamperedData("template left#0 of person p000001-cd3d in vault v.db: fails authentication"),
                    VaultKeyError("key file k is mode 0644: chmod 600 k")):
            try:
                raise exc
            except Exception:
                log.warning("link request failed", exc_info=True)
            logs.event(log, "card look-up failed", error=logs.error_text(exc))
    finally:
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    assert "p000001" not in text and "0001" not in text
    errors = [json.loads(line)["error"] for line in text.splitlines()]
    assert errors == ["DuplicateCard (its message names a person: not logged)"] * 2 + [
        "TamperedData (its message names a person: not logged)"] * 2 + ["VaultKeyError: key file k is mode 0644: chmod 600 k"] * 2
