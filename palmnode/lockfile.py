"""An exclusive advisory lock on ``<path>.lock`` (mode 0600, empty), held while its descriptor is
open: one node per vault, one node per REPL socket. The kernel drops it when the process dies."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def hold(path: Path) -> int | None:
    """The open, locked ``<path>.lock`` (close it to release), or None when another process holds
    it; OSError when it cannot be created or locked."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd
