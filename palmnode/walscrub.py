"""Truncating an SQLite WAL after a removal: one try that never waits, then retries until done.

A removal overwrites a person's rows (``secure_delete``), but the ``-wal`` file keeps page images
of them until a checkpoint copies it into the database and truncates it. Another connection's read
transaction (a backup, an ``sqlite3`` shell, ``palmnode vault check``) keeps that checkpoint from
finishing, and waiting for it would hold the store, and everything waiting on it, for the whole
busy timeout. So a store tries once without waiting (:func:`truncate`) and says whether it is
done (:class:`Scrubbable`); its owner runs a :class:`WalKeeper` that tries again with a backoff
until the WAL is empty. Used by the gate's vault (with ``People``) and the reference controller.
"""
from __future__ import annotations

import logging
import random
import sqlite3
import time
from typing import Any, Callable, Protocol

import trio

from palmnode.actors.backoff import Backoff

#: a blocked truncation is tried again after these delays (each try is instant: it never waits for
#: the reader), so a removed person's old pages leave the -wal within RETRY.maximum of the reader
#: letting go
RETRY = Backoff(initial=0.25, maximum=10.0)
WARN_EVERY_S = 300.0  # while the WAL stays untruncated, the warning is repeated this often


def truncate(conn: sqlite3.Connection, holders: str) -> str | None:
    """One ``wal_checkpoint(TRUNCATE)`` on ``conn`` that never waits (busy timeout 0 around it):
    None when the WAL is empty now, else why not in one line (``holders``: who may hold the file,
    for that line). The caller holds its store's lock."""
    try:
        waits = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            busy, log_frames, moved = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(waits)}")
    except sqlite3.Error as exc:
        return f"checkpoint failed: {' '.join(str(exc).split())}"
    if busy == 0 and log_frames == 0:  # TRUNCATE reports (0, 0, 0) once the WAL is empty
        return None
    return (f"another connection to the database holds a read transaction ({holders}) or the write "
            f"lock: checkpoint busy, {moved} of {log_frames} WAL frames copied, the WAL not truncated")


class Scrubbable(Protocol):
    """A store whose WAL truncation may be blocked: ``scrub()`` tries once (thread-safe, never
    waits; True when done) and sets ``scrub_pending`` and ``scrub_blocked`` (why not, one line)."""

    path: object
    scrub_pending: bool
    scrub_blocked: str | None

    def scrub(self) -> bool: ...


class WalKeeper:
    """Keeps a store's WAL truncated: after a removal, :meth:`poke`; :meth:`run` (a background
    task) tries again with a backoff while the store's last try was blocked, with a warning line
    (again every WARN_EVERY_S) until it succeeds, then an info line; :meth:`state` says where it
    is (blocked since when, retries) for the node's status and metrics. ``what`` names the store
    in those lines ("vault", "controller")."""

    def __init__(self, store: Scrubbable, what: str, log: logging.Logger, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.what = what
        self.log = log
        self.clock = clock  # the wall clock of ``blocked_since``
        self._wanted = trio.Event()
        self._rng = random.Random()
        self._blocked_since: float | None = None  # when the untruncated WAL was first seen (wall clock)
        self._blocked_at = 0.0  # the same on trio's clock
        self._attempts = 0  # retries since then
        #: retries of a blocked truncation over the keeper's life (a counter for the metrics)
        self.retries_total = 0

    def poke(self) -> None:
        """Wake :meth:`run` if the store's last truncation was blocked (call after a removal)."""
        if self._observe():
            self._wanted.set()

    def state(self) -> dict[str, Any]:
        """For an operator (the node's status): ``{"truncated": True}``, or while the store's WAL
        stays untruncated ``truncated`` False, ``blocked_since`` (Unix time it was first seen),
        ``blocked_s`` (for how long), ``attempts`` (retries since) and ``reason`` (one line, the
        store's ``scrub_blocked``). Names no one. Call it in the trio thread."""
        if not self._observe():
            return {"truncated": True}
        return {"truncated": False, "blocked_since": self._blocked_since,
                "blocked_s": round(trio.current_time() - self._blocked_at, 1), "attempts": self._attempts,
                "reason": self.store.scrub_blocked}

    def _observe(self) -> bool:
        """Whether the store's WAL is untruncated now; the time it was first seen so is kept until
        it is truncated."""
        if not self.store.scrub_pending:
            self._blocked_since = None
        elif self._blocked_since is None:
            self._blocked_since, self._blocked_at, self._attempts = self.clock(), trio.current_time(), 0
        return self.store.scrub_pending

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled; also picks up a truncation the store's opening could not finish."""
        store, what = self.store, self.what
        task_status.started()
        while True:
            self._wanted = trio.Event()
            if not self._observe():  # nothing left behind, or a later try (a removal's) succeeded
                await self._wanted.wait()
                continue
            since, warned = self._blocked_at, trio.current_time()
            self.log.warning(f"{what} WAL not truncated: a removed person's old pages stay in the -wal file until "
                             "the other connection lets go; retrying", extra={"fields": {
                                 "db": str(store.path), "reason": store.scrub_blocked}})
            attempt = 0
            while True:
                await trio.sleep(RETRY.delay(attempt, self._rng))
                attempt += 1
                self._attempts = attempt
                self.retries_total += 1
                if await trio.to_thread.run_sync(store.scrub):
                    break
                if trio.current_time() - warned >= WARN_EVERY_S:
                    warned = trio.current_time()
                    self.log.warning(f"{what} WAL still not truncated: a removed person's old pages stay in the -wal "
                                     "file until the other connection lets go; retrying", extra={"fields": {
                                         "db": str(store.path), "reason": store.scrub_blocked,
                                         "blocked_s": round(warned - since), "attempts": attempt}})
            self._blocked_since = None
            self.log.info(f"{what} WAL truncated", extra={"fields": {
                "db": str(store.path), "blocked_s": round(trio.current_time() - since, 1), "attempts": attempt}})


__all__ = ["RETRY", "WARN_EVERY_S", "Scrubbable", "WalKeeper", "truncate"]
