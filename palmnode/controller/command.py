"""``palmnode controller``: run the reference store controller until Ctrl-C or SIGTERM."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import attrs
import trio

from palmnode import logs
from palmnode.cliargs import non_negative, positive
from palmnode.controller.server import (
    DEFAULT_PORT,
    Controller,
    ControllerConfig,
    ControllerError,
)

DESCRIPTION = ("Run the reference store controller: the system of record for every gate of a store. "
               "It listens for nodes over mutual TLS (certificates from `palmnode certs`), applies "
               "their events exactly once to a SQLite database, replicates enrolments and deletions to "
               "every gate, and answers gallery syncs and charges. Prints one JSON line with the bound "
               "address, then logs JSON lines on stderr. Ctrl-C or SIGTERM stops it. See docs/controller.md.")

log = logging.getLogger("palmnode.controller")


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` (port 0 = any free port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        value = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return host, value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``palmnode controller`` options, added to ``parser``."""
    parser.add_argument("--listen", type=listen_address, default=("127.0.0.1", DEFAULT_PORT), metavar="HOST:PORT",
                        help=f"address to listen on (default 127.0.0.1:{DEFAULT_PORT}; port 0 = any free port)")
    parser.add_argument("--db", type=Path, default=Path("controller.db"),
                        help="the controller's SQLite database, made 0600 (default ./controller.db)")
    parser.add_argument("--key-file", type=Path, default=None,
                        help="hex secret (mode 0600) sealing templates at rest; made when neither it nor the "
                        "database exists yet (default: the PALMNODE_CONTROLLER_KEY environment variable)")
    parser.add_argument("--certs", type=Path, default=Path("certs"),
                        help="folder made by `palmnode certs`: ca.pem, NAME.pem, NAME.key (default ./certs)")
    parser.add_argument("--name", default="controller",
                        help="the controller's certificate name in --certs (default controller)")
    limit = attrs.fields(ControllerConfig).charge_limit_cents.default
    parser.add_argument("--charge-limit-cents", type=non_negative, default=limit,
                        help=f"reference payment ledger: approve charges up to this amount (default {limit})")
    retention = attrs.fields(ControllerConfig).event_retention_days.default
    parser.add_argument("--event-retention-days", type=positive, default=retention, metavar="DAYS",
                        help=f"keep applied events this long, then prune them (default {retention:g})")
    parser.add_argument("--log-level", default="info", choices=logs.LOG_LEVELS)
    return parser


def config_from_args(args: argparse.Namespace) -> ControllerConfig:
    host, port = args.listen
    return ControllerConfig.from_certs_dir(
        args.certs, name=args.name, db_path=str(args.db),
        key_file=None if args.key_file is None else str(args.key_file), host=host, port=port,
        charge_limit_cents=args.charge_limit_cents, event_retention_days=args.event_retention_days)


def main(args: argparse.Namespace) -> int:
    """``palmnode controller``: serve until Ctrl-C or SIGTERM (exit 0); a setup error is one line (exit 1)."""
    try:
        config = config_from_args(args)
    except ControllerError as exc:
        print(f"palmnode controller: {exc}", file=sys.stderr)
        return 1
    logs.setup(args.log_level)
    if config.key_file is not None and not Path(config.key_file).exists() and not Path(config.db_path).exists():
        from palmnode.vault import VaultKeyError, create_key_file

        try:
            create_key_file(Path(config.key_file))  # a new store: its key comes with its database
        except VaultKeyError as exc:
            print(f"palmnode controller: {str(exc).replace('vault key', 'controller key')}", file=sys.stderr)
            return 1
    try:
        trio.run(_serve, config)
    except ControllerError as exc:
        print(f"palmnode controller: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the signal handler was in place
        return 0
    return 0


async def _serve(config: ControllerConfig) -> None:
    controller = Controller(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(controller.run)
                print(json.dumps({"listen": f"{config.host}:{port}", "host": config.host, "port": port,
                                  "db": config.db_path}), flush=True)
                async for signum in signals:
                    log.info("controller stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
                    nursery.cancel_scope.cancel()
                    break
        except BaseExceptionGroup as group:
            error = group.subgroup(ControllerError)
            if error is None:
                raise
            while isinstance(error, BaseExceptionGroup):
                error = error.exceptions[0]
            raise error from None
    log.info("controller stopped")
