"""The debug capture folder: off, no palm image reaches the disk; on, every lit frame, bounded and private."""
from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import attrs
import cv2
import numpy as np
import pytest
import trio

from palmnode.actors import GateState
from palmnode.config import ConfigError, DebugConfig, from_dict
from palmnode.demo import node_config
from palmnode.gate.debug_captures import DebugCaptures
from palmnode.gate.events import Decision
from palmnode.node import Node
from tests.conftest import wait_for


def images_under(folder) -> list:
    return [p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".npy")]


def test_frames_are_written_lossless_private_and_bounded(tmp_path):
    folder = tmp_path / "captures"
    folder.mkdir(mode=0o755)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64), dtype=np.uint8) for _ in range(5)]
    debug = DebugCaptures(folder, max_files=3)
    for i, frame in enumerate(frames):
        debug.offer("ir" if i % 2 == 0 else "surface", frame, 1_000.0 + i)
    debug.close()
    kept = sorted(folder.iterdir())
    assert len(kept) == 3 and debug.written == 5 and debug.dropped == 0   # the oldest two removed
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700                  # tightened from 0755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    assert [p.name.split("-")[-1] for p in kept] == ["ir.png", "surface.png", "ir.png"]
    assert kept[0].name.startswith("19700101T001642.")                   # the frame's time, UTC
    for path, frame in zip(kept, frames[2:]):
        assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), frame)
    with pytest.raises(ValueError, match="at least 1"):
        DebugCaptures(folder, max_files=0)


@pytest.mark.parametrize("umask", [0o000, 0o277], ids=["umask000", "umask277"])
def test_the_folder_and_frames_are_private_whatever_the_umask(tmp_path, umask):
    """The folder is 0700 and each frame 0600 as documented under any umask: a permissive one (000)
    does not open them, a strict one (277: the frames came out 0400) does not change them either."""
    folder = tmp_path / "a" / "captures"
    before = os.umask(umask)
    try:
        debug = DebugCaptures(folder, max_files=5)
        debug.offer("ir", np.zeros((8, 8), np.uint8), 1_000.0)
        debug.close()
    finally:
        os.umask(before)
    assert debug.written == 1 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()] == [0o600]


def test_config_section_is_off_by_default_and_checked(tmp_path):
    base = tomllib.loads((Path(__file__).resolve().parents[2] / "config" / "sim.toml").read_text())
    assert from_dict(base).debug == DebugConfig(capture_dir="", capture_max_files=500)
    on = from_dict({**base, "debug": {"capture_dir": "caps"}}, base=tmp_path)
    assert on.debug.capture_dir == str(tmp_path / "caps")
    with pytest.raises(ConfigError, match=r"\[debug\]: capture_max_files must be 1 to 10000 \(frames kept in "
                                          r"the debug capture folder\), got 0"):
        from_dict({**base, "debug": {"capture_dir": "caps", "capture_max_files": 0}})
    with pytest.raises(ConfigError, match="unknown key 'folder'"):
        from_dict({**base, "debug": {"folder": "caps"}})


async def identify_once(nursery, gate, tmp_path, **debug) -> Node:
    config = node_config(gate.endpoints_, tmp_path / "node", vault=True)
    node = Node(attrs.evolve(config, debug=DebugConfig(**debug)) if debug else config)
    await nursery.start(node.run)
    await wait_for(lambda: node.health is not None and node.health.gate is GateState.READY, timeout=10.0)
    async with node.bus.subscribe(Decision) as decisions:
        nursery.start_soon(lambda: gate.hover(150.0, 1.5, approach_s=0.3, identity=4_343, hand="right"))
        with trio.fail_after(10):
            await decisions.receive()
    return node


async def test_off_no_palm_image_reaches_the_disk(nursery, gate, tmp_path):
    node = await identify_once(nursery, gate, tmp_path)
    assert node.debug_captures is None and node.identify.capturer.debug is None
    assert (await node.status())["debug_capture_dir"] is None
    assert images_under(tmp_path / "node") == []


async def test_on_every_lit_frame_is_written(nursery, gate, tmp_path):
    node = await identify_once(nursery, gate, tmp_path, capture_dir=str(tmp_path / "debug"), capture_max_files=50)
    await wait_for(lambda: node.debug_captures.written >= 2, timeout=5.0)
    assert (await node.status())["debug_capture_dir"] == str(tmp_path / "debug")  # shown to the controller
    names = [p.name for p in images_under(tmp_path / "debug")]
    assert any(n.endswith("-ir.png") for n in names) and any(n.endswith("-surface.png") for n in names)
