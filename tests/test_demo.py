"""``palmnode demo`` as a user runs it: to its summary, and stopped by Ctrl-C half-way."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


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


def test_ctrl_c_mid_demo_leaves_nothing_behind(tmp_path):
    proc = demo("--people", "3", "--arrivals", "4", tmp=tmp_path)
    deadline = time.monotonic() + 60
    line = ""
    while "enrolling" not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
    assert "enrolling" in line
    time.sleep(1.0)  # mid-enrolment: a card in the field or a palm over the camera
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
