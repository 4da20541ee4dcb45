"""The node: config → supervision tree of device actors, health, event bus and structured logs."""
from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from drivers.card_reader.reads import BadgeRead, CardNotRead, PaymentCardRead
from drivers.illuminator.driver import BoardNotice, Cooled, DeadmanTripped, OverTemperature
from palmnode import __version__
from palmnode.actors import (Backoff, ChildContext, ChildSpec, DeviceStateChanged, EventBus,
                             GateStateChanged, HealthRegistry, Supervisor)
from palmnode.config import Config
from palmnode.devices import camera, card_reader, illuminator, proximity
from palmnode.devices.session import DeviceSession
from palmnode.fserrors import folder_error, lasting
from palmnode.biometrics.gallery import Gallery
from palmnode.biometrics.matcher import Calibration
from palmnode.gate.capture import Capturer, CapturePolicy
from palmnode.gate.debug_captures import DebugCaptures
from palmnode.gate.enrol import EnrolFlow, EnrolPolicy
from palmnode.gate.events import Decision, GateOpened, LoyaltyMember, PaymentResult, PersonDeleted, PersonEnrolled
from palmnode.gate.identify import IdentifyFlow, IdentifyPolicy, second_look_penalty
from palmnode.gate.modes import GateMode, GateModes, ModeChanged, payment_words
from palmnode.gate.people import People
from palmnode.gate.presence import PresenceChanged
from palmnode.link.client import LinkClient, LinkConfig
from palmnode.logs import LOG_HIDDEN_FIELDS, event, event_to_plain
from palmnode.metrics import Metrics, record_health, record_link, record_vault_wal, serve_metrics
from palmnode.ops import NodeOps
from palmnode.repl.server import serve_repl
from palmnode.systemd import serve_systemd, tree_healthy
from palmnode.vault import Vault, VaultError, open_vault
from palmnode.vault.steps import BUSY_TIMEOUT_S, STEP_S, in_vault_steps

log = logging.getLogger("palmnode.node")

#: what the node logs as it happens (nothing biometric, no person id; a payment card as its scheme and last four)
LOGGED_EVENTS = (PresenceChanged, BadgeRead, PaymentCardRead, CardNotRead, DeviceStateChanged, GateStateChanged,
                 OverTemperature, Cooled, DeadmanTripped, BoardNotice, Decision, GateOpened, PaymentResult,
                 LoyaltyMember, PersonEnrolled, PersonDeleted, ModeChanged)
HEALTH_METRICS_PERIOD_S = 1.0  # how stale a scrape of device health may be
#: how long the start waits for another process holding the vault's write lock (to open it, then to
#: abandon a charge the last run left in flight), and the step of those waits: a stop meanwhile is
#: served within one step. The running node's writes wait as long, in the same steps (vault.steps)
VAULT_BUSY_TIMEOUT_S = BUSY_TIMEOUT_S
VAULT_OPEN_STEP_S = STEP_S
#: what this node offers the controller in its hello
CAPABILITIES = ("events", "enrol", "delete", "replication", "modes", "status", "metrics")


class Node:
    """One gate's node. ``await nursery.start(node.run)`` returns once every actor has started."""

    def __init__(self, config: Config, *, gallery: Gallery | None = None) -> None:
        """``gallery``: start from these palms (the gate bench's synthetic crowd) plus the vault's."""
        self.config = config
        self.bus = EventBus()
        self.lights = illuminator.Lights()
        self.frames = camera.FrameSource()
        self.metrics = Metrics()
        self.started_at = time.time()  # Unix time, for the metrics
        self._started = time.monotonic()  # node.status's uptime: a step of the wall clock changes nothing
        self.metrics.set("palmnode_build_info", 1.0, version=__version__)
        self.metrics.set("palmnode_start_time_seconds", self.started_at)
        gate = config.gate
        self.modes = GateModes(self.bus, GateMode(gate.mode, gate.amount_cents, gate.currency))
        self.ops = NodeOps(self)
        self.health: HealthRegistry | None = None
        self.supervisor: Supervisor | None = None
        # the working gate (with a [vault]): set up when the node runs
        self.vault: Vault | None = None
        self.gallery: Gallery | None = gallery
        self.people: People | None = None
        self.identify: IdentifyFlow | None = None
        self.enrol: EnrolFlow | None = None
        self.debug_captures: DebugCaptures | None = None
        self.link: LinkClient | None = None
        self.threshold: float | None = None

    def _device_specs(self, health: HealthRegistry, backoff: Backoff) -> list[ChildSpec]:
        cfg = self.config
        token_key = card_reader.load_token_key(cfg.card_reader.token_key_file)
        serves: list[tuple[str, bool, Callable[[Callable[[], None]], Awaitable[None]]]] = [
            (illuminator.NAME, cfg.illuminator.enabled,
             functools.partial(illuminator.serve, cfg.illuminator, health, self.bus, self.lights)),
            (proximity.NAME, cfg.proximity.enabled,
             functools.partial(proximity.serve, cfg.proximity, health, self.bus)),
            (camera.NAME, cfg.camera.enabled,
             functools.partial(camera.serve, cfg.camera, health, self.bus, self.frames)),
            (card_reader.NAME, cfg.card_reader.enabled,
             functools.partial(card_reader.serve, cfg.card_reader, token_key, health, self.bus)),
        ]
        specs = []
        for name, enabled, serve in serves:
            if not enabled:
                continue
            health.register(name)
            session = DeviceSession(name, health, backoff)
            specs.append(ChildSpec(name, _session_child(session, serve), device=name))
        return specs

    async def _open_vault(self, node_id: str) -> Vault:
        """Open the vault, waiting up to VAULT_BUSY_TIMEOUT_S for another process holding its write
        lock (a backup, an ``sqlite3`` shell) in steps of VAULT_OPEN_STEP_S (vault.steps.in_vault_steps: a
        stop meanwhile ends it within a step). Past the timeout it raises the last VaultBusy, as one
        long wait would have ("database is locked": exit 1, retried)."""
        vault_cfg = self.config.vault
        return await in_vault_steps(functools.partial(
            open_vault, vault_cfg, node_id=node_id, create_key=vault_cfg.key_file is not None,
            exclusive=True, busy_timeout=VAULT_BUSY_TIMEOUT_S, open_busy_timeout=VAULT_OPEN_STEP_S),
            VAULT_BUSY_TIMEOUT_S)

    async def _open_gate(self) -> list[ChildSpec]:
        """Vault → gallery, the flows and the controller link (a node with a [vault] section)."""
        cfg = self.config
        node_id = cfg.node.node_id
        try:
            calibration = Calibration.from_json(Path(cfg.gate.calibration).read_text())
            self.threshold = calibration.decision_threshold(cfg.gate.target_fmr)
            look_penalty = second_look_penalty(calibration, cfg.gate.target_fmr)
            vein_floor = calibration.vein_floor(cfg.gate.vein_fmr)
        except (OSError, ValueError) as exc:
            why = (exc.strerror or exc) if isinstance(exc, OSError) else exc
            raise GateSetupError(f"calibration {cfg.gate.calibration}: {why}", config=True) from None
        vault_cfg = cfg.vault
        for path in (vault_cfg.path, vault_cfg.key_file):
            folder = Path(path).parent if path is not None else None
            try:
                if folder is not None:
                    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:  # a file in the way, a read-only or foreign folder: as the config says
                why = folder_error(exc)
                raise GateSetupError(f"vault {vault_cfg.path}: cannot create folder {folder}: {why}",
                                     config=lasting(exc)) from None
        try:
            self.vault = await self._open_vault(node_id)
        except (VaultError, OSError) as exc:  # lasting: the key, a damaged or unwritable file; a held vault: not
            raise GateSetupError(f"vault {cfg.vault.path}: {exc}", config=_lasting(exc)) from None
        if self.gallery is None:   # a search may stop early at a candidate the gate would accept
            self.gallery = Gallery(exit_score=self.threshold, threads=cfg.gate.search_threads)
        if cfg.controller is not None:
            link = cfg.controller
            try:
                self.link = LinkClient(
                    LinkConfig(host=link.host, port=link.port, ca=link.ca, cert=link.cert, key=link.key,
                               node_id=node_id, server_name=link.server_name),
                    self.vault, self.ops.handle, on_connected=self.ops.sync, capabilities=CAPABILITIES)
            except ValueError as exc:  # TlsConfigError, LinkConfigError: one line with the fix
                raise GateSetupError(str(exc), config=True) from None
        self.people = People(self.vault, self.gallery, node_id, self.bus, self.metrics,
                             events_appended=self.link.events_appended if self.link else None,
                             forget_frames=self.frames.forget_frames)
        try:
            palms = await self.people.load()
            await self.ops.abandon_interrupted_charge(timeout_s=VAULT_BUSY_TIMEOUT_S, step_s=VAULT_OPEN_STEP_S)
        except VaultError as exc:  # damaged pages met by the load: lasting; an I/O error: may pass
            raise GateSetupError(f"vault {cfg.vault.path}: {exc}", config=exc.lasting) from None
        capturer = Capturer(self.lights, self.frames, CapturePolicy(quality=cfg.quality, roi_limits=cfg.roi))
        if cfg.debug.capture_dir:  # an operator's explicit choice: raw palm images on disk
            try:
                self.debug_captures = capturer.debug = DebugCaptures(
                    cfg.debug.capture_dir, cfg.debug.capture_max_files,
                    clock_offset=time.time() - trio.current_time())
            except OSError as exc:
                raise GateSetupError(f"debug capture folder {cfg.debug.capture_dir}: {exc.strerror or exc}",
                                     config=True) from None
        self.identify = IdentifyFlow(self.bus, capturer, self.gallery, people=self.people, modes=self.modes,
                                     charge=self.ops.charge, metrics=self.metrics,
                                     policy=IdentifyPolicy(threshold=self.threshold, vein_floor=vein_floor,
                                                           second_look_penalty=look_penalty))
        self.enrol = EnrolFlow(self.bus, capturer, self.gallery, self.people, metrics=self.metrics,
                               policy=EnrolPolicy(agree_threshold=calibration.decision_threshold(1e-4),
                                                  duplicate_threshold=self.threshold,
                                                  second_look_penalty=look_penalty,
                                                  on_duplicate=cfg.gate.on_duplicate))
        event(log, "gate ready to identify", palms=palms, threshold=round(self.threshold, 4),
              vein_floor=None if vein_floor == -math.inf else round(vein_floor, 4),
              second_look_penalty=round(look_penalty, 4),
              target_fmr=cfg.gate.target_fmr, mode=self.modes.current.mode)
        specs = [ChildSpec("report", self.ops.report, signals_started=True),
                 ChildSpec("identify", _started(self.identify.run), signals_started=True),
                 ChildSpec("enrol", _started(self.enrol.run), signals_started=True),
                 # retries a WAL truncation another connection to the vault blocked (a removal's, the opening's)
                 ChildSpec("wal-scrub", _started(self.people.wal.run), signals_started=True)]
        if self.link is not None:
            specs.append(ChildSpec("link", _started(self.link.run), signals_started=True))
        return specs

    def _service_specs(self) -> list[ChildSpec]:
        cfg = self.config
        specs = []
        if cfg.repl is not None and cfg.repl.enabled:
            specs.append(ChildSpec("repl", _started(functools.partial(
                serve_repl, self, cfg.repl.socket_path, python_console=cfg.repl.python_console,
                max_sessions=cfg.repl.max_sessions, idle_timeout_s=cfg.repl.idle_timeout_s)),
                signals_started=True))
        if cfg.metrics.enabled:
            specs.append(ChildSpec("metrics", _started(functools.partial(
                serve_metrics, self.metrics, cfg.metrics.host, cfg.metrics.port)), signals_started=True))
        specs.append(ChildSpec("systemd", _started(functools.partial(
            serve_systemd, self.healthy, status=self.status_line)), signals_started=True))
        return specs

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.health = HealthRegistry(self.bus)
        try:
            gate_specs = await self._open_gate() if self.config.vault is not None else []
            await self._supervise(gate_specs, task_status)
        finally:
            if self.debug_captures is not None:
                self.debug_captures.close()
            if self.vault is not None:
                self.vault.close()
                if self.vault.scrub_pending:
                    log.warning("node stopped with its vault's WAL not truncated: a removed person's old pages "
                                "stay in the -wal file until its next start", extra={"fields": {
                                    "vault": str(self.vault.path), "reason": self.vault.scrub_blocked}})

    async def _supervise(self, gate_specs: list[ChildSpec], task_status) -> None:
        sup = self.config.supervision
        backoff = Backoff(initial=sup.backoff_initial_s, maximum=sup.backoff_max_s)

        def supervisor(name: str, specs: list[ChildSpec], strategy: str, **kw) -> Supervisor:
            return Supervisor(name, specs, strategy=strategy, intensity=sup.intensity, period=sup.period_s,
                              backoff=backoff, bus=self.bus, **kw)

        children = [ChildSpec("event-log", self._log_events, signals_started=True),
                    supervisor("devices", self._device_specs(self.health, backoff), "one_for_one",
                               health=self.health).as_child(id="devices")]
        if gate_specs:
            children.append(supervisor("gate", gate_specs, "one_for_one").as_child(id="gate"))
        last = [ChildSpec("health-metrics", self._health_metrics, signals_started=True)]  # restarts nothing else
        self.supervisor = supervisor("node", children + self._service_specs() + last, "rest_for_one")
        event(log, "node starting", node_id=self.config.node.node_id,
              config=str(self.config.source) if self.config.source else None)
        await self.supervisor.run(task_status=task_status)

    # ---- views for the REPL, the controller's node.status and systemd ---------------------------
    def healthy(self) -> bool:
        return self.supervisor is not None and tree_healthy(self.supervisor.tree())

    async def status(self) -> dict[str, Any]:
        """The controller's ``node.status`` (the vault is counted in a worker thread)."""
        health = self.health
        people = await trio.to_thread.run_sync(self.vault.count) if self.vault is not None else 0
        return {
            "node_id": self.config.node.node_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "gate": health.gate.value if health else "starting",
            "devices": [{"name": d.name, "state": d.state.value, "restarts": d.restarts}
                        for d in (health.snapshot() if health else ())],
            "people": people,
            "gallery_palms": len(self.gallery) if self.gallery is not None else 0,
            "mode": self.modes.current.mode,
            # payment: the amount charged, and whether one person pays it (a basket) or everyone
            "payment": self.modes.pending_payment(),
            "enrolment": self.enrol.state.value if self.enrol is not None else "idle",
            "debug_capture_dir": str(self.debug_captures.folder) if self.debug_captures is not None else None,
            "controller": None if self.link is None else ("connected" if self.link.connected else "away"),
            # the link's counters: connects, events sent/acked, the controller's requests served/refused, drops
            "link": None if self.link is None else self.link.stats.snapshot(),
            # a removal's WAL truncation another connection blocks: since when, retries, why
            "vault_wal": self.people.wal.state() if self.people is not None else None,
        }

    def status_line(self) -> str:
        """systemd's STATUS= (read on the event loop: no I/O)."""
        gate = self.health.gate.value if self.health else "starting"
        palms = len(self.gallery) if self.gallery is not None else 0
        line = f"gate {gate}, {palms} palms, mode {self.modes.current.mode}"
        payment = self.modes.pending_payment()
        if payment is not None:  # as node.status and the REPL's status: how much, in what, who pays
            line += f": {payment_words(payment)}"
        wal = self.people.wal.state() if self.people is not None else {"truncated": True}
        if not wal["truncated"]:  # the same text all along (STATUS= is sent again only when it changes)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wal["blocked_since"]))
            line += f", vault WAL not truncated since {since} (another connection holds the file)"
        return line

    async def _log_events(self, ctx: ChildContext) -> None:
        async with self.bus.subscribe(*LOGGED_EVENTS, buffer=256) as events:
            ctx.started()
            async for ev in events:
                event(log, _EVENT_NAMES.get(type(ev), type(ev).__name__), **_fields(ev))
                del ev  # the last event logged (a person id) is not kept while the gate is quiet


    async def _health_metrics(self, ctx: ChildContext) -> None:
        """Every HEALTH_METRICS_PERIOD_S, the health registry (and the link's state and counters,
        and the vault's WAL truncation) into the metrics."""
        ctx.started()
        while True:
            record_health(self.metrics, self.health, bus_dropped=self.bus.statistics().dropped,
                          link_connected=None if self.link is None else self.link.connected)
            if self.link is not None:
                record_link(self.metrics, self.link.stats)
            if self.people is not None:
                record_vault_wal(self.metrics, self.people.wal.state(), self.people.wal.retries_total)
            await trio.sleep(HEALTH_METRICS_PERIOD_S)




def _lasting(exc: VaultError | OSError) -> bool:
    """The vault's error meets a restart unchanged (VaultError.reason: damaged, unknown schema, not
    writable, the key), so only an operator can cure it."""
    return exc.lasting if isinstance(exc, VaultError) else lasting(exc)


class GateSetupError(Exception):
    """The gate cannot start identifying (calibration or vault unusable); one line says why.
    ``config``: a file or folder the config names can never work as it is (a restart would fail
    the same way: ``palmnode run`` exits 78); otherwise a restart may succeed (exit 1)."""

    def __init__(self, message: str, *, config: bool = False) -> None:
        super().__init__(message)
        self.config = config


def _started(run: Callable[..., Awaitable[None]]) -> Callable[[ChildContext], Awaitable[None]]:
    """A child for an actor whose ``run(task_status=...)`` reports when it serves."""
    async def child(ctx: ChildContext) -> None:
        class _Status:
            def started(self, value: object = None) -> None:
                ctx.started()
        await run(task_status=_Status())
    return child


def _session_child(session: DeviceSession,
                   serve: Callable[[Callable[[], None]], Awaitable[None]]) -> Callable[[ChildContext], Awaitable[None]]:
    async def child(ctx: ChildContext) -> None:
        await session.run(serve)
    return child


_EVENT_NAMES = {
    PresenceChanged: "presence", BadgeRead: "card read", PaymentCardRead: "card read", CardNotRead: "card not read",
    DeviceStateChanged: "device state", GateStateChanged: "gate state",
    OverTemperature: "over temperature", Cooled: "cooled", DeadmanTripped: "dead-man tripped",
    BoardNotice: "board notice", Decision: "decision", GateOpened: "gate opened", PaymentResult: "payment",
    LoyaltyMember: "loyalty member", PersonEnrolled: "person enrolled", PersonDeleted: "person deleted",
    ModeChanged: "gate mode",
}


def _fields(ev: object) -> dict[str, object]:
    """An event's fields for its log line (logs.LOG_HIDDEN_FIELDS left out)."""
    fields = event_to_plain(ev, LOG_HIDDEN_FIELDS)
    del fields["type"]
    if isinstance(ev, PaymentCardRead):
        fields["kind"] = "payment"
    elif isinstance(ev, BadgeRead):
        fields["kind"] = "badge"
    return fields
