"""The real virtual gate and a node on it, with the gate's flows wired the way the node will.

Hands are rendered people (``palmnode.biometrics.synth`` seeds): ``hover`` holds one over the
emulated gate (proximity sensor and camera both see it) for a given session, so a person is
enrolled with session-1 hands and recognised with session-2 hands, as a month apart.
"""
from __future__ import annotations

import os

import attrs
import pytest

from palmnode.actors import GateState
from palmnode.biometrics import matcher
from palmnode.biometrics.gallery import Gallery
from palmnode.config import SHIPPED_CALIBRATION
from palmnode.demo import node_config
from palmnode.gate.capture import CapturePolicy, Capturer
from palmnode.gate.identify import IdentifyFlow, IdentifyPolicy
from palmnode.gate.modes import GateModes
from palmnode.gate.people import People
from palmnode.metrics import Metrics
from palmnode.node import Node
from palmnode.sim.gate import VirtualGate
from palmnode.vault import Vault, VaultKeys
from tests.conftest import wait_for

#: the decision threshold of these tests: the product's calibration (palmnode/biometrics/calibration.json, 8.9M
#: impostor pairs of rendered people scored as the gate scores) at this FMR per comparison
TARGET_FMR = 1e-4


@pytest.fixture(scope="session")
def threshold() -> float:
    """The fused-score threshold at TARGET_FMR (at 1e-3, from 60 rendered people, a stranger's
    best score fell in the near-miss band below it often enough to make "unknown" a coin toss)."""
    return matcher.Calibration.from_json(SHIPPED_CALIBRATION.read_text()).decision_threshold(TARGET_FMR)


@attrs.define
class Rig:
    gate: VirtualGate
    node: Node
    vault: Vault
    gallery: Gallery
    people: People
    capturer: Capturer
    metrics: Metrics
    modes: GateModes
    identify: IdentifyFlow | None = None


@pytest.fixture
async def rig(nursery, tmp_path, threshold) -> Rig:
    gate = VirtualGate(tmp_path / "sim", camera_port=0, seed=11)
    endpoints = await nursery.start(gate.run)
    node = Node(node_config(endpoints, tmp_path))
    await nursery.start(node.run)
    vault = Vault.open(tmp_path / "vault.db", VaultKeys.from_secret(os.urandom(32)), node_id="gate-1")
    gallery = Gallery()
    metrics = Metrics()
    people = People(vault, gallery, "gate-1", node.bus, metrics)
    capturer = Capturer(node.lights, node.frames, CapturePolicy())
    modes = GateModes(node.bus)
    await wait_for(lambda: node.health.gate is GateState.READY, timeout=5.0)
    yield Rig(gate, node, vault, gallery, people, capturer, metrics, modes)
    vault.close()


def product_vein_floor() -> float:
    """The vein check's floor a node sets (Calibration.vein_floor): the shipped calibration's vein
    tail at the default ``[gate] vein_fmr``."""
    from palmnode.config import GateConfig

    return matcher.Calibration.from_json(SHIPPED_CALIBRATION.read_text()).vein_floor(GateConfig().vein_fmr)


async def start_identify(rig: Rig, nursery, threshold: float, *, policy: dict | None = None,
                         **kw) -> IdentifyFlow:
    """The identify flow on the rig, as a node sets it up (the vein check included) but at the
    tests' ``threshold``; ``policy``: other IdentifyPolicy fields."""
    policy = {"vein_floor": product_vein_floor(), **(policy or {})}
    flow = IdentifyFlow(rig.node.bus, rig.capturer, rig.gallery, people=rig.people, modes=rig.modes,
                        metrics=rig.metrics, policy=IdentifyPolicy(threshold=threshold, **policy), **kw)
    await nursery.start(flow.run)
    rig.identify = flow
    return flow


async def hover(gate: VirtualGate, identity: int, *, session: int = 1, hand: str | None = "right",
                seconds: float = 0.8, distance_mm: float = 150.0, approach_s: float = 0.3) -> None:
    """A rendered person's hand over the gate (``VirtualGate.hover``: warmed renderer, drift)."""
    await gate.hover(distance_mm, seconds, approach_s=approach_s, identity=identity, session=session, hand=hand)
