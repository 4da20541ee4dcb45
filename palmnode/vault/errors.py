"""The vault's typed errors: each message is one line naming the thing and, where there is one, the fix."""
from __future__ import annotations

# Why a VaultError was raised (VaultError.reason), for a caller that must choose between trying
# again and waiting for an operator: `palmnode run` exits 1 (systemd retries) on UNAVAILABLE and 78
# (it does not) on the others (docs/repl.md, "The systemd unit").
#: may pass with no one changing anything: another node holds the vault, SQLite busy, an I/O error, a full disk
UNAVAILABLE = "unavailable"
#: the file's contents: not an SQLite database, corrupt pages, not a vault, a sealed value that fails
DAMAGED = "damaged"
#: a vault schema this palmnode does not know: made by a newer one (upgrade it), or none ever made
UNKNOWN_SCHEMA = "unknown schema"
#: the node cannot create or write the file: permissions, a read-only filesystem, a folder or file
#: in the way, a filesystem SQLite cannot keep a WAL on
NOT_WRITABLE = "not writable"
#: the vault key (VaultKeyError)
KEY = "key"
REASONS = frozenset({UNAVAILABLE, DAMAGED, UNKNOWN_SCHEMA, NOT_WRITABLE, KEY})


class VaultError(Exception):
    """Base of every error the vault raises on purpose. ``reason``: one of REASONS."""

    #: the message may name a person (a row, a card's owner): logs.error_text leaves it out
    names_person = True
    reason = UNAVAILABLE

    def __init__(self, *args: object, reason: str | None = None) -> None:
        super().__init__(*args)
        if reason is not None:
            if reason not in REASONS:
                raise ValueError(f"unknown VaultError reason {reason!r}")
            self.reason = reason

    @property
    def lasting(self) -> bool:
        """Opening the same vault again meets it unchanged until an operator acts (restores the
        file, fixes its permissions, upgrades palmnode, gives the right key)."""
        return self.reason != UNAVAILABLE


class VaultBusy(VaultError):
    """Another connection to the vault file holds its write lock (SQLite busy or locked) past the
    busy timeout: it may well let go (reason UNAVAILABLE)."""

    names_person = False


class VaultKeyError(VaultError):
    """The vault key is missing, unreadable, too open (not 0600), malformed or not this vault's key."""

    names_person = False
    reason = KEY


class TamperedData(VaultError):
    """A sealed value failed authentication: altered on disk, moved to another row, or another key."""

    reason = DAMAGED


class DuplicateCard(VaultError):
    """The card is already enrolled to someone (nothing was written)."""


class DuplicatePhone(VaultError):
    """The phone number is already enrolled to someone (nothing was written)."""


class DuplicatePerson(VaultError):
    """The person id is already in the vault (nothing was written)."""


class InvalidPhone(ValueError):
    """A phone number that does not normalise to E.164 digits. Never carries the number."""
