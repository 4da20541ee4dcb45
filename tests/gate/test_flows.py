"""Enrol and identify on the real virtual gate: a rendered person enrolled through the enrol flow
(card tap + session-1 hands) is recognised from session-2 hands; a stranger is unknown; modes;
delete; feedback for misplaced hands; a camera pulled mid-capture; a search that hangs."""
from __future__ import annotations

import datetime
import logging
import threading

import attrs
import numpy as np
import pytest
import trio
import trio.testing

from drivers.card_reader.reads import PaymentCardRead
from palmnode.biometrics import matcher, synth
from palmnode.biometrics.gallery import Gallery
from palmnode.biometrics.prefilter import SearchCancelled
from palmnode.biometrics.types import PalmTemplate
from palmnode.config import SHIPPED_CALIBRATION
from palmnode.demo import hold_palms
from palmnode.gate.capture import FramePair, Probe, process_pair
from palmnode.gate.enrol import CANCELLED_BY_DELETION, EnrolFlow, EnrolPolicy
from palmnode.gate.events import (
    Decision,
    EnrolProgress,
    Feedback,
    GateOpened,
    LoyaltyMember,
    PaymentResult,
    PersonDeleted,
    PersonEnrolled,
)
from palmnode.gate.identify import IdentifyPolicy, IdentifyState, second_look_penalty
from palmnode.gate.modes import ChargeResult, GateMode
from palmnode.gate.people import Forgotten
from palmnode.logs import JsonFormatter
from palmnode.sim import scenario as sc
from palmnode.vault import EnrolledPalm
from tests.conftest import wait_for
from tests.gate.conftest import TARGET_FMR, hover, start_identify
from tests.gate.test_people import write_locked

PERSON, STRANGER = 201, 377


async def next_of(events, kind, timeout=5.0, where=lambda ev: True):
    with trio.fail_after(timeout):
        async for ev in events:
            if isinstance(ev, kind) and where(ev):
                return ev


async def enrol_person(rig, nursery, threshold, seed, *, pan="4111111111111111", phone="+15551230001",
                       expect_enrolled=True, on_duplicate="refuse", policy: dict | None = None):
    enrol = EnrolFlow(rig.node.bus, rig.capturer, rig.gallery, rig.people, metrics=rig.metrics,
                      policy=EnrolPolicy(agree_threshold=threshold, duplicate_threshold=threshold,
                                         on_duplicate=on_duplicate, **(policy or {})))
    await nursery.start(enrol.run)
    async with rig.node.bus.subscribe(EnrolProgress, PersonEnrolled, buffer=256) as events:
        request = enrol.begin(phone, ["right"])
        await next_of(events, EnrolProgress, where=lambda ev: ev.step == "card")
        nursery.start_soon(rig.gate.apply, sc.Card(at=0.0, kind="emv", pan=pan, seconds=1.0))
        prompt = await next_of(events, EnrolProgress, where=lambda ev: ev.step == "palm")
        assert prompt.detail == "hold your right palm over the gate"
        # one capture per presentation (EnrolPolicy.per_hover): asked, the person lifts the hand
        # and presents it again; after a blurred pose (8% of them, as real hands) too
        with trio.fail_after(15):
            async with trio.open_nursery() as hands:
                hands.start_soon(lambda: hold_palms(rig.gate, rig.node.bus, seed, request.done, seconds=1.0))
                result = await request.wait()
        done_at = request.done_at
        enrolled = await next_of(events, PersonEnrolled) if expect_enrolled else None
    return enrol, result, enrolled, done_at - prompt.at


async def small_in_camera(gate, seed, *, sensor_mm=250, camera_mm=340, seconds=1.5):
    """The distance sensor sees ``sensor_mm`` (in the window), the camera a hand at ``camera_mm``."""
    gate.hand.present(seed, session=1, hand="right")
    gate.hand.distance_mm = camera_mm
    gate.proximity.set_target(sensor_mm)
    try:
        await trio.sleep(seconds)
    finally:
        gate.proximity.set_target(None)
        gate.hand.absent()


async def drained(events) -> list:
    """The events published so far (every task run until blocked) and not yet received."""
    await trio.testing.wait_all_tasks_blocked()
    out = []
    while True:
        try:
            out.append(events.receive_nowait())
        except trio.WouldBlock:
            return out


async def present(rig, events, seed, *, session=2, times=3, until=None, **kw) -> Decision:
    """Hold the hand over the gate until a decision other than retry (a blurred pose, say), or
    until one whose outcome is ``until``: at most ``times`` times. An enrolled person presents
    again when told "unknown", as people do: one attempt in a few hundred misses (FNIR, measured by
    eval and the gate bench), and a step that needs the person identified is not a test of that.
    Decisions about earlier hands still queued are dropped first (e.g. the identify flow's
    decision on a hand that lingered after an enrolment released the gate)."""
    await drained(events)
    for _ in range(times):
        async with trio.open_nursery() as hands:
            hands.start_soon(lambda: hover(rig.gate, seed, session=session, **kw))
            decision = await next_of(events, Decision, timeout=5.0)
        if (decision.outcome == until) if until else (decision.outcome != "retry"):
            break
    return decision


async def test_enrolled_person_recognised_stranger_not_modes_and_delete(rig, nursery, threshold, caplog):
    caplog.set_level(logging.INFO)
    _, result, enrolled, palm_seconds = await enrol_person(rig, nursery, threshold, PERSON)
    assert result.ok and not result.linked, result
    assert enrolled.person_id == result.person_id and enrolled.palms == ("right",)
    # the 5 s budget is the gate bench's (enrol_one_palm_s), not a timed assertion here
    print(f"one palm enrolled in {palm_seconds:.2f} s (prompt to stored)")
    assert len(rig.gallery) == 1 and rig.vault.count() == 1  # one search template per enrolled palm
    assert len(rig.vault.get(result.person_id).palms[0].templates) == 3  # the others for a second look
    assert [e.kind for e in rig.vault.pending_events()] == ["enrolled"]

    approved = []
    controller_up = True

    async def charge(person_id, card_digest, amount_cents, currency):
        if not controller_up:
            await trio.sleep_forever()
        approved.append((person_id, card_digest, amount_cents, currency))
        return ChargeResult(True, "ref-1")

    await start_identify(rig, nursery, threshold, charge=charge, policy={"charge_timeout_s": 0.3})
    async with rig.node.bus.subscribe(Decision, GateOpened, PaymentResult, LoyaltyMember, PersonDeleted,
                                      buffer=1024) as events:
        # entry: the session-2 hand (a month later) opens the gate
        decision = await present(rig, events, PERSON, until="identified")
        assert decision.outcome == "identified", decision
        assert decision.person_id == result.person_id and decision.palm == "right"
        assert decision.score >= threshold and decision.mode == "entry"
        opened = await next_of(events, GateOpened)
        assert opened.person_id == result.person_id
        latencies = [decision.latency_ms]

        # a stranger is unknown
        decision = await present(rig, events, STRANGER, session=1)
        assert decision.outcome == "unknown" and decision.person_id is None, decision
        latencies.append(decision.latency_ms)

        # payment: the person's card token is charged the pending amount
        rig.modes.set(GateMode("payment", 250, "EUR"), at=trio.current_time())
        decision = await present(rig, events, PERSON, until="identified")
        assert decision.outcome == "identified", decision
        paid = await next_of(events, PaymentResult)
        assert decision.mode == "payment" and paid.approved and paid.reference == "ref-1"
        assert (paid.amount_cents, paid.currency) == (250, "EUR")  # what was paid, in what
        assert approved == [(result.person_id, rig.vault.get(result.person_id).card.digest, 250, "EUR")]
        latencies.append(decision.latency_ms)

        # the controller does not answer: declined, and the person is told
        controller_up = False
        assert (await present(rig, events, PERSON, until="identified")).outcome == "identified"
        paid = await next_of(events, PaymentResult)
        assert not paid.approved and paid.reason == "controller unavailable"

        # loyalty
        rig.modes.set(GateMode("loyalty"), at=trio.current_time())
        decision = await present(rig, events, PERSON, until="identified")
        assert decision.outcome == "identified", decision
        member = await next_of(events, LoyaltyMember)
        assert member.person_id == result.person_id
        latencies.append(decision.latency_ms)

        # the same palm again with another card: refused by the duplicate check
        _, again, _, _ = await enrol_person(rig, nursery, threshold, PERSON, pan="5555555555554444",
                                            phone="+15551230002", expect_enrolled=False)
        assert not again.ok and again.reason == "palm already enrolled"
        # ...or linked to the existing person, per policy (nothing new stored)
        _, linked, _, _ = await enrol_person(rig, nursery, threshold, PERSON, pan="5555555555554444",
                                             phone="+15551230002", expect_enrolled=False, on_duplicate="link")
        assert linked.ok and linked.linked and linked.person_id == result.person_id
        assert rig.vault.count() == 1

        # deleted: gone from vault and gallery at once, then unknown
        assert await rig.people.delete(phone="+15551230001")
        assert len(rig.gallery) == 0 and rig.vault.count() == 0
        kinds = [e.kind for e in rig.vault.pending_events()]
        assert "deleted" in kinds and "enrolled" not in kinds and "identified" not in kinds  # theirs purged
        assert kinds.count("unknown") >= 1  # the stranger's decision is still owed to the controller
        decision = await present(rig, events, PERSON)
        assert decision.outcome == "unknown"
    # the log outlives the deletion (on disk, in journald): it never named the person
    lines = [JsonFormatter().format(r) for r in caplog.records]
    logged = {r.getMessage() for r in caplog.records}
    assert {"person enrolled", "enrolment", "enrolment found the palm enrolled", "decision", "person deleted"} <= logged
    assert not [line for line in lines if result.person_id in line]
    assert rig.metrics.percentiles("palmnode_identify_latency_ms", outcome="identified")[50] > 0
    # the latency budgets are the gate bench's, not timed assertions here
    print("decision latencies (ms):", [round(x) for x in latencies])


async def test_misplaced_hands_get_feedback_and_no_silent_gate(rig, nursery, threshold):
    await start_identify(rig, nursery, threshold)
    async with rig.node.bus.subscribe(Decision, Feedback, buffer=1024) as events:
        # too close: the sensor's blind zone saturates it; nothing is captured, the person is told
        async with trio.open_nursery() as hands:
            hands.start_soon(lambda: hover(rig.gate, PERSON, distance_mm=80, seconds=1.0))
            said = await next_of(events, Feedback)
        assert said.message == "move your hand a little higher"
        # too far, above the window: told to come closer
        async with trio.open_nursery() as hands:
            hands.start_soon(lambda: hover(rig.gate, PERSON, distance_mm=420, seconds=1.0))
            said = await next_of(events, Feedback)
        assert said.message == "move your hand a little closer"
        # in the sensor's window but too small for the camera (a hand held at the window's far
        # edge, the sensor seeing the wrist): the ROI says so, and the decision is a retry
        async with trio.open_nursery() as hands:
            hands.start_soon(small_in_camera, rig.gate, PERSON)
            said = await next_of(events, Feedback)
            decision = await next_of(events, Decision)
        assert said.message == "move your hand a little closer"
        assert decision.outcome == "retry" and decision.reason == "move your hand a little closer"
    assert rig.metrics.value("palmnode_retries_total", reason="too_far") >= 1


async def test_camera_pulled_mid_capture_gives_a_retry_with_reason_then_the_gate_recovers(rig, nursery, threshold):
    await enrol_person(rig, nursery, threshold, PERSON)
    flow = await start_identify(rig, nursery, threshold)
    real_lit_frame = rig.capturer._lit_frame
    pulled = trio.Event()

    async def pull_camera_after_the_nir_frame(channel, level, previous):
        if channel == "surface" and not pulled.is_set():
            pulled.set()
            nursery.start_soon(rig.gate.camera.unplug, 1.0)
            await rig.gate.camera._down.wait()  # the emulator has dropped the stream
        return await real_lit_frame(channel, level, previous)

    rig.capturer._lit_frame = pull_camera_after_the_nir_frame
    async with rig.node.bus.subscribe(Decision, buffer=256) as events:
        decision = await present(rig, events, PERSON, times=1)
        assert pulled.is_set()
        assert decision.outcome == "retry" and decision.reason.startswith("camera"), decision
        assert "\n" not in decision.reason
        rig.capturer._lit_frame = real_lit_frame
        await rig.gate.camera.replugged()
        await wait_for(lambda: rig.node.frames.camera is not None, timeout=5.0)
        assert flow.state.value in ("waiting", "leaving")
        decision = await present(rig, events, PERSON, until="identified")
        assert decision.outcome == "identified", decision


class StuckGallery(Gallery):
    """A gallery whose searches hang (a stuck search, as a wedged core would) until their caller
    gives up on them, while ``stuck``: then they run as the real gallery's do."""

    def __init__(self):
        super().__init__()
        self.stuck = True
        self.given_up = 0

    def search(self, probe, k=5, *, stop=None):
        if self.stuck:
            if not stop.wait(timeout=10.0):   # never woken: the flow lost the search
                raise AssertionError("the flow never stopped a search it gave up on")
            self.given_up += 1
            raise SearchCancelled("search cancelled")
        return super().search(probe, k, stop=stop)


async def test_a_search_that_hangs_is_a_retry_and_stopped_then_the_gate_serves_on(rig, nursery, threshold):
    rig.gallery = StuckGallery()
    await start_identify(rig, nursery, threshold, policy={"match_timeout_s": 0.2})
    async with rig.node.bus.subscribe(Decision, buffer=256) as events:
        decision = await present(rig, events, STRANGER, session=1, times=1)
        assert decision.outcome == "retry" and decision.reason == "search timed out", decision
        await wait_for(lambda: rig.gallery.given_up >= 1, timeout=5.0)  # a search given up on was told to stop
        assert rig.metrics.value("palmnode_retries_total", reason="timeout") >= 1
        rig.gallery.stuck = False
        decision = await present(rig, events, STRANGER, session=1)
        assert decision.outcome == "unknown", decision


async def test_the_first_palm_held_up_again_for_the_second_is_refused_with_words(rig, nursery, threshold):
    """Asked for the left palm after the right, the person holds up the right one again: those
    captures are refused ("that is your right palm") rather than stored as the left palm (the
    enrolment completed before with the right palm under both names), and the left palm, once
    presented, is enrolled."""
    enrol = EnrolFlow(rig.node.bus, rig.capturer, rig.gallery, rig.people, metrics=rig.metrics,
                      policy=EnrolPolicy(agree_threshold=threshold, duplicate_threshold=threshold))
    await nursery.start(enrol.run)
    hand, told = ["right"], []
    lift = trio.Event()

    async def person(request, events) -> None:
        nonlocal lift

        async def listen() -> None:
            async for ev in events:
                if ev.step == "capture" and ev.detail.startswith("that is your"):
                    told.append(ev.detail)
                    hand[0] = "left"        # corrected, the person holds up the other hand
                if ev.step == "again" or ev.detail.endswith("palm captured"):
                    lift.set()

        async with trio.open_nursery() as inner:
            inner.start_soon(listen)
            while not request.done.is_set():
                lift = trio.Event()
                with trio.move_on_after(5):
                    async with trio.open_nursery() as hovering:
                        hovering.start_soon(lambda: hover(rig.gate, PERSON, hand=hand[0], seconds=1.2))
                        await lift.wait()
                        hovering.cancel_scope.cancel()
                await trio.sleep(0.4)   # away until the gate has seen the hand go
            inner.cancel_scope.cancel()

    async with rig.node.bus.subscribe(EnrolProgress, buffer=1024) as events:
        request = enrol.begin("+15551230001", ["right", "left"])
        await next_of(events, EnrolProgress, where=lambda ev: ev.step == "card")
        nursery.start_soon(rig.gate.apply, sc.Card(at=0.0, kind="emv", pan="4111111111111111", seconds=1.0))
        with trio.fail_after(40):
            async with trio.open_nursery() as hands:
                hands.start_soon(person, request, events)
                result = await request.wait()
    assert result.ok, result
    assert told and told[0] == "that is your right palm: hold your left palm over the gate", told
    stored = {palm.palm: palm.templates for palm in rig.vault.get(result.person_id).palms}
    right, left = stored["right"], stored["left"]
    assert max(matcher.match(r, l).fused for r in right for l in left) < threshold
    assert len(rig.gallery) == 2


@pytest.mark.parametrize("first, answer", [
    ("badge", "that is not a payment card: tap your payment card on the reader"),
    ("taken away", "the card was not read: tap it again and hold it still on the reader"),
])
async def test_a_wrong_first_tap_is_answered_and_the_payment_card_tapped_next_is_read(rig, nursery, threshold,
                                                                                     first, answer):
    """Asked for a payment card, the person taps a badge (an access or loyalty card, no payment
    application), or takes the payment card away halfway through its read: told so at once
    (nothing was said, the person left waiting for "no card" after card_timeout_s), and the
    payment card tapped next is read."""
    enrol = EnrolFlow(rig.node.bus, rig.capturer, rig.gallery, rig.people, metrics=rig.metrics,
                      policy=EnrolPolicy(agree_threshold=threshold, duplicate_threshold=threshold))
    await nursery.start(enrol.run)
    visa = sc.Card(at=0.0, kind="emv", pan="4111111111111111", seconds=0.5)
    async with rig.node.bus.subscribe(EnrolProgress, buffer=256) as events:
        request = enrol.begin("+15551230001", ["right"])
        await next_of(events, EnrolProgress, where=lambda ev: ev.step == "card")
        if first == "badge":
            await rig.gate.apply(sc.Card(at=0.0, kind="badge", seconds=0.5))   # tapped, lifted
        else:
            rig.gate.card_reader.remove_card_after(2)   # gone after PPSE and SELECT AID
            await rig.gate.apply(visa)
        said = await next_of(events, EnrolProgress, where=lambda ev: ev.step != "capture")
        assert (said.step, said.detail) == ("card", answer) and enrol.state.value == "card"
        nursery.start_soon(rig.gate.apply, visa)
        said = await next_of(events, EnrolProgress, where=lambda ev: ev.step != "capture")
        assert (said.step, said.detail) == ("card", "card …1111 read")
        assert enrol.cancel()
        assert (await request.wait()).reason == "cancelled"


async def test_an_expired_card_is_refused_with_words_and_the_person_enrols_with_another(rig, nursery, threshold):
    """Enrolment took any payment card the reader read, one past its expiry month too (the reader
    reads the expiry, YYMM). Now, on the gate's local date, a card expired is refused with words
    and the flow waits for another tap; the person enrols with the card tapped next, and nothing
    of the refused card is stored. The last day of the expiry month is still valid."""
    today = datetime.date(2027, 3, 1)
    enrol = EnrolFlow(rig.node.bus, rig.capturer, rig.gallery, rig.people, metrics=rig.metrics,
                      policy=EnrolPolicy(agree_threshold=threshold, duplicate_threshold=threshold),
                      today=lambda: today)
    await nursery.start(enrol.run)
    expired = sc.Card(at=0.0, kind="emv", pan="5555555555554444", expiry="2702", seconds=0.5)
    valid = sc.Card(at=0.0, kind="emv", pan="4111111111111111", expiry="2703", seconds=0.5)
    async with rig.node.bus.subscribe(EnrolProgress, PaymentCardRead, buffer=256) as events:
        request = enrol.begin("+15551230001", ["right"])
        await next_of(events, EnrolProgress, where=lambda ev: ev.step == "card")
        await rig.gate.apply(expired)                         # played as a scenario's card step
        refused = await next_of(events, PaymentCardRead)
        said = await next_of(events, EnrolProgress, where=lambda ev: ev.step != "capture")
        assert (said.step, said.detail) == ("card", "that card has expired: tap another payment card")
        assert enrol.state.value == "card"
        nursery.start_soon(rig.gate.apply, valid)
        taken = await next_of(events, PaymentCardRead)
        said = await next_of(events, EnrolProgress, where=lambda ev: ev.step != "capture")
        assert (said.step, said.detail) == ("card", "card …1111 read")
        with trio.fail_after(15):
            async with trio.open_nursery() as hands:
                hands.start_soon(lambda: hold_palms(rig.gate, rig.node.bus, PERSON, request.done, seconds=1.0))
                result = await request.wait()
    assert result.ok, result
    assert rig.vault.get(result.person_id).card.digest == taken.token.digest
    assert rig.vault.find_by_card(refused.token.digest) is None and rig.vault.count() == 1


async def test_a_hand_lifted_too_little_after_again_is_reminded(rig, nursery, threshold):
    """Asked to lift the hand and present it again, the person lifts it a little, to where the
    sensor still counts it present (between far_mm and release_mm): reminded to lift it higher
    (the enrolment waited in silence until the palm timeout failed it, "not captured in time")."""
    enrol = EnrolFlow(rig.node.bus, rig.capturer, rig.gallery, rig.people, metrics=rig.metrics,
                      policy=EnrolPolicy(agree_threshold=threshold, duplicate_threshold=threshold,
                                         lift_reminder_s=1.0, palm_timeout_s=6.0))
    await nursery.start(enrol.run)
    gate = rig.gate
    async with rig.node.bus.subscribe(EnrolProgress, buffer=1024) as events:
        request = enrol.begin(None, ["right"], card_required=False)
        gate.hand.present(PERSON, session=1, hand="right")
        try:
            gate.hand.distance_mm = 150
            gate.proximity.set_target(150)
            asked = await next_of(events, EnrolProgress, where=lambda ev: ev.step == "again")
            gate.hand.distance_mm = 325     # lifted, but not out of the window (release_mm 340)
            gate.proximity.set_target(325)
            said = await next_of(events, EnrolProgress, where=lambda ev: ev.step != "capture")
        finally:
            gate.proximity.set_target(None)
            gate.hand.absent()
    assert (said.step, said.detail) == ("again", "lift your hand higher, then hold your right palm over the gate again")
    assert said.at - asked.at < 2.0 and enrol.state.value == "palm"
    assert enrol.cancel() and (await request.wait()).reason == "cancelled"


async def test_a_retry_after_a_search_that_timed_out_asks_the_person_to_present_again(rig, nursery, threshold):
    """A decision that ends in a retry because the search timed out (or no lit pair came) had no
    words for the person: the gate fell silent, then said "please take your hand away" after
    leave_timeout_s. Now they are asked to present the palm again, as after a near miss."""
    rig.gallery = StuckGallery()
    await start_identify(rig, nursery, threshold, policy={"match_timeout_s": 0.2})
    async with rig.node.bus.subscribe(Decision, Feedback, buffer=256) as events:
        async with trio.open_nursery() as hands:
            hands.start_soon(lambda: hover(rig.gate, STRANGER, session=1, seconds=1.5))
            decision = await next_of(events, Decision)
            said = await next_of(events, Feedback, where=lambda ev: ev.message != "hold still")
    assert decision.outcome == "retry" and decision.reason == "search timed out", decision
    assert said.message == "please lift your hand and hold your palm over the gate again"
    assert said.at - decision.at < 0.5


async def test_a_person_deleted_while_their_hand_is_searched_is_not_recognised(rig, nursery, threshold, monkeypatch):
    """The delete lands after the search has found the person (its snapshot still held them) and
    before the decision: the gate must not open for someone who has just asked to be forgotten."""
    _, result, _, _ = await enrol_person(rig, nursery, threshold, PERSON)
    search, deleted = rig.gallery.search, []

    def search_then_delete(probe, k=5, *, stop=None):
        found = search(probe, k, stop=stop)
        if not deleted and any(c.person_id == result.person_id for c in found):  # found: now deleted
            deleted.append(trio.from_thread.run(lambda: rig.people.delete(person_id=result.person_id)))
        return found

    monkeypatch.setattr(rig.gallery, "search", search_then_delete)
    await start_identify(rig, nursery, threshold)
    async with rig.node.bus.subscribe(Decision, GateOpened, buffer=256) as events:
        decision = await present(rig, events, PERSON)     # the first decision other than a retry
        opened = await drained(events)
    assert deleted == [result.person_id], "the search never found the person: the test did not run its race"
    assert decision.outcome == "unknown" and decision.person_id is None, decision
    assert not [ev for ev in opened if isinstance(ev, GateOpened)]
    assert len(rig.gallery) == 0 and rig.vault.count() == 0


@pytest.mark.parametrize("named_by", ["card", "phone"])
async def test_deleting_the_card_or_phone_of_an_enrolment_in_progress_cancels_it(rig, nursery, threshold, named_by):
    """An operator deletes a person by card or phone while that person's enrolment runs at the
    gate: the deletion found no one (not stored yet), the enrolment went on and stored them, the
    person who asked to be forgotten enrolled. Now the enrolment is cancelled at once, the person
    told so, nothing of it kept, and the deletion says it cancelled an enrolment."""
    enrol = EnrolFlow(rig.node.bus, rig.capturer, rig.gallery, rig.people, metrics=rig.metrics,
                      policy=EnrolPolicy(agree_threshold=threshold, duplicate_threshold=threshold))
    await nursery.start(enrol.run)
    async with rig.node.bus.subscribe(EnrolProgress, PaymentCardRead, buffer=256) as events:
        request = enrol.begin("+15551230001", ["right"])
        await next_of(events, EnrolProgress, where=lambda ev: ev.step == "card")
        nursery.start_soon(rig.gate.apply, sc.Card(at=0.0, kind="emv", pan="4111111111111111", seconds=1.0))
        tapped = await next_of(events, PaymentCardRead)
        await next_of(events, EnrolProgress, where=lambda ev: ev.step == "palm")
        with trio.fail_after(15):
            async with trio.open_nursery() as hands:   # the person goes on holding the palm
                hands.start_soon(lambda: hold_palms(rig.gate, rig.node.bus, PERSON, request.done, seconds=1.0))
                await next_of(events, EnrolProgress, where=lambda ev: ev.step in ("capture", "again"))
                named = {"card_digest": tapped.token.digest} if named_by == "card" else {"phone": "+1 555 123 0001"}
                forgotten = await rig.people.forget(**named)
                result = await request.wait()
        told = await next_of(events, EnrolProgress, where=lambda ev: ev.step not in ("capture", "again", "palm"))
    assert forgotten == Forgotten(None, enrolment_cancelled=True)
    assert not result.ok and result.reason == CANCELLED_BY_DELETION, result
    assert (told.step, told.detail) == ("cancelled", CANCELLED_BY_DELETION)
    assert rig.vault.count() == 0 and len(rig.gallery) == 0 and rig.vault.pending_events() == []
    assert rig.metrics.value("palmnode_enrolments_total", result="cancelled") == 1
    assert enrol.state.value == "idle"
    again = enrol.begin("+15551230001", ["right"])       # the gate is free, the next one not cancelled by it
    assert await rig.people.forget(phone="+15551230002") == Forgotten(None, False)
    assert enrol.cancel() and (await again.wait()).reason == "cancelled"


async def test_a_deletion_during_the_duplicate_check_cancels_a_linking_enrolment(rig, nursery, threshold, monkeypatch):
    """The deletion lands while the enrolment's duplicate check runs (a worker thread: the flow
    reaches its "linked" answer without another checkpoint): the enrolment is cancelled, not
    answered as linked to the existing person."""
    _, first, _, _ = await enrol_person(rig, nursery, threshold, PERSON)
    assert first.ok, first
    search, deleted, answered = rig.gallery.search, [], threading.Event()

    async def delete() -> None:   # the operator's request: a task of its own, as the link's or the REPL's
        deleted.append(await rig.people.forget(phone="+15551230002"))
        answered.set()

    def search_then_delete(probe, k=5, *, stop=None):
        found = search(probe, k, stop=stop)
        if not answered.is_set():
            trio.from_thread.run_sync(nursery.start_soon, delete)
            assert answered.wait(5.0)
        return found

    monkeypatch.setattr(rig.gallery, "search", search_then_delete)
    _, again, _, _ = await enrol_person(rig, nursery, threshold, PERSON, pan="5555555555554444",
                                        phone="+15551230002", expect_enrolled=False, on_duplicate="link")
    assert deleted == [Forgotten(None, enrolment_cancelled=True)], "the duplicate check never ran"
    assert not again.ok and not again.linked and again.reason == CANCELLED_BY_DELETION, again
    assert rig.vault.count() == 1 and rig.vault.get(first.person_id) is not None   # the other person stays


async def test_the_duplicate_check_searches_with_every_agreeing_capture(rig, nursery, threshold, monkeypatch):
    """The duplicate check searched the gallery with the palm's first capture only; it searches
    with all three agreeing captures now (a new person: each of them, none found)."""
    search, searched = rig.gallery.search, []

    def recording(probe, k=5, *, stop=None):
        searched.append(probe.base.to_bytes())
        return search(probe, k, stop=stop)

    monkeypatch.setattr(rig.gallery, "search", recording)
    _, result, _, _ = await enrol_person(rig, nursery, threshold, PERSON)
    assert result.ok, result
    stored = [t.to_bytes() for t in rig.vault.get(result.person_id).palms[0].templates]
    assert searched == stored   # the central capture first, then the other two


def rendered_template(seed: int) -> PalmTemplate:
    """A session-1 capture of rendered person ``seed`` as the gate makes its template."""
    nir, surface = synth.render_pair(synth.Identity.from_seed(seed),
                                     synth.sample_capture(np.random.default_rng(seed), session=1))
    probe = process_pair(FramePair(nir, surface, 0.0, 0.0))
    assert isinstance(probe, Probe), probe
    return probe.variants.base


async def test_the_duplicate_check_takes_a_second_look_at_its_candidates_other_templates(rig, nursery, threshold):
    """A palm enrolled before whose search template (the only one of its three in the gallery)
    scores low against every new capture, while its other two stored templates match them: the
    duplicate check only searched the gallery, found nothing and stored the palm a second time
    (two identities for one palm). It now takes the identify flow's second look at each
    capture's candidates (their other templates, read from the vault, less the calibrated
    penalty) and refuses the enrolment. Here the enrolled palm's search template is replaced by
    someone else's capture, so only the second look can find it."""
    _, first, _, _ = await enrol_person(rig, nursery, threshold, PERSON)
    assert first.ok, first
    person = rig.vault.get(first.person_id)
    mine, stranger = person.palms[0].templates, rendered_template(STRANGER)
    assert all(matcher.match(stranger, t).fused < threshold for t in mine)   # the search cannot find it
    assert await rig.people.apply_upsert(
        attrs.evolve(person, palms=(EnrolledPalm("right", (stranger, *mine[1:])),))) is None
    penalty = second_look_penalty(matcher.Calibration.from_json(SHIPPED_CALIBRATION.read_text()), TARGET_FMR)
    _, again, _, _ = await enrol_person(rig, nursery, threshold, PERSON, pan="5555555555554444",
                                        phone="+15551230002", expect_enrolled=False,
                                        policy={"second_look_penalty": penalty})
    assert not again.ok and again.reason == "palm already enrolled", again
    assert rig.vault.count() == 1 and len(rig.gallery) == 1


async def test_a_hand_moved_as_told_after_a_placement_retry_is_served_without_lifting_it(rig, nursery, threshold):
    """Told "move your hand a little closer" (every capture of the round too small), the person
    moves it without lifting it: the gate serves the moved hand. It used to wait for the hand to
    leave, then ask the person to take it away."""
    await start_identify(rig, nursery, threshold)
    gate = rig.gate
    async with rig.node.bus.subscribe(Decision, buffer=256) as events:
        gate.hand.present(STRANGER, session=1, hand="right")
        gate.hand.distance_mm = 340              # the sensor sees the hand in its window, the
        gate.proximity.set_target(250)           # camera a hand too small: small_in_camera's scene
        try:
            first = await next_of(events, Decision)
            gate.hand.distance_mm = 150          # moved as told, never out of the sensor's window
            decisions = [await next_of(events, Decision)]
            while decisions[-1].outcome == "retry" and len(decisions) < IdentifyPolicy.placement_rounds:
                decisions.append(await next_of(events, Decision))
        finally:
            gate.proximity.set_target(None)
            gate.hand.absent()
    assert first.outcome == "retry" and first.reason == "move your hand a little closer", first
    assert decisions[-1].outcome == "unknown", decisions


async def test_people_are_served_while_another_process_holds_the_vault_and_their_decisions_follow(
        rig, nursery, threshold):
    """Another process holds the vault's write lock (an operator's sqlite3 shell on the live vault,
    a backup). The flow wrote each decision to the outbox itself after serving the person, so every
    next person waited up to the busy timeout (5 s) behind it, and past it the decision was lost.
    Now the flow hands it to its recorder and serves on: two people identified back to back, the
    flow out of DECIDED at once each time, and both decisions in the outbox, in order, once the
    other process lets go."""
    first = await rig.people.enrol(None, None, {"right": [rendered_template(PERSON)]})
    second = await rig.people.enrol(None, None, {"right": [rendered_template(STRANGER)]})
    flow = await start_identify(rig, nursery, threshold)
    async with rig.node.bus.subscribe(Decision, buffer=256) as events, \
            rig.node.bus.subscribe(Decision, buffer=256) as every:
        with write_locked(rig.vault.path) as other:
            for person in (first, second):
                decision = await present(rig, events, PERSON if person is first else STRANGER, until="identified")
                assert decision.outcome == "identified" and decision.person_id == person.person_id, decision
                # served: on to LEAVING at once (it sat in DECIDED for the write, up to the 5 s busy timeout)
                await wait_for(lambda: flow.state is not IdentifyState.DECIDED, timeout=2)
            assert [e.kind for e in rig.vault.pending_events()] == ["enrolled", "enrolled"]  # nothing written yet
            other.execute("COMMIT")
            await wait_for(lambda: flow.recorder.waiting == 0, timeout=2)
        decided = [(d.outcome, d.person_id, round(d.latency_ms, 1)) for d in await drained(every)
                   if d.outcome != "retry"]
    recorded = [(e.kind, e.data.get("person_id"), e.data["latency_ms"]) for e in rig.vault.pending_events()
                if e.kind != "enrolled"]
    assert recorded == decided and recorded[-1][:2] == ("identified", second.person_id), recorded
    assert flow.recorder.unrecorded == {}
