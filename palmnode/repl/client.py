"""``palmnode repl``: attach to a running node's REPL socket.

Interactive on a terminal (readline history in ``~/.palmnode_repl_history``, Tab completes
command names, event types and light channels); with stdin from a pipe it runs one command a line
(``q`` on a line of its own ends a ``follow``); ``palmnode repl CMD ARGS`` runs one command.
Plain blocking sockets: the client has nothing to do concurrently but watch stdin for ``q``, and
(waiting for piped stdin) the socket for the node's closing line. An idle session closed by the
node prints why and exits with status 0: at once when piped, at the next line entered at a prompt.
A SIGTERM or SIGHUP ends it as leaving does (the terminal's modes restored, the history saved),
one line, status 128 + the signal.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import os
import select
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, TextIO

from palmnode.private_files import others_may_change, replace_file
from palmnode.repl import protocol
from palmnode.repl.protocol import split_line

#: where to look for the socket when neither --socket nor $PALMNODE_REPL_SOCKET says: the
#: systemd unit's RuntimeDirectory, then the checkout's run/ folder (config/sim.toml's socket_path)
DEFAULT_SOCKETS = ("/run/palmnode/repl.sock",
                   str(Path(__file__).resolve().parents[2] / "run" / "repl.sock"))
SOCKET_ENV = "PALMNODE_REPL_SOCKET"
HISTORY_FILE = "~/.palmnode_repl_history"
HISTORY_LENGTH = 2000
#: the node must greet within this long
CONNECT_TIMEOUT_S = 5.0


#: what ends the client as leaving does, exit status 128 + the signal: SIGTERM (`kill`, a logout)
#: and SIGHUP (the terminal closed); unless ignored as it starts (`nohup` ignores SIGHUP)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A SIGTERM or SIGHUP (:data:`STOP_SIGNALS`): unwinds the client through every ``finally``
    (the terminal's modes, the history), past the prompt's and the console's ``except
    KeyboardInterrupt``, which are Ctrl-C's."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class ReplClientError(Exception):
    """Cannot talk to the node (one line: which socket, why, what to do)."""


class SessionClosed(Exception):
    """The node closed the session and said why (its ``closing`` line: e.g. no command for its
    ``[repl] idle_timeout_s``). Not an error: the client prints the reason and exits."""


def default_socket(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    for candidate in DEFAULT_SOCKETS:
        if os.path.exists(candidate):
            return Path(candidate)
    return Path(DEFAULT_SOCKETS[0])


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def check_socket_folder(path: Path, uid: int | None = None) -> None:
    """ReplClientError when the socket's folder (the one named, and the one a link there leads to)
    is one another user may change: writable by others, or owned by another user than ``uid``
    (default: ours) or root. The node refuses to serve in such a folder (server._check_folder), so
    a socket there is not a node's: it may be another user's, there to read what the operator
    types (phone numbers, py source). Root's client accepts any owner: it attaches to the node's
    user's socket (``sudo palmnode repl``). A folder that cannot be looked at is left to connect()."""
    uid = os.geteuid() if uid is None else uid
    folders = dict.fromkeys([Path(os.path.abspath(path)).parent, Path(os.path.realpath(path)).parent])
    for folder in folders:
        try:
            st = os.stat(folder)
        except OSError:
            continue
        why = others_may_change(st, None if uid == 0 else uid, "you")
        if why is not None:
            raise ReplClientError(f"REPL socket folder {folder} {why}: the socket there may be another user's (a "
                                  f"node refuses such a folder); --socket (or ${SOCKET_ENV}) names the node's "
                                  "[repl] socket_path")


class Connection:
    """One session with the node: send requests, read reply lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self.hello: dict[str, Any] = {}

    @classmethod
    def open(cls, path: Path, timeout: float = CONNECT_TIMEOUT_S) -> Connection:
        check_socket_folder(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            sock.close()
            raise ReplClientError(f"no REPL socket at {path}: is the node running? (--socket PATH or "
                                  f"${SOCKET_ENV} names another)") from None
        except ConnectionRefusedError:
            sock.close()
            if not _is_socket(path):
                raise ReplClientError(f"{path} is not a socket: --socket (or ${SOCKET_ENV}) names the node's "
                                      "REPL socket") from None
            raise ReplClientError(f"nobody serves {path} (left by a node that stopped): start the node") from None
        except PermissionError:
            sock.close()
            raise ReplClientError(f"no permission to open {path}: run as the node's user "
                                  "(the socket is 0600)") from None
        except OSError as exc:
            sock.close()
            raise ReplClientError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        conn = cls(sock)
        try:
            first = conn.read()
        except (OSError, ReplClientError) as exc:
            sock.close()
            raise ReplClientError(f"{path}: the node did not greet: {exc}") from None
        if "hello" not in first:
            sock.close()
            raise ReplClientError(f"{path}: {first.get('error') or 'not a palmnode REPL'}")
        conn.hello = first["hello"]
        sock.settimeout(None)
        return conn

    def close(self) -> None:
        self.sock.close()

    def send(self, cmd: str, *args: str) -> None:
        try:
            self.sock.sendall(protocol.encode_request(cmd, *args))
        except OSError:  # the node closed the session: its closing line says why, if it sent one
            self.unasked()

    def interrupt(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(protocol.encode_request(protocol.INTERRUPT))

    def fill(self) -> None:
        """Receive what the node sent (waits for something); ReplClientError if it hung up."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:  # it closed with our request unread (after its last line)
            data = b""
        if not data:
            raise ReplClientError("the node closed the connection")
        self._buffer += data

    def read(self) -> dict[str, Any]:
        """The next reply line (waiting for it); ReplClientError when the node hung up."""
        while (reply := self.next_reply()) is None:
            self.fill()
        return reply

    def unasked(self) -> NoReturn:
        """What the node sent while no command ran: its closing line (SessionClosed), or it hung
        up (ReplClientError). The node sends nothing else unasked."""
        reply = self.read()
        if "closing" in reply:
            raise SessionClosed(str(reply.get("text") or f"the node closed the session ({reply['closing']})"))
        raise ReplClientError("the node sent a line no command asked for")

    def check_unasked(self) -> None:
        """:meth:`unasked` if the node has sent something (without waiting for it)."""
        if b"\n" in self._buffer or select.select([self.sock], [], [], 0)[0]:
            self.unasked()

    def next_reply(self) -> dict[str, Any] | None:
        """The next complete reply line received so far, or None."""
        if b"\n" not in self._buffer:
            return None
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        try:
            reply = json.loads(line)
        except ValueError:
            raise ReplClientError("the node sent something that is not a JSON line") from None
        if not isinstance(reply, dict):
            raise ReplClientError("the node sent a reply that is not a JSON object")
        return reply


class StdinLines:
    """Lines from a non-terminal stdin, read with os.read so select() sees what is left."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self.eof = False

    def ready(self) -> bool:
        return b"\n" in self._buffer or self.eof

    def fill(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # a stdin that cannot be read (nohup's, opened write-only) holds no lines
            data = b""
        if data:
            self._buffer += data
        else:
            self.eof = True

    def peek(self) -> str | None:
        """The next complete line, stripped and lower-cased, without taking it (None if none yet)."""
        if b"\n" not in self._buffer:  # at the end, what is left is the last line
            return self._buffer.decode("utf-8", "replace").strip().lower() if self.eof and self._buffer else None
        return self._buffer[:self._buffer.index(b"\n")].decode("utf-8", "replace").strip().lower()

    def readline(self) -> str | None:
        while b"\n" not in self._buffer and not self.eof:
            self.fill()
        if not self._buffer:
            return None
        line, sep, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line.decode("utf-8", "replace")


class Repl:
    """Runs commands through a connection and prints their replies."""

    def __init__(self, conn: Connection, out: TextIO = sys.stdout, *, interactive: bool,
                 stdin: StdinLines | None = None, stop_at_end_of_input: bool = True) -> None:
        self.conn = conn
        self.out = out
        self.interactive = interactive
        self.stdin = stdin
        #: piped commands: the end of stdin stops a follow (the script is done); a one-shot command's
        #: stdin carries no commands, and its end (/dev/null, nohup) asks nothing
        self.stop_at_end_of_input = stop_at_end_of_input
        self.errors = 0

    # -- one command

    def run(self, cmd: str, args: tuple[str, ...]) -> dict[str, Any]:
        """Send one request, print every reply line, return the final one.

        Ctrl-C (and, during follow, ``q``) sends an interrupt and keeps reading until the final
        line; a second Ctrl-C gives up (KeyboardInterrupt).
        """
        self.conn.send(cmd, *args)
        watch_input = cmd == "follow"
        interrupted = False
        with self._watch_keys(watch_input) as key_pressed, _SigintPipe() as sigint:
            while True:
                reply = self.conn.next_reply()
                if reply is None:
                    stop = self._wait(watch_input and not interrupted, key_pressed, sigint)
                    if stop and not interrupted:
                        self.conn.interrupt()
                        interrupted = True
                    continue
                if "ok" in reply:
                    self._final(cmd, args, reply)
                    return reply
                if "closing" in reply:  # it closed the session as the request went out
                    raise SessionClosed(str(reply.get("text") or "the node closed the session"))
                self._stream(reply)

    def _wait(self, watch_input: bool, key_pressed: Callable[[], bool] | None, sigint: _SigintPipe) -> bool:
        """Wait for the node (then read what it sent: False) or for the user to ask to stop (True)."""
        watched: list[Any] = [self.conn.sock]
        if sigint.fd is not None:
            watched.append(sigint.fd)
        stdin_fd = None
        if watch_input and key_pressed is not None:
            stdin_fd = sys.stdin.fileno()
        elif watch_input and self.stdin is not None and not self.stdin.eof:
            if self.stdin.ready():
                return self._stdin_says_stop()
            stdin_fd = self.stdin.fd
        if stdin_fd is not None:
            watched.append(stdin_fd)
        readable, _, _ = select.select(watched, [], [])
        if sigint.fd is not None and sigint.fd in readable and sigint.drain():
            return True
        if stdin_fd is not None and stdin_fd in readable:
            if key_pressed is not None:
                return key_pressed()
            assert self.stdin is not None
            self.stdin.fill()
            if self.stdin.ready():
                return self._stdin_says_stop()
        if self.conn.sock in readable:
            self.conn.fill()
        return False

    def _stdin_says_stop(self) -> bool:
        """Piped stdin: the next line (or its end, unless ``stop_at_end_of_input`` is off: a one-shot
        command) stops a follow; a ``q`` line is used up by it, any other line is kept and runs as
        the next command."""
        assert self.stdin is not None
        line = self.stdin.peek()
        if line is None and not self.stop_at_end_of_input:
            return False
        if line in ("q", "quit"):
            self.stdin.readline()
        return True

    @contextlib.contextmanager
    def _watch_keys(self, unbounded: bool) -> Iterator[Callable[[], bool] | None]:
        """On a terminal during follow: single keys (cbreak mode), ``q`` stops."""
        if not (unbounded and self.interactive and sys.stdin.isatty()):
            yield None
            return
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        try:
            yield lambda: os.read(fd, 1).lower() == b"q"
        finally:  # also on a SIGTERM or SIGHUP (Stopped): killed here, the client left the terminal without echo
            try:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            except termios.error as exc:
                if exc.args[0] != errno.EIO:
                    raise
                # EIO: the terminal hung up (its SIGHUP is on its way out): nothing left to restore

    def _line(self, text: str) -> None:
        """``text`` and its newline in one write (``print`` makes two: a SIGTERM between them left
        the line open, and the client's last words ran on after it)."""
        self.out.write(text + "\n")
        self.out.flush()

    def _error(self, text: str) -> None:
        """Count an error and say it: ``error: text``."""
        self.errors += 1
        self._line(f"error: {text}")

    def _stream(self, reply: dict[str, Any]) -> None:
        if "text" in reply:
            self._line(str(reply["text"]))
        elif "event" in reply:
            self._line(format_event(reply["event"]))

    def _final(self, cmd: str, args: tuple[str, ...], reply: dict[str, Any]) -> None:
        if not reply.get("ok"):
            self._error(reply.get("error", "unknown error"))
            return
        result = reply.get("result")
        if cmd == "capture" and isinstance(result, dict) and "png_base64" in result:
            self._save_capture(args, result, reply.get("text"))
            return
        text = reply.get("text")
        if cmd == "py" and args and not (isinstance(result, dict) and result.get("interrupted")):
            # what the statement printed, exactly
            self.out.write(text or "")
            self.out.flush()
        elif text is not None:
            self._line(str(text))
        elif result is not None:
            self._line(json.dumps(result, indent=2))

    def _save_capture(self, args: tuple[str, ...], result: dict[str, Any], text: str | None) -> None:
        path = Path(args[0] if args else time.strftime("palm-roi-%Y%m%d-%H%M%S.png")).expanduser()
        data = base64.b64decode(result["png_base64"])
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            self._error(f"{path} exists: give capture another PATH (the image was not kept)")
            return
        except OSError as exc:
            self._error(f"cannot write {path}: {exc.strerror} (the image was not kept)")
            return
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException as exc:  # a full disk (or a Ctrl-C) mid-write: no cut-off PNG is left
            with contextlib.suppress(OSError):
                os.unlink(path)
            if not isinstance(exc, OSError):
                raise
            self._error(f"cannot write {path}: {exc.strerror} (the image was not kept)")
            return
        self._line(f"{text or 'ROI'} saved to {path}")

    # -- line by line

    def handle_line(self, line: str, read_line: Callable[[str], str | None]) -> bool:
        """One typed line; False when the user wants to leave."""
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        if line in ("quit", "exit", "q"):
            return False
        try:
            cmd, args = split_line(line)
        except ValueError as exc:
            self._error(str(exc))
            return True
        if cmd == "py" and not args:
            self.python(read_line)
            return True
        self.run(cmd, args)
        return True

    def python(self, read_line: Callable[[str], str | None]) -> None:
        """The node's Python console: ``>>>`` lines until Ctrl-D or exit()."""
        first = self.run("py", ())
        if not first.get("ok"):
            return
        lines: list[str] = []
        with _python_keys(self.interactive):
            while True:
                try:
                    line = read_line("... " if lines else ">>> ")
                except KeyboardInterrupt:
                    print("\nKeyboardInterrupt", file=self.out)
                    lines = []
                    continue
                if line is None:
                    if self.interactive:
                        print(file=self.out)
                    return
                lines.append(line)
                reply = self.run("py", ("\n".join(lines),))
                result = reply.get("result") or {}
                if reply.get("ok") and result.get("more"):
                    continue
                lines = []
                if result.get("exit"):
                    return


class _SigintPipe:
    """While a command runs, Ctrl-C only wakes ``select`` (a handler and a wakeup pipe), so it can
    never land between two statements; a second Ctrl-C raises KeyboardInterrupt (give up)."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self._count = 0
        self._seen = 0

    def __enter__(self) -> _SigintPipe:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only: plain KeyboardInterrupt there
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._old_handler = signal.signal(signal.SIGINT, self._handler)
        self.fd = self._read
        return self

    def _handler(self, signum: int, frame: object) -> None:
        self._count += 1
        if self._count > 1:
            raise KeyboardInterrupt

    def drain(self) -> bool:
        """True when a Ctrl-C arrived since the last call."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass
        new, self._seen = self._count > self._seen, self._count
        return new

    def __exit__(self, *exc: object) -> None:
        if self.fd is None:
            return
        signal.signal(signal.SIGINT, self._old_handler)
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self._read)
        os.close(self._write)


def format_event(event: dict[str, Any]) -> str:
    fields = " ".join(f"{k}={_short(v)}" for k, v in event.items() if k not in ("type", "at"))
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    return f"{stamp}  {event.get('type', '?'):<18} {fields}".rstrip()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, str) and (" " in value or not value):
        return json.dumps(value)
    return str(value) if not isinstance(value, (list, dict)) else json.dumps(value)


@contextlib.contextmanager
def _python_keys(interactive: bool) -> Iterator[None]:
    """In the Python console Tab indents (instead of completing command names)."""
    readline = _readline() if interactive else None
    if readline is None:
        yield
        return
    readline.parse_and_bind("tab: tab-insert")
    try:
        yield
    finally:
        readline.parse_and_bind("tab: complete")


def _readline():
    try:
        import readline
    except ImportError:  # pragma: no cover - readline ships with CPython on Linux
        return None
    return readline


class Completer:
    """Tab completion: command names, then per command its words (help: commands, follow: event
    types, light: channels)."""

    def __init__(self, hello: dict[str, Any]) -> None:
        self.commands = sorted(hello.get("commands", [])) + ["quit"]
        self.words = {
            "help": sorted(hello.get("commands", [])),
            "follow": sorted(set(hello.get("follow", [])) | {"devices", "cards", "presence", "gate"}),
            "light": list(hello.get("lights", ["ir", "surface"])),
        }
        self._matches: list[str] = []

    def options(self, before: str, text: str) -> list[str]:
        words = before.split()
        if not words:
            pool = self.commands
        elif words[0] == "light" and len(words) == 2:
            pool = ["on", "off", "0", "0.5", "1"]
        elif words[0] in ("help", "light") and len(words) > 1:
            pool = []
        else:
            pool = self.words.get(words[0], [])
        return [w + " " for w in pool if w.startswith(text)]

    def __call__(self, text: str, state: int) -> str | None:
        if state == 0:
            import readline

            line = readline.get_line_buffer()
            self._matches = self.options(line[:readline.get_begidx()], text)
        return self._matches[state] if state < len(self._matches) else None


#: commands never kept in the history file: they carry a phone number, a card digest or a person
#: id, which must not outlive a deletion on the operator's disk
UNRECORDED_COMMANDS = frozenset({"enrol", "delete"})


@contextlib.contextmanager
def _history(hello: dict[str, Any]) -> Iterator[Callable[[str], None]]:
    """Readline history and completion for an interactive session; yields ``entered(line)``, to be
    called with each line read at the prompt: it takes UNRECORDED_COMMANDS back out of the history."""
    readline = _readline()
    if readline is None:
        yield lambda line: None
        return

    def entered(line: str) -> None:
        words = line.split()
        length = readline.get_current_history_length()
        if words and words[0] in UNRECORDED_COMMANDS and length:
            readline.remove_history_item(length - 1)

    path = Path(HISTORY_FILE).expanduser()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)
    readline.set_completer(Completer(hello))
    readline.set_completer_delims(" \t")
    readline.parse_and_bind("tab: complete")
    try:
        yield entered
    finally:
        with contextlib.suppress(OSError):
            _save_history(readline, path)


def _save_history(readline: Any, path: Path) -> None:
    """Write the history to ``path``, 0600 from its first byte (it may hold py source), without
    following a symbolic link at its name (readline writes through one: run as root with another
    user's HOME, a link they planted would have root overwrite the file it names).

    readline writes only by name, so it writes into a private 0700 folder of our own; the bytes
    then go into a new file beside ``path`` and are renamed over it (private_files.replace_file)."""
    with tempfile.TemporaryDirectory(prefix="palmnode-repl-") as private:
        staged = os.path.join(private, "history")
        readline.write_history_file(staged)
        data = Path(staged).read_bytes()
    replace_file(path, data, 0o600)


# -- the subcommand

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", type=Path, default=None,
                        help=f"the node's REPL socket (default ${SOCKET_ENV}, else the first of "
                        f"{', '.join(DEFAULT_SOCKETS)} that exists)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="run this one command and exit (e.g. `palmnode repl health`)")


DESCRIPTION = ("Attach to a running node's diagnostics REPL (a unix socket, 0600): device health, the "
               "node's status, the supervision tree, live events, latency statistics, gallery size, one "
               "ROI capture to PNG, illuminator levels, the running config, enrolling and deleting "
               "people, the gate's mode, and (when the node's config allows it) a Python console "
               "inside the node. Type help once attached. With stdin from a pipe it runs one command "
               "a line.")


class _StopSignals:
    """While the client runs, the first of :data:`STOP_SIGNALS` raises :class:`Stopped` (unless the
    signal was ignored as the client started: ``nohup``); one after it, while the client unwinds,
    is only noted (its ``finally`` blocks restore the terminal and save the history to their end)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def _handler(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            raise Stopped(signum)

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


#: while the prompt waits, a no-op SIGALRM this often (s): see _ticking
PROMPT_TICK_S = 0.25


@contextlib.contextmanager
def _ticking() -> Iterator[None]:
    """A SIGALRM every PROMPT_TICK_S while the block runs (the prompt's ``input()``). readline
    prints the prompt, then waits in ``select()`` with no timeout and runs Python's signal
    handlers only when that wait is interrupted: a SIGTERM or SIGHUP that came between the two
    (the moment the prompt appears) waited for the next key. Each tick interrupts the wait, and
    the handler of a signal that came meanwhile runs then."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # the handler stays once the prompt is left: a tick already on its way must find one (with
    # SIGALRM's default back, it would end the client; Python's own, warn of a race)
    signal.signal(signal.SIGALRM, _tick)
    signal.setitimer(signal.ITIMER_REAL, PROMPT_TICK_S, PROMPT_TICK_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _tick(signum: int, frame: object) -> None:
    """The prompt's SIGALRM: nothing to do, the wait it interrupts is the point (_ticking)."""


def _write_raw(stream: TextIO, text: str) -> None:
    """``text`` straight to ``stream``'s file, or nowhere if it cannot be written (a terminal that
    hung up): not left in its buffer, which Python would fail to flush at exit (status 120)."""
    with contextlib.suppress(OSError, ValueError):
        stream.flush()
        os.write(stream.fileno(), text.encode())


def main(args: argparse.Namespace) -> int:
    status = 1
    stops = _StopSignals()
    try:
        with stops:
            status = _run(args)
    except Stopped:  # raised where the client was, or as it left: either way it has unwound
        pass
    if stops.signum is None:
        return status
    from palmnode.stopsignals import stopped_line

    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()  # what the client said before it, in order (stdout and stderr may be one)
    _write_raw(sys.stderr, stopped_line("repl", stops.signum) + "\n")
    return 128 + stops.signum


def _run(args: argparse.Namespace) -> int:
    path = args.socket if args.socket is not None else default_socket()
    try:
        conn = Connection.open(path)
    except ReplClientError as exc:
        print(f"palmnode repl: {exc}", file=sys.stderr)
        return 1
    try:
        if args.command:
            return _one_shot(conn, args.command)
        if sys.stdin.isatty():
            return _interactive(conn)
        return _piped(conn)
    except ReplClientError as exc:
        print(f"palmnode repl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        conn.close()


def _closed(exc: SessionClosed) -> None:
    print(f"palmnode repl: {exc}", file=sys.stderr, flush=True)


def _one_shot(conn: Connection, words: list[str]) -> int:
    repl = Repl(conn, interactive=sys.stdin.isatty(), stdin=None if sys.stdin.isatty() else StdinLines(),
                stop_at_end_of_input=False)
    try:
        if words and words[0] == "py" and len(words) > 1:
            repl.run("py", (" ".join(words[1:]),))
        else:
            repl.run(words[0], tuple(words[1:]))
    except SessionClosed as exc:
        _closed(exc)
    return 1 if repl.errors else 0


def _interactive(conn: Connection) -> int:
    hello = conn.hello
    repl = Repl(conn, interactive=True)
    runs = f"palmnode {hello['version']}, " if hello.get("version") else ""  # an older node's hello has none
    print(f"palmnode REPL on node {hello.get('node_id')} ({runs}{hello.get('protocol')}): help lists the "
          "commands, Tab completes, Ctrl-D leaves")

    def read_line(prompt: str) -> str | None:
        conn.check_unasked()  # it closed the session while the operator was away: say why
        try:
            with _ticking():
                line = input(prompt)
        except EOFError:
            return None
        except Stopped:  # a SIGTERM or SIGHUP at the prompt: its line goes under it, as Ctrl-D's end
            _write_raw(sys.stdout, "\n")
            raise
        conn.check_unasked()  # ...or while the prompt waited: said before the line is sent
        return line

    try:
        return _prompt_loop(conn, repl, read_line)
    except SessionClosed as exc:
        print(flush=True)  # off the prompt's line
        _closed(exc)
        return 0


def _prompt_loop(conn: Connection, repl: Repl, read_line: Callable[[str], str | None]) -> int:
    hello = conn.hello
    with _history(hello) as entered:
        prompt = f"{hello.get('node_id') or 'node'}> "
        while True:
            try:
                line = read_line(prompt)
            except KeyboardInterrupt:
                print()
                continue
            if line is None:
                print()
                return 0
            entered(line)
            if not repl.handle_line(line, read_line):
                return 0


def _piped(conn: Connection) -> int:
    stdin = StdinLines()
    repl = Repl(conn, interactive=False, stdin=stdin)

    def read_line(prompt: str = "") -> str | None:
        """The next line of stdin; meanwhile, the node's closing line (or hang-up) ends the session."""
        while not stdin.ready():
            readable, _, _ = select.select([stdin.fd, conn.sock], [], [])
            if conn.sock in readable:
                conn.unasked()
            stdin.fill()
        return stdin.readline()

    try:
        while True:
            line = read_line()
            if line is None or not repl.handle_line(line, read_line):
                break
    except SessionClosed as exc:
        _closed(exc)
    return 1 if repl.errors else 0


__all__ = ["Completer", "Connection", "check_socket_folder", "DEFAULT_SOCKETS", "DESCRIPTION", "HISTORY_FILE", "Repl",
           "ReplClientError", "SessionClosed", "StdinLines", "add_arguments", "default_socket", "format_event",
           "main"]


if __name__ == "__main__":  # `python -m palmnode.repl.client`, as `palmnode repl` does
    _parser = argparse.ArgumentParser(prog="palmnode repl", description=DESCRIPTION)
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
