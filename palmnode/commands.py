"""What each ``palmnode`` subcommand does (the argument parsing lives in cli.py)."""
from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import signal
from pathlib import Path

import trio

from palmnode import logs, malloc, stopsignals


#: exit status of a configuration that cannot be used (sysexits.h EX_CONFIG): systemd's unit does not
#: restart on it (RestartPreventExitStatus=78), as a retry would meet the same files
EX_CONFIG = 78


class UserError(Exception):
    """A mistake a user can fix (bad file, busy port); printed as one line, no traceback, exit 1."""

    exit_code = 1


class ConfigFileError(UserError):
    """The node's configuration cannot work as it stands, so a restart would fail the same way: the
    config file (missing, unreadable, not TOML, an unknown key, a bad value) or a file it names (the
    card token key file, the vault key, the link's certificates, the calibration: missing, unreadable,
    too open, invalid; the vault file: damaged, not writable; the REPL socket path: not a socket).
    Exit 78, which the systemd unit does not restart; what another process holds (a vault, a REPL
    socket, a port) may be free at the next start, and stays a UserError (1)."""

    exit_code = EX_CONFIG


def sim(args: argparse.Namespace) -> int:
    from palmnode.sim import scenario as sc
    from palmnode.sim.gate import DEFAULT_CAMERA_PORT, DEFAULT_RUN_DIR, VirtualGate

    logs.setup("info")
    malloc.configure(malloc.RENDERER_THRESHOLD)  # the renderer's arrays: palmnode/malloc.py
    script = None
    if args.scenario is not None:
        try:
            script = sc.load(args.scenario)
        except sc.ScenarioError as exc:
            raise UserError(str(exc)) from None
    run_dir = args.run_dir or DEFAULT_RUN_DIR
    port = DEFAULT_CAMERA_PORT if args.camera_port is None else args.camera_port
    with _run_dir_lock(run_dir):
        gate = VirtualGate(run_dir, camera_port=port, seed=args.seed)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                try:
                    endpoints = await nursery.start(gate.run)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise UserError(f"camera port {port} is in use: stop what holds it or pass "
                                        "--camera-port") from None
                    raise
                print(endpoints.to_json(), flush=True)
                if script is not None:
                    await gate.play(script)
                    if args.exit_after_scenario:
                        nursery.cancel_scope.cancel()

        signum = _run_stoppable(main)
    if signum is None:
        return 0
    logs.event(logging.getLogger("palmnode.sim"), "sim stopped", signal=signal.Signals(signum).name)
    return 130 if signum == signal.SIGINT else 0


def _run_stoppable(fn, *args):
    """``run_trio(fn, *args)`` stopped by Ctrl-C or SIGTERM at any moment: a signal cancels ``fn``
    (which cleans up as it unwinds), also one that came before trio ran, while the command
    imported (noted by palmnode/stopsignals.py since the command's first moment, raised again
    here), and one after ``fn`` ended (noted, the command's end goes on). Returns the signal that
    stopped it, or None; ``fn``'s result is dropped (a command's report goes through ``fn``)."""
    stopped: list[int] = []

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            stopsignals.release()  # one that came while the command started, before this receiver
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    stopped.append(await stopsignals.cancel_on_signal(signals, nursery.cancel_scope))

                nursery.start_soon(watch)
                await fn(*args)
                nursery.cancel_scope.cancel()

    run_trio(main)
    return stopped[0] if stopped else stopsignals.noted()


def run_trio(fn, *args):
    """``trio.run``, with a user's mistake or Ctrl-C coming out of task groups as itself."""
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        for wanted in (UserError, KeyboardInterrupt):
            match = group.subgroup(wanted)
            if match is not None:
                leaf = match
                while isinstance(leaf, BaseExceptionGroup):
                    leaf = leaf.exceptions[0]
                raise leaf from None
        raise


class _run_dir_lock:
    """Hold an exclusive lock on the run folder so two virtual gates never share its paths."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def __enter__(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UserError(f"another palmnode sim is using {self.run_dir}: stop it or pass --run-dir") from None

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def run(args: argparse.Namespace) -> int:
    from palmnode import config as cfgmod

    try:
        cfg = cfgmod.load(args.config) if args.config else cfgmod.load_default()
    except cfgmod.ConfigError as exc:
        raise ConfigFileError(str(exc)) from None
    from palmnode.node import Node

    logs.setup(cfg.node.log_level)
    # large arrays get their own mappings, given back when freed: palmnode/malloc.py
    threshold = malloc.configure(malloc.NODE_THRESHOLD)
    logs.event(logging.getLogger("palmnode.node"), "allocator", mmap_threshold=threshold)
    run_trio(_serve_node, Node(cfg))
    return 0


async def _serve_node(node) -> None:
    """Run the node until Ctrl-C or SIGTERM (systemd's stop), then stop it in order, lights off.

    The signals are watched from the start: one while the node starts (its gallery loading from
    the vault, tens of seconds at a million people) cancels the start, and so does one that came
    before trio ran, while `palmnode run` imported the engine (noted by palmnode/stopsignals.py,
    raised again here). Another Ctrl-C or SIGTERM
    while it stops is taken and logged: the stop goes on to its end and the exit is 0. Left to
    trio, it would be redelivered as the signal receiver closes: Ctrl-C's 130 (systemd: the unit
    failed) or a SIGTERM's death, without the "node stopped" line."""
    from drivers.errors import DeviceError
    from palmnode.actors import SupervisorEscalation
    from palmnode.node import GateSetupError

    log = logging.getLogger("palmnode.node")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stopsignals.release()  # one that came while `palmnode run` started, before this receiver
        try:
            async with trio.open_nursery() as stopping:  # outlives the node's stop
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope, stopping, log)
                    await nursery.start(node.run)
                stopping.cancel_scope.cancel()
        except* (DeviceError, GateSetupError) as group:  # e.g. an unusable token key file, found before any device opens
            raise _setup_error(_leaf(group)) from None
        except* SupervisorEscalation as group:  # a service that cannot start: the REPL socket, the metrics port
            raise _service_error(node, _leaf(group)) from None
    logs.event(log, "node stopped")


async def _stop_on_signal(signals, scope: trio.CancelScope, stopping: trio.Nursery, log: logging.Logger) -> None:
    """The first Ctrl-C or SIGTERM cancels ``scope`` (the node, started or still starting); the
    ones after it are only logged (``stopping``: a nursery that outlives the node's stop)."""
    from palmnode.systemd import notify_stopping

    signum = await stopsignals.cancel_on_signal(signals, scope)
    notify_stopping()  # systemd: this stop is ours, not a crash
    logs.event(log, "node stopping", signal=signal.Signals(signum).name)
    stopping.start_soon(_already_stopping, signals, log)


async def _already_stopping(signals, log: logging.Logger) -> None:
    async for signum in signals:
        logs.event(log, "node already stopping", signal=signal.Signals(signum).name)


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _setup_error(error: BaseException) -> UserError:
    """A failure to set the node up, as one line: 78 when a file the config names can never work
    (the token key file; a GateSetupError that says so), 1 when a restart may find it usable.
    (A device that is absent or fails does not end the node: it is LOST and reopened.)"""
    from palmnode.devices.card_reader import KeyFileError

    if isinstance(error, KeyFileError) or getattr(error, "config", False):
        return ConfigFileError(str(error))
    return UserError(str(error))


def _service_error(node, escalation: BaseException) -> BaseException:
    """A service that failed to start (its socket or port) as one line; anything else as it is."""
    from palmnode.repl import ReplSocketError

    cause = _leaf(escalation.__cause__) if escalation.__cause__ is not None else None
    if getattr(escalation, "reason", None) != "failed to start":
        return escalation
    if isinstance(cause, ReplSocketError):  # 78 for what the config names (not a socket, a folder it cannot write)
        return (ConfigFileError if cause.config else UserError)(str(cause))
    if escalation.child == "metrics" and isinstance(cause, OSError):
        metrics = node.config.metrics
        where = f"cannot serve metrics on {metrics.host}:{metrics.port}: {cause.strerror or cause}"
        if cause.errno == errno.EACCES:  # the node's user may not bind it: a restart meets the same (78)
            start = _unprivileged_port_start()
            if metrics.port < start:
                return ConfigFileError(f"{where}: a port below {start} needs root or CAP_NET_BIND_SERVICE, which "
                                       f"the systemd unit does not give: set [metrics] port to {start} or above")
            return ConfigFileError(f"{where}: the node's user may not bind it: change [metrics] port")
        if cause.errno == errno.EADDRINUSE:
            return UserError(f"{where} (stop what holds it or change [metrics] port)")
        return UserError(f"{where} (check [metrics] host and port)")
    return escalation


def _unprivileged_port_start() -> int:
    """The lowest port a process without CAP_NET_BIND_SERVICE may bind (Linux's
    net.ipv4.ip_unprivileged_port_start; 1024 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def bench(args: argparse.Namespace) -> int:
    from palmnode import bench as benchmod

    return benchmod.main(args)


def demo(args: argparse.Namespace) -> int:
    from palmnode import demo as demomod

    malloc.configure(malloc.RENDERER_THRESHOLD)  # palmnode/malloc.py
    logs.setup("error")  # the demo shows what happens itself; a device's reconnect warnings are noise here
    plan = demomod.Plan(people=args.people, arrivals=args.arrivals, unplug_camera=not args.no_unplug, seed=args.seed)
    played: list = []

    async def play() -> None:
        played.append(await demomod.play(plan))

    signum = _run_stoppable(play)
    if not played:  # stopped half-way: the temporary folder (keys, vault, sockets) is gone, no summary
        return stopsignals.stopped("demo", signum)
    demomod.report(played[0])
    # a Ctrl-C once the demo was done: the summary is whole, the exit 130
    return 130 if (signum or stopsignals.noted()) == signal.SIGINT else 0


def eval(args: argparse.Namespace) -> int:  # noqa: A001 - the subcommand's name
    from palmnode.biometrics import evaluate

    return evaluate.main(args)


def controller(args: argparse.Namespace) -> int:
    from palmnode.controller import command

    return command.main(args)


def certs(args: argparse.Namespace) -> int:
    from palmnode.link import certs as certsmod

    return certsmod.main(args)


def repl(args: argparse.Namespace) -> int:
    from palmnode.repl import client

    return client.main(args)


def vault(args: argparse.Namespace) -> int:
    from palmnode.vault import cli

    return cli.main(args)
