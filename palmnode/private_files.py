"""Files and folders other users must not change: whether a folder is one only its user can
change (the REPL socket's, on both ends, and ``palmnode certs --out``), and writing a file that is
private from its first byte without following a symbolic link planted at its name."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def others_may_change(st: os.stat_result, uid: int | None, user: str = "this user") -> str | None:
    """Why a folder (``st``, its ``os.stat``) is one another user may change, or None.

    Writable by others (world-writable, ``/tmp``'s sticky bit or not): they may plant a file or a
    link of their own at a name before we make it, or (without the sticky bit) rename ours away.
    Owned by another user than ``uid`` (``user``, e.g. "the node's user") or root: its owner may
    do all that. ``uid`` None accepts any owner. A group-writable folder is accepted (a user's
    private group, umask 002)."""
    if st.st_mode & stat.S_IWOTH:
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if uid is not None and st.st_uid not in (uid, 0):
        return f"belongs to uid {st.st_uid}, not to {user} (uid {uid}) nor root"
    return None


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode``: into a new file beside it (``O_EXCL|O_NOFOLLOW``,
    0600 from the start, then exactly ``mode``), synced, then renamed over ``path``. A symbolic
    (or hard) link at ``path`` is replaced, never written through; a reader sees the old file or
    the whole new one. OSError as the system gave it (the new file removed)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp's 0600, less what the umask took
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = ["others_may_change", "replace_file"]
