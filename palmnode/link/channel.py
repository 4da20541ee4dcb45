"""One link connection over a trio stream (docs/protocols/controller.md §2–§7).

:class:`Channel` frames messages onto a stream (normally a :class:`trio.SSLStream`) and enforces
the protocol's rules: hello first each way (:meth:`Channel.hello`), no second hello, events only
node → controller and acks only controller → node. Any breach or malformed frame closes the
connection with a best-effort ``goodbye``, counts the drop in :class:`ChannelStats` and raises
:class:`LinkProtocolError`; a connection that ends raises :class:`LinkClosed`. Both carry a
one-line reason.

Server side, per accepted connection::

    channel = Channel(ssl_stream, stats=shared_stats)
    peer = await channel.hello(Hello(PROTOCOL_VERSION, "controller", "controller", caps), timeout=10)
    # peer.node_id == channel.peer_name (the certificate CN), already checked
    while True:
        msg = await channel.receive()
"""
from __future__ import annotations

import math
import socket
from typing import Literal, NoReturn

import attrs
import trio

from palmnode.link.codec import MAX_FRAME, RECEIVE_CHUNK, Decoder, encode
from palmnode.link.messages import (
    MIN_PROTOCOL_VERSION,
    Ack,
    DropReason,
    Event,
    Goodbye,
    Hello,
    Malformed,
    Message,
    one_line,
)
from palmnode.link.tls import PeerIdentityError, peer_name

KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 30, 10, 3  # §7: a silent dead peer is found in ~1 min
GOODBYE_TIMEOUT_S = 1.0  # §7: a goodbye is best effort; never wait long on a peer we are dropping
CLOSE_TIMEOUT_S = 1.0  # a TLS close_notify that cannot be sent in this time is skipped


class LinkError(Exception):
    """Base of the link's errors; ``str(exc)`` is one line."""


class LinkClosed(LinkError):
    """The connection ended: the peer closed it, said goodbye, or the network failed."""


class LinkProtocolError(LinkError):
    """The peer broke the protocol (§7); the channel has been closed. ``kind`` is a DropReason."""

    def __init__(self, reason: str, kind: str = DropReason.PROTOCOL) -> None:
        super().__init__(reason)
        self.kind = kind


class LinkUnavailable(LinkError):
    """No connection to the controller right now, or it did not answer in time."""


@attrs.define
class ChannelStats:
    """Counters of one channel, or of all channels of a server when shared."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: dict[str, int] = attrs.field(factory=dict)  # DropReason value -> connections dropped for it

    def count_drop(self, kind: str) -> None:
        self.dropped[kind] = self.dropped.get(kind, 0) + 1


def set_keepalive(stream: trio.abc.Stream, *, idle_s: int = KEEPALIVE_IDLE_S,
                  interval_s: int = KEEPALIVE_INTERVAL_S, count: int = KEEPALIVE_COUNT) -> bool:
    """Turn on TCP keepalive for ``stream`` (a SocketStream, or an SSLStream over one) so a peer
    that vanished without a FIN is noticed (§7). False when the stream has no socket."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return False
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", interval_s), ("TCP_KEEPCNT", count)):
        if hasattr(socket, name):  # Linux; other systems keep their defaults
            stream.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    return True


def _network_reason(what: str, exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    detail = str(cause) if cause is not None and str(cause) else str(exc)
    return one_line(f"{what}: {detail}" if detail else what)


class Channel:
    """A framed, rule-checked link connection. ``send`` may be called from many tasks, ``receive``
    from one."""

    def __init__(self, stream: trio.abc.Stream, *, max_frame: int = MAX_FRAME,
                 stats: ChannelStats | None = None, frame_timeout: float = math.inf) -> None:
        self.stream = stream
        self.max_frame = max_frame
        self.stats = stats if stats is not None else ChannelStats()
        #: §7: a frame begun by the peer must be finished, and a frame sent must be taken by the
        #: peer, within this many seconds; else the connection is dropped as ``stalled``
        self.frame_timeout = frame_timeout
        self._decoder = Decoder(max_frame=max_frame)
        self._send_lock = trio.Lock()
        self._eof = False
        self._partial_since: float | None = None  # when receive() first waited on a frame's rest
        self._broken: str | None = None  # why a send closed the stream at once (_break)
        #: bytes (header and body) of the frame :meth:`receive` last returned
        self.last_frame_size = 0
        self.closed = False
        #: set by :meth:`hello`
        self.local_hello: Hello | None = None
        self.peer_hello: Hello | None = None
        self.version: int | None = None

    @property
    def peer_name(self) -> str | None:
        """The CN of the peer's verified certificate (None before the TLS handshake or without TLS)."""
        if not isinstance(self.stream, trio.SSLStream):
            return None
        try:
            return peer_name(self.stream)
        except (PeerIdentityError, trio.NeedHandshakeError, ValueError):
            return None

    async def handshake(self) -> None:
        """Complete the TLS handshake now (a no-op without TLS); raises :class:`LinkClosed`."""
        if isinstance(self.stream, trio.SSLStream):
            try:
                await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.closed = True
                raise LinkClosed(_network_reason("TLS handshake failed", exc)) from None

    async def send(self, msg: Message) -> None:
        """Send one message; raises :class:`LinkClosed` when the connection is gone."""
        await self.send_frame(encode(msg, max_frame=self.max_frame))

    async def send_frame(self, frame: bytes) -> None:
        """Send one frame :func:`~palmnode.link.codec.encode` made (a sender that queues frames,
        to count their bytes, encodes them itself); raises :class:`LinkClosed` like :meth:`send`."""
        async with self._send_lock:
            if self.closed:
                raise LinkClosed("connection already closed")
            try:
                with trio.move_on_after(self.frame_timeout) as scope:
                    await self.stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.closed = True
                raise LinkClosed(self._broken or _network_reason("connection lost while sending", exc)) from None
            except BaseException:
                # cancelled from outside (a caller's timeout, the session ending) with the frame
                # perhaps half sent: its rest can never follow, so nothing more can be said on this
                # stream (trio's SSLStream is broken too). Closing it at once also ends a receive()
                # waiting on it, so the connection does not linger half dead.
                await self._break("a frame's sending was cut short")
                raise
            if scope.cancelled_caught:
                self.stats.count_drop(DropReason.STALLED)
                reason = f"the peer took no frame for {self.frame_timeout:g} s (not reading)"
                await self._break(reason)
                raise LinkClosed(reason)
        self.stats.frames_out += 1
        self.stats.bytes_out += len(frame)

    async def receive(self) -> Message:
        """The next message from the peer (never a Goodbye: that raises :class:`LinkClosed`)."""
        while True:
            ev = self._decoder.next_event()
            if ev is None:
                if self._eof:
                    self.closed = True
                    raise LinkClosed("peer closed the connection")
                deadline = math.inf  # between frames the peer may be silent as long as it likes (§7)
                if self._decoder.buffered:
                    if self._partial_since is None:
                        self._partial_since = trio.current_time()
                    deadline = self._partial_since + self.frame_timeout
                with trio.move_on_at(deadline):
                    try:
                        data = await self.stream.receive_some(RECEIVE_CHUNK)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        self.closed = True
                        raise LinkClosed(self._broken or _network_reason("connection lost", exc)) from None
                    deadline = None
                if deadline is not None:
                    await self.fail(f"a frame begun {self.frame_timeout:g} s ago is not finished "
                                    f"({self._decoder.buffered} bytes of it received)", DropReason.STALLED)
                self.stats.bytes_in += len(data)
                self._eof = not data
                self._decoder.receive_data(data)
                continue
            self._partial_since = None
            self.last_frame_size = self._decoder.last_size
            if isinstance(ev, Malformed):
                await self.fail(ev.reason, ev.kind)
            self.stats.frames_in += 1
            if isinstance(ev, Goodbye):
                await self.aclose()
                if self.peer_hello is None and self.local_hello is not None:
                    # §4: a goodbye instead of the peer's hello: it refuses this connection
                    other = "controller" if self.local_hello.role == "node" else "node"
                    raise LinkClosed(f"refused by the {other}: {ev.reason}")
                raise LinkClosed(f"peer closed the connection: {ev.reason}")
            if self.peer_hello is not None:
                violation = self._violation(ev)
                if violation is not None:
                    await self.fail(violation)
            return ev

    def _violation(self, msg: Message) -> str | None:
        """What is wrong with ``msg`` once the hellos are done (§4, §6), or None."""
        role = self.local_hello.role if self.local_hello is not None else None
        if isinstance(msg, Hello):
            return "a second hello"
        if isinstance(msg, Event) and role == "node":
            return "an event sent to a node"
        if isinstance(msg, Ack) and role == "controller":
            return "an ack sent to the controller"
        return None

    async def hello(self, local: Hello, *, timeout: float, peer_role: Literal["node", "controller"] | None = None
                    ) -> Hello:
        """Complete TLS, send ``local`` and read the peer's hello within ``timeout`` seconds (§4).

        Checks the peer's role (the opposite of ``local.role`` unless ``peer_role`` says),
        negotiates ``version = min(ours, theirs)``, and on the controller side checks that the
        hello's node_id equals the certificate CN. Raises :class:`LinkProtocolError` (channel
        closed with a goodbye) or :class:`LinkClosed` (including a timeout).
        """
        expected = peer_role or ("controller" if local.role == "node" else "node")
        self.local_hello = local
        peer: Message | None = None
        with trio.move_on_after(timeout if math.isfinite(timeout) else math.inf):
            await self.handshake()
            await self.send(local)
            peer = await self.receive()
        if peer is None:
            await self.aclose()
            raise LinkClosed(f"no hello from the peer within {timeout:g} s")
        if not isinstance(peer, Hello):
            await self.fail(f"expected hello first, got {type(peer).__name__.lower()}")
        assert isinstance(peer, Hello)
        if peer.role != expected:
            await self.fail(f"peer says it is a {peer.role}, expected a {expected}")
        version = min(local.version, peer.version)
        if version < MIN_PROTOCOL_VERSION:
            await self.fail(f"unsupported protocol version {peer.version}")
        cn = self.peer_name
        if local.role == "controller" and cn is not None and peer.node_id != cn:
            await self.fail(f"hello node_id {one_line(peer.node_id, 64)} does not match certificate CN {cn}")
        self.peer_hello, self.version = peer, version
        return peer

    async def fail(self, reason: str, kind: str = DropReason.PROTOCOL) -> NoReturn:
        """Drop the connection because of the peer: count it, say goodbye, close, raise
        :class:`LinkProtocolError` (never returns)."""
        reason = one_line(reason)
        self.stats.count_drop(kind)
        if not self.closed:
            with trio.move_on_after(GOODBYE_TIMEOUT_S):
                try:
                    await self.send(Goodbye(reason=reason))
                except LinkClosed:
                    pass
        await self.aclose()
        raise LinkProtocolError(reason, kind)

    async def _break(self, reason: str) -> None:
        """Close the stream at once, without a goodbye or a TLS close_notify (nothing more can be
        sent); a task waiting in :meth:`receive` gets :class:`LinkClosed` with ``reason``."""
        self.closed = True
        self._broken = self._broken or reason
        await trio.aclose_forcefully(self.stream)

    async def aclose(self, reason: str | None = None) -> None:
        """Close the connection, first sending ``goodbye {reason}`` when a reason is given."""
        if reason is not None and not self.closed:
            with trio.move_on_after(GOODBYE_TIMEOUT_S):
                try:
                    await self.send(Goodbye(reason=one_line(reason)))
                except LinkClosed:
                    pass
        self.closed = True
        with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self.stream)
