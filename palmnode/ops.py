"""The node's side of the store-controller link (docs/protocols/controller.md).

* :meth:`NodeOps.handle` serves the controller's requests (enrol, delete, replication, mode,
  status, metrics);
* :meth:`NodeOps.sync` runs on every connect: the changes made while this node was away;
* :meth:`NodeOps.charge` asks the controller to charge a person's card (payment mode);
* :meth:`NodeOps.report` (an actor) turns device health into outbox events, which the link
  delivers at least once (decisions go there from the identify flow).
"""
from __future__ import annotations

import functools
import json
import logging
import sqlite3
import uuid
from typing import TYPE_CHECKING, Any

import trio

from palmnode.actors import ChildContext, DeviceState, DeviceStateChanged
from palmnode.gate.enrol import EnrolBusy
from palmnode.gate.modes import ChargeResult, GateMode
from palmnode.link.client import BadAnswer, RequestRefused, UnknownOp
from palmnode.link.messages import MAX_ID, one_line
from palmnode.link.wire import DIGEST_SIZE, WireError, person_from_wire
from palmnode.logs import error_text, event
from palmnode.vault import VaultBusy, VaultError
from palmnode.vault.records import MAX_PERSON_ID
from palmnode.vault.steps import STEP_S, in_vault_steps

if TYPE_CHECKING:
    from palmnode.node import Node

log = logging.getLogger("palmnode.ops")

SYNC_STATE = "controller_sync_cursor"  # vault state key: where the last sync ended
CHARGE_STATE = "charge_in_flight"  # vault state key: the charge awaiting its answer ("" when none)
SYNC_LIMIT = 100  # §5 sync: changes asked for a page
MAX_CURSOR = 1024  # §5 sync: a string cursor's characters at most (it is stored in the vault)


def _person_id_error(value: object) -> str | None:
    """Why ``value`` is not a person id (a non-empty string of at most 128 characters), or None."""
    if not isinstance(value, str) or not value:
        return "person_id must be a non-empty string"
    if len(value) > MAX_PERSON_ID:
        return f"person_id must be a non-empty string of at most {MAX_PERSON_ID} characters"
    return None


def _cursor_error(value: object) -> str | None:
    if value is None or (type(value) is int and 0 <= value <= MAX_ID):
        return None
    if isinstance(value, str):
        return None if len(value) <= MAX_CURSOR else f"a cursor of {len(value)} characters (at most {MAX_CURSOR})"
    got = one_line(repr(value), 40) if type(value) is int else type(value).__name__
    return f"the cursor must be nil, an int 0..2**63-1 or a string, got {got}"


def _shown(cursor: object) -> str:
    return one_line(repr(cursor), 40)


class _SyncRun:
    """The pages of one catch-up, checked before any of a page is applied (docs/protocols/controller.md
    §5 sync): a page that contradicts the ones before it is refused, so a lying controller can
    neither loop the gate for ever nor take its cursor backwards within a catch-up."""

    def __init__(self) -> None:
        self.pages = 0
        self.previous: object = None
        self.seen: set[object] = set()  # the cursors this catch-up's pages answered

    def check(self, answer: dict, asked: object) -> tuple[list, object, bool]:
        """(changes, cursor, more) of a page; :class:`BadAnswer` when it cannot be used."""
        changes, more = answer.get("changes"), answer.get("more", False)
        if not isinstance(changes, list):
            raise BadAnswer(f"sync page refused: changes must be an array, got {type(changes).__name__}")
        if "cursor" not in answer:
            raise BadAnswer("sync page refused: no cursor")
        cursor = answer["cursor"]
        error = _cursor_error(cursor)
        if error is not None:
            raise BadAnswer(f"sync page refused: {error}")
        if type(more) is not bool:
            raise BadAnswer(f"sync page refused: more must be true or false, got {type(more).__name__}")
        if self.pages and type(cursor) is int and type(self.previous) is int and cursor < self.previous:
            raise BadAnswer(f"sync page refused: the cursor went back from {self.previous} to {cursor}")
        if more:
            if not changes:
                raise BadAnswer("sync page refused: no changes, yet more to come")
            if cursor is None or cursor == asked:
                raise BadAnswer(f"sync page refused: the cursor did not move from {_shown(asked)}")
            if cursor in self.seen:
                raise BadAnswer(f"sync page refused: the cursor came back to {_shown(cursor)}")
        self.pages += 1
        self.previous = cursor
        if cursor is not None:
            self.seen.add(cursor)
        return changes, cursor, more


def _charge_result(answer: dict, currency: str) -> ChargeResult:
    """The controller's answer to ``charge`` (§5) of an amount in ``currency``; :class:`BadAnswer`
    when it cannot be read for sure, or names another currency than the one asked."""
    approved, reference, reason = answer.get("approved"), answer.get("reference"), answer.get("reason")
    if type(approved) is not bool:
        raise BadAnswer(f"approved must be true or false, got {type(approved).__name__}")
    charged = answer.get("currency", currency)  # optional (an addition): a controller may not say
    if not isinstance(charged, str):
        raise BadAnswer(f"currency must be a string, got {type(charged).__name__}")
    if charged.upper() != currency.upper():
        raise BadAnswer(f"charged in {one_line(repr(charged), 16)}, not the {currency} asked")
    for name, value in (("reference", reference), ("reason", reason)):
        if value is not None and not isinstance(value, str):
            raise BadAnswer(f"{name} must be a string or nil, got {type(value).__name__}")
    return ChargeResult(approved, None if reference is None else one_line(reference),
                        None if reason is None else one_line(reason))


def _change(index: int, change: object) -> tuple[str, str, object]:
    """(kind, person id, Person or None) of a page's change; WireError saying why it is unusable."""
    if not isinstance(change, dict):
        raise WireError(f"changes[{index}]: a change must be a map, got {type(change).__name__}")
    kind = change.get("kind")
    if kind == "upsert":
        try:
            person = person_from_wire(change.get("person"))
        except WireError as exc:
            raise WireError(f"changes[{index}]: {exc}") from None
        return kind, person.person_id, person
    if kind == "remove":
        error = _person_id_error(change.get("person_id"))
        if error is not None:
            raise WireError(f"changes[{index}]: {error}")
        return kind, change["person_id"], None
    raise WireError(f"changes[{index}]: unknown kind {one_line(repr(kind), 40)}")


class OpError(RequestRefused):
    """A request the node refuses; its one-line message goes back as ``ok: false`` (logged as
    one line: a refusal, not a fault)."""


class NodeOps:
    def __init__(self, node: Node) -> None:
        self.node = node
        #: a charge whose end the vault did not take (another process held it): its note stays in the
        #: vault, and no new charge is asked until its abandonment is recorded
        self._unsettled: dict | None = None

    # ---- requests from the controller ----------------------------------------------------------
    async def handle(self, op: str, args: dict) -> dict:
        serve = _OPS.get(op)
        if serve is None:
            raise UnknownOp(op)  # answered "unknown op <op>" (§5)
        return await serve(self, args)

    async def _enrol_begin(self, args: dict) -> dict:
        palms = args.get("palms", ["right"])
        phone = args.get("phone")
        card_required = args.get("card_required", True)
        if phone is not None and not isinstance(phone, str):
            raise OpError("phone must be a string")
        if not isinstance(palms, list):
            raise OpError("palms must be a list of 'left'/'right'")
        if type(card_required) is not bool:
            raise OpError(f"card_required must be true or false, got {type(card_required).__name__}")
        try:
            request = self.node.enrol.begin(phone, palms, card_required=card_required)
        except (EnrolBusy, ValueError) as exc:
            raise OpError(str(exc)) from None
        result = await request.wait()
        if not result.ok:
            raise OpError(result.reason or "enrolment failed")
        return {"person_id": result.person_id, "palms": list(palms), "linked": result.linked}

    async def _enrol_cancel(self, args: dict) -> dict:
        return {"cancelled": self.node.enrol.cancel()}

    async def _person_delete(self, args: dict) -> dict:
        named = {k: args[k] for k in ("person_id", "card_digest", "phone") if args.get(k) is not None}
        if len(named) != 1:
            raise OpError("person.delete needs exactly one of person_id, card_digest, phone")
        (key, value), = named.items()
        if key == "card_digest" and not (isinstance(value, bytes) and len(value) == DIGEST_SIZE):
            got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
            raise OpError(f"card_digest must be {DIGEST_SIZE} bytes, got {got}")
        if key == "person_id" and _person_id_error(value) is not None:
            raise OpError(_person_id_error(value))
        if key == "phone" and not isinstance(value, str):
            raise OpError(f"phone must be a string, got {type(value).__name__}")
        try:
            forgotten = await self.node.people.forget(**named)  # after a sync page asked before it
        except ValueError as exc:  # e.g. an unusable phone number
            raise OpError(str(exc)) from None
        # an enrolment in progress of this card or phone is cancelled too, nothing of it kept
        return {"deleted": forgotten.person_id is not None, "person_id": forgotten.person_id,
                "enrolment_cancelled": forgotten.enrolment_cancelled}

    async def _person_upsert(self, args: dict) -> dict:
        try:
            person = person_from_wire(args.get("person"))
        except WireError as exc:
            raise OpError(f"bad person: {exc}") from None
        async with self.node.people.replication:
            refused = await self.node.people.apply_upsert(person)
        if refused is not None:
            raise OpError(f"person.upsert refused: {refused}")
        return {}

    async def _person_remove(self, args: dict) -> dict:
        person_id = args.get("person_id")
        error = _person_id_error(person_id)
        if error is not None:
            raise OpError(error)
        async with self.node.people.replication:
            return {"removed": await self.node.people.apply_remove(person_id)}

    async def _mode_set(self, args: dict) -> dict:
        try:
            mode = GateMode(args.get("mode", ""), args.get("amount_cents"), args.get("currency"),
                            once=args.get("once", False))
        except (ValueError, TypeError) as exc:
            raise OpError(str(exc)) from None
        self.node.modes.set(mode, at=trio.current_time())  # its ModeChanged is the event log's "gate mode" line
        # once echoed: a node that predates it would ignore the arg and charge every person
        return {"mode": mode.mode, "once": mode.once}

    async def _node_status(self, args: dict) -> dict:
        return await self.node.status()

    async def _node_metrics(self, args: dict) -> dict:
        return {"metrics": self.node.metrics.snapshot(), "prometheus": self.node.metrics.render_prometheus()}

    # ---- node → controller ---------------------------------------------------------------------
    async def sync(self) -> None:
        """Apply every change the controller logged since our cursor (run on each connect).

        Each page is checked whole before any of it is applied (:class:`_SyncRun`; a page that
        cannot be used raises :class:`BadAnswer`, and the link asks again after its backoff); a
        change it cannot use is dropped (one warning line a page, naming no one), the others are
        applied. The page is asked without holding anything: a push or deletion that comes
        meanwhile is applied at once and is newer than the page, which skips that person."""
        link, vault, people = self.node.link, self.node.vault, self.node.people
        stored = await trio.to_thread.run_sync(vault.get_state, SYNC_STATE)
        cursor = None if stored is None else json.loads(stored)  # opaque: sent back verbatim
        run, applied = _SyncRun(), 0
        while True:
            with people.changes_since() as newer:
                answer = await link.request("sync", {"cursor": cursor, "limit": SYNC_LIMIT})
                changes, next_cursor, more = run.check(answer, cursor)
                latest: dict[str, tuple[str, object]] = {}  # the last change of each person wins
                dropped: list[str] = []
                for index, change in enumerate(changes):
                    try:
                        kind, person_id, person = _change(index, change)
                    except WireError as exc:
                        dropped.append(str(exc))
                        continue
                    latest.pop(person_id, None)
                    latest[person_id] = (kind, person)
                async with people.replication:  # applied before any push or deletion after it
                    latest = {pid: c for pid, c in latest.items() if not people.changed_since(newer, pid)}
                    for person_id, (kind, _) in latest.items():
                        if kind == "remove":
                            await people.apply_remove(person_id)
                    upserts = [person for kind, person in latest.values() if kind == "upsert"]
                    refused = await people.apply_upserts(upserts)  # one vault transaction per page
                    dropped += refused
                    applied += len(latest) - len(refused)
                    if next_cursor is not None:
                        cursor = next_cursor
                        await in_vault_steps(functools.partial(vault.set_state, SYNC_STATE, json.dumps(cursor),
                                                               wait=STEP_S), vault.busy_timeout)
                del latest, upserts  # nothing of the page is kept while the next is asked
            if dropped:
                log.warning("sync changes dropped", extra={"fields": {"count": len(dropped), "first": dropped[0]}})
            if not more:
                break
        event(log, "gallery synced", changes=applied, cursor=cursor)

    async def charge(self, person_id: str, card_digest: bytes, amount_cents: int, currency: str) -> ChargeResult:
        from palmnode.link.client import LinkError

        if self.node.link is None:
            return ChargeResult(False, reason="no controller configured")
        if self._unsettled is not None:  # its note would be overwritten, and it never abandoned
            await self._settle_charge(self._unsettled, abandoned=True)
            if self._unsettled is not None:
                return ChargeResult(False, reason="vault unavailable: the last charge given up on is not "
                                    "recorded as abandoned yet")
        # a retried request gets the same answer; kept in the vault before it is asked, so a node
        # that dies while it waits abandons it when it starts again (abandon_interrupted_charge)
        pending = {"key": uuid.uuid4().hex, "amount_cents": amount_cents, "currency": currency}
        try:
            await in_vault_steps(functools.partial(self.node.vault.set_state, CHARGE_STATE, json.dumps(pending),
                                                   wait=STEP_S), self.node.vault.busy_timeout)
        except (VaultError, sqlite3.Error, OSError) as exc:
            return ChargeResult(False, reason=f"vault unavailable: {error_text(exc)}")
        result = None
        try:
            answer = await self.node.link.request("charge", {"person_id": person_id, "card_digest": card_digest,
                                                             **pending})
            result = _charge_result(answer, currency)
        except BadAnswer as exc:  # it may have charged: abandoned, so an approval is voided
            return ChargeResult(False, reason=f"controller's charge answer unusable: {exc}")
        except LinkError as exc:
            return ChargeResult(False, reason=f"controller unavailable: {exc}")
        finally:  # failed, lost, timed out, unusable or given up: the customer hears "declined", so abandon it
            settled = await self._settle_charge(pending, abandoned=result is None)  # its first step even at a stop
        if not settled:  # the note stays, to be abandoned (an approval voided): the customer must hear "declined"
            return ChargeResult(False, reason="vault unavailable: the answer could not be recorded, so the charge "
                                "is abandoned")
        return result

    async def abandon_interrupted_charge(self, *, timeout_s: float, step_s: float) -> None:
        """At start: the charge the last run asked for and never heard back about (it died while it
        waited) is abandoned, as one given up on is.

        Another process holding the vault's write lock (an ``sqlite3`` shell, a script) is waited
        for in steps of ``step_s`` (:func:`in_vault_steps`), and said once (it used to be a silent
        wait a stop could not cancel). Past ``timeout_s`` it raises VaultBusy:
        the start fails as when the opening meets the held vault (exit 1, retried), and the charge
        stays noted for the next start (the start used to go on without abandoning it, and the
        run's next charge overwrote the note: never abandoned)."""
        vault = self.node.vault
        stored = await trio.to_thread.run_sync(vault.get_state, CHARGE_STATE)
        if not stored:
            return
        try:
            pending = json.loads(stored)
            key = pending["key"]
        except (ValueError, TypeError, KeyError):  # not what charge() writes: nothing to tell
            pending, key = None, None
        abandoned = pending is not None and key is not None
        settle = functools.partial(vault.set_state, CHARGE_STATE, "", wait=step_s,
                                   event=("charge_abandoned", pending) if abandoned else None)
        def waiting() -> None:
            log.warning("charge interrupted by a restart: waiting for the vault, another process holds "
                        "its write lock", extra={"fields": {"key": key, "for_s": timeout_s}})

        try:
            await in_vault_steps(settle, timeout_s, waiting)
        except VaultBusy as exc:
            raise VaultBusy(f"cannot abandon the charge the last run left in flight: {exc}") from None
        if not abandoned:
            log.warning("unreadable charge_in_flight state cleared")
            return
        event(log, "charge interrupted by a restart: abandoned", key=key)
        if self.node.link is not None:
            self.node.link.events_appended()

    async def _settle_charge(self, pending: dict, *, abandoned: bool) -> bool:
        """The charge is no longer in flight. Abandoned: the controller is told, through the outbox,
        that its decision never reached the gate; it voids an approval made after all, or declines
        the request if it comes late (docs/protocols/controller.md §6), so a customer told
        "declined" is never charged. False when the vault did not take it: the charge stays noted,
        and is abandoned before the next one is asked (or at the next start), even an approved one
        (then told "declined").

        Its first step (0.1 s in SQLite) is taken even when the charge was cancelled (a stop while
        it waited for the controller); the wait for another process holding the vault's write lock
        after it is in steps a stop ends (it used to be one shielded wait of the whole busy timeout,
        holding the stop up to 5 s): the note then stays, and the next start abandons it."""
        vault = self.node.vault
        settle = functools.partial(vault.set_state, CHARGE_STATE, "", wait=STEP_S,
                                   event=("charge_abandoned", pending) if abandoned else None)
        self._unsettled = pending  # until the vault takes it: abandoned before the next charge (or at the next start)
        try:  # one transaction: the event and the state together
            try:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(settle)
            except VaultBusy:
                await in_vault_steps(settle, vault.busy_timeout)
        except (VaultError, sqlite3.Error, OSError, ValueError) as exc:
            event(log, "charge not settled", key=pending["key"], abandoned=abandoned, error=error_text(exc))
            return False
        self._unsettled = None
        if abandoned and self.node.link is not None:
            self.node.link.events_appended()
        return True

    # ---- events for the controller -------------------------------------------------------------
    async def report(self, ctx: ChildContext) -> None:
        """Actor: device health → outbox events (delivered by the link). Decisions are recorded by
        the identify flow's own recorder task (``gate/recorder.py``, ``People.record_decision``).

        It starts by recording every device's state as it is (a change before it subscribed, at
        boot or while it restarted, would never reach the controller), then each change."""
        async with self.node.bus.subscribe(DeviceStateChanged, buffer=1024) as events:
            ctx.started()
            health = self.node.health
            for device in health.snapshot() if health is not None else ():
                if device.state is not DeviceState.INIT:
                    lost = device.state in (DeviceState.LOST, DeviceState.FAILED)
                    await self._report_health(device.name, device.state, device.last_error if lost else None)
            async for ev in events:
                await self._report_health(ev.name, ev.new, ev.error)

    async def _report_health(self, name: str, state: DeviceState, error: str | None) -> None:
        data: dict[str, Any] = {"name": name, "state": state.value}
        if error:
            data["error"] = error
        try:
            await in_vault_steps(functools.partial(self.node.vault.append_event, "device_health", data, wait=STEP_S),
                                 self.node.vault.busy_timeout)
        except (VaultError, sqlite3.Error, OSError) as exc:  # e.g. disk full: the gate keeps serving
            event(log, "device health not recorded", name=name, state=state.value, error=error_text(exc))
            return
        if self.node.link is not None:
            self.node.link.events_appended()


_OPS = {
    "enrol.begin": NodeOps._enrol_begin,
    "enrol.cancel": NodeOps._enrol_cancel,
    "person.delete": NodeOps._person_delete,
    "person.upsert": NodeOps._person_upsert,
    "person.remove": NodeOps._person_remove,
    "mode.set": NodeOps._mode_set,
    "node.status": NodeOps._node_status,
    "node.metrics": NodeOps._node_metrics,
}
