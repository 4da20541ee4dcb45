"""Which file-system errors a restart cannot cure (``palmnode run`` exits 78 on them, docs/repl.md)."""
from __future__ import annotations

import errno

#: what creating or writing a path meets until its folder, its mode or the config changes (not a
#: full disk, too many open files or an I/O error, which may pass)
LASTING_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR,
                            errno.ELOOP, errno.ENAMETOOLONG})


def folder_error(exc: OSError) -> str:
    """Why a folder could not be made, in a few words: a file where the folder (or one above it)
    should be, or the system's words."""
    return "a file is in the way" if exc.errno in (errno.EEXIST, errno.ENOTDIR) else (exc.strerror or str(exc))


def lasting(exc: OSError) -> bool:
    """Whether ``exc`` (creating or writing a path the config names) will meet a restart unchanged."""
    return exc.errno in LASTING_ERRNOS
