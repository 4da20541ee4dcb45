"""systemd's service notification protocol (``sd_notify``) and watchdog, without libsystemd.

A ``Type=notify`` unit gets ``$NOTIFY_SOCKET``: an AF_UNIX datagram socket (a path, or an abstract
address written ``@name``). The service sends newline-separated ``KEY=value`` assignments to it
(sd_notify(3)): ``READY=1`` once serving, ``STATUS=…`` free text for ``systemctl status``,
``STOPPING=1`` when shutting down, ``WATCHDOG=1`` keep-alives. With ``WatchdogSec=`` set, systemd
passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``) and kills the service unless pinged within it; we
ping every half of it, as sd_watchdog_enabled(3) recommends — and only while the node is healthy,
so a node whose supervision tree has given up is restarted by systemd (``Restart=on-failure``).

Outside systemd (no ``$NOTIFY_SOCKET``) everything here is a no-op.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Callable, Mapping

import trio

from palmnode.actors.tree import SupervisorSnapshot, SupervisorState

log = logging.getLogger("palmnode.systemd")

#: how stale systemd's STATUS= may be (`systemctl status` shows a gate state change this late at most)
STATUS_CHECK_S = 1.0


class Notifier:
    """Sends sd_notify(3) datagrams to one address; does nothing when the address is None.

    Sending never raises: systemd going away must not take the node down. The first failure is
    logged (one line), later ones only counted in ``failures``.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self.sent = 0
        self.failures = 0
        self._sock: socket.socket | None = None
        self._target: str | bytes | None = None
        if self.address is not None:
            if self.address.startswith("@"):
                # abstract namespace: sd_notify(3) writes it '@', the kernel wants a leading NUL
                self._target = b"\0" + self.address[1:].encode()
            elif self.address.startswith("/"):
                self._target = self.address
            else:
                log.warning("NOTIFY_SOCKET %r is neither a path nor an @abstract address: "
                            "not notifying systemd", self.address)
                self.address = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """The notifier for ``$NOTIFY_SOCKET`` (a no-op one when unset or empty)."""
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **state: str) -> bool:
        """Send ``KEY=value`` lines, e.g. ``notify(READY="1", STATUS="serving")``; True if delivered."""
        if self._target is None:
            return False
        lines = []
        for key, value in state.items():
            text = " ".join(str(value).split())  # one line per assignment (sd_notify(3))
            lines.append(f"{key}={text}")
        message = "\n".join(lines).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self._target)
        except OSError as exc:
            if self.failures == 0:
                reason = errno.errorcode.get(exc.errno or 0, str(exc))
                log.warning("cannot notify systemd at %s (%s): continuing without", self.address, reason)
            self.failures += 1
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY="1", **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING="1", **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG="1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between keep-alives (half of ``$WATCHDOG_USEC``), or None when no watchdog is ours.

    Like sd_watchdog_enabled(3): ``$WATCHDOG_PID``, when set, must be this process.
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
        return None
    return usec / 2 / 1e6


def tree_healthy(tree: SupervisorSnapshot | None) -> bool:
    """A supervision tree is healthy while its root runs and no nested supervisor has escalated.

    A ``temporary`` nested supervisor that gave up is the designed degraded mode (the gate
    serves without that part), so it does not count against health.
    """
    return tree is not None and tree.state is SupervisorState.RUNNING and not _escalated_below(tree)


def _escalated_below(tree: SupervisorSnapshot) -> bool:
    return any(child.subtree is not None and child.restart != "temporary"
               and (child.subtree.state is SupervisorState.ESCALATED or _escalated_below(child.subtree))
               for child in tree.children)


async def serve_systemd(healthy: Callable[[], bool], *, status: Callable[[], str] | None = None,
                        notifier: Notifier | None = None, interval: float | None = None,
                        env: Mapping[str, str] | None = None,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Tell systemd the node is ready and keep its watchdog fed while ``healthy()``.

    Start it once the node serves (``READY=1`` is sent at once). Then every ``interval`` seconds
    (default: half of ``$WATCHDOG_USEC``): ``WATCHDOG=1`` if ``healthy()`` is true — nothing if
    not, so systemd's watchdog fires; and within ``STATUS_CHECK_S`` of a change of ``status()``
    (prefixed ``unhealthy …:`` while unhealthy), ``STATUS=`` that text. A no-op (it just waits) when
    ``$NOTIFY_SOCKET`` is unset.

    Being cancelled sends nothing: under a supervisor this task is restarted with its siblings
    (``rest_for_one``), and a ``STOPPING=1`` then would tell systemd the whole service is going.
    The process's own stop path calls :func:`notify_stopping` instead. Started again, it sends
    ``READY=1`` again, which systemd ignores for an active service.
    """
    notifier = Notifier.from_env(env) if notifier is None else notifier
    if not notifier.enabled:
        task_status.started()
        await trio.sleep_forever()
    period = interval if interval is not None else watchdog_interval(env)
    watchdog = period is not None
    shown = status() if status is not None else "serving"
    notifier.ready(shown)
    task_status.started()
    try:
        was_healthy = True
        beat = period if period is not None else 10.0
        next_beat = trio.current_time() + beat
        while True:  # the status is looked at every STATUS_CHECK_S, the watchdog fed every beat
            await trio.sleep_until(min(next_beat, trio.current_time() + STATUS_CHECK_S))
            now_healthy = healthy()
            text = status() if status is not None else "serving"
            if not now_healthy:
                text = f"unhealthy (supervision tree not running): {text}"
            if not now_healthy and was_healthy:
                log.warning("supervision tree unhealthy: no more watchdog keep-alives")
            was_healthy = now_healthy
            update = {"STATUS": text} if text != shown else {}
            shown = text
            ping = watchdog and now_healthy and trio.current_time() >= next_beat
            if trio.current_time() >= next_beat:
                next_beat += beat
            if ping:
                notifier.notify(WATCHDOG="1", **update)
            elif update:
                notifier.notify(**update)
    finally:
        notifier.close()


def notify_stopping(status: str = "stopping", *, env: Mapping[str, str] | None = None) -> bool:
    """``STOPPING=1`` (and ``STATUS=status``): call it once, when the process begins to stop
    (Ctrl-C, SIGTERM). A no-op outside systemd; True if delivered."""
    notifier = Notifier.from_env(env)
    try:
        return notifier.stopping(status)
    finally:
        notifier.close()


__all__ = ["Notifier", "notify_stopping", "serve_systemd", "tree_healthy", "watchdog_interval"]
