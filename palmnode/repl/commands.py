"""The REPL's commands, run inside the node against a :class:`ReplTarget` (what a node provides).

Each command is ``async def run(session, args) -> Reply``; a wrong argument or an unavailable
device raises :class:`CommandError` (one line, sent as ``error: …``, the session continues).
Replies carry plain data (``result``, for scripts and tests) and the same as readable ``text``.
Nothing a command sends carries biometric data, except ``capture``'s PNG: the operator's explicit
request for one ROI image, written to disk by the client only.
"""
from __future__ import annotations

import base64
import enum
import math
import time
from pathlib import PurePath
from typing import Any, Awaitable, Callable, Protocol

import attrs
import trio

from drivers.card_reader.reads import BadgeRead, CardNotRead, PaymentCardRead
from drivers.errors import DeviceError
from drivers.illuminator.driver import BoardNotice, Cooled, DeadmanTripped, OverTemperature
from palmnode.actors import (ChildStateChanged, DeviceStateChanged, EventBus, GateStateChanged,
                             HealthRegistry, Supervisor, SupervisorSnapshot)
from palmnode.biometrics.types import RoiFailure
from palmnode.devices.camera import FrameSource
from palmnode.devices.illuminator import Lights
from palmnode.gate.modes import payment_words
from palmnode.gate.presence import PresenceChanged
from palmnode.logs import event_to_plain
from palmnode.metrics import Metrics
from palmnode.repl.console import Console, banner

try:  # the gate flows' events (palmnode/gate/events.py)
    from palmnode.gate import events as gate_events
except ImportError:  # pragma: no cover - only while the flows are not in the tree
    gate_events = None  # type: ignore[assignment]


class GalleryView(Protocol):
    """What ``gallery`` needs: :class:`palmnode.biometrics.gallery.Gallery` has both."""

    def __len__(self) -> int: ...
    def memory_bytes(self) -> int: ...


class ReplTarget(Protocol):
    """What a node must provide to be served by the REPL (``palmnode.node.Node`` does).

    ``config`` is the node's attrs config (shown by ``config``; ``config.node.node_id`` names the
    node, ``config.illuminator.channels`` lists the light channels when present). ``health`` and
    ``supervisor`` are None until the node runs; ``gallery`` is None until loaded.
    """

    config: Any
    bus: EventBus
    health: HealthRegistry | None
    supervisor: Supervisor | None
    metrics: Metrics
    lights: Lights
    frames: FrameSource
    gallery: GalleryView | None


class CommandError(Exception):
    """A one-line reason sent to the client as ``error: …``; the session continues."""


@attrs.frozen
class Reply:
    result: Any = None
    text: str | None = None


@attrs.define(eq=False)
class Session:
    """One client's REPL session, as commands see it."""

    target: ReplTarget
    send: Callable[[dict[str, Any]], Awaitable[None]]
    """Send one streaming line (``{"text": …}`` or ``{"event": …}``) before the final reply."""
    python_console: bool = False
    console: Console | None = None


@attrs.frozen
class Command:
    name: str
    usage: str
    summary: str
    details: str
    run: Callable[[Session, tuple[str, ...]], Awaitable[Reply]]
    min_args: int = 0
    max_args: int = 0
    ends_with_client: bool = False
    """Needs its client to stop it or to be there (follow runs until interrupted; enrol waits on a
    person): ended when the client closes its sending side, since nobody could interrupt it then."""


COMMANDS: dict[str, Command] = {}


def command(name: str, usage: str, summary: str, details: str = "", *, min_args: int = 0,
            max_args: int = 0, ends_with_client: bool = False) -> Callable[[Callable[[Session, tuple[str, ...]], Awaitable[Reply]]],
                                           Callable[[Session, tuple[str, ...]], Awaitable[Reply]]]:
    def register(run: Callable[[Session, tuple[str, ...]], Awaitable[Reply]]):
        COMMANDS[name] = Command(name, usage, summary, " ".join(details.split()), run, min_args, max_args,
                                 ends_with_client)
        return run
    return register


async def run_command(session: Session, cmd: str, args: tuple[str, ...]) -> Reply:
    """Look ``cmd`` up, check its argument count, run it. :class:`CommandError` when wrong."""
    found = COMMANDS.get(cmd)
    if found is None:
        raise CommandError(f"unknown command {cmd!r}: type help for the list")
    if not found.min_args <= len(args) <= found.max_args:
        raise CommandError(f"usage: {found.usage}")
    return await found.run(session, args)


# -- help

@command("help", "help [COMMAND]", "list the commands, or explain one", max_args=1)
async def _help(session: Session, args: tuple[str, ...]) -> Reply:
    if args:
        found = COMMANDS.get(args[0])
        if found is None:
            raise CommandError(f"no command {args[0]!r}: type help for the list")
        text = f"{found.usage}\n  {found.summary}" + (f"\n\n{found.details}" if found.details else "")
        return Reply({"command": found.name, "usage": found.usage, "summary": found.summary,
                      "details": found.details}, text)
    width = max(len(c.usage) for c in COMMANDS.values())
    lines = [f"{c.usage:<{width}}  {c.summary}" for c in COMMANDS.values()]
    lines.append("quit (or Ctrl-D) leaves; in follow and py, Ctrl-C (or q in follow) stops.")
    return Reply({c.name: c.summary for c in COMMANDS.values()}, "\n".join(lines))


# -- health and the supervision tree

def _health(session: Session) -> HealthRegistry:
    health = session.target.health
    if health is None:
        raise CommandError("the node is still starting: no health yet")
    return health


@command("health", "health", "device health and the gate state",
         "Each device's state, restarts, last error, when it last sent something and its drop "
         "counters; the gate is READY, DEGRADED (serving with some devices away), DOWN or STARTING.")
async def _health_cmd(session: Session, args: tuple[str, ...]) -> Reply:
    health = _health(session)
    now = trio.current_time()
    devices = []
    for h in health.snapshot():
        devices.append({
            "name": h.name, "state": h.state.value, "restarts": h.restarts, "last_error": h.last_error,
            "last_seen_s_ago": None if h.last_seen is None else round(now - h.last_seen, 3),
            "for_s": round(now - h.since, 3), "counters": dict(h.counters)})
    result = {"gate": health.gate.value, "devices": devices}
    lines = [f"gate {health.gate.value.upper()}"]
    rows = [("device", "state", "for", "restarts", "last seen", "last error")]
    for d in devices:
        seen = "never" if d["last_seen_s_ago"] is None else f"{d['last_seen_s_ago']:.2f} s ago"
        rows.append((d["name"], d["state"], f"{d['for_s']:.1f} s", str(d["restarts"]), seen,
                     d["last_error"] or "-"))
    lines += _table(rows)
    for d in devices:
        if d["counters"]:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(d["counters"].items()))
            lines.append(f"  {d['name']} counters: {counts}")
    return Reply(result, "\n".join(lines))


def uptime(seconds: float) -> str:
    """``3725`` → ``1:02:05``, ``90061`` → ``1 d 1:01:01``."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days} d " if days else "") + f"{hours}:{minutes:02}:{secs:02}"


@command("status", "status", "the node's status, as the store controller's node.status sees it",
         "The node's palmnode version and uptime, the gate state, people enrolled, palms in the gallery, "
         "the gate's mode, the enrolment's step, the debug capture folder, the controller link and its "
         "counters, and the vault's WAL: truncated, or since when another connection to the vault file (a "
         "backup, an sqlite3 shell, palmnode vault check) keeps a removed person's old pages in the -wal "
         "file, with the retries so far.")
async def _status(session: Session, args: tuple[str, ...]) -> Reply:
    status = getattr(session.target, "status", None)
    if status is None:
        raise CommandError("this node has no status to show")
    result = await status()
    mode = result["mode"]
    if (payment := result.get("payment")) is not None:
        mode += " " + payment_words(payment)
    lines = [f"node {result['node_id']} (palmnode {result['version']}, up {uptime(result['uptime_s'])}): "
             f"gate {result['gate'].upper()}, mode {mode}",
             f"people {result['people']}, gallery {result['gallery_palms']} palms, enrolment {result['enrolment']}",
             f"controller {result['controller'] or 'none (no [controller] in the config)'}"]
    if (link := result.get("link")) is not None:
        dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(link["dropped"].items())) or "none"
        lines.append(f"link: {link['connects']} connects, {link['failed_attempts']} failed attempts, events "
                     f"{link['events_sent']} sent / {link['events_acked']} acked, requests {link['requests_served']} "
                     f"served / {link['requests_refused']} refused, dropped: {dropped}")
        if link["last_error"]:
            lines.append(f"link last error: {link['last_error']}")
    if result.get("debug_capture_dir"):
        lines.append(f"debug captures ON: palm images written to {result['debug_capture_dir']}")
    wal = result.get("vault_wal")
    if wal is None:
        lines.append("vault: none (no [vault] in the config)")
    elif wal["truncated"]:
        lines.append("vault WAL: truncated")
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wal["blocked_since"]))
        lines.append(f"vault WAL NOT TRUNCATED since {since} ({wal['blocked_s']:.0f} s, {wal['attempts']} "
                     f"retries): a removed person's old pages stay in the -wal file; {wal['reason']}")
    return Reply(result, "\n".join(lines))


@command("tree", "tree", "the supervision tree: children, their states and restart counts",
         "Supervisors with their OTP strategy, state and restart intensity (restarts allowed per "
         "period); children with their restart type, state, restarts and last error.")
async def _tree(session: Session, args: tuple[str, ...]) -> Reply:
    supervisor = session.target.supervisor
    if supervisor is None:
        raise CommandError("the node is still starting: no supervision tree yet")
    snapshot = supervisor.tree()
    now = trio.current_time()
    lines: list[str] = []
    _render_tree(snapshot, "", lines, now)
    return Reply(_plain(snapshot), "\n".join(lines))


def _render_tree(tree: SupervisorSnapshot, indent: str, lines: list[str], now: float) -> None:
    if not lines:
        lines.append(f"{tree.name} [{tree.strategy}, {tree.state.value}, "
                     f"at most {tree.intensity} restarts / {tree.period:g} s]")
    for i, child in enumerate(tree.children):
        last = i == len(tree.children) - 1
        branch, below = ("└─ ", "   ") if last else ("├─ ", "│  ")
        since = "" if child.since is None else f" for {now - child.since:.1f} s"
        error = f"  last error: {child.last_error}" if child.last_error else ""
        head = f"{indent}{branch}{child.id} ({child.restart}) {child.state.value}{since}, " \
               f"restarts {child.restarts}{error}"
        if child.subtree is not None:
            sub = child.subtree
            head += f" [{sub.strategy}, {sub.state.value}, at most {sub.intensity} / {sub.period:g} s]"
        lines.append(head)
        if child.subtree is not None:
            _render_tree(child.subtree, indent + below, lines, now)


# -- live events

#: events a subscriber may hold before the oldest are dropped (a slow terminal never grows memory)
FOLLOW_BUFFER = 512


def followable() -> dict[str, type]:
    """Event types ``follow`` can show, by lower-case name."""
    types: list[type] = [PresenceChanged, BadgeRead, PaymentCardRead, CardNotRead, DeviceStateChanged,
                         GateStateChanged, ChildStateChanged, OverTemperature, Cooled, DeadmanTripped,
                         BoardNotice]
    if gate_events is not None:
        from palmnode.gate.modes import ModeChanged

        types += [gate_events.Decision, gate_events.Feedback, gate_events.GateOpened,
                  gate_events.PaymentResult, gate_events.LoyaltyMember, gate_events.PersonEnrolled,
                  gate_events.PersonDeleted, gate_events.EnrolProgress, ModeChanged]
    return {t.__name__.lower(): t for t in types}


def follow_groups() -> dict[str, tuple[str, ...]]:
    """Short names for sets of event types."""
    names = followable()
    gate = tuple(n for n in ("decision", "feedback", "gateopened", "paymentresult", "loyaltymember",
                             "personenrolled", "persondeleted", "enrolprogress", "modechanged") if n in names)
    return {
        "devices": ("devicestatechanged", "gatestatechanged", "childstatechanged", "overtemperature",
                    "cooled", "deadmantripped", "boardnotice"),
        "cards": ("badgeread", "paymentcardread", "cardnotread"),
        "presence": ("presencechanged",),
        "gate": gate,
    }


def resolve_follow(args: tuple[str, ...]) -> tuple[type, ...]:
    names = followable()
    if not args:
        return tuple(names.values())
    groups = follow_groups()
    chosen: dict[str, type] = {}
    for arg in (part for a in args for part in a.replace(",", " ").split()):
        key = arg.lower()
        if key in groups:
            chosen.update((n, names[n]) for n in groups[key])
        elif key in names:
            chosen[key] = names[key]
        else:
            raise CommandError(f"no event type {arg!r}: use {', '.join(groups)} or one of "
                               f"{', '.join(sorted(names))}")
    return tuple(chosen.values())


@command("follow", "follow [TYPES]", "live events from the node's bus until Ctrl-C or q",
         "TYPES: any of the groups devices, cards, presence, gate, or event names (decision, "
         "feedback, devicestatechanged, ...; comma or space separated). Default: everything. "
         "Events show ids, states and scores, never images, templates, card tokens or phone numbers.",
         max_args=32, ends_with_client=True)
async def _follow(session: Session, args: tuple[str, ...]) -> Reply:
    types = resolve_follow(args)
    names = sorted(t.__name__ for t in types)
    async with session.target.bus.subscribe(*types, buffer=FOLLOW_BUFFER) as events:
        await session.send({"text": f"following {', '.join(names)} (Ctrl-C or q stops)"})
        async for ev in events:
            await session.send({"event": event_to_plain(ev)})
    return Reply({"ended": True}, "the bus closed")  # pragma: no cover - the bus never closes


# -- statistics

@command("stats", "stats", "latency percentiles and decision, enrolment and deletion counts",
         "From the node's metrics: identify latency (hand present → decision, ms; percentiles of the "
         "recent window) by outcome, and the counters the flows keep.")
async def _stats(session: Session, args: tuple[str, ...]) -> Reply:
    metrics = session.target.metrics
    snap = metrics.snapshot()

    def by_label(name: str, label: str) -> dict[str, float]:
        return {s["labels"].get(label, ""): s["value"] for s in snap.get(name, {}).get("series", [])}

    latency: dict[str, dict[str, Any]] = {}
    for s in snap.get("palmnode_identify_latency_ms", {}).get("series", []):
        latency[s["labels"].get("outcome", "")] = {"count": s["count"], **s.get("percentiles", {})}
    overall = metrics.percentiles("palmnode_identify_latency_ms")
    count = sum(v["count"] for v in latency.values())
    if count:
        latency["all"] = {"count": count, **{f"p{q}": v for q, v in overall.items()}}
    result = {
        "latency_ms": latency,
        "decisions": by_label("palmnode_decisions_total", "outcome"),
        "decisions_unrecorded": by_label("palmnode_decisions_unrecorded_total", "reason"),
        "retries": by_label("palmnode_retries_total", "reason"),
        "enrolments": by_label("palmnode_enrolments_total", "result"),
        "deletions": metrics.value("palmnode_deletions_total"),
        "gallery_palms": metrics.value("palmnode_gallery_palms"),
    }
    lines = ["identify latency (ms, recent window):"]
    if latency:
        rows = [("outcome", "count", "p50", "p95", "p99")]
        for outcome, v in sorted(latency.items(), key=lambda kv: kv[0] == "all"):
            rows.append((outcome, str(v["count"]), *(_ms(v.get(p)) for p in ("p50", "p95", "p99"))))
        lines += ["  " + row for row in _table(rows)]
    else:
        lines.append("  no decisions yet")
    for title, key in (("decisions", "decisions"), ("decisions not recorded", "decisions_unrecorded"),
                       ("retries", "retries"), ("enrolments", "enrolments")):
        counts = result[key]
        shown = ", ".join(f"{k or '-'} {_count(v)}" for k, v in sorted(counts.items())) or "none"
        lines.append(f"{title}: {shown}")
    lines.append(f"deletions: {_count(result['deletions'])}")
    return Reply(result, "\n".join(lines))


@command("gallery", "gallery", "enrolled palms in memory and what they take")
async def _gallery(session: Session, args: tuple[str, ...]) -> Reply:
    gallery = session.target.gallery
    if gallery is None:
        raise CommandError("no gallery is loaded on this node yet")
    palms = len(gallery)
    memory = gallery.memory_bytes()
    per = memory / palms if palms else None
    text = f"{palms} palms, {_bytes(memory)} in memory" + (f" ({per:.0f} B per palm)" if per else "")
    return Reply({"palms": palms, "memory_bytes": memory, "bytes_per_palm": per}, text)


# -- devices

def channels(target: ReplTarget) -> tuple[str, ...]:
    illuminator = getattr(target.config, "illuminator", None)
    names = getattr(illuminator, "channels", None)
    return tuple(names) if names else ("ir", "surface")


#: the illuminator must take a command from the REPL within this long
LIGHT_TIMEOUT_S = 1.0


@command("light", "light CHANNEL LEVEL", "set an illuminator channel (ir, surface) to 0..1 (or on/off)",
         "The level stays until changed (by you or the identify flow, which switches lights per "
         "capture). Example: light ir 0.5", min_args=2, max_args=2)
async def _light(session: Session, args: tuple[str, ...]) -> Reply:
    channel, text = args
    known = channels(session.target)
    if channel not in known:
        raise CommandError(f"no light channel {channel!r}: use one of {', '.join(known)}")
    level = {"on": 1.0, "off": 0.0}.get(text.lower())
    if level is None:
        try:
            level = float(text)
        except ValueError:
            raise CommandError(f"level must be a number 0..1 (or on/off), not {text!r}") from None
    if not 0.0 <= level <= 1.0:
        raise CommandError(f"level must be within 0..1, not {text}")
    try:
        await session.target.lights.set(channel, level, timeout=LIGHT_TIMEOUT_S)
    except trio.TooSlowError:
        raise CommandError(f"the illuminator did not take the command within {LIGHT_TIMEOUT_S:g} s") from None
    except (DeviceError, ValueError) as exc:
        raise CommandError(f"illuminator: {exc}") from None
    return Reply({"channel": channel, "level": level}, f"{channel} light at {level:g}")


#: how long capture waits for each lit frame
CAPTURE_FRAME_TIMEOUT_S = 3.0
#: capture takes the first frame read this long after a light change
CAPTURE_SETTLE_S = 0.15


@command("capture", "capture [PATH]", "one lit frame pair → the palm ROI, saved as a PNG at PATH",
         "Lights on (NIR, then surface), one frame of each, lights off; the palm ROI is found in the "
         "NIR frame and both frames are warped to it. The client writes one PNG, NIR ROI left and "
         "surface ROI right, at PATH (default palm-roi-<time>.png in its current folder); it never "
         "overwrites a file. The node itself writes nothing. This is the only way a palm image "
         "reaches disk.", max_args=1)
async def _capture(session: Session, args: tuple[str, ...]) -> Reply:
    from palmnode.gate import capture

    target = session.target
    # an operator's capture is not timed like a gate decision: give the devices time
    # (and a frame well after each light change: a loaded node's camera lags more than a gate's)
    policy = attrs.evolve(capture.CapturePolicy(), frame_timeout_s=CAPTURE_FRAME_TIMEOUT_S,
                          light_timeout_s=LIGHT_TIMEOUT_S, settle_s=CAPTURE_SETTLE_S)
    capturer = capture.Capturer(target.lights, target.frames, policy)
    try:
        for channel in (policy.ir_channel, policy.surface_channel):  # from dark, whatever `light` left on
            await target.lights.set(channel, 0.0, timeout=LIGHT_TIMEOUT_S)
        pair = await capturer.capture_pair()
    except (DeviceError, trio.TooSlowError) as exc:
        raise CommandError(f"no capture: illuminator: {exc or 'too slow'}") from None
    except capture.CaptureUnavailable as exc:
        raise CommandError(f"no capture: {exc}") from None
    found = await trio.to_thread.run_sync(capture.locate, pair.nir, policy)
    if isinstance(found, RoiFailure):
        raise CommandError(f"no palm in view ({found.reason.value}: {found.detail}); nothing saved")
    png, width, height = await trio.to_thread.run_sync(_roi_png, pair.nir, pair.surface, found)
    result = {"png_base64": base64.b64encode(png).decode("ascii"), "width": width, "height": height,
              "hand": found.hand, "bytes": len(png)}
    if args:
        result["path"] = args[0]
    return Reply(result, f"ROI {found.hand} hand, NIR | surface, {width}×{height} PNG ({_bytes(len(png))})")


def _roi_png(nir, surface, found) -> tuple[bytes, int, int]:
    import cv2
    import numpy as np

    from palmnode.biometrics import roi

    image = np.hstack([roi.warp(nir, found), roi.warp(surface, found)])
    ok, data = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - PNG encoding of a grey uint8 image does not fail
        raise CommandError("PNG encoding failed")
    return data.tobytes(), image.shape[1], image.shape[0]


# -- config

#: config fields shown as "<hidden>" unless they name a place (…_file, …_path, …_env, …_dir) or
#: their value is a file path
SECRET_WORDS = ("key", "secret", "password", "passphrase", "token", "credentials")
_PLACE_SUFFIXES = ("_file", "_path", "_env", "_dir", "_folder")


@command("config", "config", "the running configuration (key files by path, never their contents)")
async def _config(session: Session, args: tuple[str, ...]) -> Reply:
    config = session.target.config
    lines: list[str] = []
    _render_config(config, "", lines)
    return Reply(config_to_plain(config), "\n".join(lines))


def config_to_plain(value: Any, name: str = "") -> Any:
    """Plain data of a config; secret-looking values and any bytes are replaced by ``<hidden>``."""
    if attrs.has(type(value)):
        return {f.name: config_to_plain(getattr(value, f.name), f.name) for f in attrs.fields(type(value))}
    if isinstance(value, bytes | bytearray):
        return "<hidden>"
    lowered = name.lower()
    if (value is not None and any(w in lowered.split("_") for w in SECRET_WORDS)
            and not lowered.endswith(_PLACE_SUFFIXES) and not _looks_like_path(value)):
        return "<hidden>"
    if isinstance(value, dict):
        return {str(k): config_to_plain(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [config_to_plain(v, name) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _looks_like_path(value: Any) -> bool:
    """A key *file* named by a secret-looking field (``key = "/etc/…/gate.key"``) is shown."""
    if isinstance(value, PurePath):
        return True
    return (isinstance(value, str) and "/" in value and len(value) < 4096
            and not any(c.isspace() for c in value) and "-----" not in value)


def _render_config(config: Any, prefix: str, lines: list[str]) -> None:
    """TOML-like text: attrs sections as [tables], everything else as ``key = value``."""
    fields = attrs.fields(type(config))
    if prefix:
        lines.append(f"[{prefix}]")
    for f in fields:
        value = getattr(config, f.name)
        if not attrs.has(type(value)):
            lines.append(f"{f.name} = {_toml(config_to_plain(value, f.name))}")
    for f in fields:
        value = getattr(config, f.name)
        if attrs.has(type(value)):
            _render_config(value, f"{prefix}.{f.name}" if prefix else f.name, lines)


def _toml(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)


# -- the Python console

@command("py", "py [SOURCE]", "a Python console inside the running node (when its config enables it)",
         "Off unless the node's config sets [repl] python_console = true. `py` alone enters the "
         "console (>>> prompts; top-level await works, e.g. await node.lights.set('ir', 0.2); "
         "names: node, trio); Ctrl-C cancels a running statement, Ctrl-D leaves. "
         "`py SOURCE` runs one statement. Everything you do here runs in the node: careful.",
         max_args=1)
async def _py(session: Session, args: tuple[str, ...]) -> Reply:
    if not session.python_console:
        raise CommandError("the Python console is off: set [repl] python_console = true in the "
                           "node's config and restart the node")
    if session.console is None:
        session.console = Console({"node": session.target, "trio": trio})
    if not args:
        node_id = getattr(getattr(session.target.config, "node", None), "node_id", "node")
        text = banner(node_id)
        return Reply({"banner": text, "more": False, "exit": False}, text)
    out = await session.console.run(args[0])
    return Reply({"more": out.more, "exit": out.exit}, out.text)


# -- formatting helpers

def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _ms(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _count(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _plain(value: Any) -> Any:
    """attrs values, enums and tuples → JSON-able data (for tree snapshots)."""
    if attrs.has(type(value)):
        return {f.name: _plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["COMMANDS", "Command", "CommandError", "FOLLOW_BUFFER", "GalleryView",
           "Reply", "channels", "ReplTarget", "Session", "config_to_plain", "follow_groups",
           "followable", "resolve_follow", "run_command"]


# -- people and the gate's mode (a node with a [vault])

def _gate(session: Session):
    target = session.target
    if getattr(target, "people", None) is None or getattr(target, "enrol", None) is None:
        raise CommandError("this node has no people: give its config a [vault] section")
    return target


#: the words a phone number may be written in ("+49 30 555 000 01"): E.164 has at most 15 digits
_PHONE_WORDS = 16


@command("enrol", "enrol PHONE [right|left|both]", "enrol a person here: card tap, then palms over the gate",
         "Starts the enrolment flow locally (as the controller's enrol.begin does): the person taps a "
         "payment card, then holds each palm over the gate until three captures agree. Progress is "
         "shown as it happens; Ctrl-C cancels, and so does the client going away. Example: "
         "enrol +4930555000001 both (the number may be written in groups: +49 30 555000001)", min_args=1,
         max_args=_PHONE_WORDS + 1, ends_with_client=True)
async def _enrol(session: Session, args: tuple[str, ...]) -> Reply:
    from palmnode.gate.enrol import EnrolBusy
    from palmnode.gate.events import EnrolProgress

    target = _gate(session)
    choices = {"right": ("right",), "left": ("left",), "both": ("right", "left")}
    named = len(args) > 1 and args[-1].isalpha()  # a number's groups are digits ("+49 30 555000001")
    if named and args[-1].lower() not in choices:
        raise CommandError(f"palms must be right, left or both, not {args[-1]!r}")
    palms = choices[args[-1].lower() if named else "right"]
    phone = " ".join(args[:-1] if named else args)  # spaces are ignored in a number (normalise_phone)
    async with target.bus.subscribe(EnrolProgress, buffer=64) as progress:
        try:
            request = target.enrol.begin(phone, palms)
        except (EnrolBusy, ValueError) as exc:
            raise CommandError(str(exc)) from None
        try:
            async with trio.open_nursery() as nursery:
                async def show() -> None:
                    async for ev in progress:
                        # (a detail that says its step already, "cancelled: …", is not prefixed again)
                        text = ev.detail if ev.detail.startswith(ev.step) else f"{ev.step}: {ev.detail}"
                        await session.send({"text": text})

                nursery.start_soon(show)
                result = await request.wait()
                nursery.cancel_scope.cancel()
        finally:
            if not request.done.is_set():
                target.enrol.cancel()  # interrupted: the person is not left half-enrolled
    if not result.ok:
        raise CommandError(f"enrolment failed: {result.reason}")
    return Reply({"person_id": result.person_id, "linked": result.linked},
                 f"enrolled as {result.person_id}" + (" (linked to an existing person)" if result.linked else ""))


@command("delete", "delete id ID | card HEX | phone NUMBER", "forget a person: vault, gallery, every gate",
         "Removes the person's templates, card and phone digests from this node's vault and gallery at "
         "once, leaves an audit entry without biometric data, and tells the controller, which removes them "
         "from every gate of the store. An enrolment in progress here with that card or phone is cancelled, "
         "nothing of it kept. A phone number may be written in groups: delete phone +49 30 555000001",
         min_args=2, max_args=_PHONE_WORDS + 1)
async def _delete(session: Session, args: tuple[str, ...]) -> Reply:
    target = _gate(session)
    kind, value = args[0], " ".join(args[1:])
    if kind != "phone" and len(args) > 2:
        raise CommandError(f"delete {kind} takes one value, got {len(args) - 1}")
    if kind == "card":
        from palmnode.link.wire import DIGEST_SIZE

        try:
            digest = bytes.fromhex(value)
        except ValueError:
            digest = b""
        if len(digest) != DIGEST_SIZE:  # another length would match no one: a person's is always this long
            raise CommandError(f"card must be the card token's digest, {DIGEST_SIZE * 2} hex digits: got "
                               f"{len(value)} characters{'' if digest else ', not all hex'}")
        named = {"card_digest": digest}
    elif kind in ("id", "phone"):
        named = {"person_id" if kind == "id" else "phone": value}
    else:
        raise CommandError(f"delete by id, card or phone, not {kind!r}")
    try:
        forgotten = await target.people.forget(**named)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    deleted, cancelled = forgotten.person_id is not None, forgotten.enrolment_cancelled
    text = "deleted" if deleted else "nobody stored matches"
    if cancelled:
        text += "; the enrolment in progress with this card or phone was cancelled, nothing of it kept"
    elif not deleted:
        text = "nobody matches"
    return Reply({"deleted": deleted, "enrolment_cancelled": cancelled}, text)


@command("mode", "mode entry | payment AMOUNT_CENTS CURRENCY [once] | loyalty", "set what the gate does for a person",
         "entry opens the turnstile; payment asks the controller to charge the person's card, every "
         "person identified (a fare) or, with once, only the next one whose charge is approved (a "
         "basket; the gate then returns to its mode before); loyalty reports the member to the point "
         "of sale. Example: mode payment 450 EUR once", min_args=1, max_args=4)
async def _mode(session: Session, args: tuple[str, ...]) -> Reply:
    from palmnode.gate.modes import GateMode

    target = _gate(session)
    name, words = args[0], args[1:]
    try:
        if name != "payment":
            mode = GateMode(name)  # an unknown mode: GateMode names the ones there are
            if words and words != ("once",):
                raise CommandError(f"{name} takes no amount or currency")
            mode = GateMode(name, once=bool(words))
        else:
            if len(words) > 2 and words[2] != "once":
                raise CommandError(f"after the currency only 'once', not {words[2]!r}")
            amount = words[0] if words else None
            if amount is not None and not (amount.isascii() and amount.removeprefix("-").isdigit()):
                raise CommandError(f"amount must be a whole number of minor units, got {amount!r}")
            mode = GateMode(name, None if amount is None else int(amount),
                            words[1].upper() if len(words) > 1 else None, once=len(words) > 2)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    target.modes.set(mode, at=trio.current_time())
    payment = target.modes.pending_payment()
    text = f"gate mode {mode.mode}" + (f": {payment_words(payment)}" if payment is not None else "")
    return Reply({"mode": mode.mode, "once": mode.once}, text)
