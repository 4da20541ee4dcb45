"""The node side of the REPL: a unix socket (0600) serving the line protocol to many clients.

The socket is created atomically: bound inside a fresh 0700 folder next to it, set to 0600, then
renamed into place — at no moment can another user connect. A lock file (``PATH.lock``, flock)
tells whether another node serves the path: then we refuse; otherwise a socket left at the path
by a node that died is stale and replaced.
"""
from __future__ import annotations

import logging
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

import trio

from palmnode import __version__, lockfile
from palmnode.fserrors import folder_error, lasting
from palmnode.logs import event
from palmnode.private_files import others_may_change
from palmnode.repl import protocol
from palmnode.repl.commands import (COMMANDS, CommandError, ReplTarget, Session, channels, followable,
                                    run_command)
from palmnode.repl.protocol import INTERRUPT, Line, LineDecoder, LineTooLong, Malformed, Request

log = logging.getLogger("palmnode.repl")

#: sessions served at once; one more is told so and closed
MAX_SESSIONS = 8
#: ``max_sessions`` at most: each session holds a socket, a task and maybe a console in the node,
#: and a gate's operators are a handful ([repl] max_sessions, config.MAX_REPL_SESSIONS)
SESSIONS_LIMIT = 64
#: a client that does not take one reply line within this long is disconnected
SEND_TIMEOUT_S = 2.0
#: a session with no command this long is told why and closed ([repl] idle_timeout_s)
IDLE_TIMEOUT_S = 15 * 60.0
#: longest unix socket path (sun_path is 108 bytes with its NUL)
MAX_PATH = 107


class ReplSocketError(Exception):
    """The REPL socket cannot be served (one line: the path, why, and the fix).

    ``config``: a restart would meet it unchanged, as the config names it (a path too long,
    something that is not a socket in its place, a folder the node cannot write): ``palmnode run``
    exits 78; otherwise (another node serves it) 1."""

    def __init__(self, message: str, *, config: bool = False) -> None:
        super().__init__(message)
        self.config = config


async def serve_repl(target: ReplTarget, path: str | os.PathLike[str], *, python_console: bool = False,
                     max_sessions: int = MAX_SESSIONS, idle_timeout_s: float = IDLE_TIMEOUT_S,
                     task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the REPL at unix socket ``path`` until cancelled; ``task_status`` gets the path.

    :class:`ReplSocketError` when another node serves the path, or it cannot be created. The
    socket is removed on the way out (if it is still ours). A session whose last command
    finished ``idle_timeout_s`` ago (and that sent none since) gets one ``closing`` line and is
    closed: an operator who walked away leaves neither a console nor a session slot open.
    """
    if not idle_timeout_s > 0:
        raise ValueError(f"idle_timeout_s must be greater than 0, got {idle_timeout_s!r}")
    if not 1 <= max_sessions <= SESSIONS_LIMIT:
        raise ValueError(f"max_sessions must be 1 to {SESSIONS_LIMIT}, got {max_sessions!r}")
    path = Path(path).absolute()
    if len(os.fsencode(path)) > MAX_PATH:
        raise ReplSocketError(f"REPL socket path {path} is longer than {MAX_PATH} bytes: choose a shorter one",
                              config=True)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        why = folder_error(exc)
        raise ReplSocketError(f"cannot create the REPL socket folder {path.parent}: {why}",
                              config=lasting(exc)) from None
    _check_folder(path.parent)
    lock_fd = _lock(path)
    try:
        sock, inode = _bind_atomically(path)
        try:
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            sessions = _Sessions(target, python_console, max_sessions, idle_timeout_s)
            event(log, "REPL serving", socket=str(path), python_console=python_console)
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, sessions.handle, [listener])
                task_status.started(path)
        finally:
            sock.close()
            _remove_if_ours(path, inode)
    finally:
        os.close(lock_fd)


def _check_folder(folder: Path) -> None:
    """Refuse a socket folder another user may write (world-writable, /tmp's sticky bit or not) or
    that another user owns (root aside): they could plant ``PATH.lock`` or a socket of their own
    before the node starts, or (without the sticky bit) rename the node's socket away and put theirs
    in its place, which the operator's ``palmnode repl`` would then talk to. The 0600 socket
    keeps other users out only in a folder they cannot change."""
    try:
        st = os.stat(folder)
    except OSError as exc:
        raise ReplSocketError(f"cannot use the REPL socket folder {folder}: {folder_error(exc)}",
                              config=lasting(exc)) from None
    why = others_may_change(st, os.geteuid(), "the node's user")
    if why is not None:
        raise ReplSocketError(f"REPL socket folder {folder} {why}: choose a [repl] socket_path in a folder only "
                              "the node's user can write (e.g. /run/palmnode)", config=True)


def _lock(path: Path) -> int:
    return lockfile.hold(path, ReplSocketError, f"another node serves the REPL at {path}: stop it, or give "
                         "this node another [repl] socket_path",
                         cannot_lock=lambda message, exc: ReplSocketError(
                             message, config=lasting(exc)))


def _not_a_socket(path: Path) -> str | None:
    """What is at ``path`` when it is not a socket (a folder, a regular file, a symbolic link…);
    None when nothing is there or a socket is (a dead node's: replaced)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISSOCK(mode):
        return None
    return ("a folder" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode)
            else "a symbolic link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device file")


def _bind_atomically(path: Path) -> tuple[socket.socket, int]:
    kind = _not_a_socket(path)
    if kind is not None:  # never removed: an operator's file, or a folder of them
        raise ReplSocketError(f"REPL socket path {path} is {kind}, not a socket: move it away or choose "
                              "another [repl] socket_path", config=True)
    # a socket there: we hold the lock, so the node that made it is gone: stale, replaced by the rename below
    try:
        folder = tempfile.mkdtemp(prefix=".r", dir=path.parent)  # 0700: nobody can reach the socket yet
    except OSError as exc:
        raise ReplSocketError(f"cannot create the REPL socket {path}: {exc.strerror or exc}",
                              config=lasting(exc)) from None
    temporary = os.path.join(folder, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(temporary)
        os.chmod(temporary, 0o600)
        sock.listen(16)
        os.replace(temporary, path)
        inode = os.stat(path).st_ino
    except OSError as exc:
        sock.close()
        raise ReplSocketError(f"cannot create the REPL socket {path}: {exc.strerror or exc}",
                              config=lasting(exc)) from None
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        os.rmdir(folder)
    return sock, inode


def _remove_if_ours(path: Path, inode: int) -> None:
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


class _Sessions:
    def __init__(self, target: ReplTarget, python_console: bool, max_sessions: int,
                 idle_timeout_s: float) -> None:
        self.target = target
        self.python_console = python_console
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.active = 0

    def hello(self) -> dict[str, Any]:
        node = getattr(self.target.config, "node", None)
        commands = [c for c in COMMANDS if c != "py" or self.python_console]
        return {"hello": {"protocol": protocol.VERSION, "node_id": getattr(node, "node_id", None),
                          "version": __version__, "commands": commands, "follow": sorted(followable()),
                          "lights": list(channels(self.target)),
                          "python_console": self.python_console}}

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            connection = _Connection(stream, self.idle_timeout_s)
            try:
                if self.active >= self.max_sessions:
                    await connection.send_line(protocol.encode_error(
                        f"too many REPL sessions ({self.max_sessions}): close one and retry (an idle "
                        f"one is closed after {protocol.duration(self.idle_timeout_s)})"))
                    return
                self.active += 1
                try:
                    await connection.send(self.hello())
                    session = Session(self.target, connection.send, self.python_console)
                    await connection.serve(session)
                finally:
                    self.active -= 1
            except* _ClientGone:
                pass  # the client went away (or stopped reading): the node keeps serving the others
            except* Exception:  # a bug reading one client's lines ends its session only, not every
                log.exception("REPL session ended by an error")  # operator's (nor, restarted, the node)


class _ClientGone(Exception):
    """The client hung up, or took no reply line within SEND_TIMEOUT_S."""


def _client_gone(exc: Exception) -> bool:
    """Whether ``exc`` is _ClientGone, or a group of nothing else."""
    if isinstance(exc, ExceptionGroup):
        return exc.split(_ClientGone)[1] is None
    return isinstance(exc, _ClientGone)


class _Connection:
    """One client: a reader task (requests and interrupts) and this task running them in order."""

    def __init__(self, stream: trio.SocketStream, idle_timeout_s: float) -> None:
        self.stream = stream
        self.idle_timeout_s = idle_timeout_s
        self.decoder = LineDecoder()
        self.received = 0    # requests received so far (numbered from 1)
        self.interrupt_upto = 0  # requests numbered up to this are cancelled
        self.running: tuple[int, trio.CancelScope, bool] | None = None  # number, scope, ends_with_client
        self.closed = False      # the client closed its sending side

    async def send(self, obj: dict[str, Any]) -> None:
        await self.send_line(protocol.encode(obj))

    async def send_line(self, data: bytes) -> None:
        # whole lines only: an interrupt never cuts a line in half (shielded, but bounded in time)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(SEND_TIMEOUT_S):
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise _ClientGone from None
                return
        raise _ClientGone

    async def serve(self, session: Session) -> None:
        send_requests, requests = trio.open_memory_channel[tuple[int, Request | Malformed | LineTooLong]](64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, send_requests)
            async with requests:
                while True:
                    # idle: waiting here, for the next request (a running command is not idle;
                    # interrupts and blank lines are not commands and do not keep a session open)
                    received = None
                    with trio.move_on_after(self.idle_timeout_s):
                        try:
                            received = await requests.receive()
                        except trio.EndOfChannel:
                            break
                    if received is None:
                        await self._close_idle()
                        break
                    number, item = received
                    await self._answer(session, number, item)
                    del item, received  # the last request (a person id, a phone number) is not kept
            nursery.cancel_scope.cancel()

    async def _close_idle(self) -> None:
        event(log, "REPL session closed: idle", idle_timeout_s=self.idle_timeout_s)
        await self.send_line(protocol.encode_closing(
            "idle", f"no command for {protocol.duration(self.idle_timeout_s)}: the node closed this "
            "session ([repl] idle_timeout_s); connect again to go on"))

    async def _read(self, send_requests: trio.MemorySendChannel) -> None:
        async with send_requests:
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    # the client is gone or closed its side: nobody can interrupt anymore, so what
                    # it sent is still answered, but a follow or an enrol ends here (ends_with_client)
                    self.closed = True
                    if self.running is not None and self.running[2]:
                        self.running[1].cancel()
                    return
                self.decoder.receive_data(data)
                del data  # what the client sent (a person id, a phone number) is not kept until it sends again
                await self._queue_lines(send_requests)

    async def _queue_lines(self, send_requests: trio.MemorySendChannel) -> None:
        """The decoder's complete lines as numbered requests (interrupts served at once)."""
        while (event := self.decoder.next_event()) is not None:
            if isinstance(event, Line):
                item = protocol.parse_request(event.data)
                if isinstance(item, Request) and item.cmd == INTERRUPT:
                    self._interrupt()
                    continue
                if isinstance(item, Malformed) and not event.data.strip():
                    continue  # blank lines are nothing
            else:
                item = event
            self.received += 1
            await send_requests.send((self.received, item))

    def _interrupt(self) -> None:
        """Cancel every request received so far that has not finished."""
        self.interrupt_upto = self.received
        if self.running is not None and self.running[0] <= self.interrupt_upto:
            self.running[1].cancel()

    async def _answer(self, session: Session, number: int,
                      item: Request | Malformed | LineTooLong) -> None:
        if isinstance(item, LineTooLong):
            await self.send_line(protocol.encode_error(
                f"request line too long ({item.length} bytes, at most {protocol.MAX_LINE})"))
            return
        if isinstance(item, Malformed):
            await self.send_line(protocol.encode_error(item.reason))
            return
        found = COMMANDS.get(item.cmd)
        ends_with_client = found is not None and found.ends_with_client
        with trio.CancelScope() as scope:
            if number <= self.interrupt_upto or (ends_with_client and self.closed):
                scope.cancel()
            self.running = (number, scope, ends_with_client)
            try:
                reply = await run_command(session, item.cmd, item.args)
            except CommandError as exc:
                await self.send_line(protocol.encode_error(str(exc)))
                return
            except Exception as exc:  # a bug in a command must not end the session (or the node)
                if _client_gone(exc):  # also from inside a command's own nursery (enrol's progress)
                    raise
                log.exception("REPL command %s failed", item.cmd)
                await self.send_line(protocol.encode_error(
                    f"{item.cmd} failed: {type(exc).__name__}: {exc}".splitlines()[0]))
                return
            finally:
                self.running = None
            await self.send_line(protocol.encode_ok(reply.result, reply.text))
        if scope.cancelled_caught:
            await self.send_line(protocol.encode_ok({"interrupted": True}, "interrupted"))


__all__ = ["IDLE_TIMEOUT_S", "MAX_SESSIONS", "SESSIONS_LIMIT", "ReplSocketError", "serve_repl"]
