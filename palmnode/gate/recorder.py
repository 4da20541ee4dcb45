"""The identify flow's decisions to the vault's outbox, off the flow's path.

The flow hands each decision to a :class:`DecisionRecorder` (``record``: never waits) and goes on
to the next person; the recorder's one task (in the identify flow's nursery) writes them in order
through ``People.record_decision``, each waiting in the vault's short steps for another process
holding its write lock (an ``sqlite3`` shell on the live vault, a backup: ``palmnode.vault.steps``).

- A decision has the vault's busy timeout (5 s) **from when the flow handed it over** to reach the
  outbox, as when the flow wrote it itself: one still waiting then (in the queue or in its write)
  is tried once more (one step) and, still refused, logged ``decision not recorded`` (one line per
  decision, as before). So a hold shorter than the busy timeout loses nothing, and no decision
  reaches the outbox (stamped at its append) more than that after it was made.
- The queue holds ``capacity`` decisions (64: at the gate's pace, a person every ~0.5 s at the
  very most, the busy timeout's worth is ~10). Full (a vault that does not answer at all, a
  stalled disk: the write in hand never returns), a new decision drops the **oldest** queued: it
  has the least of its timeout left and is the likeliest to be lost anyway, while the newest has
  all of its timeout ahead. One warning line when an episode starts (the first drop since the
  queue was last empty), none per decision; each drop is counted (the metric below, the REPL's
  ``stats``).
- A stop (or the flow's restart) ends the wait within a step; the decisions then still queued or
  in hand are not recorded: one line with their count.
- The ``enrolled_only`` check of ``People.record_decision`` runs in the write's own transaction, so
  a decision about a person deleted while it waited here is dropped at its write, never written
  back after the purge.

Counted in ``palmnode_decisions_unrecorded_total{reason}``: ``vault`` (refused past the timeout,
or another vault error), ``queue_full``, ``stopped``.
"""
from __future__ import annotations

import collections
import logging
import sqlite3

import attrs
import trio

from palmnode.gate.events import Decision
from palmnode.logs import error_text, event
from palmnode.vault import VaultError

log = logging.getLogger("palmnode.gate")

#: the outcomes that go to the controller (retries are the gate's business only)
RECORDED = frozenset({"identified", "unknown"})
#: decisions waiting for the vault at most (beyond it the oldest is dropped)
CAPACITY = 64


@attrs.define
class _Queued:
    decision: Decision
    deadline: float   # trio time: handed over + the vault's busy timeout


class DecisionRecorder:
    """``record(decision)`` from the flow (sync, never waits); ``await nursery.start(recorder.run)``
    writes them. ``people`` is the node's ``People``; ``timeout_s`` defaults to its vault's busy
    timeout."""

    def __init__(self, people, metrics=None, *, capacity: int = CAPACITY, timeout_s: float | None = None) -> None:
        if capacity < 1:
            raise ValueError("a decision recorder needs a capacity of at least 1")
        self.people = people
        self.metrics = metrics
        self.capacity = capacity
        self.timeout_s = timeout_s
        self._queue: collections.deque[_Queued] = collections.deque()
        self._in_hand: _Queued | None = None
        self._wake = trio.Event()
        self._stopped = False   # its run ended: a decision handed over now would wait for nothing
        self._dropping = 0   # the current queue-full episode's drops (0: none)
        #: written to the outbox; not written (by reason: the metric's); a decision whose person
        #: was deleted before its write is neither (dropped by design, as their other events are)
        self.recorded = 0
        self.unrecorded: collections.Counter[str] = collections.Counter()

    @property
    def waiting(self) -> int:
        """Decisions handed over and not yet written or given up (the one in hand included)."""
        return len(self._queue) + (self._in_hand is not None)

    def record(self, decision: Decision) -> None:
        """Queue ``decision`` for the outbox (identified and unknown; a retry is not sent)."""
        if decision.outcome not in RECORDED:
            return
        if self._stopped:  # the flow's actor is stopping: nothing will write it
            self._lost("stopped", 1, "decision not recorded: the identify flow is stopping", outcome=decision.outcome)
            return
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            if not self._dropping:
                log.warning("decision queue full: the vault has not taken a decision for a while (another process "
                            "holding it? a stalled disk?); dropping the oldest waiting until it drains",
                            extra={"fields": {"capacity": self.capacity}})
            self._dropping += 1
            self._count("queue_full")
        timeout = self.people.vault.busy_timeout if self.timeout_s is None else self.timeout_s
        self._queue.append(_Queued(decision, trio.current_time() + timeout))
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = False
        try:
            task_status.started()
            while True:
                while not self._queue:
                    self._end_episode()
                    self._wake = trio.Event()
                    await self._wake.wait()
                self._in_hand = self._queue.popleft()
                await self._write(self._in_hand)
                self._in_hand = None  # no checkpoint since the write returned: it is not counted lost
        finally:
            self._stopped = True
            left = self.waiting
            self._in_hand = None
            self._queue.clear()
            self._end_episode()
            if left:
                self._lost("stopped", left, "decisions not recorded: the identify flow stopped while they waited "
                                            "for the vault", count=left)

    async def _write(self, queued: _Queued) -> None:
        remaining = max(0.0, queued.deadline - trio.current_time())   # 0: one step, no more
        try:
            written = await self.people.record_decision(queued.decision, timeout_s=remaining)
        except (VaultError, sqlite3.Error, OSError) as exc:  # the gate keeps serving without it
            self._lost("vault", 1, "decision not recorded", outcome=queued.decision.outcome, error=error_text(exc))
        else:
            self.recorded += written   # not written: its person was deleted meanwhile (not a failure)

    def _end_episode(self) -> None:
        """The queue has drained: a later overflow is a new episode, with its own line."""
        self._dropping = 0

    def _lost(self, reason: str, n: int, message: str, **fields: object) -> None:
        event(log, message, **fields)
        self._count(reason, n)

    def _count(self, reason: str, n: int = 1) -> None:
        self.unrecorded[reason] += n
        if self.metrics is not None:
            self.metrics.inc("palmnode_decisions_unrecorded_total", n, reason=reason)
