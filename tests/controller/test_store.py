"""The controller's SQLite record, on real database files."""
from __future__ import annotations

import functools
import itertools
import os
import sqlite3
import stat
import threading
import time

import msgpack
import pytest

from palmnode.controller.store import (
    FORGET_SLACK_S,
    BadRecord,
    PersonRecord,
    Remove,
    Store,
    StoredPalm,
    StoreError,
    Upsert,
)
from palmnode.link.wire import WireError, person_from_wire
from palmnode.vault import VaultKeys
from tests.conftest import returns_at_once
from tests.controller.harness import template_bytes

KEYS = VaultKeys.from_secret(bytes(range(32)))


def person_wire(person_id: str = "p-1", *, card: bytes | None = None, phone: bytes | None = None,
                templates: int = 3, origin: str = "gate-a") -> dict:
    return {"person_id": person_id, "card_digest": card or os.urandom(32), "card_last4": "4242",
            "phone_digest": phone or os.urandom(32),
            "palms": [{"palm": "right", "templates": [template_bytes() for _ in range(templates)]}],
            "enrolled_at": 1_700_000_000.5, "origin_node": origin}


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "controller.db", KEYS)
    yield store
    store.close()


def enrol(store: Store, person: dict, *, node="gate-a", key=None, seq=1):
    return store.apply_event(node_id=node, key=key or f"{node}:{seq}", seq=seq, kind="enrolled", at=1.0,
                             data={"person": person})


def files_bytes(path) -> bytes:
    out = b""
    for suffix in ("", "-wal", "-shm"):
        f = path.parent / (path.name + suffix)
        if f.exists():
            out += f.read_bytes()
    return out


def test_file_is_private_and_durable(store, tmp_path):
    enrol(store, person_wire())
    for suffix in ("", "-wal", "-shm"):
        f = tmp_path / ("controller.db" + suffix)
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, suffix
    conn = sqlite3.connect(tmp_path / "controller.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_enrolled_person_round_trips_with_templates_sealed(store, tmp_path):
    wire = person_wire()
    applied = enrol(store, wire)
    assert not applied.duplicate and isinstance(applied.change, Upsert)
    got = store.get_person("p-1")
    assert got == PersonRecord.from_wire(wire)
    assert got.to_wire() == wire
    raw = files_bytes(tmp_path / "controller.db")
    for template in wire["palms"][0]["templates"]:
        assert template[:64] not in raw  # only ciphertext on disk


def test_duplicate_event_is_applied_once(store):
    first = enrol(store, person_wire("p-1"), key="gate-a:7", seq=7)
    again = enrol(store, person_wire("p-1"), key="gate-a:7", seq=7)
    assert not first.duplicate and again.duplicate and again.change is None
    assert len(store.events(kind="enrolled")) == 1
    assert store.head_cursor() == first.change.cursor
    # the same key from another node is another event
    assert not enrol(store, person_wire("p-2"), node="gate-b", key="gate-a:7").duplicate
    for _ in range(3):
        store.apply_event(node_id="gate-a", key="gate-a:9", seq=9, kind="identified", at=2.0,
                          data={"person_id": "p-1", "palm": "right", "score": 0.91, "latency_ms": 80.0,
                                "mode": "entry"})
    [ident] = store.events(kind="identified")
    assert ident.data == {"person_id": "p-1", "palm": "right", "score": 0.91, "latency_ms": 80.0, "mode": "entry"}


def test_bad_payload_is_recorded_as_rejected_and_changes_nothing(store):
    bad = person_wire()
    bad["palms"][0]["palm"] = "middle"
    applied = enrol(store, bad)
    assert applied.rejected and "palm" in applied.effect and applied.change is None
    deleted = store.apply_event(node_id="gate-a", key="k", seq=1, kind="deleted", at=1.0, data={})
    assert deleted.rejected and "person_id" in deleted.effect
    assert store.head_cursor() == 0 and store.people_count() == 0
    assert [e.effect.split(":")[0] for e in store.events()] == ["rejected", "rejected"]
    assert enrol(store, bad).duplicate  # applied once: a redelivery is only recognised
    with pytest.raises(BadRecord, match="key"):
        store.apply_event(node_id="gate-a", key="", seq=1, kind="unknown", at=1.0, data={})


NO_MODALITY = b"PT\x01\x00"  # a template header naming neither modality: a gallery refuses it


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(card_digest=os.urandom(16)), "card_digest"),
    (lambda d: d.update(card_digest=os.urandom(64)), "card_digest"),
    (lambda d: d.update(phone_digest=b"x"), "phone_digest"),
    (lambda d: d.update(card_last4="²"), "card_last4"),       # str.isdigit(), yet not an ASCII digit
    (lambda d: d.update(card_last4="12345"), "card_last4"),
    (lambda d: d.update(origin_node="g" * 129), "origin_node"),
    (lambda d: d.update(enrolled_at=float("nan")), "enrolled_at"),
    (lambda d: d.update(enrolled_at=float("inf")), "enrolled_at"),
    (lambda d: d.update(palms=[]), "palms"),
    (lambda d: d.update(palms=d["palms"] * 2), "palm"),     # the right palm twice
    (lambda d: d["palms"][0].update(templates=[os.urandom(772)]), "templates"),   # not a template
    (lambda d: d["palms"][0].update(templates=[NO_MODALITY]), "neither modality"),
    (lambda d: d["palms"][0].update(templates=[template_bytes()] * 33), "templates"),
])
def test_a_person_a_gate_would_refuse_is_rejected_at_the_controller(store, mutate, field):
    """The record takes only people every gate takes (docs/protocols/controller.md §8): one it
    stored that a gate refuses would be pushed and synced to every gate, refused by each, for ever
    (and a NaN enrolment time failed the transaction itself, holding the gate's outbox behind it)."""
    bad = person_wire("p-1")
    bad["palms"] = [dict(p) for p in bad["palms"]]
    mutate(bad)
    with pytest.raises(WireError):
        person_from_wire(bad)  # what a gate does with it
    applied = enrol(store, bad)
    assert applied.rejected and applied.change is None
    assert field in applied.effect and "\n" not in applied.effect
    assert store.people_count() == 0 and store.head_cursor() == 0
    assert enrol(store, person_wire("p-1"), seq=2).change is not None  # the same person, well formed


def test_people_a_gate_refuses_stored_by_an_older_controller_are_retired_once(store, tmp_path):
    from palmnode.controller.store import _aad, _log_change
    from palmnode.vault import seal

    def stored_unchecked(wire):  # as a controller stored it before it checked enrolments by §8
        palms = msgpack.packb([[p["palm"], list(p["templates"])] for p in wire["palms"]])
        store._write(lambda conn: (conn.execute("INSERT INTO people VALUES (?, ?, ?, ?, ?, ?, ?)", (
            wire["person_id"], wire["card_digest"], wire["card_last4"], wire["phone_digest"],
            seal(store._key, palms, _aad(wire["person_id"])), wire["enrolled_at"], wire["origin_node"])),
            _log_change(conn, "upsert", wire["person_id"])))
    card = os.urandom(24)
    enrol(store, person_wire("good"))
    enrol(store, person_wire("damaged"), seq=2)
    store._write(lambda conn: conn.execute("UPDATE people SET palms = zeroblob(64) WHERE person_id = 'damaged'"))
    stored_unchecked({**person_wire("bad-card"), "card_digest": card})
    stored_unchecked({**person_wire("bad-last4"), "card_last4": "²"})
    enrol(store, person_wire("p-1", origin="gate-b"), node="gate-b", seq=3)
    store.apply_event(node_id="gate-a", key="gate-a:v", seq=4, kind="identified", at=2.0,  # a visit of theirs
                      data={"person_id": "bad-card", "palm": "right", "score": 0.5, "latency_ms": 90.0, "mode": "entry"})
    head = store.head_cursor()
    assert store.retire_unusable_people(by="controller") == {
        "person.card_digest: a digest of 24 bytes (32 expected)": 1, "person.card_last4: up to 4 digits expected": 1}
    assert store.get_person("bad-card") is None and store.get_person("bad-last4") is None
    assert store.get_person("good") is not None and store.people_count() == 3  # the damaged record is left alone
    changes, _, _ = store.changes_since(head)
    assert [(type(c).__name__, c.person_id) for c in changes] == [("Remove", "bad-card"), ("Remove", "bad-last4")]
    assert store.events(kind="identified")[0].data is None  # their events erased, as a removal's
    assert card not in files_bytes(tmp_path / "controller.db")  # overwritten, the WAL truncated
    assert store.retire_unusable_people(by="controller") is None  # once per database
    assert [e["person_id"] for e in store.audit_entries() if e["kind"] == "removed"] == ["bad-card", "bad-last4"]


def test_transaction_is_all_or_nothing(store, monkeypatch):
    import palmnode.controller.store as mod

    def boom(*args, **kwargs):
        raise RuntimeError("disk gone")
    monkeypatch.setattr(mod, "_audit", boom)  # fails after the person and change rows are written
    with pytest.raises(RuntimeError):
        enrol(store, person_wire())
    monkeypatch.undo()
    assert store.get_person("p-1") is None and store.events() == [] and store.head_cursor() == 0


def test_change_log_keeps_one_latest_row_per_person(store):
    p1 = person_wire("p-1")
    enrol(store, p1, seq=1)
    enrol(store, person_wire("p-2"), seq=2)
    enrol(store, p1, seq=3)  # the same enrolment again, under another key: p-1's first upsert row goes
    changes, cursor, more = store.changes_since(0)
    assert [type(c).__name__ + ":" + (c.person.person_id if isinstance(c, Upsert) else c.person_id)
            for c in changes] == ["Upsert:p-2", "Upsert:p-1"]
    assert cursor == store.head_cursor() and not more
    store.apply_event(node_id="gate-b", key="gate-b:1", seq=1, kind="deleted", at=3.0, data={"person_id": "p-1"})
    changes, cursor2, _ = store.changes_since(0)
    assert [c.to_wire()["kind"] for c in changes] == ["upsert", "remove"]
    assert changes[1] == Remove(cursor2, "p-1")
    # a node that was at `cursor` learns only the removal
    assert store.changes_since(cursor)[0] == [Remove(cursor2, "p-1")]
    assert store.changes_since(cursor2) == ([], cursor2, False)
    # cursors are never reused, even after rows were deleted
    assert enrol(store, person_wire("p-3"), seq=4).change.cursor > cursor2


def test_sync_pages_by_size(store):
    for i in range(10):
        enrol(store, person_wire(f"p-{i}", templates=3), seq=i)
    seen, cursor, pages = [], 0, 0
    while True:
        changes, cursor, more = store.changes_since(cursor, max_bytes=5000)
        seen += [c.person.person_id for c in changes]
        pages += 1
        if not more:
            break
    assert seen == [f"p-{i}" for i in range(10)] and pages > 3
    changes, cursor, more = store.changes_since(0, limit=4)
    assert len(changes) == 4 and more and cursor == changes[-1].cursor
    # a cursor from another database (beyond ours) starts over
    assert len(store.changes_since(10_000)[0]) == 10


def test_a_live_persons_record_never_changes(store):
    """An enrolment is made once, with a new id (a linked enrolment changes nobody), so every
    upsert of a live person the gates get carries the same data and their order cannot matter. An
    enrolled event naming a live person with other data (a buggy gate, or one taking someone over:
    their card, their palms) is rejected, and the record, the log and the gates keep the first."""
    first = person_wire("p-1")
    applied = enrol(store, first, seq=1)
    head = store.head_cursor()
    for other in ({**first, "card_digest": os.urandom(32)},
                  {**first, "palms": [{"palm": "right", "templates": [template_bytes()]}]},
                  {**first, "enrolled_at": first["enrolled_at"] + 1}):
        taken = enrol(store, {**other, "origin_node": "gate-b"}, node="gate-b", seq=len(store.events()) + 1)
        assert taken.rejected and taken.change is None
        assert taken.effect == "rejected: person already enrolled with other data (a live person never changes)"
        assert "p-1" not in taken.effect
    assert store.get_person("p-1") == PersonRecord.from_wire(first) and store.head_cursor() == head
    again = enrol(store, first, seq=9)  # the same data again (its gate, another key): applied as before
    assert not again.rejected and again.change.person == applied.change.person
    audit = [e for e in store.audit_entries() if e["kind"] == "event_rejected"]
    assert len(audit) == 3 and all("already enrolled" in e["reason"] for e in audit)
    store._write(lambda conn: conn.execute("UPDATE people SET palms = zeroblob(64)"))  # damaged on disk
    repaired = {**first, "card_digest": os.urandom(32)}
    assert not enrol(store, repaired, seq=10).rejected  # a record that no longer opens is replaced
    assert store.get_person("p-1") == PersonRecord.from_wire(repaired)


def test_an_enrolment_is_taken_only_from_its_origin_gate(store):
    """The sending gate (the server's authenticated node id) must be the person's origin_node: a
    gate enrolling in another's name is rejected (recorded, audited, acked by the server) and
    changes nothing, whatever the person; the origin gate's own enrolment is applied."""
    wire = person_wire("p-1", origin="gate-a")
    forged = enrol(store, wire, node="gate-b")
    assert forged.rejected and not forged.duplicate and forged.change is None
    assert forged.effect == "rejected: person.origin_node gate-a is not the sending gate gate-b"
    long_name = enrol(store, person_wire("p-2", origin="g" * 128), node="gate-b", seq=2)
    assert long_name.effect == f"rejected: person.origin_node {'g' * 63}… is not the sending gate gate-b"
    assert store.get_person("p-1") is None and store.people_count() == 0 and store.head_cursor() == 0
    assert [(e["kind"], e["node_id"], e["event_kind"]) for e in store.audit_entries()] == [
        ("event_rejected", "gate-b", "enrolled")] * 2
    assert enrol(store, wire, node="gate-b").duplicate  # recorded: a redelivery is only recognised
    assert enrol(store, wire, node="gate-a").effect == "enrolled"
    assert store.get_person("p-1").origin_node == "gate-a"


def test_removal_is_final(store):
    enrol(store, person_wire("p-1"), seq=1)
    store.apply_event(node_id="gate-b", key="gate-b:1", seq=1, kind="deleted", at=3.0, data={"person_id": "p-1"})
    late = enrol(store, person_wire("p-1"), seq=2)  # its gate's enrolment, delivered late
    assert late.effect.startswith("refused") and late.to_origin and isinstance(late.change, Remove)
    assert store.get_person("p-1") is None


def test_an_enrolment_made_before_its_cards_store_wide_deletion_is_refused_when_it_arrives(store, tmp_path):
    """The desk deletes a card store-wide while a gate that is away has (or is finishing) an
    enrolment of it: the record held nobody, so the enrolment arriving later was stored and
    replicated, the person who asked to be forgotten enrolled everywhere. An enrolment of the card
    made before the deletion (plus the window) is now refused and its gate told to forget them; one
    made after the window is a new enrolment and taken. The file keeps no digest of the card."""
    card, deleted_at = os.urandom(32), 1_700_000_000.0
    enrol(store, person_wire("p-0", card=card), seq=1)
    assert store.forget_card(card, by="controller", at=deleted_at).person_id == "p-0"  # what the record held
    made_before = {**person_wire("p-1", card=card, origin="gate-b"), "enrolled_at": deleted_at - 3600.0}
    finishing = {**person_wire("p-2", card=card, origin="gate-b"), "enrolled_at": deleted_at + store.forget_window_s}
    for seq, wire in ((2, made_before), (3, finishing)):
        refused = enrol(store, wire, node="gate-b", seq=seq)
        assert (refused.effect, refused.to_origin, refused.rejected) == (
            "refused: its card was deleted store-wide", True, False)
        assert refused.change == Remove(store.head_cursor(), wire["person_id"])  # a gate that syncs forgets them
        assert store.get_person(wire["person_id"]) is None
    assert store.people_count() == 0
    assert [e["reason"] for e in store.audit_entries() if e["kind"] == "enrol_refused"] == [
        "its card was deleted store-wide before this enrolment"] * 2
    later = {**person_wire("p-3", card=card, origin="gate-b"), "enrolled_at": deleted_at + store.forget_window_s + 1.0}
    assert enrol(store, later, node="gate-b", seq=4).effect == "enrolled"  # asked again after: taken
    assert store.forget_card(card, by="controller", at=deleted_at + 7200.0).person_id == "p-3"  # deleted again
    assert store._read("SELECT at FROM forgotten_cards") == [(deleted_at + 7200.0,)]  # one row, the later time
    store.prune_events(before=deleted_at + 7201.0)  # the card is remembered as long as the events
    assert store._read("SELECT count(*) FROM forgotten_cards") == [(0,)]
    assert enrol(store, made_before, node="gate-b", seq=5).effect == "refused: removed"  # p-1's removal stands
    assert card not in files_bytes(tmp_path / "controller.db")


DELETED_AT = 1_700_000_000.0


def unknown(store: Store, node: str, seq: int, at: float, *, key: str | None = None):
    """A gate's ``unknown`` event (nobody in it), stamped ``at`` by the gate's clock."""
    return store.apply_event(node_id=node, key=key or f"{node}:{seq}", seq=seq, kind="unknown", at=at,
                             data={"latency_ms": 90.0, "reason": "no match"})


def enrol_card(store: Store, node: str, seq: int, person_id: str, card: bytes, enrolled_at: float):
    """``node``'s enrolment of ``card``, its event written right after (stamped a second later)."""
    wire = {**person_wire(person_id, card=card, origin=node), "enrolled_at": enrolled_at}
    return store.apply_event(node_id=node, key=f"{node}:{seq}", seq=seq, kind="enrolled", at=enrolled_at + 1.0,
                             data={"person": wire})


def remembered(store: Store, card: bytes) -> bool:
    return bool(store._read("SELECT 1 FROM forgotten_cards WHERE card_tag = ?", (store._card_tag(card),)))


def test_a_deleted_card_is_remembered_until_every_known_gate_has_delivered_past_its_window(store, tmp_path):
    """The tag of a card deleted store-wide is a trace of someone who asked to be forgotten: it
    stays only while an enrolment of that card made before the deletion (plus the window) can
    still arrive. A gate delivers its events oldest first, so that is until every gate the
    controller knows of (a hello, an event) has delivered one stamped past the window; then the
    tag leaves the file (and its WAL) at once, not with the events 90 days later."""
    db = tmp_path / "controller.db"
    card = os.urandom(32)
    past = DELETED_AT + store.forget_window_s + FORGET_SLACK_S + 1.0  # a stamp past the window
    store.node_seen("gate-c", version=1, capabilities=())  # said hello, delivered nothing yet
    unknown(store, "gate-a", 1, DELETED_AT - 500.0)
    unknown(store, "gate-b", 1, DELETED_AT - 400.0)
    store.forget_card(card, by="controller", at=DELETED_AT)
    tag = store._card_tag(card)
    assert tag in files_bytes(db)  # it is there (the database or its WAL)

    assert unknown(store, "gate-a", 2, past).cards_released == 0  # gate-a is past; b and c are not
    assert remembered(store, card)
    refused = enrol_card(store, "gate-b", 2, "p-1", card, DELETED_AT + store.forget_window_s)
    assert refused.effect == "refused: its card was deleted store-wide"  # still refused
    assert unknown(store, "gate-b", 3, past).cards_released == 0  # a and b are past; c (silent) is not
    assert enrol_card(store, "gate-c", 1, "p-2", card, DELETED_AT - 60.0).effect == (
        "refused: its card was deleted store-wide")  # what the silent gate made before the deletion
    # past the window but within the slack: gate-c may have read its clock for an enrolment of the
    # card (enrolled_at within the window) before it wrote this event, and write that enrolment next
    assert unknown(store, "gate-c", 2, DELETED_AT + store.forget_window_s + 30.0).cards_released == 0  # slack 60 s
    assert enrol_card(store, "gate-c", 3, "p-4", card, DELETED_AT + store.forget_window_s - 1.0).effect == (
        "refused: its card was deleted store-wide")
    assert remembered(store, card)

    released = unknown(store, "gate-c", 4, past)  # every known gate has delivered past the window
    assert released.cards_released == 1 and not remembered(store, card)
    raw = files_bytes(db)  # scrubbed at once: no page image of the tag left in the WAL either
    assert tag not in raw and card not in raw
    assert not store.scrub_pending
    assert unknown(store, "gate-c", 4, past).duplicate  # nothing left to release
    # a gate never heard of before (it cannot be told from one installed since): its enrolment of
    # the card made before the deletion is taken now, as one delivered after the retention was
    assert enrol_card(store, "gate-d", 1, "p-3", card, DELETED_AT - 30.0).effect == "enrolled"
    store.close()
    assert tag not in files_bytes(db)


def test_redelivered_or_out_of_order_events_do_not_release_a_deleted_card_early(store):
    """What counts is each gate's event applied last. One that comes after an event stamped later
    (out of order: held back, then sent; or the gate's clock stepped back) holds the card again,
    so an enrolment that may follow it is still refused; a redelivered event (its key applied
    before: the ack was lost) moves nothing, whatever it is stamped."""
    card = os.urandom(32)
    past = DELETED_AT + store.forget_window_s + FORGET_SLACK_S + 1.0
    unknown(store, "gate-a", 1, DELETED_AT - 200.0)
    unknown(store, "gate-b", 1, DELETED_AT - 200.0)
    store.forget_card(card, by="controller", at=DELETED_AT)
    assert unknown(store, "gate-a", 3, past).cards_released == 0  # gate-b is not past yet
    assert unknown(store, "gate-a", 2, DELETED_AT - 100.0).cards_released == 0  # gate-a's seq 2, late
    assert unknown(store, "gate-b", 2, past).cards_released == 0  # gate-a's last event is not past now
    assert remembered(store, card)
    assert enrol_card(store, "gate-a", 4, "p-1", card, DELETED_AT - 50.0).effect == (
        "refused: its card was deleted store-wide")
    for redelivered in (3, 1):  # gate-a lost the acks: duplicates, stamped past or not
        again = unknown(store, "gate-a", redelivered, past + 100.0)
        assert again.duplicate and again.cards_released == 0
    assert remembered(store, card)
    assert store._read("SELECT last_at FROM node_progress WHERE node_id = 'gate-a'") == [(DELETED_AT - 49.0,)]
    assert unknown(store, "gate-a", 5, past).cards_released == 1  # now every gate's last event is past
    assert not remembered(store, card)


def test_the_retention_still_bounds_a_deleted_card_that_a_known_gate_never_releases(store):
    """A gate known to the controller that never delivers past the window (taken out of the store,
    never to come back) would keep the card for ever: the retention still prunes it."""
    card = os.urandom(32)
    store.node_seen("gate-gone", version=1, capabilities=())
    store.forget_card(card, by="controller", at=DELETED_AT)
    unknown(store, "gate-a", 1, DELETED_AT + 86400.0)
    assert store.forget_settled_cards() == 0 and remembered(store, card)
    store.prune_events(before=DELETED_AT + 1.0)
    assert not remembered(store, card)


def test_forget_settled_cards_releases_what_the_events_applied_already_allow(tmp_path):
    """At start (a database with cards its events already allow to go: a window made shorter, or
    one written before node_progress, whose gates' progress is taken from their last events)."""
    db = tmp_path / "controller.db"
    card = os.urandom(32)
    store = Store.open(db, KEYS)
    store.forget_window_s = 86400.0
    store.forget_card(card, by="controller", at=DELETED_AT)
    unknown(store, "gate-a", 1, DELETED_AT + 7200.0)
    unknown(store, "gate-b", 1, DELETED_AT - 10.0)
    unknown(store, "gate-b", 2, DELETED_AT + 7200.0)
    assert remembered(store, card)
    store.close()
    conn = sqlite3.connect(db)
    with conn:  # as a controller before node_progress left it
        conn.execute("DROP TABLE node_progress")
    conn.close()
    store = Store.open(db, KEYS)  # the default window, 600 s
    try:
        assert store._read("SELECT node_id, last_at FROM node_progress ORDER BY node_id") == [
            ("gate-a", DELETED_AT + 7200.0), ("gate-b", DELETED_AT + 7200.0)]
        tag = store._card_tag(card)
        assert store.forget_settled_cards() == 1 and not remembered(store, card)
        assert store.forget_settled_cards() == 0
        assert tag not in files_bytes(db)
    finally:
        store.close()


def test_delete_leaves_none_of_the_persons_bytes(store, tmp_path):
    db = tmp_path / "controller.db"
    card, phone = os.urandom(32), os.urandom(32)
    wire = person_wire("victim-0001", card=card, phone=phone)
    enrol(store, wire, seq=1)
    enrol(store, person_wire("other-0002"), seq=2)
    sealed = store._read("SELECT palms FROM people WHERE person_id = 'victim-0001'")[0][0]
    raw = files_bytes(db)
    assert card in raw and sealed[:32] in raw  # they were there
    store.apply_event(node_id="gate-b", key="gate-b:1", seq=1, kind="deleted", at=3.0,
                      data={"person_id": "victim-0001"})
    for raw in (files_bytes(db),):
        for secret in (card, phone, sealed[:32], sealed[-32:]):
            assert secret not in raw
    store.close()
    raw = files_bytes(db)
    for secret in (card, phone, sealed[:32], sealed[-32:]):
        assert secret not in raw
    reopened = Store.open(db, KEYS)
    assert reopened.get_person("other-0002") is not None and reopened.get_person("victim-0001") is None
    reopened.close()


def test_a_wal_truncation_a_reader_blocks_neither_waits_nor_is_forgotten(store, tmp_path):
    """Another connection's read transaction (a backup, an sqlite3 shell) keeps the WAL from being
    truncated after a removal: the removal must not wait out the busy timeout holding the store
    (every gate's traffic), and the store must say the WAL still needs truncating."""
    db = tmp_path / "controller.db"
    card = os.urandom(32)
    enrol(store, person_wire("victim-0001", card=card), seq=1)
    enrol(store, person_wire("other-0002"), seq=2)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM people").fetchone()  # a snapshot from before the removal
    store._conn.execute("PRAGMA busy_timeout = 3600000")  # a checkpoint that waited would stall an hour
    returns_at_once(functools.partial(store.apply_event, node_id="gate-b", key="gate-b:1", seq=1, kind="deleted",
                                      at=3.0, data={"person_id": "victim-0001"}), reader)
    assert store.get_person("victim-0001") is None  # the removal stands
    assert store.scrub_pending and "read transaction" in store.scrub_blocked
    assert card in files_bytes(db)  # the enrolment's page images are still in the -wal
    assert not store.scrub() and store.scrub_pending  # again: still blocked, still not waiting
    reader.execute("COMMIT")
    assert store.scrub()
    assert not store.scrub_pending and store.scrub_blocked is None
    assert os.path.getsize(f"{db}-wal") == 0 and card not in files_bytes(db)
    reader.close()


def test_opening_truncates_a_wal_a_stopped_controller_could_not(tmp_path):
    db = tmp_path / "controller.db"
    store = Store.open(db, KEYS)
    card = os.urandom(32)
    enrol(store, person_wire("victim-0001", card=card), seq=1)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM people").fetchone()
    store.remove_person("victim-0001", by="controller")
    store.close()  # its last try is blocked too: the WAL outlives this controller
    assert store.scrub_pending and card in files_bytes(db)
    reader.execute("COMMIT")  # the reader lets go but keeps the file open (the WAL stays)
    reopened = Store.open(db, KEYS)
    assert not reopened.scrub_pending and card not in files_bytes(db)
    reopened.close()
    reader.close()


def test_charges(store):
    card = os.urandom(32)
    enrol(store, person_wire("p-1", card=card))

    def charge(key, **kw):
        args = {"request_key": key, "node_id": "gate-a", "person_id": "p-1", "card_digest": card, "amount_cents": 500,
                    "currency": "EUR", "limit_cents": 10_000}
        return store.charge(**{**args, **kw})
    ok = charge("r1")
    assert ok.approved and ok.reason is None and ok.reference.startswith("ch_")
    assert charge("r1") == ok  # idempotent per request key
    assert charge("r1", amount_cents=99_999) == ok
    assert charge("r2", card_digest=os.urandom(32)).reason == "card does not match"
    assert charge("r3", person_id="nobody").reason == "unknown person"
    assert charge("r4", amount_cents=10_001).reason == "over the per-transaction limit"
    assert charge("r5", amount_cents=0).reason == "amount must be positive"
    assert charge("r6", amount_cents=10_000).approved
    assert len({charge(k).reference for k in ("r1", "r2", "r3", "r4", "r5", "r6")}) == 6


def test_nodes_health_and_audit(store):
    store.node_seen("gate-a", version=1, capabilities=("identify", "enrol"), at=10.0)
    store.node_seen("gate-a", version=1, capabilities=("identify",), at=20.0)
    [node] = store.nodes()
    assert (node.first_seen, node.last_seen, node.capabilities) == (10.0, 20.0, ("identify",))
    store.apply_event(node_id="gate-a", key="h1", seq=1, kind="device_health", at=5.0,
                      data={"name": "camera", "state": "lost", "error": "stream closed"})
    [health] = store.device_health()
    assert (health.name, health.state, health.error) == ("camera", "lost", "stream closed")
    store.apply_event(node_id="gate-a", key="x1", seq=2, kind="future_kind", at=5.0, data={"a": 1})
    assert store.events(kind="future_kind")[0].effect == "unrecognised kind"
    card = os.urandom(32)
    enrol(store, person_wire("p-1", card=card), seq=3)
    store.audit("operator", note="hello")
    entries = store.audit_entries()
    assert [e["kind"] for e in entries] == ["enrolled", "operator"]
    assert card.hex() not in repr(entries)


def test_another_key_or_file_is_refused(tmp_path):
    Store.open(tmp_path / "empty.db", KEYS).close()  # refused even before anyone is enrolled
    with pytest.raises(StoreError, match="another key"):
        Store.open(tmp_path / "empty.db", VaultKeys.from_secret(bytes(32)))
    store = Store.open(tmp_path / "c.db", KEYS)
    enrol(store, person_wire())
    store.close()
    with pytest.raises(StoreError, match="another key"):
        Store.open(tmp_path / "c.db", VaultKeys.from_secret(bytes(32)))
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not usable"):
        Store.open(tmp_path / "junk.db", KEYS)
    with pytest.raises(StoreError, match="cannot open"):
        Store.open(tmp_path / "junk.db" / "x.db", KEYS)


def test_concurrent_duplicates_from_threads_apply_once(store):
    wire = person_wire("p-1")
    results = []

    def deliver():
        results.append(enrol(store, wire, key="gate-a:1"))
    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.duplicate for r in results) == [False] + [True] * 7
    assert len(store.changes_since(0)[0]) == 1


def test_stored_palm_record_validation():
    good = person_wire()
    for mutate, match in [
        (lambda d: d.update(person_id=""), "person_id"),
        (lambda d: d.update(palms=[]), "palms"),
        (lambda d: d["palms"][0].update(templates=["str"]), "templates"),
        (lambda d: d.update(card_digest=b"x" * 65), "card_digest"),
        (lambda d: d.update(card_last4="12a4"), "last4"),
        (lambda d: d.update(enrolled_at=True), "enrolled_at"),
    ]:
        bad = {**good, "palms": [dict(p) for p in good["palms"]]}
        mutate(bad)
        with pytest.raises(BadRecord, match=match):
            PersonRecord.from_wire(bad)
    assert PersonRecord.from_wire({**good, "card_digest": None, "phone_digest": None}).palms[0] == \
        StoredPalm("right", tuple(good["palms"][0]["templates"]))


# -- whatever a node sends, the record only ever says BadRecord or records it ---------------------

from hypothesis import given, settings
from hypothesis import strategies as st

_scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) \
    | st.text(max_size=8) | st.binary(max_size=40)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
_palm = st.fixed_dictionaries({"palm": st.sampled_from(["left", "right", "unknown", "x"]),
                               "templates": st.lists(st.binary(min_size=0, max_size=20), max_size=3) | _values})
_person = st.fixed_dictionaries(
    {"person_id": st.text(max_size=10) | _values, "palms": st.lists(_palm, max_size=4) | _values,
     "enrolled_at": st.floats(allow_nan=False) | _values, "origin_node": st.text(max_size=5) | _values,
     "card_digest": st.binary(max_size=70) | st.none(), "phone_digest": st.binary(max_size=70) | _values,
     "card_last4": st.text(max_size=5) | st.none()}) | _values


@settings(max_examples=100, deadline=None)
@given(person=_person)
def test_person_records_from_any_data_only_fail_as_bad_record(person):
    try:
        record = PersonRecord.from_wire(person)
    except BadRecord as exc:
        assert "\n" not in str(exc)
    else:
        assert PersonRecord.from_wire(record.to_wire()) == record


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    store = Store.open(tmp_path_factory.mktemp("fuzz") / "c.db", KEYS)
    yield store
    store.close()


_fuzz_keys = itertools.count()


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["enrolled", "deleted", "identified", "unknown", "device_health", "other"]),
       data=st.dictionaries(st.text(max_size=12), _values, max_size=4) | st.fixed_dictionaries({"person": _person}))
def test_any_event_is_recorded_once(fuzz_store, kind, data):
    key = f"k{next(_fuzz_keys)}"
    first = fuzz_store.apply_event(node_id="gate-f", key=key, seq=1, kind=kind, at=1.0, data=data)
    again = fuzz_store.apply_event(node_id="gate-f", key=key, seq=1, kind=kind, at=1.0, data=data)
    assert not first.duplicate and again.duplicate


def visit(store: Store, person_id: str, seq: int, *, node="gate-a"):
    return store.apply_event(node_id=node, key=f"{node}:v{seq}", seq=seq, kind="identified", at=2.0,
                             data={"person_id": person_id, "palm": "right", "score": 0.42, "latency_ms": 95.0,
                                   "mode": "entry"})


def test_removal_erases_the_persons_events_and_keeps_them_duplicates(store, tmp_path):
    enrol(store, person_wire("victim-0001"), seq=1)
    enrol(store, person_wire("other-0002"), seq=2)
    visit(store, "victim-0001", 3)
    visit(store, "other-0002", 4)
    store.apply_event(node_id="gate-b", key="gate-b:1", seq=1, kind="deleted", at=3.0,
                      data={"person_id": "victim-0001"})
    named = [e for e in store.events() if e.data and "victim-0001" in e.data.values()]
    assert [(e.node_id, e.kind) for e in named] == [("gate-b", "deleted")]  # the removal's own record
    assert [e.data for e in store.events(node_id="gate-a")][:1] == [None]  # their enrolment, erased
    assert store.events(kind="identified")[0].data is None
    assert store.events(kind="identified")[1].data["person_id"] == "other-0002"
    assert visit(store, "victim-0001", 3).duplicate  # a redelivery is still only recognised
    late = visit(store, "victim-0001", 5)  # the gate had not heard of the removal yet
    assert late.effect == "recorded (person removed)" and store.events(kind="identified")[-1].data is None
    store.close()
    conn = sqlite3.connect(tmp_path / "controller.db")
    rows = conn.execute("SELECT kind, node_id FROM events WHERE person_id = 'victim-0001'").fetchall()
    conn.close()
    assert rows == [("deleted", "gate-b")]


def test_prune_events_forgets_only_the_old(store, tmp_path):
    for seq in (1, 2, 3):
        visit(store, "p-1", seq)
    conn = sqlite3.connect(tmp_path / "controller.db")
    with conn:
        conn.execute("UPDATE events SET applied_at = 1000 WHERE key != 'gate-a:v3'")
    conn.close()
    assert store.prune_events(before=2000, keep_per_node=1) == 2
    assert [e.key for e in store.events()] == ["gate-a:v3"]
    assert store.prune_events(before=2000, keep_per_node=1) == 0
    assert not visit(store, "p-1", 1).duplicate  # beyond the retention a redelivery counts again
    assert visit(store, "p-1", 3).duplicate


def test_a_clock_jump_keeps_each_nodes_newest_events(store):
    """A controller whose clock jumps forward (no real-time clock, then NTP) sees every row as
    old at once: each node's newest events stay, so a redelivery is still a duplicate."""
    for seq in (1, 2, 3):
        visit(store, "p-1", seq)
    visit(store, "p-1", 1, node="gate-b")
    assert store.prune_events(before=time.time() + 10 * 365 * 86400, keep_per_node=2) == 1
    assert [e.key for e in store.events()] == ["gate-a:v2", "gate-a:v3", "gate-b:v1"]
    assert visit(store, "p-1", 3).duplicate


def test_schema_1_database_is_migrated(tmp_path):
    db = tmp_path / "controller.db"
    store = Store.open(db, KEYS)
    enrol(store, person_wire("p-1"), seq=1)
    visit(store, "p-1", 2)
    store.apply_event(node_id="gate-a", key="h1", seq=3, kind="device_health", at=5.0,
                      data={"name": "camera", "state": "ok"})
    store.close()
    conn = sqlite3.connect(db)  # back to schema 1: events had no person column
    conn.executescript("DROP INDEX events_person; ALTER TABLE events DROP COLUMN person_id; PRAGMA user_version=1;")
    conn.close()
    store = Store.open(db, KEYS)
    store.apply_event(node_id="gate-b", key="gate-b:1", seq=1, kind="deleted", at=3.0, data={"person_id": "p-1"})
    assert [e.data for e in store.events(node_id="gate-a")] == [None, None, {"name": "camera", "state": "ok"}]
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


def test_an_abandoned_charge_is_voided_or_declined_when_it_comes(store):
    card = os.urandom(32)
    enrol(store, person_wire("p-1", card=card))
    args = dict(node_id="gate-a", person_id="p-1", card_digest=card, amount_cents=450, currency="EUR",
                limit_cents=10_000)
    approved = store.charge(request_key="gate-a/k1", **args)
    assert approved.approved
    applied = store.apply_event(node_id="gate-a", key="gate-a:50", seq=50, kind="charge_abandoned", at=1.7e9,
                                data={"key": "k1", "amount_cents": 450, "currency": "EUR"})
    assert applied.effect == "charge voided"
    again = store.charge(request_key="gate-a/k1", **args)  # a retry of it gets the voided decision
    assert not again.approved and again.reference == approved.reference
    # abandoned before the request is decided (it comes late): the request is declined
    store.apply_event(node_id="gate-a", key="gate-a:51", seq=51, kind="charge_abandoned", at=1.7e9,
                      data={"key": "k2", "amount_cents": 450, "currency": "EUR"})
    late = store.charge(request_key="gate-a/k2", **args)
    assert not late.approved and late.reason == "abandoned by the gate: no answer in time"
    assert [e["kind"] for e in store.audit_entries()].count("charge_voided") == 1
