"""A hostile (or buggy) store controller on real TLS sockets, and the node side it is aimed at.

:class:`Hostile` accepts the node over mutual TLS like the real controller; each connection runs
the test's script (``async def script(conn)``), which can speak the protocol properly
(:meth:`Conn.hello`, :meth:`Conn.serve`, :meth:`Conn.request`) or not at all (:meth:`Conn.raw`,
silence, floods, lies). :class:`Gate` is the node's side as ``palmnode run`` wires it for the link:
a real Vault, People (vault + gallery), NodeOps (the ops it serves, its sync and charges) and a
real LinkClient.
"""
from __future__ import annotations

import itertools
import os
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from drivers.card_reader.cardtoken import CardToken
from palmnode.actors import EventBus
from palmnode.biometrics.gallery import Gallery
from palmnode.biometrics.types import PalmTemplate
from palmnode.gate.enrol import EnrolFlow
from palmnode.gate.modes import GateModes
from palmnode.gate.people import People
from palmnode.link.certs import PkiPaths
from palmnode.link.channel import Channel, ChannelStats, LinkError
from palmnode.link.client import LinkClient, LinkConfig
from palmnode.link.messages import PROTOCOL_VERSION, Ack, Event, Hello, Request, Response
from palmnode.link.tls import server_context
from palmnode.link.wire import person_to_wire
from palmnode.ops import SYNC_STATE, NodeOps
from palmnode.vault import EnrolledPalm, Person, Vault, VaultKeys

from tests.conftest import start_stoppable

from .stub import Changes

OpHandler = Callable[[dict], Awaitable[dict | None]]  # None: never answered


async def empty_sync(args: dict) -> dict:
    return {"changes": [], "cursor": args.get("cursor"), "more": False}  # nothing new: the cursor stays


class Conn:
    """One connection of the hostile controller, as its script sees it."""

    def __init__(self, stream: trio.SSLStream, number: int, hostile: Hostile) -> None:
        self.stream = stream
        self.number = number  # 0 for the node's first connection, then 1, 2, ...
        self.hostile = hostile
        self.channel = Channel(stream, stats=hostile.stats)
        self.nursery: trio.Nursery | None = None
        self.ack = True
        self.handlers: dict[str, OpHandler] = {"sync": empty_sync}
        self.events: list[Event] = []
        self.requests: list[Request] = []
        self.responses: dict[int, Response] = {}
        self.ended: str | None = None  # why the node's side of this connection ended (LinkError text)
        self.greeted = trio.Event()  # the hellos are done
        self._ids = itertools.count(1)

    async def hello(self, name: str = "controller") -> Hello:
        peer = await self.channel.hello(Hello(version=PROTOCOL_VERSION, node_id=name, role="controller",
                                              capabilities=("sync", "charge")), timeout=5)
        self.greeted.set()
        return peer

    async def raw(self, data: bytes) -> None:
        """Bytes onto the TLS stream, framed or not (between the frames other tasks send)."""
        await self.channel.send_frame(data)

    def serve(self) -> None:
        """Read the node's frames in the background: ack events (when ``ack``), answer its
        requests from ``handlers``, keep responses for :meth:`request`."""
        assert self.nursery is not None
        self.nursery.start_soon(self._read)

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.channel.receive()
                if isinstance(msg, Event):
                    self.events.append(msg)
                    if self.ack:
                        await self.channel.send(Ack(seq=msg.seq, key=msg.key))
                elif isinstance(msg, Request):
                    self.requests.append(msg)
                    self.nursery.start_soon(self._answer, msg)
                elif isinstance(msg, Response):
                    self.responses[msg.id] = msg
                self.hostile.changes.notify()
        except LinkError as exc:
            self.ended = str(exc)
            self.hostile.changes.notify()

    async def _answer(self, request: Request) -> None:
        handler = self.handlers.get(request.op)
        if handler is None:
            response = Response.failure(request.id, f"unknown op {request.op}")
        else:
            result = await handler(request.args)
            if result is None:
                return
            response = Response.success(request.id, result)
        try:
            await self.channel.send(response)
        except LinkError:
            pass

    async def send_request(self, op: str, args: dict) -> int:
        request_id = next(self._ids)
        await self.channel.send(Request(id=request_id, op=op, args=args))
        return request_id

    async def request(self, op: str, args: dict, timeout: float = 5.0) -> Response:
        """Send ``op`` to the node and wait for its answer (:meth:`serve` must be reading)."""
        with trio.fail_after(timeout):
            await self.greeted.wait()
        request_id = await self.send_request(op, args)
        await self.hostile.changes.wait_until(lambda: request_id in self.responses, timeout)
        return self.responses.pop(request_id)

    async def until_ended(self, timeout: float = 5.0) -> str:
        """Wait for the node to end this connection; its reason as the hostile end saw it."""
        await self.hostile.changes.wait_until(lambda: self.ended is not None, timeout)
        return self.ended


Script = Callable[[Conn], Awaitable[None]]


class Hostile:
    """Accepts the node over mutual TLS; each connection runs ``script(conn)`` and is closed when
    it returns. ``rcvbuf`` shrinks the accepted sockets' receive buffer (a controller that stops
    reading then stops the node's sends sooner)."""

    def __init__(self, pki: PkiPaths, script: Script, *, rcvbuf: int | None = None) -> None:
        pair = pki.pair("controller")
        self.context = server_context(pair.cert, pair.key, pki.ca_cert)
        self.script = script
        self.rcvbuf = rcvbuf
        self.port = 0
        self.stats = ChannelStats()
        self.connections: list[Conn] = []
        self.changes = Changes()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_ssl_over_tcp_listeners(0, self.context, host="127.0.0.1")
        sock = listeners[0].transport_listener.socket
        if self.rcvbuf is not None:
            import socket

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)  # inherited by accepted sockets
        self.port = sock.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, stream: trio.SSLStream) -> None:
        conn = Conn(stream, len(self.connections), self)
        self.connections.append(conn)
        self.changes.notify()
        try:
            async with trio.open_nursery() as nursery:
                conn.nursery = nursery
                try:
                    await self.script(conn)
                except LinkError as exc:
                    conn.ended = conn.ended or str(exc)
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)
            self.changes.notify()

    async def connection(self, number: int, timeout: float = 5.0) -> Conn:
        """The node's ``number``th connection (0 = the first), once it is made."""
        await self.changes.wait_until(lambda: len(self.connections) > number, timeout)
        return self.connections[number]


def template_bytes(seed: int) -> bytes:
    """A well-formed PalmTemplate (both modalities, random codes)."""
    import numpy as np

    from palmnode.biometrics.types import SURFACE_ROWS, VEIN_ROWS, ModalityCode

    rng = np.random.default_rng(seed)
    surface, vein = (ModalityCode.from_planes(rng.integers(0, 2**32, (4, rows), dtype=np.uint32))
                     for rows in (SURFACE_ROWS, VEIN_ROWS))
    return PalmTemplate(surface=surface, vein=vein).to_bytes()


def person(person_id: str, seed: int = 0, *, origin: str = "gate-2") -> Person:
    return Person(person_id=person_id, card=CardToken(os.urandom(32), "4242"), phone_digest=os.urandom(32),
                  palms=(EnrolledPalm("right", tuple(PalmTemplate.from_bytes(template_bytes(seed + i))
                                                     for i in range(2))),),
                  enrolled_at=1.7e9, origin_node=origin)


def wire(pid: str, seed: int = 0, **changes: Any) -> dict:
    """Person ``pid``'s §8 map, with ``changes`` applied to it."""
    return person_to_wire(person(pid, seed)) | changes


class Gate:
    """The node's side of the link as ``palmnode run`` wires it (no devices): a real Vault, People
    (vault + gallery), gate modes, an enrolment flow (its actor not running: a begun enrolment
    waits), NodeOps serving the controller and syncing on connect, and a real LinkClient."""

    def __init__(self, tmp_path: Path, pki: PkiPaths, port: int, *, vault_busy_timeout: float = 5.0,
                 **link: Any) -> None:
        pair = pki.pair("gate-1")
        self.vault = Vault.open(tmp_path / "gate-1.vault", VaultKeys.from_secret(os.urandom(32)), node_id="gate-1",
                                busy_timeout=vault_busy_timeout)
        bus = EventBus()
        self.people = People(self.vault, Gallery(), "gate-1", bus)
        self.modes = GateModes(bus)
        self.enrol = EnrolFlow(bus, None, self.people.gallery, self.people)
        self.node = types.SimpleNamespace(vault=self.vault, people=self.people, modes=self.modes,
                                          enrol=self.enrol, link=None)
        self.ops = NodeOps(self.node)
        values = {"host": "127.0.0.1", "port": port, "ca": str(pki.ca_cert), "cert": str(pair.cert),
                  "key": str(pair.key), "node_id": "gate-1", "backoff_initial_s": 0.02, "backoff_max_s": 0.1,
                  "outbox_poll_s": 0.2, "hello_timeout_s": 5.0}
        self.config = LinkConfig(**(values | link))
        self.client = self.node.link = LinkClient(self.config, self.vault, self.ops.handle,
                                                  on_connected=self.ops.sync,
                                                  capabilities=("events", "enrol", "delete", "replication", "modes"))
        self.people.events_appended = self.client.events_appended

    async def start(self, nursery: trio.Nursery) -> Gate:
        self._stop = await start_stoppable(nursery, self.client.run)
        return self

    async def stop(self) -> None:
        """Stop the link, then close the vault."""
        await self._stop()
        self.vault.close()

    def state(self) -> tuple:
        """Everything the controller's ops may change: people (as §8 maps), gallery, sync cursor, mode."""
        people = sorted((person_to_wire(p) for p in self.vault.people()), key=lambda p: p["person_id"])
        return people, len(self.people.gallery), self.vault.get_state(SYNC_STATE), self.modes.current


class ThreadController:
    """A controller outside the gate's event loop, as a store's own one is (another process): on
    its own thread, over blocking TLS sockets, it sends its hello, reads the node's frames, acks
    each event the moment it is read and answers ``sync`` with an empty page. An ack can then reach
    the node while the node's loop is still busy after sending that event, which a controller on
    the test's own trio loop cannot do (it runs only when the node's loop lets it)."""

    def __init__(self, pki: PkiPaths) -> None:
        import socket
        import threading

        pair = pki.pair("controller")
        self.context = server_context(pair.cert, pair.key, pki.ca_cert)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.acked: list[int] = []
        self.error: str | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="thread-controller")
        self._thread.start()

    def _serve(self) -> None:
        from palmnode.link.codec import Decoder, encode

        try:
            raw, _ = self.listener.accept()
            with self.context.wrap_socket(raw, server_side=True) as tls:
                tls.sendall(encode(Hello(version=PROTOCOL_VERSION, node_id="controller", role="controller",
                                         capabilities=("sync", "charge"))))
                decoder = Decoder()
                while True:
                    data = tls.recv(65536)
                    decoder.receive_data(data)
                    while (msg := decoder.next_event()) is not None:
                        if isinstance(msg, Event):
                            tls.sendall(encode(Ack(seq=msg.seq, key=msg.key)))
                            self.acked.append(msg.seq)
                        elif isinstance(msg, Request) and msg.op == "sync":
                            tls.sendall(encode(Response.success(msg.id, {"changes": [], "cursor": None})))
                    if not data:
                        return
        except OSError as exc:  # the test ended (the listener or the connection closed)
            self.error = str(exc)

    def close(self) -> None:
        self.listener.close()
