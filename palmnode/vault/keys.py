"""The vault's keys: one 32-byte secret, kept outside the database, from which HKDF derives the rest.

The secret lives hex-encoded in a key file of mode 0600 or in an environment variable (for
containers and systemd credentials); it is never stored in the database. From it HKDF-SHA256
(RFC 5869) derives a key for AES-GCM sealing of templates and outbox payloads and a key for the
HMAC lookups (phone numbers, the audit log's person references), so neither can stand in for the other.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import os
import stat
import string
from collections.abc import Mapping
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from palmnode.vault.errors import VaultKeyError

SECRET_BYTES = 32
DEFAULT_ENV = "PALMNODE_VAULT_KEY"
_SALT = b"palmnode vault v1"  # RFC 5869 §3.1: a fixed, non-secret salt
_INFO_TEMPLATE = b"palmnode vault template-key"  # RFC 5869 §3.2: info separates the derived keys
_INFO_LOOKUP = b"palmnode vault lookup-key"


def _hidden(value: bytes) -> str:
    return "<secret>"


@attrs.frozen
class VaultKeys:
    """``template_key``: AES-256-GCM for everything sealed; ``lookup_key``: HMAC-SHA256 for lookups."""

    template_key: bytes = attrs.field(repr=_hidden)
    lookup_key: bytes = attrs.field(repr=_hidden)

    @classmethod
    def from_secret(cls, secret: bytes) -> VaultKeys:
        """Both keys from the 32-byte ``secret`` (HKDF-SHA256, distinct info strings)."""
        if len(secret) != SECRET_BYTES:
            raise VaultKeyError(f"vault secret is {len(secret)} bytes; it must be {SECRET_BYTES}")
        return cls(template_key=_hkdf(secret, _INFO_TEMPLATE), lookup_key=_hkdf(secret, _INFO_LOOKUP))

    def lookup(self, data: bytes) -> bytes:
        """HMAC-SHA256(lookup_key, data): a stable, keyed, irreversible stand-in for ``data``."""
        return hmac.new(self.lookup_key, data, hashlib.sha256).digest()


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(secret)


def _parse_secret(text: str, source: str) -> bytes:
    text = text.strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        digits = "".join(text.split())
        if digits and all(c in string.hexdigits for c in digits):  # an odd count: cut short, not garbled
            raise VaultKeyError(f"{source} holds {len(digits)} hex digits; it must hold {SECRET_BYTES * 2}") from None
        raise VaultKeyError(f"{source} is not hex; it must hold {SECRET_BYTES * 2} hex digits "
                            f"(make one with `palmnode vault keygen FILE`)") from None
    if len(secret) != SECRET_BYTES:
        raise VaultKeyError(f"{source} holds {len(secret)} bytes; it must hold {SECRET_BYTES} "
                            f"({SECRET_BYTES * 2} hex digits)")
    return secret


def create_key_file(path: Path) -> None:
    """Write a new random secret (hex, one line) to ``path`` with mode 0600; never overwrites."""
    path = Path(path)
    secret = os.urandom(SECRET_BYTES).hex() + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise VaultKeyError(f"vault key file {path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise VaultKeyError(f"cannot create vault key file {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have narrowed it further; never wider
        os.write(fd, secret.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: Path) -> bytes:
    try:
        # O_NONBLOCK: a FIFO would otherwise wait for a writer here, before fstat can refuse it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise VaultKeyError(f"vault key file {path} is missing; create it (mode 0600) or set "
                            f"{DEFAULT_ENV}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):  # O_NOFOLLOW's refusal, not a loop
            raise VaultKeyError(f"vault key file {path} is a symbolic link; name the key file itself "
                                f"(mode 0600) in the configuration") from None
        raise VaultKeyError(f"cannot read vault key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise VaultKeyError(f"vault key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise VaultKeyError(f"vault key file {path} has mode {stat.S_IMODE(st.st_mode):04o}, readable "
                                f"beyond its owner; run `chmod 600 {path}`")
        text = os.read(fd, 4096).decode("ascii", errors="replace")
    finally:
        os.close(fd)
    return _parse_secret(text, f"vault key file {path}")


def _exists(path: Path) -> bool:
    """Whether ``path`` is there, True when that cannot be known (a folder on the way the user cannot
    enter): then reading it says why, where creating it would claim it missing."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def load_keys(key_file: Path | None, *, env: Mapping[str, str] = os.environ,
              env_name: str = DEFAULT_ENV, create: bool = False) -> VaultKeys:
    """The vault keys from ``key_file`` (mode 0600, hex) or, when it is None, from ``env[env_name]``.

    ``create=True`` makes the key file first when it does not exist. Raises :class:`VaultKeyError`
    with a one-line reason (missing, mode not 0600, not hex, wrong length).
    """
    if key_file is not None:
        key_file = Path(key_file)
        if create and not _exists(key_file):
            create_key_file(key_file)
        return VaultKeys.from_secret(_read_key_file(key_file))
    text = env.get(env_name)
    if text is None or not text.strip():
        raise VaultKeyError(f"no vault key: set {env_name} (64 hex digits) or configure a key file")
    return VaultKeys.from_secret(_parse_secret(text, f"environment variable {env_name}"))
