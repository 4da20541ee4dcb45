"""``palmnode demo`` as a user runs it: to its summary, and stopped by Ctrl-C half-way; what its
summary reports as a device's drops."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest

from palmnode.actors import HealthRegistry
from palmnode.demo import Summary, report
from palmnode.devices.session import CounterMirror
from tests.conftest import AS_SOON_AS_CAUGHT, WHILE_IMPORTING, reach_moment, reaped

def demo(*args: str, tmp) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmp))  # the demo's temporary folder lands where we can look
    return subprocess.Popen([sys.executable, "-m", "palmnode.cli", "demo", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_demo_enrols_identifies_and_summarises(tmp_path):
    proc = demo("--people", "2", "--arrivals", "5", tmp=tmp_path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    assert "enrolled person 2" in out and "\nsummary\n" in out
    assert "enrolled          2 people" in out
    assert "hand present → decision  p50" in out
    assert "stranger admitted" not in out
    assert "controller received" in out and "enrolled 2" in out
    assert "camera recovered after" in out  # it was unplugged for a while
    assert list(tmp_path.iterdir()) == []  # nothing left behind: certificates, vault, sockets


ENROLLING = "mid-enrolment"


@pytest.mark.parametrize("moment", [AS_SOON_AS_CAUGHT, WHILE_IMPORTING, ENROLLING])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_at_any_moment_of_the_demo_leaves_nothing_behind(tmp_path, signum, moment):
    """A Ctrl-C during the demo's imports was a KeyboardInterrupt traceback, a SIGTERM there or
    at any later moment killed it by the signal, its temporary folder (certificates, keys, vault,
    the controller's database, the sim's pty links) left behind. Now both are noted from its first
    moment (palmnode/stopsignals.py, as `palmnode run`) and served as its stop: everything it made
    removed, one line naming the signal, exit 130 for Ctrl-C and 0 for SIGTERM, no traceback."""
    proc = demo("--people", "3", "--arrivals", "4", tmp=tmp_path)
    with reaped(proc):
        if moment == ENROLLING:
            deadline = time.monotonic() + 60
            line = ""
            while "enrolling" not in line and time.monotonic() < deadline:
                line = proc.stdout.readline()
            assert "enrolling" in line
            assert [p.name for p in tmp_path.iterdir()][0].startswith("palmnode-demo-")
            time.sleep(1.0)  # the moment, not a wait for a result: a card in the field or a palm over the camera
        else:
            reach_moment(proc, moment)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == (130 if signum == signal.SIGINT else 0), (proc.returncode, err[-3000:])
    assert "Traceback" not in err
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert err.splitlines()[-1] == f"palmnode demo: stopped by {name}", err[-3000:]
    assert "summary" not in out
    assert list(tmp_path.iterdir()) == []


async def test_mirrored_counters_grow_by_the_drivers_totals_and_only_drops_are_reported_as_drops() -> None:
    health = HealthRegistry()
    health.register("camera")
    drops, counters = CounterMirror(health, "camera"), CounterMirror(health, "camera", prefix="")
    counters.update({"frames_skipped": 40})       # frames passed over for a lit one: by design
    summary = Summary()
    summary.health = health.snapshot()
    out = io.StringIO()
    report(summary, out)
    assert "dropped: none" in out.getvalue()
    for total in (2, 2, 5):                        # a driver's running totals, mirrored as they grow
        drops.update({"decode": total})
    assert health.device("camera").counters == {"frames_skipped": 40, "dropped_decode": 5}
    summary.health = health.snapshot()
    out = io.StringIO()
    report(summary, out)
    assert "dropped: decode 5" in out.getvalue()
