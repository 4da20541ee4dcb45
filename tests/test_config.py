"""Config files: the shipped ones load; every mistake is one line naming file, key and fix."""
from pathlib import Path

import pytest

from palmnode import config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["sim.toml", "gate.example.toml"])
def test_shipped_configs_load(name):
    cfg = config.load(ROOT / "config" / name)
    assert cfg.illuminator.channels == {"ir": 9, "surface": 10}
    assert Path(cfg.card_reader.token_key_file).is_absolute()


def test_sim_config_points_at_the_virtual_gate():
    cfg = config.load(config.DEFAULT_CONFIG)
    assert cfg.proximity.port == "/tmp/palmnode-sim/proximity"
    assert cfg.camera.source == "http://127.0.0.1:8554/stream.mjpg"


@pytest.mark.parametrize("text, message", [
    ("[node\n", "not valid TOML"),
    ("[bogus]\n", "unknown section [bogus]"),
    ("[devices.lidar]\n", "unknown device [devices.lidar]"),
    ("[node]\nnode_id = 3\n", "node_id: expected a string, got 3"),
    ("[node]\ncolour = 'red'\n", "unknown key 'colour'"),
])
def test_mistakes_are_one_line_and_named(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_device_section_errors(tmp_path):
    base = (ROOT / "config" / "sim.toml").read_text()
    path = tmp_path / "c.toml"
    path.write_text(base.replace("frame_rate_hz = 100", "frame_rate_hz = -1"))
    with pytest.raises(config.ConfigError, match="frame_rate_hz: must not be negative"):
        config.load(path)
    path.write_text(base.replace("channels = { ir = 9, surface = 10 }", "channels = { ir = 'nine' }"))
    with pytest.raises(config.ConfigError, match="channels.ir: expected a pin number"):
        config.load(path)
    path.write_text(base.replace('[devices.camera]\nsource = "http://127.0.0.1:8554/stream.mjpg"\n', "[devices.camera]\n"))
    with pytest.raises(config.ConfigError, match=r"\[devices.camera\]: missing key 'source'"):
        config.load(path)
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(tmp_path / "none.toml")


@pytest.mark.parametrize("value, message", [
    ("0", "search_threads: must be 1 to 16, got 0"),
    ("17", "search_threads: must be 1 to 16, got 17"),
    ("'two'", "search_threads: expected an integer, got 'two'"),
    ("1.5", "search_threads: expected an integer, got 1.5"),
])
def test_gate_search_threads(tmp_path, value, message):
    base = (ROOT / "config" / "sim.toml").read_text()
    assert config.load(ROOT / "config" / "sim.toml").gate.search_threads == 1
    assert config.load(ROOT / "config" / "gate.example.toml").gate.search_threads == 2
    path = tmp_path / "c.toml"
    path.write_text(base.replace("search_threads = 1", f"search_threads = {value}"))
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)
