"""An exclusive advisory lock on ``<path>.lock`` (mode 0600, empty), held while its descriptor is
open: one node per vault, one node per REPL socket, one controller per database. The kernel drops
it when the process dies."""
from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def hold(path: Path, error: type[Exception], in_use: str, *,
         cannot_lock: Callable[[str, OSError], Exception] | None = None) -> int:
    """The open, locked ``<path>.lock`` (close it to release). ``error(in_use)`` when another
    process holds it, ``error("cannot lock …: reason")`` when it cannot be created or locked (or
    ``cannot_lock(that message, the OSError)``: a caller telling a read-only folder from a passing
    failure)."""
    lock = lock_path(path)

    def failed(exc: OSError) -> Exception:
        message = f"cannot lock {lock}: {exc.strerror}"
        return error(message) if cannot_lock is None else cannot_lock(message, exc)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise failed(exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise error(in_use) from None
        raise failed(exc) from None
    return fd
