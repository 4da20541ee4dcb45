"""The node side of the link (docs/protocols/controller.md): dial, hello, serve, pump the outbox.

``client = LinkClient(config, outbox=vault, handler=serve_op)`` then
``await nursery.start(client.run)``: it returns at once and keeps a connection to the controller
in the background, reconnecting with exponential backoff. While connected it

* serves the controller's requests, each in its own task, through ``handler(op, args) -> dict``
  (an exception becomes ``ok: false`` with a one-line error; :class:`UnknownOp` "unknown op X";
  a :class:`RequestRefused` is logged as one line, any other exception with its traceback);
* sends every undelivered outbox event, oldest first, and marks it delivered after the matching
  ack (unacked events are sent again after a reconnect: the controller drops duplicates by key);
  the pump marks it, so the receive loop never waits for the vault;
* rides out another process holding the vault's write lock past its busy timeout (an ``sqlite3``
  shell, a backup), and any other vault error that may pass (a full disk, an I/O error; a lasting
  one, a damaged file, ends ``run``): an outbox read it refuses is one warning line and tried
  again each poll; an ack whose mark it refuses is one warning line, and the event, acked, is kept
  in memory (never sent again by this client) and marked delivered on a later round of the pump;
  a process stopped first sends it again after its restart (the controller drops it by key);
* answers ``await client.request(op, args)`` for node → controller calls (``sync``, ``charge``).
* runs ``on_connected()`` (the node's ``sync``) after each hello, again after a backoff delay
  while it fails with a :class:`LinkError` and the connection lasts.

Network failures never escape :meth:`LinkClient.run`; each state change is logged once.
"""
from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from palmnode.actors import Backoff
from palmnode.vault.errors import VaultError
from palmnode.vault.steps import STEP_S, in_vault_steps
from palmnode.link.channel import (
    Channel,
    ChannelStats,
    LinkClosed,
    LinkError,
    LinkUnavailable,
    set_keepalive,
)
from palmnode.link.codec import MAX_FRAME, FrameTooLarge
from palmnode.link.messages import (
    PROTOCOL_VERSION,
    Ack,
    Event,
    Hello,
    Request,
    Response,
    one_line,
)
from palmnode.link.refusals import RefusalLog
from palmnode.link.tls import client_context
from palmnode.logs import event as log_event

log = logging.getLogger("palmnode.link")

DEFAULT_PORT = 7443  # §1
MAX_SERVING = 16  # §5: the controller's requests served at once; the next waits, unread (backpressure)
MAX_SERVING_BYTES = 4 << 20  # §5: ... and their frames at most this many bytes (one alone always goes)
HELLO_TIMEOUT_S = 10.0  # §4: the controller's hello must come within this of the TLS handshake


class UnknownOp(LinkError):
    """Raised by a handler for an op it does not serve; answered ``unknown op <op>`` (§5)."""


class RequestRefused(LinkError):
    """Raised by a handler for a request it refuses (a bad argument, a palm already enrolled):
    answered ``ok: false`` with its one-line message and logged as one line, not as a fault."""


class RequestFailed(LinkError):
    """The peer answered a request with ``ok: false``; ``str(exc)`` is its one-line error."""


class BadAnswer(LinkError):
    """The peer answered a request ``ok: true`` with a result the op cannot use (a field missing or
    of the wrong type, a sync page that contradicts the ones before it); one line saying what."""


class LinkConfigError(ValueError):
    """The link's configuration cannot work; one line naming the setting and the fix."""


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise LinkConfigError(f"link.{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class LinkConfig:
    """How a node reaches its controller. Paths are PEM files from ``palmnode certs``."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    ca: str
    cert: str
    key: str
    node_id: str  # must equal the CN of ``cert`` (§1)
    server_name: str = "controller"  # the name the controller's certificate must carry (§1)
    connect_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    backoff_initial_s: float = attrs.field(default=0.2, validator=_positive)
    backoff_max_s: float = attrs.field(default=30.0, validator=_positive)
    hello_timeout_s: float = attrs.field(default=HELLO_TIMEOUT_S, validator=_positive)
    ack_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    request_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    max_frame: int = attrs.field(default=MAX_FRAME, validator=_positive)
    outbox_batch: int = attrs.field(default=100, validator=_positive)  # events in flight at most
    outbox_poll_s: float = attrs.field(default=1.0, validator=_positive)  # outbox re-read without a wake-up
    stable_after_s: float = attrs.field(default=10.0, validator=_positive)  # a connection this old resets the backoff
    #: §7: a frame the controller begins must end, and one the node sends must be taken, within this
    frame_timeout_s: float = attrs.field(default=30.0, validator=_positive)


class Outbox(Protocol):
    """What the client needs of the vault (sync, thread-safe; called via ``trio.to_thread``, in
    steps of ``wait`` while another process holds its write lock, up to ``busy_timeout``:
    ``palmnode.vault.steps``, so a stop meanwhile is served within a step)."""

    busy_timeout: float

    def pending_events(self, *, limit: int, unreadable: list[str], wait: float | None = None) -> list[Any]: ...

    def mark_delivered(self, seq: int, *, wait: float | None = None) -> None: ...


Handler = Callable[[str, dict], Awaitable[dict]]


@attrs.define
class LinkStats:
    """The client's counters (``client.stats``); ``channel`` sums every connection's frames."""

    connects: int = 0
    disconnects: int = 0
    failed_attempts: int = 0
    events_sent: int = 0
    events_acked: int = 0
    #: outbox events the vault could not open: dropped from the queue, never sent
    events_unreadable: int = 0
    requests_served: int = 0
    #: of those, refused by the handler (RequestRefused): every one, though a flood of them is
    #: logged as a few lines and a summary an interval (palmnode.link.refusals)
    requests_refused: int = 0
    requests_sent: int = 0
    #: the controller's requests being served now, and their frames' bytes (MAX_SERVING, MAX_SERVING_BYTES)
    requests_in_progress: int = 0
    request_bytes_in_progress: int = 0
    #: responses to no request waiting (late: its caller gave up; duplicated; an id never sent): ignored
    responses_unmatched: int = 0
    #: acks of no event in flight (a duplicate, another connection's, a wrong key): ignored
    acks_unmatched: int = 0
    #: acks whose event the vault would not mark delivered at once (another process held its write
    #: lock past the busy timeout): kept in memory, marked on a later round (then events_acked)
    acks_deferred: int = 0
    last_error: str | None = None
    channel: ChannelStats = attrs.field(factory=ChannelStats)

    def snapshot(self) -> dict[str, Any]:
        """The counters an operator reads (the node's ``node.status``), as plain data: connects,
        disconnects, failed attempts and the last error; outbox events sent, acked, unreadable; the
        controller's requests served and refused (pushes a gate refuses among them), ours sent;
        responses and acks that matched nothing; acks whose mark the vault put off (another
        process holding it past its busy timeout); connections dropped for the controller's broken
        frames, by reason (§7)."""
        return {"connects": self.connects, "disconnects": self.disconnects, "failed_attempts": self.failed_attempts,
                "last_error": self.last_error, "events_sent": self.events_sent, "events_acked": self.events_acked,
                "events_unreadable": self.events_unreadable, "requests_served": self.requests_served,
                "requests_refused": self.requests_refused, "requests_sent": self.requests_sent,
                "responses_unmatched": self.responses_unmatched, "acks_unmatched": self.acks_unmatched,
                "acks_deferred": self.acks_deferred, "dropped": dict(self.dropped)}

    @property
    def frames_in(self) -> int:
        return self.channel.frames_in

    @property
    def frames_out(self) -> int:
        return self.channel.frames_out

    @property
    def dropped(self) -> dict[str, int]:
        return self.channel.dropped


@attrs.define
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    response: Response | None = None


def _dial_error(exc: OSError) -> str:
    """The first underlying reason of a failed dial (trio groups one error per address tried)."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        first = cause.exceptions[0]
        if isinstance(first, OSError):
            return first.strerror or str(first)
    return exc.strerror or str(exc)


async def _no_ops(op: str, args: dict) -> dict:
    raise UnknownOp(op)


class LinkClient:
    """The node's connection to its controller. See the module docstring."""

    def __init__(
        self,
        config: LinkConfig,
        outbox: Outbox,
        handler: Handler | None = None,
        *,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        capabilities: tuple[str, ...] = (),
        rng: random.Random | None = None,
    ) -> None:
        for name in ("ca", "cert", "key"):
            if not getattr(config, name):
                raise LinkConfigError(f"link.{name} is not set; make certificates with: palmnode certs --out DIR")
        if not config.node_id:
            raise LinkConfigError("link.node_id is not set; it must be the CN of the node's certificate")
        self.config = config
        self._ssl_context = client_context(Path(config.cert), Path(config.key), Path(config.ca))
        self._outbox = outbox
        self._handler = handler or _no_ops
        self._on_connected = on_connected
        self._capabilities = tuple(capabilities) or ("events",)
        self._rng = rng or random.Random()
        self._backoff = Backoff(initial=config.backoff_initial_s, maximum=config.backoff_max_s)
        self.stats = LinkStats()
        self._channel: Channel | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Pending] = {}
        self._inflight: dict[int, tuple[str, float]] = {}  # seq -> (key, sent at trio time)
        #: events the controller acked, for the pump to mark delivered: seq -> whether the vault put
        #: its mark off (held past its busy timeout, a full disk). Never sent again by this client,
        #: kept across connections (the controller has them)
        self._acked: dict[int, bool] = {}
        self._marks_held = False   # the pump's last mark met the vault held (or full): warned once
        self._outbox_held = False  # the pump's last outbox read met the vault held (or full): warned once
        self._unsendable: set[int] = set()  # seqs whose event cannot be encoded: held back, logged once
        self._wake = trio.Event()
        self._connected_changed = trio.Event()
        self._slot_freed = trio.Event()
        self._last_logged: str | None = None
        #: "link request refused" lines: the first few of an interval, then one summary (a flood)
        self._refusals = RefusalLog(log, "link requests refused")

    # ---- public ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection has completed its hellos."""
        return self._channel is not None

    @property
    def controller_hello(self) -> Hello | None:
        """The controller's hello on the current connection."""
        return self._channel.peer_hello if self._channel is not None else None

    def events_appended(self) -> None:
        """Tell the pump the outbox has something new (call from the trio thread)."""
        self._wake.set()

    async def wait_connected(self, connected: bool = True) -> None:
        """Wait until :attr:`connected` equals ``connected``."""
        while self.connected != connected:
            await self._connected_changed.wait()

    async def request(self, op: str, args: dict | None = None, *, timeout: float | None = None) -> dict:
        """Ask the controller to run ``op``; its result map. Raises :class:`LinkUnavailable` (not
        connected, connection lost, no answer within ``timeout``) or :class:`RequestFailed`."""
        channel = self._channel
        if channel is None:
            raise LinkUnavailable(f"not connected to the controller ({op} not sent)")
        timeout = self.config.request_timeout_s if timeout is None else timeout
        request_id = next(self._ids)
        pending = self._waiting[request_id] = _Pending()
        try:
            with trio.move_on_after(timeout):
                try:
                    await channel.send(Request(id=request_id, op=op, args=dict(args or {})))
                except LinkClosed as exc:
                    raise LinkUnavailable(f"{op} not sent: {exc}") from None
                self.stats.requests_sent += 1
                await pending.done.wait()
        finally:
            del self._waiting[request_id]
        if not pending.done.is_set():
            raise LinkUnavailable(f"no answer to {op} within {timeout:g} s")
        if pending.response is None:
            raise LinkUnavailable(f"connection to the controller lost before the answer to {op}")
        if not pending.response.ok:
            raise RequestFailed(pending.response.error or "failed")
        return pending.response.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection up until cancelled; started at once (the first dial is in the background)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._refusals.run)
            task_status.started()
            attempt = 0
            while True:
                started = trio.current_time()
                if await self._session() is None and trio.current_time() - started >= self.config.stable_after_s:
                    attempt = 0  # it worked for a while: back off afresh (a controller refusing us right
                    # after the hellos keeps backing off)
                delay = self._backoff.delay(attempt, self._rng)
                attempt += 1
                self._log_state("link down", reason=self.stats.last_error, retry_in_s=round(delay, 3))
                await trio.sleep(delay)

    # ---- one connection -----------------------------------------------------------------------

    async def _session(self) -> str | None:
        """Dial, hello and serve until the connection ends. Returns None after a connection that
        got through its hellos, else the reason the attempt failed."""
        cfg = self.config
        try:
            with trio.fail_after(cfg.connect_timeout_s):
                tcp = await trio.open_tcp_stream(cfg.host, cfg.port)
        except trio.TooSlowError:
            return self._attempt_failed(f"cannot reach the controller at {cfg.host}:{cfg.port}: no answer "
                                        f"within {cfg.connect_timeout_s:g} s")
        except OSError as exc:
            return self._attempt_failed(f"cannot reach the controller at {cfg.host}:{cfg.port}: {_dial_error(exc)}")
        set_keepalive(tcp)
        channel = Channel(trio.SSLStream(tcp, self._ssl_context, server_hostname=cfg.server_name),
                          max_frame=cfg.max_frame, stats=self.stats.channel, frame_timeout=cfg.frame_timeout_s)
        try:
            try:
                with trio.fail_after(cfg.connect_timeout_s):
                    await channel.handshake()
            except trio.TooSlowError:
                return self._attempt_failed(f"TLS handshake with {cfg.host}:{cfg.port} took over "
                                            f"{cfg.connect_timeout_s:g} s")
            hello = Hello(version=PROTOCOL_VERSION, node_id=cfg.node_id, role="node",
                          capabilities=self._capabilities)
            await channel.hello(hello, timeout=cfg.hello_timeout_s)
        except LinkError as exc:
            await channel.aclose()
            return self._attempt_failed(str(exc))
        except BaseException:
            await trio.aclose_forcefully(channel.stream)
            raise
        await self._serve(channel)
        return None

    def _attempt_failed(self, reason: str) -> str:
        self.stats.failed_attempts += 1
        self.stats.last_error = reason
        log.debug("link attempt failed", extra={"fields": {"reason": reason}})
        return reason

    async def _serve(self, channel: Channel) -> None:
        self._channel = channel
        self._inflight.clear()
        self.stats.connects += 1
        self.stats.last_error = None
        self._set_changed()
        peer = channel.peer_hello
        self._log_state("link connected", controller=one_line(peer.node_id, 64) if peer else None,
                        version=channel.version)
        ended: list[str] = []
        try:
            async with trio.open_nursery() as nursery:
                async def guard(fn: Callable[..., Awaitable[None]], *args: Any) -> None:
                    try:
                        await fn(*args)
                    except LinkError as exc:
                        ended.append(str(exc))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(guard, self._receive_loop, channel, nursery)
                nursery.start_soon(guard, self._pump, channel)
                if self._on_connected is not None:
                    nursery.start_soon(self._run_hook)
        finally:
            self._channel = None
            for pending in self._waiting.values():
                pending.done.set()  # response None: lost
            self.stats.disconnects += 1
            self.stats.last_error = ended[0] if ended else "connection closed"
            self._set_changed()
            with trio.CancelScope(shield=True):
                await channel.aclose()

    async def _receive_loop(self, channel: Channel, nursery: trio.Nursery) -> None:
        while True:
            await self._take(await channel.receive(), channel, nursery)

    async def _take(self, msg: Any, channel: Channel, nursery: trio.Nursery) -> None:
        """One message of the controller. Nothing of it is kept once it is handled (its locals go
        when this returns): not a replicated removal's person id, nor a sync page's people."""
        if isinstance(msg, Request):
            size = channel.last_frame_size
            await self._admit(size)  # at most MAX_SERVING / MAX_SERVING_BYTES: else stop reading meanwhile
            nursery.start_soon(self._answer, channel, msg, size)
        elif isinstance(msg, Response):
            pending = self._waiting.get(msg.id)
            if pending is not None and not pending.done.is_set():
                pending.response = msg
                pending.done.set()
            else:
                self.stats.responses_unmatched += 1
        elif isinstance(msg, Ack):
            sent = self._inflight.get(msg.seq)
            if sent is not None and sent[0] == msg.key:
                # marked delivered by the pump: this loop never waits for the vault, so the
                # controller's answers (a charge's) are read while another process holds it
                del self._inflight[msg.seq]
                self._acked[msg.seq] = False
                self._wake.set()
            else:
                self.stats.acks_unmatched += 1
        # a Hello/Event here was refused by the channel already

    async def _mark_acked(self) -> None:
        """Mark the acked events delivered, oldest first. Another process holding the vault's write
        lock: the first waits out its busy timeout, then one warning line, and they wait for a
        later round (one step each then: ``acks_deferred`` counts them); so with any vault error
        that may pass (a full disk, an I/O error). A lasting one (a damaged file) ends the link."""
        for seq in sorted(self._acked):
            wait = 0 if self._marks_held else self._outbox.busy_timeout
            try:
                await in_vault_steps(functools.partial(self._outbox.mark_delivered, seq, wait=STEP_S), wait)
            except VaultError as exc:
                if exc.lasting:
                    raise
                if not self._marks_held:
                    log.warning("link ack not marked delivered, kept to mark later: %s", one_line(exc),
                                extra={"fields": {"seq": seq}})
                    self._marks_held = True
                put_off = [s for s, deferred in self._acked.items() if not deferred]
                self._acked.update(dict.fromkeys(put_off, True))
                self.stats.acks_deferred += len(put_off)
                return
            del self._acked[seq]
            self.stats.events_acked += 1
        if self._marks_held:
            self._marks_held = False
            log_event(log, "link acks marked delivered", acks_deferred=self.stats.acks_deferred)

    async def _admit(self, size: int) -> None:
        """Wait for room to serve one more request of ``size`` bytes (a request alone always fits):
        a controller pushing faster than the gate applies is held back by TCP, not by memory."""
        stats = self.stats
        while stats.requests_in_progress >= MAX_SERVING or (
                stats.request_bytes_in_progress and stats.request_bytes_in_progress + size > MAX_SERVING_BYTES):
            await self._slot_freed.wait()
        stats.requests_in_progress += 1
        stats.request_bytes_in_progress += size

    def _release(self, size: int) -> None:
        self.stats.requests_in_progress -= 1
        self.stats.request_bytes_in_progress -= size
        self._slot_freed.set()
        self._slot_freed = trio.Event()

    async def _answer(self, channel: Channel, request: Request, size: int) -> None:
        try:
            await self._serve_request(channel, request)
        finally:
            self._release(size)

    async def _serve_request(self, channel: Channel, request: Request) -> None:
        op = one_line(request.op, 64)  # for the log: the controller chose its length
        try:
            result = await self._handler(request.op, request.args)
            if not isinstance(result, dict):
                raise TypeError(f"handler for {op} returned {type(result).__name__}, not a map")
            response = Response.success(request.id, result)
        except UnknownOp:
            response = Response.failure(request.id, f"unknown op {request.op}")
        except RequestRefused as exc:
            self.stats.requests_refused += 1
            if self._refusals.note(str(exc)):  # a flood of them: the first few lines, then a summary
                log.info("link request refused: %s", one_line(exc), extra={"fields": {"op": op}})
            response = Response.failure(request.id, str(exc))
        except Exception as exc:  # the handler boundary: the controller gets one line, the log the rest
            log.warning("link request failed", exc_info=True, extra={"fields": {"op": op}})
            response = Response.failure(request.id, str(exc) or type(exc).__name__)
        self.stats.requests_served += 1
        try:
            try:
                await channel.send(response)
            except (FrameTooLarge, TypeError, ValueError, OverflowError) as exc:  # not encodable
                await channel.send(Response.failure(request.id, f"{op} result cannot be sent: {exc}"))
        except LinkClosed:
            pass  # the receive loop ends the session

    async def _pump(self, channel: Channel) -> None:
        cfg = self.config
        while True:
            self._wake = trio.Event()
            await self._mark_acked()  # before the read, which then returns none of them
            unreadable: list[str] = []

            def read() -> list:  # again after a step that met another process's write lock
                unreadable.clear()
                return self._outbox.pending_events(limit=cfg.outbox_batch, unreadable=unreadable, wait=STEP_S)
            try:
                events = await in_vault_steps(read, self._outbox.busy_timeout)
            except VaultError as exc:  # held, a full disk (dropping unreadable events is a write): next round
                if exc.lasting:
                    raise
                events = []
                unreadable.clear()
                if not self._outbox_held:
                    log.warning("link outbox not read, again every %g s meanwhile: %s", cfg.outbox_poll_s,
                                one_line(exc))
                self._outbox_held = True
            else:
                if self._outbox_held:
                    log_event(log, "link outbox read again")
                self._outbox_held = False
            if unreadable:
                log.warning("%d outbox event(s) unreadable in the vault (a sealed payload fails to open): dropped, "
                            "not sent; the vault's audit log has their seq", len(unreadable))
                self.stats.events_unreadable += len(unreadable)
            await self._send_events(channel, events)
            del events  # read again next time: none is kept while the pump waits (a person deleted meanwhile)
            if self._inflight:
                oldest = min(at for _, at in self._inflight.values())
                if trio.current_time() - oldest > cfg.ack_timeout_s:
                    reason = f"no ack from the controller within {cfg.ack_timeout_s:g} s"
                    await channel.aclose(reason)
                    raise LinkClosed(reason)
            with trio.move_on_after(cfg.outbox_poll_s):
                await self._wake.wait()

    async def _send_events(self, channel: Channel, events: list) -> None:
        """The outbox events read that are not in flight, acked or held back, sent in order."""
        for ev in events:
            if ev.seq in self._inflight or ev.seq in self._acked or ev.seq in self._unsendable:
                continue
            # in flight before it is sent: the controller's ack can come back (and be read) before
            # this task resumes from the send, and an ack of no event in flight is ignored
            self._inflight[ev.seq] = (ev.key, trio.current_time())
            try:
                await channel.send(Event(seq=ev.seq, key=ev.key, kind=ev.kind, node_id=self.config.node_id,
                                         at=ev.at, data=dict(ev.data)))
            except (FrameTooLarge, TypeError, ValueError, OverflowError) as exc:
                # a bug upstream; the event stays in the outbox, the others go on
                del self._inflight[ev.seq]
                self._unsendable.add(ev.seq)
                log.error("link event cannot be sent, held back",
                          extra={"fields": {"seq": ev.seq, "kind": ev.kind, "error": one_line(exc)}})
                continue
            self.stats.events_sent += 1

    async def _run_hook(self) -> None:
        """``on_connected`` (the node's sync) until it succeeds: after a LinkError (refused, no answer
        in time) again after the backoff delay, for as long as this connection lasts."""
        assert self._on_connected is not None
        for attempt in itertools.count():
            try:
                await self._on_connected()
                return
            except LinkError as exc:
                delay = self._backoff.delay(attempt, self._rng)
                log_event(log, "link on_connected hook failed", error=one_line(exc), retry_in_s=round(delay, 3))
            except Exception:
                log.warning("link on_connected hook failed", exc_info=True)
                return
            await trio.sleep(delay)

    # ---- helpers ----------------------------------------------------------------------------------

    def _set_changed(self) -> None:
        self._connected_changed.set()
        self._connected_changed = trio.Event()

    def _log_state(self, msg: str, **fields: Any) -> None:
        key = f"{msg}:{fields.get('reason')}"
        if msg == "link down" and key == self._last_logged:
            return  # the same failure again: one line per state change
        self._last_logged = key
        log_event(log, msg, node_id=self.config.node_id, **fields)


__all__ = ["DEFAULT_PORT", "HELLO_TIMEOUT_S", "MAX_SERVING", "MAX_SERVING_BYTES", "BadAnswer", "Handler", "LinkClient",
           "LinkConfig", "LinkConfigError", "LinkStats", "LinkUnavailable", "Outbox", "RequestFailed", "RequestRefused",
           "UnknownOp"]
