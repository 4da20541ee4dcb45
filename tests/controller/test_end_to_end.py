"""The controller with real nodes: each a real LinkClient over mutual TLS with a real Vault as its outbox."""
from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
import types
from pathlib import Path

import attrs
import pytest
import trio

from palmnode.actors import EventBus
from palmnode.biometrics.gallery import Gallery
from palmnode.controller.server import Deletion
from palmnode.gate.people import People
from palmnode.link.certs import make_dev_pki
from palmnode.link.client import LinkClient
from palmnode.link.wire import person_to_wire
from palmnode.ops import CHARGE_STATE, SYNC_STATE, NodeOps
from tests.conftest import wait_for
from tests.controller.harness import (
    ControllerRunner,
    VaultNode,
    controller_config,
    dial,
)

NODES = ["gate-a", "gate-b"]


@pytest.fixture
def pki(tmp_path):
    return make_dev_pki(tmp_path / "pki", nodes=NODES)


@pytest.fixture
async def runner(nursery, tmp_path, pki):
    runner = ControllerRunner(nursery, controller_config(tmp_path, pki))
    await runner.start()
    return runner


async def start_node(nursery, tmp_path, pki, runner, name) -> VaultNode:
    node = await VaultNode(tmp_path, pki, name, runner.controller.port).start(nursery)
    await runner.controller.wait_node(name)
    await wait_for(lambda: node.synced >= 1)
    return node


def same(p, q) -> bool:
    return p is not None and person_to_wire(p) == person_to_wire(q)  # templates compare by value here


def controller_db(runner) -> bytes:
    path = Path(runner.config.db_path)
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


async def test_enrolled_at_one_gate_replicates_and_deletion_leaves_nothing(nursery, tmp_path, pki, runner):
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    b = await start_node(nursery, tmp_path, pki, runner, "gate-b")
    person = a.person("p-1")
    await a.enrol(person)
    await wait_for(lambda: b.vault.get("p-1") is not None)
    assert same(b.vault.get("p-1"), person)  # same templates, card and phone digests
    await wait_for(lambda: not a.vault.pending_events())
    # deleted at B: gone from A and from the controller within a second
    with trio.fail_after(1.0):
        await b.delete("p-1")
        await wait_for(lambda: a.vault.get("p-1") is None, timeout=1.0)
    await wait_for(lambda: not b.vault.pending_events())
    assert runner.controller.store.get_person("p-1") is None
    secrets = [person.card.digest, person.phone_digest, person.palms[0].templates[0].to_bytes()[4:68]]
    for where, raw in (("gate-a", a.file_bytes()), ("gate-b", b.file_bytes()), ("controller", controller_db(runner))):
        for secret in secrets:
            assert secret not in raw, where


async def test_events_from_while_the_controller_was_stopped_arrive_once(nursery, tmp_path, pki, runner):
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    port = runner.controller.port
    people = [a.person(f"p-{i}") for i in range(12)]
    for person in people[:6]:
        await a.enrol(person)
    # stop the controller while events are in flight: some applied, their acks perhaps lost
    await wait_for(lambda: runner.controller.stats.events_applied >= 1)
    await runner.stop()
    await a.client.wait_connected(False)
    for person in people[6:]:  # while it is down
        await a.enrol(person)
    await a.delete("p-0")
    controller = await runner.start(port=port)
    await controller.wait_node("gate-a")
    await wait_for(lambda: not a.vault.pending_events())
    events = await trio.to_thread.run_sync(controller.store.events)
    keys = collections.Counter(e.key for e in events)
    assert all(n == 1 for n in keys.values())
    kinds = collections.Counter(e.kind for e in events)
    assert kinds == {"enrolled": 12, "deleted": 1}
    assert await trio.to_thread.run_sync(controller.store.people_count) == 11


async def test_a_gate_that_was_away_catches_up_on_connect(nursery, tmp_path, pki, runner):
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    first, second = a.person("p-1"), a.person("p-2")
    await a.enrol(first)
    b = await start_node(nursery, tmp_path, pki, runner, "gate-b")
    assert same(b.vault.get("p-1"), first)  # from its first sync
    await b.stop()
    await runner.controller.wait_node("gate-b", connected=False)
    await a.enrol(second)
    await a.delete("p-1")
    await wait_for(lambda: not a.vault.pending_events())
    await b.start(nursery)
    await wait_for(lambda: b.synced == 2)
    assert b.vault.get("p-1") is None and same(b.vault.get("p-2"), second)


async def test_bad_peer_is_refused_while_the_gates_keep_working(nursery, tmp_path, pki, runner):
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    b = await start_node(nursery, tmp_path, pki, runner, "gate-b")
    other = make_dev_pki(tmp_path / "other", nodes=["gate-b"])
    with pytest.raises(Exception):  # noqa: B017 - refused in the handshake or on the first read
        channel = await dial(runner.controller.port, other, "gate-b", trust=pki)
        await channel.receive()
    await wait_for(lambda: runner.controller.stats.dropped.get("tls") == 1)
    await a.enrol(a.person("p-1"))
    await wait_for(lambda: b.vault.get("p-1") is not None)
    assert set(runner.controller.nodes()) == {"gate-a", "gate-b"}


async def test_a_second_gate_with_the_same_certificate_is_refused_and_the_first_keeps_working(
        nursery, tmp_path, pki, runner, caplog):
    """The copy is refused before the controller's hello: it never looks connected (no sync, no
    event sent, no 'link connected'), logs the reason once and backs off."""
    caplog.set_level(logging.INFO, logger="palmnode.link")
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    b = await start_node(nursery, tmp_path, pki, runner, "gate-b")
    (tmp_path / "copy").mkdir()
    copy = VaultNode(tmp_path / "copy", pki, "gate-a", runner.controller.port)  # a copied certificate
    await copy.enrol_offline(copy.person("p-2"))  # an event waiting in its outbox
    await copy.start(nursery)
    await wait_for(lambda: runner.controller.stats.dropped.get("duplicate", 0) >= 3)  # it keeps trying, refused
    assert copy.client.stats.last_error.startswith("refused by the controller: node id gate-a is already "
                                                   "connected (from 127.0.0.1:")
    assert copy.client.stats.last_error.endswith("and answering; each gate needs its own certificate")
    assert a.client.connected and a.client.stats.disconnects == 0 and runner.controller.stats.replaced == 0
    await a.enrol(a.person("p-1"))
    await wait_for(lambda: b.vault.get("p-1") is not None)  # the first gate-a is served throughout
    # the controller counts a refusal before its goodbye reaches the copy: wait for the copy's count
    await wait_for(lambda: runner.controller.stats.dropped["duplicate"] >= 6 and copy.client.stats.failed_attempts >= 6)
    assert runner.controller.store.get_person("p-2") is None and copy.vault.pending_events()
    stats = copy.client.stats
    assert (stats.connects, stats.disconnects, stats.events_sent, stats.requests_sent, copy.synced) == (0, 0, 0, 0, 0)
    assert stats.failed_attempts >= 6  # each attempt: its hello out, the goodbye in, nothing else
    assert stats.channel.frames_in <= stats.failed_attempts + 1 and stats.channel.frames_out <= stats.failed_attempts + 1
    assert len([r for r in caplog.records if r.getMessage() == "link connected"
                and r.fields["node_id"] == "gate-a"]) == 1  # the first gate-a, never the copy
    [down] = [r for r in caplog.records if r.getMessage() == "link down"]  # one line, not one per attempt
    assert down.fields["reason"] == stats.last_error and "\n" not in down.fields["reason"]
    await copy.stop()


async def test_deleted_at_the_controller_is_gone_from_every_gate(nursery, tmp_path, pki, runner):
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    b = await start_node(nursery, tmp_path, pki, runner, "gate-b")
    person = a.person("p-1")
    await a.enrol(person)
    await wait_for(lambda: b.vault.get("p-1") is not None)
    assert await runner.controller.delete_person(card_digest=b"\x00" * 32) == Deletion(
        None, asked=("gate-a", "gate-b"), unreached={  # these test gates serve replication only
            g: f"node {g} person.delete: unknown op person.delete" for g in ("gate-a", "gate-b")})
    for bad, words in ((dict(card_digest=person.card.digest[:16]), "card_digest must be 32 bytes .* got 16 bytes"),
                       (dict(card_digest=person.card.digest.hex()), "card_digest must be 32 bytes .* got str"),
                       (dict(person_id=""), "person_id must be a string of 1 to 128"),
                       (dict(person_id="p" * 129), "person_id must be a string of 1 to 128")):
        with pytest.raises(ValueError, match=words):  # as a gate refuses them: one line, nothing removed
            await runner.controller.delete_person(**bad)
    assert (await runner.controller.delete_person(card_digest=person.card.digest)).person_id == "p-1"
    await wait_for(lambda: a.vault.get("p-1") is None and b.vault.get("p-1") is None, timeout=1.0)
    assert await runner.controller.delete_person(person_id="p-1") == Deletion(None)
    for raw in (a.file_bytes(), b.file_bytes(), controller_db(runner)):
        assert person.card.digest not in raw


async def test_a_charge_the_gate_gave_up_on_is_never_made(nursery, tmp_path, pki, runner):
    """The controller decides after the gate stopped waiting (its database held by another program
    past the gate's charge timeout): the customer heard "declined", so the approval is voided."""
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    person = a.person("p-1")
    await a.enrol(person)
    await wait_for(lambda: not a.vault.pending_events())
    ops = NodeOps(types.SimpleNamespace(link=a.client, vault=a.vault))
    other = sqlite3.connect(runner.config.db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # e.g. a backup holding the write lock
    released = threading.Timer(1.0, other.execute, ("COMMIT",))
    released.start()
    with trio.move_on_after(0.5):  # the identify flow's charge timeout
        await ops.charge("p-1", person.card.digest, 450, "EUR")
        raise AssertionError("the charge was answered while the database was locked")
    await wait_for(lambda: not a.vault.pending_events())  # the abandonment is delivered
    again = await ops.charge("p-1", person.card.digest, 450, "EUR")  # the customer presents again
    assert again.approved
    released.join()
    ledger = sqlite3.connect(runner.config.db_path).execute("SELECT approved, reason FROM charges").fetchall()
    assert sorted(ledger) == [(0, "abandoned by the gate: no answer in time"), (1, None)]  # charged once


async def test_a_charge_left_in_flight_by_a_dead_node_is_abandoned_when_it_starts_again(nursery, tmp_path, pki,
                                                                                       runner):
    """The gate's process dies while its charge waits for the answer (nothing is left to abandon
    it), and the controller approves it after all: the node noted the charge in its vault before
    asking, so started again it abandons it, and the approval is voided."""
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    person = a.person("p-1")
    await a.enrol(person)
    await wait_for(lambda: not a.vault.pending_events())
    other = sqlite3.connect(runner.config.db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the charge waits at the controller
    async with trio.open_nursery() as dying:
        dying.start_soon(NodeOps(types.SimpleNamespace(link=a.client, vault=a.vault)).charge,
                         "p-1", person.card.digest, 450, "EUR")
        await wait_for(lambda: a.vault.get_state(CHARGE_STATE))
        key = json.loads(a.vault.get_state(CHARGE_STATE))["key"]
        # the process dies here, before any answer; started again, the node reads its vault
        restarted = NodeOps(types.SimpleNamespace(link=a.client, vault=a.vault))
        await restarted.abandon_interrupted_charge(timeout_s=5.0, step_s=0.1)
        assert a.vault.get_state(CHARGE_STATE) == ""
        other.execute("COMMIT")  # the controller decides the charge (the dead node never hears it)
    await wait_for(lambda: not a.vault.pending_events())  # the abandonment is delivered
    ledger = sqlite3.connect(runner.config.db_path).execute(
        "SELECT approved, reason FROM charges WHERE request_key = ?", (f"gate-a/{key}",)).fetchall()
    assert ledger == [(0, "abandoned by the gate: no answer in time")]


async def test_a_deletion_during_a_gates_catch_up_is_not_undone_by_it(nursery, tmp_path, pki, runner):
    """The desk deletes a person after the controller read the sync page that enrols them, before
    it answered: the push arrives first and the page, applied after it, must not bring them back."""
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    await a.enrol(a.person("p-1"))
    await wait_for(lambda: not a.vault.pending_events())
    controller = runner.controller
    read_sync = controller._sync

    async def delete_while_answering(args):
        answer = await read_sync(args)
        if any(change["kind"] == "upsert" for change in answer["changes"]):
            await controller.delete_person(person_id="p-1")  # committed and pushed before this answer
        return answer
    controller._sync = delete_while_answering
    b = VaultNode(tmp_path, pki, "gate-b", controller.port)
    people = People(b.vault, Gallery(), "gate-b", EventBus())
    ops = NodeOps(types.SimpleNamespace(link=None, vault=b.vault, people=people))
    ops.node.link = LinkClient(b.config, b.vault, ops.handle, on_connected=ops.sync,
                               capabilities=("events", "person.upsert", "person.remove"))
    nursery.start_soon(ops.node.link.run)
    await wait_for(lambda: b.vault.get_state(SYNC_STATE) is not None)
    await wait_for(lambda: controller.stats.pushes == 2 and not controller._sessions["gate-b"].pushes)  # answered
    assert b.vault.get("p-1") is None and len(people.gallery) == 0


async def test_a_catch_up_that_fails_is_tried_again_while_connected(nursery, tmp_path, pki, runner):
    """A gate that comes back while another program holds the controller's database gets no answer
    to its sync in time; it asks again while the connection stays up, and a deletion made while it
    was away reaches it."""
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    b = await start_node(nursery, tmp_path, pki, runner, "gate-b")
    await a.enrol(a.person("p-1"))
    await wait_for(lambda: b.vault.get("p-1") is not None)
    await b.stop()
    await runner.controller.wait_node("gate-b", connected=False)
    await a.delete("p-1")
    await wait_for(lambda: not a.vault.pending_events())
    runner.controller.store._conn.execute("PRAGMA busy_timeout = 1000")  # 1 s, not 10, for the test
    other = sqlite3.connect(runner.config.db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another program holds the write lock: recording the hello waits
    b.config = attrs.evolve(b.config, request_timeout_s=0.5)
    await b.start(nursery)
    await runner.controller.wait_node("gate-b")
    await wait_for(lambda: b.client.stats.requests_sent >= 1 and b.client._waiting == {})  # its sync, given up
    other.execute("COMMIT")
    await wait_for(lambda: b.synced == 2)
    assert b.vault.get("p-1") is None


@pytest.mark.parametrize("asked_by", ["controller", "console"])
async def test_a_deletion_at_a_gate_during_its_catch_up_is_not_undone_by_it(nursery, tmp_path, pki, runner, asked_by):
    """The operator deletes a person at a gate (the controller's person.delete, or the REPL's
    delete) while the controller's answer to the gate's sync, read before and enrolling them, is on
    its way: the gate keeps them deleted."""
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    await a.enrol(a.person("p-1"))
    await wait_for(lambda: not a.vault.pending_events())
    controller = runner.controller
    b = VaultNode(tmp_path, pki, "gate-b", controller.port)
    people = People(b.vault, Gallery(), "gate-b", EventBus())
    await people.apply_upsert(a.person("p-1"))  # known at gate-b from before; its cursor is older
    ops = NodeOps(types.SimpleNamespace(link=None, vault=b.vault, people=people))
    link = ops.node.link = LinkClient(b.config, b.vault, ops.handle, on_connected=ops.sync,
                                      capabilities=("events", "person.delete"))
    read_sync, deleted = controller._sync, []

    async def delete_at_the_gate():
        if asked_by == "controller":
            deleted.append(await controller.request("gate-b", "person.delete", {"person_id": "p-1"}))
        else:
            deleted.append({"deleted": True, "person_id": await people.delete(person_id="p-1"),
                            "enrolment_cancelled": False})

    async def delete_while_answering(args):
        answer = await read_sync(args)
        if args.get("cursor") is None:
            nursery.start_soon(delete_at_the_gate)  # done, or waiting for the page, before this answer
            await wait_for(lambda: deleted or people.replication.statistics().tasks_waiting)
        return answer
    controller._sync = delete_while_answering
    nursery.start_soon(link.run)
    await wait_for(lambda: deleted and b.vault.get_state(SYNC_STATE) is not None)
    assert deleted == [{"deleted": True, "person_id": "p-1", "enrolment_cancelled": False}]
    assert b.vault.get("p-1") is None and len(people.gallery) == 0


async def test_a_card_deleted_at_the_controller_cancels_its_enrolment_in_progress_at_a_gate(nursery, gate, tmp_path):
    """The desk deletes a card store-wide while its holder is enrolling at a gate (card tapped,
    palm asked): the controller looked only in its record, found nobody, and the enrolment then
    stored the person who asked to be forgotten. Now every connected gate is asked, the enrolment
    is cancelled there (nothing of it kept, the person told), and the answer and the audit say so."""
    from palmnode.controller.server import RequestFailed
    from palmnode.demo import card_number
    from palmnode.gate.enrol import CANCELLED_BY_DELETION
    from drivers.card_reader.reads import PaymentCardRead
    from palmnode.gate.events import EnrolProgress
    from palmnode.sim import scenario as sc
    from tests.conftest import controller_and_node
    from tests.gate.test_flows import next_of

    controller, node = await controller_and_node(nursery, gate, tmp_path)
    answered: list = []

    async def enrol() -> None:  # the enrolment the gate runs for the controller
        try:
            answered.append(await controller.request("demo-gate", "enrol.begin", {
                "phone": "+15551230001", "palms": ["right"], "card_required": True}, timeout=60))
        except RequestFailed as exc:
            answered.append(str(exc))

    async with node.bus.subscribe(EnrolProgress, PaymentCardRead, buffer=256) as events:
        nursery.start_soon(enrol)
        await next_of(events, EnrolProgress, where=lambda ev: ev.step == "card")
        nursery.start_soon(gate.apply, sc.Card(at=0.0, kind="emv", pan=card_number(1), seconds=0.8))
        tapped = await next_of(events, PaymentCardRead)
        await next_of(events, EnrolProgress, where=lambda ev: ev.step == "palm")
        deletion = await controller.delete_person(card_digest=tapped.token.digest)
        told = await next_of(events, EnrolProgress, where=lambda ev: ev.step == "cancelled")
    assert deletion == Deletion(None, asked=("demo-gate",), enrolments_cancelled=("demo-gate",))
    assert deletion.found
    await wait_for(lambda: answered)
    assert answered == [f"node demo-gate enrol.begin: {CANCELLED_BY_DELETION}"]
    assert told.detail == CANCELLED_BY_DELETION
    assert node.vault.count() == 0 and await trio.to_thread.run_sync(controller.store.people_count) == 0
    [audit] = [e for e in controller.store.audit_entries() if e["kind"] == "card_deleted"]
    assert (audit["person_id"], audit["gates_asked"], audit["enrolments_cancelled"], audit["unreached"]) == (
        None, ["demo-gate"], ["demo-gate"], {})


async def test_an_enrolment_a_gate_made_away_before_its_cards_deletion_is_forgotten_when_it_connects(
        nursery, tmp_path, pki, runner):
    """A gate that is away enrolled a card; the desk then deletes that card store-wide. The
    controller could not reach the gate (nor find the person in its record), and the enrolment,
    delivered when the gate came back, was stored and replicated to every gate. It is refused
    now, and the gate that made it told to forget the person."""
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    b = VaultNode(tmp_path, pki, "gate-b", runner.controller.port)
    person = b.person("p-1")
    await b.enrol_offline(person)   # made before the deletion, its event in the outbox
    deletion = await runner.controller.delete_person(card_digest=person.card.digest)
    assert (deletion.person_id, deletion.asked) == (None, ("gate-a",))  # gate-b is away
    await b.start(nursery)
    await runner.controller.wait_node("gate-b")
    await wait_for(lambda: not b.vault.pending_events() and b.vault.get("p-1") is None)
    assert runner.controller.store.get_person("p-1") is None and a.vault.get("p-1") is None
    [event] = runner.controller.store.events(node_id="gate-b", kind="enrolled")
    assert event.effect == "refused: its card was deleted store-wide"
    assert person.card.digest not in controller_db(runner)


async def test_a_charge_answer_says_its_currency_and_one_in_another_is_not_taken(nursery, tmp_path, pki, runner):
    """The charge answer named no currency, so a gate could not tell that what was approved was
    the amount it asked in the currency it showed. The controller's answer carries its ledger's
    currency; an answer in another currency is unusable at the gate: declined there, abandoned
    (the approval voided), never taken as paid."""
    a = await start_node(nursery, tmp_path, pki, runner, "gate-a")
    person = a.person("p-1")
    await a.enrol(person)
    await wait_for(lambda: not a.vault.pending_events())
    ops = NodeOps(types.SimpleNamespace(link=a.client, vault=a.vault))
    answer = await a.client.request("charge", {"person_id": "p-1", "card_digest": person.card.digest,
                                               "amount_cents": 450, "currency": "eur", "key": "sale-1"})
    assert answer["approved"] and answer["currency"] == "EUR"
    assert (await ops.charge("p-1", person.card.digest, 450, "eur")).approved  # the ledger's EUR is eur
    controller = runner.controller
    decide = controller._charge

    async def in_dollars(session, args):  # a controller that charges in another currency than asked
        return {**await decide(session, args), "currency": "USD"}
    controller._charge = in_dollars
    declined = await ops.charge("p-1", person.card.digest, 450, "EUR")
    assert not declined.approved
    assert declined.reason == "controller's charge answer unusable: charged in 'USD', not the EUR asked"
    await wait_for(lambda: not a.vault.pending_events())  # the abandonment is delivered
    ledger = sqlite3.connect(runner.config.db_path).execute(
        "SELECT approved, currency, reason FROM charges ORDER BY at").fetchall()
    assert ledger == [(1, "EUR", None), (1, "EUR", None), (0, "EUR", "abandoned by the gate: no answer in time")]
