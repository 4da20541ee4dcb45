"""``palmnode repl`` as a real process: stdin from a pipe, and a terminal (pty) with readline."""
from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import stat
import subprocess
import sys
import termios
from pathlib import Path

import cv2
import pytest
import trio

import palmnode
from drivers.card_reader.reads import BadgeRead
from palmnode.actors import GateState
from palmnode.gate.events import Decision
from palmnode.repl import serve_repl
from palmnode.repl.client import (DEFAULT_SOCKETS, Completer, Connection, Repl, ReplClientError, SessionClosed,
                                  Stopped, check_socket_folder, default_socket)
from palmnode.repl.server import IDLE_TIMEOUT_S
from tests.conftest import wait_for
from tests.repl.conftest import BareTarget


class Output:
    """Everything a process wrote, read as it comes."""

    def __init__(self, stream):
        self.stream = stream
        self.text = ""

    async def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        with trio.move_on_after(timeout):
            while needle not in self.text:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:  # a pty master reads EIO once the slave side is gone
                    data = b""
                if not data:
                    raise AssertionError(f"output ended before {needle!r}:\n{self.text}")
                self.text += data.decode("utf-8", "replace")
            return self.text
        raise AssertionError(f"no {needle!r} within {timeout} s in:\n{self.text}")

    async def prompt(self, prompt: str, number: int, timeout: float = 10.0) -> None:
        """Wait for the ``number``-th prompt (readline has the terminal once it shows it)."""
        with trio.fail_after(timeout):
            while self.text.count(prompt) < number:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise AssertionError(f"output ended before prompt {number}:\n{self.text}")
                self.text += data.decode("utf-8", "replace")

    async def rest(self, timeout: float = 10.0) -> str:
        with trio.fail_after(timeout):
            while data := await self.stream.receive_some(65536):
                self.text += data.decode("utf-8", "replace")
        return self.text


def client_command(path):
    return [sys.executable, "-m", "palmnode.repl.client", "--socket", str(path)]


@contextlib.asynccontextmanager
async def piped_client_with_a_hand(node, gate, repl_path, tmp_path, **popen):
    """A hand over the ready gate, and a client process reading its commands from a pipe (its
    stdout and stderr together), killed at the end: (process, Output)."""
    await wait_for(lambda: node.health is not None and node.health.gate is GateState.READY, timeout=5)
    gate.hand.present(5)
    gate.hand.distance_mm = 150.0
    process = await trio.lowlevel.open_process(client_command(repl_path), stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
                                               env={**os.environ, "HOME": str(tmp_path)}, **popen)
    try:
        yield process, Output(process.stdout)
    finally:
        process.kill()


async def end_of_input(process, out) -> tuple[str, int]:
    """Close the client's stdin: (all it printed, its exit status)."""
    await process.stdin.aclose()
    text = await out.rest()
    return text, await process.wait()


async def test_piped_stdin_runs_one_command_a_line(node, gate, repl_path, tmp_path):
    async with piped_client_with_a_hand(node, gate, repl_path, tmp_path) as (process, out):
        await process.stdin.send_all(b"health\nbogus one\ncapture roi.png\ncapture roi.png\n"
                                     b"light surface 0.25\nfollow decision\n")
        await out.wait_for("following Decision")
        node.bus.publish(Decision("unknown", None, None, None, "no match", 88.0, "entry", 1.0))
        await out.wait_for("Decision")
        await process.stdin.send_all(b"q\nhelp light\n")
        text, status = await end_of_input(process, out)
    assert status == 1, text  # one command failed
    lines = text.splitlines()
    assert lines[0] == "gate READY"
    assert "error: unknown command 'bogus': type help for the list" in lines
    assert "surface light at 0.25" in lines
    saved = [line for line in lines if line.endswith("saved to roi.png")]
    assert len(saved) == 1 and saved[0].startswith("ROI ")
    assert "error: roi.png exists: give capture another PATH (the image was not kept)" in lines
    event = next(line for line in lines if "Decision  " in line)
    assert "outcome=unknown" in event and 'reason="no match"' in event and "latency_ms=88" in event
    assert "interrupted" in lines
    assert "light CHANNEL LEVEL" in lines  # the line after q ran
    png = tmp_path / "roi.png"
    assert stat.S_IMODE(os.stat(png).st_mode) == 0o600
    image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    assert image.ndim == 2 and image.shape[1] == 2 * image.shape[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == ["roi.png"]


async def test_piped_python_console_and_one_shot(node, repl_path, tmp_path):
    process = await trio.lowlevel.open_process(client_command(repl_path), stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = Output(process.stdout)
    try:
        await process.stdin.send_all(b"py\nimport math\nfor i in range(2):\n    print(i)\n\n"
                                     b"math.sqrt(16)\nnode.config.node.node_id\n")
        await process.stdin.aclose()
        text = await out.rest()
        assert await process.wait() == 0
    finally:
        process.kill()
    assert "Ctrl-D leaves.\n0\n1\n4.0\n'demo-gate'\n" in text

    result = await trio.run_process(client_command(repl_path) + ["help", "tree"], capture_stdout=True,
                                    stdin=subprocess.DEVNULL)
    assert result.stdout.decode().startswith("tree\n  the supervision tree")
    result = await trio.run_process(client_command(tmp_path / "nobody.sock") + ["health"],
                                    capture_stderr=True, check=False)
    assert result.returncode == 1
    assert result.stderr.decode().startswith(f"palmnode repl: no REPL socket at {tmp_path / 'nobody.sock'}: ")


@pytest.mark.parametrize("stdin", ["/dev/null", "unreadable (nohup)", "q line"])
async def test_one_shot_follow_runs_until_asked_to_stop_whatever_its_stdin(node, repl_path, tmp_path, stdin):
    """`palmnode repl follow gate >> events.log &` (stdin /dev/null) stopped at once, "interrupted",
    showing nothing; under nohup (stdin an unreadable file) it was a traceback. The end of a
    one-shot's stdin asks nothing: it follows until Ctrl-C (SIGINT) or a ``q`` line."""
    if stdin == "q line":
        given = subprocess.PIPE
    else:
        given = os.open(os.devnull, os.O_RDONLY if stdin == "/dev/null" else os.O_WRONLY)
    process = await trio.lowlevel.open_process(client_command(repl_path) + ["follow", "decision"], stdin=given,
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if stdin != "q line":
        os.close(given)
    out = Output(process.stdout)
    try:
        await out.wait_for("following Decision")
        await trio.sleep(0.3)  # the client has met its stdin's end by now (it stopped here)
        node.bus.publish(Decision("unknown", None, None, None, "no match", 88.0, "entry", 1.0))
        await out.wait_for("outcome=unknown")
        if stdin == "q line":
            await process.stdin.send_all(b"q\n")
        else:
            process.send_signal(signal.SIGINT)
        text = await out.rest()
        assert await process.wait() == 0, text
    finally:
        process.kill()
    assert text.splitlines()[-1] == "interrupted", text
    assert "Traceback" not in text


@contextlib.asynccontextmanager
async def open_terminal(repl_path, tmp_path):
    """``palmnode repl`` on a pseudo-terminal of its own (HOME in tmp_path for its history):
    yields (process, terminal, its output); killed and closed on leaving."""
    master, slave = os.openpty()
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "dumb"}
    process = await trio.lowlevel.open_process(client_command(repl_path), stdin=slave, stdout=slave,
                                               stderr=slave, env=env, start_new_session=True,
                                               preexec_fn=_controlling_terminal)
    os.close(slave)
    terminal = trio.lowlevel.FdStream(master)
    try:
        yield process, terminal, Output(terminal)
    finally:
        process.kill()
        await terminal.aclose()


async def exits_cleanly(process) -> None:
    with trio.fail_after(10):
        assert await process.wait() == 0


async def test_terminal_session_with_completion_history_and_follow(node, repl_path, tmp_path):
    await wait_for(lambda: node.health is not None and node.health.gate is GateState.READY, timeout=5)
    async with open_terminal(repl_path, tmp_path) as (process, terminal, out):
        await out.prompt("demo-gate> ", 1)
        assert f"palmnode REPL on node demo-gate (palmnode {palmnode.__version__}, palmnode-repl/1)" in out.text
        await terminal.send_all(b"hea\t")
        await out.wait_for("health ")  # Tab completed the command name
        await terminal.send_all(b"\r")
        await out.wait_for("gate READY")
        await out.prompt("demo-gate> ", 2)
        await terminal.send_all(b"follow cards\r")
        await out.wait_for("following BadgeRead, CardNotRead, PaymentCardRead")
        node.bus.publish(BadgeRead(uid_hex="04A1B2C3"))
        await out.wait_for("uid_hex=04A1B2C3")
        await terminal.send_all(b"q")  # one key, no Enter
        await out.wait_for("interrupted")
        await out.prompt("demo-gate> ", 3)
        await terminal.send_all(b"follow devices\r")
        await out.wait_for("following BoardNotice")
        await terminal.send_all(b"\x03")  # Ctrl-C stops a follow too
        await out.prompt("demo-gate> ", 4)
        assert out.text.count("interrupted") == 2
        await terminal.send_all(b"light ir 2\r")
        await out.wait_for("error: level must be within 0..1, not 2")
        await out.prompt("demo-gate> ", 5)
        await terminal.send_all(b"delete phone +447700900123\r")   # answered, never kept in the history
        await out.prompt("demo-gate> ", 6)
        await terminal.send_all(b"enrol +447700900124 both\r")
        await out.prompt("demo-gate> ", 7)
        await terminal.send_all(b"\x04")  # Ctrl-D
        await exits_cleanly(process)
    history = [line.strip() for line in (tmp_path / ".palmnode_repl_history").read_text().splitlines()]
    assert history[-4:] == ["health", "follow cards", "follow devices", "light ir 2"]
    assert "+4477009001" not in (tmp_path / ".palmnode_repl_history").read_text()
    assert stat.S_IMODE(os.stat(tmp_path / ".palmnode_repl_history").st_mode) == 0o600


@pytest.mark.parametrize("target", ["a file", "nothing"])
async def test_history_replaces_a_link_at_its_name_and_never_writes_through_it(short_dir, tmp_path, target):
    """readline wrote the history through a symbolic link at its name (into the file it named, or
    creating it): run as root with another user's HOME (sudo keeping it), a link they planted had
    root overwrite any file. Its 0600 was a chmod after the write (GNU readline 8 creates the file
    0600 itself; a libedit build with the umask's mode). The history is now written into a new
    0600 file, renamed over the link; what the link named is untouched."""
    victim = tmp_path / "victim"
    if target == "a file":
        victim.write_text("precious\n")
        os.chmod(victim, 0o644)
    (tmp_path / ".palmnode_repl_history").symlink_to(victim)
    async with _bare_repl(short_dir) as path:
        async with open_terminal(path, tmp_path) as (process, terminal, out):
            await out.prompt("node> ", 1)
            await terminal.send_all(b"help light\r")
            await out.wait_for("Example: light ir 0.5")
            await out.prompt("node> ", 2)
            await terminal.send_all(b"\x04")  # Ctrl-D
            await exits_cleanly(process)
    if target == "a file":
        assert victim.read_text() == "precious\n" and stat.S_IMODE(os.stat(victim).st_mode) == 0o644
    else:
        assert not os.path.lexists(victim)
    history = tmp_path / ".palmnode_repl_history"
    assert not history.is_symlink() and stat.S_IMODE(os.stat(history).st_mode) == 0o600
    assert history.read_text().splitlines()[-1] == "help light"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


async def test_terminal_python_console(node, repl_path, tmp_path):
    async with open_terminal(repl_path, tmp_path) as (process, terminal, out):
        await out.prompt("demo-gate> ", 1)
        await terminal.send_all(b"py\r")
        await out.prompt(">>> ", 1)
        await terminal.send_all(b"x = 6\r")
        await out.prompt(">>> ", 2)
        await terminal.send_all(b"x * 7\r")
        await out.wait_for("42")
        await out.prompt(">>> ", 3)
        await terminal.send_all(b"for i in range(2):\r")
        await out.prompt("... ", 1)
        await terminal.send_all(b"\tprint('i', i)\r")  # Tab indents here
        await out.prompt("... ", 2)
        await terminal.send_all(b"\r")
        await out.wait_for("i 1")
        await out.prompt(">>> ", 4)
        await terminal.send_all(b"node.sleeping = True; await trio.sleep(1000)\r")
        await wait_for(lambda: getattr(node, "sleeping", False), timeout=5)  # the node runs it now
        await terminal.send_all(b"\x03")  # Ctrl-C cancels the statement in the node
        await out.prompt(">>> ", 5)
        assert "interrupted" in out.text
        await terminal.send_all(b"\x04")  # Ctrl-D leaves the console, not the REPL
        await out.prompt("demo-gate> ", 2)
        await terminal.send_all(b"\x04")
        await exits_cleanly(process)
    assert "i 0" in out.text



def _fresh_terminal_modes() -> list:
    """The modes a new pseudo-terminal starts with (echo, canonical lines: what the operator had)."""
    master, slave = os.openpty()
    try:
        return termios.tcgetattr(slave)
    finally:
        os.close(master)
        os.close(slave)


async def _rest_of(out: Output, timeout: float = 10.0) -> str:
    """What the client still writes until its side of the terminal closes."""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await out.stream.receive_some(65536)
            except trio.BrokenResourceError:  # EIO: the client has gone
                data = b""
            if not data:
                return out.text
            out.text += data.decode("utf-8", "replace")


@pytest.mark.parametrize(("where", "signum"), [("follow", signal.SIGTERM), ("follow", signal.SIGHUP),
                                               ("prompt", signal.SIGHUP)],
                         ids=["SIGTERM during follow", "SIGHUP during follow", "SIGHUP at the prompt"])
async def test_a_stop_signal_restores_the_terminal_and_keeps_the_history(node, repl_path, tmp_path, where, signum):
    """`follow` on a terminal puts it in cbreak mode (one key, no echo), readline at the prompt in
    its own: a SIGTERM (`kill`, a logout's) or SIGHUP killed the client there and left the
    operator's terminal without echo or line editing (typing seemed dead until `stty sane`), and
    the session's history unsaved. Now the client ends as on Ctrl-D: the terminal's modes back,
    the history saved, one line naming the signal, exit status 128 + the signal (143, 129)."""
    async with open_terminal(repl_path, tmp_path) as (process, terminal, out):
        await out.prompt("demo-gate> ", 1)
        await terminal.send_all(b"health\r")
        await out.prompt("demo-gate> ", 2)
        if where == "follow":
            await terminal.send_all(b"follow cards\r")
            await out.wait_for("following BadgeRead, CardNotRead, PaymentCardRead")
        lflag = termios.tcgetattr(terminal.fileno())[3]
        assert not lflag & (termios.ECHO | termios.ICANON)  # cbreak (readline's own at the prompt) as the signal comes
        process.send_signal(signum)
        with trio.fail_after(10):
            status = await process.wait()
        text = await _rest_of(out)
        modes = termios.tcgetattr(terminal.fileno())
    assert status == 128 + signum, text
    name = signal.Signals(signum).name
    after = text[text.index("following") if where == "follow" else text.rindex("demo-gate> "):]
    assert after.splitlines()[1:] == [f"palmnode repl: stopped by {name}"], after
    assert modes[3] & termios.ECHO and modes[3] & termios.ICANON
    assert modes == _fresh_terminal_modes()
    history = (tmp_path / ".palmnode_repl_history").read_text().splitlines()
    assert history[-2:] == ["health", "follow cards"] if where == "follow" else history[-1:] == ["health"]


async def test_a_terminal_that_hangs_up_during_follow_ends_the_client_with_its_history(node, repl_path, tmp_path):
    """The operator's terminal closes (an ssh connection drops, the window is closed) during
    `follow`: the kernel sends SIGHUP, and the terminal can no longer be written or set. The
    client died by the signal, the session's history lost. Now it ends as on any SIGHUP, its
    history saved, status 129; restoring the modes of a terminal that is gone fails with EIO,
    which ends nothing. A real hang-up: the pseudo-terminal's other side closed."""
    async with open_terminal(repl_path, tmp_path) as (process, terminal, out):
        await out.prompt("demo-gate> ", 1)
        await terminal.send_all(b"follow cards\r")
        await out.wait_for("following BadgeRead, CardNotRead, PaymentCardRead")
        await terminal.aclose()
        with trio.fail_after(10):
            assert await process.wait() == 128 + signal.SIGHUP
    history = (tmp_path / ".palmnode_repl_history").read_text().splitlines()
    assert history[-1:] == ["follow cards"]


async def test_a_follow_under_nohup_outlives_a_hangup_and_a_sigterm_ends_it(node, repl_path, tmp_path):
    """`nohup palmnode repl follow gate >> gate-events.log &` outlives the terminal it was started
    from: the SIGHUP nohup ignores stays ignored (the client's own, which ends it on a terminal
    that closed, is not put in its place). A SIGTERM ends it: it died by the signal without a
    word; now one line, status 143. Real signals to the client under the real nohup."""
    process = await trio.lowlevel.open_process(["nohup", *client_command(repl_path), "follow", "decision"],
                                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, cwd=tmp_path)
    out = Output(process.stdout)
    try:
        await out.wait_for("following Decision")
        process.send_signal(signal.SIGHUP)
        node.bus.publish(Decision("unknown", None, None, None, "no match", 88.0, "entry", 1.0))
        await out.wait_for("outcome=unknown")  # it reads on: the hang-up was delivered and ignored
        process.send_signal(signal.SIGTERM)
        text = await out.rest()
        with trio.fail_after(10):
            assert await process.wait() == 128 + signal.SIGTERM, text
    finally:
        process.kill()
    assert text.splitlines()[-1] == "palmnode repl: stopped by SIGTERM", text
    assert "Traceback" not in text


def test_a_stop_signal_never_cuts_a_line_from_its_newline():
    """print() writes a line, then its newline: a SIGTERM between the two (a follow's event line as
    the client was stopped, 2 runs in 30 of the nohup test on a loaded machine) left the line open,
    and the client's 'stopped by SIGTERM' ran on after it. Each line is one write now; the signal,
    raised (as Stopped) right after the first write, finds the line whole."""
    class StoppedAfterOneWrite(io.StringIO):
        def write(self, text):
            super().write(text)
            raise Stopped(signal.SIGTERM)

    for say in (lambda r: r._stream({"text": "following Decision (Ctrl-C or q stops)"}),
                lambda r: r._final("health", (), {"ok": True, "text": "gate READY"}),
                lambda r: r._final("stats", (), {"ok": True, "result": {"decisions": 3}}),
                lambda r: r._final("health", (), {"ok": False, "error": "no such thing"})):
        out = StoppedAfterOneWrite()
        with pytest.raises(Stopped):
            say(Repl(None, out, interactive=False))
        assert out.getvalue().endswith("\n")


def _controlling_terminal():
    # in the child, after setsid(): the pty on stdin becomes its terminal, so Ctrl-C is SIGINT; and
    # SIGHUP as a login shell gives it, whatever this run inherited (under nohup, as CI may be, it
    # is ignored, and the client keeps an ignored SIGHUP ignored)
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_completion_words():
    completer = Completer({"commands": ["health", "help", "follow", "light"], "follow": ["decision"],
                           "lights": ["ir", "surface"]})
    assert completer.options("", "he") == ["health ", "help "]
    assert completer.options("follow ", "d") == ["decision ", "devices "]
    assert completer.options("light ", "") == ["ir ", "surface "]
    assert completer.options("light ir ", "o") == ["on ", "off "]
    assert completer.options("help ", "fo") == ["follow "]
    assert completer.options("health ", "") == []


def test_default_socket(tmp_path):
    assert default_socket({"PALMNODE_REPL_SOCKET": "/x/y.sock"}) == type(tmp_path)("/x/y.sock")
    assert str(default_socket({})) in DEFAULT_SOCKETS
    assert DEFAULT_SOCKETS[1].endswith("/run/repl.sock")


@pytest.fixture(autouse=True)
def _no_stray_history(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))


def test_a_socket_path_that_is_a_file_or_a_folder_is_named_as_such(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for path in (tmp_path / "notes.txt", tmp_path):
        with pytest.raises(ReplClientError, match="is not a socket: --socket"):
            Connection.open(path)


# -- a session the node closes

@pytest.fixture
def jump_clock():
    """Virtual time at real speed (a test's guards stay real seconds), jumped past the idle timeout."""
    return trio.testing.MockClock(rate=1.0)


@contextlib.asynccontextmanager
async def _bare_repl(short_dir, **options):
    path = os.path.join(short_dir, "idle.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_repl, BareTarget(), path, **options))
        yield path
        nursery.cancel_scope.cancel()


CLOSED = ("palmnode repl: no command for 15 min: the node closed this session ([repl] idle_timeout_s); "
          "connect again to go on")


async def test_terminal_left_at_the_prompt_is_told_why_and_exits_cleanly(short_dir, tmp_path, jump_clock):
    """The operator walked away from the prompt: the node closes the idle session, and the next
    line they enter gets why (the line is not sent) and the client exits with status 0."""
    async with _bare_repl(short_dir) as path:
        async with open_terminal(path, tmp_path) as (process, terminal, out):
            await out.prompt("node> ", 1)
            await terminal.send_all(b"help light\r")
            await out.wait_for("Example: light ir 0.5")
            await out.prompt("node> ", 2)                 # readline waits for a key
            await trio.testing.wait_all_tasks_blocked()  # the session waits for the next command
            jump_clock.jump(IDLE_TIMEOUT_S)
            await trio.testing.wait_all_tasks_blocked()  # the node has sent its closing line, and closed
            await terminal.send_all(b"health\r")
            text = await out.wait_for(CLOSED)
            await exits_cleanly(process)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text


async def test_piped_client_waiting_for_stdin_is_told_why_and_exits_cleanly(short_dir, jump_clock):
    async with _bare_repl(short_dir) as path:
        process = await trio.lowlevel.open_process(client_command(path), stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = Output(process.stdout), Output(process.stderr)
        try:
            await process.stdin.send_all(b"help light\n")
            await out.wait_for("Example: light ir 0.5")
            await trio.testing.wait_all_tasks_blocked()  # the session waits for the next command
            jump_clock.jump(IDLE_TIMEOUT_S)                # stdin stays open, silent
            assert (await err.rest()).strip() == CLOSED
            await exits_cleanly(process)
        finally:
            process.kill()
            await process.stdin.aclose()


async def test_a_command_sent_as_the_node_closes_the_session_gets_the_reason(short_dir, autojump_clock):
    """The request crosses the closing line: the reason, not a broken pipe traceback."""
    async with _bare_repl(short_dir, idle_timeout_s=60) as path:
        conn = await trio.to_thread.run_sync(Connection.open, Path(path))
        try:
            await trio.sleep(61)  # the node has sent its closing line and closed
            with pytest.raises(SessionClosed, match=r"^no command for 1 min: the node closed this session"):
                Repl(conn, io.StringIO(), interactive=False).run("help", ())
        finally:
            conn.close()


async def test_one_session_too_many_is_refused_in_one_line(short_dir, tmp_path):
    async with _bare_repl(short_dir, max_sessions=1) as path:
        first = await trio.to_thread.run_sync(Connection.open, Path(path))
        try:
            result = await trio.run_process(client_command(path) + ["help"], capture_stdout=True,
                                            capture_stderr=True, stdin=subprocess.DEVNULL, check=False)
        finally:
            first.close()
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode() == (f"palmnode repl: {path}: too many REPL sessions (1): close one and "
                                      "retry (an idle one is closed after 15 min)\n")


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o703])
async def test_client_refuses_a_socket_in_a_folder_others_may_write(short_dir, tmp_path, mode):
    """The client connected to whatever socket it was pointed at: in a folder others may write
    (the node refuses to serve in one; this one became so after it started) the socket may be
    another user's, there to read what the operator types. One line naming the folder, exit 1 as
    for the client's other errors, nothing sent; a link to the socket from a safe folder too."""
    async with _bare_repl(short_dir) as path:
        link = tmp_path / "gate.sock"
        link.symlink_to(path)
        os.chmod(short_dir, mode)
        try:
            for named in (path, link):
                result = await trio.run_process(client_command(named) + ["help"], capture_stdout=True,
                                                capture_stderr=True, stdin=subprocess.DEVNULL, check=False)
                assert result.returncode == 1 and result.stdout == b""
                assert result.stderr.decode() == (
                    f"palmnode repl: REPL socket folder {short_dir} is writable by others (mode {mode:04o}): the "
                    "socket there may be another user's (a node refuses such a folder); --socket (or "
                    "$PALMNODE_REPL_SOCKET) names the node's [repl] socket_path\n")
        finally:
            os.chmod(short_dir, 0o700)
        result = await trio.run_process(client_command(path) + ["help"], capture_stdout=True,
                                        stdin=subprocess.DEVNULL)
        assert b"help" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
async def test_client_refuses_a_socket_folder_another_user_owns_unless_root(short_dir):
    """Another user than the client's (nor root) owns the folder: refused, as the node would. Root's
    client attaches to the node's user's socket (`sudo palmnode repl` on /run/palmnode)."""
    async with _bare_repl(short_dir) as path:
        os.chmod(short_dir, 0o755)
        os.chown(short_dir, 65534, 65534)
        try:
            with pytest.raises(ReplClientError) as info:
                check_socket_folder(Path(path), uid=1000)
            assert str(info.value) == (
                f"REPL socket folder {short_dir} belongs to uid 65534, not to you (uid 1000) nor root: the socket "
                "there may be another user's (a node refuses such a folder); --socket (or $PALMNODE_REPL_SOCKET) "
                "names the node's [repl] socket_path")
            check_socket_folder(Path(path), uid=65534)
            result = await trio.run_process(client_command(path) + ["help"], capture_stdout=True,
                                            stdin=subprocess.DEVNULL)  # as root
            assert b"help" in result.stdout
        finally:
            os.chown(short_dir, 0, 0)


def test_a_node_that_hangs_up_with_a_request_unread_is_a_one_line_error():
    """The kernel answers a unix socket closed with data unread with ECONNRESET (after what the node
    sent): that is the node hanging up, not a ConnectionResetError traceback."""
    import socket

    node, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = Connection(client)
    try:
        node.sendall(b'{"closing": "idle", "text": "no command for 15 min"}\n')
        conn.send("health")  # never read by the node
        node.close()
        with pytest.raises(SessionClosed, match="^no command for 15 min$"):
            conn.check_unasked()
        with pytest.raises(ReplClientError, match="^the node closed the connection$"):
            conn.read()
    finally:
        conn.close()


async def test_a_capture_the_disk_cannot_hold_is_one_line_and_leaves_no_cut_off_png(node, gate, repl_path, tmp_path):
    """A full disk in the middle of writing a capture's PNG raised out of the client (a traceback,
    the session gone) and left the PNG cut off under its name. Now it is one error line, nothing is
    left under the name, and the session goes on. The kernel's own refusal: the client runs with
    RLIMIT_FSIZE below the PNG's size, as a disk that fills up mid-file."""
    import resource
    import signal

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    async with piped_client_with_a_hand(node, gate, repl_path, tmp_path, preexec_fn=small_files) as (process, out):
        await process.stdin.send_all(b"capture roi.png\nhealth\n")
        text, status = await end_of_input(process, out)
    assert status == 1, text  # one command failed
    lines = text.splitlines()
    assert "error: cannot write roi.png: File too large (the image was not kept)" in lines, text
    assert "Traceback" not in text and "gate READY" in lines  # the session went on
    assert not (tmp_path / "roi.png").exists()
