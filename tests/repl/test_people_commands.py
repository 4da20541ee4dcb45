"""The operator's people commands over the REPL socket, on a node with a real vault: enrol here
(card tap + palm on the virtual gate), delete, and the gate's mode."""
from __future__ import annotations

import pytest
import trio

from palmnode.actors import GateState
from palmnode.demo import card_number, hold_palms, node_config
from palmnode.gate.enrol import EnrolState
from palmnode.node import Node
from palmnode.sim import scenario as sc
from tests.conftest import wait_for


@pytest.fixture
async def node(nursery, gate, tmp_path):
    """A node with a vault (the working gate) on the virtual gate."""
    node = Node(node_config(gate.endpoints_, tmp_path, vault=True))
    await nursery.start(node.run)
    await wait_for(lambda: node.health is not None and node.health.gate is GateState.READY, timeout=10.0)
    return node


async def test_enrol_delete_and_mode_from_the_repl(connect, node, gate, nursery):
    # the enrolment's duplicate check takes the identify flow's second look, calibrated alike
    assert node.enrol.policy.second_look_penalty == node.identify.policy.second_look_penalty > 0
    client = await connect()
    _, reply = await client.call("mode", "payment", "450", "eur")
    assert reply["ok"] and node.modes.current.amount_cents == 450 and node.modes.current.currency == "EUR"
    _, reply = await client.call("mode", "payment")
    assert not reply["ok"] and "amount" in reply["error"]
    _, reply = await client.call("delete", "id", "nobody")
    assert reply["ok"] and reply["result"] == {"deleted": False, "enrolment_cancelled": False}
    assert reply["text"] == "nobody matches"
    _, reply = await client.call("delete", "shoe", "x")
    assert not reply["ok"] and "by id, card or phone" in reply["error"]
    # a number typed in groups, as on a form, was a usage error, or its second group taken for the palms
    _, reply = await client.call("enrol", "+49", "30", "5", "both")
    assert not reply["ok"] and reply["error"].startswith("phone number has 5 digits"), reply
    _, reply = await client.call("enrol", "+49", "30555000007", "rigth")
    assert not reply["ok"] and reply["error"] == "palms must be right, left or both, not 'rigth'"
    _, reply = await client.call("delete", "id", "a", "b")
    assert not reply["ok"] and reply["error"] == "delete id takes one value, got 2"
    # a card digest of another length matches no one: it was searched for, "nobody matches"
    for value, error in [("00", "got 2 characters"), ("zz", "got 2 characters, not all hex"),
                         ("ab" * 33, "got 66 characters")]:
        _, reply = await client.call("delete", "card", value)
        assert not reply["ok"] and reply["error"] == "card must be the card token's digest, 64 hex digits: " + error

    async def person_at_the_gate() -> None:
        # the card is tapped once the enrolment asks for it (one read per presentation: a card
        # tapped before that is not taken for it)
        await wait_for(lambda: node.enrol.state is EnrolState.CARD, timeout=10.0)
        await gate.apply(sc.Card(at=0, kind="emv", pan=card_number(7), seconds=1.5))
        await hold_palms(gate, node.bus, 4_343, trio.Event())  # until the enrolment answers

    async with trio.open_nursery() as hands:
        hands.start_soon(person_at_the_gate)
        streamed, reply = await client.call("enrol", "+4930555000007", "right", timeout=30)
        hands.cancel_scope.cancel()
    assert reply["ok"], reply
    person_id = reply["result"]["person_id"]
    steps = [line["text"].split(":")[0] for line in streamed]
    assert "card" in steps and "palm" in steps
    assert node.vault.get(person_id) is not None and len(node.gallery) == 1

    _, reply = await client.call("delete", "phone", "+49", "30", "555000007")  # as typed at the prompt
    assert reply["ok"] and reply["result"] == {"deleted": True, "enrolment_cancelled": False}
    assert node.vault.get(person_id) is None and len(node.gallery) == 0
    await client.aclose()


async def test_a_basket_from_the_repl_shows_in_status_and_follow(connect, node):
    """`mode payment AMOUNT CURRENCY once`: one person pays, then the gate returns to its mode
    before; status shows the pending basket, follow shows each mode change (it did not list
    ModeChanged, so an operator never saw the gate return after a basket was paid)."""
    from palmnode.gate.modes import GateMode

    watching, client = await connect(), await connect()
    await watching.send("follow", "modechanged")
    assert (await watching.line())["text"] == "following ModeChanged (Ctrl-C or q stops)"
    _, reply = await client.call("mode", "loyalty")
    assert reply["ok"] and reply["result"] == {"mode": "loyalty", "once": False}
    _, reply = await client.call("mode", "payment", "1299", "eur", "once")
    assert reply["ok"] and reply["result"] == {"mode": "payment", "once": True}, reply
    assert reply["text"] == "gate mode payment: 1299 EUR from the next person identified, then loyalty"
    assert node.modes.current == GateMode("payment", 1299, "EUR", once=True)
    _, reply = await client.call("status")
    assert reply["result"]["payment"] == {"amount_cents": 1299, "currency": "EUR", "once": True,
                                          "returns_to": "loyalty", "returns_to_fare": None}
    assert "payment 1299 EUR from the next person identified, then loyalty" in reply["text"]
    for args, error in [(("payment", "1299", "EUR", "twice"), "after the currency only 'once', not 'twice'"),
                        (("entry", "once"), "once is for payment mode only, not entry"),
                        (("loyalty", "450"), "loyalty takes no amount or currency"),
                        (("payment", "12.99", "EUR"), "amount must be a whole number of minor units, got '12.99'"),
                        # a negative amount was said not to be "a whole number"
                        (("payment", "-5", "EUR"), "payment mode needs a positive amount_cents below 2**63, got -5"),
                        (("payment", "1299"), "payment mode needs a 3-letter currency code, got None")]:
        _, reply = await client.call("mode", *args)
        assert not reply["ok"] and reply["error"] == error, (args, reply)
    assert node.modes.current.once  # refusals changed nothing
    node.modes.paid(node.modes.serial, at=trio.current_time())  # what an approved charge does
    _, reply = await client.call("status")
    assert reply["result"]["mode"] == "loyalty" and reply["result"]["payment"] is None
    _, reply = await client.call("mode", "payment", "450", "EUR")
    assert reply["text"] == "gate mode payment: 450 EUR from each person identified"
    _, reply = await client.call("status")
    assert "payment 450 EUR from each person identified" in reply["text"]
    # a basket over a fare said "then payment", not which fare: the gate returns to it in full
    _, reply = await client.call("mode", "payment", "1299", "EUR", "once")
    assert reply["text"] == ("gate mode payment: 1299 EUR from the next person identified, then payment "
                             "(450 EUR from each person identified)")
    _, reply = await client.call("status")
    assert reply["result"]["payment"]["returns_to_fare"] == {"amount_cents": 450, "currency": "EUR"}
    assert ("mode payment 1299 EUR from the next person identified, then payment (450 EUR from each "
            "person identified)") in reply["text"]
    seen = [(await watching.line())["event"] for _ in range(4)]
    assert [(e["mode"]["mode"], e["mode"]["once"], e["reason"]) for e in seen] == [
        ("loyalty", False, "set"), ("payment", True, "set"), ("loyalty", False, "paid"), ("payment", False, "set")]
    await watching.aclose()
    await client.aclose()


async def test_a_wal_truncation_another_reader_blocks_shows_in_status_node_status_and_metrics(connect, node):
    """A removal whose WAL truncation a second SQLite connection blocks (a backup's read
    transaction on the real vault file): the only sign was a warning line every 5 minutes. The
    REPL's status, the controller's node.status, the metrics and systemd's STATUS now say since
    when, how many retries and why, until the reader lets go."""
    import random
    import sqlite3
    import time

    from drivers.card_reader.cardtoken import CardToken
    from tests.vault.factories import template

    client = await connect()
    person = await node.people.enrol(CardToken(b"\x01" * 32, "0001"), None, {"right": [template(random.Random(1))]})
    _, reply = await client.call("status")
    assert reply["ok"] and reply["result"]["vault_wal"] == {"truncated": True}
    assert "vault WAL: truncated" in reply["text"] and "vault WAL" not in node.status_line()

    reader = sqlite3.connect(node.vault.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM people").fetchone()
        before = time.time()
        _, reply = await client.call("delete", "id", person.person_id)
        assert reply["result"] == {"deleted": True, "enrolment_cancelled": False} and node.vault.scrub_pending
        await wait_for(lambda: node.people.wal.state()["attempts"] >= 2)  # the keeper keeps trying

        _, reply = await client.call("status")
        wal = reply["result"]["vault_wal"]
        assert wal["truncated"] is False and before <= wal["blocked_since"] <= time.time()
        assert wal["blocked_s"] >= 0 and wal["attempts"] >= 2 and "read transaction" in wal["reason"]
        assert "vault WAL NOT TRUNCATED since" in reply["text"] and "retries" in reply["text"]
        from_controller = (await node.ops.handle("node.status", {}))["vault_wal"]  # what node.status answers
        assert from_controller["truncated"] is False and from_controller["blocked_since"] == wal["blocked_since"]
        assert "vault WAL not truncated since" in node.status_line()
        await wait_for(lambda: node.metrics.value("palmnode_vault_wal_blocked") == 1
                       and node.metrics.value("palmnode_vault_wal_retries_total") >= 2, timeout=3.0)
        assert node.metrics.value("palmnode_vault_wal_blocked_seconds") > 0
        assert "\npalmnode_vault_wal_blocked 1" in node.metrics.render_prometheus()
        assert person.person_id not in reply["text"] + str(wal)

        reader.execute("COMMIT")  # the reader lets go: the next try (within 10 s) truncates
        await wait_for(lambda: node.people.wal.state() == {"truncated": True}, timeout=15.0)
    finally:
        reader.close()
    _, reply = await client.call("status")
    assert reply["result"]["vault_wal"] == {"truncated": True} and "vault WAL: truncated" in reply["text"]
    assert "vault WAL" not in node.status_line()
    await wait_for(lambda: node.metrics.value("palmnode_vault_wal_blocked") == 0, timeout=3.0)
    assert node.metrics.value("palmnode_vault_wal_blocked_seconds") == 0
    await client.aclose()


async def test_deleting_from_the_repl_the_phone_of_an_enrolment_in_progress_cancels_it(connect, node, gate, nursery):
    """One operator enrols a person at the gate; another deletes that person's phone number while
    the palms are being captured: "nobody matches" before, and the enrolment then stored them.
    Now the deletion says it cancelled the enrolment, and the enrolling operator is told why."""
    from palmnode.gate.enrol import CANCELLED_BY_DELETION

    enrolling, deleting = await connect(), await connect()
    done = trio.Event()

    async def person_at_the_gate() -> None:
        await wait_for(lambda: node.enrol.state is EnrolState.CARD, timeout=10.0)
        await gate.apply(sc.Card(at=0, kind="emv", pan=card_number(8), seconds=1.5))
        await hold_palms(gate, node.bus, 4_344, done)

    async with trio.open_nursery() as hands:
        hands.start_soon(person_at_the_gate)
        await enrolling.send("enrol", "+4930555000008", "right")
        await wait_for(lambda: node.enrol.state is EnrolState.PALM, timeout=15.0)
        _, deleted = await deleting.call("delete", "phone", "+49 30 555000008")
        streamed, reply = await enrolling.until_final(timeout=5.0)
        done.set()
    assert {"text": CANCELLED_BY_DELETION} in streamed, streamed  # once, not "cancelled: cancelled: …"
    assert deleted["ok"] and deleted["result"] == {"deleted": False, "enrolment_cancelled": True}, deleted
    assert "cancelled" in deleted["text"], deleted
    assert not reply["ok"] and reply["error"] == f"enrolment failed: {CANCELLED_BY_DELETION}", reply
    assert node.vault.count() == 0 and len(node.gallery) == 0
    await enrolling.aclose()
    await deleting.aclose()
