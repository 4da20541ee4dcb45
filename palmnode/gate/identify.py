"""The identify flow: a hand arrives → lit captures → 1:N → decision → the mode's outcome.

An explicit state machine (``IdentifyState``; every allowed move is in ``TRANSITIONS`` and made
by ``IdentifyFlow._goto``; each state has its timeout in ``IdentifyPolicy``):

    WAITING ──hand present──▶ CAPTURING ──probe──▶ MATCHING ──decisive──▶ DECIDED ──▶ LEAVING ──hand gone──▶ WAITING
                                 ▲  │ failure/undecided │                   ▲ │
                                 └──┴───────────────────┘── attempts, deadline, device down ─┘ │
                                 └──── a misplaced hand still there (placement_rounds) ───────────┘
    (the hand leaving during CAPTURING/MATCHING ends the attempt: a "retry" decision, then WAITING)

A "retry" whose captures were all refused for the hand's placement (too close, too far, moving,
partly out of view, badly lit: the person was told how to hold it) is followed by another round
(fresh burst and deadline) while the hand stays, up to ``placement_rounds`` times: a person who
moves the hand as told is served without lifting it first.

Evidence is fused across attempts: each person's score is the mean of their fused scores over
the attempts that found them, so more attempts make an impostor's lucky score rarer rather than
likelier (a max rule would raise the false-match rate with every attempt). The gallery holds one
template per palm (its search template); an attempt whose best is below the threshold takes a
second look (``second_look``): its few candidates are scored against their palm's other stored
templates too, from the vault, the best counting, less ``second_look_penalty``. The flow stops as
soon as the best mean is ≥ ``threshold`` and ``margin`` above the runner-up (identified), or
below ``threshold - unknown_margin`` (unknown), else after ``max_attempts`` or the deadline:
then a near miss (just below the threshold, or not clear of the runner-up) is a "retry" asking
for a fresh presentation — never a guess either way.

Latency: ``Decision.latency_ms`` runs from ``PresenceChanged.at`` (the proximity reading that
made the hand present: in the window, dwelled and still) to the decision (docs/flows.md).
"""
from __future__ import annotations

import enum
import functools
import logging
import math
import sqlite3
import statistics
import threading
from typing import Callable, Sequence

import attrs
import trio

from drivers.proximity.driver import Distance
from palmnode.actors import EventBus
from palmnode.biometrics import matcher
from palmnode.biometrics.gallery import Candidate, Gallery
from palmnode.biometrics.types import FailureReason, PalmTemplate
from palmnode.biometrics.variants import ProbeTemplates
from palmnode.gate.capture import Capturer, CaptureUnavailable, Probe, ProbeFailure
from palmnode.gate.events import (
    Decision,
    Feedback,
    GateOpened,
    LoyaltyMember,
    PaymentResult,
)
from palmnode.gate.modes import Charge, ChargeResult, GateModes
from palmnode.gate.presence import (
    AdvicePolicy,
    PlacementAdvisor,
    PresenceChanged,
    PresencePolicy,
)
from palmnode.gate.recorder import DecisionRecorder
from palmnode.logs import error_text, event
from palmnode.vault import VaultError

log = logging.getLogger("palmnode.gate")


class IdentifyState(enum.Enum):
    WAITING = "waiting"        # no hand (placement advice from the distance sensor)
    CAPTURING = "capturing"    # taking a lit pair and making a probe of it
    MATCHING = "matching"      # 1:N search of the probe, evidence fused
    DECIDED = "decided"        # decision published; acting on the mode (open, charge, report)
    LEAVING = "leaving"        # waiting for the hand to go before the next person


S = IdentifyState
TRANSITIONS: dict[IdentifyState, frozenset[IdentifyState]] = {
    S.WAITING: frozenset({S.CAPTURING}),
    S.CAPTURING: frozenset({S.CAPTURING, S.MATCHING, S.DECIDED, S.WAITING}),
    S.MATCHING: frozenset({S.CAPTURING, S.DECIDED, S.WAITING}),
    S.DECIDED: frozenset({S.CAPTURING, S.LEAVING, S.WAITING}),
    S.LEAVING: frozenset({S.WAITING}),
}


@attrs.frozen
class IdentifyPolicy:
    #: decision threshold on the fused score (matcher.Calibration.threshold_for(target FMR)); the
    #: default is a placeholder from development renders: ship a calibrated value
    threshold: float = 0.31
    #: the vein check: identified only when the best person's vein similarity (mean over the
    #: attempts, as the fused score) reaches this too: the calibration's vein impostor tail at
    #: ``[gate] vein_fmr`` (node.py). A print or a screen of a palm shows its lines but not its
    #: veins (docs/flows.md, "The vein check"); -inf: no check
    vein_floor: float = -math.inf
    #: identified only this far above the runner-up's fused score
    margin: float = 0.03
    #: unknown at once when the best score is this far below the threshold
    unknown_margin: float = 0.05
    #: lit pairs per presented hand at most
    max_attempts: int = 3
    #: candidates asked of the gallery per attempt (best per person)
    candidates: int = 3
    #: when an attempt's best is below the threshold, score its candidates against their palm's
    #: other stored templates too (the gallery holds only each palm's first: ``second_look``)
    second_look: bool = True
    #: a second-look score counts this much less: the calibration's threshold at the target FMR /
    #: SECOND_LOOK_TEMPLATES minus its threshold at the target FMR (``second_look_penalty``), so a
    #: candidate's other templates together pass no more often than one comparison does
    second_look_penalty: float = 0.005
    #: CAPTURING: one processed pair (≥ two frame timeouts of the capturer, which fire first);
    #: MATCHING: one search, a guard against a stuck one rather than a budget (a search that
    #: times out is retried on a fresh pair, from the start: a stranger's full search over 1M
    #: palms takes ~0.1 s on one core, docs/engine.md); the whole decision from presence
    capture_timeout_s: float = 0.9
    match_timeout_s: float = 1.0
    decision_deadline_s: float = 1.2
    #: DECIDED: the mode's outcome (the controller's answer to a charge)
    charge_timeout_s: float = 3.0
    #: LEAVING: how long a lingering hand waits before being asked to go (asked again as long)
    leave_timeout_s: float = 3.0
    #: after a retry for the hand's placement (every capture refused as too close, too far,
    #: moving...; the person was told how to hold it), more rounds for the hand still there
    placement_rounds: int = 2
    presence: PresencePolicy = PresencePolicy()
    advice: AdvicePolicy = AdvicePolicy()


@attrs.frozen
class Verdict:
    outcome: str                  # "identified" | "unknown" | "undecided"
    person_id: str | None = None
    palm: str | None = None
    score: float | None = None
    reason: str | None = None


@attrs.frozen
class AttemptTrace:
    """Where one attempt's time went (ms): when it started (since the hand became present), the
    wait for its processed pair, the 1:N search; ``result`` is "probe", a failure reason,
    "timeout" or "unavailable". The capturer's ``timings`` split the first pair further."""

    started_ms: float
    waited_ms: float
    search_ms: float
    result: str


#: the reason of a near miss (the best person just below the threshold, or too close to the
#: runner-up): a fresh presentation, in a new pose, usually settles it either way
NOT_SURE = "not sure: present your palm again"
#: the reason of an unknown whose best person's palm lines matched but whose veins did not, on
#: every attempt (IdentifyPolicy.vein_floor): what a print or a screen of that palm gives
VEINS_DIFFER = "no match: the veins differ"
#: the reasons of a retry for the hand's placement (the words the person was told)
PLACEMENT_FEEDBACK = frozenset(r.feedback for r in FailureReason)


#: templates of a palm the second look compares: the search template and the next two stored
#: (an enrolment keeps three: EnrolPolicy.captures)
SECOND_LOOK_TEMPLATES = 3


def second_look_penalty(calibration: matcher.Calibration, target_fmr: float) -> float:
    """What a second-look score is marked down by: the calibration's threshold at a third of the
    target FMR less its threshold at the target. Each of the SECOND_LOOK_TEMPLATES - 1 other
    templates then passes at FMR / SECOND_LOOK_TEMPLATES at most, so a candidate passes at under
    5/3 of the target FMR (three templates) whatever its templates are (union bound;
    docs/flows.md). Where a threshold is extrapolated, the step is at least the fitted tail's for
    that factor: both thresholds can sit at the floor of the highest impostor seen (1e-6 and 1e-7
    with the shipped calibration), and a step of 0 there would give the other templates 3x."""
    lower = target_fmr / SECOND_LOOK_TEMPLATES
    step = calibration.decision_threshold(lower) - calibration.decision_threshold(target_fmr)
    if lower * calibration.n < 10:      # decision_threshold extrapolates
        a, b = calibration.tail_fit()
        z = statistics.NormalDist().inv_cdf
        step = max(step, (z(target_fmr) - z(lower)) / b)
    return max(0.0, step)


def second_look(probe: ProbeTemplates, found: list[Candidate],
                stored: Callable[[str, str], Sequence[PalmTemplate]], penalty: float) -> list[Candidate]:
    """``found`` rescored, best first: each candidate as its best over its palm's stored templates
    (``stored(person_id, palm)``, the search template first, then up to SECOND_LOOK_TEMPLATES - 1
    others, each fused score less ``penalty``), not just the search template the gallery holds.
    Only the few candidates of one attempt get it, so an impostor's extra chances stay with them;
    blocking (vault reads): run it in a worker thread."""
    rescored = []
    for c in found:
        score = c.score
        for template in stored(c.person_id, c.palm)[1:SECOND_LOOK_TEMPLATES]:
            other = matcher.match_probe(probe, template)
            if other.fused - penalty > score.fused:
                score = attrs.evolve(other, fused=other.fused - penalty)
        rescored.append(attrs.evolve(c, score=score))
    return sorted(rescored, key=lambda c: -c.score.fused)


class Evidence:
    """Scores per person over the attempts of one presented hand (mean rule, see module doc)."""

    def __init__(self, policy: IdentifyPolicy) -> None:
        self.policy = policy
        self.attempts = 0
        self._scores: dict[str, list[float]] = {}
        self._veins: dict[str, list[float]] = {}
        self._palm: dict[str, tuple[float, str]] = {}

    def add(self, candidates: list[Candidate]) -> Verdict:
        self.attempts += 1
        for c in candidates:
            fused = float(c.score.fused)
            if not math.isfinite(fused):
                continue
            self._scores.setdefault(c.person_id, []).append(fused)
            self._veins.setdefault(c.person_id, []).append(float(c.score.vein))   # NaN: no vein compared
            if fused > self._palm.get(c.person_id, (-math.inf, ""))[0]:
                self._palm[c.person_id] = (fused, c.palm)
        return self.verdict(final=False)

    def ranking(self) -> list[tuple[str, float]]:
        means = [(pid, sum(s) / len(s)) for pid, s in self._scores.items()]
        return sorted(means, key=lambda x: (-x[1], x[0]))

    def verdict(self, *, final: bool) -> Verdict:
        p = self.policy
        ranked = self.ranking()
        if not ranked:
            return Verdict("unknown" if final or self.attempts else "undecided", reason="no match")
        (best, score), runner = ranked[0], (ranked[1][1] if len(ranked) > 1 else -math.inf)
        if score >= p.threshold and score - runner >= p.margin:
            veins = self._veins[best]
            if p.vein_floor == -math.inf or sum(veins) / len(veins) >= p.vein_floor:  # NaN (no vein compared) fails a floor
                return Verdict("identified", best, self._palm[best][1], score)
            if final:   # the lines match, the veins do not (a print, a screen): never a guess
                return Verdict("unknown", score=score, reason=VEINS_DIFFER)
            return Verdict("undecided", score=score)   # another capture: a genuine palm's veins show
        if score < p.threshold - p.unknown_margin:
            return Verdict("unknown", score=score, reason="no match")
        if final:  # close to a decision, not at one: the person is asked to present the palm again
            return Verdict("retry", score=score, reason=NOT_SURE)
        return Verdict("undecided", score=score)


class IdentifyFlow:
    """The identify actor. ``await nursery.start(flow.run)``; reads ``PresenceChanged`` and the
    proximity ``Distance`` readings from the bus, publishes ``Decision``, ``Feedback`` and the
    mode's outcome (``GateOpened`` / ``PaymentResult`` / ``LoyaltyMember``)."""

    def __init__(self, bus: EventBus, capturer: Capturer, gallery: Gallery, *, people=None,
                 modes: GateModes | None = None, charge: Charge | None = None, metrics=None,
                 policy: IdentifyPolicy = IdentifyPolicy()) -> None:
        self.bus = bus
        self.capturer = capturer
        self.gallery = gallery
        self.people = people
        self.modes = modes if modes is not None else GateModes(bus)
        self.charge = charge
        self.metrics = metrics
        self.policy = policy
        self.state = IdentifyState.WAITING
        self.state_since = 0.0
        self.decisions = 0
        self._present = False
        self._arrival: PresenceChanged | None = None
        self._arrived = trio.Event()
        self._left = trio.Event()
        self._attempt_scope: trio.CancelScope | None = None
        self._advisor = PlacementAdvisor(policy.presence, policy.advice)
        #: writes the decisions to the vault's outbox in its own task (run's nursery), so a vault
        #: another process holds never keeps the next person waiting (palmnode/gate/recorder.py)
        self.recorder = DecisionRecorder(people, metrics) if people is not None else None
        #: the attempts behind the last decision (for the REPL, the bench and docs/flows.md)
        self.last_trace: tuple[AttemptTrace, ...] = ()

    # ---- the actor ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # a restart (the supervisor's) starts afresh, whatever state the stopped run was in
        self.state, self.state_since, self._attempt_scope = S.WAITING, trio.current_time(), None
        async with self.bus.subscribe(PresenceChanged, Distance, buffer=512) as events, \
                trio.open_nursery() as nursery:
            if self.recorder is not None:
                await nursery.start(self.recorder.run)
            nursery.start_soon(self._watch, events)
            task_status.started()
            await self._serve()

    async def _watch(self, events) -> None:
        """The hand as the sensor sees it: arrivals, departures, placement advice while waiting."""
        async for ev in events:
            if isinstance(ev, PresenceChanged):
                self._present = ev.present
                if ev.present:
                    self._arrival = ev
                    self._arrived.set()
                else:
                    self._left.set()
                    if self._attempt_scope is not None:
                        self._attempt_scope.cancel()
            elif isinstance(ev, Distance):
                advice = self._advisor.update(ev.distance_mm, ev.strength, ev.at)
                if advice is not None and self.state is S.WAITING and self.capturer.reserved_by is None:
                    self._say(advice)

    async def _serve(self) -> None:
        while True:
            free_at = trio.current_time()
            arrival = await self._next_arrival()
            if self.capturer.reserved_by is not None:
                continue  # an enrolment has the gate: its hands are not ours
            await self._serve_arrival(arrival, free_at)

    async def _serve_arrival(self, arrival: PresenceChanged, free_at: float) -> None:
        """One hand, from its arrival to its leaving. The decision (a person id) is a local of this
        call only: nothing of the last person served stays while the gate waits for the next."""
        self._left = trio.Event()
        # a hand that came while the gate was busy (a charge waiting for the controller) gets
        # the whole deadline from when the gate is free for it
        decision = await self._identify(arrival, since=max(arrival.at, free_at))
        for _ in range(self.policy.placement_rounds):
            if not (decision.outcome == "retry" and decision.reason in PLACEMENT_FEEDBACK and self._present
                    and not self._left.is_set() and self.capturer.reserved_by is None):
                break
            self.decisions += 1   # the hand is still there: a moved hand is served without leaving
            decision = await self._identify(arrival, since=trio.current_time())
        self.decisions += 1
        if decision.outcome == "identified":
            await self._act(decision)
        if self.recorder is not None:  # to the controller through the outbox, written off this path
            self.recorder.record(decision)
        if decision.reason == "hand removed":
            self._goto(S.WAITING)
            return
        self._goto(S.LEAVING)
        await self._wait_leave()
        self._goto(S.WAITING)

    async def _next_arrival(self) -> PresenceChanged:
        while True:
            await self._arrived.wait()
            self._arrived = trio.Event()
            if self._present and self._arrival is not None:
                return self._arrival

    # ---- CAPTURING / MATCHING ---------------------------------------------------------------
    async def _identify(self, arrival: PresenceChanged, since: float) -> Decision:
        p = self.policy
        evidence = Evidence(p)
        verdict: Verdict | None = None
        failure: str | None = None
        told = False  # the person has heard words for the last failure
        trace: list[AttemptTrace] = []

        def note(result: str, search_ms: float = 0.0) -> None:
            trace.append(AttemptTrace(round((started - arrival.at) * 1e3, 1),
                                      round((searched - started) * 1e3, 1), round(search_ms, 1), result))

        self._goto(S.CAPTURING)   # before the deadline: one already past still decides from here
        with trio.move_on_at(since + p.decision_deadline_s) as deadline:
            self._attempt_scope = deadline
            async with self.capturer.burst(p.max_attempts) as results:
                while True:
                    self._goto(S.CAPTURING)
                    started = trio.current_time()
                    result: Probe | ProbeFailure | CaptureUnavailable | None = None
                    with trio.move_on_after(p.capture_timeout_s):
                        try:
                            result = await results.receive()
                        except trio.EndOfChannel:
                            break  # every pair of the burst was used
                    searched = trio.current_time()
                    if result is None:  # (the capturer's own frame timeout normally comes first)
                        note("timeout")
                        failure = f"camera: no lit pair within {p.capture_timeout_s:.2f} s"
                        told = False
                        self._count_retry("timeout")
                        break
                    if isinstance(result, CaptureUnavailable):
                        failure, told = str(result), True
                        note("unavailable")
                        self._count_retry("device")
                        self._say("the gate is cooling down, please try again in a minute" if result.cooling
                                  else "the gate is not ready, please try again")
                        break
                    if isinstance(result, ProbeFailure):
                        failure, told = result.feedback, True
                        note(result.reason.value)
                        self._count_retry(result.reason.value)
                        self._say(result.feedback)
                        continue
                    self._goto(S.MATCHING)
                    found, stop = None, threading.Event()
                    try:
                        with trio.move_on_after(p.match_timeout_s):
                            # the probe's variants (capture.finish): each candidate scored as its
                            # best variant, as the calibration that set the threshold was
                            found = await trio.to_thread.run_sync(
                                functools.partial(self.gallery.search, result.variants, p.candidates, stop=stop),
                                abandon_on_cancel=True)
                    finally:
                        stop.set()  # a search given up on (timeout, deadline, hand gone) frees its core
                    note("probe", (trio.current_time() - searched) * 1e3)
                    if found is None:
                        failure, told = "search timed out", False
                        self._count_retry("timeout")
                        continue
                    if p.second_look and self.people is not None and found and found[0].score.fused < p.threshold:
                        found = await trio.to_thread.run_sync(second_look, result.variants, found,
                                                              self.people.stored_templates,
                                                              p.second_look_penalty)
                    verdict = evidence.add(found)
                    if verdict.outcome != "undecided":
                        break
        self._attempt_scope = None
        self.last_trace = tuple(trace)
        left = not self._present or self._left.is_set()
        if evidence.attempts and (verdict is None or verdict.outcome == "undecided"):
            verdict = evidence.verdict(final=True)
        if verdict is not None and verdict.outcome == "identified" and verdict.person_id not in self.gallery:
            # deleted while this hand was searched (the search's snapshot still held them): a
            # person who asked to be forgotten is not recognised a moment later, nor is the
            # runner-up taken in their place (it scored below the palm's likely owner)
            verdict = Verdict("unknown", reason="no match")
        if verdict is not None and verdict.outcome != "undecided":
            return self._decide(arrival, verdict.outcome, verdict.person_id, verdict.palm, verdict.score,
                                verdict.reason)
        if left:
            reason = "hand removed"
        elif deadline.cancelled_caught:
            reason = failure or "timed out"
        else:
            reason = failure or "no usable capture"
        decision = self._decide(arrival, "retry", None, None, None, reason)
        if not left and not told:  # a timeout (search, camera, deadline): nothing said to the person yet
            self._say("please lift your hand and hold your palm over the gate again")
        return decision

    def _decide(self, arrival: PresenceChanged, outcome: str, person_id: str | None, palm: str | None,
                score: float | None, reason: str | None) -> Decision:
        self._goto(S.DECIDED)
        now = trio.current_time()
        latency_ms = (now - arrival.at) * 1e3
        decision = Decision(outcome=outcome, person_id=person_id, palm=palm, score=score, reason=reason,
                            latency_ms=latency_ms, mode=self.modes.current.mode, at=now)
        self.bus.publish(decision)
        if self.metrics is not None:
            self.metrics.observe("palmnode_identify_latency_ms", latency_ms, outcome=outcome)
            self.metrics.inc("palmnode_decisions_total", outcome=outcome)
        if outcome == "unknown":
            self._say("not recognised")
        elif outcome == "retry" and reason == "hand removed":
            self._say("hold your palm over the gate a little longer")
        elif outcome == "retry" and reason == NOT_SURE:
            self._say("please lift your hand and hold your palm over the gate again")
        return decision

    # ---- DECIDED: the mode's outcome ----------------------------------------------------------
    async def _act(self, decision: Decision) -> None:
        # the mode as decided (no checkpoint since the decision); a mode set after this stands
        mode, serial = self.modes.current, self.modes.serial
        pid = decision.person_id
        assert pid is not None
        if mode.mode == "entry":
            self.bus.publish(GateOpened(pid, trio.current_time()))
        elif mode.mode == "loyalty":
            self.bus.publish(LoyaltyMember(pid, trio.current_time()))
        elif mode.mode == "payment":
            result = await self._charge(pid, mode.amount_cents or 0, mode.currency or "")
            self.bus.publish(PaymentResult(pid, result.approved, mode.amount_cents or 0, mode.currency or "",
                                           result.reference, result.reason, trio.current_time()))
            if result.approved and mode.once:  # a basket: paid by this person, not the next one
                self.modes.paid(serial, at=trio.current_time())
            self._say("payment approved" if result.approved else f"payment declined: {result.reason}")

    async def _charge(self, person_id: str, amount_cents: int, currency: str) -> ChargeResult:
        if self.charge is None:
            return ChargeResult(False, None, "payments are not set up on this gate")
        try:
            digest = await self._card_of(person_id)
        except (VaultError, sqlite3.Error, OSError) as exc:
            event(log, "card look-up failed", error=error_text(exc))
            return ChargeResult(False, None, "card look-up failed")
        if digest is None:
            return ChargeResult(False, None, "no card on file")
        with trio.move_on_after(self.policy.charge_timeout_s):
            try:
                return await self.charge(person_id, digest, amount_cents, currency)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as exc:
                event(log, "charge failed", error=str(exc))
                return ChargeResult(False, None, "controller unavailable")
        return ChargeResult(False, None, "controller unavailable")

    async def _card_of(self, person_id: str) -> bytes | None:
        if self.people is None:
            return None
        return await self.people.card_digest(person_id)

    # ---- LEAVING ------------------------------------------------------------------------------
    async def _wait_leave(self) -> None:
        while self._present and not self._left.is_set():
            with trio.move_on_after(self.policy.leave_timeout_s):
                await self._left.wait()
                return
            if self.capturer.reserved_by is None:  # an enrolment has the gate: its words, not ours
                self._say("please take your hand away")

    # ---- helpers ------------------------------------------------------------------------------
    def _goto(self, state: IdentifyState) -> None:
        if state is not self.state and state not in TRANSITIONS[self.state]:
            raise AssertionError(f"identify flow: no transition {self.state.value} -> {state.value}")
        self.state = state
        self.state_since = trio.current_time()

    def _say(self, message: str) -> None:
        self.bus.publish(Feedback(message, trio.current_time()))

    def _count_retry(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.inc("palmnode_retries_total", reason=reason)
