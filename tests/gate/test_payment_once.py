"""A one-shot payment (``mode.set`` with ``once: true``): a store's checkout charges one basket to
the next person identified, then the gate returns to the mode it had before. On the real virtual
gate with the real flows; end to end with the reference controller over the real link (mutual TLS,
its SQLite ledger)."""
from __future__ import annotations

import sqlite3

import pytest
import trio

from palmnode.gate.events import Decision, GateOpened, LoyaltyMember, PaymentResult
from palmnode.gate.modes import ChargeResult, GateMode, GateModes, ModeChanged
from tests.conftest import controller_and_node, wait_for
from tests.gate.conftest import start_identify
from tests.gate.test_flows import PERSON, enrol_person, next_of, present

BASKET = GateMode("payment", 1299, "EUR", once=True)


# ---- the mode itself ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, error", [
    (("payment", 450, "EUR", "yes"), "once must be true or false, got str"),
    (("payment", 450, "EUR", 1), "once must be true or false, got int"),
    (("payment", 450, "EUR", None), "once must be true or false, got NoneType"),
    (("entry", None, None, True), "once is for payment mode only, not entry"),
    (("loyalty", None, None, True), "once is for payment mode only, not loyalty"),
])
def test_once_is_a_bool_and_for_payment_only(args, error):
    with pytest.raises(ValueError, match=error):
        GateMode(*args)
    assert GateMode("payment", 450, "EUR").once is False  # the default: every person pays (a fare)


def test_a_gate_cannot_start_with_a_basket():
    with pytest.raises(ValueError, match="a one-shot payment is set by mode.set"):
        GateModes(None, BASKET)


async def test_a_basket_returns_to_the_mode_before_it_and_a_stale_approval_changes_nothing():
    from palmnode.actors import EventBus

    bus = EventBus()
    modes = GateModes(bus, GateMode("loyalty"))
    async with bus.subscribe(ModeChanged, buffer=16) as changes:
        modes.set(GateMode("payment", 500, "EUR", once=True), at=1.0)
        first = modes.serial
        modes.set(BASKET, at=2.0)   # the cashier corrects the basket before anyone paid
        assert modes.returns_to == GateMode("loyalty")  # not to the first basket
        assert not modes.paid(first, at=3.0)            # an approval of the replaced basket
        assert modes.current == BASKET
        assert modes.paid(modes.serial, at=4.0)
        assert modes.current == GateMode("loyalty") and modes.returns_to is None
        assert not modes.paid(modes.serial, at=5.0)     # nothing pending: nothing to return from
        seen = [changes.receive_nowait() for _ in range(3)]
    assert [(c.mode, c.reason) for c in seen] == [(GateMode("payment", 500, "EUR", once=True), "set"),
                                                 (BASKET, "set"), (GateMode("loyalty"), "paid")]
    modes.set(BASKET, at=6.0)
    modes.set(GateMode("payment", 450, "EUR"), at=7.0)  # a fare: no basket pending any more
    assert modes.returns_to is None and not modes.paid(modes.serial, at=8.0)
    assert modes.current == GateMode("payment", 450, "EUR")
    assert modes.pending_payment() == {"amount_cents": 450, "currency": "EUR", "once": False,
                                       "returns_to": None, "returns_to_fare": None}


def test_a_basket_over_a_fare_says_the_fare_it_returns_to():
    """node.status carried only the previous mode's name: a basket set over a fare read '1299 EUR
    from the next person identified, then payment', without the fare's amount."""
    from palmnode.gate.modes import payment_words

    modes = GateModes(None, GateMode("payment", 450, "USD"))
    modes.set(BASKET, at=1.0)
    payment = modes.pending_payment()
    assert payment == {"amount_cents": 1299, "currency": "EUR", "once": True, "returns_to": "payment",
                       "returns_to_fare": {"amount_cents": 450, "currency": "USD"}}
    assert payment_words(payment) == ("1299 EUR from the next person identified, then payment "
                                      "(450 USD from each person identified)")
    modes.set(GateMode("entry"), at=2.0)
    modes.set(BASKET, at=3.0)
    assert payment_words(modes.pending_payment()) == "1299 EUR from the next person identified, then entry"


# ---- the identify flow on the virtual gate ------------------------------------------------------------

async def test_a_basket_is_charged_to_one_person_then_the_gate_returns(rig, nursery, threshold):
    """The cashier sets one basket: a declined charge and one the controller never answers keep it
    pending; a new basket set while a charge is awaited is not undone by that charge's approval;
    the first approved charge of the basket returns the gate to its mode before (loyalty), and the
    next person identified is not charged (every identified person paid the basket before)."""
    _, result, _, _ = await enrol_person(rig, nursery, threshold, PERSON)
    assert result.ok, result
    asked: list[tuple[int, str]] = []
    answers = ["decline", "never", "reset", "approve"]

    async def charge(person_id, card_digest, amount_cents, currency):
        asked.append((amount_cents, currency))
        answer = answers.pop(0)
        if answer == "never":   # the link is down: no answer within the charge timeout
            await trio.sleep_forever()
        if answer == "reset":   # the cashier sets the next basket while this one's charge is awaited
            rig.modes.set(GateMode("payment", 800, "EUR", once=True), at=trio.current_time())
        if answer == "decline":
            return ChargeResult(False, None, "insufficient funds")
        return ChargeResult(True, f"ref-{len(asked)}")

    await start_identify(rig, nursery, threshold, charge=charge, policy={"charge_timeout_s": 0.3})
    rig.modes.set(GateMode("loyalty"), at=trio.current_time())
    async with rig.node.bus.subscribe(Decision, PaymentResult, LoyaltyMember, GateOpened, ModeChanged,
                                      buffer=1024) as events:
        rig.modes.set(BASKET, at=trio.current_time())
        assert (await next_of(events, ModeChanged)).mode == BASKET

        async def pays() -> PaymentResult:
            decision = await present(rig, events, PERSON, until="identified", times=4)
            assert decision.outcome == "identified" and decision.mode == "payment", decision
            return await next_of(events, PaymentResult)

        paid = await pays()
        assert not paid.approved and paid.reason == "insufficient funds" and paid.amount_cents == 1299
        assert rig.modes.current == BASKET        # still pending for the next try
        paid = await pays()
        assert not paid.approved and paid.reason == "controller unavailable"
        assert rig.modes.current == BASKET
        paid = await pays()                        # approved, but a new basket was set meanwhile
        assert paid.approved and (paid.amount_cents, paid.currency) == (1299, "EUR")
        assert rig.modes.current == GateMode("payment", 800, "EUR", once=True)
        assert rig.modes.returns_to == GateMode("loyalty")
        paid = await pays()
        assert paid.approved and paid.amount_cents == 800 and paid.reference == "ref-4"
        back = await next_of(events, ModeChanged, where=lambda ev: ev.reason == "paid")
        assert back.mode == GateMode("loyalty") and rig.modes.current == GateMode("loyalty")
        # the next person identified is not charged: the gate is back to loyalty
        decision = await present(rig, events, PERSON, until="identified", times=4)
        assert decision.outcome == "identified" and decision.mode == "loyalty", decision
        await next_of(events, LoyaltyMember)
    assert asked == [(1299, "EUR")] * 3 + [(800, "EUR")]
    assert not answers


# ---- end to end: the reference controller sets the basket over the real link --------------------

async def test_a_basket_set_by_the_controller_is_charged_once_over_the_link(nursery, gate, tmp_path):
    """The store controller sets a basket with mode.set once: true (node.status shows it pending);
    a charge the controller does not answer in time (its database held by another program) is
    declined at the gate and abandoned, the basket still pending; the next approved charge returns
    the gate to entry, and the next person identified walks through without a charge. The
    controller's ledger holds one approved charge, the abandoned one voided."""
    from palmnode.demo import arrive, card_number, enrol_person as enrol_at

    controller, node = await controller_and_node(nursery, gate, tmp_path)
    answer, _ = await enrol_at(controller, "demo-gate", gate, node, PERSON, pan=card_number(1), phone="+15551230001")
    assert "person_id" in answer, answer

    async def identified() -> Decision:
        for _ in range(4):
            shown = await arrive(gate, node, PERSON)
            if shown and shown[-1].outcome == "identified":
                return shown[-1]
            await trio.sleep(0.3)
        raise AssertionError(f"not identified: {shown}")

    set_answer = await controller.request("demo-gate", "mode.set", {"mode": "payment", "amount_cents": 1299,
                                                                    "currency": "EUR", "once": True})
    assert set_answer == {"mode": "payment", "once": True}
    status = await controller.request("demo-gate", "node.status")
    assert status["mode"] == "payment"
    assert status["payment"] == {"amount_cents": 1299, "currency": "EUR", "once": True, "returns_to": "entry",
                                 "returns_to_fare": None}

    async with node.bus.subscribe(PaymentResult, GateOpened, ModeChanged, buffer=256) as events:
        other = sqlite3.connect(controller.config.db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a backup holds the write lock: the charge waits
        try:
            await identified()
            paid = await next_of(events, PaymentResult, timeout=10)  # the gate's charge timeout, 3 s
        finally:
            other.execute("COMMIT")  # within the controller's busy timeout (10 s): it decides late
            other.close()
        assert not paid.approved and paid.reason == "controller unavailable"
        assert node.modes.current.once and node.modes.current.amount_cents == 1299
        await wait_for(lambda: not node.vault.pending_events(), timeout=10)  # the abandonment delivered

        await identified()
        paid = await next_of(events, PaymentResult, timeout=10)
        assert paid.approved and (paid.amount_cents, paid.currency) == (1299, "EUR")
        back = await next_of(events, ModeChanged)
        assert back.mode == GateMode("entry") and back.reason == "paid"
        status = await controller.request("demo-gate", "node.status")
        assert status["mode"] == "entry" and status["payment"] is None

        decision = await identified()
        assert decision.mode == "entry"
        await next_of(events, GateOpened)
    ledger = sqlite3.connect(controller.config.db_path).execute(
        "SELECT approved, amount_cents, reason FROM charges").fetchall()
    assert sorted(ledger) == [(0, 1299, "abandoned by the gate: no answer in time"), (1, 1299, None)]
