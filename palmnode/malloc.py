"""glibc's allocator, set up for a process that runs for months (``palmnode run``, ``sim``, ``demo``).

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at start) with a
mapping of its own, returned to the system when it is freed; smaller ones come from its heaps
(arenas), whose free space it mostly keeps. The threshold is *dynamic*: each free of a mapped
block raises it to that block's size (up to 32 MiB on 64-bit; mallopt(3)). After the first large
array is freed, every array up to that size — gallery segments while they grow, a search's
score arrays, camera frames, the renderer's canvases — is carved from a heap instead, and the
holes those leave between longer-lived objects stay resident: the process grows while what it
holds does not (glibc's ``mallinfo2`` "free" grows, "used" stays flat).

Measured (docs/architecture.md, "Memory"): a node that loaded 100k people from its vault held
270 MiB, 62 MiB of it free heap space; 218 MiB (9 MiB free) with the threshold fixed at 4 MiB
(:data:`NODE_THRESHOLD`). At 128 KiB it held 210 MiB, but each stranger's search at 100k then paid
~2 ms (30%) for mapping fresh pages for its score arrays; at 4 MiB it pays nothing measurable. The
virtual gate's renderer grew by ~100 MiB in five minutes of arrivals and enrolments, and stays
flat with the threshold fixed at 128 KiB (:data:`RENDERER_THRESHOLD`: its frames are 1-2 MB).
Setting the threshold explicitly also turns its adjustment off (mallopt(3)).

A no-op off glibc (musl, macOS) and when the operator set glibc's own knob
(``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``): theirs wins.
"""
from __future__ import annotations

import ctypes
import os

#: `palmnode run`: the gallery's growing segments and a load's batches mapped; a search's arrays not
NODE_THRESHOLD = 4 << 20
#: `palmnode sim` and `demo`: the renderer's frame-sized arrays mapped too
RENDERER_THRESHOLD = 128 << 10
_M_MMAP_THRESHOLD = -3  # malloc.h


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def configure(threshold: int, environ: os._Environ | dict = os.environ) -> int | None:
    """Fix glibc's mmap threshold at ``threshold`` bytes. Returns the threshold set, or None when
    nothing was set (not glibc, or the environment already sets glibc's malloc knobs)."""
    if "MALLOC_MMAP_THRESHOLD_" in environ or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return None
    libc = _glibc()
    if libc is None:
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return threshold if libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1 else None
