"""Timed scenario scripts for the virtual gate (TOML, one ``[[step]]`` table per action).

    [[step]]
    at = 1.0                 # seconds after the scenario starts
    action = "hand"          # hand | card | unplug | garbage | corrupt | stall | slow_first_answer | heat
    distance_mm = 150
    seconds = 2.0

Every mistake is a :class:`ScenarioError` naming the file, the step and the fix.
"""
from __future__ import annotations

import datetime
import math
import tomllib
from pathlib import Path
from typing import Any, Union

import attrs

DEVICES = ("proximity", "card_reader", "illuminator", "camera")
#: a garbage step's bytes at most (they are made and written at once, blocking the virtual gate meanwhile)
MAX_GARBAGE_BYTES = 1 << 20


class ScenarioError(Exception):
    """A scenario that cannot be played; the message says where and why."""


@attrs.frozen
class Hand:
    """A hand approaches, hovers at ``distance_mm`` for ``seconds`` (with tremor) and leaves."""
    at: float
    distance_mm: float = 150.0
    seconds: float = 1.5
    approach_s: float = 0.4
    identity: int = 0           # the person: a renderer seed
    session: int = 1            # 1 or 2: captures of two sessions differ as if a month apart
    hand: str | None = None     # "left" | "right"; unset: the person's own (from the seed)


def valid_expiry() -> str:
    """An expiry (``YYMM``) a card still has for years: December, three years from today. A fixed
    default would make every simulated card expired one day, and the enrol flow refuses those."""
    return f"{(datetime.date.today().year + 3) % 100:02d}12"


@attrs.frozen
class Card:
    """A card held in the reader's field for ``seconds``: a plain badge or an EMV payment card.
    ``expiry`` (``YYMM``; default :func:`valid_expiry`): a month already past plays an expired card."""
    at: float
    kind: str = "badge"
    uid: str = "04a1b2c3"
    pan: str = "4111111111111111"
    expiry: str = attrs.field(factory=valid_expiry)
    seconds: float = 1.0


@attrs.frozen
class Unplug:
    at: float
    device: str
    seconds: float = 2.0


@attrs.frozen
class Garbage:
    """Random bytes on a serial line; on the camera, one corrupt JPEG part."""
    at: float
    device: str
    bytes: int = 64


@attrs.frozen
class Corrupt:
    at: float
    device: str
    frames: int = 3


@attrs.frozen
class Stall:
    at: float
    device: str
    seconds: float = 1.0


@attrs.frozen
class SlowFirstAnswer:
    at: float
    device: str
    seconds: float = 0.5


@attrs.frozen
class Heat:
    """The illuminator board's ambient temperature jumps to ``celsius``."""
    at: float
    celsius: float = 80.0


Step = Union[Hand, Card, Unplug, Garbage, Corrupt, Stall, SlowFirstAnswer, Heat]
_ACTIONS: dict[str, type] = {
    "hand": Hand, "card": Card, "unplug": Unplug, "garbage": Garbage, "corrupt": Corrupt,
    "stall": Stall, "slow_first_answer": SlowFirstAnswer, "heat": Heat,
}


@attrs.frozen
class Scenario:
    steps: tuple[Step, ...]
    name: str = "scenario"

    @property
    def duration(self) -> float:
        ends = [s.at + getattr(s, "seconds", 0.0) + getattr(s, "approach_s", 0.0) * 2 for s in self.steps]
        return max(ends, default=0.0)


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"scenario file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc}") from None
    return parse(raw, where=str(path), name=path.stem)


def parse(raw: dict[str, Any], *, where: str = "scenario", name: str = "scenario") -> Scenario:
    extra = set(raw) - {"step"}
    if extra:
        raise ScenarioError(f"{where}: unknown top-level key {sorted(extra)[0]!r} (only [[step]] tables)")
    steps = raw.get("step", [])
    if not isinstance(steps, list):
        raise ScenarioError(f"{where}: 'step' must be an array of tables ([[step]])")
    parsed = [_step(s, f"{where} step {i + 1}") for i, s in enumerate(steps)]
    return Scenario(tuple(sorted(parsed, key=lambda s: s.at)), name=name)


def _step(table: Any, where: str) -> Step:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: must be a table")
    table = dict(table)
    action = table.pop("action", None)
    cls = _ACTIONS.get(action)
    if cls is None:
        raise ScenarioError(f"{where}: action must be one of {', '.join(_ACTIONS)}, got {action!r}")
    fields = {f.name: f for f in attrs.fields(cls)}
    for key, value in table.items():
        if key not in fields:
            raise ScenarioError(f"{where} ({action}): unknown key {key!r} (known: {', '.join(fields)})")
        want = fields[key].type
        if want in ("float", "int") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ScenarioError(f"{where} ({action}): {key} must be a number, got {value!r}")
        if want == "str" and not isinstance(value, str):
            raise ScenarioError(f"{where} ({action}): {key} must be a string, got {value!r}")
        if want == "int" and not isinstance(value, int):
            raise ScenarioError(f"{where} ({action}): {key} must be a whole number, got {value!r}")
        if want == "float" and not math.isfinite(value):
            raise ScenarioError(f"{where} ({action}): {key} must be a finite number, got {value!r}")
        if want in ("float", "int") and value < 0:
            raise ScenarioError(f"{where} ({action}): {key} must not be negative, got {value!r}")
    if cls is Garbage and table.get("bytes", 0) > MAX_GARBAGE_BYTES:
        raise ScenarioError(f"{where} (garbage): bytes must be at most {MAX_GARBAGE_BYTES}, got {table['bytes']}")
    if "at" not in table:
        raise ScenarioError(f"{where} ({action}): missing 'at' (seconds after start)")
    if "device" in fields and table.get("device") not in DEVICES:
        raise ScenarioError(f"{where} ({action}): device must be one of {', '.join(DEVICES)}")
    if cls is Card:
        _check_card(table, where)
    if cls is Hand:
        if table.get("session", 1) not in (1, 2):
            raise ScenarioError(f"{where} (hand): session must be 1 or 2, got {table['session']!r}")
        if table.get("hand") not in (None, "left", "right"):
            raise ScenarioError(f"{where} (hand): hand must be 'left' or 'right', got {table['hand']!r}")
    return cls(**table)


def _check_card(table: dict[str, Any], where: str) -> None:
    kind = table.get("kind", "badge")
    if kind not in ("badge", "emv"):
        raise ScenarioError(f"{where} (card): kind must be 'badge' or 'emv', got {kind!r}")
    uid = table.get("uid", "04a1b2c3")
    try:
        if len(bytes.fromhex(uid)) not in (4, 7, 10):
            raise ValueError
    except ValueError:
        raise ScenarioError(f"{where} (card): uid must be 4, 7 or 10 bytes of hex, got {uid!r}") from None
    pan, expiry = table.get("pan", "4111111111111111"), table.get("expiry", valid_expiry())
    if not (pan.isdigit() and 12 <= len(pan) <= 19):
        raise ScenarioError(f"{where} (card): pan must be 12-19 digits")
    if not (expiry.isdigit() and len(expiry) == 4 and 1 <= int(expiry[2:]) <= 12):
        raise ScenarioError(f"{where} (card): expiry must be YYMM, got {expiry!r}")
