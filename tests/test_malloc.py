"""palmnode.malloc: glibc's mmap threshold fixed, so an array freed goes back to the system and the
next one of its size gets its own mapping again, instead of a heap hole that stays resident."""
import json
import os
import platform
import subprocess
import sys

import pytest

from palmnode import malloc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

# In a fresh interpreter: free a mapped 8 MiB array (glibc's dynamic threshold would rise past
# 8 MiB), then allocate another: how much of it is in mappings of its own (mallinfo2's hblkhd).
CODE = """
import ctypes, json, sys
import numpy as np
from palmnode import malloc

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
threshold = malloc.configure(malloc.NODE_THRESHOLD) if sys.argv[1] == "configure" else None
first = np.ones(8 << 20, np.uint8)
del first
before = libc.mallinfo2().hblkhd
second = np.ones(8 << 20, np.uint8)
print(json.dumps({"threshold": threshold, "mapped": libc.mallinfo2().hblkhd - before}))
"""


def _run(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    proc = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_large_array_after_one_freed_gets_its_own_mapping_again():
    got = _run("configure")
    assert got["threshold"] == malloc.NODE_THRESHOLD and got["mapped"] >= 8 << 20, got  # (+ a page of header)


def test_without_it_glibc_puts_the_second_array_on_the_heap():
    """What the setting is for (glibc's dynamic threshold, mallopt(3)): were this ever false, the
    setting would be moot, not wrong."""
    assert _run("leave") == {"threshold": None, "mapped": 0}


def test_the_operators_own_glibc_setting_wins():
    assert malloc.configure(malloc.NODE_THRESHOLD, {"MALLOC_MMAP_THRESHOLD_": "65536"}) is None
    assert malloc.configure(malloc.RENDERER_THRESHOLD, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}) is None
