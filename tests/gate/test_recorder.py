"""The identify flow's decision recorder on a real vault file, with another process's real SQLite
connection holding the vault's write lock (``BEGIN IMMEDIATE``: an sqlite3 shell on the live vault,
a backup): decisions are handed over at once and written in order once the lock is let go; past
the busy timeout, at a full queue and at a stop they are counted and logged, never half-written."""
from __future__ import annotations

import logging
import os
import time

import pytest
import trio

from palmnode.actors import EventBus
from palmnode.biometrics.gallery import Gallery
from palmnode.gate.events import Decision
from palmnode.gate.people import People
from palmnode.gate.recorder import DecisionRecorder
from palmnode.metrics import Metrics
from palmnode.vault import Vault, VaultKeys
from tests.conftest import wait_for
from tests.gate.test_people import templates_of, vault_rows, write_locked


@pytest.fixture
def keys():
    return VaultKeys.from_secret(os.urandom(32))


def unknown(n: int) -> Decision:
    """An ``unknown`` decision told apart by its latency (``n`` ms)."""
    return Decision("unknown", None, None, 0.2, "no match", float(n), "entry", float(n))


def outbox(vault) -> list[tuple[str, float]]:
    return [(e.kind, e.data["latency_ms"]) for e in vault.pending_events() if e.kind in ("identified", "unknown")]


def lines(caplog, start: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(start)]


async def _recorder(nursery, vault, **kw) -> tuple[People, DecisionRecorder, Metrics]:
    metrics = Metrics()
    people = People(vault, Gallery(), "gate-1", EventBus(), metrics)
    recorder = DecisionRecorder(people, metrics, **kw)
    await nursery.start(recorder.run)
    return people, recorder, metrics


async def test_decisions_handed_over_while_the_vault_is_held_are_written_in_order_once_it_is_let_go(
        nursery, tmp_path, keys):
    with Vault.open(tmp_path / "vault.db", keys, node_id="gate-1") as vault:
        people, recorder, metrics = await _recorder(nursery, vault)
        kept = await people.enrol(None, None, {"right": templates_of(0)})
        with write_locked(vault.path) as other:
            started = time.monotonic()
            recorder.record(Decision("identified", kept.person_id, "right", 0.5, None, 101.0, "entry", 1.0))
            recorder.record(unknown(102))
            recorder.record(Decision("retry", None, None, None, "hold still", 103.0, "entry", 3.0))  # not sent
            assert time.monotonic() - started < 1.0    # handed over, not written: no wait for the lock (5 s)
            await trio.sleep(0.5)                      # a few steps meet the lock
            assert recorder.waiting == 2 and outbox(vault) == []
            other.execute("COMMIT")
            await wait_for(lambda: recorder.waiting == 0, timeout=2)
        assert outbox(vault) == [("identified", 101.0), ("unknown", 102.0)]
        assert recorder.recorded == 2 and not recorder.unrecorded
        assert metrics.value("palmnode_decisions_unrecorded_total", reason="vault") == 0


async def test_a_decision_about_a_person_deleted_while_it_waited_is_not_written_back(tmp_path, keys):
    """Decisions handed over, one of them about a person then deleted (committed) before the
    recorder gets to it: the write's own transaction finds them gone and drops that one only, so
    their id is not written back into the vault after the purge; the others go in order."""
    with Vault.open(tmp_path / "vault.db", keys, node_id="gate-1") as vault:
        people = People(vault, Gallery(), "gate-1", EventBus())
        gone = await people.enrol(None, None, {"right": templates_of(0)})
        recorder = DecisionRecorder(people)
        recorder.record(unknown(100))
        recorder.record(Decision("identified", gone.person_id, "right", 0.5, None, 101.0, "entry", 1.0))
        recorder.record(unknown(102))
        await people.forget(person_id=gone.person_id)   # before the recorder runs: it has not written yet
        assert recorder.waiting == 3
        async with trio.open_nursery() as running:
            await running.start(recorder.run)
            await wait_for(lambda: recorder.waiting == 0, timeout=2)
            running.cancel_scope.cancel()
        assert outbox(vault) == [("unknown", 100.0), ("unknown", 102.0)]
        assert [e.kind for e in vault.pending_events()] == ["deleted", "unknown", "unknown"]
        assert recorder.recorded == 2 and not recorder.unrecorded   # dropped by design, not a failure
        vault.scrub()
        assert gone.person_id.encode() not in b"".join(p.read_bytes() for p in vault.path.parent.glob("vault.db*"))


async def test_a_decision_still_waiting_past_the_busy_timeout_is_logged_not_recorded(nursery, tmp_path, keys, caplog):
    """Each decision has the vault's busy timeout from its hand-over, as when the flow wrote it:
    past it, one "decision not recorded" line each (one step tried, nothing half-written); the
    recorder goes on with the next once the lock is let go."""
    caplog.set_level(logging.INFO, logger="palmnode")
    with Vault.open(tmp_path / "vault.db", keys, node_id="gate-1", busy_timeout=0.5) as vault:
        people, recorder, metrics = await _recorder(nursery, vault)
        before = vault_rows(vault.path)
        with write_locked(vault.path) as other:
            recorder.record(unknown(100))
            await trio.sleep(0.3)
            recorder.record(unknown(101))
            await wait_for(lambda: recorder.waiting == 0, timeout=2.5)
            other.execute("COMMIT")
        assert vault_rows(vault.path) == before
        said = lines(caplog, "decision not recorded")
        assert [(r.fields["outcome"], r.fields["error"]) for r in said] == \
            [("unknown", f"VaultBusy: vault {vault.path}: database is locked (nothing was written)")] * 2
        assert recorder.unrecorded == {"vault": 2} and recorder.recorded == 0
        assert metrics.value("palmnode_decisions_unrecorded_total", reason="vault") == 2
        recorder.record(unknown(102))
        await wait_for(lambda: recorder.waiting == 0, timeout=2)
        assert outbox(vault) == [("unknown", 102.0)]


async def test_a_full_queue_drops_the_oldest_with_one_line_an_episode(nursery, tmp_path, keys, caplog):
    """The vault held while people keep coming: beyond ``capacity`` waiting, each new decision
    drops the oldest waiting (counted), with one warning line an episode, not one a decision; an
    episode ends when the queue has drained."""
    caplog.set_level(logging.INFO, logger="palmnode")
    with Vault.open(tmp_path / "vault.db", keys, node_id="gate-1") as vault:
        people, recorder, metrics = await _recorder(nursery, vault, capacity=2)
        for episode in (0, 1):
            base = 100 * (episode + 1)
            with write_locked(vault.path) as other:
                recorder.record(unknown(base))
                await wait_for(lambda: recorder.waiting == 1 and recorder._in_hand is not None, timeout=2)
                for n in range(1, 6):   # 1, 2 queued; 3, 4, 5 each drop the oldest queued
                    recorder.record(unknown(base + n))
                assert recorder.waiting == 3    # the one in hand and the two newest
                other.execute("COMMIT")
                await wait_for(lambda: recorder.waiting == 0, timeout=2)
            assert len(lines(caplog, "decision queue full")) == episode + 1
            assert metrics.value("palmnode_decisions_unrecorded_total", reason="queue_full") == 3 * (episode + 1)
        [warning, _] = lines(caplog, "decision queue full")
        assert warning.levelname == "WARNING" and warning.fields == {"capacity": 2}
        assert outbox(vault) == [("unknown", float(n)) for n in (100, 104, 105, 200, 204, 205)]
        assert recorder.recorded == 6 and recorder.unrecorded == {"queue_full": 6}


async def test_a_stop_with_decisions_waiting_is_served_within_a_step_and_says_what_it_dropped(
        tmp_path, keys, caplog):
    caplog.set_level(logging.INFO, logger="palmnode")
    with Vault.open(tmp_path / "vault.db", keys, node_id="gate-1") as vault:
        metrics = Metrics()
        people = People(vault, Gallery(), "gate-1", EventBus(), metrics)
        recorder = DecisionRecorder(people, metrics)
        before = vault_rows(vault.path)
        with write_locked(vault.path):
            async with trio.open_nursery() as running:
                await running.start(recorder.run)
                for n in range(3):
                    recorder.record(unknown(100 + n))
                await trio.sleep(0.3)             # the first one's write meets the lock
                started = time.monotonic()
                running.cancel_scope.cancel()     # the flow's actor stops (the node's stop)
            served = time.monotonic() - started
            recorder.record(unknown(103))         # handed over as it stops: counted, not kept
        assert served < 2.0, f"the stop was served {served:.2f} s late"   # a step is 0.1 s; the busy timeout 5 s
        assert vault_rows(vault.path) == before and recorder.waiting == 0
        [stopped] = lines(caplog, "decisions not recorded")
        assert stopped.fields == {"count": 3}
        assert len(lines(caplog, "decision not recorded: the identify flow is stopping")) == 1
        assert metrics.value("palmnode_decisions_unrecorded_total", reason="stopped") == 4
        # started again (the supervisor's restart): it serves the next decisions
        async with trio.open_nursery() as running:
            await running.start(recorder.run)
            recorder.record(unknown(104))
            await wait_for(lambda: recorder.waiting == 0, timeout=2)
            running.cancel_scope.cancel()
        assert outbox(vault) == [("unknown", 104.0)]
