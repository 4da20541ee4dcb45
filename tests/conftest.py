"""Shared fixtures: a virtual gate in a temporary folder, and a node wired to it."""
from __future__ import annotations

import pytest
import trio

from palmnode.demo import node_config
from palmnode.node import Node
from palmnode.sim.gate import VirtualGate


@pytest.fixture
async def gate(nursery, tmp_path):
    """A running virtual gate whose camera listens on a free loopback port."""
    gate = VirtualGate(tmp_path / "sim", camera_port=0, seed=7)
    gate.endpoints_ = await nursery.start(gate.run)
    return gate


@pytest.fixture
async def node(nursery, gate, tmp_path):
    """A node on the virtual gate, started (devices may still be opening)."""
    node = Node(node_config(gate.endpoints_, tmp_path))
    await nursery.start(node.run)
    return node


async def wait_for(predicate, timeout: float = 5.0, poll: float = 0.02):
    """Poll ``predicate`` (a cheap state check) until true; fail after ``timeout`` seconds."""
    try:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(poll)
    except trio.TooSlowError:
        raise AssertionError(f"still not true after {timeout} s: {_source(predicate)}") from None


def _source(fn) -> str:
    import inspect

    try:
        return inspect.getsource(fn).strip()
    except (OSError, TypeError):
        return repr(fn)
