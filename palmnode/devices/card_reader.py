"""The card reader actor: polls the PN532 field and publishes each card presented.

Payment cards arrive here already tokenised by the driver (``CardToken`` + last four digits);
the clear card number never reaches the node.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Callable

import trio

from drivers.card_reader.driver import CardReader
from drivers.errors import DeviceError
from palmnode.actors import EventBus, HealthRegistry
from palmnode.config import CardReaderConfig
from palmnode.devices.session import mirror_stats

NAME = "card_reader"
KEY_BYTES = 32


class KeyFileError(DeviceError):
    """The token key file is unusable (wrong permissions, wrong size)."""


def load_token_key(path: str | Path) -> bytes:
    """The HMAC key that turns card numbers into tokens: created (0600) if missing; refused if
    anyone but the owner may read it."""
    path = Path(path)
    try:
        missing = not path.exists()
    except OSError as exc:  # a folder on the way the node's user cannot enter: it is not missing
        raise KeyFileError(f"cannot read token key file {path}: {exc.strerror or exc}") from None
    if missing:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
        except OSError as exc:  # a read-only /etc/palmnode, a folder owned by someone else, a file in the way
            blocker = _file_in_the_way(path.parent) if exc.errno in (errno.EEXIST, errno.ENOTDIR) else None
            why = f"{blocker} is a file, not a folder" if blocker is not None else (exc.strerror or exc)
            raise KeyFileError(f"cannot create token key file {path}: {why}") from None
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyFileError(f"token key file {path} is readable by others (mode {mode:o}): chmod 600 it")
        key = path.read_bytes()
    except OSError as exc:  # not the node's user's to read, a folder
        raise KeyFileError(f"cannot read token key file {path}: {exc.strerror or exc}") from None
    if len(key) < 16:
        raise KeyFileError(f"token key file {path} holds {len(key)} bytes; it needs at least 16")
    return key


def _file_in_the_way(folder: Path) -> Path | None:
    """The first of ``folder`` and the folders above it that exists and is not a folder."""
    for candidate in (folder, *folder.parents):
        try:
            mode = candidate.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):  # not there, or under the file in the way
            continue
        except OSError:
            return None
        return None if stat.S_ISDIR(mode) else candidate
    return None


async def serve(cfg: CardReaderConfig, key: bytes, health: HealthRegistry, bus: EventBus,
                ready: Callable[[], None]) -> None:
    async with await CardReader.open(cfg.port, token_key=key) as reader:
        ready()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mirror_stats, health, NAME,
                               lambda: (reader.stats.last_frame_at, reader.stats.drops))
            async for card in reader.cards(interval=cfg.pause_after_card_s):
                bus.publish(card)
                del card  # the last card read (a person's card token) is not kept until the next tap
            nursery.cancel_scope.cancel()
