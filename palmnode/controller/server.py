"""The reference store controller: a TLS server for every node of a store (docs/controller.md).

    controller = Controller(ControllerConfig(db_path=..., key_file=..., ca_file=..., ...))
    port = await nursery.start(controller.run)
    await controller.wait_node("gate-1")
    result = await controller.request("gate-1", "mode.set", {"mode": "payment", ...})

Per connection (docs/protocols/controller.md): mutual TLS, each end's Hello first (the node id
must equal its certificate's CN), then a receive loop and a send queue. Events are applied exactly
once by the :class:`~palmnode.controller.store.Store` and acknowledged; enrolments and deletions
are pushed to every other connected node as ``person.upsert`` / ``person.remove``; nodes that were
away catch up with ``sync``. A peer that breaks the protocol loses its own connection (one log
line, counted in :attr:`Controller.stats`); every other node keeps being served.
"""
from __future__ import annotations

import functools
import logging
import math
import sqlite3
import ssl
import time
from collections import deque
from pathlib import Path
from typing import Any

import attrs
import trio

from palmnode.controller.store import (
    CARD_FORGOTTEN,
    FORGET_WINDOW_S,
    KEEP_PER_NODE,
    MAX_ID,
    SQL_INT,
    Applied,
    Change,
    Remove,
    Store,
    StoreError,
    Upsert,
)
from palmnode.link import codec, tls
from palmnode.link.channel import (
    Channel,
    ChannelStats,
    LinkClosed,
    LinkError,
    LinkProtocolError,
)
from palmnode.link.client import HELLO_TIMEOUT_S
from palmnode.link.messages import (
    PROTOCOL_VERSION,
    Ack,
    Event,
    Hello,
    Message,
    Request,
    Response,
    one_line,
)
from palmnode.link.refusals import RefusalLog
from palmnode.link.wire import DIGEST_SIZE
from palmnode.vault import VaultKeyError, load_keys
from palmnode.walscrub import WalKeeper

log = logging.getLogger("palmnode.controller")

DEFAULT_PORT = 7443  # docs/protocols/controller.md §1
CAPABILITIES = ("sync", "charge")  # §4: the ops this controller serves
MAX_SYNC_LIMIT = 1000  # §5 sync: a node may ask for fewer changes a page, never more than this
MAX_NODE_REQUESTS = 16  # a node's requests served at once; more wait (backpressure on its connection)
MAX_UNANSWERED_PUSHES = 1024  # pushes remembered for counting their answers; older ones are forgotten
PRUNE_EVERY_S = 3600.0  # how often events older than the retention are pruned
#: our hello waits for the probe of a connected node id (§4), and a gate gives it HELLO_TIMEOUT_S from its
#: TLS handshake: the probe ends 2 s before that (the handshake's last flight, the network, our hello)
MAX_PROBE_TIMEOUT_S = HELLO_TIMEOUT_S - 2.0


class ControllerError(Exception):
    """The controller cannot start (key, database, certificates, address); one line naming the fix."""


class NodeUnavailable(ControllerError):
    """The node is not connected, or its connection ended before it answered."""


class RequestFailed(ControllerError):
    """The node answered ``ok: false``; the message is its one-line reason."""


class RequestTimeout(ControllerError, TimeoutError):
    """The node did not answer within the timeout."""


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ControllerError(f"controller.{attribute.name} must be > 0, got {value!r}")


def _port(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ControllerError(f"controller.port must be 0-65535 (0 = any free port), got {value!r}")


def _cents(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 0:
        raise ControllerError(f"controller.charge_limit_cents must be 0 or more, got {value!r}")


def _probe_timeout(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value <= MAX_PROBE_TIMEOUT_S:
        raise ControllerError(f"controller.probe_timeout_s must be at most {MAX_PROBE_TIMEOUT_S:g} s, below the "
                              f"gates' {HELLO_TIMEOUT_S:g} s hello timeout (the controller's hello waits for the "
                              f"probe), got {value!r}")


def _sync_limit(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if not 1 <= value <= MAX_SYNC_LIMIT:
        raise ControllerError(f"controller.sync_limit must be 1 to {MAX_SYNC_LIMIT}, got {value!r}")


@attrs.frozen
class ControllerConfig:
    """Where the reference controller listens and keeps its record.

    ``key_file`` (hex secret, 0600) seals templates at rest; None reads ``key_env`` instead.
    ``ca_file``/``cert_file``/``cert_key_file`` are the store CA and the controller's own
    certificate and key (``palmnode certs`` makes them as ca.pem, controller.pem, controller.key).
    """

    db_path: str = "controller.db"
    key_file: str | None = "controller.key.hex"
    key_env: str = "PALMNODE_CONTROLLER_KEY"
    ca_file: str = "certs/ca.pem"
    cert_file: str = "certs/controller.pem"
    cert_key_file: str = "certs/controller.key"
    host: str = "127.0.0.1"
    port: int = attrs.field(default=DEFAULT_PORT, validator=_port)  # 0 = any free port
    name: str = "controller"  # our Hello's node_id: the CN of cert_file
    max_frame: int = attrs.field(default=codec.MAX_FRAME, validator=_positive)
    charge_limit_cents: int = attrs.field(default=10_000, validator=_cents)
    hello_timeout_s: float = attrs.field(default=10.0, validator=_positive)  # §4: TLS + hello from accept
    max_greeting: int = attrs.field(default=128, validator=_positive)  # connections in their TLS handshake
    # and hello at once; more are closed at accept (a flood of idle sockets costs ~50 KB each until
    # their hello timeout), and a gate among them retries with its backoff
    request_timeout_s: float = attrs.field(default=10.0, validator=_positive)  # Controller.request default
    probe_timeout_s: float = attrs.field(default=5.0, validator=[_positive, _probe_timeout])  # a second
    # connection naming a connected node: the first is asked node.status; answering within this keeps it
    # (the newcomer is refused), else it is taken for dead and replaced. Asked before our hello (§4), so at
    # most MAX_PROBE_TIMEOUT_S, under the gates' hello timeout (10 s)
    send_queue: int = attrs.field(default=256, validator=_positive)  # frames queued per node; a node this
    # far behind is dropped, reconnects and syncs
    send_queue_bytes: int = attrs.field(default=4 * codec.MAX_FRAME, validator=_positive)  # and bytes: a frame
    # may be up to max_frame, so 256 of them could pin 256 MiB for one slow node; at least max_frame
    sync_limit: int = attrs.field(default=100, validator=_sync_limit)  # §5 sync: default changes per page
    event_retention_days: float = attrs.field(default=90.0, validator=_positive)  # applied events kept this
    # long, then pruned (at start and every PRUNE_EVERY_S)
    events_kept_per_node: int = attrs.field(default=KEEP_PER_NODE, validator=_positive)  # each gate's newest
    # events are kept whatever their age (a clock jumping forward must not forget keys a gate may resend)
    forget_window_s: float = attrs.field(default=FORGET_WINDOW_S, validator=_positive)  # a card deleted
    # store-wide at D: an enrolment of it that a gate made (its enrolled_at) up to D + this is refused
    # when it arrives (begun before the deletion, at a gate it could not reach; a gate's longest
    # enrolment, 90 s by default, plus clock skew); one made later is a new enrolment, taken

    def __attrs_post_init__(self) -> None:
        if self.send_queue_bytes < self.max_frame:
            raise ControllerError(f"controller.send_queue_bytes must be at least max_frame ({self.max_frame}) so "
                                  f"the largest frame fits, got {self.send_queue_bytes!r}")

    @classmethod
    def from_certs_dir(cls, certs: Path | str, **kwargs: Any) -> ControllerConfig:
        """The config with the three certificate paths of a ``palmnode certs`` folder."""
        certs = Path(certs)
        name = kwargs.get("name", "controller")
        return cls(ca_file=str(certs / "ca.pem"), cert_file=str(certs / f"{name}.pem"),
                   cert_key_file=str(certs / f"{name}.key"), **kwargs)


@attrs.define
class ControllerStats:
    """Counters a health view or a test reads. ``dropped`` counts connections closed because of
    the peer, by reason: tls, timeout, no hello, slow, error, busy (refused at accept: too many
    connections in their hello), duplicate (a node id already connected and answering), and the
    link's own (protocol,
    oversize, msgpack, shape, truncated, overflow); ``link`` is frames and bytes of every channel."""

    connections: int = 0
    sessions: int = 0
    replaced: int = 0
    dropped: dict[str, int] = attrs.field(factory=dict)
    last_drop: str | None = None
    events_applied: int = 0
    events_duplicate: int = 0
    events_rejected: int = 0
    requests_served: int = 0
    probes: int = 0  # node.status probes of a connected node id another connection named (§4)
    probes_shared: int = 0  # newcomers that waited for a probe already running instead of asking again
    pushes: int = 0
    pushes_failed: int = 0
    link: ChannelStats = attrs.field(factory=ChannelStats)

    def drop(self, reason: str, line: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.last_drop = line


@attrs.frozen
class Deletion:
    """What :meth:`Controller.delete_person` did.

    ``person_id``: the person removed from the record (None: it held nobody so named). By card
    (empty by id): ``asked``, the gates connected then, each sent ``person.delete {card_digest}``;
    ``enrolments_cancelled``, those where an enrolment in progress of that card was cancelled;
    ``removed_at``, those that removed a person they held with that card when asked (one the
    record did not know yet, or before the record's ``person.remove`` push reached them);
    ``unreached``, the gates that did not answer (gone, no answer in time, refused): node id -> one
    line. A gate not connected has no enrolment to stop: an enrolment of the card it made before
    the deletion is refused when it arrives (docs/controller.md)."""

    person_id: str | None
    asked: tuple[str, ...] = ()
    enrolments_cancelled: tuple[str, ...] = ()
    removed_at: tuple[str, ...] = ()
    unreached: dict[str, str] = attrs.field(factory=dict)

    @property
    def found(self) -> bool:
        """Whether anything was forgotten: a record, a gate's person, an enrolment in progress."""
        return self.person_id is not None or bool(self.enrolments_cancelled or self.removed_at)


class _Ended(Exception):
    """Why a session stopped without a protocol error of the peer's: ``goodbye`` is what we tell it
    (None: nothing), ``drop`` the reason counted in :attr:`ControllerStats.dropped` (None: not a drop)."""

    def __init__(self, detail: str, *, goodbye: str | None = None, drop: str | None = None) -> None:
        super().__init__(detail)
        self.goodbye = goodbye
        self.drop = drop


@attrs.define(eq=False)
class _Pending:
    op: str
    done: trio.Event = attrs.field(factory=trio.Event)
    response: Response | None = None


class _SendQueue:
    """A node's frames waiting for its send loop, encoded, so they are bounded by bytes as well as by
    count: at most ``max_frames`` frames and ``max_bytes`` bytes (besides the frame being written;
    a frame into an empty queue always fits). :meth:`put_nowait` raises :class:`trio.WouldBlock`
    when a frame does not fit (or others wait before it); :meth:`put` waits for room, first come
    first served, like a trio memory channel."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.bytes = 0
        self._frames: deque[bytes] = deque()
        self._waiting: deque[list] = deque()  # [frame, admitted: trio.Event] of blocked put()s, in order
        self._arrived = trio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def _fits(self, size: int) -> bool:
        return not self._frames or (len(self._frames) < self.max_frames and self.bytes + size <= self.max_bytes)

    def _append(self, frame: bytes) -> None:
        self._frames.append(frame)
        self.bytes += len(frame)
        self._arrived.set()

    def put_nowait(self, frame: bytes) -> None:
        if self._closed:
            raise trio.ClosedResourceError("send queue closed")
        if self._waiting or not self._fits(len(frame)):
            raise trio.WouldBlock
        self._append(frame)

    async def put(self, frame: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.put_nowait(frame)
            return
        except trio.WouldBlock:
            pass
        waiter = [frame, trio.Event()]
        self._waiting.append(waiter)
        try:
            await waiter[1].wait()
        finally:
            if not waiter[1].is_set():  # cancelled while waiting: it never went in
                self._waiting.remove(waiter)
        if waiter[0] is None:
            raise trio.ClosedResourceError("send queue closed")

    async def get(self) -> bytes:
        """The oldest frame; :class:`trio.EndOfChannel` once closed."""
        while not self._frames:
            if self._closed:
                raise trio.EndOfChannel
            self._arrived = trio.Event()
            await self._arrived.wait()
        frame = self._frames.popleft()
        self.bytes -= len(frame)
        while self._waiting and self._fits(len(self._waiting[0][0])):
            waiter = self._waiting.popleft()
            self._append(waiter[0])
            waiter[1].set()
        return frame

    def close(self) -> None:
        """Drop what is queued; blocked and later puts raise :class:`trio.ClosedResourceError`."""
        self._closed = True
        self._frames.clear()
        self.bytes = 0
        for waiter in self._waiting:
            waiter[0] = None
            waiter[1].set()
        self._waiting.clear()
        self._arrived.set()


@attrs.define(eq=False)
class _Probe:
    """A ``node.status`` probe of a connected node running now (§4), shared by the newcomers
    naming that node id that arrive meanwhile."""

    done: trio.Event = attrs.field(factory=trio.Event)
    answered: bool | None = None  # None: the task probing was cancelled before it knew


@attrs.define(eq=False)
class _Session:
    """One node's live connection after the hellos."""

    node_id: str
    capabilities: tuple[str, ...]
    version: int
    peer: str
    channel: Channel
    queue: _SendQueue  # frames for the send loop
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    pending: dict[int, _Pending] = attrs.field(factory=dict)  # our requests, awaited by a caller
    pushes: dict[int, str] = attrs.field(factory=dict)  # replication pushes unanswered: id -> op
    request_slots: trio.Semaphore = attrs.field(factory=lambda: trio.Semaphore(MAX_NODE_REQUESTS))
    next_id: int = 1
    ended: BaseException | None = None  # why the session stopped (the first reason wins)
    events_held: bool = False  # an event could not be recorded: none after it is applied on this connection
    replaced: _Session | None = None  # the node's dead session this one took the place of (§4)
    probe: _Probe | None = None  # the node.status probe of this session running now, if any

    def end(self, reason: BaseException) -> None:
        if self.ended is None:
            self.ended = reason
        self.scope.cancel()

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    async def send(self, msg: Message, max_frame: int) -> None:
        """Queue ``msg`` for the send loop, waiting for room (ClosedResourceError once it ended)."""
        await self.queue.put(codec.encode(msg, max_frame=max_frame))


class Controller:
    """The reference store controller. ``port = await nursery.start(controller.run)``."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.stats = ControllerStats()
        self.store: Store | None = None
        self.port: int | None = None
        self._sessions: dict[str, _Session] = {}
        self._changed = trio.Event()
        self._greeting = 0  # connections in _greet now
        self._wal: WalKeeper | None = None  # retries a WAL truncation another connection blocked
        # a gate sending bad events or refusing every push logs a few lines and a summary an interval
        self._rejected_events = RefusalLog(log, "events rejected", level=logging.WARNING)
        self._refused_pushes = RefusalLog(log, "replications refused", level=logging.WARNING)

    # -- public API ----------------------------------------------------------------------------

    def nodes(self) -> dict[str, tuple[str, ...]]:
        """The connected nodes, each with the capabilities of its Hello."""
        return {node_id: s.capabilities for node_id, s in self._sessions.items()}

    def status(self) -> dict[str, Any]:
        """What the controller reports of itself, as plain data naming no one: ``port`` (None while
        not listening), ``nodes`` (the connected node ids), ``stats`` (:attr:`stats` as a map) and
        ``wal``, its database's WAL truncation after a removal (``walscrub.WalKeeper.state()``:
        ``{truncated: true}``, or while another connection to the file blocks it ``truncated`` false,
        ``blocked_since`` (Unix time), ``blocked_s``, ``attempts`` (retries since) and ``reason``;
        None while not running), with ``wal_retries_total`` (retries over the controller's life).
        Call it in the controller's trio thread."""
        wal = self._wal
        return {"port": self.port, "nodes": sorted(self._sessions), "stats": attrs.asdict(self.stats),
                "wal": None if wal is None else wal.state(),
                "wal_retries_total": 0 if wal is None else wal.retries_total}

    async def wait_node(self, node_id: str, *, connected: bool = True) -> None:
        """Return once ``node_id`` is connected (or, with ``connected=False``, is not)."""
        while (node_id in self._sessions) != connected:
            await self._changed.wait()

    async def request(self, node_id: str, op: str, args: dict[str, Any] | None = None, *,
                      timeout: float | None = None) -> dict[str, Any]:
        """Ask ``node_id`` to run ``op`` (§5) and return its result.

        Raises :class:`NodeUnavailable` (not connected, or gone before answering),
        :class:`RequestTimeout`, or :class:`RequestFailed` with the node's reason.
        """
        session = self._sessions.get(node_id)
        if session is None:
            raise NodeUnavailable(f"node {node_id} is not connected")
        timeout = self.config.request_timeout_s if timeout is None else timeout
        request_id = session.new_id()
        pending = session.pending[request_id] = _Pending(op)
        try:
            with trio.fail_after(timeout):
                await session.send(Request(id=request_id, op=op, args=dict(args or {})), self.config.max_frame)
                await pending.done.wait()
        except trio.TooSlowError:
            raise RequestTimeout(f"node {node_id} did not answer {op} within {timeout:g} s") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise NodeUnavailable(f"node {node_id} disconnected before answering {op}") from None
        finally:
            session.pending.pop(request_id, None)
        if pending.response is None:
            raise NodeUnavailable(f"node {node_id} disconnected before answering {op}")
        if not pending.response.ok:
            raise RequestFailed(f"node {node_id} {op}: {pending.response.error}")
        return pending.response.result

    async def delete_person(self, *, person_id: str | None = None, card_digest: bytes | None = None,
                            reason: str = "request at the controller") -> Deletion:
        """Forget a person store-wide (by id or card digest): removed from the record at once and
        ``person.remove`` pushed to every connected gate (the others get it by ``sync``).

        By card it also reaches the enrolments in progress: every connected gate is sent
        ``person.delete {card_digest}`` (at once, each within ``request_timeout_s``), which cancels
        an enrolment of that card there (nothing of it kept; the person is told) and removes a
        person the gate holds with it whose enrolment has not reached the record yet; and the card
        is remembered (``Store.forget_card``), so an enrolment of it made before now at a gate not
        connected is refused when it arrives. What happened is returned (:class:`Deletion`) and
        audited (``card_deleted``). :class:`ValueError` (one line) for a card digest that is not 32
        bytes or an id that is not 1 to 128 characters, as a gate refuses."""
        if (person_id is None) == (card_digest is None):
            raise ValueError("delete_person needs exactly one of person_id, card_digest")
        if card_digest is not None and not (type(card_digest) is bytes and len(card_digest) == DIGEST_SIZE):
            got = f"{len(card_digest)} bytes" if isinstance(card_digest, bytes) else type(card_digest).__name__
            raise ValueError(f"delete_person card_digest must be {DIGEST_SIZE} bytes (the gates' keyed digest), "
                             f"got {got}")
        if person_id is not None and not (isinstance(person_id, str) and 0 < len(person_id) <= MAX_ID):
            raise ValueError(f"delete_person person_id must be a string of 1 to {MAX_ID} characters")
        store = self.store
        if store is None:
            raise ControllerError("the controller is not running")
        if card_digest is not None:
            change = await trio.to_thread.run_sync(
                functools.partial(store.forget_card, card_digest, by=self.config.name, reason=reason))
        elif await trio.to_thread.run_sync(store.has_person, person_id):  # (a damaged record too)
            change = await trio.to_thread.run_sync(
                functools.partial(store.remove_person, person_id, by=self.config.name, reason=reason))
        else:
            return Deletion(None)
        if change is not None:
            if self._wal is not None:  # else the controller stopped meanwhile (its next start truncates)
                self._wal.poke()
            self._replicate(change, origin=None)
        if card_digest is None:
            return Deletion(person_id)
        deletion = await self._delete_card_at_gates(None if change is None else change.person_id, card_digest)
        await trio.to_thread.run_sync(functools.partial(
            store.audit, "card_deleted", by=self.config.name, reason=reason, person_id=deletion.person_id,
            gates_asked=list(deletion.asked), enrolments_cancelled=list(deletion.enrolments_cancelled),
            removed_at=list(deletion.removed_at), unreached=dict(deletion.unreached)))
        log.info("card deleted store-wide", extra={"fields": {
            "in_record": deletion.person_id is not None, "gates_asked": len(deletion.asked),
            "enrolments_cancelled": list(deletion.enrolments_cancelled), "unreached": dict(deletion.unreached)}})
        return deletion

    async def _delete_card_at_gates(self, person_id: str | None, card_digest: bytes) -> Deletion:
        """Send ``person.delete {card_digest}`` to every connected gate at once; what they said."""
        answers: dict[str, dict[str, Any] | str] = {}

        async def ask(node_id: str) -> None:
            try:
                answers[node_id] = await self.request(node_id, "person.delete", {"card_digest": card_digest})
            except ControllerError as exc:  # NodeUnavailable, RequestTimeout, RequestFailed: one line
                answers[node_id] = one_line(str(exc))

        async with trio.open_nursery() as nursery:
            for node_id in sorted(self._sessions):
                nursery.start_soon(ask, node_id)
        asked = tuple(sorted(answers))
        said = {n: a for n, a in answers.items() if isinstance(a, dict)}

        def gates(field: str) -> tuple[str, ...]:
            return tuple(n for n in asked if n in said and said[n].get(field) is True)
        return Deletion(person_id, asked=asked, enrolments_cancelled=gates("enrolment_cancelled"),
                        removed_at=gates("deleted"),
                        unreached={n: a for n, a in sorted(answers.items()) if isinstance(a, str)})

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the record, listen, report the bound port, serve until cancelled."""
        context = server_ssl_context(self.config)
        store = await trio.to_thread.run_sync(_open_store, self.config)
        try:
            await self._retire_unusable_people(store)
            try:
                listeners = await trio.open_ssl_over_tcp_listeners(
                    self.config.port, context, host=self.config.host, https_compatible=False)
            except OSError as exc:
                raise ControllerError(f"cannot listen on {self.config.host}:{self.config.port}: "
                                      f"{exc.strerror or exc}; pick another --listen address") from None
            self.store = store
            self.port = listeners[0].transport_listener.socket.getsockname()[1]
            self._wal = WalKeeper(store, "controller", log)
            log.info("controller listening", extra={"fields": {"host": self.config.host, "port": self.port}})
            task_status.started(self.port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wal.run)  # (also what the opening could not truncate)
                nursery.start_soon(self._rejected_events.run)
                nursery.start_soon(self._refused_pushes.run)
                nursery.start_soon(self._prune_events, store)
                await trio.serve_listeners(self._serve_connection, listeners)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(store.close)
            if store.scrub_pending:
                log.warning("controller stopped with its WAL not truncated: a removed person's old pages stay in "
                            "the -wal file until its next start", extra={"fields": {
                                "db": str(store.path), "reason": store.scrub_blocked}})
            self.store = self.port = self._wal = None

    async def _retire_unusable_people(self, store: Store) -> None:
        """Before serving: people an older controller stored that every gate refuses are removed
        store-wide, with one line (Store.retire_unusable_people; once per database)."""
        try:
            reasons = await trio.to_thread.run_sync(functools.partial(
                store.retire_unusable_people, by=self.config.name))
        except sqlite3.Error as exc:  # the record stays as it was; serving goes on, the next start tries again
            log.warning("unusable people not retired", extra={"fields": {"error": one_line(str(exc))}})
            return
        if reasons:
            log.warning("unusable people retired: records an older controller took that every gate refuses, removed "
                        "store-wide (audited; enrol those people again)", extra={"fields": {
                            "count": sum(reasons.values()), "reasons": reasons}})

    async def _prune_events(self, store: Store) -> None:
        """Forget applied events older than the retention, now and every PRUNE_EVERY_S; and the
        cards deleted store-wide that no gate can still deliver an enrolment of made before their
        deletion (as each event does: here for a database that has such cards already, a window
        made shorter)."""
        keep_s = self.config.event_retention_days * 86400.0
        while True:
            try:
                released = await trio.to_thread.run_sync(store.forget_settled_cards)
            except sqlite3.Error as exc:  # kept as they were; the next event or hour tries again
                log.warning("deleted cards not released", extra={"fields": {"error": one_line(str(exc))}})
            else:
                if released:
                    _cards_released(released)
            try:
                pruned = await trio.to_thread.run_sync(
                    functools.partial(store.prune_events, before=time.time() - keep_s,
                                      keep_per_node=self.config.events_kept_per_node))
            except sqlite3.Error as exc:  # the record stays as it was; serving goes on, next hour again
                log.warning("events not pruned", extra={"fields": {"error": one_line(str(exc))}})
            else:
                if pruned:
                    log.info("events pruned", extra={"fields": {
                        "events": pruned, "retention_days": self.config.event_retention_days}})
            self._wal.poke()  # a truncation either step left blocked (cards may go without an event)
            await trio.sleep(PRUNE_EVERY_S)

    # -- one connection ------------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SSLStream) -> None:
        self.stats.connections += 1
        peer = _peer_address(stream)
        if self._greeting >= self.config.max_greeting:
            self.stats.drop("busy", f"{peer}: {self._greeting} connections already in their hello")
            if self.stats.dropped["busy"] % 1000 == 1:  # the first of a flood, then one line per 1000
                log.warning("connection refused", extra={"fields": {
                    "peer": peer, "reason": "busy", "refused": self.stats.dropped["busy"],
                    "greeting": self._greeting}})
            await trio.aclose_forcefully(stream)
            return
        channel = Channel(stream, max_frame=self.config.max_frame, stats=self.stats.link)
        session: _Session | None = None
        goodbye: str | None = None
        try:
            self._greeting += 1
            try:
                session = await self._greet(channel, peer)
            finally:
                self._greeting -= 1
            await self._run_session(session)
        except LinkProtocolError as exc:  # the channel has counted it, said goodbye and closed
            self._drop(peer, session.node_id if session else channel.peer_name, exc.kind, str(exc))
        except _Ended as ended:
            if ended.drop is not None:
                self._drop(peer, session.node_id if session else channel.peer_name, ended.drop, str(ended))
            else:
                log.info("node disconnected", extra={"fields": {"node": session and session.node_id,
                                                                 "peer": peer, "reason": str(ended)}})
            goodbye = ended.goodbye
        except LinkClosed as exc:
            log.info("node disconnected", extra={"fields": {"node": session and session.node_id, "peer": peer,
                                                             "reason": str(exc)}})
        except Exception as exc:  # a bug must cost one connection, never the controller
            log.exception("connection failed", extra={"fields": {"peer": peer, "node": session and session.node_id}})
            self.stats.drop("error", one_line(f"{type(exc).__name__}: {exc}"))
            goodbye = "controller error"
        finally:
            if trio.current_effective_deadline() == -math.inf:
                goodbye = "controller stopping"
            if session is not None:
                self._forget(session)
            if not channel.closed:
                with trio.CancelScope(shield=True):
                    await channel.aclose(goodbye)

    def _drop(self, peer: str, node: str | None, reason: str, detail: str) -> None:
        self.stats.drop(reason, detail)
        log.warning("connection dropped",
                    extra={"fields": {"peer": peer, "node": node, "reason": reason, "detail": detail}})

    async def _greet(self, channel: Channel, peer: str) -> _Session:
        """TLS handshake, then the hellos (§4: the node id must be its certificate's CN)."""
        deadline = trio.current_time() + self.config.hello_timeout_s
        with trio.move_on_at(deadline):
            try:
                await channel.handshake()
            except LinkClosed as exc:
                raise _Ended(str(exc), drop="tls") from None
        if channel.peer_name is None:
            raise _Ended(f"no TLS handshake within {self.config.hello_timeout_s:g} s"
                         if trio.current_time() >= deadline else "peer certificate has no common name",
                         drop="timeout" if trio.current_time() >= deadline else "tls")
        # §4: one connection per node id, decided before our hello: a refused gate gets a goodbye as
        # our first frame, so it never has a session (no sync, no events sent for nothing). The probe
        # of the connected one does not count against the newcomer's hello time.
        remaining = deadline - trio.current_time()
        replaced = await self._claim(channel.peer_name, peer)
        local = Hello(version=PROTOCOL_VERSION, node_id=self.config.name, role="controller",
                      capabilities=CAPABILITIES)
        deadline = trio.current_time() + remaining
        try:
            hello = await channel.hello(local, timeout=max(0.0, remaining))
        except LinkClosed as exc:
            raise _Ended(str(exc), drop="timeout" if trio.current_time() >= deadline else "no hello") from None
        queue = _SendQueue(self.config.send_queue, self.config.send_queue_bytes)
        return _Session(node_id=channel.peer_name, capabilities=hello.capabilities, version=channel.version,
                        peer=peer, channel=channel, queue=queue, replaced=replaced)

    async def _run_session(self, session: _Session) -> None:
        # another connection of this node may have come through its hello while ours was under way
        old = await self._claim(session.node_id, session.peer) or session.replaced
        self._sessions[session.node_id] = session
        try:
            await trio.to_thread.run_sync(functools.partial(
                self.store.node_seen, session.node_id, version=session.version, capabilities=session.capabilities))
        except sqlite3.Error as exc:  # bookkeeping only: the gate is served all the same
            _database_trouble("node not recorded", session, exc)
        self.stats.sessions += 1
        self._notify()
        log.info("node connected", extra={"fields": {"node": session.node_id, "peer": session.peer,
                                                      "version": session.version, "replaced": old is not None}})
        with session.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._until_ended, session, self._send_loop, session)
                nursery.start_soon(self._until_ended, session, self._receive_loop, session, nursery)
        if session.ended is not None:
            raise session.ended

    async def _claim(self, node_id: str, peer: str) -> _Session | None:
        """Make way for a new connection of ``node_id`` from ``peer``: the node's old session if it is
        dead (ended now; returned), else :class:`_Ended` refusing the newcomer.

        One node id, one connection. A connected node keeps its session while it answers: the
        newcomer is then a second gate with the same certificate (a copied one), and replacing the
        first would only make the two take turns for ever, each seeing half the pushes. An old
        session that does not answer ``node.status`` within ``probe_timeout_s`` (a gate that
        rebooted, its connection gone without a FIN) or that ends meanwhile is replaced.
        """
        replaced = None
        while (old := self._sessions.get(node_id)) is not None:
            if await self._answers(old):
                refusal = (f"node id {node_id} is already connected (from {old.peer}) and answering; "
                           f"each gate needs its own certificate")
                raise _Ended(f"{refusal}: refused the second connection from {peer}", goodbye=refusal,
                             drop="duplicate")
            if self._sessions.get(node_id) is old:  # else another newcomer took its place meanwhile
                old.end(_Ended("replaced by a new connection", goodbye=(
                    f"replaced by a new connection from this node (no answer within {self.config.probe_timeout_s:g} s)")))
                self.stats.replaced += 1
                self._sessions.pop(node_id)
                self._notify()
                replaced = old
        return replaced

    async def _answers(self, session: _Session) -> bool:
        """Whether ``session``'s node answers a request (any answer) within ``probe_timeout_s``.

        One probe at a time per session: newcomers arriving while one runs (copies of a certificate
        connecting at once, up to ``max_greeting``) wait for its answer instead of asking again."""
        while (probe := session.probe) is not None:
            self.stats.probes_shared += 1
            await probe.done.wait()
            if probe.answered is not None:
                return probe.answered and session.ended is None
            # else the newcomer probing was cancelled before it knew: probe again
        probe = session.probe = _Probe()
        self.stats.probes += 1
        try:
            probe.answered = await self._probe(session)
        finally:
            session.probe = None
            probe.done.set()
        return probe.answered

    async def _probe(self, session: _Session) -> bool:
        if session.ended is not None:
            return False
        request_id = session.new_id()
        pending = session.pending[request_id] = _Pending("node.status")
        try:
            with trio.move_on_after(self.config.probe_timeout_s):
                await session.send(Request(id=request_id, op="node.status", args={}), self.config.max_frame)
                await pending.done.wait()
        except trio.ClosedResourceError:
            return False
        finally:
            session.pending.pop(request_id, None)
        return pending.response is not None and session.ended is None

    @staticmethod
    async def _until_ended(session: _Session, fn, *args) -> None:
        """Run a session loop; the first way it ends (refusal, peer gone) ends the whole session."""
        try:
            await fn(*args)
        except (LinkError, _Ended) as exc:
            session.end(exc)

    def _forget(self, session: _Session) -> None:
        if self._sessions.get(session.node_id) is session:
            del self._sessions[session.node_id]
            self._notify()
        session.queue.close()
        for pending in session.pending.values():
            pending.done.set()  # response stays None: the caller gets NodeUnavailable

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _send_loop(self, session: _Session) -> None:
        while True:
            try:
                frame = await session.queue.get()
            except trio.EndOfChannel:
                return
            await session.channel.send_frame(frame)
            del frame  # the last frame sent (a removal pushed to a gate, say) is not kept until the next

    async def _receive_loop(self, session: _Session, nursery: trio.Nursery) -> None:
        while True:
            msg = await session.channel.receive()  # the channel refuses hellos, acks, bad frames
            if isinstance(msg, Event):
                await self._on_event(session, msg)
            elif isinstance(msg, Request):
                await session.request_slots.acquire()  # released when served
                nursery.start_soon(self._serve_request, session, msg)
            elif isinstance(msg, Response):
                self._on_response(session, msg)
            del msg  # the last message (a deleted person's id, say) is not kept until the next

    # -- events --------------------------------------------------------------------------------

    async def _on_event(self, session: _Session, event: Event) -> None:
        if event.node_id != session.node_id:
            await session.channel.fail(f"event of node {one_line(event.node_id, 64)} on the connection of "
                                       f"{session.node_id}")
        if len(event.key) > MAX_ID:
            await session.channel.fail(f"event key longer than {MAX_ID} characters")
        if session.events_held:
            return  # in order or not at all: the node resends them (its ack timeout reconnects it)
        try:
            applied: Applied = await trio.to_thread.run_sync(functools.partial(
                self.store.apply_event, node_id=session.node_id, key=event.key, seq=event.seq, kind=event.kind,
                at=event.at, data=event.data))
        except sqlite3.Error as exc:  # nothing applied, no ack: it stays in the gate's outbox
            session.events_held = True
            _database_trouble("events not applied", session, exc)
            return
        if applied.duplicate:
            self.stats.events_duplicate += 1
        elif applied.rejected:
            self.stats.events_rejected += 1
            if self._rejected_events.note(applied.effect):  # a flood: a few lines, then a summary
                log.warning("event rejected", extra={"fields": {"node": session.node_id, "key": event.key,
                                                                 "kind": event.kind, "reason": applied.effect}})
        else:
            self.stats.events_applied += 1
            if applied.effect == CARD_FORGOTTEN:  # the person asked to be forgotten before it arrived
                log.warning("enrolment refused: its card was deleted store-wide before it", extra={"fields": {
                    "node": session.node_id, "key": event.key}})
        if applied.cards_released:
            _cards_released(applied.cards_released)
        if isinstance(applied.change, Remove) or applied.cards_released:
            self._wal.poke()
        await session.send(Ack(seq=event.seq, key=event.key), self.config.max_frame)
        if applied.change is not None and not applied.duplicate:
            self._replicate(applied.change, origin=None if applied.to_origin else session.node_id)

    def _replicate(self, change: Change, *, origin: str | None) -> None:
        """Push ``change`` to every connected node but ``origin`` (best effort: ``sync`` catches up)."""
        if isinstance(change, Upsert):
            op, args = "person.upsert", {"person": change.person.to_wire()}
        else:
            op, args = "person.remove", {"person_id": change.person_id}
        args["cursor"] = change.cursor
        for session in list(self._sessions.values()):
            if session.node_id == origin:
                continue
            request_id = session.new_id()
            try:
                frame = codec.encode(Request(id=request_id, op=op, args=args), max_frame=self.config.max_frame)
            except codec.FrameTooLarge as exc:  # the same for every node: none gets it (sync cannot either)
                log.error("replication not pushed", extra={"fields": {"op": op, "error": one_line(str(exc))}})
                return
            try:
                session.queue.put_nowait(frame)
            except trio.WouldBlock:
                queue = session.queue
                reason = (f"{len(queue)} frames of {queue.bytes} bytes queued unsent (at most {queue.max_frames} "
                          f"frames, {queue.max_bytes} bytes); reconnect and sync")
                session.end(_Ended(reason, goodbye=reason, drop="slow"))
                continue
            except trio.ClosedResourceError:
                continue
            session.pushes[request_id] = op
            if len(session.pushes) > MAX_UNANSWERED_PUSHES:
                del session.pushes[next(iter(session.pushes))]
            self.stats.pushes += 1

    def _on_response(self, session: _Session, response: Response) -> None:
        op = session.pushes.pop(response.id, None)
        if op is not None:  # nobody waits for a push: count a refusal
            if not response.ok:
                self.stats.pushes_failed += 1
                error = one_line(response.error)  # the node's text: a line of at most 200 characters
                if self._refused_pushes.note(f"{op}: {error}"):  # a flood: a few lines, then a summary
                    log.warning("replication refused", extra={"fields": {"node": session.node_id, "op": op,
                                                                         "error": error}})
            return
        pending = session.pending.get(response.id)
        if pending is not None:  # else §5: its caller timed out
            pending.response = response
            pending.done.set()

    # -- requests from nodes -------------------------------------------------------------------

    async def _serve_request(self, session: _Session, request: Request) -> None:
        try:
            if request.op == "sync":
                result = await self._sync(request.args)
            elif request.op == "charge":
                result = await self._charge(session, request.args)
            else:
                raise _BadArgs(f"unknown op {request.op}")
            response = Response.success(request.id, result)
        except _BadArgs as exc:
            response = Response.failure(request.id, exc)
        except sqlite3.Error as exc:  # nothing was decided (the transaction rolled back)
            _database_trouble("request not served", session, exc, op=request.op)
            response = Response.failure(request.id, f"controller database unavailable: {one_line(str(exc))}")
        finally:
            session.request_slots.release()
        self.stats.requests_served += 1
        try:
            try:
                await session.send(response, self.config.max_frame)
            except codec.FrameTooLarge as exc:
                await session.send(Response.failure(request.id, f"{request.op} result cannot be sent: {exc}"),
                                   self.config.max_frame)
        except trio.ClosedResourceError:
            pass

    async def _sync(self, args: dict[str, Any]) -> dict[str, Any]:
        cursor = _cursor(args.get("cursor"))
        limit = args.get("limit", self.config.sync_limit)
        if type(limit) is not int or not 1 <= limit <= MAX_SYNC_LIMIT:
            raise _BadArgs(f"sync limit must be 1 to {MAX_SYNC_LIMIT}")
        damaged: list[int] = []
        changes, cursor, more = await trio.to_thread.run_sync(functools.partial(
            self.store.changes_since, cursor, limit=limit, max_bytes=self.config.max_frame // 2, damaged=damaged))
        if damaged:  # the others go; that person's gate enrolling them again replaces the record
            log.warning("sync skipped damaged records: their templates no longer open under the controller's key",
                        extra={"fields": {"count": len(damaged), "cursors": damaged[:16]}})
        return {"changes": [c.to_wire() for c in changes], "cursor": cursor, "more": more}

    async def _charge(self, session: _Session, args: dict[str, Any]) -> dict[str, Any]:
        person_id, card, amount, currency = (args.get(k) for k in ("person_id", "card_digest", "amount_cents",
                                                                   "currency"))
        if not isinstance(person_id, str) or not person_id:
            raise _BadArgs("charge needs person_id (str)")
        if card is not None and not isinstance(card, bytes):
            raise _BadArgs("charge card_digest must be bytes")
        if type(amount) is not int or amount not in SQL_INT:
            raise _BadArgs("charge needs amount_cents (a 64-bit int)")
        if not isinstance(currency, str) or not (len(currency) == 3 and currency.isalpha()):
            raise _BadArgs("charge needs currency (ISO 4217, 3 letters)")
        key = args.get("key")
        if not (isinstance(key, str) and 0 < len(key) <= MAX_ID):
            raise _BadArgs(f"charge needs key (str of 1 to {MAX_ID} characters: one per sale)")
        # a retried charge (the same key) gets the first decision back: never charged twice
        decision = await trio.to_thread.run_sync(functools.partial(
            self.store.charge, request_key=f"{session.node_id}/{key}", node_id=session.node_id,
            person_id=person_id, card_digest=card, amount_cents=amount, currency=currency.upper(),
            limit_cents=self.config.charge_limit_cents))
        return decision.to_wire()


class _BadArgs(Exception):
    """A node's request the controller answers ``ok: false``."""


def _cards_released(count: int) -> None:
    log.info("deleted cards released: every gate known has delivered past their window, no enrolment of "
             "them made before their deletion can still come", extra={"fields": {"cards": count}})


def _database_trouble(what: str, session: _Session, exc: sqlite3.Error, **fields: Any) -> None:
    """One log line for a database error that costs a gate one step, never its connection."""
    log.warning(what, extra={"fields": {"node": session.node_id, "error": one_line(str(exc)), **fields}})


def _cursor(value: object) -> int:
    if value is None:
        return 0
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():   # not "²": int() refuses it
        return int(value)
    raise _BadArgs("sync cursor must be nil, an int >= 0 or the string a previous sync returned")


def _open_store(config: ControllerConfig) -> Store:
    try:
        keys = load_keys(None if config.key_file is None else Path(config.key_file), env_name=config.key_env)
        store = Store.open(Path(config.db_path), keys)
        store.forget_window_s = config.forget_window_s
        return store
    except (VaultKeyError, StoreError) as exc:
        raise ControllerError(str(exc).replace("vault key", "controller key")
                              .replace("configure a key file", "give a key file (--key-file)")) from None


def server_ssl_context(config: ControllerConfig) -> ssl.SSLContext:
    """TLS 1.3 only, our certificate, and the store CA required of every client (§1)."""
    try:
        return tls.server_context(cert=config.cert_file, key=config.cert_key_file, ca=config.ca_file)
    except tls.TlsConfigError as exc:
        raise ControllerError(str(exc).replace("link ", "controller ", 1)) from None


def _peer_address(stream: trio.SSLStream) -> str:
    try:
        host, port = stream.transport_stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (AttributeError, OSError):
        return "?"
