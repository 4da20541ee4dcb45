"""A progress bar on stderr for anything that takes more than a few seconds."""
from __future__ import annotations

import math
import sys
import time
from typing import Callable

from palmnode import stopsignals


class Progress:
    """A progress bar on stderr for work that takes more than ``delay`` seconds.

    On a terminal it redraws one line (at most 5 times a second); otherwise (a log file) it prints
    a line every 10%. Nothing is printed for work that ends before ``delay``.
    """

    def __init__(self, label: str, total: int, *, stream=None, delay: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total = label, max(1, total)
        self.stream = sys.stderr if stream is None else stream
        self.delay, self.clock = delay, clock
        self.start = clock()
        self.done = 0
        self.shown = False
        self._last_draw = -math.inf
        self._last_decile = -1
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int = 1) -> None:
        """``n`` more done. A Ctrl-C or SIGTERM that C code swallowed on its way (noted by
        ``stopsignals.interrupt``, the handler of ``eval`` and ``bench``, the commands with progress
        bars) stops the work here, at its next step, not at the end of the stage."""
        stopsignals.check()
        self.done += n
        now = self.clock()
        if now - self.start < self.delay:
            return
        if self.tty:
            if now - self._last_draw >= 0.2 or self.done >= self.total:
                self._draw(now, end="\r")
        else:
            decile = int(10 * self.done / self.total)
            if decile != self._last_decile:
                self._last_decile = decile
                self._draw(now, end="\n")

    def _draw(self, now: float, end: str) -> None:
        self._last_draw = now
        self.shown = True
        frac = min(1.0, self.done / self.total)
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        self.stream.write(f"{self.label} [{bar}] {100 * frac:5.1f}% {self.done}/{self.total} "
                          f"{elapsed:.0f}s, ~{eta:.0f}s left{end}")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            if self.tty:
                self._draw(self.clock(), end="\n")
            elif self._last_decile < 10:
                self._draw(self.clock(), end="\n")


# ------------------------------------------------------------------------------------ pipeline
