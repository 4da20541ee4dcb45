"""``palmnode vault``: make a key file, check a vault file (integrity, key, counts without personal data)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from palmnode.vault.errors import VaultError
from palmnode.vault.keys import DEFAULT_ENV, create_key_file
from palmnode.vault.records import VaultConfig
from palmnode.vault.store import open_vault

DESCRIPTION = """\
The node's vault: an encrypted SQLite file of enrolled people, the event outbox and the audit log.

  palmnode vault keygen /etc/palmnode/keys/vault.key a new 32-byte key, hex, mode 0600 (never overwrites)
  palmnode vault check --vault /var/lib/palmnode/vault.db --key-file /etc/palmnode/keys/vault.key
                                                     open it with the key, run SQLite's integrity check,
                                                     print row counts as one JSON line
"""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``palmnode vault`` options, added to ``parser`` (a subparser of the palmnode command)."""
    actions = parser.add_subparsers(dest="vault_action", metavar="ACTION", required=True)
    keygen = actions.add_parser("keygen", help="write a new vault key file (mode 0600)")
    keygen.add_argument("key_file", help="path of the key file to create")
    check = actions.add_parser("check", help="open a vault, check its integrity and print its counts")
    check.add_argument("--vault", required=True, help="the vault database file")
    check.add_argument("--key-file", help=f"the key file (default: the {DEFAULT_ENV} environment variable)")
    check.add_argument("--key-env", default=DEFAULT_ENV, help=f"environment variable holding the key "
                       f"when there is no key file (default {DEFAULT_ENV})")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palmnode vault", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(parser)


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """``palmnode vault``: parsed arguments (from :func:`add_arguments`) or an argv list. 0 ok, 1 problem."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    try:
        if args.vault_action == "keygen":
            create_key_file(Path(args.key_file))
            print(f"palmnode vault: wrote a new key to {args.key_file} (mode 0600); keep a copy somewhere safe: "
                  f"without it the vault's templates cannot be read")
            return 0
        vault_file = Path(args.vault)
        if not vault_file.exists():
            raise VaultError(f"vault {args.vault} does not exist")
        if not vault_file.is_file():
            raise VaultError(f"vault {args.vault} is not a file (a folder?); name the vault's database file")
        if vault_file.stat().st_size == 0:   # opening it would make a new, empty vault: a check creates nothing
            raise VaultError(f"vault {args.vault} is empty (0 bytes), not a vault; restore it from a backup")
        config = VaultConfig(path=args.vault, key_file=args.key_file, key_env=args.key_env)
        with open_vault(config, env=os.environ) as vault:
            integrity = vault.integrity_check()
            unreadable = vault.unreadable()
            report = {"vault": str(args.vault), "integrity": integrity, "unreadable": len(unreadable),
                      **vault.statistics()}
        for problem in unreadable:
            print(f"palmnode vault: {problem}", file=sys.stderr)
        print(json.dumps(report), flush=True)
        return 0 if integrity == "ok" and not unreadable else 1
    except VaultError as exc:
        print(f"palmnode vault: {str(exc).replace('configure a key file', 'give a key file (--key-file)')}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
