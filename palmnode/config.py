"""Node configuration: TOML files validated into frozen attrs values.

Every mistake in a config file is a :class:`ConfigError` whose one-line message names the file,
the key and the fix. Relative paths are resolved against the config file's folder.
"""
from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Any

import attrs

from drivers.camera.driver import DEFAULT_READ_TIMEOUT_S as CAMERA_READ_TIMEOUT_S
from drivers.camera.source import parse_source, source_kind
from drivers.illuminator.codec import BOARD_MAX_TEMPERATURE_C
from drivers.illuminator.driver import DEFAULT_TIMEOUT_S as ILLUMINATOR_TIMEOUT_S
from drivers.illuminator.driver import check_settings as check_illuminator
from drivers.proximity.codec import DATA_FRAME_LEN as PROXIMITY_FRAME_BYTES
from drivers.proximity.codec import MAX_FRAME_RATE_HZ
from drivers.proximity.driver import ATTEMPT_S as PROXIMITY_ATTEMPT_S
from palmnode.biometrics.quality import QualityPolicy
from palmnode.biometrics.roi import DEFAULT_LIMITS, OPERATOR_LIMITS, RoiLimits
from palmnode.biometrics.types import MAX_FRAME_ASPECT, MAX_FRAME_PIXELS, MIN_FRAME_SIDE
from palmnode.logs import LOG_LEVELS
from palmnode.vault.records import VaultConfig

#: the default config (`palmnode run` without --config) in a checkout: the one source of it
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "sim.toml"
#: its copy in an installed palmnode (setup.py's build_py ships config/sim.toml as package data)
PACKAGED_CONFIG = Path(__file__).resolve().parent / "sim.toml"


class ConfigError(Exception):
    """A config file that cannot be used; the message says where and why."""


#: the illuminator channels the gate's captures light (gate.capture.CapturePolicy's defaults)
IR_CHANNEL, SURFACE_CHANNEL = "ir", "surface"
GATE_CHANNELS = (IR_CHANNEL, SURFACE_CHANNEL)


def _positive(**values: float) -> None:
    """A section's own rule (ValueError, one line): these values must be above zero."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be greater than 0, got {value!r}")


def _port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, got {port}")


def _within(name: str, value: float, low: float, high: float, what: str) -> None:
    """A section's own rule (ValueError, one line): ``low <= value <= high``; ``what`` says what the
    value is and why the range (nan and inf never get here: :func:`_build` refuses them first)."""
    if not low <= value <= high:
        raise ValueError(f"{name} must be {_number(low)} to {_number(high)} ({what}), got {value!r}")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


#: a duration no flow of the gate waits for: a longer timeout, period or backoff is a typo
DAY_S = 86400.0


#: the TFmini's UART rates (SetBaudRate, docs/protocols/proximity.md; Benewake's sensors take 9600
#: to 921600): 9600 is also the slowest to carry its 9-byte frames at 100 Hz
PROXIMITY_BAUDRATES = (9600, 921600)
#: the line bits of one TFmini data frame: 9 bytes of 10 bits each on the wire (8N1: a start bit,
#: 8 data bits, a stop bit); frame_rate_hz times this must fit in the baud rate
PROXIMITY_FRAME_BITS = PROXIMITY_FRAME_BYTES * 10
#: a stalled sensor is reset after stall_timeout_s; the gate cannot see a hand meanwhile, yet is not
#: DEGRADED: longer than this is a typo (the default is 0.5 s)
MAX_STALL_TIMEOUT_S = 10.0


@attrs.frozen
class ProximityConfig:
    port: str
    baudrate: int = 115200
    frame_rate_hz: int = 100
    read_interval_s: float = 0.02  # batch reads like a USB-serial latency timer: 2 frames a wakeup
    stall_timeout_s: float = 0.5   # no valid frame this long: the sensor is reset (reopened)
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.frame_rate_hz <= MAX_FRAME_RATE_HZ:
            raise ValueError(f"frame_rate_hz must be 1..{MAX_FRAME_RATE_HZ}, got {self.frame_rate_hz}")
        _within("baudrate", self.baudrate, *PROXIMITY_BAUDRATES, "the TFmini's UART rates")
        needed = self.frame_rate_hz * PROXIMITY_FRAME_BITS
        if self.baudrate < needed:  # the sensor's frames would queue in it and the driver fall behind
            raise ValueError(
                f"baudrate {self.baudrate} is too slow for frame_rate_hz {self.frame_rate_hz}: "
                f"{self.frame_rate_hz} of the TFmini's {PROXIMITY_FRAME_BYTES}-byte frames a second need "
                f"{needed} baud (10 bits a byte on the line); "
                f"raise baudrate to at least {needed} or lower frame_rate_hz to at most "
                f"{self.baudrate // PROXIMITY_FRAME_BITS}")
        # the sensor's handshake resends each command every ATTEMPT_S: reads rarer than that miss
        # the answers' window (and a reading is up to read_interval_s late)
        _within("read_interval_s", self.read_interval_s, 0, PROXIMITY_ATTEMPT_S,
                "seconds between reads of the port; 0 reads each byte as it comes")
        # one late frame is not a stall: at least two frame periods
        _within("stall_timeout_s", self.stall_timeout_s, 2 / self.frame_rate_hz, MAX_STALL_TIMEOUT_S,
                f"seconds without a frame before the sensor is reset; at least two frame periods at "
                f"frame_rate_hz {self.frame_rate_hz}")
        if not self.read_interval_s < self.stall_timeout_s:  # every wait between reads would be a stall
            raise ValueError(f"read_interval_s ({self.read_interval_s!r}) must be below stall_timeout_s "
                             f"({self.stall_timeout_s!r}): a read that late finds the sensor stalled")


#: the reader is deaf to the next card this long after each one: longer is a typo
MAX_PAUSE_AFTER_CARD_S = 5.0


@attrs.frozen
class CardReaderConfig:
    port: str
    token_key_file: str
    pause_after_card_s: float = 0.1  # the chip itself waits for cards; this is the rest after one
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        _within("pause_after_card_s", self.pause_after_card_s, 0, MAX_PAUSE_AFTER_CARD_S,
                "seconds the reader rests after a card before it waits for the next")


#: the board's UART: 9600 up to 2 Mbaud, an Uno's 16 MHz ATmega328P at its fastest (and its USB
#: bridge's); StandardFirmata runs at 57600
ILLUMINATOR_BAUDRATES = (9600, 2_000_000)
#: max_temperature_c: lights are allowed below it less the driver's 5 °C hysteresis, so a board at
#: 35 °C (a warm shop) must be able to light; at most the board's own fixed cutoff, above which the
#: board trips first and this limit never acts (docs/protocols/illuminator.md)
ILLUMINATOR_TEMPERATURES_C = (40.0, BOARD_MAX_TEMPERATURE_C)
#: sampling_interval_ms at most: the driver counts a board silent after its timeout (2 s) and the
#: temperature unknown after twice it, each time reopening the board (5000 ms: LOST every 4 s);
#: reports come at least twice a timeout, so one lost report is not yet silence
MAX_SAMPLING_INTERVAL_MS = int(ILLUMINATOR_TIMEOUT_S * 1000 // 2)


@attrs.frozen
class IlluminatorConfig:
    port: str
    channels: dict[str, int] = attrs.field(factory=lambda: {"ir": 9, "surface": 10})
    thermistor_pin: int = 0
    deadman_ms: int = 1000
    max_temperature_c: float = 70.0
    sampling_interval_ms: int = 250  # how often the board reports the thermistor
    baudrate: int = 57600
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        check_illuminator(self.channels, self.thermistor_pin, self.deadman_ms, self.max_temperature_c, 0.0,
                          self.sampling_interval_ms)
        missing = [name for name in GATE_CHANNELS if name not in self.channels]
        if missing:
            raise ValueError(f"channels: the gate lights {' and '.join(GATE_CHANNELS)}, missing {missing[0]!r}")
        # 0 would leave the board's dead-man timer disarmed: a killed or hung node would leave
        # the lights burning (the driver allows it, the gate must not)
        _positive(deadman_ms=self.deadman_ms)
        _within("sampling_interval_ms", self.sampling_interval_ms, 1, MAX_SAMPLING_INTERVAL_MS,
                "ms between thermistor reports; at most half the driver's timeout, after which a silent "
                "board is reset")
        _within("max_temperature_c", self.max_temperature_c, *ILLUMINATOR_TEMPERATURES_C,
                "°C; above the board's own cutoff it never acts, below it a warm board never lights")
        _within("baudrate", self.baudrate, *ILLUMINATOR_BAUDRATES, "the board's UART rates")


#: a frame side at most: the engine's largest frame (MAX_FRAME_PIXELS) at its most elongated
MAX_FRAME_SIDE = math.isqrt(MAX_FRAME_ASPECT * MAX_FRAME_PIXELS)
#: a gate camera runs 15-60 fps; this leaves room for a high-speed one, more is a typo
MAX_CAMERA_FPS = 240
#: exposure is passed to the backend as it is: OpenCV's log2 seconds on some (-6 = 1/64 s), V4L2's
#: exposure_time_absolute in 100 µs units on others; -20 is ~1 µs, and 100 µs × 20000 = 2 s, the
#: driver's read timeout: a frame exposed longer never arrives in time
CAMERA_EXPOSURES = (-20, int(CAMERA_READ_TIMEOUT_S * 10_000))
#: UVC's gain control is 16 bits unsigned (wGain); V4L2 passes it on
MAX_CAMERA_GAIN = 65535


@attrs.frozen
class CameraConfig:
    source: str
    width: int = 640
    height: int = 480
    fps: int = 30
    exposure: float | None = None
    gain: float | None = None
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        source_kind(parse_source(self.source))
        # the frames must be ones the engine takes (biometrics.types.check_frame)
        for name in ("width", "height"):
            _within(name, getattr(self, name), MIN_FRAME_SIDE, MAX_FRAME_SIDE,
                    f"px; frames the engine takes: a side of at least {MIN_FRAME_SIDE} px, at most "
                    f"{MAX_FRAME_PIXELS} pixels, at most {MAX_FRAME_ASPECT}:1")
        if self.width * self.height > MAX_FRAME_PIXELS:
            raise ValueError(f"width ({self.width}) x height ({self.height}) must be at most {MAX_FRAME_PIXELS} "
                             f"pixels (the engine refuses larger frames), got {self.width * self.height}")
        if max(self.width, self.height) > MAX_FRAME_ASPECT * min(self.width, self.height):
            raise ValueError(f"width ({self.width}) and height ({self.height}) must be at most "
                             f"{MAX_FRAME_ASPECT}:1 (the engine refuses more elongated frames)")
        # a frame every 1/fps s must come within the driver's read timeout: 1 fps at least
        _within("fps", self.fps, 1, MAX_CAMERA_FPS, "frames a second")
        if self.exposure is not None:
            _within("exposure", self.exposure, *CAMERA_EXPOSURES,
                    "log2 seconds, or 100 µs units up to the driver's 2 s read timeout")
        if self.gain is not None:
            _within("gain", self.gain, 0, MAX_CAMERA_GAIN, "UVC's 16-bit gain")


#: restarts within period_s before a supervisor gives up: more is a crash loop, not a fault to ride out
MAX_INTENSITY = 100
#: a lost device that returns is reopened within about backoff_max_s (README: within 2 s with the
#: default 1 s); more than a minute leaves a gate DEGRADED long after a replug
MAX_BACKOFF_S = 60.0


@attrs.frozen
class SupervisionConfig:
    intensity: int = 10
    period_s: float = 30.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 1.0

    def __attrs_post_init__(self) -> None:
        _positive(period_s=self.period_s, backoff_initial_s=self.backoff_initial_s)
        _within("intensity", self.intensity, 0, MAX_INTENSITY,
                "restarts of a supervisor's children within period_s before it gives up")
        _within("period_s", self.period_s, 0, DAY_S, "seconds over which restarts are counted")
        for name in ("backoff_initial_s", "backoff_max_s"):
            _within(name, getattr(self, name), 0, MAX_BACKOFF_S, "seconds before a lost device is reopened")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) must be at least backoff_initial_s "
                             f"({self.backoff_initial_s})")


@attrs.frozen
class NodeConfig:
    node_id: str = "gate-1"
    log_level: str = "info"

    def __attrs_post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("node_id must not be empty")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")


#: the calibration the repository ships (made by ``palmnode eval --calibration-out``)
SHIPPED_CALIBRATION = Path(__file__).resolve().parent / "biometrics" / "calibration.json"  # package data
#: ``[gate] search_threads`` at most
MAX_SEARCH_THREADS = 16
#: ``[gate] target_fmr`` (per comparison): 1e-3 at 1,000 palms already matches most strangers to
#: someone; below 1e-15 (FPIR 1e-6 at a billion palms) the threshold lies decades beyond any
#: impostor score a calibration measured (the shipped one: 1 in 8.9M)
TARGET_FMRS = (1e-15, 1e-3)
VEIN_FMRS = (1e-6, 1e-3)  # [gate] vein_fmr, or 0 (no vein check)


@attrs.frozen
class GateConfig:
    """What the gate does with a recognised person, and how sure it must be."""

    mode: str = "entry"                # entry | payment | loyalty
    amount_cents: int | None = None    # payment: what to charge, in minor units
    currency: str | None = None        # payment: ISO 4217 code
    #: impostor score tail (``palmnode eval --calibration-out``) the decision threshold comes from
    calibration: str = str(SHIPPED_CALIBRATION)
    #: per-comparison false-match rate the threshold is set for (1e-9: a million palms, FPIR ~1e-3)
    target_fmr: float = 1e-9
    #: the vein check: a person is identified only when the vein similarity alone also reaches the
    #: calibration's vein impostor tail at this false-match rate (a print or a screen of a palm
    #: shows its lines, not its veins: docs/flows.md, "The vein check"); 0 turns the check off
    vein_fmr: float = 5e-4
    on_duplicate: str = "refuse"       # enrolling a palm already enrolled: refuse | link
    #: threads one 1:N search is split over (docs/engine.md, "Threads"): 2 on a gate whose second
    #: core is otherwise idle refuses a stranger at 1M palms ~1.5x sooner
    search_threads: int = 1


@attrs.frozen
class ControllerLink:
    """The store controller this node dials (certificates from ``palmnode certs``)."""

    host: str = "127.0.0.1"
    port: int = 7443
    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = "controller"

    def __attrs_post_init__(self) -> None:
        _port(self.port)


#: ``[repl] max_sessions`` at most (as palmnode.repl.server.SESSIONS_LIMIT)
MAX_REPL_SESSIONS = 64
#: a unix socket path's bytes at most (sun_path is 108 with its NUL; as palmnode.repl.server.MAX_PATH)
MAX_SOCKET_PATH = 107


@attrs.frozen
class ReplConfig:
    """The diagnostics socket (0600). ``python_console`` opens ``py`` (Python inside the node) to
    anyone who can open the socket — keep it off on gates in service."""

    socket_path: str = "/run/palmnode/repl.sock"
    python_console: bool = False
    enabled: bool = True
    max_sessions: int = 8  # clients at once (as palmnode.repl.server.MAX_SESSIONS)
    #: a session with no command this long is told why and closed (a running command is not
    #: idle); there is no "never": 0 would close every session at once (as ...server.IDLE_TIMEOUT_S)
    idle_timeout_s: float = 900.0

    def __attrs_post_init__(self) -> None:
        if self.enabled and len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:  # no node could ever bind it
            raise ValueError(f"socket_path {self.socket_path} is longer than {MAX_SOCKET_PATH} bytes (a unix "
                             "socket's limit): choose a shorter one")
        if not 1 <= self.max_sessions <= MAX_REPL_SESSIONS:
            raise ValueError(f"max_sessions must be 1 to {MAX_REPL_SESSIONS} (REPL clients served at once), "
                             f"got {self.max_sessions!r}")
        if self.idle_timeout_s <= 0:  # (nan passes here: refused as not finite)
            raise ValueError(f"idle_timeout_s must be greater than 0 (seconds without a command before a "
                             f"session is closed; a larger value keeps idle sessions longer), got "
                             f"{self.idle_timeout_s!r}")
        _within("idle_timeout_s", self.idle_timeout_s, 0, DAY_S,
                "seconds without a command before a session is closed; at most a day")


@attrs.frozen
class MetricsConfig:
    """The Prometheus scrape endpoint; off by default (two nodes on one host would share the port),
    on loopback by default (a fleet scraper reaches it through the host's own exporter/proxy)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464

    def __attrs_post_init__(self) -> None:
        _port(self.port)


#: debug frames kept at most: ~3 GB of 640x480 PNGs (~300 KB each), not a gate's whole disk
MAX_CAPTURE_FILES = 10_000


@attrs.frozen
class DebugConfig:
    """Debugging aids an operator turns on explicitly; off by default."""

    #: a folder for every lit frame the gate takes (raw palm images: docs/flows.md, "Debug capture
    #: folder"); "" keeps every palm image off the disk
    capture_dir: str = ""
    #: the folder keeps at most this many frames, the oldest removed first
    capture_max_files: int = 500

    def __attrs_post_init__(self) -> None:
        _within("capture_max_files", self.capture_max_files, 1, MAX_CAPTURE_FILES,
                "frames kept in the debug capture folder")


@attrs.frozen
class Config:
    node: NodeConfig
    proximity: ProximityConfig
    card_reader: CardReaderConfig
    illuminator: IlluminatorConfig
    camera: CameraConfig
    supervision: SupervisionConfig = SupervisionConfig()
    gate: GateConfig = GateConfig()
    vault: VaultConfig | None = None
    controller: ControllerLink | None = None
    repl: ReplConfig | None = None
    metrics: MetricsConfig = MetricsConfig()
    debug: DebugConfig = DebugConfig()
    #: when a capture is used (docs/roi.md, "Thresholds"): its quality, and when a frame is
    #: refused before any ROI (too close, too far, badly exposed, blurred)
    quality: QualityPolicy = QualityPolicy()
    roi: RoiLimits = DEFAULT_LIMITS
    source: Path | None = None


_SECTIONS: dict[str, type] = {
    "node": NodeConfig,
    "devices.proximity": ProximityConfig,
    "devices.card_reader": CardReaderConfig,
    "devices.illuminator": IlluminatorConfig,
    "devices.camera": CameraConfig,
    "supervision": SupervisionConfig,
    "gate": GateConfig,
    "vault": VaultConfig,
    "controller": ControllerLink,
    "repl": ReplConfig,
    "metrics": MetricsConfig,
    "debug": DebugConfig,
}
#: the capture thresholds' tables: also read alone (``palmnode eval --config``: capture_thresholds)
_CAPTURE_TABLES = ("quality", "roi")
#: absent: a node without a vault (devices only) / without a controller / without a REPL socket
_OPTIONAL = {"vault", "controller", "repl"}
_PATH_KEYS = {"port", "token_key_file", "calibration", "path", "key_file", "ca", "cert", "key",
              "socket_path", "capture_dir"}
_OFF_WHEN_EMPTY = {"capture_dir"}  # "" turns it off; every other path must name something
_SIGNED_KEYS = {"exposure"}  # OpenCV's exposure is often log2 seconds: negative


def load(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    path = Path(path)
    return from_dict(_read(path), base=path.parent, source=path)


def load_default() -> Config:
    """The default config: config/sim.toml of a checkout (an editable install), or the copy an
    installed palmnode ships. Its paths (``../run/…``, relative to the config/ folder) then name
    ``./run/…`` of the current folder, as in a checkout run from its root, never a folder inside
    the installed package."""
    if PACKAGED_CONFIG.is_file():
        return from_dict(_read(PACKAGED_CONFIG), base=Path.cwd() / "config", source=PACKAGED_CONFIG)
    return load(DEFAULT_CONFIG)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def from_dict(raw: dict[str, Any], *, base: Path = Path("."), source: Path | None = None) -> Config:
    where = str(source) if source else "config"
    known_top = {name.split(".")[0] for name in _SECTIONS} | set(_CAPTURE_TABLES)
    for key in raw:
        if key not in known_top:
            raise ConfigError(f"{where}: unknown section [{key}] (known: {', '.join(sorted(known_top))})")
    devices = raw.get("devices", {})
    for key in devices:
        if f"devices.{key}" not in _SECTIONS:
            raise ConfigError(f"{where}: unknown device [devices.{key}] "
                              "(known: proximity, card_reader, illuminator, camera)")
    values: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = raw.get(name) if "." not in name else devices.get(name.split(".", 1)[1])
        if table is None:
            if name.startswith("devices."):
                raise ConfigError(f"{where}: missing section [{name}]")
            if name in _OPTIONAL:
                values[name] = None
                continue
            table = {}
        values[name] = _build(cls, table, f"{where} [{name}]", base)
    _check_gate(values["gate"], f"{where} [gate]")
    quality, roi = _capture(raw, where)
    link = values["controller"]
    if link is not None:
        for key in ("ca", "cert", "key"):
            if not getattr(link, key):
                raise ConfigError(f"{where} [controller]: missing key {key!r} (make certificates with "
                                  "`palmnode certs --out DIR`)")
    return Config(node=values["node"], proximity=values["devices.proximity"],
                  card_reader=values["devices.card_reader"], illuminator=values["devices.illuminator"],
                  camera=values["devices.camera"], supervision=values["supervision"], gate=values["gate"],
                  vault=values["vault"], controller=link, repl=values["repl"], metrics=values["metrics"],
                  debug=values["debug"], quality=quality, roi=roi, source=source)


def capture_thresholds(path: str | Path) -> tuple[QualityPolicy, RoiLimits]:
    """The ``[quality]`` and ``[roi]`` tables of a TOML file (a gate's config, or a file of just
    those): ``palmnode eval --config`` measures with a gate's thresholds."""
    raw = _read(Path(path))
    if not any(name in raw for name in _CAPTURE_TABLES):
        raise ConfigError(f"{path}: no [quality] or [roi] table (the capture thresholds) to use")
    return _capture(raw, str(path))


def _capture(raw: dict[str, Any], where: str) -> tuple[QualityPolicy, RoiLimits]:
    """``[quality]`` (every QualityPolicy field) and ``[roi]`` (:func:`roi_limits`), each optional."""
    return (_build(QualityPolicy, raw.get("quality", {}), f"{where} [quality]", Path(".")),
            roi_limits(raw.get("roi", {}), f"{where} [roi]"))


def roi_limits(table: Any, where: str) -> RoiLimits:
    """``[roi]``: the default limits with those of :data:`~palmnode.biometrics.roi.OPERATOR_LIMITS`
    the table sets (the others place the ROI in the hand: no key for them)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    fields = attrs.fields_dict(RoiLimits)
    for key in table:
        if key not in OPERATOR_LIMITS:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(OPERATOR_LIMITS)})")
    if not table:
        return DEFAULT_LIMITS
    try:
        return attrs.evolve(DEFAULT_LIMITS, **{k: _check(v, fields[k].type, f"{where} {k}") for k, v in table.items()})
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_gate(gate: GateConfig, where: str) -> None:
    from palmnode.gate.modes import GateMode

    try:
        GateMode(gate.mode, gate.amount_cents, gate.currency)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not TARGET_FMRS[0] <= gate.target_fmr <= TARGET_FMRS[1]:
        raise ConfigError(f"{where} target_fmr: must be {TARGET_FMRS[0]:g} to {TARGET_FMRS[1]:g} (false matches "
                          f"per comparison), got {gate.target_fmr!r}")
    if gate.vein_fmr != 0 and not VEIN_FMRS[0] <= gate.vein_fmr <= VEIN_FMRS[1]:
        raise ConfigError(f"{where} vein_fmr: must be {VEIN_FMRS[0]:g} to {VEIN_FMRS[1]:g} (vein false matches per "
                          f"comparison), or 0 for no vein check, got {gate.vein_fmr!r}")
    if gate.on_duplicate not in ("refuse", "link"):
        raise ConfigError(f"{where} on_duplicate: must be refuse or link, got {gate.on_duplicate!r}")
    if not 1 <= gate.search_threads <= MAX_SEARCH_THREADS:
        raise ConfigError(f"{where} search_threads: must be 1 to {MAX_SEARCH_THREADS}, got {gate.search_threads!r}")


def _build(cls: type, table: Any, where: str, base: Path) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    fields = {f.name: f for f in attrs.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(fields)})")
        kwargs[key] = _check(value, fields[key].type, f"{where} {key}", signed=key in _SIGNED_KEYS)
        if key in _PATH_KEYS and value == "" and key not in _OFF_WHEN_EMPTY:
            raise ConfigError(f"{where} {key}: must not be empty (a path; relative to the config file's folder)")
        if key in _PATH_KEYS and isinstance(value, str) and value and not _is_url(value):
            kwargs[key] = str((base / value).resolve()) if not Path(value).is_absolute() else value
    missing = [n for n, f in fields.items() if f.default is attrs.NOTHING and n not in kwargs]
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r}")
    for key, value in kwargs.items():  # nan or inf: a sleep, a backoff or a setting that never works
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} {key}: must be a finite number, got {value!r}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the value's own rules (ranges; QualityPolicy: good below bad, ...)
        raise ConfigError(f"{where}: {exc}") from None


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and "://" in value


def _check(value: Any, typ: Any, where: str, *, signed: bool = False) -> Any:
    expected = {"str": str, "int": int, "bool": bool, "float": (int, float), "str | None": str,
                "int | None": int, "float | None": (int, float), "dict[str, int]": dict}.get(str(typ), object)
    if isinstance(value, bool) and expected in (int, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not isinstance(value, expected):
        kind = {str: "a string", int: "an integer", bool: "true or false", dict: "a table"}.get(
            expected, "a number")
        raise ConfigError(f"{where}: expected {kind}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0 and not signed:
        raise ConfigError(f"{where}: must not be negative, got {value!r}")
    if expected is dict:
        for k, v in value.items():
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 127:
                raise ConfigError(f"{where}.{k}: expected a pin number 0-127, got {v!r}")
    return value
