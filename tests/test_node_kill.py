"""``kill -9`` of a node process in the middle of an enrolment: it restarts consistent.

The node runs as a real ``palmnode run`` process on a virtual gate and the reference controller
(both in this test's trio loop). The controller asks it to enrol a person, the card is tapped,
the palm hovers, and the node is SIGKILLed at seeded instants of that; restarted, it must come
back with a vault that passes SQLite's integrity check, every person whole (card, phone, three
templates) or absent, a gallery holding exactly the vault's palms (one search template each),
and it must enrol again.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from palmnode.controller.server import Controller, ControllerConfig, NodeUnavailable, RequestFailed
from palmnode.demo import card_number
from palmnode.link.certs import make_dev_pki
from palmnode.sim import scenario as sc
from palmnode.sim.gate import VirtualGate
from palmnode.vault import Vault, create_key_file, load_keys

ROOT = Path(__file__).resolve().parent.parent
NODE = "sim-gate-1"


def node_toml(tmp_path: Path, endpoints, port: int) -> Path:
    text = (ROOT / "config" / "sim.toml").read_text()
    text = text.replace("/tmp/palmnode-sim/proximity", endpoints.proximity)
    text = text.replace("/tmp/palmnode-sim/card_reader", endpoints.card_reader)
    text = text.replace("/tmp/palmnode-sim/illuminator", endpoints.illuminator)
    text = text.replace("http://127.0.0.1:8554/stream.mjpg", endpoints.camera)
    text = text.replace("../run/", str(tmp_path / "run") + "/").replace("port = 7443", f"port = {port}")
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def start_node(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "palmnode.cli", "run", "--config", str(config)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def check_vault(tmp_path: Path) -> tuple[int, int]:
    """Integrity, and every person whole; returns (people, palms)."""
    keys = load_keys(tmp_path / "run" / "keys" / "vault.key")
    with Vault.open(tmp_path / "run" / "vault.db", keys) as vault:
        assert vault.integrity_check() == "ok"
        people = list(vault.people())
        for person in people:
            assert person.card is not None and person.phone_digest is not None
            assert [p.palm for p in person.palms] == ["right"] and len(person.palms[0].templates) >= 3
        return len(people), sum(len(person.palms) for person in people)


async def until_status(controller: Controller, key: str, value: str) -> None:
    """Poll ``node.status`` until ``key`` reads ``value`` (a card tapped before the enrolment
    waits for one is, as on a real gate, not taken for it)."""
    with trio.fail_after(20):
        while (await controller.request(NODE, "node.status", {}))[key] != value:
            await trio.sleep(0.05)


@pytest.mark.parametrize("kill_after_s", [0.4, 1.1])
async def test_node_killed_mid_enrolment_restarts_consistent(nursery, tmp_path, kill_after_s):
    make_dev_pki(tmp_path / "certs", nodes=[NODE])
    (tmp_path / "run").mkdir()
    os.replace(tmp_path / "certs", tmp_path / "run" / "certs")
    create_key_file(tmp_path / "controller.key")
    controller = Controller(ControllerConfig.from_certs_dir(
        tmp_path / "run" / "certs", db_path=str(tmp_path / "controller.db"),
        key_file=str(tmp_path / "controller.key"), port=0))
    port = await nursery.start(controller.run)
    gate = VirtualGate(tmp_path / "sim", camera_port=0, seed=5)
    endpoints = await nursery.start(gate.run)
    config = node_toml(tmp_path, endpoints, port)
    rng = random.Random(kill_after_s)

    node = start_node(config)
    try:
        with trio.fail_after(20):
            await controller.wait_node(NODE)
        await until_status(controller, "gate", "ready")

        async def enrol() -> None:
            try:
                await controller.request(NODE, "enrol.begin", {"phone": "+4930555000042", "palms": ["right"]},
                                         timeout=30)
            except (NodeUnavailable, RequestFailed):
                pass  # killed before it answered

        async with trio.open_nursery() as n:
            n.start_soon(enrol)  # the card is tapped once the enrolment asks for it, then the palm comes
            await until_status(controller, "enrolment", "card")
            n.start_soon(gate.apply, sc.Card(at=0, kind="emv", pan=card_number(42), seconds=1.5))
            await trio.sleep(1.5)
            n.start_soon(lambda: gate.hover(150.0, 3.0, approach_s=0.3, identity=777, hand="right"))
            await trio.sleep(kill_after_s + rng.uniform(0.0, 0.3))
            node.send_signal(signal.SIGKILL)
            node.wait(timeout=10)
            n.cancel_scope.cancel()
        people, palms = check_vault(tmp_path)
        with trio.fail_after(10):
            await controller.wait_node(NODE, connected=False)  # the controller saw the connection die

        node = start_node(config)  # restarted: the same vault, gallery reloaded from it
        with trio.fail_after(20):
            await controller.wait_node(NODE)
        status = await controller.request(NODE, "node.status", {})
        assert status["people"] == people and status["gallery_palms"] == palms
        assert status["enrolment"] == "idle"  # the killed enrolment is not resumed
        await until_status(controller, "gate", "ready")

        async with trio.open_nursery() as n:  # and it still enrols (a new card: nothing half-written blocks it)
            async def tap_and_hover() -> None:
                await until_status(controller, "enrolment", "card")
                await gate.apply(sc.Card(at=0, kind="emv", pan=card_number(43), seconds=1.5))
                for _ in range(8):  # one capture per presentation (the node's bus is in another process)
                    await gate.hover(150.0, 1.2, approach_s=0.3, identity=778, hand="right")
            n.start_soon(tap_and_hover)
            answer = await controller.request(NODE, "enrol.begin", {"phone": "+4930555000043", "palms": ["right"]},
                                              timeout=30)
            n.cancel_scope.cancel()
        assert answer["person_id"]
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            _, err = node.communicate(timeout=15)
            assert node.returncode == 0, err.decode()[-2000:]
    after, _ = check_vault(tmp_path)
    assert after == people + 1
