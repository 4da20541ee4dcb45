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

from drivers.camera.source import parse_source, source_kind
from drivers.illuminator.driver import check_settings as check_illuminator
from drivers.proximity.codec import MAX_FRAME_RATE_HZ
from palmnode.biometrics.quality import QualityPolicy
from palmnode.biometrics.roi import DEFAULT_LIMITS, OPERATOR_LIMITS, RoiLimits
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
        _positive(baudrate=self.baudrate, stall_timeout_s=self.stall_timeout_s)


@attrs.frozen
class CardReaderConfig:
    port: str
    token_key_file: str
    pause_after_card_s: float = 0.1  # the chip itself waits for cards; this is the rest after one
    enabled: bool = True


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
        _positive(baudrate=self.baudrate, deadman_ms=self.deadman_ms)


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
        _positive(width=self.width, height=self.height, fps=self.fps)


@attrs.frozen
class SupervisionConfig:
    intensity: int = 10
    period_s: float = 30.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 1.0

    def __attrs_post_init__(self) -> None:
        _positive(period_s=self.period_s, backoff_initial_s=self.backoff_initial_s)
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


@attrs.frozen
class MetricsConfig:
    """The Prometheus scrape endpoint; off by default (two nodes on one host would share the port),
    on loopback by default (a fleet scraper reaches it through the host's own exporter/proxy)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464

    def __attrs_post_init__(self) -> None:
        _port(self.port)


@attrs.frozen
class DebugConfig:
    """Debugging aids an operator turns on explicitly; off by default."""

    #: a folder for every lit frame the gate takes (raw palm images: docs/flows.md, "Debug capture
    #: folder"); "" keeps every palm image off the disk
    capture_dir: str = ""
    #: the folder keeps at most this many frames, the oldest removed first
    capture_max_files: int = 500


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
_SIGNED_KEYS = {"exposure", "gain"}  # V4L2 exposure is a log2 value, often negative


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
    if values["debug"].capture_max_files < 1:
        raise ConfigError(f"{where} [debug] capture_max_files: must be at least 1, "
                          f"got {values['debug'].capture_max_files}")
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
    if not 0.0 < gate.target_fmr < 1.0:
        raise ConfigError(f"{where} target_fmr: must be between 0 and 1, got {gate.target_fmr!r}")
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
    try:
        built = cls(**kwargs)
    except ValueError as exc:  # the value's own rules (QualityPolicy: good below bad, ...)
        raise ConfigError(f"{where}: {exc}") from None
    for key, value in kwargs.items():  # nan or inf: a sleep, a backoff or a setting that never works
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} {key}: must be a finite number, got {value!r}")
    return built


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
