"""The vault: an encrypted SQLite store of enrolled people, the event outbox and the audit log."""
from palmnode.vault.crypto import open_, seal
from palmnode.vault.errors import (DuplicateCard, DuplicatePerson, DuplicatePhone, InvalidPhone,
                                   TamperedData, VaultError, VaultKeyError)
from palmnode.vault.keys import VaultKeys, create_key_file, load_keys

__all__ = ["DuplicateCard", "DuplicatePerson", "DuplicatePhone", "InvalidPhone", "TamperedData",
           "VaultError", "VaultKeyError", "VaultKeys", "create_key_file", "load_keys", "open_", "seal"]
