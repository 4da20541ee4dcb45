"""People: the only way people change on a node — the vault and the in-memory gallery together.

Every change is one vault transaction (the person and their outbox event together) followed, in
the same worker-thread call, by the gallery change, so a person is searchable (or gone) the moment
the call returns and a crash in between leaves the vault, the source of truth, whole: the gallery
is rebuilt from it at start (``load``). Changes are serialised by one lock. The gallery holds
each palm's search template (its first); the others stay in the vault (``stored_templates``).

Outbox events (``enrolled {person}``, ``deleted {person_id}``, and the identify flow's decisions:
``identified {person_id, palm, score, latency_ms, mode}``, ``unknown {latency_ms, reason}``) go to the store controller through
the link; ``events_appended`` (settable: the link client's wake-up) is called after each append.
Replicated changes from the controller (``apply_upsert(s)`` / ``apply_remove``) write no outbox event
(the controller already knows), a removal leaves its audit entry all the same, and a removal is
final: an upsert of someone this vault removed before is refused. A removal also calls
``forget_frames`` (settable: the camera's, which keeps the last decoded frame, a palm image of
whoever was last at the gate, until the next capture).

A removal truncates the vault's WAL without waiting (docs/vault.md). When another connection to the
vault file (a backup, an ``sqlite3`` shell, ``palmnode vault check``) blocks that, the removal stands
and ``wal`` (a ``walscrub.WalKeeper``, the gate supervisor's ``wal-scrub`` child) tries again in
the background with a backoff until the WAL is empty, with a warning line while it cannot.

An enrolment in progress at this gate is not a person yet, but a deletion that names its phone or
card must not let it become one: the enrol flow registers it (``enrolment_started``: the keyed
digest of its phone, then of its card once tapped), a deletion (``forget``) cancels every
registered enrolment it names, under the same lock as the vault change, and ``enrol`` of a
cancelled one is refused (``EnrolmentCancelled``) with nothing written. So either the deletion
comes first (the enrolment is cancelled, nothing of it kept) or the enrolment's commit does (the
deletion then finds the stored person and removes them); never a person stored after their
deletion was answered.

Every vault write here waits for another process holding the vault's write lock (an ``sqlite3``
shell, a backup) in short steps (``palmnode.vault.steps``), up to the vault's busy timeout: a stop
meanwhile is served within a step with nothing written, and past the timeout the write raises
``VaultBusy`` as one wait did (an enrolment or deletion is answered as failed, a sync asks again:
whoever a page stored one by one before it is searchable all the same, the
identify flow's recorder, which writes its decisions off the flow's path, logs the decision not recorded). A deletion is answered done only once it is committed.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import time
import uuid
from typing import Callable, Iterator, Sequence

import attrs
import trio

from drivers.card_reader.cardtoken import CardToken
from palmnode.actors import EventBus
from palmnode.biometrics.gallery import Gallery
from palmnode.biometrics.types import PalmTemplate
from palmnode.gate.events import Decision, PersonDeleted, PersonEnrolled
from palmnode.link.wire import person_to_wire
from palmnode.logs import event
from palmnode.vault import DuplicateCard, DuplicatePhone, EnrolledPalm, Person, Vault
from palmnode.vault.steps import STEP_S, in_vault_steps
from palmnode.walscrub import WalKeeper

log = logging.getLogger("palmnode.gate")


class EnrolmentCancelled(Exception):
    """``People.enrol`` of an enrolment a deletion cancelled: nothing was written."""


@attrs.define(eq=False)
class PendingEnrolment:
    """An enrolment in progress at this gate, as a deletion sees it (``People.enrolment_started``):
    the keyed digests of its phone and, once tapped, its card; ``on_cancel`` stops the flow."""

    phone_digest: bytes | None
    on_cancel: Callable[[], None] = attrs.field(repr=False)
    card_digest: bytes | None = None
    #: a deletion named it: it must store nothing (its flow answers "cancelled")
    cancelled: bool = False


@attrs.frozen
class Forgotten:
    """What a deletion (``People.forget``) did: the stored person it removed (None: nobody stored
    matched) and whether it cancelled an enrolment in progress that its card or phone named."""

    person_id: str | None
    enrolment_cancelled: bool = False


class People:
    def __init__(self, vault: Vault, gallery: Gallery, node_id: str, bus: EventBus, metrics=None, *,
                 events_appended: Callable[[], None] | None = None,
                 forget_frames: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.vault = vault
        self.gallery = gallery
        self.node_id = node_id
        self.bus = bus
        self.metrics = metrics
        self.events_appended = events_appended
        self.forget_frames = forget_frames
        self.clock = clock
        self._lock = trio.Lock()
        #: held while a sync page is applied (NodeOps.sync), and by each replication push and
        #: deletion; with :meth:`changes_since` a page the controller read before them never undoes them
        self.replication = trio.Lock()
        self._watches: list[set[bytes]] = []  # changes_since's: keyed tags of the people changed
        self._pending: list[PendingEnrolment] = []  # enrolments in progress (enrolment_started)
        self._tag_key = os.urandom(16)
        #: retries a WAL truncation another connection to the vault blocked (the node runs
        #: ``wal.run`` as the gate supervisor's ``wal-scrub`` child)
        self.wal = WalKeeper(vault, "vault", log)

    # ---- start -------------------------------------------------------------------------------
    async def load(self) -> int:
        """Fill the gallery from the vault (at start); returns the number of palms loaded.

        One batch of palms (``Vault.search_templates``: 1024 read, decrypted and added to the
        gallery) per worker-thread call, so the load is cancellable between batches: a stop during
        it (systemd's SIGTERM) waits for the batch in hand (tens of ms), not for the whole vault
        (tens of seconds at a million people). The vault is only read; a cancelled load leaves the
        gallery part-filled, for a node that is stopping."""
        unreadable: list[str] = []
        count = 0
        event(log, "gallery loading")
        async with self._lock:
            batches = self.vault.search_templates(unreadable)
            try:
                while (added := await trio.to_thread.run_sync(self._load_batch, batches)) is not None:
                    count += added
            finally:
                batches.close()  # no worker thread holds it: each call above returned before this
        if unreadable:   # the messages name people: the log gives the count, `palmnode vault check` the rows
            log.warning("%d enrolled palm(s) unreadable in the vault (a sealed template fails to open): not "
                        "searchable; palmnode vault check names them", len(unreadable))
        self._gauge()
        event(log, "gallery loaded", palms=count)
        return count

    def _load_batch(self, batches: Iterator[list[tuple[str, str, PalmTemplate]]]) -> int | None:
        """The next batch into the gallery (in a worker thread): how many palms; None when done."""
        batch = next(batches, None)
        return None if batch is None else self.gallery.add_many(batch)

    # ---- enrol / delete (this node) -----------------------------------------------------------
    def enrolment_started(self, phone: str | None, on_cancel: Callable[[], None]) -> PendingEnrolment:
        """Register an enrolment in progress (its phone; set ``card_digest`` once the card is read):
        a deletion naming either cancels it (``on_cancel``). ``enrolment_ended`` when it is answered.
        InvalidPhone for a number that is not one."""
        pending = PendingEnrolment(self.vault.phone_digest(phone) if phone is not None else None, on_cancel)
        self._pending.append(pending)
        return pending

    def enrolment_ended(self, pending: PendingEnrolment) -> None:
        if pending in self._pending:
            self._pending.remove(pending)

    async def enrol(self, card: CardToken | None, phone: str | None,
                    palms: dict[str, list[PalmTemplate]], *, pending: PendingEnrolment | None = None) -> Person:
        """Store a new person and make them searchable; the vault's typed errors pass through
        (DuplicateCard, DuplicatePhone, InvalidPhone) with nothing written, and so does
        :class:`EnrolmentCancelled` when a deletion cancelled ``pending`` (checked under the lock
        deletions hold: a deletion after this commit finds the person stored)."""
        async with self._lock:
            if pending is not None and pending.cancelled:
                raise EnrolmentCancelled("a deletion cancelled this enrolment")
            person = self._new_person(card, phone, palms)
            await self._in_steps(self._store_new, person)
            if pending is not None:
                self.enrolment_ended(pending)  # a person now: a deletion finds them in the vault
        self._appended()
        self._gauge()
        self.bus.publish(PersonEnrolled(person.person_id, tuple(p.palm for p in person.palms), trio.current_time()))
        if self.metrics is not None:
            self.metrics.inc("palmnode_enrolments_total", result="enrolled")
        return person

    def _new_person(self, card: CardToken | None, phone: str | None,
                    palms: dict[str, list[PalmTemplate]]) -> Person:
        phone_digest = self.vault.phone_digest(phone) if phone else None
        return Person(person_id=uuid.uuid4().hex, card=card, phone_digest=phone_digest,
                      palms=tuple(EnrolledPalm(name, tuple(templates)) for name, templates in palms.items()),
                      enrolled_at=self.clock(), origin_node=self.node_id)

    def _store_new(self, person: Person) -> None:
        self.vault.add_person(person, event=("enrolled", {"person": person_to_wire(person)}), wait=STEP_S)
        self._add_to_gallery(person)

    async def delete(self, *, person_id: str | None = None, card_digest: bytes | None = None,
                     phone: str | None = None) -> str | None:
        """:meth:`forget`, answered with the removed person's id only (None: nobody stored matched;
        an enrolment in progress it names is cancelled all the same)."""
        return (await self.forget(person_id=person_id, card_digest=card_digest, phone=phone)).person_id

    async def forget(self, *, person_id: str | None = None, card_digest: bytes | None = None,
                     phone: str | None = None) -> Forgotten:
        """Forget a person named by id, card digest or phone: vault (with a ``deleted`` event and an
        audit entry) and gallery at once; and cancel any enrolment in progress here whose card or
        phone it names (nothing of it is stored: ``enrol`` refuses it). InvalidPhone for a phone
        that is not a number."""
        if sum(x is not None for x in (person_id, card_digest, phone)) != 1:
            raise ValueError("delete needs exactly one of person_id, card_digest, phone")
        async with self.replication, self._lock:
            cancelled = self._cancel_enrolments(card_digest, phone)  # first: even if the vault then fails
            pid = await self._in_steps(self._delete, person_id, card_digest, phone)
            self._changed(pid)
        self.wal.poke()
        if cancelled:
            event(log, "enrolment cancelled by a deletion", enrolments=cancelled)
        if pid is None:
            return Forgotten(None, cancelled > 0)
        self._forget_frames()
        self._appended()
        self._gauge()
        self.bus.publish(PersonDeleted(pid, trio.current_time()))
        if self.metrics is not None:
            self.metrics.inc("palmnode_deletions_total")
        return Forgotten(pid, cancelled > 0)

    def _cancel_enrolments(self, card_digest: bytes | None, phone: str | None) -> int:
        """Cancel the enrolments in progress that ``card_digest`` or ``phone`` names (under the
        lock: none of them can be committing); how many."""
        if card_digest is None and phone is None:
            return 0
        digest = self.vault.phone_digest(phone) if phone is not None else None
        named = [p for p in self._pending if not p.cancelled and (
            (card_digest is not None and p.card_digest == card_digest) or
            (digest is not None and p.phone_digest == digest))]
        for pending in named:
            pending.cancelled = True
            pending.on_cancel()
        return len(named)

    def _delete(self, person_id: str | None, card_digest: bytes | None, phone: str | None) -> str | None:
        if card_digest is not None:
            person_id = self.vault.find_by_card(card_digest)
        elif phone is not None:
            person_id = self.vault.find_by_phone(phone)
        if person_id is None:
            return None
        present = self.vault.remove_person(person_id, event=("deleted", {"person_id": person_id}), reason="request",
                                           wait=STEP_S)
        removed = self.gallery.remove(person_id)
        return person_id if present or removed else None

    # ---- replication (from the controller) -----------------------------------------------------
    @contextlib.contextmanager
    def changes_since(self) -> Iterator[set[bytes]]:
        """Within the block, every person a deletion, push or page changes is noted (as a keyed
        tag, never the id): a sync page asked at its start and applied at its end skips them
        (:meth:`changed_since`), since what came meanwhile is newer than what the page says."""
        watch: set[bytes] = set()
        self._watches.append(watch)
        try:
            yield watch
        finally:
            self._watches.remove(watch)

    def changed_since(self, watch: set[bytes], person_id: str) -> bool:
        return self._tag(person_id) in watch

    def _tag(self, person_id: str) -> bytes:
        return hashlib.blake2b(person_id.encode("utf-8", "surrogatepass"), key=self._tag_key, digest_size=16).digest()

    def _changed(self, *person_ids: str | None) -> None:
        for watch in self._watches:
            watch.update(self._tag(pid) for pid in person_ids if pid is not None)

    async def apply_upsert(self, person: Person) -> str | None:
        """A person enrolled elsewhere (or changed): stored and searchable here, no outbox event.
        None, or why it was refused (naming no one): see :meth:`apply_upserts`."""
        refused = await self.apply_upserts([person])
        return refused[0] if refused else None

    async def apply_upserts(self, people: Sequence[Person]) -> list[str]:
        """Many of them (a sync page): one vault transaction for all, then searchable here. A person
        this vault removed before is refused (a removal is final: a late or replayed upsert never
        brings them back), and so is one whose card or phone another person holds here, each with
        nothing of theirs written; the others are stored. Returns one reason per person refused."""
        async with self._lock:
            try:
                refused = await self._in_steps(self._upsert, people)
            finally:  # a page the vault refused partway may have stored and made searchable some
                self._gauge()
                self._changed(*(person.person_id for person in people))
        return refused

    def _upsert(self, people: Sequence[Person]) -> list[str]:
        latest = {person.person_id: person for person in people}  # the last of each
        removed = self.vault.removed(latest)
        refused = ["this person was removed here; a removal is final"] * len(removed)
        fresh = [p for p in latest.values() if p.person_id not in removed]
        changed = [p for p in fresh if not self._stored_as(p)]  # e.g. our own enrolment coming back
        stored = fresh
        try:
            if changed:
                self.vault.upsert_people(changed, wait=STEP_S)  # replaced or added, no outbox event
        except (DuplicateCard, DuplicatePhone):
            unchanged = {id(p) for p in fresh} - {id(p) for p in changed}
            stored = [p for p in fresh if id(p) in unchanged]  # one of them clashes: each alone, the rest go
            alone: list[Person] = []  # committed, each in a transaction of their own
            try:
                for person in changed:
                    try:
                        self.vault.upsert_people([person], wait=STEP_S)
                    except DuplicateCard:
                        refused.append("its card is enrolled to another person here")
                    except DuplicatePhone:
                        refused.append("its phone is enrolled to another person here")
                    else:
                        alone.append(person)
            except BaseException:
                # the vault held past the busy timeout partway (VaultBusy): those committed are
                # searchable before it propagates, as in the vault (they waited for a later sync)
                self._replace_in_gallery(alone)
                raise
            stored += alone
        self._replace_in_gallery(stored)
        return refused

    def _replace_in_gallery(self, people: Sequence[Person]) -> None:
        for person in people:
            self.gallery.remove(person.person_id)
        self._add_to_gallery(*people)

    def _stored_as(self, person: Person) -> bool:
        current = self.vault.get(person.person_id)
        return current is not None and person_to_wire(current) == person_to_wire(person)

    async def apply_remove(self, person_id: str) -> bool:
        """A person deleted elsewhere: gone from vault (audit entry, no outbox event) and gallery."""
        async with self._lock:
            present = await self._in_steps(self._remove_replicated, person_id)
            self._changed(person_id)
        self.wal.poke()
        self._gauge()
        if present:
            self._forget_frames()
            self.bus.publish(PersonDeleted(person_id, trio.current_time()))
        return present

    def _remove_replicated(self, person_id: str) -> bool:
        present = self.vault.remove_person(person_id, reason="replication", wait=STEP_S)
        removed = self.gallery.remove(person_id)
        return present or removed > 0

    # ---- decisions for the controller ----------------------------------------------------------
    async def record_decision(self, decision: Decision, *, timeout_s: float | None = None) -> bool:
        """An ``identified`` or ``unknown`` decision as an outbox event for the store controller
        (at least once, across restarts; a person's undelivered events go when they are deleted).
        Retries are the gate's business only and are not recorded. Waits in steps for another
        process's write lock up to ``timeout_s`` (default: the vault's busy timeout; 0: one step),
        then VaultBusy. True when the event was queued. The identify flow calls it through its
        ``DecisionRecorder``, off its path."""
        if decision.outcome == "identified":
            kind, data = "identified", {"person_id": decision.person_id, "palm": decision.palm,
                                        "score": float(decision.score or 0.0),
                                        "latency_ms": round(float(decision.latency_ms), 1), "mode": decision.mode}
        elif decision.outcome == "unknown":
            kind, data = "unknown", {"latency_ms": round(float(decision.latency_ms), 1),
                                     "reason": decision.reason or "no match"}
        else:
            return False
        # a person deleted while they were being served (a payment waits for the controller) is
        # not written back: their decision is dropped
        queued = await self._in_steps(self.vault.append_event, kind, data, enrolled_only=True, wait=STEP_S,
                                      timeout_s=timeout_s)
        if queued is None:
            return False
        self._appended()
        return True

    # ---- look-ups ------------------------------------------------------------------------------
    async def card_digest(self, person_id: str) -> bytes | None:
        person = await trio.to_thread.run_sync(self.vault.get, person_id)
        return None if person is None or person.card is None else person.card.digest

    async def find_by_card(self, card_digest: bytes) -> str | None:
        return await trio.to_thread.run_sync(self.vault.find_by_card, card_digest)

    async def find_by_phone(self, phone: str) -> str | None:
        return await trio.to_thread.run_sync(self.vault.find_by_phone, phone)

    def stored_templates(self, person_id: str, palm: str) -> tuple[PalmTemplate, ...]:
        """All the stored templates of ``person_id``'s ``palm``, the search template (the gallery's)
        first; () when they are gone. One that fails to open is left out with a warning (that names
        no one), not raised into the identify flow. Blocking (a vault read): call it from a worker thread."""
        unreadable: list[str] = []
        templates = self.vault.palm_templates(person_id, palm, unreadable)
        if unreadable:
            log.warning("%d stored template(s) of a candidate fail to open (tampered?): left out of its second "
                        "look; palmnode vault check names them", len(unreadable))
        return templates

    # ---- helpers -------------------------------------------------------------------------------
    async def _in_steps(self, write: Callable[..., object], *args, timeout_s: float | None = None, **kwargs):
        """``write(*args, **kwargs)`` (vault writes of ``wait=STEP_S``) in a worker thread, again while
        another process holds the vault's write lock, up to ``timeout_s`` (default the vault's busy
        timeout; then VaultBusy)."""
        timeout_s = self.vault.busy_timeout if timeout_s is None else timeout_s
        return await in_vault_steps(functools.partial(write, *args, **kwargs), timeout_s)

    def _add_to_gallery(self, *people: Person) -> int:
        """Each palm's search template (its first): one gallery entry per enrolled palm."""
        return self.gallery.add_many((person.person_id, palm.palm, palm.templates[0]) for person in people
                                     for palm in person.palms)

    def _forget_frames(self) -> None:
        if self.forget_frames is not None:
            self.forget_frames()

    def _appended(self) -> None:
        if self.events_appended is not None:
            self.events_appended()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.set("palmnode_gallery_palms", len(self.gallery))
