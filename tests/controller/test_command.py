"""``palmnode controller`` as a real process: JSON line when listening, serves TLS, stops on signals."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys

import pytest
import trio

from palmnode.controller.command import (
    add_arguments,
    config_from_args,
    listen_address,
    main,
)
from palmnode.link.certs import make_dev_pki
from tests.controller.harness import ChannelNode

COMMAND = [sys.executable, "-m", "palmnode.controller"]


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    with trio.fail_after(20):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serves_then_stops_cleanly_on_signal(nursery, tmp_path, signum):
    pki = make_dev_pki(tmp_path / "certs", nodes=["gate-a"])
    process = await trio.lowlevel.open_process(
        [*COMMAND, "--listen", "127.0.0.1:0", "--certs", str(pki.folder), "--db", str(tmp_path / "c.db"),
         "--key-file", str(tmp_path / "c.key")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        line = await read_line(process.stdout)
        address = json.loads(line)
        assert address["host"] == "127.0.0.1" and address["listen"] == f"127.0.0.1:{address['port']}"
        node = await ChannelNode.connect(nursery, address["port"], pki, "gate-a")
        ack = await node.event("unknown", {"latency_ms": 80.0, "reason": "no match"})
        assert ack.key == "gate-a:100"
        process.send_signal(signum)
        with trio.fail_after(10):
            assert await process.wait() == 0
        await node.wait_until(lambda: node.closed is not None)
        assert "controller stopping" in node.closed
        assert (tmp_path / "c.key").stat().st_mode & 0o777 == 0o600
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
def keep_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.mark.parametrize("extra, message", [
    (["--certs", "missing"], "controller certificate missing/controller.pem not found"),
    (["--key-file", "nokey.hex", "--db", "exists.db"], "controller key file nokey.hex is missing"),
    (["--db", "exists.db"], "no controller key: set PALMNODE_CONTROLLER_KEY"),
])
def test_setup_errors_are_one_line(tmp_path, monkeypatch, capsys, keep_logging, extra, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PALMNODE_CONTROLLER_KEY", raising=False)
    make_dev_pki(tmp_path / "certs", nodes=[])
    (tmp_path / "exists.db").write_bytes(b"")  # an existing database never gets a new key made for it
    args = add_arguments(argparse.ArgumentParser()).parse_args(["--listen", "127.0.0.1:0", *extra])
    assert main(args) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("palmnode controller: ") and message in lines[0]


def test_arguments():
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--listen", "[::1]:0", "--certs", "pki", "--charge-limit-cents", "500",
                              "--event-retention-days", "7.5"])
    config = config_from_args(args)
    assert (config.host, config.port, config.charge_limit_cents) == ("::1", 0, 500)
    assert config.event_retention_days == 7.5
    assert config_from_args(parser.parse_args([])).event_retention_days == 90
    assert (config.ca_file, config.cert_file, config.cert_key_file) == ("pki/ca.pem", "pki/controller.pem",
                                                                        "pki/controller.key")
    assert config.key_file is None
    assert listen_address("7443") == ("127.0.0.1", 7443) and listen_address(":0") == ("127.0.0.1", 0)
    for bad in ("host:port", "1.2.3.4:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            listen_address(bad)
