"""A stop asked while a long-running ``palmnode`` command starts, before it watches its signals.

``palmnode run``, ``sim`` and ``demo`` watch Ctrl-C and SIGTERM from trio (commands._serve_node,
commands._run_stoppable), which starts only after the imports (numpy, OpenCV, the engine: ~1 s on
a shared machine, more on a gate's CPU). Before that, a SIGTERM (systemd's stop) killed the
process by the signal, and a Ctrl-C was a KeyboardInterrupt traceback: without the command's own
stop (the node's "node stopping" and "node stopped" lines and its exit 0; a sim's links and a
demo's temporary folder removed).

``hold()``, the first thing those commands do, takes both signals with a handler that only notes
them (nothing is interrupted half-way); ``release()``, called once the command's own receiver is
in place, raises the noted ones again, in order, for it: the command then stops exactly as on a
signal that comes later. The handler stays for the rest of the process, so one arriving after the
receiver has closed (the stop or the run done, the exit under way) is noted and changes nothing
(``noted()`` tells a command that has finished its work that one came meanwhile). What is left
uncovered is the interpreter's own start, before any palmnode code runs (~30 ms).

``stopped()`` is the one line every command says when a stop ended it before its work was done.

``palmnode eval`` and ``bench`` do not serve their signals from trio: ``interrupt()`` takes Ctrl-C
and SIGTERM alike as a KeyboardInterrupt, so a SIGTERM unwinds them as a Ctrl-C does (their
finally blocks stop the bench's virtual gate and node and remove its temporary folder; no output
file is left half-written), and ``interrupted()`` says which one stopped them: exit 130
or 143.
"""
from __future__ import annotations

import contextlib
import signal
import sys
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_noted: list[int] = []
_deferring = 0


def _note(signum: int, frame: object) -> None:
    _noted.append(signum)


def interrupt(signum: int, frame: object) -> None:
    """Ctrl-C as Python's own handler does it (a KeyboardInterrupt), noted as well: one that C code
    swallows (CPython clears an exception raised while a C-level attribute or dict lookup runs
    Python code) still stops the command, which asks ``noted()`` before it writes its result
    (``palmnode eval`` and ``bench`` printed their report and exited 0 after one in ~1 of 15 runs
    given a Ctrl-C just after they started). A SIGTERM given this handler is taken the same way:
    without it, it killed ``eval`` and ``bench`` silently (exit -15), the bench's virtual gate and
    node left running and its temporary folder left behind."""
    _noted.append(signum)
    if not _deferring:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold :func:`interrupt`'s KeyboardInterrupt while the block runs; raise it at the block's end
    if a signal came meanwhile. For a step that must not be cut in two: starting a child process
    and keeping its handle (one raised after the fork, before ``Popen`` returned, lost the child,
    which then ran on after the command)."""
    global _deferring
    before = len(_noted)
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and len(_noted) > before:
        raise KeyboardInterrupt


def run_trio(fn, *args):
    """``trio.run(fn, *args)`` in a command whose stop is :func:`interrupt` (the bench's suites that
    run in trio): a Ctrl-C or SIGTERM cancels ``fn``, which unwinds as trio cancels it (its child
    processes stopped, its folders removed), and is raised as KeyboardInterrupt once trio has
    returned; one that comes before trio watches them, or after ``fn`` returned, is held until
    then (:func:`deferred`). Raised by :func:`interrupt` wherever the main thread was, in trio's
    own loop most of the time, the KeyboardInterrupt abandoned the run: no ``finally`` of ``fn``
    ran (the memory bench's node was left running) and trio warned "Trio guest run got abandoned".
    Returns what ``fn`` returned; an error of ``fn`` comes out as itself."""
    import trio

    done: list = []
    before = len(_noted)

    async def main() -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    _noted.append(await cancel_on_signal(signals, nursery.cancel_scope))

                nursery.start_soon(watch)
                if len(_noted) > before:  # came while trio started
                    nursery.cancel_scope.cancel()
                done.append(await fn(*args))
                nursery.cancel_scope.cancel()

    with deferred():
        try:
            trio.run(main)
        except BaseExceptionGroup as group:  # fn's error, out of the nursery that watched the signals
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    if not done:  # cancelled by a signal: deferred() raised it as it left
        raise KeyboardInterrupt
    return done[0]


async def cancel_on_signal(signals, scope) -> int:
    """Wait for the first of ``signals`` (a trio signal receiver: Ctrl-C, SIGTERM), cancel
    ``scope`` (a trio cancel scope), return the signal."""
    async for signum in signals:
        scope.cancel()
        return signum


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C or SIGTERM was noted (by :func:`interrupt`): a long
    command calls it between its stages, before it writes its results and at every step of a
    progress bar (``Progress.update``), so one that C code swallowed stops it there instead of
    after a whole stage or run (``palmnode eval`` wrote its plots once in CI)."""
    if any(signum in _noted for signum in STOP_SIGNALS):
        raise KeyboardInterrupt


def hold() -> None:
    """Note Ctrl-C and SIGTERM from now on, for ``release()``."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _note)


def release() -> None:
    """Raise again each signal noted since ``hold()`` (call it with the command's receiver in place)."""
    while _noted:
        signal.raise_signal(_noted.pop(0))


def noted() -> int | None:
    """The first signal noted and not released (one that came after the command's receiver closed)."""
    return _noted[0] if _noted else None


def stopped_line(command: str, signum: int) -> str:
    """``palmnode command: stopped by Ctrl-C`` (``... stopped by SIGTERM``, ``SIGHUP``)."""
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    return f"{f'palmnode {command}'.rstrip()}: stopped by {name}"


def stopped(command: str, signum: int = signal.SIGINT) -> int:
    """Say on stderr, in one line, that ``palmnode command`` was stopped by ``signum`` before its
    work was done (:func:`stopped_line`); return the exit status of a command that serves its
    stop: 130 for Ctrl-C (the shell's 128 + SIGINT), 0 for SIGTERM (a stop asked, as ``palmnode
    run`` and the controller answer systemd's)."""
    print(stopped_line(command, signum), file=sys.stderr, flush=True)
    return 130 if signum == signal.SIGINT else 0


def interrupted(command: str) -> int:
    """For a KeyboardInterrupt that ended ``palmnode command`` (eval, bench: :func:`interrupt`):
    its one line for the signal noted first (Ctrl-C when none was: Python's own handler); return
    128 + that signal, the shell's status for a run a signal cut short: 130 for Ctrl-C, 143 for
    SIGTERM (the work was not done, so not 0 as for a command whose stop is its end)."""
    signum = noted() or signal.SIGINT
    print(stopped_line(command, signum), file=sys.stderr, flush=True)
    return 128 + signum
