"""Refusals in the log without a flood: each one's own line while they are few, then a summary.

A misbehaving peer can make an end refuse thousands of requests a second (the node: the
controller's requests it refuses; the controller: the events it rejects and the pushes a gate
refuses). One line each would fill the disk and bury everything else, so :class:`RefusalLog`
lets the first ``burst`` refusals of an ``interval_s`` log their own line, holds back the rest,
and logs one summary line when the interval ends: how many were held back, per reason (at most
``max_reasons`` reasons, the rest as ``(other reasons)``). While the flood goes on, each further
interval is one summary line; after an interval without refusals, lines come one by one again.
The caller's counters are never limited: they count every refusal.

    refusals = RefusalLog(log, "link requests refused")
    nursery.start_soon(refusals.run)           # logs the summaries
    if refusals.note(reason):                  # count it; True: log its own line now
        log.info("link request refused: %s", reason)
"""
from __future__ import annotations

import logging
import math

import trio

from palmnode.link.messages import one_line

BURST = 5  # refusals logged one by one in an interval before they are held back
INTERVAL_S = 60.0  # a summary line at most this often while refusals are held back
MAX_REASONS = 16  # reasons named in a summary; the rest are counted as OTHER
REASON_CHARS = 120  # a reason as a summary names it (a peer's text may be long)
OTHER = "(other reasons)"


class RefusalLog:
    """Decides which refusals get their own log line and logs the summaries of the others."""

    def __init__(self, logger: logging.Logger, summary: str, *, level: int = logging.INFO, burst: int = BURST,
                 interval_s: float = INTERVAL_S, max_reasons: int = MAX_REASONS) -> None:
        self.logger = logger
        self.summary = summary  # the summary line's message
        self.level = level
        self.burst = burst
        self.interval_s = interval_s
        self.max_reasons = max_reasons
        self._interval_end = -math.inf
        self._lines = 0  # own lines logged in the interval ending at _interval_end
        self._held: dict[str, int] = {}  # refusals held back in this interval, by reason
        self._wake = trio.Event()

    @property
    def held(self) -> int:
        """Refusals held back now, for the next summary."""
        return sum(self._held.values())

    def note(self, reason: str) -> bool:
        """Count one refusal (call in the trio thread); True when it should log its own line now."""
        now = trio.current_time()
        if now >= self._interval_end and not self._held:  # quiet for an interval: lines again
            self._interval_end = now + self.interval_s
            self._lines = 0
        if self._lines < self.burst:
            self._lines += 1
            return True
        key = one_line(reason, REASON_CHARS)
        if key not in self._held and len(self._held) >= self.max_reasons:
            key = OTHER
        self._held[key] = self._held.get(key, 0) + 1
        self._wake.set()
        return False

    def flush(self) -> None:
        """Log the summary of what is held back now, if anything. While a flood goes on the next
        interval starts at once, still held back (one summary an interval, no lines)."""
        if not self._held:
            return
        held, self._held = self._held, {}
        self.logger.log(self.level, self.summary, extra={"fields": {
            "count": sum(held.values()), "reasons": held, "interval_s": self.interval_s}})
        self._interval_end = trio.current_time() + self.interval_s
        self._lines = self.burst

    async def run(self) -> None:
        """Log each interval's summary when it ends; on cancellation, what is held back then."""
        try:
            while True:
                await self._wake.wait()
                await trio.sleep_until(self._interval_end)
                self.flush()
                self._wake = trio.Event()
        finally:
            self.flush()
