"""The reference controller's system of record: one SQLite file (WAL, synchronous=FULL, 0600).

What it holds:
- ``nodes``: every node that said Hello, with its version and capabilities.
- ``events``: every event a node delivered, applied exactly once: UNIQUE(node_id, key), and the
  event row is written in the same transaction as its effect, so a redelivered event is only
  recognised, never applied twice. Rows older than the retention are pruned
  (:meth:`Store.prune_events`); a person's removal erases what their rows said (the person id, the
  visit's fields) and keeps the (node, key) that makes a redelivery a duplicate.
- ``people``: the store's enrolled people. Templates are AES-256-GCM sealed with the controller's
  key (associated data = table + person id); card and phone are the keyed digests the node made.
- ``changes``: the replication log with a monotonic cursor (AUTOINCREMENT: never reused). It holds
  at most one row per person, the latest: an upsert row names the person (their data stays in
  ``people``), a remove row keeps only the person id. Either deletes every earlier row of that
  person, so a node catching up from any cursor gets each person's final state once.
- ``charges``: the reference payment ledger, idempotent per request key.
- ``audit``: what was done, why and by whom; never biometric data, card or phone digests.
- ``forgotten_cards``: the cards deleted store-wide at the controller (``forget_card``), with when,
  so an enrolment of that card made before the deletion (at a gate the deletion could not reach)
  is refused whenever it arrives. Not the digest: a tag keyed with the controller's key (HMAC), so
  the file alone links no card to a deletion. Kept only while such an enrolment can still arrive
  (:meth:`Store.forget_settled_cards`: every gate known has delivered an event stamped past the
  window), and never longer than the events (``prune_events``).
- ``node_progress``: each gate's ``at`` of the event it delivered last, which tells when a
  remembered card can go (a gate delivers its events oldest first).

A removal overwrites the person's bytes (``secure_delete``) and truncates the WAL, so nothing of
them stays in the database, its ``-wal`` or its ``-shm`` file. The truncation never waits: when
another connection to the file (a backup, an ``sqlite3`` shell) holds a read transaction it cannot
finish, :attr:`Store.scrub_pending` says so and the caller tries :meth:`Store.scrub` again (the
server does, in the background, with a backoff) until it succeeds.

The API is synchronous and thread-safe (one connection behind a lock); the server calls it
through ``trio.to_thread.run_sync``.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import msgpack

from palmnode import lockfile, walscrub
from palmnode.link.messages import one_line
from palmnode.link.wire import WireError, person_from_wire
from palmnode.vault import TamperedData, VaultKeys, open_, seal

SCHEMA_VERSION = 2  # 2: events.person_id (a removal erases the person's events)
MAX_ID = 128  # longest person/node id or idempotency key accepted (ids are uuids or "node:seq")
#: each node's newest applied events are kept whatever their age: a gate resends at most its
#: unacked outbox batch (100), so its redeliveries stay recognised even after the controller's
#: clock jumps forward (a board without a real-time clock, set by NTP) and ages every row at once
KEEP_PER_NODE = 1000
LIVE_PERSON_CHANGED = "rejected: person already enrolled with other data (a live person never changes)"
SQL_INT = range(-2**63, 2**63)  # SQLite's INTEGER: a larger int cannot even be bound
SYNC_BYTES = 512 * 1024  # one sync answer stays well under the link's 1 MiB frame cap
BUSY_TIMEOUT_S = 10.0  # how long a transaction waits for another program holding the write lock
#: a card deleted store-wide at time D: an enrolment of it whose enrolled_at (the gate's clock) is
#: at most D + this was begun before the deletion, or within a gate's longest enrolment
#: (``EnrolPolicy.timeout_s``, 90 s) plus clock skew, and is refused (``forget_card``)
FORGET_WINDOW_S = 600.0
#: a gate reads its clock for a person's enrolled_at, then writes the ``enrolled`` event to its
#: outbox (which stamps the event's ``at`` and its seq): an event written in between (another
#: thread's, while the enrolment waited for the vault's lock or its 5 s busy timeout) comes before
#: the enrolment yet is stamped later than its enrolled_at, by seconds at most. A remembered card
#: goes once every gate has delivered an event stamped this much past the window
#: (``Store._release_cards``)
FORGET_SLACK_S = 60.0
CARD_FORGOTTEN = "refused: its card was deleted store-wide"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    version INTEGER NOT NULL,
    capabilities TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    applied_at REAL NOT NULL,
    effect TEXT NOT NULL,
    data BLOB,
    person_id TEXT,
    UNIQUE (node_id, key)
);
CREATE INDEX IF NOT EXISTS events_person ON events (person_id) WHERE person_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_applied ON events (applied_at);
CREATE TABLE IF NOT EXISTS people (
    person_id TEXT PRIMARY KEY,
    card_digest BLOB,
    card_last4 TEXT,
    phone_digest BLOB,
    palms BLOB NOT NULL,
    enrolled_at REAL NOT NULL,
    origin_node TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS people_card ON people (card_digest);
CREATE TABLE IF NOT EXISTS changes (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('upsert', 'remove')),
    person_id TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_person ON changes (person_id);
CREATE TABLE IF NOT EXISTS device_health (
    node_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (node_id, name)
);
CREATE TABLE IF NOT EXISTS charges (
    request_key TEXT PRIMARY KEY,
    reference TEXT NOT NULL UNIQUE,
    node_id TEXT NOT NULL,
    person_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    approved INTEGER NOT NULL,
    reason TEXT,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS forgotten_cards (
    card_tag BLOB PRIMARY KEY,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS forgotten_cards_at ON forgotten_cards (at);
CREATE TABLE IF NOT EXISTS node_progress (
    node_id TEXT PRIMARY KEY,
    last_at REAL NOT NULL  -- the at (its clock) of the event applied last from this node
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    fields TEXT NOT NULL
);
"""


class StoreError(Exception):
    """The controller's database cannot be used (unreadable, another program's file, newer schema)."""


class BadRecord(ValueError):
    """A person or event payload that does not have the documented shape (one-line reason)."""


@attrs.frozen
class StoredPalm:
    """One enrolled palm as the controller keeps it: the node's templates, opaque bytes."""

    palm: str
    templates: tuple[bytes, ...]


def _digest_repr(value: bytes | None) -> str:
    return "None" if value is None else value[:4].hex() + "…"


@attrs.frozen
class PersonRecord:
    """A person as the controller replicates them (the wire's ``person`` map, typed)."""

    person_id: str
    card_digest: bytes | None = attrs.field(repr=_digest_repr)
    card_last4: str | None
    phone_digest: bytes | None = attrs.field(repr=_digest_repr)
    palms: tuple[StoredPalm, ...] = attrs.field(repr=lambda palms: f"<{len(palms)} palms>")
    enrolled_at: float
    origin_node: str

    @classmethod
    def from_wire(cls, data: object) -> PersonRecord:
        """The record a wire ``person`` map describes, or :class:`BadRecord` naming what is wrong.

        It takes exactly the people a gate takes (:func:`palmnode.link.wire.person_from_wire`, §8:
        32-byte digests, a last four of ASCII digits, at most 128 characters of origin, a finite
        time, each palm once, real templates holding a modality, ...): a person stored here is pushed
        and synced to every gate, so one a gate refuses would be refused by each, on every sync.
        The templates are kept as the gate sent them (opaque bytes)."""
        if not isinstance(data, Mapping):
            raise BadRecord(f"person is {type(data).__name__}, not a map")
        data = dict(data)
        try:
            person_from_wire(data)
        except WireError as exc:
            raise BadRecord(one_line(exc)) from None
        if not data["origin_node"]:
            raise BadRecord("person.origin_node: the enrolling gate's name expected, got an empty string")
        return cls(person_id=data["person_id"], card_digest=data["card_digest"], card_last4=data["card_last4"],
                   phone_digest=data["phone_digest"],
                   palms=tuple(StoredPalm(p["palm"], tuple(p["templates"])) for p in data["palms"]),
                   enrolled_at=float(data["enrolled_at"]), origin_node=data["origin_node"])

    def to_wire(self) -> dict[str, Any]:
        """The documented wire map (msgpack-ready)."""
        return {"person_id": self.person_id, "card_digest": self.card_digest, "card_last4": self.card_last4,
                "phone_digest": self.phone_digest,
                "palms": [{"palm": p.palm, "templates": list(p.templates)} for p in self.palms],
                "enrolled_at": self.enrolled_at, "origin_node": self.origin_node}


def _text(data: Mapping, name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID:
        raise BadRecord(f"{name} must be a non-empty string of at most {MAX_ID} characters")
    return value


@attrs.frozen
class Upsert:
    """Replication: this person (new or changed) as of ``cursor``."""

    cursor: int
    person: PersonRecord

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "upsert", "person": self.person.to_wire()}


@attrs.frozen
class Remove:
    """Replication: this person is gone as of ``cursor``; nothing but the id is kept."""

    cursor: int
    person_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "remove", "person_id": self.person_id}


Change = Upsert | Remove


@attrs.frozen
class Applied:
    """What applying one event did.

    ``duplicate``: the (node, key) pair was applied before; nothing changed now.
    ``change``: the replication change to push to the other nodes, if any.
    ``to_origin``: push ``change`` to the sending node too (an enrolment of someone already removed
    is refused and the node is told to forget them).
    ``rejected``: the payload lacked what its kind needs; recorded, nothing else changed.
    ``cards_released``: remembered cards (``forget_card``) this event let go: every gate known has
    now delivered past their window (the WAL was truncated after, or :attr:`Store.scrub_pending`).
    """

    duplicate: bool
    effect: str
    change: Change | None = None
    to_origin: bool = False
    rejected: bool = False
    cards_released: int = 0


@attrs.frozen
class Charge:
    """One decision of the reference payment ledger (``currency``: the ledger's, ISO 4217 upper case)."""

    approved: bool
    reference: str
    reason: str | None = None
    currency: str | None = None

    def to_wire(self) -> dict[str, Any]:
        result: dict[str, Any] = {"approved": self.approved, "reference": self.reference}
        if self.currency is not None:
            result["currency"] = self.currency
        if self.reason is not None:
            result["reason"] = self.reason
        return result


@attrs.frozen
class NodeRecord:
    """A node the controller has seen (from its Hello)."""

    node_id: str
    first_seen: float
    last_seen: float
    version: int
    capabilities: tuple[str, ...]


@attrs.frozen
class EventRecord:
    """One applied event as recorded (``data`` only for the non-biometric kinds)."""

    node_id: str
    key: str
    seq: int
    kind: str
    at: float
    effect: str
    data: dict | None


@attrs.frozen
class DeviceHealthRecord:
    """The last ``device_health`` a node reported for one of its devices."""

    node_id: str
    name: str
    state: str
    error: str | None
    at: float


class Store:
    """The controller's SQLite record. Open with :meth:`open`; every method is one transaction."""

    def __init__(self, conn: sqlite3.Connection, path: Path, keys: VaultKeys, lock_fd: int | None = None) -> None:
        #: how long after a card's store-wide deletion an enrolment of it still counts as one made
        #: before the deletion (FORGET_WINDOW_S; the controller sets its config's)
        self.forget_window_s = FORGET_WINDOW_S
        self._conn = conn
        self._lock_fd = lock_fd  # the one controller using this database (lockfile)
        self._lock = threading.Lock()
        self.path = path
        self._key = keys.template_key
        self._keys = keys
        #: the WAL may still hold page images of removed rows: the last :meth:`scrub` could not
        #: truncate it (another connection held a read transaction), so call it again
        self.scrub_pending = False
        self._closed = False
        #: why the last scrub failed, one line (None after a success)
        self.scrub_blocked: str | None = None

    @classmethod
    def open(cls, path: Path, keys: VaultKeys) -> Store:
        """Open (creating, mode 0600) the database at ``path`` sealed under ``keys.template_key``."""
        path = Path(path)
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600))
            os.chmod(path, 0o600)  # -wal and -shm take the database file's mode
            lock_fd = _lock(path)
        except OSError as exc:
            raise StoreError(f"cannot open controller database {path}: {_reason(exc)}") from None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            os.close(lock_fd)
            raise StoreError(f"cannot open controller database {path}: {_reason(exc)}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives a power cut
            conn.execute("PRAGMA secure_delete=ON")  # a removed person's bytes are overwritten, not freed
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"controller database {path} has schema {version}, newer than this "
                                 f"palmnode ({SCHEMA_VERSION}); upgrade palmnode")
            if version == 1:
                _migrate_from_1(conn)
            conn.executescript(_SCHEMA)
            _fill_progress(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            os.close(lock_fd)
            raise StoreError(f"controller database {path} is not usable: {_reason(exc)}") from None
        except StoreError:
            conn.close()
            os.close(lock_fd)
            raise
        store = cls(conn, path, keys, lock_fd)
        store._check_key()
        # a controller stopped after a removal committed but before its WAL was truncated (killed,
        # or a reader held the file) left the removed rows' old pages in the WAL: truncate it now
        store.scrub()
        return store

    def _check_key(self) -> None:
        """Refuse another key: a value sealed under the first key must open under this one."""
        row = self._conn.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO meta VALUES ('key_check', ?)",
                               (seal(self._key, _KEY_CHECK, _KEY_CHECK_AAD),))
            return
        try:
            open_(self._key, row[0], _KEY_CHECK_AAD)
        except TamperedData:
            self.close()
            raise StoreError(f"controller database {self.path} was sealed with another key; "
                             "use its key file") from None

    def close(self) -> None:
        """Close (a last try at truncating the WAL first; ``scrub_pending`` says if it failed)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._scrub_locked()
            self._conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- transactions --------------------------------------------------------------------------

    def _write(self, fn, *args):
        """Run ``fn(conn, *args)`` in one IMMEDIATE transaction (all or nothing)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn, *args)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- nodes ---------------------------------------------------------------------------------

    def node_seen(self, node_id: str, *, version: int, capabilities: tuple[str, ...],
                  at: float | None = None) -> None:
        """Record a Hello from ``node_id``."""
        now = time.time() if at is None else at

        def txn(conn):
            conn.execute("INSERT INTO nodes VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                         "last_seen = excluded.last_seen, version = excluded.version, "
                         "capabilities = excluded.capabilities",
                         (node_id, now, now, version, json.dumps(list(capabilities))))
        self._write(txn)

    def nodes(self) -> list[NodeRecord]:
        return [NodeRecord(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])))
                for r in self._read("SELECT * FROM nodes ORDER BY node_id")]

    # -- events --------------------------------------------------------------------------------

    def apply_event(self, *, node_id: str, key: str, seq: int, kind: str, at: float,
                    data: Mapping[str, Any]) -> Applied:
        """Apply one delivered event exactly once: record it and its effect in one transaction.

        A (node_id, key) already recorded returns ``Applied(duplicate=True)`` and changes nothing.
        An ``enrolled``/``deleted`` payload without the documented shape, an ``enrolled`` whose
        person's ``origin_node`` is not ``node_id`` (the sending gate, as its certificate names it:
        no gate enrols in another's name), or one naming a live person with other data than theirs
        (a live person never changes), is recorded as rejected (``Applied.rejected``), changing
        nothing else, so it cannot block the node's outbox.
        Raises :class:`BadRecord` (nothing written) only for an unusable key.
        """
        if not 0 < len(key) <= MAX_ID:
            raise BadRecord(f"event key must be 1 to {MAX_ID} characters")
        person = removed = abandoned = rejected = None
        try:
            person = PersonRecord.from_wire(data.get("person")) if kind == "enrolled" else None
            if person is not None and person.origin_node != node_id:
                # a gate is its certificate's CN (the server's session): it enrols in its own name only
                raise BadRecord(f"person.origin_node {one_line(person.origin_node, 64)} is not the sending "
                                f"gate {node_id}")
            removed = _text(data, "person_id") if kind == "deleted" else None
            abandoned = _text(data, "key") if kind == "charge_abandoned" else None
        except BadRecord as exc:
            person, rejected = None, f"rejected: {exc}"

        def txn(conn):
            if conn.execute("SELECT 1 FROM events WHERE node_id = ? AND key = ?", (node_id, key)).fetchone():
                return Applied(duplicate=True, effect="duplicate")
            applied = Applied(duplicate=False, effect="recorded")
            kept: dict | None = None
            if rejected is not None:
                # recorded and acknowledged so it cannot block the node's outbox, but it changes nothing
                applied = Applied(duplicate=False, effect=rejected, rejected=True)
                _audit(conn, "event_rejected", node_id=node_id, key=key, event_kind=kind, reason=rejected)
            elif person is not None:
                applied = self._upsert(conn, person, node_id)
                if applied.rejected:
                    _audit(conn, "event_rejected", node_id=node_id, key=key, event_kind=kind, reason=applied.effect)
                else:
                    kept = {"person_id": person.person_id}
            elif removed is not None:
                applied = self._remove(conn, removed, node_id, reason=f"deleted at {node_id}")
                kept = {"person_id": removed}
            elif abandoned is not None:
                applied = _abandon_charge(conn, f"{node_id}/{abandoned}", node_id, data)
                kept = {"key": abandoned}
            elif kind == "device_health":
                kept = _plain(data)
                conn.execute("INSERT OR REPLACE INTO device_health VALUES (?, ?, ?, ?, ?)",
                             (node_id, str(data.get("name", "?"))[:MAX_ID], str(data.get("state", "?"))[:32],
                              None if data.get("error") is None else str(data["error"])[:500], at))
            elif kind in ("identified", "unknown"):
                kept = _plain(data)
                if _removal(conn, _person_named(kind, kept)) is not None:
                    # a visit reported after the person's removal (the gate had not heard yet)
                    kept, applied = None, Applied(duplicate=False, effect="recorded (person removed)")
            else:
                applied = Applied(duplicate=False, effect="unrecognised kind")
            conn.execute("INSERT INTO events (node_id, key, seq, kind, at, applied_at, effect, data, person_id) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (node_id, key, seq, kind, at, time.time(), applied.effect,
                          None if kept is None else msgpack.packb(kept), _person_named(kind, kept)))
            # the last event of this gate, not its latest stamp: one that comes out of order (or after
            # its clock stepped back) holds the remembered cards again until a later one passes
            conn.execute("INSERT INTO node_progress VALUES (?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                         "last_at = excluded.last_at", (node_id, at))
            released = self._release_cards(conn, at)
            return attrs.evolve(applied, cards_released=released) if released else applied
        applied = self._write(txn)
        if (isinstance(applied.change, Remove) and not applied.to_origin) or applied.cards_released:
            self.scrub()
        return applied

    def _upsert(self, conn: sqlite3.Connection, person: PersonRecord, node_id: str) -> Applied:
        removed_at = _removal(conn, person.person_id)
        if removed_at is not None:
            # a removal is final: a late enrolment of the same person never brings them back
            _audit(conn, "enrol_refused", person_id=person.person_id, node_id=node_id, reason="already removed")
            return Applied(duplicate=False, effect="refused: removed", change=Remove(removed_at, person.person_id),
                           to_origin=True)
        forgotten = None if person.card_digest is None else conn.execute(
            "SELECT at FROM forgotten_cards WHERE card_tag = ?", (self._card_tag(person.card_digest),)).fetchone()
        if forgotten is not None and person.enrolled_at <= forgotten[0] + self.forget_window_s:
            # made before the card's store-wide deletion (at a gate it could not reach): the person
            # asked to be forgotten, so they are, at their gate too (to_origin) and on every gate that
            # syncs (a remove in the log); nothing of theirs is written
            cursor = _log_change(conn, "remove", person.person_id)
            _audit(conn, "enrol_refused", person_id=person.person_id, node_id=node_id,
                   reason="its card was deleted store-wide before this enrolment")
            return Applied(duplicate=False, effect=CARD_FORGOTTEN, change=Remove(cursor, person.person_id),
                           to_origin=True)
        row = conn.execute("SELECT * FROM people WHERE person_id = ?", (person.person_id,)).fetchone()
        if row is not None and self._differs(row, person):
            # an enrolment is made once, under a new id: a live person's record never changes, so
            # every upsert of them a gate gets is the same and their order cannot matter. Other data
            # under a live id is a buggy gate, or one taking someone over (their card, their palms).
            return Applied(duplicate=False, effect=LIVE_PERSON_CHANGED, rejected=True)
        palms = msgpack.packb([[p.palm, list(p.templates)] for p in person.palms])
        conn.execute("INSERT OR REPLACE INTO people VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (person.person_id, person.card_digest, person.card_last4, person.phone_digest,
                      seal(self._key, palms, _aad(person.person_id)), person.enrolled_at, person.origin_node))
        cursor = _log_change(conn, "upsert", person.person_id)
        _audit(conn, "enrolled", person_id=person.person_id, node_id=node_id,
               palms=[p.palm for p in person.palms])
        return Applied(duplicate=False, effect="enrolled", change=Upsert(cursor, person))

    def _differs(self, row: tuple, person: PersonRecord) -> bool:
        """Whether the stored ``row`` holds other data than ``person`` (one whose templates no
        longer open, a damaged record, is replaced by the enrolment instead)."""
        try:
            return self._person(row) != person
        except TamperedData:
            return False

    def _remove(self, conn: sqlite3.Connection, person_id: str, node_id: str, *, reason: str) -> Applied:
        existed = conn.execute("DELETE FROM people WHERE person_id = ?", (person_id,)).rowcount > 0
        # their visits and enrolments stay only as the (node, key) that keeps redeliveries duplicates
        conn.execute("UPDATE events SET data = NULL, person_id = NULL WHERE person_id = ?", (person_id,))
        cursor = _log_change(conn, "remove", person_id)
        _audit(conn, "removed", person_id=person_id, node_id=node_id, reason=reason, existed=existed)
        return Applied(duplicate=False, effect="removed" if existed else "removed (unknown)",
                       change=Remove(cursor, person_id))

    def remove_person(self, person_id: str, *, by: str, reason: str = "request") -> Remove:
        """Remove a person outright (an operator's request at the controller); returns the change."""
        applied = self._write(lambda conn: self._remove(conn, person_id, by, reason=reason))
        self.scrub()
        return applied.change

    def forget_card(self, card_digest: bytes, *, by: str, reason: str = "request",
                    at: float | None = None) -> Remove | None:
        """Delete a card store-wide (an operator's request at the controller), in one transaction:
        the person the record holds with it is removed (their change returned; None: nobody), and
        the card is remembered (``forgotten_cards``, at ``at``, now by default) so an enrolment of it
        made before the deletion, at a gate the deletion could not reach, is refused when it arrives
        (:attr:`forget_window_s`), until no such enrolment can still arrive
        (:meth:`forget_settled_cards`) or at the latest with the events (:meth:`prune_events`)."""
        now = time.time() if at is None else at

        def txn(conn):
            row = conn.execute("SELECT person_id FROM people WHERE card_digest = ?", (card_digest,)).fetchone()
            applied = None if row is None else self._remove(conn, row[0], by, reason=reason)
            conn.execute("INSERT INTO forgotten_cards VALUES (?, ?) ON CONFLICT (card_tag) DO UPDATE SET "
                         "at = max(at, excluded.at)", (self._card_tag(card_digest), now))
            return None if applied is None else applied.change
        change = self._write(txn)
        self.scrub()
        return change

    def forget_settled_cards(self) -> int:
        """Let go of the remembered cards no enrolment made before their deletion can still reach
        (below); how many went (the WAL truncated after, or :attr:`scrub_pending`). The server calls
        it at start (and hourly, with the pruning); :meth:`apply_event` does the same for each event."""
        released = self._write(lambda conn: self._release_cards(conn, math.inf))
        if released:
            self.scrub()
        return released

    def _release_cards(self, conn: sqlite3.Connection, stamp: float) -> int:
        """Delete the remembered cards (deleted at D) that no gate can still deliver an enrolment of
        made by D + :attr:`forget_window_s`; ``stamp``: the event just applied (inf: any).

        A gate delivers its events oldest first (its outbox, in seq order; a redelivery after a lost
        ack is a duplicate, which moves nothing), so once the event it delivered last is stamped
        (its clock) past D + window + FORGET_SLACK_S, any enrolment it delivers later was made after
        that window. A card goes when that holds for every gate the controller knows of: each that
        said hello (``nodes``) or delivered an event (``node_progress``). A gate known but silent
        keeps it, up to the retention (``prune_events``). A gate never heard of cannot be waited
        for: it is indistinguishable from one installed later."""
        settled = stamp - self.forget_window_s - FORGET_SLACK_S
        row = conn.execute("SELECT min(at) FROM forgotten_cards").fetchone()
        if row[0] is None or not row[0] < settled:
            return 0  # none remembered, or this gate has not passed even the oldest one's window
        if conn.execute("SELECT 1 FROM nodes WHERE node_id NOT IN (SELECT node_id FROM node_progress) "
                        "LIMIT 1").fetchone():
            return 0  # a gate known that has delivered nothing yet
        low = conn.execute("SELECT min(last_at) FROM node_progress").fetchone()[0]
        if low is None:
            return 0  # no gate known: any may still come
        return conn.execute("DELETE FROM forgotten_cards WHERE at < ?",
                            (low - self.forget_window_s - FORGET_SLACK_S,)).rowcount

    def _card_tag(self, card_digest: bytes) -> bytes:
        """What ``forgotten_cards`` keeps of a card: keyed, so the file alone names no card."""
        return self._keys.lookup(b"controller.forgotten_cards:" + card_digest)

    def retire_unusable_people(self, *, by: str) -> dict[str, int] | None:
        """Remove every stored person a gate would refuse, once per database; ``{reason: count}``
        (empty when none), or None when this database was checked before.

        A controller before the record took enrolments by the gates' rules (§8,
        :meth:`PersonRecord.from_wire`) may have stored people every gate refuses (a digest of
        another length than 32 bytes, a template holding neither modality, ...): each sync pushed
        them and every gate dropped them.
        Such a person is removed as a removal is (the row overwritten, their events erased, a
        ``remove`` in the change log so every gate, their origin's included, forgets them; an audit
        ``removed`` entry by ``by``, its reason naming the field). Records accepted since are checked
        when they come, so this runs once (``meta`` row ``people_checked``). A record whose templates
        no longer open is left alone (its gate's next enrolment of them replaces it)."""

        def txn(conn):
            if conn.execute("SELECT 1 FROM meta WHERE name = ?", (_PEOPLE_CHECKED,)).fetchone():
                return None
            unusable: list[tuple[str, str]] = []
            for row in conn.execute("SELECT * FROM people ORDER BY rowid"):  # one at a time: ids kept only
                try:
                    PersonRecord.from_wire(self._person(row).to_wire())
                except TamperedData:
                    continue
                except BadRecord as exc:
                    unusable.append((row[0], str(exc)))
            reasons: dict[str, int] = {}
            for person_id, reason in unusable:
                self._remove(conn, person_id, by,
                             reason=f"retired at start: every gate refuses this record ({reason})")
                reasons[reason] = reasons.get(reason, 0) + 1
            conn.execute("INSERT INTO meta VALUES (?, ?)", (_PEOPLE_CHECKED, b"1"))
            return reasons
        reasons = self._write(txn)
        if reasons:
            self.scrub()
        return reasons

    def scrub(self) -> bool:
        """Truncate the WAL so removed rows survive in no page image of the ``-wal`` file: True when
        it is empty now.

        One attempt that never waits (a checkpoint that waited for another connection's read
        transaction to end would hold the store for its whole busy timeout, stalling every gate):
        when it cannot finish, :attr:`scrub_pending` stays True and :attr:`scrub_blocked` says
        why; call it again later.
        """
        with self._lock:
            return self._scrub_locked()

    def _scrub_locked(self) -> bool:
        blocked = walscrub.truncate(self._conn, "a backup, an sqlite3 shell")
        self.scrub_pending, self.scrub_blocked = blocked is not None, blocked
        return blocked is None

    def events(self, node_id: str | None = None, kind: str | None = None) -> list[EventRecord]:
        sql, params = "SELECT node_id, key, seq, kind, at, effect, data FROM events WHERE 1", []
        if node_id is not None:
            sql, params = sql + " AND node_id = ?", params + [node_id]
        if kind is not None:
            sql, params = sql + " AND kind = ?", params + [kind]
        return [EventRecord(r[0], r[1], r[2], r[3], r[4], r[5], None if r[6] is None else msgpack.unpackb(r[6]))
                for r in self._read(sql + " ORDER BY id", tuple(params))]

    def prune_events(self, *, before: float, keep_per_node: int = KEEP_PER_NODE) -> int:
        """Delete the events applied before ``before`` (seconds since the epoch) but each node's
        newest ``keep_per_node``; how many went. The cards deleted store-wide before ``before``
        (``forget_card``) are forgotten too: the upper bound of their keeping, for a gate known
        that never delivers past their window (gone for good) (:meth:`forget_settled_cards`).

        An event is redelivered only while its node lacks the ack, so a pruned key comes back
        only from a node that lost the ack and stayed away for the whole retention: then it is
        applied again (harmless for enrolments and deletions; a second visit row otherwise).
        """
        def txn(conn):
            # a forgotten card is remembered at most as long as the events (an enrolment made before
            # its deletion can arrive as late as a redelivered event)
            dropped = conn.execute("DELETE FROM forgotten_cards WHERE at < ?", (float(before),)).rowcount
            return dropped, conn.execute(
                "DELETE FROM events WHERE applied_at < ? AND id NOT IN (SELECT id FROM ("
                "SELECT id, row_number() OVER (PARTITION BY node_id ORDER BY id DESC) AS newest FROM events) "
                "WHERE newest <= ?)", (float(before), keep_per_node)).rowcount
        dropped, removed = self._write(txn)
        if removed or dropped:
            self.scrub()
        return removed

    def device_health(self) -> list[DeviceHealthRecord]:
        return [DeviceHealthRecord(*r) for r in self._read("SELECT * FROM device_health ORDER BY node_id, name")]

    # -- people and replication ----------------------------------------------------------------

    def get_person(self, person_id: str) -> PersonRecord | None:
        rows = self._read("SELECT * FROM people WHERE person_id = ?", (person_id,))
        return self._person(rows[0]) if rows else None

    def has_person(self, person_id: str) -> bool:
        """Whether the record holds ``person_id`` (opens nothing: true for a damaged record too)."""
        return bool(self._read("SELECT 1 FROM people WHERE person_id = ?", (person_id,)))

    def find_by_card(self, card_digest: bytes) -> str | None:
        """The person whose card digest this is, if any."""
        rows = self._read("SELECT person_id FROM people WHERE card_digest = ?", (card_digest,))
        return rows[0][0] if rows else None

    def people_count(self) -> int:
        return self._read("SELECT count(*) FROM people")[0][0]

    def _person(self, row: tuple) -> PersonRecord:
        person_id, card, last4, phone, sealed, enrolled_at, origin = row
        palms = msgpack.unpackb(open_(self._key, sealed, _aad(person_id)))
        return PersonRecord(person_id=person_id, card_digest=card, card_last4=last4, phone_digest=phone,
                            palms=tuple(StoredPalm(p, tuple(ts)) for p, ts in palms),
                            enrolled_at=enrolled_at, origin_node=origin)

    def head_cursor(self) -> int:
        """The cursor of the newest change (0 when there is none)."""
        return self._read("SELECT coalesce(max(cursor), 0) FROM changes")[0][0]

    def changes_since(self, cursor: int, *, limit: int = 100, max_bytes: int = SYNC_BYTES,
                      damaged: list[int] | None = None) -> tuple[list[Change], int, bool]:
        """Changes after ``cursor``, oldest first: at most ``limit``, about ``max_bytes`` of templates.

        Returns (changes, the cursor to ask from next, more-to-come). A cursor beyond the newest
        change (a node that knew another database) starts from the beginning. An upsert whose
        record no longer opens (damaged on disk) is skipped, its cursor added to ``damaged``: the
        gates get everyone else (it failed the whole sync of every gate, for good).
        """
        with self._lock:
            head = self._conn.execute("SELECT coalesce(max(cursor), 0) FROM changes").fetchone()[0]
            if cursor > head:
                cursor = 0
            out: list[Change] = []
            size, last = 0, cursor
            rows = self._conn.execute(
                "SELECT c.cursor, c.kind, c.person_id, p.* FROM changes c LEFT JOIN people p "
                "ON c.kind = 'upsert' AND p.person_id = c.person_id WHERE c.cursor > ? ORDER BY c.cursor",
                (cursor,))
            for row in rows:
                if row[1] == "remove":
                    change, cost = Remove(row[0], row[2]), 64
                else:
                    try:
                        person = self._person(row[3:])
                    except TamperedData:
                        if damaged is not None:
                            damaged.append(row[0])
                        last = row[0]
                        continue
                    change = Upsert(row[0], person)
                    cost = 256 + sum(len(t) for p in person.palms for t in p.templates)
                # a change that would take the page past max_bytes starts the next one (a page
                # of several large people must still fit the link's frame cap)
                if out and (size + cost > max_bytes or len(out) >= limit):
                    return out, last, True
                out.append(change)
                size += cost
                last = row[0]
            return out, last if out else head, False

    # -- charges -------------------------------------------------------------------------------

    def charge(self, *, request_key: str, node_id: str, person_id: str, card_digest: bytes | None,
               amount_cents: int, currency: str, limit_cents: int) -> Charge:
        """Decide a charge: approved when the person exists, the card digest is theirs and the amount
        is within ``limit_cents``. The same ``request_key`` always gets the first decision back."""

        def txn(conn):
            row = conn.execute("SELECT approved, reference, reason, currency FROM charges WHERE request_key = ?",
                               (request_key,)).fetchone()
            if row is not None:
                return Charge(bool(row[0]), row[1], row[2], row[3])
            person = conn.execute("SELECT card_digest FROM people WHERE person_id = ?", (person_id,)).fetchone()
            if person is None:
                reason = "unknown person"
            elif person[0] is None or card_digest is None or not secrets.compare_digest(person[0], card_digest):
                reason = "card does not match"
            elif amount_cents <= 0:
                reason = "amount must be positive"
            elif amount_cents > limit_cents:
                reason = "over the per-transaction limit"
            else:
                reason = None
            reference = "ch_" + secrets.token_hex(8)
            conn.execute("INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (request_key, reference, node_id, person_id, amount_cents, currency, reason is None,
                          reason, time.time()))
            return Charge(reason is None, reference, reason, currency)
        return self._write(txn)

    # -- audit ---------------------------------------------------------------------------------

    def audit(self, kind: str, **fields: object) -> None:
        """Add an audit entry (plain values only: never templates, card or phone digests)."""
        self._write(lambda conn: _audit(conn, kind, **fields))

    def audit_entries(self) -> list[dict]:
        return [{"at": r[0], "kind": r[1], **json.loads(r[2])}
                for r in self._read("SELECT at, kind, fields FROM audit ORDER BY id")]


_KEY_CHECK = b"palmnode controller key check"
_KEY_CHECK_AAD = b"controller.meta:key_check"
_PEOPLE_CHECKED = "people_checked"  # meta: every stored person was checked by the gates' rules (once)


def _aad(person_id: str) -> bytes:
    return b"controller.people:" + person_id.encode()


def _log_change(conn: sqlite3.Connection, kind: str, person_id: str) -> int:
    # the log keeps only a person's latest change: no earlier upsert of theirs survives a remove
    conn.execute("DELETE FROM changes WHERE person_id = ?", (person_id,))
    return conn.execute("INSERT INTO changes (kind, person_id, at) VALUES (?, ?, ?)",
                        (kind, person_id, time.time())).lastrowid


def _abandon_charge(conn: sqlite3.Connection, request_key: str, node_id: str, data: Mapping[str, Any]) -> Applied:
    """A charge whose decision never reached its gate (the customer was told it failed): an
    approval is voided, and a request still to come is declined (its key gets this decision)."""
    reason = "abandoned by the gate: no answer in time"
    row = conn.execute("SELECT approved, reference FROM charges WHERE request_key = ?", (request_key,)).fetchone()
    if row is None:
        amount, currency = data.get("amount_cents"), data.get("currency")
        amount = amount if type(amount) is int and amount in SQL_INT else 0
        currency = currency[:3] if isinstance(currency, str) else ""
        conn.execute("INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (request_key, "ch_" + secrets.token_hex(8), node_id, "", amount, currency, False, reason,
                      time.time()))
        return Applied(duplicate=False, effect="charge declined before its request")
    if not row[0]:
        return Applied(duplicate=False, effect="charge was declined")
    conn.execute("UPDATE charges SET approved = 0, reason = ? WHERE request_key = ?", (reason, request_key))
    _audit(conn, "charge_voided", reference=row[1], node_id=node_id, reason=reason)
    return Applied(duplicate=False, effect="charge voided")


def _audit(conn: sqlite3.Connection, kind: str, **fields: object) -> None:
    conn.execute("INSERT INTO audit (at, kind, fields) VALUES (?, ?, ?)",
                 (time.time(), kind, json.dumps(fields, default=str)))


def _removal(conn: sqlite3.Connection, person_id: str | None) -> int | None:
    """The cursor of ``person_id``'s removal, if their latest change is one."""
    if person_id is None:
        return None
    row = conn.execute("SELECT cursor, kind FROM changes WHERE person_id = ?", (person_id,)).fetchone()
    return row[0] if row is not None and row[1] == "remove" else None


def _person_named(kind: str, kept: Mapping[str, Any] | None) -> str | None:
    """The person an event row names (``identified``, ``enrolled``, ``deleted``), if any."""
    if kept is None or kind not in ("identified", "enrolled", "deleted"):
        return None
    person_id = kept.get("person_id")
    return person_id if isinstance(person_id, str) else None


def _fill_progress(conn: sqlite3.Connection) -> None:
    """A database from before ``node_progress`` (or a new one): each gate's last applied event
    (the newest of its events: pruning keeps each gate's newest) stands for its progress."""
    if conn.execute("SELECT 1 FROM node_progress LIMIT 1").fetchone() is None:
        conn.execute("INSERT INTO node_progress SELECT node_id, at FROM events WHERE id IN "
                     "(SELECT max(id) FROM events GROUP BY node_id)")


def _lock(path: Path) -> int:
    """The controller's exclusive lock on its database (``<path>.lock``), as an open descriptor: a
    second controller on the same database (its gates would miss the first's pushes) is refused
    instead of serving beside it."""
    real = path.resolve()  # a database symlinked onto another disk is locked where it is
    return lockfile.hold(real, StoreError, f"controller database {path} is in use by another controller "
                         f"(it holds {lockfile.lock_path(real)}); stop it first")


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: events name their person in a column, filled from the rows' data."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("ALTER TABLE events ADD COLUMN person_id TEXT")
        rows = conn.execute("SELECT id, kind, data FROM events WHERE data IS NOT NULL").fetchall()
        for row_id, kind, data in rows:
            try:
                kept = msgpack.unpackb(data)
            except (ValueError, msgpack.UnpackException):
                continue
            if isinstance(kept, dict) and (person_id := _person_named(kind, kept)) is not None:
                conn.execute("UPDATE events SET person_id = ? WHERE id = ?", (person_id, row_id))
        conn.execute("PRAGMA user_version=2")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _plain(data: Mapping[str, Any]) -> dict:
    """The scalar fields of a non-biometric event (bytes and nested values are not kept)."""
    return {str(k)[:64]: v for k, v in data.items()
            if isinstance(v, (str, int, float, bool)) or v is None}


def _reason(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc)).splitlines()[0]
