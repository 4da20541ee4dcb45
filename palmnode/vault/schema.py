"""The vault's SQLite schema and its versioning (docs/vault.md describes each table)."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from palmnode.vault.errors import DAMAGED, UNKNOWN_SCHEMA, VaultError

SCHEMA_VERSION = 1

# Nothing here holds a card number, a phone number or a template in clear: cards and phones are
# keyed digests, templates and outbox payloads are AES-GCM sealed, audit rows name people by HMAC.
DDL = """
CREATE TABLE vault (
    only_row    INTEGER PRIMARY KEY CHECK (only_row = 1),
    version     INTEGER NOT NULL,
    instance    TEXT NOT NULL,          -- random id of this vault file: part of every outbox key
    key_check   BLOB NOT NULL,          -- HMAC(lookup_key, constant): detects a wrong key at open
    created_at  REAL NOT NULL
);
CREATE TABLE people (
    person_id   TEXT PRIMARY KEY,
    enrolled_at REAL NOT NULL,
    origin_node TEXT NOT NULL
);
CREATE TABLE palms (
    person_id   TEXT NOT NULL REFERENCES people(person_id) ON DELETE CASCADE,
    palm        TEXT NOT NULL CHECK (palm IN ('left', 'right', 'unknown')),
    position    INTEGER NOT NULL,
    PRIMARY KEY (person_id, palm)
);
CREATE TABLE templates (
    person_id   TEXT NOT NULL,
    palm        TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    sealed      BLOB NOT NULL,          -- AES-GCM(template_key, PalmTemplate.to_bytes()), aad = person, palm, idx
    PRIMARY KEY (person_id, palm, idx),
    FOREIGN KEY (person_id, palm) REFERENCES palms(person_id, palm) ON DELETE CASCADE
);
CREATE TABLE cards (
    card_digest BLOB PRIMARY KEY,       -- CardToken.digest: already an HMAC of the card number
    person_id   TEXT NOT NULL UNIQUE REFERENCES people(person_id) ON DELETE CASCADE,
    last4       BLOB NOT NULL           -- AES-GCM sealed, aad = person, digest
);
CREATE TABLE phones (
    phone_digest BLOB PRIMARY KEY,      -- HMAC(lookup_key, normalised E.164 number)
    person_id    TEXT NOT NULL UNIQUE REFERENCES people(person_id) ON DELETE CASCADE
);
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so keys stay unique after purges
    key         TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    at          REAL NOT NULL,
    person_id   TEXT,                   -- the person the event names: purged with them
    sealed      BLOB,                   -- AES-GCM msgpack payload, NULL once delivered
    delivered   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_pending ON outbox(delivered, seq);
CREATE INDEX outbox_person ON outbox(person_id) WHERE person_id IS NOT NULL;
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT,                   -- HMAC(lookup_key, person id), hex; never the id itself
    fields      TEXT NOT NULL           -- JSON object of plain scalars, no binary data
);
CREATE TABLE state (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
"""

# version n -> statements taking a vault of version n to n + 1 (none yet)
MIGRATIONS: dict[int, str] = {}


def statements(script: str) -> Iterator[str]:
    """The complete SQL statements of ``script`` one by one (``executescript`` would commit the transaction)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip() and not all(l.strip().startswith("--") or not l.strip() for l in pending.splitlines()):
        raise ValueError(f"incomplete SQL statement at the end of a script: {pending.strip()[:60]}")


def create(conn: sqlite3.Connection) -> None:
    """Create every table of the current schema (inside the caller's transaction)."""
    for statement in statements(DDL):
        conn.execute(statement)


def tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def stored_version(conn: sqlite3.Connection, path: object) -> int | None:
    """The schema version of the open database, None when it is empty, VaultError when it is not a vault."""
    names = tables(conn)
    if not names:
        return None
    if "vault" not in names:
        raise VaultError(f"{path} is an SQLite database but not a palmnode vault", reason=DAMAGED)
    row = conn.execute("SELECT version FROM vault").fetchone()
    if row is None:
        raise VaultError(f"{path} is a palmnode vault without its header row; restore it from a backup",
                         reason=DAMAGED)
    version = row[0]
    if type(version) is not int or version < 1:  # (SQLite keeps what a column is given)
        raise VaultError(f"{path} has vault schema {version!r}, which no palmnode makes; restore it from a backup",
                         reason=DAMAGED)
    if version > SCHEMA_VERSION:
        raise VaultError(f"{path} has vault schema {version}, newer than this palmnode ({SCHEMA_VERSION}); "
                         "upgrade palmnode", reason=UNKNOWN_SCHEMA)
    return version


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a vault of ``version`` up to SCHEMA_VERSION (inside the caller's transaction)."""
    while version < SCHEMA_VERSION:
        for statement in statements(MIGRATIONS[version]):
            conn.execute(statement)
        version += 1
        conn.execute("UPDATE vault SET version = ?", (version,))
