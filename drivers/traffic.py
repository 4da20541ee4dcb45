"""A bounded ring of recent port traffic, dumped when a device fails (as Klipper's serialhdl does)."""
from __future__ import annotations

import collections
import time


class TrafficLog:
    """The last ``capacity`` bytes that crossed a port, in both directions, with timestamps."""

    def __init__(self, capacity: int = 2048) -> None:
        self.capacity = capacity
        self._chunks: collections.deque[tuple[float, str, bytes]] = collections.deque()
        self._size = 0

    def record(self, direction: str, data: bytes) -> None:
        if not data:
            return
        data = bytes(data[-self.capacity:])
        self._chunks.append((time.monotonic(), direction, data))
        self._size += len(data)
        while self._size > self.capacity:
            _, _, old = self._chunks.popleft()
            self._size -= len(old)

    def dump(self, limit: int = 16) -> list[str]:
        """The newest ``limit`` chunks as ``"+0.012s rx 59 59 ..."`` lines, oldest first."""
        chunks = list(self._chunks)[-limit:]
        if not chunks:
            return []
        t_end = chunks[-1][0]
        return [f"{t - t_end:+.3f}s {d} {data.hex(' ')}" for t, d, data in chunks]

    def __len__(self) -> int:
        return self._size
