"""kill -9 at random instants while a process enrols and removes people: the vault stays whole and consistent."""
import os
import random
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from palmnode.vault import Vault
from tests.vault.factories import KEYS, card, person, person_id, phone, same_person

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 6
STRIDE = 1000  # each round's people are numbered from round * STRIDE

# The child enrols person n (templates, card, phone and its "enrolled" event in one transaction),
# removes person n - 2 every fourth time, appends an "identified" event naming n, then prints n.
CHILD = """
import sys
from palmnode.vault import Vault
from tests.vault.factories import KEYS, person, person_id
vault = Vault.open(sys.argv[1], KEYS, node_id="kill")
n = int(sys.argv[2])
while True:
    p = person(n, vault)
    vault.add_person(p, event=("enrolled", {"person_id": p.person_id, "n": n}))
    if n % 4 == 3:
        gone = person_id(n - 2)
        vault.remove_person(gone, event=("deleted", {"person_id": gone}), reason="test")
    vault.append_event("identified", {"person_id": p.person_id, "score": 0.9})
    print(n, flush=True)
    n += 1
"""


def run_until_killed(path: Path, start: int, lines: int, extra_delay: float) -> list[int]:
    """Start the child, read ``lines`` progress lines, SIGKILL it; the numbers it reported as done."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(start)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = b""
    try:
        while out.count(b"\n") < lines:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "the enrolling child stalled"
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"the enrolling child died: {proc.stderr.read().decode(errors='replace')[-800:]}"
            out += chunk
        # the pause only picks the kill instant inside the next transaction; no assertion depends on it
        deadline = time.perf_counter() + extra_delay
        while time.perf_counter() < deadline:
            pass
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        out += proc.stdout.read()  # lines printed after our last read but before the kill
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return [int(x) for x in out.split()]


def check_consistent(path: Path, done: list[int]) -> set[str]:
    """Every person whole or absent, every reported enrolment present unless removed, the outbox matching."""
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    with Vault.open(path, KEYS, node_id="check") as vault:
        assert vault.integrity_check() == "ok"
        assert vault._conn.execute("PRAGMA foreign_key_check").fetchall() == []
        present = {}
        for p in vault.people():
            n = int(p.person_id[1:7])
            assert same_person(p, person(n, vault)), f"person {n} is incomplete or altered"
            assert vault.find_by_card(card(n).digest) == p.person_id
            assert vault.find_by_phone(phone(n)) == p.person_id
            present[p.person_id] = n
        last = max(done)
        for n in done:
            if n % 4 == 1 and n + 2 == last + 1:
                continue  # its remover was running when the kill came: either state is whole
            removed = n % 4 == 1 and n + 2 <= last  # its remover ran and reported before the kill
            assert (person_id(n) in present) != removed, f"person {n}: present={person_id(n) in present}"
        assert all(n <= last + 1 for n in present.values()), "a person nobody enrolled"
        events = vault.pending_events(limit=1_000_000)
        assert [e.seq for e in events] == sorted({e.seq for e in events})
        assert len({e.key for e in events}) == len(events)
        enrolled = [e.data["person_id"] for e in events if e.kind == "enrolled"]
        assert sorted(enrolled) == sorted(present), "each present person has exactly one enrolled event"
        for e in events:
            if e.kind == "identified":
                assert e.data["person_id"] in present, "an event naming a removed person survived"
            if e.kind == "deleted":
                assert e.data["person_id"] not in present
        deleted = [e.data["person_id"] for e in events if e.kind == "deleted"]
        removals = [a for a in vault.audit_entries() if a["kind"] == "person_removed"]
        assert len(deleted) == len(removals)
        return set(present)


def test_kill_9_at_random_instants_leaves_every_person_whole_or_absent(tmp_path):
    rng = random.Random(20261125)
    path = tmp_path / "vault.db"
    total = set()
    for round_ in range(ROUNDS):
        done = run_until_killed(path, round_ * STRIDE, lines=rng.randint(1, 10), extra_delay=rng.uniform(0, 0.004))
        total |= check_consistent(path, done)
    assert len(total) >= ROUNDS  # the child really enrolled people each round


# The child enrols two people and removes the second; the kill lands after the removal committed
# and before its WAL checkpoint (Vault.scrub is where it dies), so the WAL still holds the old
# pages of the person it removed.
CHILD_REMOVAL = """
import os, signal, sys
from palmnode.vault import Vault
from tests.vault.factories import KEYS, person
vault = Vault.open(sys.argv[1], KEYS, node_id="kill")
Vault.scrub = lambda self: os.kill(os.getpid(), signal.SIGKILL)
keep, gone = person(1, vault), person(2, vault)
vault.add_person(keep)
vault.add_person(gone)
vault.remove_person(gone.person_id, event=("deleted", {"person_id": gone.person_id}), reason="test")
"""


def test_kill_9_between_a_removal_and_its_checkpoint_leaves_no_trace_once_reopened(tmp_path):
    path = tmp_path / "vault.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run([sys.executable, "-c", CHILD_REMOVAL, str(path)], cwd=REPO, env=env,
                           capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode(errors="replace")[-800:]
    with Vault.open(tmp_path / "scratch.db", KEYS) as scratch:
        gone = person(2, scratch)
    traces = [gone.person_id.encode(), gone.card.digest, gone.phone_digest]

    def raw() -> bytes:
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())
    assert all(t in raw() for t in traces)  # the crash left their old pages in the WAL
    with Vault.open(path, KEYS, node_id="check") as vault:
        assert vault.get(gone.person_id) is None and vault.count() == 1  # the removal had committed
        assert [t for t in traces if t in raw()] == []  # gone from every file as soon as the vault is open
        assert vault.integrity_check() == "ok"
