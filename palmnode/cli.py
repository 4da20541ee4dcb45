"""The ``palmnode`` command: one subcommand per job a person runs on or beside a gate."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from palmnode import __version__, cliargs

DESCRIPTION = """\
palmnode: the software inside a contactless palm-identity gate.

subcommands:
  sim      start a virtual gate (every device emulated on a pty, the camera on loopback)
           and print its endpoints as one JSON line; --scenario plays a timed script
  run      start the node on the devices a config file names (default: config/sim.toml)
  demo     the whole thing without hardware: store controller, virtual gate and node; enrols
           synthetic people, then shows live what the gate decides for a stream of arrivals
  eval     accuracy on a folder of palm images or on rendered synthetic hands (JSON, DET plot)
  bench    measure the node: idle CPU with devices streaming (beside a bare-loop baseline)
           and memory and drop counts under bad input on every port; the engine's speed; the
           gate's decision latency at 100k enrolled; prints JSON
  controller  run the reference store controller (mutual TLS, SQLite system of record)
  certs    make a development CA and certificates for a controller and its nodes
  vault    make a vault key; check a vault file's integrity (row counts, nothing personal)
  repl     attach to a running node's diagnostics REPL

Run `palmnode <subcommand> --help` for its options."""



SUBCOMMANDS = ("sim", "run", "demo", "eval", "bench", "controller", "certs", "vault", "repl")
#: the commands that serve Ctrl-C and SIGTERM as their own stop from their first moment: palmnode/stopsignals.py
STOPPED_BY_SIGNALS = ("run", "sim", "demo")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``only``: the options of that subcommand alone ("" none), so a
    command imports only the modules it runs (``palmnode repl`` on a gate's small CPU starts in a
    fraction of the time the engine's and the benches' imports would take)."""
    def wanted(name: str) -> bool:
        return only is None or only == name

    parser = argparse.ArgumentParser(prog="palmnode", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"palmnode {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")

    p = sub.add_parser("sim", help="start a virtual gate and print its endpoints",
                       description="Start a virtual gate: a TFmini proximity sensor, a PN532 card reader "
                       "and a Firmata illuminator board on pseudo-terminals at stable paths in the run "
                       "folder, and an MJPEG camera on loopback. Prints one JSON line with every endpoint, "
                       "then logs what the devices see as JSON lines on stderr.")
    p.add_argument("--run-dir", type=Path, default=None, help="folder for the device links "
                   "(default: /tmp/palmnode-sim, which config/sim.toml points at)")
    p.add_argument("--camera-port", type=cliargs.port, default=None, help="camera TCP port on 127.0.0.1 (default 8554)")
    p.add_argument("--scenario", type=Path, help="TOML script of timed steps (see config/scenarios/)")
    p.add_argument("--exit-after-scenario", action="store_true", help="stop when the scenario ends")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice the devices make")

    p = sub.add_parser("run", help="start the node",
                       description="Start the node: supervise every device the config names, log presence, "
                       "card reads and device health as JSON lines on stderr. Ctrl-C stops it with every light off.")
    p.add_argument("--config", type=Path, help="node config TOML (default: config/sim.toml; an installed "
                   "palmnode ships a copy, its files in ./run of the current folder)")

    p = sub.add_parser("demo", help="a store without hardware: controller, virtual gate, node, people",
                       description="Start the reference store controller, a virtual gate and a node on it "
                       "(mutual TLS, an encrypted vault in a temporary folder), enrol synthetic people through "
                       "the real enrolment flow (card tap + palm), then play arrivals (enrolled people, strangers, "
                       "an unknown card, the camera unplugged) showing each decision and its latency live, and "
                       "end with a summary.")
    p.add_argument("--people", type=cliargs.count, default=24, help="people to enrol (default 24)")
    p.add_argument("--arrivals", type=cliargs.count, default=40, help="arrivals to play (default 40)")
    p.add_argument("--no-unplug", action="store_true", help="keep the camera plugged in")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("eval", help="accuracy on a folder of images or rendered hands (JSON)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if wanted("eval"):
        from palmnode.biometrics import evaluate

        p.description = evaluate.DESCRIPTION
        evaluate.add_arguments(p)

    p = sub.add_parser("bench", help="measure the node's cost and print JSON",
                       description="Measure the node, each number beside a baseline measured in the same "
                       "run; prints one JSON object on stdout, progress on stderr. Suites: node (CPU while "
                       "the virtual gate streams, beside the emulators' own cost and a bare read loop, then "
                       "memory and drop counters under bad input on every port, then the node's memory with --enrolled "
                       "people, beside a bare interpreter with its imports), engine (ROI, features, 1:1 "
                       "and 1:N at --sizes, default up to 1M palms: the longest suite, its rendered templates "
                       "cached in --cache), gate (decision latency at --enrolled "
                       "palms). Give --suite to run one.")
    p.add_argument("--suite", choices=("node", "engine", "gate", "all"), default="all",
                   help="node: idle CPU, bad-input soak and memory; engine: ROI, features, 1:1 and 1:N "
                   "speed with baselines and pre-filter recall; gate: hand-present-to-decision latency, "
                   "enrolment time and decisions at --enrolled palms; all (default): every suite")
    p.add_argument("--seconds", type=cliargs.positive, default=20.0, help="node measurement window (default 20)")
    if wanted("bench"):
        from palmnode import gate_bench
        from palmnode.biometrics import bench as engine_bench

        engine_bench.add_arguments(p)
        gate_bench.add_arguments(p)

    p = sub.add_parser("controller", help="run the reference store controller")
    if wanted("controller"):
        from palmnode.controller import command as controller_command

        p.description = controller_command.DESCRIPTION
        controller_command.add_arguments(p)

    p = sub.add_parser("certs", help="make a development CA and certificates",
                       description="Make a development certificate authority and certificates for the "
                       "store controller and each node (mutual TLS on the controller link). Keys are 0600; "
                       "an existing CA in the folder is reused, so running it again adds nodes, and an "
                       "existing key and certificate are kept (a gate may use them) unless --renew names them.")
    if wanted("certs"):
        from palmnode.link import certs

        certs.add_arguments(p)

    p = sub.add_parser("vault", help="make a vault key; check a vault file",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if wanted("vault"):
        from palmnode.vault import cli as vault_cli

        p.description = vault_cli.DESCRIPTION
        vault_cli.add_arguments(p)

    p = sub.add_parser("repl", help="attach to a running node's diagnostics REPL")
    if wanted("repl"):
        from palmnode.repl import client as repl_client

        p.description = repl_client.DESCRIPTION
        repl_client.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = next((a for a in argv if not a.startswith("-")), "")
    if first in STOPPED_BY_SIGNALS:  # a stop asked during the imports is the command's to serve
        from palmnode import stopsignals

        stopsignals.hold()
    elif first in ("eval", "bench"):  # Ctrl-C and SIGTERM unwind them, noted: stopsignals.interrupt
        import signal

        from palmnode import stopsignals

        for signum in stopsignals.STOP_SIGNALS:
            signal.signal(signum, stopsignals.interrupt)
    name = first if first in SUBCOMMANDS else ""
    try:
        parser = build_parser(name)
        args = parser.parse_args(argv)
        if args.subcommand is None:
            parser.print_help()
            return 2
        from palmnode import commands

        try:
            return getattr(commands, args.subcommand)(args)
        except commands.UserError as exc:
            print(f"palmnode {args.subcommand}: {exc}", file=sys.stderr)
            return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C in the other commands, their imports included; eval's and bench's SIGTERM
        from palmnode import stopsignals

        return stopsignals.interrupted(name) if name in ("eval", "bench") else stopsignals.stopped(name)


if __name__ == "__main__":
    sys.exit(main())
