"""The node's side of the link against a hostile or buggy controller, over real TLS sockets: a real
LinkClient serving NodeOps, applying replication to a real People (vault + gallery)."""
from __future__ import annotations

import json
import logging
import sqlite3
import time

import msgpack
import pytest
import trio
import trio.testing

from palmnode.link.client import MAX_SERVING, MAX_SERVING_BYTES
from palmnode.link.codec import HEADER, MAX_FRAME, encode
from palmnode.link.messages import (
    PROTOCOL_VERSION,
    DropReason,
    Event,
    Goodbye,
    Hello,
    Response,
)
from palmnode.link.wire import person_to_wire
from palmnode.ops import SYNC_STATE

from tests.conftest import wait_for

from .hostile import Conn, Gate, Hostile, ThreadController, person, template_bytes, wire


def framed(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def array32(count: int, item: bytes) -> bytes:
    return b"\xdd" + count.to_bytes(4, "big") + item * count


def many_containers() -> bytes:
    body = b"\x84\xa4type\xa7request\xa2id\x01\xa2op\xa1x\xa4args\x81\xa1a" + array32(MAX_FRAME - 64, b"\x90")
    return HEADER.pack(len(body)) + body


@pytest.fixture
async def make(nursery, tmp_path, pki):
    """``await make(script, **link_config)``: a hostile controller running ``script`` and a gate
    dialling it; returns (hostile, gate)."""
    gates = []

    async def make(script, *, rcvbuf=None, people=(), **link):
        hostile = Hostile(pki, script, rcvbuf=rcvbuf)
        await nursery.start(hostile.run)
        gate = Gate(tmp_path, pki, hostile.port, **link)
        gates.append(gate)
        await gate.people.apply_upserts(people)  # known before the link starts (and syncs)
        await gate.start(nursery)
        return hostile, gate

    yield make
    for gate in gates:
        await gate.stop()


async def serving(conn: Conn) -> None:
    """A well-behaved controller: hello, ack events, answer sync."""
    await conn.hello()
    conn.serve()
    await trio.sleep_forever()


def link_down_lines(caplog) -> list[str]:
    return [r.fields["reason"] for r in caplog.records if r.getMessage() == "link down"]


async def still_serving(hostile: Hostile, gate: Gate, number: int) -> None:
    """The gate answers the controller on connection ``number``: a mode change and back."""
    conn = await hostile.connection(number)
    await gate.client.wait_connected()
    answer = await conn.request("mode.set", {"mode": "loyalty"})
    assert (answer.ok, answer.result) == (True, {"mode": "loyalty", "once": False})
    assert (await conn.request("mode.set", {"mode": "entry"})).ok


# ---- acks ---------------------------------------------------------------------------------------


async def test_an_ack_that_comes_back_at_once_is_matched_to_its_event(nursery, tmp_path, pki):
    """A store's controller in another process acks an event as soon as it reads it: the ack can
    reach the gate while its loop is still busy after sending that event (camera, matching). The
    gate noted an event as in flight only once its send returned, so such an ack was taken for one
    of no event in flight (``acks_unmatched``) and the event stayed unacked: after ack_timeout_s
    (30 s) the gate dropped a working connection and sent its outbox again (seen against a
    controller written from docs/protocols/controller.md: its first event, every start)."""
    controller = ThreadController(pki)
    gate = Gate(tmp_path, pki, controller.port, ack_timeout_s=3600)
    busy = True

    async def busy_loop():
        while busy:
            time.sleep(0.003)  # the gate's loop busy elsewhere between two steps of its tasks
            await trio.lowlevel.checkpoint()

    nursery.start_soon(busy_loop)
    await gate.start(nursery)
    stats = gate.client.stats
    try:
        for n in range(1, 31):  # one at a time: each ack finds the gate's receiving task idle
            gate.vault.append_event("device_health", {"name": "camera", "state": "ready"})
            gate.client.events_appended()
            await wait_for(lambda: len(controller.acked) == n)
            await wait_for(lambda: stats.events_acked + stats.acks_unmatched == n)
            assert stats.acks_unmatched == 0, f"the ack of event {n} was taken for one of no event in flight"
        assert (stats.events_acked, stats.connects) == (30, 1)
        assert gate.vault.pending_events() == []
    finally:
        busy = False
        await gate.stop()
        controller.close()


# ---- malformed frames ---------------------------------------------------------------------------

GARBAGE = {
    "bad msgpack": (HEADER.pack(2) + b"\x92\xc1", DropReason.MSGPACK, "bad msgpack"),
    "zero length": (HEADER.pack(0), DropReason.MSGPACK, "empty frame"),
    "trailing bytes": (HEADER.pack(3) + b"\x80\x80\x80", DropReason.MSGPACK, "bytes after the msgpack object"),
    "oversize length": (HEADER.pack(MAX_FRAME + 1), DropReason.OVERSIZE, "exceeds the 1048576-byte cap"),
    "length 2**32-1": (b"\xff\xff\xff\xff", DropReason.OVERSIZE, "frame of 4294967295 bytes"),
    "not a map": (framed([1, 2]), DropReason.SHAPE, "a frame must hold a map, got list"),
    "unknown type": (framed({"type": "invoice"}), DropReason.SHAPE, "unknown message type 'invoice'"),
    "no type": (framed({"id": 1}), DropReason.SHAPE, "unknown message type None"),
    "wrong field type": (framed({"type": "request", "id": "1", "op": "x", "args": {}}), DropReason.SHAPE,
                         "request.id: expected an int, got str"),
    "id below range": (framed({"type": "response", "id": -1, "ok": True, "result": {}, "error": None}),
                       DropReason.SHAPE, "response.id: -1 out of range"),
    "id above range": (framed({"type": "request", "id": 2**64 - 1, "op": "x", "args": {}}), DropReason.SHAPE,
                       "out of range 0..2**63-1"),
    "ack seq NaN": (framed({"type": "ack", "seq": float("nan"), "key": "k"}), DropReason.SHAPE,
                    "ack.seq: expected an int, got float"),
    "ok not a bool": (framed({"type": "response", "id": 1, "ok": 1, "result": {}, "error": None}),
                      DropReason.SHAPE, "response.ok: expected a bool"),
    "ext type": (framed({"type": "ack", "x": msgpack.ExtType(1, b"z")}), DropReason.MSGPACK, "ext type 1"),
    "nested 33 deep": (HEADER.pack(34) + b"\x91" * 33 + b"\xc0", DropReason.MSGPACK, "nesting deeper than 32"),
    "nested 100000 deep": (HEADER.pack(100_001) + b"\x91" * 100_000 + b"\xc0", DropReason.MSGPACK,
                           "nesting deeper than 32"),
    "a million arrays": (many_containers(), DropReason.MSGPACK, "more than 65536 maps and arrays"),
    "an event to the node": (encode(Event(seq=1, key="k", kind="x", node_id="controller", at=0.0, data={})),
                             DropReason.PROTOCOL, "an event sent to a node"),
    "a second hello": (encode(Hello(version=PROTOCOL_VERSION, node_id="controller", role="controller")),
                       DropReason.PROTOCOL, "a second hello"),
}


@pytest.mark.parametrize("garbage, kind, reason", GARBAGE.values(), ids=GARBAGE.keys())
async def test_a_malformed_frame_resets_the_connection_and_the_gate_comes_back(make, caplog, garbage, kind, reason):
    caplog.set_level(logging.INFO, logger="palmnode.link")

    async def script(conn: Conn) -> None:
        await conn.hello()
        conn.serve()
        if conn.number == 0:
            await conn.raw(garbage)
        await trio.sleep_forever()

    hostile, gate = await make(script)
    gate.vault.upsert_people([person("p-1")])
    before = gate.state()
    first = await hostile.connection(0)
    said = await first.until_ended()
    assert said.startswith("peer closed the connection: ") and reason in said, said  # its goodbye
    await still_serving(hostile, gate, 1)
    assert gate.client.stats.dropped == {kind: 1}
    lines = link_down_lines(caplog)
    assert len(lines) == 1 and reason in lines[0] and "\n" not in lines[0] and len(lines[0]) <= 200
    assert gate.state() == before


async def test_a_frame_cut_short_by_the_end_of_the_stream(make):
    async def script(conn: Conn) -> None:
        await conn.hello()
        if conn.number == 0:
            await conn.raw(HEADER.pack(100) + b"\x81\xa4type")
            await conn.stream.aclose()  # TLS close_notify: the stream ends inside the frame
            return
        conn.serve()
        await trio.sleep_forever()

    hostile, gate = await make(script)
    await still_serving(hostile, gate, 1)
    assert gate.client.stats.dropped == {DropReason.TRUNCATED: 1}
    assert gate.client.stats.disconnects == 1


# ---- slow-loris and floods ----------------------------------------------------------------------


async def test_a_frame_never_finished_is_dropped_after_the_frame_timeout(make, caplog):
    caplog.set_level(logging.INFO, logger="palmnode.link")

    async def script(conn: Conn) -> None:
        await conn.hello()
        conn.serve()
        if conn.number == 0:
            await conn.raw(HEADER.pack(100) + b"\x81")  # 1 byte of 100, and never the rest
        await trio.sleep_forever()

    hostile, gate = await make(script, frame_timeout_s=0.3)
    said = await (await hostile.connection(0)).until_ended()
    assert "a frame begun 0.3 s ago is not finished (" in said and "bytes of it received)" in said
    await still_serving(hostile, gate, 1)
    assert gate.client.stats.dropped == {DropReason.STALLED: 1}
    assert any("is not finished" in line for line in link_down_lines(caplog))


async def test_a_controller_that_never_says_hello_is_left_and_dialled_again(make):
    async def script(conn: Conn) -> None:
        await conn.stream.do_handshake()
        await trio.sleep_forever()

    hostile, gate = await make(script, hello_timeout_s=0.2)
    await hostile.connection(2)
    assert gate.client.stats.connects == 0 and gate.client.stats.failed_attempts >= 2
    assert gate.client.stats.last_error == "no hello from the peer within 0.2 s"


async def test_a_controller_refusing_the_gate_instead_of_its_hello_is_one_line_and_backed_off_from(make, caplog):
    """§4: a goodbye as the controller's first frame (a node id already connected) refuses the
    connection: the gate never looks connected (no sync, no event sent), says why in one line and
    dials again after a growing backoff, never faster (no flapping)."""
    caplog.set_level(logging.INFO, logger="palmnode.link")
    reason = "node id gate-1 is already connected (from 10.0.0.5:40112) and answering; each gate needs its own certificate"
    dialled: list[float] = []

    async def script(conn: Conn) -> None:
        dialled.append(trio.current_time())
        await conn.stream.do_handshake()
        await conn.raw(encode(Goodbye(reason=reason)))
        await conn.stream.aclose()

    hostile, gate = await make(script, backoff_initial_s=0.05, backoff_max_s=0.4)
    enrolled = person("p-1")
    gate.vault.add_person(enrolled, event=("enrolled", {"person": person_to_wire(enrolled)}))  # waits in the outbox
    gate.client.events_appended()
    await hostile.connection(6, timeout=10)
    stats = gate.client.stats
    assert (stats.connects, stats.disconnects, stats.events_sent, stats.requests_sent) == (0, 0, 0, 0)
    assert not gate.client.connected and stats.last_error == f"refused by the controller: {reason}"
    assert link_down_lines(caplog) == [stats.last_error]  # one line, not one per attempt
    assert not [r for r in caplog.records if r.getMessage() == "link connected"]
    gaps = [b - a for a, b in zip(dialled, dialled[1:])]
    for i, gap in enumerate(gaps[:5]):  # 0.05, 0.1, 0.2, 0.4, 0.4 s (±10%): never sooner
        assert gap >= 0.9 * min(0.4, 0.05 * 2**i) - 0.01, (i, gaps)


async def test_a_controller_that_stops_reading_is_dropped_and_the_events_go_after(make, caplog):
    """The controller takes the hellos and then reads nothing: the gate's sends fill the socket
    buffers and block. It drops the connection after the frame timeout (the ack timeout is never
    reached, the pump being stuck in a send) and delivers everything on the next one."""
    caplog.set_level(logging.INFO, logger="palmnode.link")

    async def script(conn: Conn) -> None:
        await conn.hello()
        if conn.number > 0:
            conn.serve()
        await trio.sleep_forever()

    hostile, gate = await make(script, rcvbuf=4096, frame_timeout_s=0.5, ack_timeout_s=3600)
    keys = {gate.vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x" * 200_000}).key for _ in range(60)}
    gate.client.events_appended()
    second = await hostile.connection(1, timeout=10)
    await hostile.changes.wait_until(lambda: {e.key for e in second.events} == keys, timeout=20)
    assert gate.client.stats.dropped == {DropReason.STALLED: 1}, link_down_lines(caplog)
    assert any("the peer took no frame for 0.5 s (not reading)" in line for line in link_down_lines(caplog))
    with trio.fail_after(5):
        while gate.vault.pending_events():
            await trio.sleep(0.02)


async def test_a_flood_of_pushes_is_served_a_bounded_number_at_a_time_and_none_is_lost(make):
    """Pushes arrive faster than the gate applies them (a sync page holds them): the gate serves
    at most MAX_SERVING at once and stops reading meanwhile (TCP pushes back on the controller),
    then applies every one."""
    flood = 200

    async def script(conn: Conn) -> None:
        await conn.hello()
        conn.serve()
        for i in range(flood):
            await conn.send_request("person.upsert", {"person": wire(f"p-{i}", i)})
        await trio.sleep_forever()

    hostile, gate = await make(script, outbox_poll_s=60)  # nothing wakes up on its own meanwhile
    async with gate.people.replication:  # a sync page being applied: every push waits for it
        await hostile.connection(0)
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        waiting = gate.people.replication.statistics().tasks_waiting  # the pushes (and the sync on connect's page)
        assert gate.client.stats.requests_in_progress == MAX_SERVING and waiting in (MAX_SERVING, MAX_SERVING + 1)
    conn = hostile.connections[0]
    await hostile.changes.wait_until(lambda: len(conn.responses) == flood, timeout=30)
    assert all(r.ok for r in conn.responses.values())
    assert gate.vault.count() == flood and len(gate.people.gallery) == flood
    assert gate.client.stats.requests_in_progress == 0 and gate.client.stats.request_bytes_in_progress == 0


async def test_big_requests_are_served_within_a_byte_budget(make):
    """Requests of nearly a frame each: the gate holds at most MAX_SERVING_BYTES of them (one
    alone always goes), whatever their number."""
    pad = b"\x00" * 900_000

    async def script(conn: Conn) -> None:
        await conn.hello()
        conn.serve()
        for i in range(12):
            await conn.send_request("person.remove", {"person_id": f"p-{i}", "pad": pad})
        await trio.sleep_forever()

    hostile, gate = await make(script, outbox_poll_s=60)  # nothing wakes up on its own meanwhile
    async with gate.people.replication:
        conn = await hostile.connection(0)
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert 0 < gate.client.stats.request_bytes_in_progress <= MAX_SERVING_BYTES
        assert gate.client.stats.requests_in_progress == MAX_SERVING_BYTES // len(pad)
        assert gate.people.replication.statistics().tasks_waiting - MAX_SERVING_BYTES // len(pad) in (0, 1)  # + sync
    await hostile.changes.wait_until(lambda: len(conn.responses) == 12, timeout=30)
    assert all(r.ok and r.result == {"removed": False} for r in conn.responses.values())


# ---- replication pushes with bad person records --------------------------------------------------

NO_MODALITY = b"PT\x01\x00"  # a template header naming neither modality: matches nothing, breaks the gallery

BAD_PEOPLE = {
    "not a map": ([1], "person: expected a map, got list"),
    "no person": (None, "person: expected a map, got NoneType"),
    "template not a template": (wire("p-9", palms=[{"palm": "right", "templates": [b"\x00" * 772]}]),
                                "not a palm template (bad magic)"),
    "template truncated": (wire("p-9", palms=[{"palm": "right", "templates": [template_bytes(1)[:700]]}]),
                           "palm template truncated"),
    "template too long": (wire("p-9", palms=[{"palm": "right", "templates": [template_bytes(1) + b"\x00"]}]),
                          "trailing bytes"),
    "template of no modality": (wire("p-9", palms=[{"palm": "right", "templates": [NO_MODALITY]}]),
                                "a template with neither modality"),
    "no templates": (wire("p-9", palms=[{"palm": "right", "templates": []}]), "1 to 32 byte strings"),
    "a palm twice": (wire("p-9", palms=[{"palm": "right", "templates": [template_bytes(1)]}] * 2),
                     "each palm once"),
    "palm named wrongly": (wire("p-9", palms=[{"palm": "middle", "templates": [template_bytes(1)]}]),
                           "palm must be one of"),
    "person id empty": (wire("p-9", person_id=""), "person_id must be a non-empty string"),
    "person id too long": (wire("p-9", person_id="p" * 129), "person_id must be a non-empty string of at most 128"),
    "person id not a string": (wire("p-9", person_id=9), "person.person_id: expected str, got int"),
    "card digest short": (wire("p-9", card_digest=b"\x01" * 5), "person.card_digest: a digest of 5 bytes"),
    "card digest long": (wire("p-9", card_digest=b"\x01" * 33), "person.card_digest: a digest of 33 bytes"),
    "phone digest long": (wire("p-9", phone_digest=b"\x01" * 64), "person.phone_digest: a digest of 64 bytes"),
    "card last4 not digits": (wire("p-9", card_last4="x" * 100_000), "person.card_last4: up to 4 digits expected"),
    "origin node huge": (wire("p-9", origin_node="g" * 100_000), "person.origin_node: at most 128 characters"),
    "enrolled at NaN": (wire("p-9", enrolled_at=float("nan")), "person.enrolled_at: must be finite"),
    "no palms": (wire("p-9", palms=[]), "person.palms: at least one palm"),
}


@pytest.mark.parametrize("bad, reason", BAD_PEOPLE.values(), ids=BAD_PEOPLE.keys())
async def test_a_bad_person_push_is_refused_in_one_line_and_changes_nothing(make, caplog, bad, reason):
    caplog.set_level(logging.INFO)
    hostile, gate = await make(serving)
    await gate.people.apply_upsert(person("p-1"))
    before = gate.state()
    conn = await hostile.connection(0)
    answer = await conn.request("person.upsert", {"person": bad} if bad is not None else {})
    assert not answer.ok and reason in answer.error and "\n" not in answer.error, answer.error
    assert gate.state() == before
    refused = [r for r in caplog.records if r.getMessage().startswith("link request refused")]
    assert len(refused) == 1 and refused[0].exc_info is None
    await still_serving(hostile, gate, 0)


async def test_a_push_whose_card_is_another_persons_is_refused_naming_no_one(make, caplog):
    caplog.set_level(logging.INFO)
    hostile, gate = await make(serving)
    known = person("p-1")
    await gate.people.apply_upsert(known)
    before = gate.state()
    conn = await hostile.connection(0)
    answer = await conn.request("person.upsert", {"person": wire("p-2", 5, card_digest=known.card.digest)})
    assert not answer.ok and answer.error == "person.upsert refused: its card is enrolled to another person here"
    answer = await conn.request("person.upsert", {"person": wire("p-2", 5, phone_digest=known.phone_digest)})
    assert not answer.ok and answer.error == "person.upsert refused: its phone is enrolled to another person here"
    assert gate.state() == before
    assert "p-1" not in caplog.text
    assert all(r.exc_info is None for r in caplog.records)


async def test_an_upsert_replayed_after_the_removal_does_not_bring_the_person_back(make):
    hostile, gate = await make(serving)
    conn = await hostile.connection(0)
    old = wire("p-1")
    assert (await conn.request("person.upsert", {"person": old})).ok
    assert (await conn.request("person.remove", {"person_id": "p-1"})).result == {"removed": True}
    replay = await conn.request("person.upsert", {"person": old})  # late, out of order
    assert not replay.ok and replay.error == "person.upsert refused: this person was removed here; a removal is final"
    assert gate.vault.get("p-1") is None and len(gate.people.gallery) == 0


@pytest.mark.parametrize("args, answer", [
    ({"person_id": "nobody"}, {"removed": False}),
], ids=["unknown person"])
async def test_a_remove_for_an_unknown_person_is_answered_false(make, args, answer):
    hostile, gate = await make(serving)
    await gate.people.apply_upsert(person("p-1"))
    before = gate.state()
    response = await (await hostile.connection(0)).request("person.remove", args)
    assert (response.ok, response.result) == (True, answer)
    assert gate.state() == before


# ---- requests with bad arguments ---------------------------------------------------------------


@pytest.mark.parametrize("op, args, reason", [
    ("person.remove", {}, "person_id must be a non-empty string"),
    ("person.remove", {"person_id": ""}, "person_id must be a non-empty string"),
    ("person.remove", {"person_id": 7}, "person_id must be a non-empty string"),
    ("person.remove", {"person_id": "p" * 129}, "of at most 128 characters"),
    ("person.delete", {"person_id": ""}, "person_id must be a non-empty string"),
    ("person.delete", {"person_id": "p" * 129}, "of at most 128 characters"),
    ("person.delete", {"card_digest": b"\x01" * 5}, "card_digest must be 32 bytes"),
    ("person.delete", {"card_digest": "ab" * 16}, "card_digest must be 32 bytes"),
    ("person.delete", {"person_id": "p-1", "phone": "+441234567890"}, "exactly one of"),
    ("person.delete", {"phone": "not a phone"}, "phone"),
    ("enrol.begin", {"card_required": "no"}, "card_required must be true or false"),
    ("enrol.begin", {"phone": 441234567890}, "phone must be a string"),
    ("enrol.begin", {"palms": "right"}, "palms must be a list"),
    ("enrol.begin", {"palms": ["right", "right"]}, "each once"),
    ("enrol.begin", {"palms": [["right"]]}, "palms must be 'left' and/or 'right'"),
    ("mode.set", {}, "gate mode must be one of"),
    ("mode.set", {"mode": 5}, "gate mode must be one of"),
    ("mode.set", {"mode": "PAYMENT", "amount_cents": 450, "currency": "EUR"}, "gate mode must be one of"),
    ("mode.set", {"mode": "payment", "currency": "EUR"}, "positive amount_cents"),
    ("mode.set", {"mode": "payment", "amount_cents": True, "currency": "EUR"}, "positive amount_cents"),
    ("mode.set", {"mode": "payment", "amount_cents": 4.5, "currency": "EUR"}, "positive amount_cents"),
    ("mode.set", {"mode": "payment", "amount_cents": float("nan"), "currency": "EUR"}, "positive amount_cents"),
    ("mode.set", {"mode": "payment", "amount_cents": -450, "currency": "EUR"}, "positive amount_cents"),
    ("mode.set", {"mode": "payment", "amount_cents": 2**63, "currency": "EUR"}, "below 2**63"),
    ("mode.set", {"mode": "payment", "amount_cents": 2**64 - 1, "currency": "EUR"}, "below 2**63"),
    ("mode.set", {"mode": "payment", "amount_cents": 450, "currency": "ÄÖÜ"}, "3-letter currency code"),
    ("mode.set", {"mode": "payment", "amount_cents": 450, "currency": "EURO"}, "3-letter currency code"),
    ("mode.set", {"mode": "payment", "amount_cents": 450, "currency": b"EUR"}, "3-letter currency code"),
    ("mode.set", {"mode": "payment", "amount_cents": 450, "currency": "EUR", "once": "yes"},
     "once must be true or false, got str"),
    ("mode.set", {"mode": "payment", "amount_cents": 450, "currency": "EUR", "once": 1},
     "once must be true or false, got int"),
    ("mode.set", {"mode": "payment", "amount_cents": 450, "currency": "EUR", "once": None},
     "once must be true or false, got NoneType"),
    ("mode.set", {"mode": "entry", "once": True}, "once is for payment mode only, not entry"),
    ("no.such.op", {}, "unknown op no.such.op"),
    ("x" * 100_000, {}, "unknown op xxx"),
])
async def test_a_request_with_bad_args_is_refused_in_one_line_and_changes_nothing(make, caplog, op, args, reason):
    caplog.set_level(logging.INFO)
    hostile, gate = await make(serving)
    await gate.people.apply_upsert(person("p-1"))
    before = gate.state()
    answer = await (await hostile.connection(0)).request(op, args)
    assert not answer.ok and reason in answer.error and "\n" not in answer.error, answer.error
    assert len(answer.error) <= 200
    assert gate.state() == before and gate.enrol.current is None
    assert all(len(r.getMessage()) <= 300 and len(str(getattr(r, "fields", ""))) <= 300 for r in caplog.records)
    await still_serving(hostile, gate, 0)


async def test_a_controller_naming_itself_at_length_gets_a_short_log_line(make, caplog):
    caplog.set_level(logging.INFO, logger="palmnode.link")

    async def script(conn: Conn) -> None:
        await conn.hello(name="c" * 100_000)
        conn.serve()
        await trio.sleep_forever()

    hostile, gate = await make(script)
    await gate.client.wait_connected()
    [connected] = [r for r in caplog.records if r.getMessage() == "link connected"]
    assert len(connected.fields["controller"]) <= 64


async def test_a_flood_of_enrolment_requests_starts_one_and_refuses_the_rest(make):
    async def script(conn: Conn) -> None:
        await conn.hello()
        conn.serve()
        for _ in range(300):
            await conn.send_request("enrol.begin", {"palms": ["right"], "card_required": True})
        await trio.sleep_forever()

    hostile, gate = await make(script)
    conn = await hostile.connection(0)
    await hostile.changes.wait_until(lambda: len(conn.responses) == 299, timeout=20)
    errors = {r.error for r in conn.responses.values()}
    assert errors == {"an enrolment is already running on this gate: cancel it first"}
    assert gate.client.stats.requests_in_progress == 1  # the first, waiting for its enrolment
    assert (await conn.request("enrol.cancel", {})).result == {"cancelled": True}
    await still_serving(hostile, gate, 0)


async def test_a_flood_of_refused_requests_logs_a_few_lines_then_a_summary_an_interval(make, caplog, mock_clock):
    """A controller asking for what the gate refuses, thousands of times: every one is refused and
    counted, but the log gets the first few lines of an interval and then one summary line per
    interval with the count per reason, not a line each (time is trio's MockClock)."""
    from palmnode.link.refusals import BURST, INTERVAL_S

    caplog.set_level(logging.INFO, logger="palmnode.link")
    bad_mode = {"mode": "bogus"}
    bad_amount = {"mode": "payment", "amount_cents": True, "currency": "EUR"}

    async def script(conn: Conn) -> None:
        await conn.hello()
        conn.serve()
        await trio.sleep_forever()

    hostile, gate = await make(script)
    conn = await hostile.connection(0)
    await gate.client.wait_connected()

    async def refused(*batches: tuple[dict, int]) -> None:
        ids = [await conn.send_request("mode.set", args) for args, count in batches for _ in range(count)]
        await hostile.changes.wait_until(lambda: all(i in conn.responses for i in ids), timeout=30)
        assert not any(conn.responses.pop(i).ok for i in ids)
        await trio.testing.wait_all_tasks_blocked()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("link request refused")]

    def summaries() -> list[dict]:
        return [r.fields for r in caplog.records if r.getMessage() == "link requests refused"]

    await refused((bad_mode, 200), (bad_amount, 100))
    assert gate.client.stats.requests_refused == 300  # every one counted
    assert len(lines()) == BURST and summaries() == []  # the first few lines; the rest held back
    mock_clock.jump(INTERVAL_S)
    await trio.testing.wait_all_tasks_blocked()
    [summary] = summaries()  # the interval is over: one line for the 295 held back
    assert summary["count"] == 300 - BURST and sum(summary["reasons"].values()) == 300 - BURST
    assert sorted((n, "amount_cents" in reason) for reason, n in summary["reasons"].items()) == [
        (100, True), (200 - BURST, False)]  # per reason
    assert all(len(reason) <= 120 and "\n" not in reason for reason in summary["reasons"])

    await refused((bad_mode, 40))  # the flood goes on: no more lines, a summary at the interval's end
    mock_clock.jump(INTERVAL_S / 2)
    await trio.testing.wait_all_tasks_blocked()
    assert len(lines()) == BURST and len(summaries()) == 1
    mock_clock.jump(INTERVAL_S / 2)
    await trio.testing.wait_all_tasks_blocked()
    assert len(lines()) == BURST and summaries()[1]["count"] == 40
    assert gate.client.stats.requests_refused == 340

    mock_clock.jump(2 * INTERVAL_S)  # a quiet interval: nothing to sum up, and lines come one by one again
    await trio.testing.wait_all_tasks_blocked()
    assert len(summaries()) == 2
    await refused((bad_amount, 1))
    assert len(lines()) == BURST + 1 and gate.client.stats.requests_refused == 341
    await still_serving(hostile, gate, 0)


# ---- sync pages that lie ------------------------------------------------------------------------


def pages(*answers: dict):
    """A sync handler answering with ``answers`` in turn, the last one for ever after."""
    asked: list[dict] = []

    async def sync(args: dict) -> dict:
        asked.append(args)
        return answers[min(len(asked), len(answers)) - 1]
    sync.asked = asked
    return sync


def up(person_id: str, seed: int = 0) -> dict:
    return {"kind": "upsert", "person": wire(person_id, seed)}


def syncing(handler):
    async def script(conn: Conn) -> None:
        conn.handlers["sync"] = handler
        await serving(conn)
    return script


def hook_failures(caplog) -> list[str]:
    return [r.fields["error"] for r in caplog.records if r.getMessage() == "link on_connected hook failed"]


@pytest.mark.parametrize("answers, applied, cursor, reason", [
    pytest.param([{"changes": [up("p-1")], "cursor": 10, "more": True},
                  {"changes": [up("p-2", 1)], "cursor": 5, "more": True}],
                 {"p-1"}, 10, "sync page refused: the cursor went back from 10 to 5", id="cursor goes back"),
    pytest.param([{"changes": [up("p-1")], "cursor": 10, "more": True}],
                 {"p-1"}, 10, "sync page refused: the cursor did not move from 10", id="cursor stays"),
    pytest.param([{"changes": [up("p-1")], "cursor": "a", "more": True},
                  {"changes": [up("p-2", 1)], "cursor": "b", "more": True},
                  {"changes": [up("p-3", 2)], "cursor": "a", "more": True}],
                 {"p-1", "p-2"}, "b", "sync page refused: the cursor came back to 'a'", id="cursor cycles"),
    pytest.param([{"changes": [], "cursor": 7, "more": True}],
                 set(), None, "sync page refused: no changes, yet more to come", id="page never ends"),
    pytest.param([{"changes": {"kind": "upsert"}, "cursor": 7, "more": False}],
                 set(), None, "sync page refused: changes must be an array, got dict", id="changes not an array"),
    pytest.param([{"changes": [up("p-1")], "more": False}],
                 set(), None, "sync page refused: no cursor", id="no cursor"),
    pytest.param([{"changes": [up("p-1")], "cursor": b"\x07", "more": False}],
                 set(), None, "sync page refused: the cursor must be nil, an int 0..2**63-1 or a string, got bytes",
                 id="cursor bytes"),
    pytest.param([{"changes": [up("p-1")], "cursor": -1, "more": False}],
                 set(), None, "sync page refused: the cursor must be", id="cursor negative"),
    pytest.param([{"changes": [up("p-1")], "cursor": "c" * 2000, "more": False}],
                 set(), None, "sync page refused: a cursor of 2000 characters", id="cursor huge"),
    pytest.param([{"changes": [up("p-1")], "cursor": 7, "more": "yes"}],
                 set(), None, "sync page refused: more must be true or false, got str", id="more not a bool"),
])
async def test_a_sync_page_that_lies_is_refused_and_nothing_of_it_is_applied(make, caplog, answers, applied,
                                                                             cursor, reason):
    caplog.set_level(logging.INFO)
    sync = pages(*answers)
    hostile, gate = await make(syncing(sync), backoff_initial_s=0.5)  # tried again 0.45 to 0.55 s later
    await wait_for(lambda: hook_failures(caplog))
    assert hook_failures(caplog)[0].startswith(reason), hook_failures(caplog)
    assert {p.person_id for p in gate.vault.people()} == applied  # the pages before it stand, whole
    assert len(gate.people.gallery) == len(applied)
    assert gate.vault.get_state(SYNC_STATE) == (None if cursor is None else json.dumps(cursor))
    asked = len(sync.asked)
    await still_serving(hostile, gate, 0)
    await wait_for(lambda: len(hook_failures(caplog)) >= 2)  # asked again after the backoff, not in a loop
    assert len(sync.asked) <= 2 * asked


async def test_a_sync_page_that_names_a_person_twice_applies_their_last_change(make, caplog):
    async def script(conn: Conn) -> None:
        conn.handlers["sync"] = pages({"changes": [up("p-1"), {"kind": "remove", "person_id": "p-1"},
                                                   {"kind": "remove", "person_id": "p-2"}, up("p-2", 2)],
                                       "cursor": 4, "more": False})
        await serving(conn)

    hostile, gate = await make(script, people=[person("p-1")])
    await wait_for(lambda: gate.vault.get_state(SYNC_STATE) == "4")
    gate_people = {p.person_id for p in gate.vault.people()}
    assert gate_people == {"p-2"} and len(gate.people.gallery) == 1


async def test_unusable_changes_of_a_page_are_dropped_in_one_line_and_the_rest_applied(make, caplog):
    caplog.set_level(logging.INFO)

    async def script(conn: Conn) -> None:
        conn.handlers["sync"] = pages({"changes": [{"kind": "remove", "person_id": "p-1"}, "junk",
                                                   {"kind": "rename"}, {"kind": "remove", "person_id": 5},
                                                   {"kind": "upsert", "person": wire("p-3", person_id="")},
                                                   up("p-2", 2)],
                                       "cursor": 6, "more": False})
        await serving(conn)

    hostile, gate = await make(script, people=[person("p-1")])
    # the line comes after the page's cursor is stored (in a worker thread): wait for both
    await wait_for(lambda: gate.vault.get_state(SYNC_STATE) == "6" and "sync changes dropped" in caplog.text)
    assert {p.person_id for p in gate.vault.people()} == {"p-2"}
    dropped = [r for r in caplog.records if r.getMessage() == "sync changes dropped"]
    assert len(dropped) == 1 and dropped[0].fields["count"] == 4
    assert dropped[0].fields["first"] == "changes[1]: a change must be a map, got str"
    assert "p-1" not in caplog.text and "p-3" not in caplog.text


async def test_a_sync_page_with_a_card_conflict_applies_everyone_else(make, caplog):
    caplog.set_level(logging.INFO)
    known = person("p-1")

    async def script(conn: Conn) -> None:
        conn.handlers["sync"] = pages({"changes": [up("p-2", 2),
                                                   {"kind": "upsert", "person": wire("p-3", 3,
                                                                                     card_digest=known.card.digest)},
                                                   up("p-4", 4)],
                                       "cursor": 3, "more": False})
        await serving(conn)

    hostile, gate = await make(script, people=[known])
    await wait_for(lambda: gate.vault.get_state(SYNC_STATE) == "3")
    assert {p.person_id for p in gate.vault.people()} == {"p-1", "p-2", "p-4"}
    assert len(gate.people.gallery) == 3
    assert "p-1" not in caplog.text and "p-3" not in caplog.text


# ---- charges ------------------------------------------------------------------------------------


async def charge_gate(make, handler, **link):
    async def script(conn: Conn) -> None:
        conn.handlers["charge"] = handler
        await serving(conn)

    hostile, gate = await make(script, **link)
    await gate.client.wait_connected()
    return hostile, gate


def abandoned(conn: Conn) -> list[dict]:
    return [e.data for e in conn.events if e.kind == "charge_abandoned"]


async def test_a_late_charge_answer_is_ignored_counted_and_the_charge_abandoned(make):
    release = trio.Event()

    async def late(args: dict) -> dict:
        await release.wait()
        return {"approved": True, "reference": "R-1"}

    hostile, gate = await charge_gate(make, late, request_timeout_s=0.3)
    result = await gate.ops.charge("p-1", b"\x01" * 32, 450, "EUR")
    assert not result.approved and result.reason == "controller unavailable: no answer to charge within 0.3 s"
    conn = await hostile.connection(0)
    await hostile.changes.wait_until(lambda: abandoned(conn))
    release.set()
    with trio.fail_after(5):
        while gate.client.stats.responses_unmatched < 1:
            await trio.sleep(0.01)
    assert abandoned(conn)[0]["amount_cents"] == 450 and gate.client.connected


async def test_a_charge_whose_abandonment_the_vault_refused_is_recorded_before_the_next_is_asked(make):
    """A charge given up on while another process held the vault's write lock stayed noted, not
    abandoned ("charge not settled"), and the next charge overwrote the note: the controller never
    heard of it, so an approval made after all stood while the customer had been told "declined".
    No charge is now asked until the abandonment is recorded."""
    gate_of: list[Gate] = []
    other: list[sqlite3.Connection] = []

    async def handler(args: dict) -> dict:
        if not other:  # the first charge: a backup takes the vault's write lock, the answer never comes
            other.append(sqlite3.connect(gate_of[0].vault.path, isolation_level=None))
            other[0].execute("BEGIN IMMEDIATE")
            await trio.sleep_forever()
        return {"approved": True, "reference": "R-2"}

    hostile, gate = await charge_gate(make, handler, request_timeout_s=0.3, vault_busy_timeout=0.2)
    gate_of.append(gate)
    conn = await hostile.connection(0)
    first = await gate.ops.charge("p-1", b"\x01" * 32, 450, "EUR")
    assert not first.approved and first.reason.startswith("controller unavailable")
    held = await gate.ops.charge("p-1", b"\x01" * 32, 500, "EUR")  # the lock still held: not asked
    assert not held.approved and held.reason.startswith("vault unavailable")
    assert [r.args["amount_cents"] for r in conn.requests if r.op == "charge"] == [450]
    other[0].execute("COMMIT")
    other[0].close()
    paid = await gate.ops.charge("p-1", b"\x01" * 32, 600, "EUR")
    assert paid.approved
    await hostile.changes.wait_until(lambda: abandoned(conn))
    asked = [r.args for r in conn.requests if r.op == "charge"]
    assert [a["amount_cents"] for a in asked] == [450, 600]
    assert [(a["key"], a["amount_cents"]) for a in abandoned(conn)] == [(asked[0]["key"], 450)]


async def test_an_approval_the_vault_cannot_record_is_declined_at_the_gate_and_abandoned(make):
    """An approved charge whose note the vault would not clear (another process holding it) was
    told "approved" with the note left: abandoned at the next start, the payment the customer had
    was voided. The customer is now told "declined" and the charge abandoned before the next one."""
    gate_of: list[Gate] = []
    other: list[sqlite3.Connection] = []

    async def handler(args: dict) -> dict:
        if not other:  # the first charge: approved, while a backup takes the vault's write lock
            other.append(sqlite3.connect(gate_of[0].vault.path, isolation_level=None))
            other[0].execute("BEGIN IMMEDIATE")
        return {"approved": True, "reference": f"R-{args['amount_cents']}"}

    hostile, gate = await charge_gate(make, handler, vault_busy_timeout=0.2)
    gate_of.append(gate)
    conn = await hostile.connection(0)
    first = await gate.ops.charge("p-1", b"\x01" * 32, 450, "EUR")
    assert not first.approved and first.reason.startswith("vault unavailable")
    other[0].execute("COMMIT")
    other[0].close()
    paid = await gate.ops.charge("p-1", b"\x01" * 32, 600, "EUR")
    assert paid.approved and paid.reference == "R-600"
    await hostile.changes.wait_until(lambda: abandoned(conn))
    asked = [r.args for r in conn.requests if r.op == "charge"]
    assert [(a["key"], a["amount_cents"]) for a in abandoned(conn)] == [(asked[0]["key"], 450)]


async def test_a_duplicated_or_stray_charge_answer_is_ignored_and_counted(make):
    conns: list[Conn] = []

    async def twice(args: dict) -> dict:
        conn = conns[0]
        request = next(r for r in reversed(conn.requests) if r.op == "charge")
        answer = Response.success(request.id, {"approved": True, "reference": "R-1"})
        await conn.channel.send(answer)
        await conn.channel.send(Response.success(request.id, {"approved": False, "reason": "no"}))
        await conn.channel.send(Response.success(99_999, {"approved": True}))
        return None  # answered above

    hostile, gate = await charge_gate(make, twice)
    conns.append(await hostile.connection(0))
    result = await gate.ops.charge("p-1", b"\x01" * 32, 450, "EUR")
    assert (result.approved, result.reference) == (True, "R-1")
    with trio.fail_after(5):
        while gate.client.stats.responses_unmatched < 2:
            await trio.sleep(0.01)
    assert gate.client.connected and not abandoned(conns[0])


@pytest.mark.parametrize("answer, reason", [
    ({"approved": "yes", "reference": "R-1"}, "approved must be true or false, got str"),
    ({"approved": 1}, "approved must be true or false, got int"),
    ({}, "approved must be true or false, got NoneType"),
    ({"approved": True, "reference": 5}, "reference must be a string or nil, got int"),
    ({"approved": False, "reason": ["no"]}, "reason must be a string or nil, got list"),
])
async def test_a_malformed_charge_answer_is_a_failed_charge_and_abandoned(make, answer, reason):
    async def handler(args: dict) -> dict:
        return answer

    hostile, gate = await charge_gate(make, handler)
    result = await gate.ops.charge("p-1", b"\x01" * 32, 450, "EUR")
    assert not result.approved and result.reason == f"controller's charge answer unusable: {reason}"
    conn = await hostile.connection(0)
    await hostile.changes.wait_until(lambda: abandoned(conn))


async def test_a_charge_answers_reason_is_one_short_line(make):
    async def handler(args: dict) -> dict:
        return {"approved": False, "reason": "declined\n" + "x" * 100_000}

    hostile, gate = await charge_gate(make, handler)
    result = await gate.ops.charge("p-1", b"\x01" * 32, 450, "EUR")
    assert not result.approved and "\n" not in result.reason and len(result.reason) <= 200
