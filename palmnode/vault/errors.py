"""The vault's typed errors: each message is one line naming the thing and, where there is one, the fix."""
from __future__ import annotations


class VaultError(Exception):
    """Base of every error the vault raises on purpose."""

    #: the message may name a person (a row, a card's owner): logs.error_text leaves it out
    names_person = True


class VaultKeyError(VaultError):
    """The vault key is missing, unreadable, too open (not 0600), malformed or not this vault's key."""

    names_person = False


class TamperedData(VaultError):
    """A sealed value failed authentication: altered on disk, moved to another row, or another key."""


class DuplicateCard(VaultError):
    """The card is already enrolled to someone (nothing was written)."""


class DuplicatePhone(VaultError):
    """The phone number is already enrolled to someone (nothing was written)."""


class DuplicatePerson(VaultError):
    """The person id is already in the vault (nothing was written)."""


class InvalidPhone(ValueError):
    """A phone number that does not normalise to E.164 digits. Never carries the number."""
