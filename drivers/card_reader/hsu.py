"""The PN532's High Speed UART as a line: sleep and wake-up, oscillator start, baud rate agreement.

UM0701 §6.2.2 / §7.2.11 (HSU wake up condition): a sleeping PN532 wakes on the 5th rising edge on
its RX line, then needs T_osc_start before it understands bytes; a host therefore sends 0x55
(five rising edges in one byte) and a run of 0x00 before its first frame. Bytes sent at a baud
rate the chip does not use arrive as garbage, on both sides.
"""
from __future__ import annotations

import math
import random

WAKE_EDGES = 5  # UM0701 §7.2.11: the real wake-up condition is the 5th rising edge
T_OSC_START_S = 0.0003  # UM0701 §6.2.2: oscillator start-up, "typically a few 100 µs"
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
WAKE_UP_PREAMBLE = b"\x55\x55" + bytes(14)  # what hosts send (libnfc, Adafruit): wake, then idle zeros


def rising_edges(byte: int) -> int:
    """Rising edges on an 8N1 line while ``byte`` is sent (start bit low, LSB first, stop bit high)."""
    levels = [0] + [(byte >> i) & 1 for i in range(8)] + [1]
    return sum(1 for a, b in zip(levels, levels[1:]) if a == 0 and b == 1)


def garbled(data: bytes, sent_at: int, read_at: int, rng: random.Random) -> bytes:
    """What a UART at ``read_at`` baud makes of ``data`` sent at ``sent_at`` baud: framing noise."""
    count = max(1, math.ceil(len(data) * read_at / sent_at))
    return bytes(rng.getrandbits(8) for _ in range(count))


class HsuReceiver:
    """The chip's receive side: drops bytes while asleep or starting, garbles them at a wrong baud."""

    def __init__(self, rng: random.Random, baudrate: int = 115200) -> None:
        self.rng = rng
        self.baudrate = baudrate
        self.asleep = True
        self._edges = 0
        self._ready_at = 0.0
        self._line_free_at = 0.0
        self.bytes_lost = 0

    def sleep(self) -> None:
        self.asleep = True
        self._edges = 0

    def receive(self, data: bytes, now: float, host_baudrate: int | None) -> bytes:
        """The bytes the chip's UART delivers, given ``data`` arrived at ``now`` (seconds)."""
        if host_baudrate is not None and host_baudrate != self.baudrate:
            data = garbled(data, host_baudrate, self.baudrate, self.rng)
        byte_time = BITS_PER_BYTE / self.baudrate
        start = max(now - len(data) * byte_time, self._line_free_at)
        self._line_free_at = start + len(data) * byte_time
        out = bytearray()
        for i, byte in enumerate(data):
            t = start + i * byte_time
            if self.asleep:
                self._edges += rising_edges(byte)
                if self._edges >= WAKE_EDGES:
                    self.asleep = False
                    self._edges = 0
                    self._ready_at = t + byte_time + T_OSC_START_S
                self.bytes_lost += 1
            elif t < self._ready_at:
                self.bytes_lost += 1
            else:
                out.append(byte)
        return bytes(out)
