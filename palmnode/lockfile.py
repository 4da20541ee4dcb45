"""An exclusive advisory lock on ``<path>.lock`` (mode 0600, empty), held while its descriptor is
open: one node per vault, one node per REPL socket, one controller per database. The kernel drops
it when the process dies."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def hold(path: Path, error: type[Exception], in_use: str) -> int:
    """The open, locked ``<path>.lock`` (close it to release). ``error(in_use)`` when another
    process holds it, ``error("cannot lock …: reason")`` when it cannot be created or locked."""
    lock = lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise error(f"cannot lock {lock}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise error(in_use) from None
        raise error(f"cannot lock {lock}: {exc.strerror}") from None
    return fd
