"""The vault proper: one SQLite file (WAL) holding people, their sealed templates, the outbox and the audit log.

Synchronous and thread-safe: one connection, one lock; async callers use ``trio.to_thread.run_sync``.
Every change that belongs together (a person and their outbox event; a removal, its audit entry and
its event) is one transaction, so a crash at any instant leaves either all of it or none of it.

A removal overwrites the person's bytes (``secure_delete``) and truncates the WAL, so no page image
of them stays in the ``-wal`` file. The truncation never waits: when another connection to the file
(an ``sqlite3`` shell, a backup, ``palmnode vault check``) holds a read transaction it cannot finish,
:attr:`Vault.scrub_pending` says so and the vault's owner tries :meth:`Vault.scrub` again (a node
does, in the background, with a backoff: ``walscrub.WalKeeper``) until it succeeds.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hmac
import json
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import msgpack

from drivers.card_reader.cardtoken import CardToken
from palmnode import lockfile, walscrub
from palmnode.fserrors import folder_error, lasting
from palmnode.biometrics.types import BadTemplate, PalmTemplate
from palmnode.vault import schema
from palmnode.vault.crypto import open_, seal
from palmnode.vault.errors import (
    DAMAGED,
    NOT_WRITABLE,
    UNAVAILABLE,
    DuplicateCard,
    DuplicatePerson,
    DuplicatePhone,
    TamperedData,
    VaultBusy,
    VaultError,
    VaultKeyError,
)
from palmnode.vault.keys import VaultKeys, load_keys
from palmnode.vault.phone import normalise_phone
from palmnode.vault.records import EnrolledPalm, OutboxEvent, Person, VaultConfig

_KEY_CHECK = b"palmnode vault key check v1"
_PEOPLE_BATCH = 256  # people() reads this many people per lock hold
_TEMPLATE_BATCH = 1024  # search_templates() and unreadable() read this many per lock hold
#: delivered outbox rows (payload erased) kept behind the newest acknowledged event
DELIVERED_KEPT = 1000
_AUDIT_SCALARS = (str, int, float, bool, type(None))


def _os_reason(exc: OSError) -> str:
    """VaultError.reason of a file operation's error."""
    return NOT_WRITABLE if lasting(exc) else UNAVAILABLE


def _sqlite_reason(exc: sqlite3.Error) -> str:
    """VaultError.reason of SQLite's error: its pages are damaged (not a database, corrupt); it
    cannot write the file or the -wal/-shm beside it (read-only file, folder or filesystem);
    otherwise busy, locked, an I/O error, a full disk, which may pass."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return UNAVAILABLE
    if code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return DAMAGED
    if code & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM) and code != sqlite3.SQLITE_READONLY_DBMOVED:
        return NOT_WRITABLE
    return UNAVAILABLE


def _sqlite_hint(exc: sqlite3.Error, path: Path) -> str:
    """What to do about SQLite's error, when it is lasting (appended to its one line)."""
    reason = _sqlite_reason(exc)
    if reason == DAMAGED:
        return "; the file is damaged: restore it from a backup (palmnode vault check names what it can)"
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_READONLY_DIRECTORY:
        return (f"; the node's user must be able to write its folder {path.parent} (SQLite keeps "
                f"{path.name}-wal and {path.name}-shm beside it)")
    if reason == NOT_WRITABLE:
        return f"; the node's user must be able to write {path}, its -wal and -shm files and their folder"
    return ""


def _aad(table: str, *parts: str | int | bytes) -> bytes:
    """Associated data naming a sealed value's place; length-prefixed so no two places collide."""
    out = bytearray()
    for part in (table, *parts):
        raw = part if isinstance(part, bytes) else str(part).encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def _private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 (or narrow an existing one): SQLite gives -wal/-shm the same mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.chmod(side, 0o600)


def _digest(value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"a digest is bytes, got {type(value).__name__}")
    return bytes(value)


def _person_from_event(data: Mapping[str, Any]) -> str | None:
    """The person an event's payload names (``person_id`` or ``person.person_id``), for purging with them."""
    person_id = data.get("person_id")
    if isinstance(person_id, str):
        return person_id
    person = data.get("person")
    if isinstance(person, Mapping) and isinstance(person.get("person_id"), str):
        return person["person_id"]
    return None


class Vault:
    """The node's encrypted store of enrolled people, its event outbox and its audit log."""

    def __init__(self, conn: sqlite3.Connection, path: Path, keys: VaultKeys, instance: str,
                 node_id: str, clock: Callable[[], float], holder: int | None = None,
                 busy_timeout: float = 5.0) -> None:
        self._conn = conn
        #: how long a transaction waits for another process's write lock (s): for a caller that
        #: waits in steps (``palmnode.vault.steps``), how long to go on
        self.busy_timeout = busy_timeout
        self._holder = holder  # the open lock file of the node that holds the vault (exclusive)
        self._path = path
        self._keys = keys
        self._lock = threading.RLock()
        self._key_prefix = f"{node_id}/{instance}" if node_id else instance
        self._clock = clock
        self._closed = False
        #: the WAL may still hold page images of removed rows: the last :meth:`scrub` could not
        #: truncate it (another connection held a read transaction), so call it again
        self.scrub_pending = False
        #: why the last scrub failed, one line (None after a success)
        self.scrub_blocked: str | None = None

    # --- opening and closing ---------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, keys: VaultKeys, *, node_id: str = "",
             clock: Callable[[], float] = time.time, busy_timeout: float = 5.0, exclusive: bool = False,
             open_busy_timeout: float | None = None) -> Vault:
        """Open (or create, mode 0600) the vault at ``path``; :class:`VaultKeyError` if ``keys`` are not its keys.

        ``node_id`` prefixes the outbox's idempotency keys; ``clock`` stamps events and audit entries;
        ``busy_timeout`` is how long a transaction waits for another process holding the file's
        write lock (a WAL truncation never waits: :meth:`scrub`); ``open_busy_timeout`` (default:
        ``busy_timeout``) how long the opening itself waits for it, :class:`VaultBusy` after that
        (a caller in an event loop opens with a short one and tries again while it may be stopped:
        a thread waiting in SQLite cannot be cancelled).
        ``exclusive`` (a node): hold ``<path>.lock`` until closed, and refuse the vault while
        another holder has it: a second node on the same file would keep recognising the people
        the first deletes, from its own gallery. ``palmnode vault check`` opens without it.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:  # a file in the way, a read-only or foreign folder
            why = folder_error(exc)
            raise VaultError(f"cannot create vault {path}: cannot create its folder {path.parent}: {why}",
                             reason=_os_reason(exc)) from None
        try:
            _private_file(path)
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                message = f"vault {path} is a folder, not a file: name the vault's database file"
            elif os.path.lexists(path):
                message = f"cannot open vault {path} for writing: {exc.strerror}"
            else:
                message = f"cannot create vault {path}: {exc.strerror}"
            raise VaultError(message, reason=_os_reason(exc)) from None
        holder = _hold(path) if exclusive else None
        try:
            return cls._connect(path, keys, node_id, clock, busy_timeout, holder, open_busy_timeout)
        except BaseException:
            if holder is not None:
                os.close(holder)
            raise

    @classmethod
    def _connect(cls, path: Path, keys: VaultKeys, node_id: str, clock: Callable[[], float], busy_timeout: float,
              holder: int | None, open_busy_timeout: float | None = None) -> Vault:
        opening = busy_timeout if open_busy_timeout is None else open_busy_timeout
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=opening)
        try:
            instance = cls._prepare(conn, path, keys, clock)
            if opening != busy_timeout:  # what every transaction after the opening waits
                conn.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            reason = _sqlite_reason(exc)
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise VaultBusy(f"cannot open vault {path}: {exc}") from None
            if isinstance(exc, sqlite3.OperationalError) and reason != DAMAGED:
                # locked, busy, I/O: the file may well be fine; or it cannot be written
                raise VaultError(f"cannot open vault {path}: {exc}{_sqlite_hint(exc, path)}", reason=reason) from None
            raise VaultError(f"{path} is not a usable palmnode vault ({exc}); restore it from a backup",
                             reason=DAMAGED) from None
        except BaseException:
            conn.close()
            raise
        vault = cls(conn, path, keys, instance, node_id, clock, holder, busy_timeout)
        # a process killed after a removal committed but before its checkpoint (or stopped while a
        # reader blocked it) left the removed person's old pages in the WAL: truncate it now; when a
        # reader blocks this too, scrub_pending tells the owner to try again
        vault.scrub()
        return vault

    @staticmethod
    def _prepare(conn: sqlite3.Connection, path: Path, keys: VaultKeys, clock: Callable[[], float]) -> str:
        conn.execute("PRAGMA secure_delete = ON")  # deleted rows are zeroed, not just unlinked
        conn.execute("PRAGMA temp_store = MEMORY")  # no temporary files holding rows
        conn.execute("PRAGMA foreign_keys = ON")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise VaultError(f"{path}: SQLite refused WAL mode (got {mode}); put the vault on a local filesystem",
                             reason=NOT_WRITABLE)
        conn.execute("PRAGMA synchronous = FULL")  # a commit is on disk before add_person returns
        check = keys.lookup(_KEY_CHECK)
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = schema.stored_version(conn, path)
            if version is None:
                schema.create(conn)
                instance = secrets.token_hex(8)
                conn.execute("INSERT INTO vault (only_row, version, instance, key_check, created_at) "
                             "VALUES (1, ?, ?, ?, ?)", (schema.SCHEMA_VERSION, instance, check, clock()))
            else:
                instance, stored_check = conn.execute("SELECT instance, key_check FROM vault").fetchone()
                if not isinstance(stored_check, bytes) or not hmac.compare_digest(stored_check, check):
                    raise VaultKeyError(f"vault {path} was created with a different key; "
                                        f"use the key file or PALMNODE_VAULT_KEY it was made with")
                schema.migrate(conn, version)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        _private_file(path)  # -wal and -shm exist now
        return instance

    def close(self) -> None:
        """Truncate the WAL and close; the vault is then one file again. Safe to call twice.

        The truncation is one last :meth:`scrub` that does not wait: when another connection
        blocks it, :attr:`scrub_pending` stays True and the next opening truncates the WAL."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._scrub_locked()
            self._conn.close()
            if self._holder is not None:
                os.close(self._holder)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    @contextlib.contextmanager
    def _transaction(self, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; SQLite's own errors become a one-line VaultError,
        :class:`VaultBusy` when another connection holds the write lock past the busy timeout
        (``wait``: this transaction's, in seconds, instead of the vault's)."""
        with self._lock:
            self._check_open()
            previous = None
            try:
                if wait is not None:
                    previous = self._conn.execute("PRAGMA busy_timeout").fetchone()[0]
                    self._conn.execute(f"PRAGMA busy_timeout = {round(wait * 1000)}")
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                message = f"vault {self._path}: {exc} (nothing was written){_sqlite_hint(exc, self._path)}"
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise VaultBusy(message) from None
                raise VaultError(message, reason=_sqlite_reason(exc)) from None
            finally:
                if previous is not None:
                    self._conn.execute(f"PRAGMA busy_timeout = {int(previous)}")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._check_open()
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise VaultError(f"vault {self._path}: {exc}{_sqlite_hint(exc, self._path)}",
                                 reason=_sqlite_reason(exc)) from None

    def _check_open(self) -> None:
        if self._closed:
            raise VaultError(f"vault {self._path} is closed")

    # --- digests ----------------------------------------------------------------------------
    def phone_digest(self, phone: str) -> bytes:
        """HMAC(lookup_key, the E.164 form of ``phone``); :class:`InvalidPhone` if it is not a phone number."""
        return self._keys.lookup(b"phone\0" + normalise_phone(phone).encode("ascii"))

    def audit_subject(self, person_id: str) -> str:
        """How the audit log names ``person_id``: a keyed hash (hex), never the id itself."""
        return self._keys.lookup(b"person\0" + person_id.encode("utf-8")).hex()

    # --- people -----------------------------------------------------------------------------
    def add_person(self, person: Person, *, event: tuple[str, dict] | None = None,
                   wait: float | None = None) -> OutboxEvent | None:
        """Store ``person`` (sealed templates, card, phone) and ``event`` in ONE transaction.

        Raises :class:`DuplicatePerson`, :class:`DuplicateCard` or :class:`DuplicatePhone` with
        nothing written. Returns the outbox event when one was given. ``wait``, here and in every
        write below: how long to wait for another connection's write lock (default the vault's busy
        timeout), :class:`VaultBusy` after that with nothing written (``palmnode.vault.steps``).
        """
        sealed = self._seal_templates(person)  # outside the lock: other threads keep reading meanwhile
        with self._transaction(wait) as conn:
            if conn.execute("SELECT 1 FROM people WHERE person_id = ?", (person.person_id,)).fetchone():
                raise DuplicatePerson(f"person {person.person_id} is already enrolled")
            self._insert(conn, person, sealed, audit="person_added")
            return self._append(conn, *event, person_id=person.person_id) if event is not None else None

    def upsert_people(self, people: Iterable[Person], *, wait: float | None = None) -> int:
        """Store each of ``people``, replacing whoever has the same id, in ONE transaction (replication, sync).

        A card or phone held by a different person id is :class:`DuplicateCard` / :class:`DuplicatePhone`
        and nothing of the batch is written. No outbox events (the controller sent them); outbox events
        already naming a replaced person stay. Pass chunks of a few thousand people. Returns how many.
        """
        count = 0
        with self._transaction(wait) as conn:
            for person in people:
                replaced = conn.execute("DELETE FROM people WHERE person_id = ?", (person.person_id,)).rowcount
                self._insert(conn, person, self._seal_templates(person),
                             audit="person_replaced" if replaced else "person_added")
                count += 1
        return count

    def _seal_templates(self, person: Person) -> list[tuple[str, int, int, bytes]]:
        pid = person.person_id
        return [(palm.palm, position, idx, seal(self._keys.template_key, template.to_bytes(),
                                                _aad("templates", pid, palm.palm, idx)))
                for position, palm in enumerate(person.palms) for idx, template in enumerate(palm.templates)]

    def _insert(self, conn: sqlite3.Connection, person: Person, sealed: list[tuple[str, int, int, bytes]],
                *, audit: str) -> None:
        """Insert a person absent from the vault; duplicates of card or phone raise before any write of theirs."""
        pid = person.person_id
        if person.card is not None:
            row = conn.execute("SELECT person_id FROM cards WHERE card_digest = ?", (person.card.digest,)).fetchone()
            if row:
                raise DuplicateCard(f"card …{person.card.last4} is already enrolled to person {row[0]}")
        if person.phone_digest is not None:
            row = conn.execute("SELECT person_id FROM phones WHERE phone_digest = ?", (person.phone_digest,)).fetchone()
            if row:
                raise DuplicatePhone(f"phone number is already enrolled to person {row[0]}")
        conn.execute("INSERT INTO people (person_id, enrolled_at, origin_node) VALUES (?, ?, ?)",
                     (pid, float(person.enrolled_at), person.origin_node))
        conn.executemany("INSERT INTO palms (person_id, palm, position) VALUES (?, ?, ?)",
                         [(pid, palm.palm, position) for position, palm in enumerate(person.palms)])
        conn.executemany("INSERT INTO templates (person_id, palm, idx, sealed) VALUES (?, ?, ?, ?)",
                         [(pid, palm, idx, blob) for palm, _, idx, blob in sealed])
        if person.card is not None:
            digest = person.card.digest
            conn.execute("INSERT INTO cards (card_digest, person_id, last4) VALUES (?, ?, ?)",
                         (digest, pid, seal(self._keys.template_key, person.card.last4.encode("utf-8"),
                                            _aad("cards", pid, digest))))
        if person.phone_digest is not None:
            conn.execute("INSERT INTO phones (phone_digest, person_id) VALUES (?, ?)", (person.phone_digest, pid))
        self._audit(conn, audit, pid, {"origin_node": person.origin_node,
                                       "palms": ",".join(p.palm for p in person.palms)})

    def remove_person(self, person_id: str, *, event: tuple[str, dict] | None = None,
                      reason: str = "request", wait: float | None = None) -> bool:
        """Forget ``person_id``: every row of theirs (templates, card, phone, outbox events naming them),
        an audit entry naming them only by keyed hash, and ``event``, in ONE transaction; then a WAL
        checkpoint (TRUNCATE) so nothing of theirs is left in any vault file (:meth:`scrub`: when
        another connection blocks it, :attr:`scrub_pending` is True afterwards). False if they were
        absent (their stray outbox events are purged all the same; no audit entry or event is written).
        """
        with self._transaction(wait) as conn:
            purged = conn.execute("DELETE FROM outbox WHERE person_id = ?", (person_id,)).rowcount
            present = conn.execute("DELETE FROM people WHERE person_id = ?", (person_id,)).rowcount > 0
            if present:
                self._audit(conn, "person_removed", person_id, {"reason": reason})
                if event is not None:
                    # the event survives the purge on purpose: it tells the controller they are gone
                    self._append(conn, *event, person_id=None)
        if present or purged:
            # the removal stands whatever this says (raising now would leave the caller's gallery out
            # of step); when another connection blocks the truncation, scrub_pending tells the
            # caller to try again
            self.scrub()
        return present

    def scrub(self) -> bool:
        """Copy the WAL into the database and truncate it to zero bytes, so no old page version of
        a removed row is left in the ``-wal`` file: True when it is empty now.

        One attempt that never waits: a checkpoint waiting for another connection's read
        transaction to end would hold the vault (every identify, enrolment and decision of the gate)
        for the whole busy timeout. When it cannot finish, :attr:`scrub_pending` stays True and
        :attr:`scrub_blocked` says why; call it again later.
        """
        with self._lock:
            self._check_open()
            return self._scrub_locked()

    def _scrub_locked(self) -> bool:
        blocked = walscrub.truncate(self._conn, "a backup, an sqlite3 shell, palmnode vault check")
        self.scrub_pending, self.scrub_blocked = blocked is not None, blocked
        return blocked is None

    def get(self, person_id: str) -> Person | None:
        """The person with their templates decrypted, or None. :class:`TamperedData` names a bad row."""
        with self._reading() as conn:
            row = conn.execute("SELECT person_id, enrolled_at, origin_node FROM people WHERE person_id = ?",
                               (person_id,)).fetchone()
            if row is None:
                return None
            people = self._load(conn, [row])
        return people[0]

    def palm_templates(self, person_id: str, palm: str, unreadable: list[str] | None = None) -> tuple[PalmTemplate, ...]:
        """The templates of one enrolled palm, decrypted, the search template first; () when the
        person or palm is not enrolled. Opens nothing else of the person. A template that fails to
        open raises its :class:`VaultError`, or with ``unreadable`` given is left out (the search
        template: then all of them, as for a palm not enrolled) and its message appended there."""
        with self._reading() as conn:
            rows = conn.execute("SELECT idx, sealed FROM templates WHERE person_id = ? AND palm = ? ORDER BY idx",
                                (person_id, palm)).fetchall()
        opened = []
        for n, (idx, blob) in enumerate(rows):
            try:
                opened.append(self._open_template(person_id, palm, idx, blob))
            except VaultError as exc:
                if unreadable is None:
                    raise
                unreadable.append(str(exc))
                if n == 0:
                    return ()
        return tuple(opened)

    def people(self) -> Iterator[Person]:
        """Every enrolled person (ordered by id), read in batches so other threads are not held up."""
        after = ""
        while True:
            with self._reading() as conn:
                rows = conn.execute("SELECT person_id, enrolled_at, origin_node FROM people WHERE person_id > ? "
                                    "ORDER BY person_id LIMIT ?", (after, _PEOPLE_BATCH)).fetchall()
                batch = self._load(conn, rows)
            yield from batch
            if len(rows) < _PEOPLE_BATCH:
                return
            after = rows[-1][0]

    def search_templates(self, unreadable: list[str] | None = None) -> Iterator[list[tuple[str, str, PalmTemplate]]]:
        """Batches of (person id, palm, template): every enrolled palm's first template, its search
        template (what a gallery holds), ordered by person and palm, _TEMPLATE_BATCH per read (and
        per ``Gallery.add_many`` at a node's start, which opens no other template and no card).
        A template that fails to open (or holds neither modality) raises its :class:`VaultError`,
        or with ``unreadable`` given is left out and its error message appended there."""
        after: tuple[str, str] = ("", "")
        while True:
            with self._reading() as conn:
                rows = conn.execute("SELECT person_id, palm, sealed FROM templates WHERE idx = 0 "
                                    "AND (person_id, palm) > (?, ?) ORDER BY person_id, palm LIMIT ?",
                                    (*after, _TEMPLATE_BATCH)).fetchall()
                batch = []
                for pid, palm, blob in rows:
                    try:
                        template = self._open_template(pid, palm, 0, blob)
                        if template.surface is None and template.vein is None:  # (older builds stored such)
                            raise VaultError(f"template {palm}#0 of person {pid} in vault {self._path} holds "
                                             "neither modality: it cannot be searched")
                        batch.append((pid, palm, template))
                    except VaultError as exc:
                        if unreadable is None:
                            raise
                        unreadable.append(str(exc))
            if batch:
                yield batch
            if len(rows) < _TEMPLATE_BATCH:
                return
            after = rows[-1][0], rows[-1][1]

    def _load(self, conn: sqlite3.Connection, rows: list[tuple]) -> list[Person]:
        ids = [r[0] for r in rows]
        marks = ",".join("?" * len(ids))
        cards = {pid: (self._blob(d, f"card digest of person {pid}"), l4) for d, pid, l4 in
                 conn.execute(f"SELECT card_digest, person_id, last4 FROM cards WHERE person_id IN ({marks})", ids)}
        phones = {pid: self._blob(d, f"phone digest of person {pid}") for d, pid in
                  conn.execute(f"SELECT phone_digest, person_id FROM phones WHERE person_id IN ({marks})", ids)}
        palms: dict[str, list[tuple[str, list[PalmTemplate]]]] = {pid: [] for pid in ids}
        current: dict[tuple[str, str], list[PalmTemplate]] = {}
        for pid, palm in conn.execute(f"SELECT person_id, palm FROM palms WHERE person_id IN ({marks}) "
                                      f"ORDER BY person_id, position", ids):
            current[(pid, palm)] = []
            palms[pid].append((palm, current[(pid, palm)]))
        for pid, palm, idx, blob in conn.execute(
                f"SELECT person_id, palm, idx, sealed FROM templates WHERE person_id IN ({marks}) "
                f"ORDER BY person_id, palm, idx", ids):
            current[(pid, palm)].append(self._open_template(pid, palm, idx, blob))
        out = []
        for pid, enrolled_at, origin in rows:
            card = None
            if pid in cards:
                digest, sealed_last4 = cards[pid]
                card = CardToken(digest, self._open_last4(pid, digest, sealed_last4))
            try:
                enrolled = tuple(EnrolledPalm(name, tuple(templates)) for name, templates in palms[pid])
            except ValueError as exc:
                raise VaultError(f"person {pid} in vault {self._path} is incomplete: {exc}") from None
            out.append(Person(pid, card, phones.get(pid), enrolled, enrolled_at, origin))
        return out

    def _blob(self, value: Any, what: str) -> bytes:
        # never bytes(value): on an int that would allocate value zero bytes
        if not isinstance(value, bytes):
            raise TamperedData(f"{what} in vault {self._path} is {type(value).__name__}, not a blob")
        return value

    def _open(self, blob: Any, aad: bytes, what: str) -> bytes:
        try:
            return open_(self._keys.template_key, blob, aad)
        except TamperedData as exc:
            raise TamperedData(f"{what} in vault {self._path}: {exc}") from None

    def _open_last4(self, pid: str, digest: bytes, sealed: Any) -> str:
        return self._open(sealed, _aad("cards", pid, digest), f"card of person {pid}").decode("utf-8", errors="replace")

    def _open_template(self, pid: str, palm: str, idx: int, blob: Any) -> PalmTemplate:
        what = f"template {palm}#{idx} of person {pid}"
        data = self._open(blob, _aad("templates", pid, palm, idx), what)
        try:
            return PalmTemplate.from_bytes(data)
        except BadTemplate as exc:
            raise VaultError(f"{what} in vault {self._path} is not a template this build reads: {exc}") from None

    def find_by_card(self, card_digest: bytes) -> str | None:
        """The person enrolled with this card token digest, or None."""
        with self._reading() as conn:
            row = conn.execute("SELECT person_id FROM cards WHERE card_digest = ?", (_digest(card_digest),)).fetchone()
        return row[0] if row else None

    def find_by_phone(self, phone: str) -> str | None:
        """The person enrolled with this phone number (any spelling of it), or None; :class:`InvalidPhone`."""
        digest = self.phone_digest(phone)
        with self._reading() as conn:
            row = conn.execute("SELECT person_id FROM phones WHERE phone_digest = ?", (digest,)).fetchone()
        return row[0] if row else None

    def removed(self, person_ids: Iterable[str]) -> set[str]:
        """Which of ``person_ids`` this vault has removed before (their ``person_removed`` audit
        entry, found by keyed hash): a removal is final, a replicated upsert of them is refused."""
        subjects = {self.audit_subject(pid): pid for pid in person_ids}
        found: set[str] = set()
        keys = list(subjects)
        with self._reading() as conn:
            for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                chunk = keys[start:start + 500]
                rows = conn.execute(f"SELECT DISTINCT subject FROM audit WHERE kind = 'person_removed' AND subject IN "
                                    f"({','.join('?' * len(chunk))})", chunk)
                found.update(subjects[subject] for (subject,) in rows)
        return found

    def count(self) -> int:
        """How many people are enrolled."""
        with self._reading() as conn:
            return conn.execute("SELECT count(*) FROM people").fetchone()[0]

    # --- outbox -----------------------------------------------------------------------------
    def append_event(self, kind: str, data: dict, *, person_id: str | None = None,
                     enrolled_only: bool = False, wait: float | None = None) -> OutboxEvent | None:
        """Queue an event for the controller; ``person_id`` (default: the one ``data`` names) is purged with them.
        ``enrolled_only``: not queued (None) when that person is no longer enrolled, checked in the
        same transaction: a decision about someone deleted while it was being served must not
        write their id back after the purge."""
        person_id = person_id or _person_from_event(data)
        with self._transaction(wait) as conn:
            if (enrolled_only and person_id is not None and
                    conn.execute("SELECT 1 FROM people WHERE person_id = ?", (person_id,)).fetchone() is None):
                return None
            return self._append(conn, kind, data, person_id=person_id)

    def _append(self, conn: sqlite3.Connection, kind: str, data: dict, *, person_id: str | None) -> OutboxEvent:
        if not isinstance(kind, str) or not kind:
            raise ValueError("an outbox event needs a kind")
        try:
            payload = msgpack.packb(data, use_bin_type=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"outbox event {kind!r} data cannot be encoded: {exc}") from None
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        seq = (row[0] if row else 0) + 1
        key, at = f"{self._key_prefix}:{seq}", float(self._clock())
        conn.execute("INSERT INTO outbox (seq, key, kind, at, person_id, sealed) VALUES (?, ?, ?, ?, ?, ?)",
                     (seq, key, kind, at, person_id,
                      seal(self._keys.template_key, payload, _aad("outbox", seq, key, kind))))
        return OutboxEvent(seq, key, kind, at, msgpack.unpackb(payload, raw=False))

    def pending_events(self, *, limit: int = 100, unreadable: list[str] | None = None,
                       wait: float | None = None) -> list[OutboxEvent]:
        """Undelivered events, oldest first. :class:`TamperedData` names an event that fails to open;
        with ``unreadable`` given such an event leaves the queue instead (it can never be sent:
        marked delivered, its payload erased, an audit entry with its seq) and its error message is
        appended there, so one damaged row does not hold back every event after it (``wait``: how
        long that write waits for another connection's write lock, as in :meth:`add_person`)."""
        with self._reading() as conn:
            rows = conn.execute("SELECT seq, key, kind, at, sealed FROM outbox WHERE delivered = 0 "
                                "ORDER BY seq LIMIT ?", (int(limit),)).fetchall()
        events, dropped = [], []
        for seq, key, kind, at, blob in rows:
            try:
                data = self._open_event(seq, key, kind, blob)
            except VaultError as exc:
                if unreadable is None:
                    raise
                unreadable.append(str(exc))
                dropped.append(seq)
                continue
            events.append(OutboxEvent(seq, key, kind, at, data))
        if dropped:
            with self._transaction(wait) as conn:
                for seq in dropped:
                    self._delivered(conn, seq)
                    self._audit(conn, "outbox_event_dropped", None, {"seq": seq, "reason": "unreadable"})
        return events

    def _open_event(self, seq: int, key: str, kind: str, blob: Any) -> Any:
        payload = self._open(blob, _aad("outbox", seq, key, kind), f"outbox event {seq}")
        try:
            return msgpack.unpackb(payload, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise VaultError(f"outbox event {seq} in vault {self._path} does not decode: {exc}") from None

    def mark_delivered(self, seq: int, *, wait: float | None = None) -> None:
        """The controller acknowledged event ``seq``: it leaves the queue and its payload is erased.
        Delivered rows DELIVERED_KEPT or more events older are deleted with it, so the outbox of a
        gate that records a decision a second stays bounded."""
        with self._transaction(wait) as conn:
            self._delivered(conn, int(seq))
            conn.execute("DELETE FROM outbox WHERE delivered = 1 AND seq <= ?", (int(seq) - DELIVERED_KEPT,))

    @staticmethod
    def _delivered(conn: sqlite3.Connection, seq: int) -> None:
        """Event ``seq`` leaves the queue, its payload erased."""
        conn.execute("UPDATE outbox SET delivered = 1, sealed = NULL WHERE seq = ?", (seq,))

    # --- audit and state --------------------------------------------------------------------
    def audit(self, kind: str, **fields: Any) -> None:
        """Record ``kind`` with plain scalar ``fields``; a ``person_id`` field is stored as its keyed hash."""
        person_id = fields.pop("person_id", None)
        with self._transaction() as conn:
            self._audit(conn, kind, person_id, fields)

    def _audit(self, conn: sqlite3.Connection, kind: str, person_id: str | None, fields: dict[str, Any]) -> None:
        for name, value in fields.items():
            if not isinstance(value, _AUDIT_SCALARS) or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"audit field {name!r} must be a plain scalar (no binary or biometric data), "
                                 f"got {type(value).__name__}")
        subject = self.audit_subject(person_id) if person_id is not None else None
        conn.execute("INSERT INTO audit (at, kind, subject, fields) VALUES (?, ?, ?, ?)",
                     (float(self._clock()), kind, subject, json.dumps(fields, sort_keys=True)))

    def audit_entries(self) -> list[dict]:
        """Every audit entry, oldest first: ``{"id", "at", "kind", "subject", **fields}``."""
        with self._reading() as conn:
            rows = conn.execute("SELECT id, at, kind, subject, fields FROM audit ORDER BY id").fetchall()
        return [{**json.loads(fields), "id": id_, "at": at, "kind": kind, "subject": subject}
                for id_, at, kind, subject, fields in rows]

    def get_state(self, key: str) -> str | None:
        with self._reading() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str, *, event: tuple[str, dict] | None = None,
                  wait: float | None = None) -> None:
        """Set state ``key``; ``event``: an outbox event ``(kind, data)`` queued in the same
        transaction; ``wait``: how long to wait for another connection's write lock (default the
        vault's busy timeout), :class:`VaultBusy` after that with nothing written."""
        if not isinstance(value, str):
            raise TypeError(f"state values are text, got {type(value).__name__}")
        with self._transaction(wait) as conn:
            if event is not None:
                self._append(conn, *event, person_id=None)
            conn.execute("INSERT INTO state (key, value) VALUES (?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def statistics(self) -> dict[str, int]:
        """Row counts (no personal data): for ``palmnode vault check``, node.status and the REPL."""
        with self._reading() as conn:
            counts = {name: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for name, table in
                      (("people", "people"), ("palms", "palms"), ("templates", "templates"), ("cards", "cards"),
                       ("phones", "phones"), ("audit_entries", "audit"))}
            counts["pending_events"] = conn.execute("SELECT count(*) FROM outbox WHERE delivered = 0").fetchone()[0]
            counts["delivered_events"] = conn.execute("SELECT count(*) FROM outbox WHERE delivered = 1").fetchone()[0]
            counts["schema_version"] = conn.execute("SELECT version FROM vault").fetchone()[0]
        return counts

    def unreadable(self) -> list[str]:
        """Every sealed value that fails to open (templates, cards, undelivered events), one
        message each naming its row: what ``palmnode vault check`` adds to SQLite's own check.

        Rows are read _TEMPLATE_BATCH at a time and opened between reads: a read transaction held
        while a whole vault is decrypted (seconds) would keep a running node from truncating its
        WAL after a removal all that time."""
        problems = []

        def attempt(open_: Callable[[], object]) -> None:
            try:
                open_()
            except VaultError as exc:
                problems.append(str(exc))
        for pid, palm, idx, blob in self._scan("templates", "person_id, palm, idx, sealed"):
            attempt(functools.partial(self._open_template, pid, palm, idx, blob))
        for digest, pid, last4 in self._scan("cards", "card_digest, person_id, last4"):
            attempt(lambda: self._open_last4(pid, self._blob(digest, f"card digest of person {pid}"), last4))
        for seq, key, kind, blob in self._scan("outbox", "seq, key, kind, sealed", where="delivered = 0"):
            attempt(functools.partial(self._open_event, seq, key, kind, blob))
        return problems

    def _scan(self, table: str, columns: str, *, where: str = "1") -> Iterator[tuple]:
        """Every row of ``table`` (its ``columns``) in rowid order, _TEMPLATE_BATCH rows per read;
        neither the lock nor a read transaction is held between reads."""
        last: int | None = None
        while True:
            after = "" if last is None else " AND rowid > ?"
            with self._reading() as conn:
                rows = conn.execute(f"SELECT rowid, {columns} FROM {table} WHERE ({where}){after} "
                                    f"ORDER BY rowid LIMIT ?", (*(() if last is None else (last,)),
                                                                _TEMPLATE_BATCH)).fetchall()
            for row in rows:
                yield row[1:]
            if len(rows) < _TEMPLATE_BATCH:
                return
            last = rows[-1][0]

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` or the first problem found (its read
        transaction ends with it: every row is fetched)."""
        with self._reading() as conn:
            return conn.execute("PRAGMA integrity_check").fetchall()[0][0]


def open_vault(config: VaultConfig, *, env: Mapping[str, str] = os.environ, node_id: str = "",
               create_key: bool = False, clock: Callable[[], float] = time.time,
               busy_timeout: float = 5.0, exclusive: bool = False, open_busy_timeout: float | None = None) -> Vault:
    """The vault ``config`` describes, its keys loaded from its key file or ``config.key_env``."""
    keys = load_keys(Path(config.key_file) if config.key_file else None, env=env,
                     env_name=config.key_env, create=create_key)
    return Vault.open(Path(config.path), keys, node_id=node_id, clock=clock, busy_timeout=busy_timeout,
                      exclusive=exclusive, open_busy_timeout=open_busy_timeout)


def _hold(path: Path) -> int:
    """The node's exclusive lock on the vault (``<path>.lock``), as an open file descriptor."""
    return lockfile.hold(path, VaultError, f"vault {path} is in use by another node (it holds "
                         f"{lockfile.lock_path(path).name}): one vault, one node; stop the other or give "
                         "this one its own vault",
                         cannot_lock=lambda message, exc: VaultError(message, reason=_os_reason(exc)))
