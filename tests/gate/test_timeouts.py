"""Long timeouts of the flows under trio's MockClock (autojump): no card, cancel, a device down, a
hand that lingers; and, on the real clock, the refusals that need the vault's threads. The node parts are the real objects, idle: a
``Lights`` whose board is not open and a ``FrameSource`` without a camera."""
from __future__ import annotations

import datetime
import os

import numpy as np
import pytest
import trio

from drivers.card_reader.reads import PaymentCardRead
from drivers.proximity.driver import Distance
from palmnode.actors import EventBus
from palmnode.biometrics.gallery import Gallery
from palmnode.devices.camera import FrameSource
from palmnode.devices.illuminator import Lights
from palmnode.gate import capture
from palmnode.gate.capture import CaptureUnavailable, Capturer
from palmnode.gate.enrol import EnrolBusy, EnrolFlow, EnrolPolicy, card_expired
from palmnode.gate.events import Decision, EnrolProgress, Feedback
from palmnode.gate.identify import IdentifyFlow, IdentifyPolicy, IdentifyState
from palmnode.gate.people import People
from palmnode.gate.presence import SATURATED_STRENGTH, PresenceChanged
from palmnode.sim.scenario import valid_expiry
from palmnode.vault import Vault, VaultKeys
from tests.gate.test_people import card, templates_of


def idle_capturer() -> Capturer:
    return Capturer(Lights(), FrameSource())


async def test_enrol_without_a_card_fails_after_the_card_timeout(nursery, autojump_clock):
    bus = EventBus()
    flow = EnrolFlow(bus, idle_capturer(), Gallery(), people=None, policy=EnrolPolicy(card_timeout_s=30.0))
    await nursery.start(flow.run)
    async with bus.subscribe(EnrolProgress, buffer=64) as events:
        t0 = trio.current_time()
        request = flow.begin("+15550000001", ["right"])
        result = await request.wait()
        steps = [ev.step async for ev in _drain(events)]
    assert not result.ok and result.reason == "no card"
    assert trio.current_time() - t0 >= 30.0
    assert steps == ["started", "card", "failed"]
    assert flow.state.value == "idle" and flow.current is None
    assert flow.capturer.reserved_by is None


async def test_cancel_ends_a_waiting_enrolment_and_one_at_a_time(nursery, autojump_clock):
    bus = EventBus()
    flow = EnrolFlow(bus, idle_capturer(), Gallery(), people=None)
    await nursery.start(flow.run)
    request = flow.begin(None, ["left", "right"])
    try:
        flow.begin(None, ["right"])
    except EnrolBusy as exc:
        assert "already running" in str(exc)
    else:
        raise AssertionError("a second enrolment started")
    await trio.sleep(5)
    assert flow.state.value == "card"
    assert flow.cancel()
    result = await request.wait()
    assert not result.ok and result.reason == "cancelled"
    assert not flow.cancel()
    assert flow.capturer.reserved_by is None


def test_a_card_is_valid_through_the_last_day_of_its_expiry_month():
    day = datetime.date
    assert card_expired("2812", day(2028, 12, 31)) is False
    assert card_expired("2812", day(2029, 1, 1)) is True
    assert card_expired("2901", day(2028, 12, 31)) is False
    assert card_expired("2811", day(2028, 12, 1)) is True
    for not_a_date in ("2800", "2813", "281", "28x2"):   # as a card's track-2 data can say
        assert card_expired(not_a_date, day(2028, 12, 1)) is None


async def test_a_card_whose_expiry_is_not_a_date_is_refused_with_words(nursery, autojump_clock):
    """The reader checks the expiry's digits, not its month: a month 13 is not taken as valid."""
    bus = EventBus()
    flow = EnrolFlow(bus, idle_capturer(), Gallery(), people=None, today=lambda: datetime.date(2027, 3, 1))
    await nursery.start(flow.run)
    async with bus.subscribe(EnrolProgress, buffer=64) as events:
        request = flow.begin(None, ["right"])
        await trio.sleep(1)
        for expiry in ("2713", "2702"):
            bus.publish(PaymentCardRead(token=card(5), last4="0005", expiry=expiry, scheme="visa"))
            await trio.sleep(1)
        assert flow.state.value == "card" and flow.cancel()
        assert (await request.wait()).reason == "cancelled"
        said = [ev.detail async for ev in _drain(events) if ev.step == "card"]
    assert said == ["tap your payment card on the reader",
                    "that card's expiry date cannot be read: tap another payment card",
                    "that card has expired: tap another payment card"]


async def test_an_enrolment_stopped_by_a_restart_is_answered_and_frees_the_gate(nursery, autojump_clock):
    """The supervisor restarts the gate's actors while an enrolment the controller began waits for
    the card: it is answered, and the restarted gate takes the next enrolment."""
    bus = EventBus()
    flow = EnrolFlow(bus, idle_capturer(), Gallery(), people=None)
    with trio.CancelScope() as actor:
        async with trio.open_nursery() as supervised:
            await supervised.start(flow.run)
            request = flow.begin(None, ["right"])
            await trio.sleep(5)
            actor.cancel()
    with trio.fail_after(60):  # never answered before: the controller's enrol.begin waited for its timeout
        result = await request.wait()
    assert not result.ok and result.reason == "the gate restarted: please start again"
    assert flow.state.value == "idle" and flow.capturer.reserved_by is None
    await nursery.start(flow.run)  # restarted
    request = flow.begin(None, ["right"])  # refused "already running" before, until the node restarted
    await trio.sleep(5)
    assert flow.state.value == "card" and flow.cancel()
    assert (await request.wait()).reason == "cancelled"


async def test_a_card_already_enrolled_is_refused(nursery, tmp_path):
    """On the real clock: the card's look-up runs in a vault thread, and an autojump clock would
    jump to the enrolment's deadlines while that thread runs."""
    bus = EventBus()
    vault = Vault.open(tmp_path / "vault.db", VaultKeys.from_secret(os.urandom(32)), node_id="g")
    try:
        people = People(vault, Gallery(), "g", bus)
        await people.enrol(card(3), None, {"right": templates_of(0)})
        flow = EnrolFlow(bus, idle_capturer(), people.gallery, people)
        await nursery.start(flow.run)
        async with bus.subscribe(EnrolProgress, buffer=64) as events:
            request = flow.begin("+15550000009", ["right"])
            async for ev in events:
                if ev.step == "card":
                    break
            bus.publish(PaymentCardRead(token=card(3), last4="0003", expiry=valid_expiry(), scheme="visa"))
            result = await request.wait()
        assert not result.ok and result.reason == "card already enrolled"
        assert vault.count() == 1
    finally:
        vault.close()


async def test_device_down_is_a_retry_with_reason_and_a_lingering_hand_is_asked_to_go(nursery, autojump_clock):
    bus = EventBus()
    flow = IdentifyFlow(bus, idle_capturer(), Gallery(), policy=IdentifyPolicy(leave_timeout_s=3.0))
    await nursery.start(flow.run)
    async with bus.subscribe(Decision, Feedback, buffer=64) as events:
        bus.publish(PresenceChanged(True, 150, trio.current_time()))
        said = await events.receive()
        assert said.message == "the gate is not ready, please try again"
        decision = await events.receive()
        assert isinstance(decision, Decision) and decision.outcome == "retry"
        assert decision.reason.startswith("illuminator") and "\n" not in decision.reason
        await trio.sleep(1)
        assert flow.state is IdentifyState.LEAVING
        t0 = trio.current_time()
        said = await events.receive()
        assert said.message == "please take your hand away" and trio.current_time() - t0 >= 1.9
        bus.publish(PresenceChanged(False, None, trio.current_time()))
        await trio.sleep(0.1)
        assert flow.state is IdentifyState.WAITING


async def test_an_identify_flow_restarted_mid_decision_serves_the_next_hand(nursery, autojump_clock):
    """The supervisor restarts the gate's actors while a hand lingers after its decision (or while
    a charge is awaited): the restarted flow starts from WAITING and decides the next hand."""
    bus = EventBus()
    flow = IdentifyFlow(bus, idle_capturer(), Gallery(), policy=IdentifyPolicy(leave_timeout_s=3.0))
    with trio.CancelScope() as actor:
        async with trio.open_nursery() as supervised:
            await supervised.start(flow.run)
            bus.publish(PresenceChanged(True, 150, trio.current_time()))
            await trio.sleep(1)
            assert flow.state is IdentifyState.LEAVING
            actor.cancel()
    await nursery.start(flow.run)  # restarted
    assert flow.state is IdentifyState.WAITING
    bus.publish(PresenceChanged(False, None, trio.current_time()))
    async with bus.subscribe(Decision, buffer=64) as events:
        await trio.sleep(0.5)
        bus.publish(PresenceChanged(True, 150, trio.current_time()))
        with trio.fail_after(5):  # the flow crashed "no transition leaving -> capturing" before
            decision = await events.receive()
    assert decision.outcome == "retry"


async def test_a_phone_number_is_checked_before_the_card_and_the_palms(nursery, tmp_path):
    """A mistyped number is refused when the enrolment is asked for, and one already enrolled
    right after the card, before the customer holds any palm (they used to go through the card
    tap and every palm capture first). On the real clock: the vault's look-ups run in threads,
    which trio's autojump clock does not wait for."""
    from palmnode.vault import InvalidPhone

    bus = EventBus()
    vault = Vault.open(tmp_path / "vault.db", VaultKeys.from_secret(os.urandom(32)), node_id="g")
    try:
        people = People(vault, Gallery(), "g", bus)
        await people.enrol(card(3), "+442079460000", {"right": templates_of(0)})
        flow = EnrolFlow(bus, idle_capturer(), people.gallery, people)
        await nursery.start(flow.run)
        with pytest.raises(InvalidPhone):
            flow.begin("020 7946 0000", ["right"])            # national form: not E.164
        assert flow.current is None
        async with bus.subscribe(EnrolProgress, buffer=64) as events:
            request = flow.begin("+44 20 7946 0000", ["right"])   # the same number, spelt otherwise
            async for ev in events:
                if ev.step == "card":
                    break
            bus.publish(PaymentCardRead(token=card(4), last4="0004", expiry=valid_expiry(), scheme="visa"))
            result = await request.wait()
            steps = [ev.step async for ev in _drain(events)]
        assert not result.ok and result.reason == "phone number already enrolled"
        assert "palm" not in steps and vault.count() == 1
    finally:
        vault.close()


async def test_a_hand_that_waited_while_the_gate_was_busy_gets_a_decision(nursery, autojump_clock):
    """A hand placed while the gate still served someone else (a payment waiting up to
    charge_timeout_s for the controller) is older than the decision deadline once the gate is
    free: it gets the whole deadline from then (trio.move_on_after of a negative time raised,
    and the identify actor crashed without a word to that customer)."""
    bus = EventBus()
    flow = IdentifyFlow(bus, idle_capturer(), Gallery())
    await nursery.start(flow.run)
    async with bus.subscribe(Decision, buffer=64) as events:
        await trio.sleep(5)
        bus.publish(PresenceChanged(True, 150, trio.current_time() - 3.0))   # arrived 3 s ago
        late = await events.receive()
        bus.publish(PresenceChanged(False, None, trio.current_time()))
        await trio.sleep(1)
        bus.publish(PresenceChanged(True, 150, trio.current_time()))         # the next one is served too
        decision = await events.receive()
    assert late.outcome == "retry" and "\n" not in late.reason
    assert decision.outcome == "retry" and decision.reason.startswith("illuminator")
    assert flow.decisions == 2


async def test_a_device_lost_while_the_surface_frame_is_awaited_is_a_plain_capture_unavailable(monkeypatch):
    """The surface frame is awaited beside the NIR frame's ROI search (a nursery): a camera or
    illuminator lost then is the same CaptureUnavailable the flows handle, not an ExceptionGroup
    that ended the enrol actor."""
    capturer = idle_capturer()

    async def lit_frame(channel, level, previous):
        if previous is None:
            return np.zeros((480, 640), np.uint8), trio.current_time()
        raise CaptureUnavailable("camera: unplugged")
    monkeypatch.setattr(capturer, "_lit_frame", lit_frame)
    monkeypatch.setattr(capture, "locate", lambda nir, policy: None)   # a hand found: the surface frame is needed
    with pytest.raises(CaptureUnavailable, match="camera: unplugged"):
        await capturer.capture_probe()


async def test_an_enrolment_ended_by_an_error_answers_and_frees_the_gate(nursery, autojump_clock, monkeypatch):
    bus = EventBus()
    flow = EnrolFlow(bus, idle_capturer(), Gallery(), people=None)

    async def broken():
        raise ValueError("a bug")
    monkeypatch.setattr(flow.capturer, "capture_probe", broken)
    await nursery.start(flow.run)
    request = flow.begin(None, ["right"], card_required=False)
    await trio.sleep(0.1)
    bus.publish(PresenceChanged(True, 150, trio.current_time()))   # a hand: the palm step captures
    result = await request.wait()
    assert not result.ok and result.reason == "the gate had an error: please start again"
    assert flow.state.value == "idle" and flow.current is None and flow.capturer.reserved_by is None
    assert not (await flow.begin(None, ["right"], card_required=False).wait()).ok   # the next one is taken


async def _drain(events):
    while True:
        try:
            yield events.receive_nowait()
        except trio.WouldBlock:
            return


async def test_enrolment_advises_a_hand_held_too_close_then_times_out_the_palm(nursery, autojump_clock):
    bus = EventBus()
    flow = EnrolFlow(bus, idle_capturer(), Gallery(), people=None, policy=EnrolPolicy(palm_timeout_s=20.0))
    await nursery.start(flow.run)
    async with bus.subscribe(EnrolProgress, buffer=64) as events:
        request = flow.begin(None, ["left"], card_required=False)
        async for ev in events:
            if ev.step == "palm":
                assert ev.detail == "hold your left palm over the gate"
                break
        for _ in range(50):  # the sensor's blind zone: saturated, no distance (what the actor publishes)
            bus.publish(Distance(None, SATURATED_STRENGTH, 36.0, trio.current_time()))
            await trio.sleep(0.01)
        said = await events.receive()
        assert (said.step, said.detail) == ("capture", "move your hand a little higher")
        result = await request.wait()
    assert not result.ok and result.reason == "left palm not captured in time"


async def test_a_lingering_hand_is_not_sent_away_while_an_enrolment_has_the_gate(nursery, autojump_clock):
    """A stranger's hand lingers after its decision and the staff start an enrolment for them: the
    identify flow leaves the person to the enrolment's words (it said "please take your hand away"
    every leave_timeout_s, while the enrolment asked for the card and then for that very palm)."""
    bus = EventBus()
    capturer = idle_capturer()
    identify = IdentifyFlow(bus, capturer, Gallery(), policy=IdentifyPolicy(leave_timeout_s=3.0))
    enrol = EnrolFlow(bus, capturer, Gallery(), people=None)
    await nursery.start(identify.run)
    await nursery.start(enrol.run)
    async with bus.subscribe(Decision, Feedback, buffer=64) as events:
        bus.publish(PresenceChanged(True, 150, trio.current_time()))
        while not isinstance(await events.receive(), Decision):
            pass
        await trio.sleep(1)
        assert identify.state is IdentifyState.LEAVING
        request = enrol.begin(None, ["right"])          # waits for the card: the hand stays
        await trio.sleep(10)
        said = [ev.message async for ev in _drain(events) if isinstance(ev, Feedback)]
        assert "please take your hand away" not in said, said
        assert enrol.cancel() and (await request.wait()).reason == "cancelled"
        await trio.sleep(3.5)                           # the gate is the identify flow's again
        said = [ev.message async for ev in _drain(events) if isinstance(ev, Feedback)]
    assert said == ["please take your hand away"]
