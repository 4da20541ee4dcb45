"""The commands as a user runs them: `palmnode sim` + `palmnode run` as processes, bad arguments."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from palmnode import cli
from palmnode.bench import free_port
from palmnode.biometrics.matcher import Calibration
from palmnode.config import SHIPPED_CALIBRATION
from tests.conftest import AS_SOON_AS_CAUGHT, WHILE_IMPORTING, reach_moment, reaped

DEVICES = ("proximity", "card_reader", "illuminator", "camera")
SCENARIO = """
[[step]]
at = 3.0
action = "hand"
distance_mm = 150
seconds = 1.0

[[step]]
at = 3.5
action = "card"
kind = "emv"
pan = "4111111111111111"
expiry = "2812"
""" + "".join(f"""
[[step]]
at = {5.0 + 2.5 * i}
action = "unplug"
device = "{device}"
seconds = 1.0
""" for i, device in enumerate(DEVICES)) + "".join(f"""
[[step]]
at = 15.5
action = "garbage"
device = "{device}"
bytes = 64
""" for device in DEVICES)


def palmnode(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "palmnode.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sim_and_run_session_with_every_device_unplugged_in_turn(tmp_path):
    port = free_port()
    (tmp_path / "scenario.toml").write_text(SCENARIO)
    made = palmnode("certs", "--out", str(tmp_path / "run" / "certs"), "--node", "sim-gate-1")
    assert made.wait(timeout=30) == 0
    sim = palmnode("sim", "--run-dir", str(tmp_path / "sim"), "--camera-port", str(port),
                   "--scenario", str(tmp_path / "scenario.toml"))
    node = None
    try:
        endpoints = json.loads(sim.stdout.readline())
        assert endpoints == {"proximity": str(tmp_path / "sim" / "proximity"),
                             "card_reader": str(tmp_path / "sim" / "card_reader"),
                             "illuminator": str(tmp_path / "sim" / "illuminator"),
                             "camera": f"http://127.0.0.1:{port}/stream.mjpg"}
        config = (Path(__file__).resolve().parent.parent / "config" / "sim.toml").read_text()
        config = config.replace("/tmp/palmnode-sim", str(tmp_path / "sim")).replace("8554", str(port))
        config = config.replace("../run/", str(tmp_path / "run") + "/")
        (tmp_path / "node.toml").write_text(config)
        node = palmnode("run", "--config", str(tmp_path / "node.toml"))
        time.sleep(17.0)  # the scenario's length: this test is about real processes in real time
        node.send_signal(signal.SIGTERM)  # how systemd stops it
        out, err = node.communicate(timeout=15)
        assert node.returncode == 0, err
        if sim.poll() is not None:  # a crashed sim looks like devices that never come back: say so
            raise AssertionError(f"palmnode sim exited ({sim.returncode}) during the session:\n"
                                 + sim.communicate(timeout=15)[1][-4000:])
    finally:
        for p in (node, sim):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.communicate(timeout=15)
    assert "Traceback" not in err
    non_json = [line for line in err.splitlines() if not line.startswith("{") and "VIDEOIO" not in line]
    assert not non_json, non_json
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    t0 = lines[0]["ts"]
    states = [(round(l["ts"] - t0, 2), l["name"], l["new"]) for l in lines if l["msg"] == "device state"]
    for device in DEVICES:
        mine = [(t, new) for t, name, new in states if name == device]
        # on failure, the node's own lines about the device (a rare CI failure left too little to go on)
        said = [l for l in err.splitlines() if device in l and '"device state"' not in l][-12:]
        first_ready = next(t for t, new in mine if new == "ready")
        assert first_ready < 3.0, (device, mine, said)
        lost = [t for t, new in mine if new == "lost"]
        assert lost, (device, mine, said)
        back = [t for t, new in mine if new == "ready" and t > lost[0]]
        assert back and back[0] - lost[0] < 1.0 + 2.0 + 0.5, (device, mine, said)  # 1 s unplugged + 2 s
    from palmnode import malloc
    assert [l["mmap_threshold"] for l in lines if l["msg"] == "allocator"] == [malloc.NODE_THRESHOLD]  # palmnode/malloc.py
    gates = [l["new"] for l in lines if l["msg"] == "gate state"]
    assert gates.count("degraded") >= 4 and gates[-1] == "ready", gates
    cards = [l for l in lines if l["msg"] == "card read"]
    assert cards and cards[0]["last4"] == "1111" and "4111111111111111" not in err
    assert any(l["msg"] == "presence" and l["present"] for l in lines)
    assert [l["msg"] for l in lines][-1] == "node stopped" and any(l["msg"] == "node stopping" for l in lines)


@pytest.mark.parametrize("args, message", [
    (["sim", "--scenario", "/nonexistent.toml"], "scenario file /nonexistent.toml does not exist"),
    (["sim", "--camera-port", "99999"], "port must be 0-65535"),
    (["bench", "--seconds", "-3"], "must be greater than 0"),
    (["bench", "--seconds", "inf"], "must be a finite number, got inf"),
    (["bench", "--cpu-path", "7"], "argument --cpu-path: invalid choice: 7"),
    (["eval", "--bit-depth", "17"], "must be at most 16"),
    (["eval", "--synthetic", "2", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    proc = subprocess.run([sys.executable, "-m", "palmnode.cli", *args], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode in (1, 2)
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("module", ["palmnode.cli", "palmnode"])
def test_help_explains_every_subcommand(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    for sub in ("sim", "run", "demo", "bench"):
        assert f"\n  {sub} " in proc.stdout


def test_version_is_the_installed_packages():
    """`palmnode --version` says what a gate runs, for a bug report: the version pip installed."""
    from importlib.metadata import version

    proc = subprocess.run([sys.executable, "-m", "palmnode", "--version"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"palmnode {version('palmnode')}\n", "")


@pytest.mark.parametrize("name", cli.SUBCOMMANDS)
def test_a_subcommand_built_alone_parses_as_in_the_whole_parser(name, capsys):
    helps = []
    for parser in (cli.build_parser(), cli.build_parser(name)):
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        helps.append(capsys.readouterr().out)
    assert helps[0] == helps[1] and "--help" in helps[0]
    with pytest.raises(SystemExit):
        cli.build_parser("").parse_args(["fly"])
    assert "(choose from " + ", ".join(f"'{n}'" for n in cli.SUBCOMMANDS) + ")" in capsys.readouterr().err


def test_the_repl_command_line_does_not_import_the_engine():
    """An operator's `palmnode repl` on a gate starts without the engine's, OpenCV's or the
    benches' imports (they take ~1 s, more on a gate's small CPU)."""
    code = ("import sys; from palmnode import cli; cli.build_parser('repl'); "
            "print(sorted(m for m in ('cv2', 'palmnode.biometrics.evaluate', 'palmnode.demo', 'palmnode.config') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def node_config(tmp_path: Path, *changes: tuple[str, str], link: bool = False) -> Path:
    """config/sim.toml with its files in ``tmp_path``, no controller link (``link``: its link kept,
    certificates in tmp_path/run/certs), and ``changes`` made."""
    text = (Path(__file__).resolve().parent.parent / "config" / "sim.toml").read_text()
    text = text.replace("../run/", str(tmp_path / "run") + "/").replace("/tmp/palmnode-sim", str(tmp_path / "sim"))
    if not link:
        text = text[:text.index("[controller]")] + text[text.index("[repl]"):]
    for old, new in changes:
        assert old in text
        text = text.replace(old, new, 1)
    (tmp_path / "node.toml").write_text(text)
    return tmp_path / "node.toml"


def test_a_service_that_cannot_start_is_a_one_line_error(tmp_path):
    """The REPL socket (a path too long for AF_UNIX) and the metrics port (in use) are set up by
    the running node's tree; a failure there is the user's to fix, not a traceback."""
    import socket

    from palmnode import lockfile

    (tmp_path / "run").mkdir()
    held = lockfile.hold(tmp_path / "run" / "repl.sock", RuntimeError, "held by the test")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for change, message in [
            (("enabled = false ", "enabled = false "),
             f"palmnode run: another node serves the REPL at {tmp_path}/run/repl.sock: "),
            (("enabled = false ", "enabled = true "), f"palmnode run: cannot serve metrics on 127.0.0.1:{port}: "),
        ]:
            if "metrics" in message:
                os.close(held)
            config = node_config(tmp_path, change, ("port = 9464", f"port = {port}"))
            proc = run_node(config)
            assert proc.returncode == 1, proc.stderr  # a restart may find them free: systemd retries
            assert "Traceback" not in proc.stderr
            last = proc.stderr.splitlines()[-1]
            assert last.startswith(message), proc.stderr[-2000:]


@pytest.mark.parametrize("mistake, message", [
    ("missing", "config file {path} does not exist"),
    ("not toml", "{path}: not valid TOML: "),
    ("unknown key", "{path}: unknown section [controlerr]"),
    ("bad value", "{path} [gate] on_duplicate: must be refuse or link, got 'merge'"),
    # loaded before: a pty (the sim) takes any rate; a USB adapter refuses it or garbles the line
    ("absurd value", "{path} [devices.proximity]: baudrate must be 9600 to 921600 (the TFmini's UART rates), "
                     "got 1000000000\n"),
    ("a folder", "cannot read config file {path}: Is a directory\n"),  # was "[Errno 21] Is a directory: '{path}'"
    # loaded before, and the driver fell behind the sensor: 200 frames of 90 bits a second on a 9600 baud line
    ("a line too slow", "{path} [devices.proximity]: baudrate 9600 is too slow for frame_rate_hz 200: 200 of "
                        "the TFmini's 9-byte frames a second need 18000 baud (10 bits a byte on the line); raise "
                        "baudrate to at least 18000 or lower frame_rate_hz to at most 106\n"),
])
def test_a_config_file_that_cannot_be_used_exits_78_which_systemd_does_not_restart(tmp_path, mistake, message):
    """Every failure exited 1, so the unit's Restart=on-failure retried a broken config file (five
    times, then gave up with StartLimitBurst). Now the config's mistakes exit EX_CONFIG (78), which
    the unit names in RestartPreventExitStatus; other failures to start still exit 1."""
    config = node_config(tmp_path)
    text = config.read_text()
    if mistake == "missing":
        config = tmp_path / "gone.toml"
    elif mistake == "a folder":
        config = tmp_path / "etc"
        config.mkdir()
    elif mistake == "not toml":
        config.write_text(text + "\n[gate\n")
    elif mistake == "unknown key":
        config.write_text(text + "\n[controlerr]\nhost = 'x'\n")
    elif mistake == "absurd value":
        config.write_text(text.replace("frame_rate_hz = 100", "frame_rate_hz = 100\nbaudrate = 1000000000", 1))
    elif mistake == "a line too slow":
        config.write_text(text.replace("frame_rate_hz = 100", "frame_rate_hz = 200\nbaudrate = 9600", 1))
    else:
        config.write_text(text.replace('on_duplicate = "refuse"', 'on_duplicate = "merge"'))
    proc = subprocess.run([sys.executable, "-m", "palmnode", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("palmnode run: " + message.format(path=config)), proc.stderr
    unit = (Path(__file__).resolve().parent.parent / "config" / "palmnode.service").read_text()
    assert "\nRestartPreventExitStatus=78\n" in unit and "\nRestart=on-failure\n" in unit


def certs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "palmnode.cli", "certs", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_certs_days_beyond_any_date_is_a_one_line_error(tmp_path):
    proc = certs("--out", str(tmp_path / "pki"), "--days", "99999999")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr == "palmnode certs: days must be 1 to 36500, got 99999999\n"


@pytest.mark.parametrize("args, message", [
    (["--days", "0"], "palmnode certs: days must be 1 to 36500, got 0\n"),
    (["--node", "../gate"], "palmnode certs: '../gate' is not a usable name"),
    (["--out", "{file}/pki"], "palmnode certs: cannot create folder {file}/pki: Not a directory\n"),
])
def test_certs_exits_1_on_its_own_errors_as_every_subcommand_does(tmp_path, capsys, args, message):
    """`palmnode certs` exited 2 on its own errors (a bad name, --days, a folder it cannot make),
    the status argparse gives a malformed command line, while every other subcommand exits 1 on
    a mistake in what it was given. Now 1; a usage error is still argparse's 2."""
    (tmp_path / "file").write_text("")
    args = [a.format(file=tmp_path / "file") for a in args]
    message = message.format(file=tmp_path / "file")
    if "--out" not in args:
        args = ["--out", str(tmp_path / "pki"), *args]
    assert cli.main(["certs", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit) as usage:
        cli.main(["certs", "--out", str(tmp_path / "pki"), "--days", "many"])
    assert usage.value.code == 2


@pytest.mark.parametrize("kept", ["ca.key", "ca.pem"])
def test_certs_never_overwrites_half_a_ca(tmp_path, kept):
    """A folder holding only the CA's key (its certificate lost, or the other way round): making a
    new CA would overwrite the half that is left, the CA key with it."""
    assert certs("--out", str(tmp_path / "pki")).returncode == 0
    (tmp_path / "pki" / ({"ca.key", "ca.pem"} - {kept}).pop()).unlink()
    before = (tmp_path / "pki" / kept).read_bytes()
    proc = certs("--out", str(tmp_path / "pki"), "--node", "gate-1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and f"{tmp_path / 'pki' / kept} is there but" in proc.stderr
    assert (tmp_path / "pki" / kept).read_bytes() == before
    assert not (tmp_path / "pki" / "gate-1.pem").exists()


def run_node(config: Path, *, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``palmnode run --config config`` to its end (``prefix``: e.g. unprivileged())."""
    return subprocess.run([*prefix, sys.executable, "-m", "palmnode.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _damage(tmp_path: Path, what: str) -> tuple[tuple[str, str], ...]:
    """Spoil the file (or setting) ``what`` of node_config(tmp_path, link=True); the config changes."""
    from palmnode.link.certs import make_dev_pki
    from palmnode.vault import open_vault
    from palmnode.vault.records import VaultConfig

    run, token = tmp_path / "run", tmp_path / "run" / "keys" / "card_token.key"
    certs = make_dev_pki(run / "certs", nodes=["sim-gate-1"])
    gate = certs.nodes["sim-gate-1"]
    (run / "keys").mkdir(mode=0o700)
    if what == "token key is a folder":
        token.mkdir(mode=0o700)
    elif what in ("token key under a file", "token key two folders under a file"):
        (tmp_path / "etc").write_text("not a folder")
        under = "etc" if what == "token key under a file" else "etc/palmnode"
        return ((f'token_key_file = "{token}"', f'token_key_file = "{tmp_path}/{under}/card_token.key"'),)
    elif what == "vault key folder is a file":
        (tmp_path / "etc").write_text("not a folder")
        return ((f'key_file = "{run}/keys/vault.key"', f'key_file = "{tmp_path}/etc/vault.key"'),)
    elif what in ("token key readable by others", "token key too short"):
        token.write_bytes(b"k" * (32 if "others" in what else 8))
        token.chmod(0o644 if "others" in what else 0o600)
    elif what == "link certificate missing":
        gate.cert.unlink()
    elif what == "link certificate not PEM":
        gate.cert.write_text("not a certificate\n")
    elif what == "link key readable by others":
        gate.key.chmod(0o640)
    elif what == "link key of another":
        gate.key.write_bytes(certs.controller.key.read_bytes())
    elif what == "link CA not PEM":
        certs.ca_cert.write_text("not a certificate\n")
    elif what in ("vault key readable by others", "vault key not hex"):
        (run / "keys" / "vault.key").write_text("ab" * 32 if "others" in what else "not hex\n")
        (run / "keys" / "vault.key").chmod(0o644 if "others" in what else 0o600)
    elif what == "vault key of another vault":
        open_vault(VaultConfig(path=str(run / "vault.db"), key_file=str(run / "keys" / "vault.key")),
                   create_key=True).close()
        (run / "keys" / "vault.key").write_text("cd" * 32 + "\n")
    elif what in ("vault not a database", "vault of another program", "vault schema newer",
                  "vault schema no palmnode makes", "vault pages damaged"):
        _spoil_vault(run, what)
    elif what == "vault is a folder":
        (run / "vault.db").mkdir()
    elif what == "debug capture folder under a file":
        (tmp_path / "var").write_text("not a folder")
        return (("[metrics]", f'[debug]\ncapture_dir = "{tmp_path}/var/captures"\n\n[metrics]'),)
    elif what == "calibration missing":
        return (('on_duplicate = "refuse"', f'on_duplicate = "refuse"\ncalibration = "{tmp_path}/none.json"'),)
    elif what == "calibration without a vein tail":   # made before the vein check, or on one modality
        fused_only = Calibration.from_json(SHIPPED_CALIBRATION.read_text())
        (tmp_path / "old.json").write_text(attrs.evolve(fused_only, vein=None).to_json())
        return (('on_duplicate = "refuse"', f'on_duplicate = "refuse"\ncalibration = "{tmp_path}/old.json"'),)
    elif what == "REPL socket path too long":
        return ((f'socket_path = "{run}/repl.sock"', f'socket_path = "{tmp_path / ("d" * 120) / "repl.sock"}"'),)
    else:
        raise AssertionError(what)
    return ()


def _spoil_vault(run: Path, what: str) -> None:
    """A vault file at run/vault.db that no restart can use: its contents, not the configuration."""
    import sqlite3

    from palmnode.vault import open_vault
    from palmnode.vault.records import VaultConfig
    from tests.vault.factories import person
    from tests.vault.test_store import damage_page_of

    path = run / "vault.db"
    if what == "vault not a database":
        path.write_bytes(b"not a database " * 300)
        return
    if what == "vault of another program":
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (text)")
        conn.close()
        return
    with open_vault(VaultConfig(path=str(path), key_file=str(run / "keys" / "vault.key")), create_key=True) as vault:
        people = [person(i, vault) for i in range(12)]
        for someone in people:
            vault.add_person(someone)
    conn = sqlite3.connect(path)
    if what == "vault pages damaged":  # the header pages are intact: the gallery's load meets it
        blob = conn.execute("SELECT sealed FROM templates WHERE person_id = ? AND idx = 0",
                            (people[5].person_id,)).fetchone()[0]
        conn.close()
        damage_page_of(path, bytes(blob))
        return
    with conn:
        conn.execute("UPDATE vault SET version = ?", (9 if what == "vault schema newer" else 0,))
    conn.close()


@pytest.mark.parametrize("what, message", [
    ("token key is a folder", "cannot read token key file {run}/keys/card_token.key: Is a directory"),
    ("token key under a file", "cannot create token key file {tmp}/etc/card_token.key: {tmp}/etc is a file, "
                               "not a folder"),
    ("token key two folders under a file", "cannot create token key file {tmp}/etc/palmnode/card_token.key: "
                                           "{tmp}/etc is a file, not a folder"),
    ("token key readable by others", "token key file {run}/keys/card_token.key is readable by others (mode 644)"),
    ("token key too short", "token key file {run}/keys/card_token.key holds 8 bytes; it needs at least 16"),
    ("link certificate missing", "link certificate {run}/certs/sim-gate-1.pem not found"),
    ("link certificate not PEM", "cannot use link certificate {run}/certs/sim-gate-1.pem with key "),
    ("link key of another", "cannot use link certificate {run}/certs/sim-gate-1.pem with key "),
    ("link key readable by others", "link key {run}/certs/sim-gate-1.key has mode 0640, readable beyond its "
                                    "owner; run `chmod 600 {run}/certs/sim-gate-1.key`"),
    ("link CA not PEM", "cannot use link CA certificate {run}/certs/ca.pem: "),
    ("vault key readable by others", "vault {run}/vault.db: vault key file {run}/keys/vault.key has mode 0644"),
    ("vault key not hex", "vault {run}/vault.db: vault key file {run}/keys/vault.key is not hex"),
    ("vault key folder is a file", "vault {run}/vault.db: cannot create folder {tmp}/etc: a file is in the way"),
    ("vault key of another vault", "vault {run}/vault.db: vault {run}/vault.db was created with a different key"),
    ("vault not a database", "vault {run}/vault.db: {run}/vault.db is not a usable palmnode vault (file is not a "
                             "database); restore it from a backup"),
    ("vault of another program", "vault {run}/vault.db: {run}/vault.db is an SQLite database but not a palmnode vault"),
    ("vault schema newer", "vault {run}/vault.db: {run}/vault.db has vault schema 9, newer than this palmnode (1); "
                           "upgrade palmnode"),
    ("vault schema no palmnode makes",
     "vault {run}/vault.db: {run}/vault.db has vault schema 0, which no palmnode makes"),
    ("vault pages damaged", "vault {run}/vault.db: vault {run}/vault.db: database disk image is malformed; the file is "
                            "damaged: restore it from a backup"),
    ("vault is a folder", "vault {run}/vault.db: vault {run}/vault.db is a folder, not a file"),
    ("calibration missing", "calibration {tmp}/none.json: No such file or directory"),
    ("calibration without a vein tail", "calibration {tmp}/old.json: it has no vein impostor tail for the vein "
                                        "check (made before it, or on one modality): remake it with `palmnode eval "
                                        "--calibration-out` on both modalities, or set [gate] vein_fmr = 0 to "
                                        "identify without the vein check"),
    ("debug capture folder under a file", "debug capture folder {tmp}/var/captures: Not a directory"),
    ("REPL socket path too long", "{tmp}/node.toml [repl]: socket_path {tmp}/ddd"),
])
def test_a_file_the_config_names_that_cannot_be_used_exits_78_too(tmp_path, what, message):
    """Only a config file's own mistakes exited 78 (EX_CONFIG, not restarted by the unit); a key
    file, certificate, calibration or socket path the config names that can never work exited 1,
    and systemd started the node five more times to meet the same file. Those exit 78 now; what a
    restart may cure (a vault, a REPL socket or a port another process holds) still exits 1."""
    changes = _damage(tmp_path, what)
    proc = run_node(node_config(tmp_path, *changes, link=True))
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    expected = "palmnode run: " + message.format(run=tmp_path / "run", tmp=tmp_path)
    assert proc.stderr.splitlines()[-1].startswith(expected), proc.stderr[-2000:]


def unprivileged() -> tuple[str, ...]:
    """A command prefix under which file modes bind this process as they bind the node's user:
    none for a normal user; for root, setpriv dropping the capabilities that override them."""
    import shutil

    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file modes would not bind the node")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all")


@pytest.mark.parametrize("what, message", [
    ("vault file read-only", "vault {vault}: cannot open vault {vault} for writing: Permission denied"),
    ("vault folder read-only, new vault", "vault {vault}: cannot create vault {vault}: Permission denied"),
    ("vault folder read-only", "vault {vault}: cannot lock {vault}.lock: Permission denied"),
    ("vault folder read-only, lock made", "vault {vault}: cannot open vault {vault}: attempt to write a readonly "
                                          "database; the node's user must be able to write its folder {folder} "
                                          "(SQLite keeps vault.db-wal and vault.db-shm beside it)"),
])
def test_a_vault_the_node_cannot_write_exits_78(tmp_path, what, message):
    """A vault file or folder the node's user cannot write (its mode, a read-only filesystem)
    exited 1, and systemd started the node five more times to meet the same file: the vault's
    errors did not say why. They carry a reason now; this one exits 78. Nothing is changed."""
    from palmnode.vault import open_vault
    from palmnode.vault.records import VaultConfig

    folder = tmp_path / ("run" if what == "vault file read-only" else "ro")
    vault = folder / "vault.db"
    (tmp_path / "run" / "keys").mkdir(parents=True, mode=0o700)
    folder.mkdir(exist_ok=True)
    if what != "vault folder read-only, new vault":
        open_vault(VaultConfig(path=str(vault), key_file=str(tmp_path / "run" / "keys" / "vault.key")),
                   create_key=True, exclusive=what.endswith("lock made")).close()
    (vault if what == "vault file read-only" else folder).chmod(0o400 if what == "vault file read-only" else 0o500)
    before = sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.is_file())
    config = node_config(tmp_path, (f'path = "{tmp_path}/run/vault.db"', f'path = "{vault}"'))
    proc = run_node(config, prefix=unprivileged())
    folder.chmod(0o700)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == "palmnode run: " + message.format(vault=vault, folder=folder)
    assert sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.is_file()) == before


@pytest.mark.parametrize("what", ["a regular file", "a folder"])
def test_a_repl_socket_path_that_is_not_a_socket_exits_78_and_is_left_alone(tmp_path, what):
    """A [repl] socket_path where a file or a folder is exited 1 (systemd restarted the node five
    times to meet it): only an operator can move it, or change the config. Now 78, one line
    naming it; it is never removed."""
    (tmp_path / "run").mkdir()
    sock = tmp_path / "run" / "repl.sock"
    if what == "a regular file":
        sock.write_text("precious")
    else:
        sock.mkdir()
        (sock / "inside").write_text("precious")
    proc = run_node(node_config(tmp_path))
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"palmnode run: REPL socket path {sock} is {what}, not a socket: "
                                            "move it away or choose another [repl] socket_path")
    assert (sock if what == "a regular file" else sock / "inside").read_text() == "precious"


@pytest.mark.parametrize("lock_made", [False, True])
def test_a_repl_socket_folder_the_node_cannot_write_exits_78(tmp_path, lock_made):
    """A socket folder the node's user cannot write: its lock file cannot be made, or (made by an
    earlier run) the socket cannot, which escaped as a PermissionError. 78 now, one line."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if lock_made:
        (folder / "repl.sock.lock").touch(mode=0o600)
    folder.chmod(0o500)
    config = node_config(tmp_path, (f'socket_path = "{tmp_path}/run/repl.sock"', f'socket_path = "{folder}/repl.sock"'))
    proc = run_node(config, prefix=unprivileged())
    folder.chmod(0o700)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    expected = (f"cannot create the REPL socket {folder}/repl.sock: Permission denied" if lock_made
                else f"cannot lock {folder}/repl.sock.lock: Permission denied")
    assert proc.stderr.splitlines()[-1] == "palmnode run: " + expected, proc.stderr[-2000:]


@pytest.mark.parametrize("what, message", [
    ("token key", "cannot read token key file {locked}/card_token.key: Permission denied"),
    ("vault key", "vault {run}/vault.db: cannot read vault key file {locked}/vault.key: Permission denied"),
    ("link certificate", "cannot read link certificate {locked}/sim-gate-1.pem: Permission denied"),
    ("link key", "cannot read link key {locked}/sim-gate-1.key: Permission denied"),
    ("link CA", "cannot read link CA certificate {locked}/ca.pem: Permission denied"),
])
def test_a_key_or_certificate_in_a_folder_the_node_cannot_enter_exits_78(tmp_path, what, message):
    """An operator's first start under the unit: the keys and certificates made by root in a 0700
    folder the node's user cannot enter. The token key and the link's files escaped as a
    PermissionError traceback, exit 1 (systemd retried it five times); the vault key was said
    "cannot create" though it was there. Each is one line now, naming the file, exit 78, and the
    files are left as they were."""
    from palmnode.link.certs import make_dev_pki
    from palmnode.vault import create_key_file

    run, locked = tmp_path / "run", tmp_path / "locked"
    certs = make_dev_pki(run / "certs", nodes=["sim-gate-1"])
    (run / "keys").mkdir(mode=0o700)
    locked.mkdir(mode=0o700)
    (locked / "card_token.key").write_bytes(b"k" * 32)
    (locked / "card_token.key").chmod(0o600)
    create_key_file(locked / "vault.key")
    for name in ("ca.pem", "sim-gate-1.pem", "sim-gate-1.key"):
        (locked / name).write_bytes((run / "certs" / name).read_bytes())
        (locked / name).chmod(0o600)
    old = {"token key": f'token_key_file = "{run}/keys/card_token.key"',
           "vault key": f'key_file = "{run}/keys/vault.key"',
           "link certificate": f'cert = "{certs.nodes["sim-gate-1"].cert}"',
           "link key": f'key = "{certs.nodes["sim-gate-1"].key}"',
           "link CA": f'ca = "{certs.ca_cert}"'}[what]
    key, _, path = old.partition(" = ")
    config = node_config(tmp_path, (old, f'{key} = "{locked}/{Path(path.strip(chr(34))).name}"'), link=True)
    before = sorted((p.name, p.read_bytes()) for p in locked.iterdir())
    locked.chmod(0o600)  # no search permission: the node's user cannot reach what is inside
    proc = run_node(config, prefix=unprivileged())
    locked.chmod(0o700)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == "palmnode run: " + message.format(run=run, locked=locked)
    assert sorted((p.name, p.read_bytes()) for p in locked.iterdir()) == before


def test_a_vault_another_node_holds_exits_1_which_systemd_retries(tmp_path):
    """A vault held by another node (one stopping, say) may be free at the next start: not 78."""
    from palmnode import lockfile

    (tmp_path / "run").mkdir()
    lockfile.hold(tmp_path / "run" / "vault.db", RuntimeError, "held by the test")
    proc = run_node(node_config(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    vault = tmp_path / "run" / "vault.db"
    assert proc.stderr.splitlines()[-1].startswith(f"palmnode run: vault {vault}: vault {vault} is in use by "
                                                   "another node"), proc.stderr[-2000:]


def test_a_second_signal_while_the_node_stops_changes_nothing(tmp_path):
    """systemd's SIGTERM, then a Ctrl-C (or another SIGTERM) while the node stops: the stop goes on
    to its end (lights off, vault closed) and the exit is 0 with "node stopped" last. The board is
    made silent (the sim stopped) so the stop takes long enough to be interrupted."""
    port = free_port()
    sim = palmnode("sim", "--run-dir", str(tmp_path / "sim"), "--camera-port", str(port))
    node = None
    try:
        json.loads(sim.stdout.readline())
        config = node_config(tmp_path, ("8554", str(port)))
        node = palmnode("run", "--config", str(config))
        seen = []
        for line in node.stderr:  # until every device is open
            seen.append(line)
            if '"gate state"' in line and '"new": "ready"' in line:
                break
        sim.send_signal(signal.SIGSTOP)  # the illuminator's close now waits for a silent board
        node.send_signal(signal.SIGTERM)
        for line in node.stderr:
            seen.append(line)
            if '"node stopping"' in line:
                break
        node.send_signal(signal.SIGINT)
        node.send_signal(signal.SIGTERM)
        out, err = node.communicate(timeout=15)
        err = "".join(seen) + err
    finally:
        sim.send_signal(signal.SIGCONT)
        for p in (node, sim):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.communicate(timeout=15)
    assert node.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [l["msg"] for l in lines][-1] == "node stopped", err[-3000:]
    assert any(l["msg"] == "node already stopping" for l in lines), err[-3000:]


def pair_bytes(folder: Path, name: str) -> tuple[bytes, bytes]:
    return (folder / f"{name}.pem").read_bytes(), (folder / f"{name}.key").read_bytes()


def test_certs_run_again_keeps_every_existing_pair_unless_renewed(tmp_path, capsys):
    """Running `palmnode certs` again for a node already issued (to add another, or by mistake)
    re-issued its key and certificate, and the controller's: a gate holding the old files went on
    with a pair its folder no longer had. Now an existing pair is kept and stdout says so;
    --renew NAME re-issues that one alone."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pki = tmp_path / "pki"
    assert cli.main(["certs", "--out", str(pki), "--node", "gate-1"]) == 0
    capsys.readouterr()
    gate, controller = pair_bytes(pki, "gate-1"), pair_bytes(pki, "controller")

    assert cli.main(["certs", "--out", str(pki), "--node", "gate-1", "--node", "gate-2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert pair_bytes(pki, "gate-1") == gate and pair_bytes(pki, "controller") == controller
    kept = {line.split()[0] for line in out if "(kept: it exists" in line}
    assert kept == {"gate-1", "controller"}, out
    assert any(line.startswith("gate-1 ") and "--renew gate-1 issues a new pair" in line for line in out)
    assert (pki / "gate-2.pem").exists() and not any("kept" in l for l in out if l.startswith("gate-2 "))

    assert cli.main(["certs", "--out", str(pki), "--renew", "gate-1"]) == 0
    out = capsys.readouterr().out
    new = pair_bytes(pki, "gate-1")
    assert new[0] != gate[0] and new[1] != gate[1] and pair_bytes(pki, "controller") == controller
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "kept" not in lines["gate-1"] and "(kept: it exists" in lines["controller"], out
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate(new[0])
    cert.verify_directly_issued_by(ca)
    assert load_pem_private_key(new[1], None).public_key() == cert.public_key()


@pytest.mark.parametrize("damage, message", [
    ("no cert", "{pki}/gate-1.key is there but {pki}/gate-1.pem is not: restore gate-1.pem, "
                "or pass --renew gate-1 to issue a new pair"),
    ("no key", "{pki}/gate-1.pem is there but {pki}/gate-1.key is not: restore gate-1.key, "
               "or pass --renew gate-1 to issue a new pair"),
    ("other key", "{pki}/gate-1.key is not the key of {pki}/gate-1.pem: pass --renew gate-1 to issue a new pair"),
    ("not pem", "cannot read {pki}/gate-1.pem: "),
    ("new ca", "{pki}/gate-1.pem was not issued by the CA in {pki}: pass --renew gate-1 to issue a new pair"),
])
def test_certs_refuses_an_existing_pair_it_cannot_keep_and_writes_nothing(tmp_path, capsys, damage, message):
    pki = tmp_path / "pki"
    assert cli.main(["certs", "--out", str(pki), "--node", "gate-1"]) == 0
    if damage == "no cert":
        (pki / "gate-1.pem").unlink()
    elif damage == "no key":
        (pki / "gate-1.key").unlink()
    elif damage == "other key":
        (pki / "gate-1.key").write_bytes((pki / "controller.key").read_bytes())
    elif damage == "not pem":
        (pki / "gate-1.pem").write_text("not a certificate\n")
    else:  # the CA moved away to make a new one: the old leaves would not pass the new CA
        for name in ("ca.pem", "ca.key", "controller.pem", "controller.key"):
            (pki / name).unlink()
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    capsys.readouterr()
    assert cli.main(["certs", "--out", str(pki), "--node", "gate-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("palmnode certs: " + message.format(pki=pki)) and len(err.splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before
    assert cli.main(["certs", "--out", str(pki), "--renew", "gate-1"]) == 0
    assert "gate-1.pem" in {p.name for p in pki.iterdir()}


@pytest.mark.parametrize("args", [["--renew", "gate-7"], ["--node", "gate-7", "--renew", "gate-7"],
                                  ["--renew", "gate-1", "--renew", "gate-7"]])
def test_certs_renew_of_a_name_without_a_pair_is_refused_and_writes_nothing(tmp_path, capsys, args):
    """`--renew TYPO` quietly issued a new pair for a name that never existed (and `--out WRONG
    --renew gate-1` a whole new CA): now one line naming it and the pairs there, exit 1."""
    pki = tmp_path / "pki"
    assert cli.main(["certs", "--out", str(pki), "--node", "gate-1"]) == 0
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    capsys.readouterr()
    assert cli.main(["certs", "--out", str(pki), *args]) == 1
    assert capsys.readouterr().err == (f"palmnode certs: --renew gate-7: {pki} has no gate-7.pem or gate-7.key "
                                       "to renew (pairs there: controller, gate-1); --node gate-7 issues a "
                                       "first pair\n")
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before

    elsewhere = tmp_path / "elsewhere"
    assert cli.main(["certs", "--out", str(elsewhere), "--renew", "gate-1"]) == 1
    assert capsys.readouterr().err == (f"palmnode certs: --renew gate-1: {elsewhere} has no gate-1.pem or "
                                       "gate-1.key to renew (pairs there: none); --node gate-1 issues a first "
                                       "pair\n")
    assert not elsewhere.exists()


def test_certs_replaces_a_link_at_a_key_name_and_never_writes_through_it(tmp_path, capsys):
    """`palmnode certs` opened each file with O_TRUNC at its name: a symbolic link planted at a
    key's name had --renew (or a first issue) write the new key into the file it pointed to (root
    running it overwrote whatever that was), or create it. Each file is now written new beside
    its name, 0600 from the start, and renamed over it: the link is replaced, its target untouched."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pki, victim, absent = tmp_path / "pki", tmp_path / "victim", tmp_path / "absent"
    assert cli.main(["certs", "--out", str(pki), "--node", "gate-1"]) == 0
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    (pki / "gate-1.key").unlink()
    (pki / "gate-1.key").symlink_to(victim)
    (pki / "gate-2.key").symlink_to(absent)  # dangling: O_CREAT through it made the target
    assert cli.main(["certs", "--out", str(pki), "--renew", "gate-1", "--node", "gate-2"]) == 0, capsys.readouterr()
    assert victim.read_text() == "precious\n" and os.stat(victim).st_mode & 0o777 == 0o644
    assert not absent.exists() and not os.path.lexists(absent)
    for name in ("gate-1", "gate-2"):
        key = pki / f"{name}.key"
        assert not key.is_symlink() and os.stat(key).st_mode & 0o777 == 0o600
        cert = x509.load_pem_x509_certificate((pki / f"{name}.pem").read_bytes())
        assert load_pem_private_key(key.read_bytes(), None).public_key() == cert.public_key()
    assert sorted(p.name for p in pki.iterdir()) == ["ca.key", "ca.pem", "controller.key", "controller.pem",
                                                     "gate-1.key", "gate-1.pem", "gate-2.key", "gate-2.pem"]


def test_certs_tightens_an_existing_out_folder_to_0700(tmp_path):
    """An --out folder made beforehand (mkdir: 0755) kept its mode: every user could list it and
    read the certificates, and a later chmod of a key was all that stood between them and it. It
    is now made 0700, as a folder `palmnode certs` creates is."""
    pki = tmp_path / "pki"
    pki.mkdir()
    os.chmod(pki, 0o755)
    assert certs("--out", str(pki), "--node", "gate-1").returncode == 0
    assert os.stat(pki).st_mode & 0o7777 == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o703])
def test_certs_refuses_an_out_folder_others_may_write(tmp_path, mode):
    """In a folder others may write, the CA found there (reused to sign) or a link at a key's name
    may be theirs, and a key written there theirs to take: refused, nothing written or changed."""
    pki = tmp_path / "pki"
    pki.mkdir()
    os.chmod(pki, mode)
    proc = certs("--out", str(pki), "--node", "gate-1")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"palmnode certs: folder {pki} is writable by others (mode {mode:04o}): its files may "
                           "not be yours and the keys written there would not be private; choose an --out folder "
                           "only you can write\n")
    assert os.listdir(pki) == [] and os.stat(pki).st_mode & 0o7777 == mode


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_certs_refuses_an_out_folder_another_user_owns(tmp_path, capsys):
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o700)
    os.chown(pki, 65534, 65534)
    assert cli.main(["certs", "--out", str(pki), "--node", "gate-1"]) == 1
    assert capsys.readouterr().err == (f"palmnode certs: folder {pki} belongs to uid 65534, not to you (uid 0) nor "
                                       "root: its files may not be yours and the keys written there would not be "
                                       "private; choose an --out folder only you can write\n")
    assert os.listdir(pki) == []


def test_certs_renew_of_a_pair_it_cannot_write_is_a_one_line_error(tmp_path, capsys):
    pki = tmp_path / "pki"
    assert cli.main(["certs", "--out", str(pki), "--node", "gate-1"]) == 0
    (pki / "gate-1.key").unlink()
    (pki / "gate-1.key").mkdir()
    capsys.readouterr()
    assert cli.main(["certs", "--out", str(pki), "--renew", "gate-1"]) == 1
    assert capsys.readouterr().err == f"palmnode certs: cannot write {pki}/gate-1.key: Is a directory\n"


def test_an_installed_palmnode_runs_its_packaged_default_config(tmp_path):
    """`palmnode run` without --config read <package>/../config/sim.toml, which only a checkout has:
    installed from a wheel it exited 78 ('config file …/site-packages/config/sim.toml does not
    exist'). The build now ships config/sim.toml as palmnode/sim.toml; an installed palmnode (here:
    setup.py's build_py output on the path, as a wheel lays it out) runs that, its ../run/ paths
    naming ./run/ of the current folder, never a folder beside the package."""
    import shutil

    import palmnode as source_package

    root = Path(__file__).resolve().parent.parent
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(site)], cwd=root,
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert build.returncode == 0, build.stderr[-2000:]
    assert (site / "palmnode" / "sim.toml").read_bytes() == (root / "config" / "sim.toml").read_bytes()
    assert not (site / "config").exists()
    for native in Path(source_package.__file__).parent.glob("_native*.so"):  # built by the install
        shutil.copy(native, site / "palmnode")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def installed(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    where = installed("-c", "import json, palmnode.config as c; cfg = c.load_default(); print(json.dumps("
                            "[c.__file__, str(cfg.source), cfg.vault.path, cfg.repl.socket_path, cfg.controller.cert]))")
    assert where.returncode == 0, where.stderr[-2000:]
    module, source, vault, socket_path, cert = json.loads(where.stdout)
    assert module == str(site / "palmnode" / "config.py") and source == str(site / "palmnode" / "sim.toml")
    assert (vault, socket_path, cert) == (str(work / "run" / "vault.db"), str(work / "run" / "repl.sock"),
                                          str(work / "run" / "certs" / "sim-gate-1.pem"))
    # the command itself: the vault is made in ./run, then the link wants the certificates the
    # README's `palmnode certs --out run/certs --node sim-gate-1` makes
    proc = installed("-m", "palmnode", "run")
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1].startswith(
        f"palmnode run: link certificate {work}/run/certs/sim-gate-1.pem not found"), proc.stderr[-2000:]
    assert (work / "run" / "vault.db").is_file() and not (site / "run").exists()


@pytest.mark.parametrize("signum, moment", [
    (signal.SIGTERM, AS_SOON_AS_CAUGHT),
    (signal.SIGTERM, WHILE_IMPORTING),
    (signal.SIGINT, WHILE_IMPORTING),
])
def test_a_stop_asked_while_the_node_starts_ends_it_as_one_asked_later(tmp_path, signum, moment):
    """systemd's SIGTERM (or a Ctrl-C) in the first second of `palmnode run`, before trio ran and
    took the signals (the imports: numpy, OpenCV, the engine), killed the process by the signal
    (a Ctrl-C: a KeyboardInterrupt, exit 130): no "node stopping" or "node stopped", no exit 0.
    Now the signal is noted from the first thing `palmnode run` does and served once the node
    watches its signals: the same stop, lines and exit 0 as later, nothing half-made in the vault.
    The moments: the first at which the process takes SIGTERM (its SigCgt); numpy's library
    mapped (~0.7 s before trio ran on this machine, where a node without the fix died)."""
    from palmnode.vault import Vault, load_keys

    node = palmnode("run", "--config", str(node_config(tmp_path)))  # devices absent: LOST, reopened
    with reaped(node):
        reach_moment(node, moment)
        node.send_signal(signum)
        out, err = node.communicate(timeout=30)
    assert node.returncode == 0, (node.returncode, err[-3000:])
    assert "Traceback" not in err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [l["msg"] for l in lines][-1] == "node stopped", err[-3000:]
    assert [l["signal"] for l in lines if l["msg"] == "node stopping"] == [signal.Signals(signum).name]
    run = tmp_path / "run"
    if (run / "vault.db").exists():  # made whole or not at all, and free for the next start
        with Vault.open(run / "vault.db", load_keys(run / "keys" / "vault.key"), exclusive=True) as vault:
            assert vault.count() == 0


SERVING = "while it serves (its endpoints printed)"


@pytest.mark.parametrize("moment", [AS_SOON_AS_CAUGHT, WHILE_IMPORTING, SERVING])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_at_any_moment_of_palmnode_sim_is_a_clean_stop(tmp_path, signum, moment):
    """`palmnode sim` watched Ctrl-C and SIGTERM only once trio ran: a SIGTERM during its imports
    (numpy, OpenCV, the renderer) killed it by the signal, a Ctrl-C there was a KeyboardInterrupt
    traceback, and a Ctrl-C later exited 0 like a finished scenario. Now the signal is noted from
    its first moment (palmnode/stopsignals.py, as `palmnode run`) and served as its stop: the
    devices unplugged (no pty link left in the run folder, only its lock), one "sim stopped" log
    line naming the signal, exit 130 for Ctrl-C and 0 for SIGTERM, no traceback."""
    run_dir = tmp_path / "sim"
    sim = palmnode("sim", "--run-dir", str(run_dir), "--camera-port", "0")
    with reaped(sim):
        if moment == SERVING:
            assert json.loads(sim.stdout.readline())["proximity"] == str(run_dir / "proximity")
            assert (run_dir / "proximity").is_symlink()
        else:
            reach_moment(sim, moment)
        sim.send_signal(signum)
        out, err = sim.communicate(timeout=30)
    assert sim.returncode == (130 if signum == signal.SIGINT else 0), (sim.returncode, err[-3000:])
    assert "Traceback" not in err
    last = json.loads(err.splitlines()[-1])
    assert (last["msg"], last["signal"]) == ("sim stopped", signal.Signals(signum).name), err[-3000:]
    assert not run_dir.exists() or [p.name for p in run_dir.iterdir()] == [".lock"]


def test_a_metrics_port_the_nodes_user_may_not_bind_is_one_line_naming_it_and_why(tmp_path):
    """A [metrics] port below 1024 loads (root or CAP_NET_BIND_SERVICE may serve it), and an
    unprivileged node cannot bind it: that was one line, but it said "stop what holds it" (nothing
    holds it) and exited 1, so systemd started the node five more times to meet the same refusal.
    Now it names the port and the reason, and exits 78. Run without CAP_NET_BIND_SERVICE (as root:
    setpriv drops it, as the unit's empty CapabilityBoundingSet does)."""
    import shutil

    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start <= 1:
        pytest.skip(f"net.ipv4.ip_unprivileged_port_start is {start}: every port is bindable here")
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: the node could bind any port")
        prefix = ("setpriv", "--bounding-set=-net_bind_service", "--inh-caps=-all")
    port = start - 1
    config = node_config(tmp_path, ("enabled = false ", "enabled = true "), ("port = 9464", f"port = {port}"))
    proc = run_node(config, prefix=prefix)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"palmnode run: cannot serve metrics on 127.0.0.1:{port}: Permission denied: a port below {start} needs "
        f"root or CAP_NET_BIND_SERVICE, which the systemd unit does not give: set [metrics] port to {start} or "
        "above"), proc.stderr[-2000:]
