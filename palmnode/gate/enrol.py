"""The enrol flow: card tap → palms (each from ≥ 3 agreeing captures) → duplicate check → persist.

An explicit state machine (``EnrolState``, moves in ``TRANSITIONS``, made by ``EnrolFlow._goto``):

    IDLE ──begin──▶ CARD ──card read──▶ PALM ──3 agreeing captures──▶ (next palm: PALM)
                     │                   │                              │
                     ▼ timeout/dup card  ▼ timeout/too many failures    ▼ last palm
                   FAILED               FAILED                       CHECKING ──dup refused──▶ FAILED
                                                                         │ new (or linked)
                                                                         ▼
                                                                      SAVING ──▶ DONE
    any state ──cancel()──▶ CANCELLED;   the whole enrolment ──timeout_s──▶ FAILED ("timed out")
    any state ──a deletion of its phone or card (People.forget)──▶ CANCELLED (CANCELLED_BY_DELETION)

In CARD a badge, a card not read, or a payment card past its expiry month (``card_expired``, on
the gate's local date: ``today``) is answered with words and the next tap is awaited; nothing of a
refused card is kept. From ``begin`` the enrolment is registered with People
(``enrolment_started``): a deletion that names its phone, or its card once read, cancels it, and
its commit is refused under People's lock, so the person who asked to be forgotten is never
stored. Every step is an ``EnrolProgress`` event with words for the person. While an enrolment runs it
holds the gate (``Capturer.reserve("enrol")``): the identify flow leaves its hands alone.

Agreement: a palm is done when ``captures`` of its good captures agree pairwise (the later
capture's probe variants against the earlier one's template, ``matcher.match_probe`` fused ≥
``agree_threshold``: the comparison the calibrated thresholds are made for); a capture that
disagrees is outvoted (the largest agreeing set wins), so one bad capture is replaced by the next
rather than spoiling the palm. The palm's templates are the agreeing captures' own (the ROI as
found, no variants), the one the others match best first (``most_central``): the first is the
palm's search template, the only one in the gallery (one entry per enrolled palm, as the 1 KiB
per palm and 1:N budgets count); the others stay in the vault for the identify flow's second
look at a near miss. The duplicate check searches the gallery with every agreeing capture's probe
variants, as the identify flow searches (``duplicate_of``): the palm is already enrolled when the
best of them reaches ``duplicate_threshold``; when none does, each capture's few best candidates
get the identify flow's second look (``identify.second_look``: their palm's other stored
templates too, marked down by ``second_look_penalty``), and the best of those counts the same.
"""
from __future__ import annotations

import datetime
import enum
import functools
import itertools
import logging
from typing import Callable, Literal, Sequence

import attrs
import trio

from drivers.card_reader.cardtoken import CardToken
from drivers.card_reader.reads import BadgeRead, CardNotRead, PaymentCardRead
from drivers.proximity.driver import Distance
from palmnode.actors import EventBus
from palmnode.biometrics import matcher
from palmnode.biometrics.gallery import Candidate, Gallery
from palmnode.biometrics.types import PalmTemplate
from palmnode.biometrics.variants import ProbeTemplates
from palmnode.gate.capture import Capturer, CaptureUnavailable, Probe
from palmnode.gate.events import EnrolProgress
from palmnode.gate.identify import second_look
from palmnode.gate.people import EnrolmentCancelled, PendingEnrolment
from palmnode.gate.presence import AdvicePolicy, PlacementAdvisor, PresenceChanged, PresencePolicy
from palmnode.logs import event
from palmnode.vault import DuplicateCard, DuplicatePhone, InvalidPhone, VaultError, normalise_phone

log = logging.getLogger("palmnode.gate")


#: the same progress words are not repeated within this many seconds
REPEAT_S = 1.0

#: the answer to an enrolment a deletion of its card or phone cancelled (``People.forget``)
CANCELLED_BY_DELETION = ("cancelled: a deletion was asked for this card or phone number; "
                         "nothing of the enrolment was kept")


class EnrolState(enum.Enum):
    IDLE = "idle"
    CARD = "card"          # waiting for a payment card tap
    PALM = "palm"          # capturing one palm
    CHECKING = "checking"  # 1:N duplicate check
    SAVING = "saving"      # vault + gallery
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


E = EnrolState
_ENDS = frozenset({E.FAILED, E.CANCELLED})
TRANSITIONS: dict[EnrolState, frozenset[EnrolState]] = {
    E.IDLE: frozenset({E.CARD, E.PALM}) | _ENDS,
    E.CARD: frozenset({E.PALM}) | _ENDS,
    E.PALM: frozenset({E.PALM, E.CHECKING}) | _ENDS,
    E.CHECKING: frozenset({E.SAVING, E.DONE}) | _ENDS,
    E.SAVING: frozenset({E.DONE}) | _ENDS,
    E.DONE: frozenset({E.IDLE}),
    E.FAILED: frozenset({E.IDLE}),
    E.CANCELLED: frozenset({E.IDLE}),
}


@attrs.frozen
class EnrolPolicy:
    #: good captures per palm that must agree pairwise
    captures: int = 3
    #: captures taken in one hover before the person is asked to lift the hand and present it
    #: again. 1: every capture from a fresh presentation, the most varied templates: a later
    #: visit's attempt then falls below the threshold about a third as often as against
    #: templates from one hover (docs/flows.md, "Enrol")
    per_hover: int = 1
    #: a palm fails after this many captures without enough agreeing ones
    max_captures: int = 10
    #: pairwise agreement and the duplicate check, on the fused score (the identify threshold)
    agree_threshold: float = 0.31
    duplicate_threshold: float = 0.31
    #: the duplicate check's second look: each capture's best ``duplicate_candidates`` palms are
    #: scored against their other stored templates too, less ``second_look_penalty`` (the
    #: identify flow's: ``identify.second_look_penalty``, set by the node from the calibration;
    #: the default is a placeholder as IdentifyPolicy's)
    duplicate_candidates: int = 3
    second_look_penalty: float = 0.005
    #: a palm already enrolled: "refuse" the enrolment, or "link" it to the existing person
    on_duplicate: Literal["refuse", "link"] = "refuse"
    #: CARD: the card tap; PALM: each palm; the whole enrolment
    card_timeout_s: float = 30.0
    palm_timeout_s: float = 20.0
    timeout_s: float = 90.0
    capture_timeout_s: float = 0.6
    #: asked to lift the hand and present it again, a hand still in the window is reminded this
    #: often (as the identify flow's ``leave_timeout_s``): lifted a little, it stays present
    #: (hysteresis) and the enrolment would wait in silence for the palm timeout
    lift_reminder_s: float = 3.0
    #: placement advice while a palm is wanted and no hand is in the window (as the identify flow)
    presence: PresencePolicy = PresencePolicy()
    advice: AdvicePolicy = AdvicePolicy()


@attrs.frozen
class EnrolResult:
    """``ok`` with the new (or, linked, the existing) person's id, else why not."""

    ok: bool
    person_id: str | None = None
    linked: bool = False
    reason: str | None = None


class EnrolBusy(Exception):
    """An enrolment is already running on this gate."""


@attrs.define(eq=False)
class EnrolRequest:
    phone: str | None
    palms: tuple[str, ...]
    card_required: bool = True
    done: trio.Event = attrs.field(factory=trio.Event)
    result: EnrolResult | None = None
    done_at: float | None = None
    scope: trio.CancelScope | None = None
    #: registered with People while it runs: a deletion of its phone or card cancels it
    pending: PendingEnrolment | None = None

    async def wait(self) -> EnrolResult:
        await self.done.wait()
        assert self.result is not None
        return self.result


def most_central(probes: list[ProbeTemplates]) -> int:
    """Index of the capture whose template the others match best (the highest sum of the other
    captures' ``match_probe`` scores against its ``.base``, as a search would score them): the
    palm's search template."""
    totals = [sum(matcher.match_probe(other, probe.base).fused for j, other in enumerate(probes) if j != i)
              for i, probe in enumerate(probes)]
    return max(range(len(probes)), key=totals.__getitem__)


def agreeing(captures: list[ProbeTemplates | PalmTemplate], threshold: float, want: int) -> list[int] | None:
    """Indices of ``want`` captures (in capture order; a bare template is a probe without
    variants) that agree pairwise (newest first preferred), or None. A pair is scored as the
    later capture's variants against the earlier capture's template (``.base``)."""
    probes = [c if isinstance(c, ProbeTemplates) else ProbeTemplates.single(c) for c in captures]
    n = len(probes)
    if n < want:
        return None
    ok = {(i, j): matcher.match_probe(probes[j], probes[i].base).fused >= threshold
          for i in range(n) for j in range(i + 1, n)}
    for combo in itertools.combinations(range(n - 1, -1, -1), want):
        if all(ok[(min(a, b), max(a, b))] for a, b in itertools.combinations(combo, 2)):
            return sorted(combo)
    return None


def card_expired(expiry: str, today: datetime.date) -> bool | None:
    """Whether a card of ``expiry`` (``YYMM``, as the card reader reports it) has expired on
    ``today``: a card is valid through the last day of its expiry month, so it has expired once
    ``today`` is in a later month. None when ``expiry`` is not a date (a month 00 or 13). Years
    are 20YY (EMV's two digits)."""
    if len(expiry) != 4 or not expiry.isdigit() or not 1 <= int(expiry[2:]) <= 12:
        return None
    return (2000 + int(expiry[:2]), int(expiry[2:])) < (today.year, today.month)


def duplicate_of(gallery: Gallery, probes: list[ProbeTemplates], threshold: float, *,
                 stored: Callable[[str, str], Sequence[PalmTemplate]] | None = None, penalty: float = 0.0,
                 candidates: int = 3) -> Candidate | None:
    """The enrolled palm one of ``probes`` (an enrolment's agreeing captures, each with its
    variants, searched as the identify flow searches, in order: each palm's most central first)
    scores at or above ``threshold`` with, or None: the palm is a duplicate when the best of its
    captures reaches the threshold. One capture alone missed a re-enrolling person's palm about
    six times as often (docs/flows.md, "Enrol").

    When no capture's search reaches it and ``stored`` is given (``People.stored_templates``),
    each capture's best ``candidates`` palms get the identify flow's second look (``second_look``:
    also scored against their palm's other stored templates, each less ``penalty``), and the
    best rescored candidate counts the same way: an old palm whose search template happens to
    score low against every new capture is found through its other templates (the searches
    alone missed 4 of 5,999 rendered re-enrolments, with the look none: docs/flows.md, "Enrol").
    Each candidate palm's templates are read once. Blocking (searches, vault reads): call it
    from a worker thread."""
    searched: list[tuple[ProbeTemplates, list[Candidate]]] = []
    for probe in probes:
        found = gallery.search(probe, candidates)
        if found and found[0].score.fused >= threshold:
            return found[0]   # found: the other captures need not be searched, nor anything read
        searched.append((probe, found))
    if stored is None:
        return None
    read = functools.cache(stored)   # a palm several captures found is read from the vault once
    for probe, found in searched:
        rescored = second_look(probe, found, read, penalty)
        if rescored and rescored[0].score.fused >= threshold:
            return rescored[0]
    return None


def links(probes: list[ProbeTemplates], template: PalmTemplate, threshold: float) -> bool:
    """Whether an enrolment's agreeing captures of a palm match an enrolled palm's search template
    well enough to link the two: the mean of their fused scores reaches ``threshold`` (the
    identify flow's mean rule: the best of several captures is likelier to reach it by chance)."""
    return sum(matcher.match_probe(probe, template).fused for probe in probes) / len(probes) >= threshold


def same_palm(probe: ProbeTemplates, earlier: dict[str, list[PalmTemplate]], threshold: float) -> str | None:
    """The palm of this enrolment already captured (``earlier``: each palm's templates) that
    ``probe`` matches (fused ≥ ``threshold`` against any of its templates), or None: the same
    hand held up again when the other one was asked for."""
    for name, templates in earlier.items():
        if any(matcher.match_probe(probe, t).fused >= threshold for t in templates):
            return name
    return None


class EnrolFlow:
    """The enrolment actor: ``await nursery.start(flow.run)``, then ``flow.begin(...)`` (from the
    controller's ``enrol.begin`` or locally) and ``flow.cancel()``."""

    def __init__(self, bus: EventBus, capturer: Capturer, gallery: Gallery, people, *, metrics=None,
                 policy: EnrolPolicy = EnrolPolicy(),
                 today: Callable[[], datetime.date] = datetime.date.today) -> None:
        self.bus = bus
        self.capturer = capturer
        self.gallery = gallery
        self.people = people
        self.metrics = metrics
        self.policy = policy
        self.today = today  # the gate's local date: a card past its expiry month is refused
        self.state = EnrolState.IDLE
        self.current: EnrolRequest | None = None
        self._send, self._receive = trio.open_memory_channel[EnrolRequest](1)
        self._present = False
        self._arrived = trio.Event()
        self._left = trio.Event()
        self._said: tuple[tuple[str, str], float] = (("", ""), 0.0)
        self._advisor = PlacementAdvisor(policy.presence, policy.advice)

    # ---- API -------------------------------------------------------------------------------
    def begin(self, phone: str | None, palms: tuple[str, ...] | list[str] = ("right",), *,
              card_required: bool = True) -> EnrolRequest:
        """Start an enrolment (answered through ``EnrolProgress`` events and the request's
        ``wait()``); :class:`EnrolBusy` if one is running."""
        palms = tuple(palms)
        if not palms or any(p not in ("left", "right") for p in palms) or len(set(palms)) != len(palms):
            raise ValueError(f"palms must be 'left' and/or 'right', each once, got {list(palms)}")
        if phone is not None:
            normalise_phone(phone)   # InvalidPhone (a ValueError) now, not after the card and the palms
        if self.current is not None:
            raise EnrolBusy("an enrolment is already running on this gate: cancel it first")
        request = EnrolRequest(phone, palms, card_required)
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            raise EnrolBusy("an enrolment is already waiting to start on this gate") from None
        self.current = request
        if self.people is not None:  # from now on a deletion of this phone (then card) cancels it
            request.pending = self.people.enrolment_started(phone, lambda: self._cancel(request))
        return request

    def cancel(self) -> bool:
        """Cancel the running enrolment; False if none runs."""
        request = self.current
        if request is None:
            return False
        self._cancel(request)
        return True

    @staticmethod
    def _cancel(request: EnrolRequest) -> None:
        if request.scope is None:  # not started yet: it will start cancelled
            request.scope = trio.CancelScope()
        request.scope.cancel()

    # ---- the actor ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.bus.subscribe(PresenceChanged, Distance, buffer=512) as sensor, \
                trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, sensor)
            task_status.started()
            async for request in self._receive:
                await self._serve(request)
                del request  # the last one served (their phone number, their person id) is not kept until the next

    async def _watch(self, events) -> None:
        """The hand as the sensor sees it; while a palm is wanted, placement advice as progress."""
        async for ev in events:
            if isinstance(ev, PresenceChanged):
                self._present = ev.present
                (self._arrived if ev.present else self._left).set()
            else:
                advice = self._advisor.update(ev.distance_mm, ev.strength, ev.at)
                if advice is not None and self.state is E.PALM and not self._present:
                    self._progress("capture", advice)

    async def _serve(self, request: EnrolRequest) -> None:
        if request.scope is None:
            request.scope = trio.CancelScope()
        result = EnrolResult(False, reason="cancelled")
        started = trio.current_time()
        try:
            with request.scope, self.capturer.reserve("enrol"):
                with trio.move_on_after(self.policy.timeout_s) as overall:
                    result = await self._enrol(request)
                if overall.cancelled_caught:
                    result = EnrolResult(False, reason="timed out")
        except RuntimeError as exc:  # the gate is reserved by someone else
            result = EnrolResult(False, reason=str(exc))
        except Exception:  # a bug must not leave the request unanswered and the gate refusing the next
            log.exception("enrolment ended by an error")
            result = EnrolResult(False, reason="the gate had an error: please start again")
        except BaseException:  # the actor stopped (a supervisor restart): answered, and the restarted gate free
            self._answer(request, EnrolResult(False, reason="the gate restarted: please start again"), started)
            raise
        self._answer(request, result, started)

    def _answer(self, request: EnrolRequest, result: EnrolResult, started: float) -> None:
        pending, request.pending = request.pending, None
        if pending is not None:
            if pending.cancelled and not result.ok:  # however it stopped, a deletion asked for it
                result = EnrolResult(False, reason=CANCELLED_BY_DELETION)
            self.people.enrolment_ended(pending)
        if not result.ok:
            cancelled = (result.reason or "").startswith("cancelled")
            self._goto(E.CANCELLED if cancelled else E.FAILED)
            self._progress("cancelled" if cancelled else "failed", result.reason or "failed")
            if self.metrics is not None:
                self.metrics.inc("palmnode_enrolments_total", result="cancelled" if cancelled else "failed")
        event(log, "enrolment", ok=result.ok, linked=result.linked,
              reason=result.reason, seconds=round(trio.current_time() - started, 2))
        self._goto(E.IDLE)
        self.current = None
        request.result = result
        request.done_at = trio.current_time()
        request.done.set()

    async def _enrol(self, request: EnrolRequest) -> EnrolResult:
        p = self.policy
        card: CardToken | None = None
        self._progress("started", "enrolment started")
        if request.card_required:
            self._goto(E.CARD)
            self._progress("card", "tap your payment card on the reader")
            with trio.move_on_after(p.card_timeout_s):
                card = await self._card()
            if card is None:
                return EnrolResult(False, reason="no card")
            if request.pending is not None:  # from now on a deletion of this card cancels it
                request.pending.card_digest = card.digest
            if await self.people.find_by_card(card.digest) is not None:
                return EnrolResult(False, reason="card already enrolled")
            self._progress("card", f"card …{card.last4} read")
        if request.phone is not None and self.people is not None and \
                await self.people.find_by_phone(request.phone) is not None:
            return EnrolResult(False, reason="phone number already enrolled")   # before any palm is asked
        palms: dict[str, list[PalmTemplate]] = {}
        captures: dict[str, list[ProbeTemplates]] = {}  # every agreeing capture of each palm: the duplicate check
        for palm in request.palms:
            self._goto(E.PALM)
            captured = None
            with trio.move_on_after(p.palm_timeout_s):
                captured = await self._palm(palm, palms)
            if captured is None:
                return EnrolResult(False, reason=f"{palm} palm not captured in time")
            if isinstance(captured, str):
                return EnrolResult(False, reason=captured)
            palms[palm] = [c.base for c in captured]
            captures[palm] = captured
        self._goto(E.CHECKING)
        duplicate = await self._duplicate(captures)
        link = duplicate is not None and p.on_duplicate == "link" and await self._same_person(duplicate, captures)
        if request.pending is not None and request.pending.cancelled:
            # a deletion landed during the search (threads: no checkpoint after them on the way to "linked")
            return EnrolResult(False, reason=CANCELLED_BY_DELETION)
        if duplicate is not None:
            if link:
                self._progress("duplicate", "this palm is already enrolled: linked to that enrolment")
                self._goto(E.DONE)
                self._progress("done", "already enrolled")
                if self.metrics is not None:
                    self.metrics.inc("palmnode_enrolments_total", result="linked")
                return EnrolResult(True, person_id=duplicate[1].person_id, linked=True)
            self._progress("duplicate", "this palm is already enrolled")
            return EnrolResult(False, reason="palm already enrolled")
        self._goto(E.SAVING)
        try:
            person = await self.people.enrol(card, request.phone, palms, pending=request.pending)
        except EnrolmentCancelled:  # a deletion came just before the commit: nothing was written
            return EnrolResult(False, reason=CANCELLED_BY_DELETION)
        except DuplicateCard:
            return EnrolResult(False, reason="card already enrolled")
        except DuplicatePhone:
            return EnrolResult(False, reason="phone number already enrolled")
        except InvalidPhone:
            return EnrolResult(False, reason="phone number is not valid")
        except VaultError as exc:
            return EnrolResult(False, reason=f"could not save: {exc}")
        self._goto(E.DONE)
        self._progress("done", "you are enrolled")
        return EnrolResult(True, person_id=person.person_id)

    async def _card(self) -> CardToken:
        async with self.bus.subscribe(PaymentCardRead, BadgeRead, CardNotRead, buffer=8) as cards:
            while True:
                read = await cards.receive()
                if isinstance(read, PaymentCardRead):
                    expired = card_expired(read.expiry, self.today())
                    if expired is False:
                        return read.token
                    # refused, and nothing of it kept while the person taps another (nor logged: no expiry)
                    del read
                    event(log, "enrolment card refused", reason="expired" if expired else "expiry not a date")
                    self._progress("card", "that card has expired: tap another payment card" if expired else
                                   "that card's expiry date cannot be read: tap another payment card")
                # told at once, not left waiting for the card timeout
                elif isinstance(read, CardNotRead):
                    self._progress("card", "the card was not read: tap it again and hold it still on the reader")
                else:  # a badge: an access or loyalty card
                    self._progress("card", "that is not a payment card: tap your payment card on the reader")

    async def _palm(self, palm: str, earlier: dict[str, list[PalmTemplate]]) -> list[ProbeTemplates] | str:
        """Good captures of ``palm`` (each as its probe variants, ``.base`` the template to store)
        until ``captures`` agree, the most central first; a string says why it failed. A capture
        of a palm already captured in this enrolment (``earlier``) is refused with words."""
        p = self.policy
        good: list[ProbeTemplates] = []
        taken = 0
        in_hover = 0
        self._progress("palm", f"hold your {palm} palm over the gate")
        while taken < p.max_captures:
            if not self._present:
                await self._wait_arrival()
                in_hover = 0
            result = None
            with trio.move_on_after(p.capture_timeout_s):
                try:
                    result = await self.capturer.capture_probe()
                except CaptureUnavailable as exc:
                    self._progress("capture", "the gate is cooling down, please wait" if exc.cooling
                                   else "the gate is not ready, please wait")
                    event(log, "enrol capture unavailable", error=str(exc))
                    await trio.sleep(0.5)  # the device is being reopened by its supervisor
                    continue
            if result is None:
                continue
            if not isinstance(result, Probe):
                self._progress("capture", result.feedback)
                continue
            taken += 1
            in_hover += 1
            same = await trio.to_thread.run_sync(same_palm, result.variants, earlier, p.agree_threshold)
            if same is not None:
                self._progress("capture", f"that is your {same} palm: hold your {palm} palm over the gate")
            else:
                good.append(result.variants)
                chosen = await trio.to_thread.run_sync(agreeing, good, p.agree_threshold, p.captures)
                if chosen is not None:
                    agreed = [good[i] for i in chosen]
                    central = await trio.to_thread.run_sync(most_central, agreed)
                    self._progress("palm", f"{palm} palm captured")
                    return [agreed[central], *agreed[:central], *agreed[central + 1:]]
                self._progress("capture", f"{palm} palm: {len(good)} of {p.captures}")
            if in_hover >= p.per_hover:
                self._progress("again", f"lift your hand, then hold your {palm} palm over the gate again")
                await self._wait_leave(f"lift your hand higher, then hold your {palm} palm over the gate again")
                in_hover = 0
        return f"{palm} palm: captures did not agree"

    async def _duplicate(self, captures: dict[str, list[ProbeTemplates]]) -> tuple[str, Candidate] | None:
        """(the palm of this enrolment, the enrolled palm it matched) when one of these palms is
        already enrolled (the best of its agreeing captures, then their candidates' second look:
        ``duplicate_of``), or None."""
        p = self.policy
        stored = self.people.stored_templates if self.people is not None else None
        for palm, probes in captures.items():
            found = await trio.to_thread.run_sync(functools.partial(
                duplicate_of, self.gallery, probes, p.duplicate_threshold, stored=stored,
                penalty=p.second_look_penalty, candidates=p.duplicate_candidates))
            if found is not None:
                event(log, "enrolment found the palm enrolled", score=round(found.score.fused, 4),
                      threshold=round(p.duplicate_threshold, 4))
                return palm, found
        return None

    async def _same_person(self, duplicate: tuple[str, Candidate], captures: dict[str, list[ProbeTemplates]]) -> bool:
        """Whether a duplicate may be linked: linking says "this is that person", so it takes the
        identify flow's rule (the mean over the captures reaches the threshold: ``links``), not the
        best capture alone, which is enough to refuse."""
        palm, found = duplicate
        stored = await trio.to_thread.run_sync(self.people.stored_templates, found.person_id, found.palm)
        if stored and await trio.to_thread.run_sync(links, captures[palm], stored[0], self.policy.duplicate_threshold):
            return True
        event(log, "enrolment not linked: its captures' mean is below the threshold (refused instead)")
        return False

    async def _wait_arrival(self) -> None:
        while not self._present:
            self._arrived = trio.Event()
            await self._arrived.wait()

    async def _wait_leave(self, reminder: str) -> None:
        while self._present:
            self._left = trio.Event()
            with trio.move_on_after(self.policy.lift_reminder_s):
                await self._left.wait()
            if self._present:
                self._progress("again", reminder)

    # ---- helpers -----------------------------------------------------------------------------
    def _goto(self, state: EnrolState) -> None:
        if state is not self.state and state not in TRANSITIONS[self.state]:
            raise AssertionError(f"enrol flow: no transition {self.state.value} -> {state.value}")
        self.state = state

    def _progress(self, step: str, detail: str) -> None:
        now = trio.current_time()
        if (step, detail) == self._said[0] and now - self._said[1] < REPEAT_S:
            return  # the same words again and again (a hand held too far, say) are said once a while
        self._said = ((step, detail), now)
        self.bus.publish(EnrolProgress(step, detail, now))
