"""Config files: the shipped ones load; every mistake is one line naming file, key and fix."""
import math
from pathlib import Path

import pytest

from palmnode import config
from palmnode.biometrics import quality, roi

ROOT = Path(__file__).resolve().parent.parent


def refusal(path: Path, text: str, load=config.load) -> str:
    """The one-line ConfigError ``load`` gives for ``text`` written at ``path``."""
    path.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        load(path)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("name", ["sim.toml", "gate.example.toml"])
def test_shipped_configs_load(name):
    cfg = config.load(ROOT / "config" / name)
    assert cfg.illuminator.channels == {"ir": 9, "surface": 10}
    assert Path(cfg.card_reader.token_key_file).is_absolute()


def test_the_default_config_of_a_checkout_is_config_sim_toml():
    """A checkout (an editable install) has no packaged copy: config/sim.toml itself, its paths
    relative to config/ (an installed palmnode: tests/test_cli.py, the packaged default config)."""
    assert not config.PACKAGED_CONFIG.exists()
    cfg = config.load_default()
    assert cfg == config.load(ROOT / "config" / "sim.toml") and cfg.source == ROOT / "config" / "sim.toml"
    assert cfg.vault.path == str(ROOT / "run" / "vault.db")


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
    assert message in refusal(tmp_path / "bad.toml", text)


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


def assert_refused_in_sim_toml(tmp_path, old, new, message):
    """config/sim.toml with ``old`` replaced by ``new`` is refused, and the refusal says ``message``."""
    base = (ROOT / "config" / "sim.toml").read_text()
    assert old in base
    assert message in refusal(tmp_path / "c.toml", base.replace(old, new, 1))


@pytest.mark.parametrize("old, new, message", [
    # values a device or the runtime refuses only once running: the node would restart the device
    # (and the devices beside it) in a loop, or stop with a traceback
    ("deadman_ms = 1000 ", "deadman_ms = 20000 ", "[devices.illuminator]: illuminator deadman_ms must be 0..16383, got 20000"),
    ("sampling_interval_ms = 250 ", "sampling_interval_ms = 0 ", "illuminator sampling_interval_ms must be 1..16383, got 0"),
    ("max_temperature_c = 70.0", "max_temperature_c = nan", "[devices.illuminator] max_temperature_c: must be a finite number, got nan"),
    ("channels = { ir = 9, surface = 10 }", "channels = {}", "illuminator needs at least one channel"),
    ("channels = { ir = 9, surface = 10 }", "channels = { ir = 9, surface = 9 }", "illuminator channels share a pin"),
    ("channels = { ir = 9, surface = 10 }", "channels = { ir = 9, uv = 10 }", "channels: the gate lights ir and surface, missing 'surface'"),
    ("frame_rate_hz = 100", "frame_rate_hz = 0", "[devices.proximity]: frame_rate_hz must be 1..1000, got 0"),
    ("frame_rate_hz = 100", "frame_rate_hz = 5000", "frame_rate_hz must be 1..1000, got 5000"),
    ('source = "http://127.0.0.1:8554/stream.mjpg"', 'source = ""', "[devices.camera]: camera source '' is not a device index"),
    ('source = "http://127.0.0.1:8554/stream.mjpg"', 'source = "cam0"', "camera source 'cam0' is not a device index"),
    ("period_s = 30.0", "period_s = 0", "[supervision]: period_s must be greater than 0, got 0"),
    ('log_level = "info"', 'log_level = "verbose"', "[node]: log_level must be one of debug, info, warning, error, got 'verbose'"),
    ("port = 9464", "port = 70000", "[metrics]: port must be 1..65535, got 70000"),
    ("port = 7443", "port = 0", "[controller]: port must be 1..65535, got 0"),
])
def test_values_a_device_or_the_runtime_would_refuse_are_refused_at_load(tmp_path, old, new, message):
    assert_refused_in_sim_toml(tmp_path, old, new, message)


def test_a_disarmed_deadman_timer_is_refused(tmp_path):
    # the driver accepts 0 (no dead-man), but then a killed or hung node leaves the lights on
    base = (ROOT / "config" / "sim.toml").read_text()
    assert "deadman_ms = 1000 " in base
    assert "[devices.illuminator]: deadman_ms must be greater than 0, got 0" in refusal(
        tmp_path / "c.toml", base.replace("deadman_ms = 1000 ", "deadman_ms = 0 ", 1))


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
    assert message in refusal(tmp_path / "c.toml", base.replace("search_threads = 1", f"search_threads = {value}"))


def test_capture_thresholds_reach_the_node_config(tmp_path):
    base = (ROOT / "config" / "sim.toml").read_text()
    assert config.load(ROOT / "config" / "sim.toml").roi is roi.DEFAULT_LIMITS
    path = tmp_path / "c.toml"
    path.write_text(base + "\n[quality]\nmin_score = 0.6\nclip_level = 240\n"
                    "\n[roi]\nmin_palm_diameter = 0.2\nmax_palm_diameter = 0.9\n")
    cfg = config.load(path)
    assert (cfg.quality.min_score, cfg.quality.clip_level, cfg.quality.min_sharpness) == (0.6, 240, 0.25)
    assert (cfg.roi.min_palm_diameter, cfg.roi.max_palm_diameter) == (0.2, 0.9)
    assert cfg.roi.valley_side == roi.DEFAULT_LIMITS.valley_side
    # the same tables alone, as palmnode eval --config reads them
    alone = tmp_path / "t.toml"
    alone.write_text("[roi]\nmax_hand_area = 0.8\n")
    policy, limits = config.capture_thresholds(alone)
    assert policy == quality.QualityPolicy() and limits.max_hand_area == 0.8


@pytest.mark.parametrize("table, message", [
    ("[quality]\nmin_score = 1.5\n", "[quality]: min_score must be 0 to 1, got 1.5"),
    ("[quality]\nexposure_good_low = 200.0\n", "[quality]: exposure_good_low (200.0) must be at most "
                                               "exposure_good_high (170.0): exposure_bad_low < exposure_good_low "
                                               "<= exposure_good_high < exposure_bad_high"),
    ("[quality]\nclip_level = 250.5\n", "[quality] clip_level: expected an integer, got 250.5"),
    ("[quality]\nsharpness = 1\n", "[quality]: unknown key 'sharpness'"),
    ("[roi]\nmin_palm_diameter = 0.8\n", "[roi]: min_palm_diameter (0.8) must be below max_palm_diameter (0.75)"),
    ("[roi]\nmax_hand_area = 'big'\n", "[roi] max_hand_area: expected a number, got 'big'"),
    ("[roi]\nvalley_side = 1.5\n", "[roi]: unknown key 'valley_side' (known: min_contrast, "),
    ("[roi]\nmin_contrast = -3\n", "[roi] min_contrast: must not be negative"),
    ("roi = 3\n", "[roi]: must be a table"),
])
def test_capture_threshold_mistakes(tmp_path, table, message):
    assert message in refusal(tmp_path / "c.toml", table + (ROOT / "config" / "sim.toml").read_text())
    assert message in refusal(tmp_path / "t.toml", table, config.capture_thresholds)


#: a value out of range for every numeric key of every table (``[gate] amount_cents``: in payment mode)
BAD_VALUES = {
    "devices.proximity": {"baudrate": 0, "frame_rate_hz": 1001, "read_interval_s": -0.5, "stall_timeout_s": 0},
    "devices.card_reader": {"pause_after_card_s": -1},
    "devices.illuminator": {"thermistor_pin": 16, "deadman_ms": 16384, "max_temperature_c": math.nan,
                            "sampling_interval_ms": 0, "baudrate": 0},
    "devices.camera": {"width": 0, "height": -480, "fps": 0, "exposure": math.inf, "gain": math.nan},
    "supervision": {"intensity": -1, "period_s": 0, "backoff_initial_s": 0, "backoff_max_s": 0.05},
    "gate": {"amount_cents": 0, "target_fmr": 1.5, "vein_fmr": -0.001, "search_threads": 17},
    "controller": {"port": 70000},
    "repl": {"max_sessions": 65, "idle_timeout_s": 0},
    "metrics": {"port": 0},
    "debug": {"capture_max_files": 0},
    "quality": {"exposure_bad_low": 80, "exposure_good_low": 200, "exposure_good_high": 60,
                "exposure_bad_high": 300, "clip_level": 256, "edge_width_sharp": 0, "edge_width_blurred": 5,
                "weight_sharpness": -1, "weight_exposure": math.nan, "weight_completeness": -0.5,
                "min_score": 1.5, "min_sharpness": 2, "min_exposure": math.nan, "min_completeness": 1.01},
    "roi": {"min_contrast": 300, "min_palm_grey": 230, "max_palm_grey": 256, "max_clipped": 1.2,
            "min_hand_area": 0, "max_hand_area": 0.02, "cut_hand_too_close": 2, "min_palm_diameter": 0.8,
            "max_palm_diameter": 0.1, "max_edge_width": 0},
}


def numeric_keys() -> set[tuple[str, str]]:
    import attrs

    tables = {**config._SECTIONS, "quality": quality.QualityPolicy}
    keys = {(name, f.name) for name, cls in tables.items() for f in attrs.fields(cls)
            if str(f.type) in ("int", "float", "int | None", "float | None")}
    return keys | {("roi", key) for key in roi.OPERATOR_LIMITS}


def test_the_bad_value_table_covers_every_numeric_key():
    assert {(table, key) for table, keys in BAD_VALUES.items() for key in keys} == numeric_keys()


@pytest.mark.parametrize("table, key, value", [(t, k, v) for t, keys in BAD_VALUES.items() for k, v in keys.items()])
def test_every_numeric_key_with_a_bad_value_is_named_with_its_value(tmp_path, table, key, value):
    """A [quality] value out of range said what the rule was but not which key or value broke it
    ('[quality]: min_score, min_sharpness, min_exposure and min_completeness must be 0 to 1'),
    as did [roi] and [devices.illuminator] sampling_interval_ms. Every refusal names the table,
    the key, the value and what is allowed."""
    import tomllib

    raw = tomllib.loads((ROOT / "config" / "sim.toml").read_text())
    section = raw["devices"][table.split(".")[1]] if table.startswith("devices.") else raw.setdefault(table, {})
    section[key] = value
    if key == "amount_cents":
        section.update(mode="payment", currency="EUR")
    source = tmp_path / "c.toml"
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(raw, base=ROOT / "config", source=source)
    message = str(info.value)
    assert message.startswith(f"{source} [{table}]") and "\n" not in message, message
    assert key in message and repr(value) in message, message
    assert any(word in message for word in (" must ", " needs ", "expected")), message


#: a value too large for every numeric key of every table: typos that loaded and failed only once
#: running (a port that never opens at 1e9 baud, a camera frame no engine takes, a sleep of years)
TOO_LARGE = {
    "devices.proximity": {"baudrate": 1_000_000_000, "frame_rate_hz": 100_000, "read_interval_s": 1e9,
                          "stall_timeout_s": 86400},
    "devices.card_reader": {"pause_after_card_s": 3600},
    "devices.illuminator": {"thermistor_pin": 99, "deadman_ms": 60_000, "max_temperature_c": 500.0,
                            "sampling_interval_ms": 10_000, "baudrate": 1_000_000_000},
    "devices.camera": {"width": 1_000_000_000, "height": 1_000_000_000, "fps": 100_000, "exposure": 1e9,
                       "gain": 1e9},
    "supervision": {"intensity": 1_000_000_000, "period_s": 1e9, "backoff_initial_s": 1e9, "backoff_max_s": 1e9},
    "gate": {"amount_cents": 2**63, "target_fmr": 0.01, "vein_fmr": 0.01, "search_threads": 1000},
    "controller": {"port": 70000},
    "repl": {"max_sessions": 100_000, "idle_timeout_s": 1e9},
    "metrics": {"port": 65536},
    "debug": {"capture_max_files": 10**9},
    "quality": {"exposure_bad_low": 1000, "exposure_good_low": 256, "exposure_good_high": 256,
                "exposure_bad_high": 1e9, "clip_level": 256, "edge_width_sharp": 1e9, "edge_width_blurred": 1e9,
                "weight_sharpness": 1e300, "weight_exposure": 1e9, "weight_completeness": 1e9,
                "min_score": 2, "min_sharpness": 2, "min_exposure": 2, "min_completeness": 2},
    "roi": {"min_contrast": 1e9, "min_palm_grey": 256, "max_palm_grey": 1e9, "max_clipped": 2,
            "min_hand_area": 2, "max_hand_area": 2, "cut_hand_too_close": 2, "min_palm_diameter": 1.5,
            "max_palm_diameter": 1e9, "max_edge_width": 1e9},
}


def test_the_too_large_table_covers_every_numeric_key():
    """A new numeric key fails here until it has a too-large value below, which fails in the next
    test until the key has an upper bound."""
    assert {(table, key) for table, keys in TOO_LARGE.items() for key in keys} == numeric_keys()


@pytest.mark.parametrize("table, key, value", [(t, k, v) for t, keys in TOO_LARGE.items() for k, v in keys.items()])
def test_every_numeric_key_with_a_too_large_value_is_refused_naming_it(tmp_path, table, key, value):
    """Absurd non-negative values loaded (baudrate = 1000000000, a camera width of 1000000000,
    read_interval_s = 1e9, ...) and failed only once running: a device that never opened, a node
    that slept for years. Each is refused at load in one line naming the table, the key, the value
    and what is allowed."""
    test_every_numeric_key_with_a_bad_value_is_named_with_its_value(tmp_path, table, key, value)


@pytest.mark.parametrize("old, new, message", [
    # the lower ends and the rules between keys: values that load and cannot work either
    ("frame_rate_hz = 100", "frame_rate_hz = 100\nbaudrate = 4800",
     "[devices.proximity]: baudrate must be 9600 to 921600 (the TFmini's UART rates), got 4800"),
    ("frame_rate_hz = 100", "frame_rate_hz = 100\nread_interval_s = 0.3",
     "[devices.proximity]: read_interval_s must be 0 to 0.25 (seconds between reads of the port; 0 reads "
     "each byte as it comes), got 0.3"),
    ("frame_rate_hz = 100", "frame_rate_hz = 100\nstall_timeout_s = 0.015",
     "[devices.proximity]: stall_timeout_s must be 0.02 to 10 (seconds without a frame before the sensor is "
     "reset; at least two frame periods at frame_rate_hz 100), got 0.015"),
    ("frame_rate_hz = 100", "frame_rate_hz = 100\nread_interval_s = 0.2\nstall_timeout_s = 0.2",
     "[devices.proximity]: read_interval_s (0.2) must be below stall_timeout_s (0.2): a read that late finds "
     "the sensor stalled"),
    # a line too slow for the frames asked for: loaded, and the driver fell behind the sensor unsaid
    ("frame_rate_hz = 100", "frame_rate_hz = 107\nbaudrate = 9600",
     "[devices.proximity]: baudrate 9600 is too slow for frame_rate_hz 107: 107 of the TFmini's 9-byte frames "
     "a second need 9630 baud (10 bits a byte on the line); raise baudrate to at least 9630 or lower "
     "frame_rate_hz to at most 106"),
    ("frame_rate_hz = 100", "frame_rate_hz = 1000\nbaudrate = 57600",
     "[devices.proximity]: baudrate 57600 is too slow for frame_rate_hz 1000: 1000 of the TFmini's 9-byte "
     "frames a second need 90000 baud (10 bits a byte on the line); raise baudrate to at least 90000 or lower "
     "frame_rate_hz to at most 640"),
    ("max_temperature_c = 70.0", "max_temperature_c = 25.0",
     "[devices.illuminator]: max_temperature_c must be 40 to 80 (°C; above the board's own cutoff it never "
     "acts, below it a warm board never lights), got 25.0"),
    ("sampling_interval_ms = 250 ", "sampling_interval_ms = 5000 ",
     "[devices.illuminator]: sampling_interval_ms must be 1 to 1000 (ms between thermistor reports; at most "
     "half the driver's timeout, after which a silent board is reset), got 5000"),
    ("width = 640", "width = 8",
     "[devices.camera]: width must be 16 to 11585 (px; frames the engine takes: a side of at least 16 px, at "
     "most 16777216 pixels, at most 8:1), got 8"),
    ("width = 640\nheight = 480", "width = 8000\nheight = 8000",
     "[devices.camera]: width (8000) x height (8000) must be at most 16777216 pixels (the engine refuses "
     "larger frames), got 64000000"),
    ("width = 640\nheight = 480", "width = 4000\nheight = 400",
     "[devices.camera]: width (4000) and height (400) must be at most 8:1 (the engine refuses more elongated "
     "frames)"),
    ("fps = 30", "fps = 30\nexposure = -100",
     "[devices.camera]: exposure must be -20 to 20000 (log2 seconds, or 100 µs units up to the driver's 2 s "
     "read timeout), got -100"),
    ("fps = 30", "fps = 30\ngain = -1", "[devices.camera] gain: must not be negative, got -1"),
    ('target_fmr = 1e-9 ', 'target_fmr = 1e-20 ',
     "[gate] target_fmr: must be 1e-15 to 0.001 (false matches per comparison), got 1e-20"),
])
def test_lower_bounds_and_rules_between_keys(tmp_path, old, new, message):
    assert_refused_in_sim_toml(tmp_path, old, new, message)


def test_the_bounds_are_inclusive(tmp_path):
    """The edge values themselves load: the largest camera frame, the slowest and fastest lines."""
    base = (ROOT / "config" / "sim.toml").read_text()
    path = tmp_path / "c.toml"
    path.write_text(base.replace("width = 640\nheight = 480\nfps = 30",
                                 "width = 4096\nheight = 4096\nfps = 240\nexposure = 20000\ngain = 65535")
                    .replace("frame_rate_hz = 100", "frame_rate_hz = 100\nbaudrate = 921600\nread_interval_s = 0.25")
                    .replace("max_temperature_c = 70.0", "max_temperature_c = 80.0\nbaudrate = 2000000")
                    .replace("sampling_interval_ms = 250 ", "sampling_interval_ms = 1000 ")
                    .replace("backoff_max_s = 1.0", "backoff_max_s = 60")
                    + "\n[debug]\ncapture_max_files = 10000\n[roi]\nmax_palm_diameter = 1\n")
    cfg = config.load(path)
    assert (cfg.camera.width, cfg.camera.height, cfg.camera.gain) == (4096, 4096, 65535)
    assert (cfg.proximity.baudrate, cfg.illuminator.baudrate, cfg.illuminator.max_temperature_c) == (921600, 2_000_000, 80)
    assert (cfg.debug.capture_max_files, cfg.roi.max_palm_diameter) == (10_000, 1)


@pytest.mark.parametrize("baudrate, frame_rate_hz", [(9600, 106), (90000, 1000), (115200, 1000), (9600, 100)])
def test_a_line_just_fast_enough_for_the_proximity_frames_loads(tmp_path, baudrate, frame_rate_hz):
    """The edge of the rule above: frame_rate_hz x 90 bits (9 bytes, 10 bits each) = baudrate loads."""
    path = tmp_path / "c.toml"
    path.write_text((ROOT / "config" / "sim.toml").read_text().replace(
        "frame_rate_hz = 100", f"frame_rate_hz = {frame_rate_hz}\nbaudrate = {baudrate}"))
    cfg = config.load(path)
    assert (cfg.proximity.baudrate, cfg.proximity.frame_rate_hz) == (baudrate, frame_rate_hz)


def test_a_thresholds_file_needs_a_table(tmp_path):
    assert "no [quality] or [roi] table" in refusal(tmp_path / "t.toml", "[gate]\nmode = 'entry'\n",
                                                    config.capture_thresholds)


@pytest.mark.parametrize("old, new, message", [
    # an empty path used to pass and then meant "." (the node's working folder) or nothing at all:
    # a vault at ".", a REPL lock file beside the working folder, the key read from the environment
    ('path = "../run/vault.db"', 'path = ""', "[vault] path: must not be empty"),
    ('key_file = "../run/keys/vault.key"', 'key_file = ""', "[vault] key_file: must not be empty"),
    ('socket_path = "../run/repl.sock"', 'socket_path = ""', "[repl] socket_path: must not be empty"),
    ('token_key_file = "../run/keys/card_token.key"', 'token_key_file = ""',
     "[devices.card_reader] token_key_file: must not be empty"),
    ('port = "/tmp/palmnode-sim/proximity"', 'port = ""', "[devices.proximity] port: must not be empty"),
    ('search_threads = 1', 'search_threads = 1\ncalibration = ""', "[gate] calibration: must not be empty"),
    ('vein_fmr = 5e-4', 'vein_fmr = 0.5', "[gate] vein_fmr: must be 1e-06 to 0.001 (vein false matches per comparison), "
                                          "or 0 for no vein check, got 0.5"),
    ('vein_fmr = 5e-4', 'vein_fmr = nan', "[gate] vein_fmr: must be a finite number, got nan"),
    # nan or inf passed every check and reached a sleep or a backoff: an actor that crashes or never wakes
    ("frame_rate_hz = 100", "frame_rate_hz = 100\nread_interval_s = nan",
     "[devices.proximity] read_interval_s: must be a finite number, got nan"),
    ("frame_rate_hz = 100", "frame_rate_hz = 100\nstall_timeout_s = inf",
     "[devices.proximity] stall_timeout_s: must be a finite number, got inf"),
    ('token_key_file = "../run/keys/card_token.key"',
     'token_key_file = "../run/keys/card_token.key"\npause_after_card_s = inf',
     "[devices.card_reader] pause_after_card_s: must be a finite number, got inf"),
    ("backoff_max_s = 1.0", "backoff_max_s = nan", "[supervision] backoff_max_s: must be a finite number, got nan"),
    ("period_s = 30.0", "period_s = inf", "[supervision] period_s: must be a finite number, got inf"),
    ("fps = 30", "fps = 30\ngain = nan", "[devices.camera] gain: must be a finite number, got nan"),
])
def test_empty_paths_and_non_finite_numbers_are_refused_at_load(tmp_path, old, new, message):
    base = (ROOT / "config" / "sim.toml").read_text()
    assert old in base
    assert message in refusal(tmp_path / "c.toml", base.replace(old, new, 1))


def test_an_empty_capture_dir_still_means_off(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text((ROOT / "config" / "sim.toml").read_text() + '\n[debug]\ncapture_dir = ""\n')
    assert config.load(path).debug.capture_dir == ""


def test_repl_idle_timeout(tmp_path):
    """Absent: 15 minutes; the example gate config sets it; a value is seconds, above 0."""
    base = (ROOT / "config" / "sim.toml").read_text()
    assert config.load(ROOT / "config" / "sim.toml").repl.idle_timeout_s == 900
    assert config.load(ROOT / "config" / "gate.example.toml").repl.idle_timeout_s == 900
    path = tmp_path / "c.toml"
    path.write_text(base.replace("python_console = false", "python_console = false\nidle_timeout_s = 120", 1))
    assert config.load(path).repl.idle_timeout_s == 120


@pytest.mark.parametrize("value, message", [
    # 0 would close every session at once: there is no "never" (a running follow is not idle)
    ("0", "[repl]: idle_timeout_s must be greater than 0 (seconds without a command before a session is "
          "closed; a larger value keeps idle sessions longer), got 0"),
    ("-5", "[repl] idle_timeout_s: must not be negative, got -5"),
    ("nan", "[repl] idle_timeout_s: must be a finite number, got nan"),
    ("inf", "[repl] idle_timeout_s: must be a finite number, got inf"),
    ("'15m'", "[repl] idle_timeout_s: expected a number, got '15m'"),
    ("true", "[repl] idle_timeout_s: expected a number, got True"),
])
def test_repl_idle_timeout_mistakes(tmp_path, value, message):
    base = (ROOT / "config" / "sim.toml").read_text()
    assert "python_console = false" in base
    assert message in refusal(tmp_path / "c.toml", base.replace(
        "python_console = false", f"python_console = false\nidle_timeout_s = {value}", 1))


@pytest.mark.parametrize("value, message", [
    ("0", "[repl]: max_sessions must be 1 to 64 (REPL clients served at once), got 0"),
    ("65", "[repl]: max_sessions must be 1 to 64 (REPL clients served at once), got 65"),
    ("100000", "[repl]: max_sessions must be 1 to 64 (REPL clients served at once), got 100000"),
    ("-1", "[repl] max_sessions: must not be negative, got -1"),
    ("8.5", "[repl] max_sessions: expected an integer, got 8.5"),
])
def test_repl_max_sessions_is_bounded(tmp_path, value, message):
    """max_sessions had no upper bound: a million let that many clients hold a session (a task,
    a socket, a console) each in the gate's node. Now 1 to 64, as the server itself takes."""
    from palmnode.repl.server import SESSIONS_LIMIT

    assert config.MAX_REPL_SESSIONS == SESSIONS_LIMIT == 64
    base = (ROOT / "config" / "sim.toml").read_text()
    def text(sessions: str) -> str:
        return base.replace("python_console = false", f"python_console = false\nmax_sessions = {sessions}", 1)

    got = refusal(tmp_path / "c.toml", text(value))
    assert got == f"{tmp_path / 'c.toml'} {message}", got
    (tmp_path / "ok.toml").write_text(text("64"))
    assert config.load(tmp_path / "ok.toml").repl.max_sessions == 64


def test_a_repl_socket_path_no_node_could_bind_is_refused_at_load(tmp_path):
    """sun_path holds 107 bytes: a longer [repl] socket_path failed only once the node ran (exit 1,
    retried by systemd); now the config is refused (78). A disabled REPL's path is not used."""
    base = (ROOT / "config" / "sim.toml").read_text()
    long = "/run/" + "d" * 100 + "/repl.sock"
    text = base.replace('socket_path = "../run/repl.sock"', f'socket_path = "{long}"')
    assert refusal(tmp_path / "c.toml", text) == (f"{tmp_path / 'c.toml'} [repl]: socket_path {long} is longer "
                                                  "than 107 bytes (a unix socket's limit): choose a shorter one")
    (tmp_path / "off.toml").write_text(text.replace("python_console = false", "python_console = false\nenabled = false"))
    assert config.load(tmp_path / "off.toml").repl.socket_path == long
    from palmnode.repl.server import MAX_PATH

    assert config.MAX_SOCKET_PATH == MAX_PATH
