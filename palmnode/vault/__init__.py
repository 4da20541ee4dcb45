"""The vault: an encrypted SQLite store of enrolled people, the event outbox and the audit log."""
from palmnode.vault.crypto import open_, seal
from palmnode.vault.errors import (
                                   DuplicateCard,
                                   DuplicatePerson,
                                   DuplicatePhone,
                                   InvalidPhone,
                                   TamperedData,
                                   VaultBusy,
                                   VaultError,
                                   VaultKeyError,
)
from palmnode.vault.keys import VaultKeys, create_key_file, load_keys
from palmnode.vault.phone import normalise_phone
from palmnode.vault.records import EnrolledPalm, OutboxEvent, Person, VaultConfig
from palmnode.vault.store import Vault, open_vault

__all__ = ["DuplicateCard", "DuplicatePerson", "DuplicatePhone", "EnrolledPalm", "InvalidPhone", "OutboxEvent",
           "Person", "TamperedData", "Vault", "VaultBusy", "VaultConfig", "VaultError", "VaultKeyError", "VaultKeys",
           "create_key_file", "load_keys", "normalise_phone", "open_", "open_vault", "seal"]
