"""A stop asked while ``palmnode run`` starts, before the node watches its signals.

The node watches Ctrl-C and SIGTERM from trio (commands._serve_node), which starts only after the
imports (numpy, OpenCV, the engine: ~1 s on a shared machine, more on a gate's CPU). Before that,
a SIGTERM (systemd's stop) killed the process by the signal, and a Ctrl-C was a KeyboardInterrupt
(exit 130): without the node's stop, its "node stopping" and "node stopped" lines and its exit 0.

``hold()``, the first thing ``palmnode run`` does, takes both signals with a handler that only
notes them (nothing is interrupted half-way); ``release()``, called once the node's own receiver
is in place, raises the noted ones again, in order, for it: the node then stops exactly as on a
signal that comes later. The handler stays for the rest of the process, so one arriving after the
node's receiver has closed (the stop done, the exit under way) is noted and changes nothing.
What is left uncovered is the interpreter's own start, before any palmnode code runs (~30 ms).
"""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_noted: list[int] = []


def _note(signum: int, frame: object) -> None:
    _noted.append(signum)


def hold() -> None:
    """Note Ctrl-C and SIGTERM from now on, for ``release()``."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _note)


def release() -> None:
    """Raise again each signal noted since ``hold()`` (call it with the node's receiver in place)."""
    while _noted:
        signal.raise_signal(_noted.pop(0))
