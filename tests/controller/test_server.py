"""The controller over real sockets with real mutual TLS, driven by nodes on real link channels."""
from __future__ import annotations

import functools
import json
import logging
import os
import time
import sqlite3
from pathlib import Path

import attrs
import pytest
import trio

from palmnode.controller.server import (
    Controller,
    ControllerError,
    NodeUnavailable,
    RequestFailed,
    RequestTimeout,
)
from palmnode.link.certs import make_dev_pki
from palmnode.link.channel import LinkClosed
from palmnode.link.codec import HEADER
from palmnode.link.messages import Event, Response
from tests.conftest import wait_for
from tests.controller.harness import (
    ChannelNode,
    ControllerRunner,
    controller_config,
    dial,
    person_wire,
    template_bytes,
)

NODES = ["gate-a", "gate-b", "gate-c"]


@pytest.fixture
def pki(tmp_path):
    return make_dev_pki(tmp_path / "pki", nodes=NODES)


@pytest.fixture
async def runner(nursery, tmp_path, pki):
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki, hello_timeout_s=5.0))
    await runner.start()
    return runner


@pytest.fixture
def controller(runner) -> Controller:
    return runner.controller


async def connect(nursery, controller, pki, name) -> ChannelNode:
    node = await ChannelNode.connect(nursery, controller.port, pki, name)
    await controller.wait_node(name)
    return node


async def test_hello_and_nodes(nursery, controller, pki):
    a = await connect(nursery, controller, pki, "gate-a")
    assert a.channel.peer_hello.role == "controller" and a.channel.peer_hello.node_id == "controller"
    assert set(a.channel.peer_hello.capabilities) == {"sync", "charge"}
    assert controller.nodes() == {"gate-a": ("events", "person.upsert", "person.remove", "node.status")}
    [seen] = await trio.to_thread.run_sync(controller.store.nodes)
    assert seen.node_id == "gate-a" and seen.version == 1
    status = controller.status()
    assert json.loads(json.dumps(status)) == status  # plain data
    assert (status["port"], status["nodes"], status["stats"]["sessions"]) == (controller.port, ["gate-a"], 1)
    assert status["wal"] == {"truncated": True}


async def test_events_are_acked_and_applied_once(nursery, controller, pki):
    a = await connect(nursery, controller, pki, "gate-a")
    data = {"person_id": "p-1", "palm": "right", "score": 0.9, "latency_ms": 81.0, "mode": "entry"}
    ack1 = await a.event("identified", data, key="gate-a:1", seq=1)
    a.acks.clear()
    ack2 = await a.event("identified", data, key="gate-a:1", seq=1)
    assert ack1 == ack2 and (ack1.seq, ack1.key) == (1, "gate-a:1")
    assert len(await trio.to_thread.run_sync(controller.store.events)) == 1
    assert (controller.stats.events_applied, controller.stats.events_duplicate) == (1, 1)
    # a malformed enrolment is acked (the outbox moves on), recorded as rejected, changes nothing
    await a.event("enrolled", {"person": {"person_id": "x"}})
    assert controller.stats.events_rejected == 1
    assert await trio.to_thread.run_sync(controller.store.people_count) == 0


async def test_enrolment_and_deletion_replicate_to_the_other_nodes(nursery, controller, pki):
    a = await connect(nursery, controller, pki, "gate-a")
    b = await connect(nursery, controller, pki, "gate-b")
    c = await connect(nursery, controller, pki, "gate-c")
    wire = person_wire("p-1")
    await a.event("enrolled", {"person": wire})
    for node in (b, c):
        await node.wait_until(lambda node=node: len(node.pushes) == 1)
        [push] = node.pushes
        assert push.op == "person.upsert" and push.args["person"] == wire and push.args["cursor"] >= 1
    with trio.fail_after(5):
        await b.event("deleted", {"person_id": "p-1"})
        await a.wait_until(lambda: len(a.pushes) == 1)
        await c.wait_until(lambda: len(c.pushes) == 2)
    assert a.pushes[0].op == "person.remove" and a.pushes[0].args["person_id"] == "p-1"
    assert c.pushes[1].op == "person.remove"
    assert len(b.pushes) == 1  # never its own change back
    await wait_for(lambda: controller.stats.pushes == 4 and not any(
        s.pushes for s in controller._sessions.values()))
    assert await trio.to_thread.run_sync(controller.store.get_person, "p-1") is None


async def test_an_enrolment_a_gate_would_refuse_is_rejected_in_one_line_and_never_pushed(nursery, controller, pki,
                                                                                          caplog):
    a = await connect(nursery, controller, pki, "gate-a")
    b = await connect(nursery, controller, pki, "gate-b")
    short = {**person_wire("p-short"), "card_digest": os.urandom(16)}   # every gate refuses it (§8)
    nan = {**person_wire("p-nan"), "enrolled_at": float("nan")}       # failed the controller's transaction
    await a.event("enrolled", {"person": short})
    await a.event("enrolled", {"person": nan})
    await a.event("enrolled", {"person": person_wire("p-good")})  # the outbox moves on behind them
    assert (controller.stats.events_rejected, controller.stats.events_applied) == (2, 1)
    await b.wait_until(lambda: len(b.pushes) == 1)
    assert b.pushes[0].args["person"]["person_id"] == "p-good"
    assert [p.person_id for p in [await trio.to_thread.run_sync(controller.store.get_person, i)
                                  for i in ("p-short", "p-nan", "p-good")] if p] == ["p-good"]
    lines = [r for r in caplog.records if r.getMessage() == "event rejected"]
    assert [line.fields["reason"] for line in lines] == [
        "rejected: person.card_digest: a digest of 16 bytes (32 expected)",
        "rejected: person.enrolled_at: must be finite"]


async def test_an_enrolment_in_another_gates_name_is_rejected(nursery, controller, pki, caplog):
    """A gate's identity is its certificate's CN: gate-b sending an enrolment whose origin_node is
    gate-a (enrolling people in another gate's name) is recorded as rejected, acked, audited, and
    neither stored nor pushed; the same person from gate-a itself is then enrolled as usual."""
    a = await connect(nursery, controller, pki, "gate-a")
    b = await connect(nursery, controller, pki, "gate-b")
    c = await connect(nursery, controller, pki, "gate-c")
    wire = person_wire("p-1", origin="gate-a")
    ack = await b.event("enrolled", {"person": wire}, key="gate-b:1", seq=1)  # acked: b's outbox moves on
    assert ack.key == "gate-b:1"
    assert (controller.stats.events_rejected, controller.stats.events_applied) == (1, 0)
    assert await trio.to_thread.run_sync(controller.store.get_person, "p-1") is None
    assert await trio.to_thread.run_sync(controller.store.head_cursor) == 0  # nothing for a sync either
    [event] = await trio.to_thread.run_sync(lambda: controller.store.events(node_id="gate-b"))
    assert event.effect == "rejected: person.origin_node gate-a is not the sending gate gate-b"
    [audit] = [e for e in controller.store.audit_entries() if e["kind"] == "event_rejected"]
    assert (audit["node_id"], audit["key"], audit["reason"]) == ("gate-b", "gate-b:1", event.effect)
    [line] = [r for r in caplog.records if r.getMessage() == "event rejected"]
    assert line.fields["node"] == "gate-b" and line.fields["reason"] == event.effect
    await a.event("enrolled", {"person": wire}, key="gate-a:1", seq=1)  # its own gate: enrolled, pushed
    await c.wait_until(lambda: len(c.pushes) == 1)
    await b.wait_until(lambda: len(b.pushes) == 1)
    assert [p.args["person"]["origin_node"] for p in c.pushes + b.pushes] == ["gate-a", "gate-a"]
    assert a.pushes == [] and controller.stats.events_applied == 1


async def test_floods_of_rejected_events_and_refused_pushes_log_a_few_lines_then_summaries(nursery, tmp_path, pki,
                                                                                           caplog, mock_clock):
    """A gate sending bad enrolments, and one refusing every push: each counted, but the log gets
    the first few lines of an interval and then one summary line with the count per reason."""
    from palmnode.link.refusals import BURST, INTERVAL_S

    caplog.set_level(logging.INFO, logger="palmnode.controller")
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki))
    controller = await runner.start()
    a = await connect(nursery, controller, pki, "gate-a")
    b = await connect(nursery, controller, pki, "gate-b")

    def refuse(args):
        raise ValueError("person.upsert refused: its card is enrolled to another person here")
    b.handlers["person.upsert"] = refuse
    for i in range(30):
        await a.event("enrolled", {"person": person_wire(f"p-{i}")})
        await a.event("enrolled", {"person": {**person_wire(f"bad-{i}"), "card_digest": b"x"}})
    await b.wait_until(lambda: len(b.pushes) == 30)
    await _settle()
    assert (controller.stats.events_rejected, controller.stats.pushes_failed) == (30, 30)  # every one

    def logged(message: str) -> list:
        return [r for r in caplog.records if r.getMessage() == message]
    assert len(logged("event rejected")) == BURST and len(logged("replication refused")) == BURST
    assert logged("events rejected") == logged("replications refused") == []
    mock_clock.jump(INTERVAL_S)
    await _settle()
    [events] = logged("events rejected")
    [pushes] = logged("replications refused")
    assert events.levelname == pushes.levelname == "WARNING"
    assert events.fields["count"] == pushes.fields["count"] == 30 - BURST
    assert events.fields["reasons"] == {"rejected: person.card_digest: a digest of 1 bytes (32 expected)": 25}
    assert pushes.fields["reasons"] == {
        "person.upsert: person.upsert refused: its card is enrolled to another person here": 25}
    assert len(logged("event rejected")) == BURST and len(logged("replication refused")) == BURST


async def test_replication_refused_by_a_node_is_counted(nursery, controller, pki):
    a = await connect(nursery, controller, pki, "gate-a")
    b = await connect(nursery, controller, pki, "gate-b")

    def refuse(args):
        raise ValueError("vault full")
    b.handlers["person.upsert"] = refuse
    await a.event("enrolled", {"person": person_wire("p-1")})
    await wait_for(lambda: controller.stats.pushes_failed == 1)


async def test_sync_catches_up_an_offline_node_in_pages(nursery, controller, pki):
    a = await connect(nursery, controller, pki, "gate-a")
    for i in range(5):
        await a.event("enrolled", {"person": person_wire(f"p-{i}")})
    await a.event("deleted", {"person_id": "p-0"})
    b = await connect(nursery, controller, pki, "gate-b")  # was away for all of it
    seen, cursor = [], None
    while True:
        response = await b.request("sync", {"cursor": cursor, "limit": 2})
        assert response.ok, response.error
        seen += [(c["kind"], c.get("person_id") or c["person"]["person_id"]) for c in response.result["changes"]]
        cursor = response.result["cursor"]
        if not response.result["more"]:
            break
    assert seen == [("upsert", f"p-{i}") for i in range(1, 5)] + [("remove", "p-0")]
    again = await b.request("sync", {"cursor": str(cursor)})
    assert again.ok and again.result["changes"] == [] and again.result["cursor"] == cursor
    for cursor in (-3, "²", "-1"):         # "²".isdigit(), yet int() refuses it
        bad = await b.request("sync", {"cursor": cursor})
        assert not bad.ok and "cursor" in bad.error
    assert (await b.request("sync", {"cursor": None})).ok  # the same connection goes on
    unknown = await b.request("gallery.dump", {})
    assert not unknown.ok and unknown.error == "unknown op gallery.dump"


async def test_a_record_damaged_on_disk_is_skipped_by_sync_and_costs_no_gate_its_catch_up(nursery, controller, pki,
                                                                                            caplog):
    """A person whose sealed templates no longer open (damaged on disk) failed every sync that
    reached them: the gate's connection was dropped ("controller error", a traceback logged), and
    the gate asked the same page again on every reconnect, never catching up."""
    a = await connect(nursery, controller, pki, "gate-a")
    for person_id in ("p-1", "damaged", "p-3"):
        await a.event("enrolled", {"person": person_wire(person_id)})
    await trio.to_thread.run_sync(lambda: controller.store._write(
        lambda conn: conn.execute("UPDATE people SET palms = zeroblob(64) WHERE person_id = 'damaged'")))
    b = await connect(nursery, controller, pki, "gate-b")
    seen, cursor = [], None
    while True:
        page = await b.request("sync", {"cursor": cursor, "limit": 1})
        assert page.ok, page.error
        seen += [c["person"]["person_id"] for c in page.result["changes"]]
        cursor = page.result["cursor"]
        if not page.result["more"]:
            break
    assert seen == ["p-1", "p-3"] and cursor == await trio.to_thread.run_sync(controller.store.head_cursor)
    assert controller.stats.dropped == {} and b.closed is None
    lines = [r for r in caplog.records if r.getMessage().startswith("sync skipped damaged records")]
    assert len(lines) == 1 and lines[0].fields["count"] == 1 and lines[0].levelname == "WARNING"
    await assert_still_served(b, controller)


async def test_a_person_whose_record_is_damaged_on_disk_can_still_be_deleted(nursery, controller, pki):
    """Deleting by id looked the person up by opening their sealed templates: for a record damaged
    on disk that raised TamperedData, so that person could never be forgotten."""
    a = await connect(nursery, controller, pki, "gate-a")
    await a.event("enrolled", {"person": person_wire("damaged")})
    await trio.to_thread.run_sync(lambda: controller.store._write(
        lambda conn: conn.execute("UPDATE people SET palms = zeroblob(64) WHERE person_id = 'damaged'")))
    assert (await controller.delete_person(person_id="damaged")).person_id == "damaged"
    assert await trio.to_thread.run_sync(controller.store.people_count) == 0
    assert (await controller.delete_person(person_id="damaged")).person_id is None  # gone: nobody matches now


async def test_a_sync_page_of_large_people_still_fits_one_frame(nursery, tmp_path, pki):
    def large(person_id: str, templates: int) -> dict:  # 3 palms of up to 32 templates, as §8 allows
        return {**person_wire(person_id),
                "palms": [{"palm": palm, "templates": [template_bytes() for _ in range(templates)]}
                          for palm in ("left", "right", "unknown")]}

    frame = 100_000
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki, max_frame=frame))
    controller = await runner.start()
    a = await connect(nursery, controller, pki, "gate-a")
    await a.event("enrolled", {"person": large("p-1", 20)})  # ~46 kB: under half a frame
    await a.event("enrolled", {"person": large("p-2", 32)})  # ~74 kB: the two together exceed a frame
    b = await connect(nursery, controller, pki, "gate-b")
    seen, cursor = [], None
    while True:
        response = await b.request("sync", {"cursor": cursor})
        assert response.ok, response.error
        seen += [c["person"]["person_id"] for c in response.result["changes"]]
        cursor = response.result["cursor"]
        if not response.result["more"]:
            break
    assert seen == ["p-1", "p-2"]
    assert controller.stats.dropped == {}


async def test_charges(nursery, controller, pki):
    a = await connect(nursery, controller, pki, "gate-a")
    card = os.urandom(32)
    await a.event("enrolled", {"person": person_wire("p-1", card=card)})
    args = {"person_id": "p-1", "card_digest": card, "amount_cents": 450, "currency": "eur", "key": "sale-1"}
    ok = await a.request("charge", args)
    assert ok.ok and ok.result["approved"] and ok.result["reference"]
    again = await a.request("charge", args)
    assert again.result == ok.result  # same key: the first decision
    over = await a.request("charge", {**args, "key": "sale-2", "amount_cents": 10_001})
    assert over.result == {"approved": False, "reference": over.result["reference"],
                           "reason": "over the per-transaction limit", "currency": args["currency"].upper()}
    wrong = await a.request("charge", {**args, "key": "sale-3", "card_digest": os.urandom(32)})
    assert not wrong.result["approved"] and wrong.result["reason"] == "card does not match"
    bad = await a.request("charge", {"person_id": "p-1"})
    assert not bad.ok and "amount_cents" in bad.error
    keyless = await a.request("charge", {k: v for k, v in args.items() if k != "key"})
    assert not keyless.ok and keyless.error.startswith("charge needs key")  # else a retry charges twice
    for amount in (2**63, 2**64 - 1):        # msgpack sends up to 2**64 - 1, SQLite binds < 2**63
        huge = await a.request("charge", {**args, "key": "sale-4", "amount_cents": amount})
        assert not huge.ok and "amount_cents" in huge.error
    await a.event("charge_abandoned", {"key": "sale-5", "amount_cents": 2**64 - 1, "currency": "EUR"})
    assert (await a.request("charge", {**args, "key": "sale-6"})).result["approved"]  # still connected


async def test_controller_requests_to_a_node(nursery, controller, pki):
    a = await connect(nursery, controller, pki, "gate-a")
    a.handlers["node.status"] = lambda args: {"gate": "ready", "people": 3}
    assert await controller.request("gate-a", "node.status", {}) == {"gate": "ready", "people": 3}

    def refuse(args):
        raise ValueError("no card reader")
    a.handlers["enrol.begin"] = refuse
    with pytest.raises(RequestFailed, match="gate-a enrol.begin: no card reader"):
        await controller.request("gate-a", "enrol.begin", {"phone": "+4912345", "palms": ["right"]})
    a.handlers["node.metrics"] = lambda args: None  # never answers
    with pytest.raises(RequestTimeout, match="did not answer node.metrics within 0.2 s"):
        await controller.request("gate-a", "node.metrics", {}, timeout=0.2)
    with pytest.raises(NodeUnavailable, match="gate-z is not connected"):
        await controller.request("gate-z", "node.status", {})
    # concurrent requests each get their own answer
    a.handlers["mode.set"] = lambda args: {"mode": args["mode"]}
    results = {}

    async def ask(mode):
        results[mode] = await controller.request("gate-a", "mode.set", {"mode": mode})
    async with trio.open_nursery() as inner:
        for mode in ("entry", "payment", "loyalty"):
            inner.start_soon(ask, mode)
    assert results == {m: {"mode": m} for m in ("entry", "payment", "loyalty")}


async def test_a_request_fails_when_the_node_goes_away(nursery, controller, pki):
    a = await connect(nursery, controller, pki, "gate-a")
    a.handlers["enrol.begin"] = lambda args: None

    async def hang_up():
        await a.wait_until(lambda: a.requests)
        await a.channel.aclose()
    nursery.start_soon(hang_up)
    with pytest.raises(NodeUnavailable, match="disconnected before answering enrol.begin"):
        await controller.request("gate-a", "enrol.begin", {}, timeout=5)
    await controller.wait_node("gate-a", connected=False)


async def test_a_second_gate_with_a_connected_node_id_is_refused(nursery, controller, pki, caplog):
    # two gates with one certificate: the connected one answers, so it keeps its session (they took
    # turns replacing each other for ever, each seeing half the pushes)
    first = await connect(nursery, controller, pki, "gate-a")
    first.handlers["node.status"] = lambda args: {"which": "first"}
    with trio.fail_after(5), pytest.raises(LinkClosed, match="^refused by the controller: node id gate-a is already "
                                           "connected .* and answering; each gate needs its own certificate$"):
        await dial(controller.port, pki, "gate-a")  # a goodbye instead of the controller's hello (§4)
    assert controller.stats.dropped == {"duplicate": 1} and controller.stats.replaced == 0
    [line] = [r for r in caplog.records if r.getMessage() == "connection dropped"]
    assert line.fields["node"] == "gate-a" and line.fields["reason"] == "duplicate"
    assert "refused the second connection from 127.0.0.1:" in line.fields["detail"]
    assert first.closed is None and list(controller.nodes()) == ["gate-a"]
    assert await controller.request("gate-a", "node.status") == {"which": "first"}
    await assert_still_served(first, controller)


async def test_a_flood_of_one_node_id_shares_one_probe_of_the_connected_gate(nursery, tmp_path, pki):
    """Copies of one certificate connecting at once: each newcomer made its own node.status probe
    of the connected gate (up to max_greeting, 128, at once); those arriving while a probe runs now
    wait for its answer, and all are refused on it."""
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki, probe_timeout_s=8.0))
    controller = await runner.start()
    first = await connect(nursery, controller, pki, "gate-a")
    first.handlers["node.status"] = lambda args: None  # answered below, once every newcomer waits
    copies = 12
    refused: list[str] = []

    async def copy() -> None:
        with pytest.raises(LinkClosed) as caught:
            await dial(controller.port, pki, "gate-a")
        refused.append(str(caught.value))
    for _ in range(copies):
        nursery.start_soon(copy)
    # every newcomer is past its TLS handshake: probing the connected gate, or waiting for that probe
    await wait_for(lambda: len(first.requests) + controller.stats.probes_shared == copies, timeout=10)
    for request in list(first.requests):
        await first.channel.send(Response.success(request.id, {"which": "first"}))
    await wait_for(lambda: len(refused) == copies, timeout=10)
    assert len(first.requests) == 1 and controller.stats.probes == 1 and controller.stats.probes_shared == copies - 1
    assert all("node id gate-a is already connected" in reason for reason in refused)
    assert controller.stats.dropped == {"duplicate": copies} and controller.stats.replaced == 0
    await assert_still_served(first, controller)
    # a newcomer after that probe ended gets a probe of its own
    first.handlers["node.status"] = lambda args: {"which": "first"}
    with pytest.raises(LinkClosed, match="already connected"):
        await dial(controller.port, pki, "gate-a")
    assert len(first.requests) == 2 and controller.stats.probes == 2


async def test_a_gate_reconnecting_replaces_its_dead_connection(nursery, tmp_path, pki):
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki, probe_timeout_s=0.5))
    controller = await runner.start()
    dead = await dial(controller.port, pki, "gate-a")  # its hello done, then nothing: a gate that lost power
    await controller.wait_node("gate-a")
    with trio.fail_after(5):
        second = await ChannelNode.connect(nursery, controller.port, pki, "gate-a")
        await wait_for(lambda: controller.stats.replaced == 1)  # no answer in 0.5 s: the dead one goes
        await controller.wait_node("gate-a")  # and the newcomer, its hello done after that, is served
    assert list(controller.nodes()) == ["gate-a"] and controller.stats.dropped == {}
    second.handlers["node.status"] = lambda args: {"which": "second"}
    assert await controller.request("gate-a", "node.status") == {"which": "second"}
    await assert_still_served(second, controller)
    with pytest.raises(LinkClosed, match="replaced by a new connection from this node"):
        while True:
            await dead.receive()  # the probe it never answered, then the goodbye


async def test_a_gate_whose_old_connection_closes_meanwhile_gets_in_at_once(nursery, controller, pki):
    first = await connect(nursery, controller, pki, "gate-a")
    first.handlers["node.status"] = lambda args: None  # busy: would not answer before the probe's timeout

    async def close_first():
        await first.wait_until(lambda: first.requests)  # the probe came: the old connection closes now
        await first.channel.aclose()
    nursery.start_soon(close_first)
    with trio.fail_after(2):  # well inside the 5 s probe timeout
        second = await ChannelNode.connect(nursery, controller.port, pki, "gate-a")
        await wait_for(lambda: controller.stats.sessions == 2 and "gate-a" in controller.nodes())
    assert controller.stats.dropped == {}
    second.handlers["node.status"] = lambda args: {"which": "second"}
    assert await controller.request("gate-a", "node.status") == {"which": "second"}


async def test_events_of_a_stopped_controller_arrive_after_restart_once(nursery, runner, pki):
    a = await connect(nursery, runner.controller, pki, "gate-a")
    await a.event("enrolled", {"person": person_wire("p-1")}, key="gate-a:1", seq=1)
    await a.event("deleted", {"person_id": "p-1"}, key="gate-a:2", seq=2)
    port = runner.controller.port
    await runner.stop()
    await a.wait_until(lambda: a.closed is not None)
    assert "controller stopping" in a.closed
    controller = await runner.start(port=port)
    a2 = await connect(nursery, controller, pki, "gate-a")
    # the node resends what it was not sure of, and what happened while the controller was down
    await a2.event("deleted", {"person_id": "p-1"}, key="gate-a:2", seq=2)
    await a2.event("enrolled", {"person": person_wire("p-2")}, key="gate-a:3", seq=3)
    assert (controller.stats.events_duplicate, controller.stats.events_applied) == (1, 1)
    events = await trio.to_thread.run_sync(controller.store.events)
    assert [e.key for e in events] == ["gate-a:1", "gate-a:2", "gate-a:3"]



async def test_events_older_than_the_retention_are_pruned_at_start(nursery, runner, pki, tmp_path):
    a = await connect(nursery, runner.controller, pki, "gate-a")
    await a.event("unknown", {"latency_ms": 90.0, "reason": "no match"}, key="gate-a:1", seq=1)
    await a.event("unknown", {"latency_ms": 80.0, "reason": "no match"}, key="gate-a:2", seq=2)
    await runner.stop()
    conn = sqlite3.connect(tmp_path / "controller.db")
    with conn:  # the first was applied 31 days ago
        conn.execute("UPDATE events SET applied_at = applied_at - 31 * 86400 WHERE key = 'gate-a:1'")
    conn.close()
    runner.config = attrs.evolve(runner.config, event_retention_days=30, events_kept_per_node=1)
    controller = await runner.start()
    await wait_for(lambda: [e.key for e in controller.store.events()] == ["gate-a:2"])


def _stored_unchecked(store, wire: dict) -> None:
    """``wire`` stored as a controller did before it took enrolments by the gates' rules (§8)."""
    import msgpack

    from palmnode.controller.store import _aad, _log_change
    from palmnode.vault import seal

    palms = msgpack.packb([[p["palm"], list(p["templates"])] for p in wire["palms"]])

    def txn(conn):
        conn.execute("INSERT INTO people VALUES (?, ?, ?, ?, ?, ?, ?)", (
            wire["person_id"], wire["card_digest"], wire["card_last4"], wire["phone_digest"],
            seal(store._key, palms, _aad(wire["person_id"])), wire["enrolled_at"], wire["origin_node"]))
        _log_change(conn, "upsert", wire["person_id"])
    store._write(txn)


async def test_people_an_older_controller_stored_that_every_gate_refuses_are_retired_at_start(
        nursery, tmp_path, pki, caplog):
    """A database written before the record checked enrolments by the gates' rules may hold people
    every gate refuses: each sync pushed them and every gate dropped them with a warning. The
    controller's first start on it removes them (record, change log, audit) with one line."""
    from palmnode.controller.store import Store
    from palmnode.vault import load_keys

    config = controller_config(tmp_path, pki)
    store = Store.open(Path(config.db_path), load_keys(Path(config.key_file)))
    store.apply_event(node_id="gate-a", key="gate-a:1", seq=1, kind="enrolled", at=1.7e9,
                      data={"person": person_wire("good")})
    no_modality = person_wire("no-modality")
    no_modality["palms"][0]["templates"] = [b"PT\x01\x00"]   # a template holding neither modality
    for wire in ({**person_wire("short-card"), "card_digest": os.urandom(16)},
                 {**person_wire("short-phone"), "phone_digest": os.urandom(8)}, no_modality):
        _stored_unchecked(store, wire)
    store.close()

    runner = ControllerRunner(nursery, config)
    controller = await runner.start()
    [line] = [r for r in caplog.records if r.getMessage().startswith("unusable people retired")]
    assert line.levelname == "WARNING" and line.fields["count"] == 3
    assert line.fields["reasons"] == {"person.card_digest: a digest of 16 bytes (32 expected)": 1,
                                      "person.phone_digest: a digest of 8 bytes (32 expected)": 1,
                                      "person.palms.templates: a template with neither modality": 1}
    assert not any(name in line.getMessage() + str(line.fields) for name in ("short-card", "no-modality"))
    assert await trio.to_thread.run_sync(controller.store.people_count) == 1
    retired = [e for e in controller.store.audit_entries() if e["kind"] == "removed"]
    assert sorted(e["person_id"] for e in retired) == ["no-modality", "short-card", "short-phone"]
    assert all(e["node_id"] == "controller" and e["reason"].startswith("retired at start: every gate refuses")
               for e in retired)
    # a gate catching up gets the good person and the others' removal: none it must refuse
    b = await connect(nursery, controller, pki, "gate-b")
    page = await b.request("sync", {"cursor": None})
    assert page.ok and not page.result["more"]
    assert [(c["kind"], c.get("person_id") or c["person"]["person_id"]) for c in page.result["changes"]] == [
        ("upsert", "good"), ("remove", "short-card"), ("remove", "short-phone"), ("remove", "no-modality")]
    await assert_still_served(b, controller)
    await runner.stop()
    caplog.clear()
    controller = await runner.start()  # once: the record is clean now, nothing to say
    assert not [r for r in caplog.records if "retired" in r.getMessage()]
    assert await trio.to_thread.run_sync(controller.store.people_count) == 1


async def test_deleted_cards_no_gate_can_still_enrol_are_released_at_start_and_by_events(
        nursery, tmp_path, pki, caplog):
    """A card deleted store-wide is remembered only until every gate known has delivered an event
    stamped past its window: at start for what the record allows already (here a window made
    shorter), then by each event. One line says how many went (naming no card); the tag leaves the
    file at once."""
    from palmnode.controller.store import Store
    from palmnode.vault import load_keys

    caplog.set_level(logging.INFO, logger="palmnode.controller")
    config = controller_config(tmp_path, pki)
    db = Path(config.db_path)
    first, second = os.urandom(32), os.urandom(32)
    store = Store.open(db, load_keys(Path(config.key_file)))
    store.forget_window_s = 86400.0  # a window of a day then: gate-a's event is not past it
    store.forget_card(first, by="controller", at=1.7e9 - 7200.0)
    store.apply_event(node_id="gate-a", key="gate-a:1", seq=1, kind="unknown", at=1.7e9,
                      data={"latency_ms": 90.0, "reason": "no match"})
    tags = store._card_tag(first), store._card_tag(second)
    assert tags[0] in _files(db)
    store.close()

    def released() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("deleted cards released")]

    runner = ControllerRunner(nursery, config)  # the default window (600 s): gate-a's event is past it
    controller = await runner.start()
    await wait_for(lambda: released())
    [line] = released()
    assert line.fields == {"cards": 1}
    assert tags[0] not in _files(db)
    caplog.clear()
    await trio.to_thread.run_sync(functools.partial(
        controller.store.forget_card, second, by="controller", at=1.7e9 - 7200.0))
    assert tags[1] in _files(db)
    a = await connect(nursery, controller, pki, "gate-a")
    await a.event("unknown", {"latency_ms": 80.0, "reason": "no match"}, key="gate-a:2", seq=2)  # 1.7e9
    [line] = released()
    assert line.fields == {"cards": 1}
    assert tags[1] not in _files(db)
    assert not await trio.to_thread.run_sync(controller.store._read, "SELECT * FROM forgotten_cards")


async def test_a_failed_prune_is_logged_and_the_controller_keeps_serving(nursery, tmp_path, pki, monkeypatch, caplog):
    from palmnode.controller.store import Store

    def disk_full(self, *, before, keep_per_node):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(Store, "prune_events", disk_full)
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki))
    controller = await runner.start()
    a = await connect(nursery, controller, pki, "gate-a")
    await a.event("unknown", {"latency_ms": 90.0, "reason": "no match"}, key="gate-a:1", seq=1)
    await wait_for(lambda: any(r.getMessage() == "events not pruned" for r in caplog.records))
    await a.event("unknown", {"latency_ms": 80.0, "reason": "no match"}, key="gate-a:2", seq=2)
    assert [e.key for e in controller.store.events()] == ["gate-a:1", "gate-a:2"]

def _files(path) -> bytes:
    return b"".join(open(f, "rb").read() for f in (path, f"{path}-wal", f"{path}-shm") if os.path.exists(f))


async def test_a_blocked_wal_truncation_does_not_stall_the_gates(nursery, controller, pki, runner):
    """A backup's read transaction blocks the WAL truncation after a removal: the removal and
    every other gate's traffic go on at once (the checkpoint waited out its 10 s busy timeout
    holding the store), and the truncation happens once the reader lets go."""
    a = await connect(nursery, controller, pki, "gate-a")
    b = await connect(nursery, controller, pki, "gate-b")
    card = os.urandom(32)
    await a.event("enrolled", {"person": person_wire("victim", card=card)})
    reader = sqlite3.connect(runner.config.db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM people").fetchone()
    with trio.fail_after(3):
        await b.event("deleted", {"person_id": "victim"})
        await assert_still_served(a, controller)
    await a.wait_until(lambda: any(p.args.get("person_id") == "victim" for p in a.pushes))
    assert controller.store.scrub_pending and card in _files(runner.config.db_path)
    reader.execute("COMMIT")
    await wait_for(lambda: not controller.store.scrub_pending, timeout=15)
    assert card not in _files(runner.config.db_path)
    reader.close()


async def _settle() -> None:
    """Run every task that is due, and wait for the worker threads they started (the mock clock
    stands still meanwhile)."""
    limiter = trio.to_thread.current_default_thread_limiter()
    give_up = time.monotonic() + 10
    await trio.testing.wait_all_tasks_blocked()
    while limiter.borrowed_tokens:
        assert time.monotonic() < give_up, "a worker thread did not finish"
        await trio.sleep(0)
        await trio.testing.wait_all_tasks_blocked()


async def test_a_blocked_wal_truncation_is_retried_until_done_and_logged(nursery, tmp_path, pki, caplog, mock_clock):
    from palmnode.walscrub import RETRY as SCRUB_RETRY, WARN_EVERY_S as SCRUB_WARN_EVERY_S

    async def advance(seconds: float) -> None:
        for _ in range(int(seconds)):  # a second at a time, each due task run before the next
            mock_clock.jump(1.0)
            await _settle()

    def lines(message: str) -> list:
        return [r for r in caplog.records if r.getMessage() == "controller WAL " + message]
    blocked = "not truncated: a removed person's old pages stay in the -wal file until the other connection lets go; retrying"
    caplog.set_level(logging.INFO, logger="palmnode.controller")
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki))
    controller = await runner.start()
    db = runner.config.db_path
    card = os.urandom(32)
    await trio.to_thread.run_sync(lambda: controller.store.apply_event(
        node_id="gate-a", key="gate-a:1", seq=1, kind="enrolled", at=1.7e9,
        data={"person": person_wire("victim", card=card)}))
    reader = sqlite3.connect(db, isolation_level=None)  # a backup's read transaction
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM people").fetchone()
    assert controller.status()["wal"] == {"truncated": True} and controller.status()["wal_retries_total"] == 0
    assert (await controller.delete_person(person_id="victim")).person_id == "victim"
    await _settle()
    [warning] = lines(blocked)
    assert warning.levelname == "WARNING" and "read transaction" in warning.fields["reason"]
    wal = controller.status()["wal"]  # where the controller reports its state: since when, retries, why
    assert (wal["truncated"], wal["attempts"], wal["reason"]) == (False, 0, controller.store.scrub_blocked)
    assert abs(wal["blocked_since"] - time.time()) < 60 and "read transaction" in wal["reason"]

    await advance(2 * SCRUB_WARN_EVERY_S + 2 * SCRUB_RETRY.maximum)  # ten minutes of it
    assert controller.store.scrub_pending and card in _files(db)
    reminders = lines("still " + blocked)
    assert len(reminders) == 2  # one every five minutes, not a line per try
    assert reminders[0].fields["attempts"] >= SCRUB_WARN_EVERY_S / SCRUB_RETRY.maximum  # it kept trying
    status = controller.status()
    assert status["wal"]["blocked_s"] >= 2 * SCRUB_WARN_EVERY_S
    assert status["wal"]["blocked_since"] == wal["blocked_since"]
    assert status["wal"]["attempts"] == status["wal_retries_total"] >= reminders[-1].fields["attempts"]

    reader.execute("COMMIT")
    await advance(SCRUB_RETRY.maximum + 1)  # the backoff is bounded: the next try comes soon and succeeds
    assert not controller.store.scrub_pending and card not in _files(db)
    [done] = lines("truncated")
    assert done.fields["blocked_s"] >= 2 * SCRUB_WARN_EVERY_S
    assert controller.status()["wal"] == {"truncated": True}
    assert controller.status()["wal_retries_total"] == done.fields["attempts"]
    reader.close()


# -- bad peers: each loses its own connection, counted; the good node keeps being served ----------

async def assert_still_served(good: ChannelNode, controller: Controller) -> None:
    good.acks.clear()
    ack = await good.event("unknown", {"latency_ms": 90.0, "reason": "no match"})
    assert ack.key.startswith(good.name)
    assert good.closed is None and good.name in controller.nodes()


async def test_peer_from_another_ca_is_refused(nursery, controller, pki, tmp_path):
    good = await connect(nursery, controller, pki, "gate-a")
    other = make_dev_pki(tmp_path / "other", nodes=["gate-b"])
    with pytest.raises(LinkClosed):
        channel = await dial(controller.port, other, "gate-b", trust=pki)  # it trusts us; we do not trust it
        await channel.receive()  # TLS 1.3: the client learns of its refusal on its first read
    await wait_for(lambda: controller.stats.dropped.get("tls") == 1)
    assert "gate-b" not in controller.nodes()
    await assert_still_served(good, controller)


async def test_the_controllers_certificate_is_refused_as_a_gates(nursery, controller, pki):
    # the controller's certificate carries serverAuth only: its key cannot pose as a gate
    # (a client certificate needs clientAuth), so nothing can connect as a node named "controller"
    good = await connect(nursery, controller, pki, "gate-a")
    with trio.fail_after(5), pytest.raises(LinkClosed):
        channel = await dial(controller.port, pki, "controller")
        await channel.receive()  # TLS 1.3: the client learns of its refusal on its first read
    await wait_for(lambda: controller.stats.dropped.get("tls") == 1)
    assert "unsuitable certificate purpose" in controller.stats.last_drop
    assert set(controller.nodes()) == {"gate-a"}
    await assert_still_served(good, controller)


async def test_hello_with_another_node_id_is_refused(nursery, controller, pki):
    good = await connect(nursery, controller, pki, "gate-a")
    with pytest.raises(LinkClosed, match="hello node_id gate-c does not match certificate CN gate-b"):
        channel = await dial(controller.port, pki, "gate-b", hello_name="gate-c")
        await channel.receive()
    await wait_for(lambda: controller.stats.dropped.get("protocol") == 1)
    assert set(controller.nodes()) == {"gate-a"}
    await assert_still_served(good, controller)


async def test_oversize_frame_is_refused(nursery, controller, pki):
    good = await connect(nursery, controller, pki, "gate-a")
    bad = await ChannelNode.connect(nursery, controller.port, pki, "gate-b")
    await bad.channel.stream.send_all(HEADER.pack(controller.config.max_frame + 1))
    await bad.wait_until(lambda: bad.closed is not None)
    assert "exceeds" in bad.closed
    await wait_for(lambda: controller.stats.dropped.get("oversize") == 1)
    await controller.wait_node("gate-b", connected=False)
    await assert_still_served(good, controller)


async def test_malformed_msgpack_is_refused(nursery, controller, pki):
    good = await connect(nursery, controller, pki, "gate-a")
    bad = await ChannelNode.connect(nursery, controller.port, pki, "gate-b")
    body = b"\xc1\xc1\xc1"  # 0xc1 is never used in msgpack
    await bad.channel.stream.send_all(HEADER.pack(len(body)) + body)
    await bad.wait_until(lambda: bad.closed is not None)
    await wait_for(lambda: controller.stats.dropped.get("msgpack") == 1)
    await assert_still_served(good, controller)


async def test_event_for_another_node_is_refused(nursery, controller, pki):
    good = await connect(nursery, controller, pki, "gate-a")
    bad = await ChannelNode.connect(nursery, controller.port, pki, "gate-b")
    await bad.channel.send(Event(seq=1, key="gate-a:99", kind="deleted", node_id="gate-a", at=1.0,
                                 data={"person_id": "p-1"}))
    await bad.wait_until(lambda: bad.closed is not None)
    assert "event of node gate-a on the connection of gate-b" in bad.closed
    assert await trio.to_thread.run_sync(controller.store.events) == []
    await assert_still_served(good, controller)


async def test_silent_peer_times_out(nursery, tmp_path, pki):
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki, hello_timeout_s=0.3))
    controller = await runner.start()
    good = await connect(nursery, controller, pki, "gate-a")
    silent = await dial(controller.port, pki, "gate-b", hello=False)
    await silent.handshake()
    with pytest.raises(LinkClosed):
        while True:
            await silent.receive()  # the controller's hello, then its goodbye
    await wait_for(lambda: controller.stats.dropped.get("timeout") == 1)
    await assert_still_served(good, controller)


async def test_a_flood_of_idle_connections_is_capped_and_the_gates_still_connect(nursery, tmp_path, pki):
    """Connections that never say hello held ~50 KB each until their hello timeout, without limit.
    Beyond max_greeting they are closed at accept; a gate connects once the flood has gone."""
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki, hello_timeout_s=5.0, max_greeting=3))
    controller = await runner.start()
    idle = [await trio.open_tcp_stream("127.0.0.1", controller.port) for _ in range(3)]
    await wait_for(lambda: controller.stats.connections == 3)
    refused = await trio.open_tcp_stream("127.0.0.1", controller.port)
    with trio.fail_after(2):  # at once, not after the 5 s hello timeout
        assert await refused.receive_some(1024) == b""
    assert controller.stats.dropped == {"busy": 1}
    for stream in idle:
        await stream.aclose()
    await wait_for(lambda: controller._greeting == 0)
    await assert_still_served(await connect(nursery, controller, pki, "gate-a"), controller)


async def test_bad_setup_is_one_line(tmp_path, pki):
    config = controller_config(tmp_path, pki)
    import attrs

    with pytest.raises(ControllerError, match="controller certificate .* not found"):
        await Controller(attrs.evolve(config, cert_file=str(tmp_path / "nope.pem"))).run()
    with pytest.raises(ControllerError, match="controller key file .* is missing"):
        await Controller(attrs.evolve(config, key_file=str(tmp_path / "nope.hex"))).run()
    os.chmod(config.key_file, 0o644)
    with pytest.raises(ControllerError, match="chmod 600"):
        await Controller(config).run()


async def test_a_second_controller_on_the_same_database_is_refused(nursery, runner, pki):
    a = await connect(nursery, runner.controller, pki, "gate-a")
    async with trio.open_nursery() as other:
        with pytest.raises(ControllerError, match="controller database .* is in use by another controller"):
            await other.start(Controller(runner.config).run)  # another port, the same file
        other.cancel_scope.cancel()
    await assert_still_served(a, runner.controller)
    await runner.stop()
    second = await runner.start()  # the first one stopped: the database is free again
    await assert_still_served(await connect(nursery, second, pki, "gate-b"), second)


def test_config_refuses_impossible_values():
    from palmnode.controller.server import ControllerConfig

    for field, value, match in [("port", 70000, "port"), ("hello_timeout_s", 0, "hello_timeout_s"), ("max_greeting", 0, "max_greeting"),
                                ("charge_limit_cents", -1, "charge_limit_cents"), ("sync_limit", 5000, "sync_limit"),
                                ("send_queue", 0, "send_queue"),
                                ("send_queue_bytes", 1000, "send_queue_bytes must be at least max_frame"),
                                ("event_retention_days", 0, "event_retention_days")]:
        with pytest.raises(ControllerError, match=match):
            ControllerConfig(**{field: value})


def test_the_probe_timeout_stays_below_the_gates_hello_timeout():
    """The controller holds its hello back while it probes a connected node id (§4): a probe
    timeout near the gates' 10 s hello timeout would make every reconnecting gate give up its
    hello first, and never get in while its dead connection is being probed."""
    from palmnode.controller.server import MAX_PROBE_TIMEOUT_S, ControllerConfig
    from palmnode.link.client import HELLO_TIMEOUT_S, LinkConfig

    assert attrs.fields(LinkConfig).hello_timeout_s.default == HELLO_TIMEOUT_S == 10
    assert MAX_PROBE_TIMEOUT_S <= HELLO_TIMEOUT_S - 2  # room for the TLS handshake's end and the network
    assert ControllerConfig(probe_timeout_s=MAX_PROBE_TIMEOUT_S).probe_timeout_s == MAX_PROBE_TIMEOUT_S
    for value in (MAX_PROBE_TIMEOUT_S + 0.5, HELLO_TIMEOUT_S, 30.0):
        with pytest.raises(ControllerError) as caught:
            ControllerConfig(probe_timeout_s=value)
        assert str(caught.value) == (
            f"controller.probe_timeout_s must be at most {MAX_PROBE_TIMEOUT_S:g} s, below the gates' "
            f"{HELLO_TIMEOUT_S:g} s hello timeout (the controller's hello waits for the probe), got {value!r}")


async def test_a_node_too_slow_for_its_pushes_is_dropped_and_others_stay(nursery, tmp_path, pki):
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki, send_queue=1))
    controller = await runner.start()
    good = await connect(nursery, controller, pki, "gate-a")
    slow = await connect(nursery, controller, pki, "gate-b")
    from palmnode.controller.store import Remove

    # three pushes without a checkpoint between them: more than one queued frame plus the one in hand
    for cursor in range(3):
        controller._replicate(Remove(cursor, f"p-{cursor}"), origin="gate-a")
    await slow.wait_until(lambda: slow.closed is not None)
    assert "queued unsent" in slow.closed
    assert controller.stats.dropped == {"slow": 1}
    await assert_still_served(good, controller)


async def test_a_node_too_slow_for_large_pushes_is_dropped_by_bytes(nursery, tmp_path, pki):
    # a few large people overflow the bytes long before the frame count (256 frames of up to a
    # frame each would pin 256 MiB for one slow gate)
    from palmnode.controller.store import PersonRecord, Upsert

    limit = 128 * 1024
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki, max_frame=limit, send_queue_bytes=limit))
    controller = await runner.start()
    good = await connect(nursery, controller, pki, "gate-a")
    slow = await connect(nursery, controller, pki, "gate-b")
    session = controller._sessions["gate-b"]
    queue = session.queue
    large = person_wire("p-large")
    large["palms"][0]["templates"] = [template_bytes() for _ in range(32)]  # ~25 KB on the wire
    person = PersonRecord.from_wire(large)
    pushed = 0
    while session.ended is None and pushed < 20:  # no checkpoint between them: nothing is sent
        controller._replicate(Upsert(pushed, person), origin="gate-a")
        pushed += 1
        assert queue.bytes <= limit
    assert 5 <= pushed < 10 < controller.config.send_queue  # dropped by bytes, far below the frame limit
    await slow.wait_until(lambda: slow.closed is not None)
    assert "bytes queued unsent" in slow.closed and f"{limit} bytes" in slow.closed
    assert controller.stats.dropped == {"slow": 1}
    await assert_still_served(good, controller)


async def test_a_push_too_large_for_a_frame_is_logged_and_costs_no_connection(nursery, tmp_path, pki, caplog):
    from palmnode.controller.store import PersonRecord, Upsert

    runner = ControllerRunner(nursery, controller_config(tmp_path, pki, max_frame=64 * 1024,
                                                         send_queue_bytes=64 * 1024))
    controller = await runner.start()
    a = await connect(nursery, controller, pki, "gate-a")
    b = await connect(nursery, controller, pki, "gate-b")
    huge = person_wire("p-huge")
    huge["palms"] = [{"palm": palm, "templates": [template_bytes() for _ in range(32)]}
                     for palm in ("left", "right", "unknown")]  # ~74 kB, the largest person: over the frame cap
    controller._replicate(Upsert(1, PersonRecord.from_wire(huge)), origin=None)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == ["replication not pushed"]
    await assert_still_served(a, controller)
    await assert_still_served(b, controller)
    assert controller.stats.dropped == {} and controller.stats.pushes == 0


async def test_the_send_queue_makes_answers_wait_for_room_in_order():
    from palmnode.controller.server import _SendQueue

    queue = _SendQueue(max_frames=10, max_bytes=100)
    queue.put_nowait(b"a" * 60)
    with pytest.raises(trio.WouldBlock):
        queue.put_nowait(b"b" * 50)  # a push that does not fit is refused (the caller drops the node)
    done = []

    async def answer(frame):
        await queue.put(frame)  # an ack or a response waits for room instead
        done.append(frame[:1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer, b"b" * 50)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(answer, b"c" * 10)
        await trio.testing.wait_all_tasks_blocked()
        assert done == [] and queue.bytes == 60
        with pytest.raises(trio.WouldBlock):
            queue.put_nowait(b"d")  # fits, but others wait before it
        assert await queue.get() == b"a" * 60
        await trio.testing.wait_all_tasks_blocked()
    assert sorted(done) == [b"b", b"c"] and queue.bytes == 60 and len(queue) == 2  # both let in, in order:
    assert await queue.get() == b"b" * 50 and await queue.get() == b"c" * 10
    queue.put_nowait(b"x" * 500)  # alone in an empty queue, any frame fits
    queue.close()
    with pytest.raises(trio.ClosedResourceError):
        await queue.put(b"y")
    with pytest.raises(trio.EndOfChannel):
        await queue.get()


async def test_a_locked_database_costs_a_node_the_step_not_its_connection(nursery, controller, pki, runner):
    a = await connect(nursery, controller, pki, "gate-a")
    card = os.urandom(32)
    await a.event("enrolled", {"person": person_wire("p-1", card=card)})
    a.handlers["enrol.begin"] = lambda args: None  # an enrolment the operator started, in progress
    enrolment = {}

    async def operator():
        enrolment["result"] = await controller.request("gate-a", "enrol.begin", {}, timeout=10)
    nursery.start_soon(operator)
    await a.wait_until(lambda: a.requests)
    controller.store._conn.execute("PRAGMA busy_timeout = 100")  # give up on the lock at once, not in 10 s
    other = sqlite3.connect(runner.config.db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
    args = {"person_id": "p-1", "card_digest": card, "amount_cents": 450, "currency": "EUR", "key": "k1"}
    refused = await a.request("charge", args)
    assert not refused.ok and refused.error == "controller database unavailable: database is locked"
    await a.channel.send(Event(seq=7, key="gate-a:7", kind="unknown", node_id="gate-a", at=1.7e9,
                               data={"latency_ms": 1.0, "reason": "no match"}))
    await wait_for(lambda: controller._sessions["gate-a"].events_held)
    assert not any(ack.key == "gate-a:7" for ack in a.acks)  # not recorded, not acked: still in its outbox
    assert a.closed is None and "gate-a" in controller.nodes() and controller.stats.dropped == {}
    await a.channel.send(Response.success(a.requests[0].id, {"person_id": "p-2"}))
    await wait_for(lambda: enrolment)
    assert enrolment["result"] == {"person_id": "p-2"}
    other.execute("COMMIT")
    assert (await a.request("charge", args)).result["approved"]  # nothing was decided while locked
