"""The gallery's table of person ids: id ↔ int key, ~60 B a person.

A dict of id strings to int keys and a list back cost ~170 B a person in Python objects (the
string, the dict entry, the int, the list slot): at a million people that alone put the node over
its memory budget (docs/architecture.md, "Memory"). Here the ids are UTF-8 in one arena, and an
open-addressing index (linear probing, a NumPy array of key + 1; 0 empty, -1 a removed one) finds
them by Python's hash of the id, kept per key to skip most byte comparisons.

A removed id's bytes are zeroed at once (nothing of a deleted person stays in memory); the arena
is rewritten without the holes when they are more than half of it (so it is at most twice
the ids held). Not thread-safe: the gallery
calls it under its writers' lock.
"""
from __future__ import annotations

import numpy as np

EMPTY, REMOVED = 0, -1


class PersonTable:
    def __init__(self) -> None:
        self._arena = bytearray()
        self._off = np.zeros(16, np.int64)     # key -> where its id starts in the arena
        self._len = np.zeros(16, np.int32)     # key -> its id's bytes; 0: a free key
        self._hash = np.zeros(16, np.int64)    # key -> hash(id)
        self._slots = np.zeros(16, np.int32)   # the index: key + 1, EMPTY or REMOVED
        self._filled = 0                       # slots not EMPTY (REMOVED ones too)
        self._garbage = 0                      # arena bytes of removed ids
        self.keys = 0                          # key slots ever used: the largest key + 1
        self.live = 0                          # ids held

    def __contains__(self, person_id: object) -> bool:
        return isinstance(person_id, str) and self.key_of(person_id) is not None

    def key_of(self, person_id: str) -> int | None:
        return self._find(person_id.encode(), hash(person_id))[1]

    def id_of(self, key: int) -> str:
        """The id of ``key``; "" for a free key (its person removed)."""
        if key >= self.keys or not self._len[key]:
            return ""
        start = int(self._off[key])
        return self._arena[start:start + int(self._len[key])].decode()

    def ids(self) -> dict[str, int]:
        """Every id held and its key (for checks: a Python object per person)."""
        return {self.id_of(k): k for k in range(self.keys) if self._len[k]}

    def set(self, key: int, person_id: str) -> None:
        """Hold ``person_id`` (not held now) under ``key`` (a new key, or a free one)."""
        raw, h = person_id.encode(), hash(person_id)
        if key >= self._len.size:
            size = max(2 * self._len.size, key + 1)
            self._off, self._len, self._hash = (np.concatenate([a, np.zeros(size - a.size, a.dtype)])
                                                for a in (self._off, self._len, self._hash))
        self._off[key], self._len[key], self._hash[key] = len(self._arena), len(raw), h
        self._arena += raw
        self.keys = max(self.keys, key + 1)
        self.live += 1
        slot, _ = self._find(raw, h)
        if self._slots[slot] == EMPTY:
            self._filled += 1
        self._slots[slot] = key + 1
        if 2 * self._filled > self._slots.size:
            self._reindex(2 * self._slots.size if 4 * self.live > self._slots.size else self._slots.size)

    def drop(self, person_id: str) -> int | None:
        """Forget ``person_id``: its bytes zeroed, its key free; the key (None: not held)."""
        slot, key = self._find(person_id.encode(), hash(person_id))
        if key is None:
            return None
        start, size = int(self._off[key]), int(self._len[key])
        self._arena[start:start + size] = bytes(size)
        self._len[key] = 0
        self._slots[slot] = REMOVED
        self._garbage += size
        self.live -= 1
        if 2 * self._garbage > len(self._arena):     # each rewrite halves it at least: amortised
            self._compact()
        return key

    def nbytes(self) -> int:
        return len(self._arena) + sum(a.nbytes for a in (self._off, self._len, self._hash, self._slots))

    def _find(self, raw: bytes, h: int) -> tuple[int, int | None]:
        """(the slot holding ``raw``, its key), or (the slot it would take, None)."""
        mask = self._slots.size - 1
        i, free = h & mask, -1
        while True:
            s = int(self._slots[i])
            if s == EMPTY:
                return (i if free < 0 else free), None
            if s == REMOVED:
                free = i if free < 0 else free
            else:
                k = s - 1
                start = int(self._off[k])
                if int(self._hash[k]) == h and self._arena[start:start + int(self._len[k])] == raw:
                    return i, k
            i = (i + 1) & mask

    def _reindex(self, size: int) -> None:
        """A fresh index of ``size`` slots (a power of 2) over the ids held: no REMOVED slots."""
        self._slots = np.zeros(size, np.int32)
        mask = size - 1
        for k in np.flatnonzero(self._len[:self.keys]).tolist():
            i = int(self._hash[k]) & mask
            while self._slots[i] != EMPTY:
                i = (i + 1) & mask
            self._slots[i] = k + 1
        self._filled = self.live

    def _compact(self) -> None:
        """The arena without the removed ids' (zeroed) bytes."""
        held = np.flatnonzero(self._len[:self.keys])
        arena = bytearray()
        for k in held.tolist():
            start = int(self._off[k])
            self._off[k] = len(arena)
            arena += self._arena[start:start + int(self._len[k])]
        self._arena[:] = bytes(len(self._arena))
        self._arena, self._garbage = arena, 0
