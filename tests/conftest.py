"""Shared fixtures: a virtual gate in a temporary folder, and a node wired to it."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable

import pytest
import trio

from palmnode.demo import node_config
from palmnode.node import Node
from palmnode.sim.gate import VirtualGate


@pytest.fixture
async def gate(nursery, tmp_path):
    """A running virtual gate whose camera listens on a free loopback port."""
    gate = VirtualGate(tmp_path / "sim", camera_port=0, seed=7)
    gate.endpoints_ = await nursery.start(gate.run)
    return gate


@pytest.fixture
async def node(nursery, gate, tmp_path):
    """A node on the virtual gate, started (devices may still be opening)."""
    node = Node(node_config(gate.endpoints_, tmp_path))
    await nursery.start(node.run)
    return node


async def wait_for(predicate, timeout: float = 5.0, poll: float = 0.02):
    """Poll ``predicate`` (a cheap state check) until true; fail after ``timeout`` seconds."""
    try:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(poll)
    except trio.TooSlowError:
        raise AssertionError(f"still not true after {timeout} s: {_source(predicate)}") from None


def _source(fn) -> str:
    import inspect

    try:
        return inspect.getsource(fn).strip()
    except (OSError, TypeError):
        return repr(fn)


def returns_at_once(call, reader):
    """``call()``'s result (an SQLite store's call, its busy timeout an hour), failing if it does
    not return within 30 s: a WAL checkpoint that waited for ``reader`` (another connection holding
    a read transaction) would stall for that hour. On a failure the reader lets go, so the stalled
    call ends and the test does not hang."""
    result = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():
        reader.close()
        worker.join()
        name = getattr(getattr(call, "func", call), "__qualname__", repr(call))
        raise AssertionError(f"{name} waited for the reader's read transaction (more than 30 s)")
    return result[0]


async def start_stoppable(nursery: trio.Nursery, run) -> Callable[[], Awaitable[None]]:
    """Start ``run(task_status=...)`` in ``nursery`` under its own cancel scope (a restartable
    part of a test's world: a controller, a node's link); returns ``stop``, which cancels it and
    waits until it has ended."""
    scope, stopped = trio.CancelScope(), trio.Event()

    async def task(task_status=trio.TASK_STATUS_IGNORED):
        try:
            with scope:
                await run(task_status=task_status)
        finally:
            stopped.set()

    async def stop() -> None:
        scope.cancel()
        await stopped.wait()

    await nursery.start(task)
    return stop


async def controller_and_node(nursery: trio.Nursery, gate: VirtualGate, folder) -> tuple:
    """A reference store controller (a dev CA in ``folder``/certs, mutual TLS) and a working node
    (vault) on ``gate``, named demo-gate, connected to it: (controller, node)."""
    from palmnode.controller.server import Controller, ControllerConfig
    from palmnode.link.certs import make_dev_pki
    from palmnode.vault import create_key_file

    pki = make_dev_pki(folder / "certs", nodes=["demo-gate"])
    create_key_file(folder / "controller.key")
    controller = Controller(ControllerConfig.from_certs_dir(
        pki.folder, db_path=str(folder / "controller.db"), key_file=str(folder / "controller.key"), port=0))
    port = await nursery.start(controller.run)
    node = Node(node_config(gate.endpoints_, folder, vault=True, controller_port=port, certs=pki.folder))
    await nursery.start(node.run)
    await controller.wait_node("demo-gate")
    return controller, node


#: the moments of a command's start at which the stop tests send their signal (reach_moment)
AS_SOON_AS_CAUGHT = "as soon as it is caught"
WHILE_IMPORTING = "while it imports numpy"


def reach_moment(proc, moment: str, timeout: float = 30.0) -> None:
    """Return when the process ``proc`` (a ``palmnode`` command just started) is at ``moment``:
    AS_SOON_AS_CAUGHT, the first moment at which it takes SIGTERM (SigCgt of /proc/PID/status);
    WHILE_IMPORTING, once numpy's library is mapped (~0.7 s before trio runs on a shared machine).
    Polled every 0.5 ms, the process's own state: the signal lands in that phase, not after it."""
    import signal
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if moment == AS_SOON_AS_CAUGHT:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
            if caught >> (signal.SIGTERM - 1) & 1:
                return
        elif moment == WHILE_IMPORTING:
            if "_multiarray_umath" in Path(f"/proc/{proc.pid}/maps").read_text():
                return
        else:
            raise ValueError(moment)
        time.sleep(0.0005)
    raise AssertionError(f"the process never reached the moment {moment!r}")


@contextlib.contextmanager
def reaped(proc):
    """``proc`` (a ``subprocess.Popen``) for the block; killed and waited for after it if still
    running, so a failed assertion leaves no process behind."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def run_with_file_size_limit(code: str, limit: int = 4096):
    """``code`` in a fresh interpreter whose files may not grow past ``limit`` bytes (RLIMIT_FSIZE,
    SIGXFSZ ignored): a write past it fails with EFBIG after writing what fits, as on a disk that
    fills up mid-file. The real kernel refusal a half-written output file comes from (a Ctrl-C
    mid-write leaves the same, at a moment no test can pick)."""
    import resource
    import signal
    import subprocess
    import sys

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, preexec_fn=limited)
