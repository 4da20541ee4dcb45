"""The node's side of the store-controller link (docs/protocols/controller.md).

* :meth:`NodeOps.handle` serves the controller's requests (enrol, delete, replication, mode,
  status, metrics);
* :meth:`NodeOps.sync` runs on every connect: the changes made while this node was away;
* :meth:`NodeOps.charge` asks the controller to charge a person's card (payment mode);
* :meth:`NodeOps.report` (an actor) turns device health into outbox events, which the link
  delivers at least once (decisions go there from the identify flow).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from typing import TYPE_CHECKING, Any

import trio

from palmnode.actors import ChildContext, DeviceState, DeviceStateChanged
from palmnode.gate.enrol import EnrolBusy
from palmnode.gate.modes import ChargeResult, GateMode
from palmnode.link.client import RequestRefused
from palmnode.link.wire import WireError, person_from_wire
from palmnode.logs import error_text, event
from palmnode.vault import VaultError

if TYPE_CHECKING:
    from palmnode.node import Node

log = logging.getLogger("palmnode.ops")

SYNC_STATE = "controller_sync_cursor"  # vault state key: where the last sync ended
CHARGE_STATE = "charge_in_flight"  # vault state key: the charge awaiting its answer ("" when none)


class OpError(RequestRefused):
    """A request the node refuses; its one-line message goes back as ``ok: false`` (logged as
    one line: a refusal, not a fault)."""


class NodeOps:
    def __init__(self, node: Node) -> None:
        self.node = node

    # ---- requests from the controller ----------------------------------------------------------
    async def handle(self, op: str, args: dict) -> dict:
        serve = _OPS.get(op)
        if serve is None:
            raise OpError(f"unknown op {op!r}")
        return await serve(self, args)

    async def _enrol_begin(self, args: dict) -> dict:
        palms = args.get("palms", ["right"])
        phone = args.get("phone")
        if phone is not None and not isinstance(phone, str):
            raise OpError("phone must be a string")
        if not isinstance(palms, list):
            raise OpError("palms must be a list of 'left'/'right'")
        try:
            request = self.node.enrol.begin(phone, palms, card_required=bool(args.get("card_required", True)))
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
        if not isinstance(value, bytes if key == "card_digest" else str):
            raise OpError(f"{key} has the wrong type")
        try:
            person_id = await self.node.people.delete(**named)  # after a sync page asked before it
        except ValueError as exc:  # e.g. an unusable phone number
            raise OpError(str(exc)) from None
        return {"deleted": person_id is not None, "person_id": person_id}

    async def _person_upsert(self, args: dict) -> dict:
        try:
            person = person_from_wire(args.get("person"))
        except WireError as exc:
            raise OpError(f"bad person: {exc}") from None
        async with self.node.people.replication:
            await self.node.people.apply_upsert(person)
        return {}

    async def _person_remove(self, args: dict) -> dict:
        person_id = args.get("person_id")
        if not isinstance(person_id, str) or not person_id:
            raise OpError("person_id must be a non-empty string")
        async with self.node.people.replication:
            return {"removed": await self.node.people.apply_remove(person_id)}

    async def _mode_set(self, args: dict) -> dict:
        try:
            mode = GateMode(args.get("mode", ""), args.get("amount_cents"), args.get("currency"))
        except (ValueError, TypeError) as exc:
            raise OpError(str(exc)) from None
        self.node.modes.set(mode, at=trio.current_time())
        event(log, "gate mode", mode=mode.mode, amount_cents=mode.amount_cents, currency=mode.currency)
        return {"mode": mode.mode}

    async def _node_status(self, args: dict) -> dict:
        return await self.node.status()

    async def _node_metrics(self, args: dict) -> dict:
        return {"metrics": self.node.metrics.snapshot(), "prometheus": self.node.metrics.render_prometheus()}

    # ---- node → controller ---------------------------------------------------------------------
    async def sync(self) -> None:
        """Apply every change the controller logged since our cursor (run on each connect)."""
        link, vault, people = self.node.link, self.node.vault, self.node.people
        stored = await trio.to_thread.run_sync(vault.get_state, SYNC_STATE)
        cursor = None if stored is None else json.loads(stored)  # opaque: sent back verbatim
        applied = 0
        while True:
            async with people.replication:  # the page asked and applied before any push after it
                answer = await link.request("sync", {"cursor": cursor, "limit": 100})
                upserts = []  # a page names each person once (the log keeps their latest change)
                for change in answer.get("changes", []):
                    if change.get("kind") == "upsert":
                        try:
                            upserts.append(person_from_wire(change.get("person")))
                        except WireError as exc:
                            log.warning("sync change dropped", extra={"fields": {"reason": str(exc)}})
                            continue
                    elif change.get("kind") == "remove" and isinstance(change.get("person_id"), str):
                        await people.apply_remove(change["person_id"])
                    applied += 1
                await people.apply_upserts(upserts)  # one vault transaction per page
                cursor = answer.get("cursor", cursor)
                if cursor is not None:
                    await trio.to_thread.run_sync(vault.set_state, SYNC_STATE, json.dumps(cursor))
            if not answer.get("more"):
                break
        event(log, "gallery synced", changes=applied, cursor=cursor)

    async def charge(self, person_id: str, card_digest: bytes, amount_cents: int, currency: str) -> ChargeResult:
        from palmnode.link.client import LinkError

        if self.node.link is None:
            return ChargeResult(False, reason="no controller configured")
        # a retried request gets the same answer; kept in the vault before it is asked, so a node
        # that dies while it waits abandons it when it starts again (abandon_interrupted_charge)
        pending = {"key": uuid.uuid4().hex, "amount_cents": amount_cents, "currency": currency}
        try:
            await trio.to_thread.run_sync(self.node.vault.set_state, CHARGE_STATE, json.dumps(pending))
        except (VaultError, sqlite3.Error, OSError) as exc:
            return ChargeResult(False, reason=f"vault unavailable: {error_text(exc)}")
        answer = None
        try:
            answer = await self.node.link.request("charge", {"person_id": person_id, "card_digest": card_digest,
                                                             **pending})
        except LinkError as exc:
            return ChargeResult(False, reason=f"controller unavailable: {exc}")
        finally:  # failed, lost, timed out or given up: the customer hears "declined", so abandon it
            with trio.CancelScope(shield=True):
                await self._settle_charge(pending, abandoned=answer is None)
        return ChargeResult(bool(answer.get("approved")), answer.get("reference"), answer.get("reason"))

    async def abandon_interrupted_charge(self) -> None:
        """At start: the charge the last run asked for and never heard back about (it died while it
        waited) is abandoned, as one given up on is."""
        stored = await trio.to_thread.run_sync(self.node.vault.get_state, CHARGE_STATE)
        if not stored:
            return
        try:
            pending = json.loads(stored)
            event(log, "charge interrupted by a restart: abandoned", key=pending["key"])
        except (ValueError, TypeError, KeyError):  # not what charge() writes: nothing to tell
            pending = {"key": None}
            log.warning("unreadable charge_in_flight state cleared")
        await self._settle_charge(pending, abandoned=pending["key"] is not None)

    async def _settle_charge(self, pending: dict, *, abandoned: bool) -> None:
        """The charge is no longer in flight. Abandoned: the controller is told, through the outbox,
        that its decision never reached the gate; it voids an approval made after all, or declines
        the request if it comes late (docs/protocols/controller.md §6), so a customer told
        "declined" is never charged."""
        vault = self.node.vault

        def settle() -> None:
            if abandoned:
                vault.append_event("charge_abandoned", pending)
            vault.set_state(CHARGE_STATE, "")
        try:
            await trio.to_thread.run_sync(settle)
        except (VaultError, sqlite3.Error, OSError, ValueError) as exc:
            event(log, "charge not settled", key=pending["key"], abandoned=abandoned, error=error_text(exc))
            return
        if abandoned and self.node.link is not None:
            self.node.link.events_appended()

    # ---- events for the controller -------------------------------------------------------------
    async def report(self, ctx: ChildContext) -> None:
        """Actor: device health → outbox events (delivered by the link). Decisions are recorded by
        the identify flow itself (``People.record_decision``), in the same step that makes them.

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
            await trio.to_thread.run_sync(self.node.vault.append_event, "device_health", data)
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
