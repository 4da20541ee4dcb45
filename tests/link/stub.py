"""A tiny controller built from Channel, for the link's tests (the real one is palmnode/controller/)."""
from __future__ import annotations

import itertools
from collections.abc import Callable

import trio

from palmnode.link.certs import PkiPaths
from palmnode.link.channel import Channel, ChannelStats, LinkError
from palmnode.link.messages import (
    PROTOCOL_VERSION,
    Ack,
    Event,
    Hello,
    Request,
    Response,
)
from palmnode.link.tls import server_context


class Changes:
    """Something that changes, and tasks waiting for a condition on it (no polling)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._event.wait()


class StubController:
    """Accepts nodes over mutual TLS, applies events once by key (acking them), answers ``echo``
    and ``sync``, and can send requests to a node. ``stop()`` closes it and every connection."""

    def __init__(self, pki: PkiPaths, *, port: int = 0, ack: bool = True, name: str = "controller") -> None:
        pair = pki.pair(name)
        self.context = server_context(pair.cert, pair.key, pki.ca_cert)
        self.name = name
        self.port = port
        self.ack = ack
        self.stats = ChannelStats()
        self.applied: dict[str, Event] = {}
        self.received: list[Event] = []
        self.channels: dict[str, Channel] = {}
        self.errors: list[str] = []
        self.hellos: list[Hello] = []
        self.changes = Changes()
        self._ids = itertools.count(1)
        self._answers: dict[int, Response] = {}
        self._scope: trio.CancelScope | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_ssl_over_tcp_listeners(self.port, self.context, host="127.0.0.1")
        self.port = listeners[0].transport_listener.socket.getsockname()[1]
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(self.port)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _handle(self, stream: trio.SSLStream) -> None:
        channel = Channel(stream, stats=self.stats)
        try:
            hello = Hello(version=PROTOCOL_VERSION, node_id=self.name, role="controller",
                          capabilities=("sync", "charge"))
            try:
                peer = await channel.hello(hello, timeout=5)
            except LinkError as exc:
                self.errors.append(str(exc))
                return
            self.hellos.append(peer)
            self.channels[peer.node_id] = channel
            self.changes.notify()
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        msg = await channel.receive()
                    except LinkError as exc:
                        self.errors.append(str(exc))
                        break
                    if isinstance(msg, Event):
                        self.received.append(msg)
                        self.applied.setdefault(msg.key, msg)
                        if self.ack:
                            await channel.send(Ack(seq=msg.seq, key=msg.key))
                    elif isinstance(msg, Request):
                        nursery.start_soon(self._answer, channel, msg)
                    elif isinstance(msg, Response):
                        self._answers[msg.id] = msg
                    self.changes.notify()
                nursery.cancel_scope.cancel()
        finally:
            if self.channels.get(getattr(channel.peer_hello, "node_id", None)) is channel:
                del self.channels[channel.peer_hello.node_id]
            await channel.aclose()
            self.changes.notify()

    async def _answer(self, channel: Channel, req: Request) -> None:
        if req.op == "echo":
            response = Response.success(req.id, dict(req.args))
        elif req.op == "sync":
            response = Response.success(req.id, {"changes": [], "cursor": req.args.get("cursor") or 0})
        elif req.op == "slow":
            await trio.sleep_forever()
        else:
            response = Response.failure(req.id, f"unknown op {req.op}")
        try:
            await channel.send(response)
        except LinkError:
            pass

    async def request(self, node_id: str, op: str, args: dict, timeout: float = 5.0) -> Response:
        """Send ``op`` to a connected node and wait for its response."""
        request_id = next(self._ids)
        await self.channels[node_id].send(Request(id=request_id, op=op, args=args))
        await self.changes.wait_until(lambda: request_id in self._answers, timeout)
        return self._answers.pop(request_id)
