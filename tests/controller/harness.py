"""A controller on real TLS sockets, and test nodes that speak to it over real link channels."""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from palmnode.controller.server import Controller, ControllerConfig
from palmnode.link import tls
from palmnode.link.certs import PkiPaths
from palmnode.link.channel import Channel, LinkClosed
from palmnode.link.messages import (
    PROTOCOL_VERSION,
    Ack,
    Event,
    Hello,
    Request,
    Response,
)
from palmnode.vault import create_key_file
from tests.conftest import start_stoppable


def controller_config(tmp_path: Path, pki: PkiPaths, **kwargs: Any) -> ControllerConfig:
    key = tmp_path / "controller.key.hex"
    if not key.exists():
        create_key_file(key)
    kwargs.setdefault("hello_timeout_s", 5.0)
    return ControllerConfig.from_certs_dir(pki.folder, db_path=str(tmp_path / "controller.db"),
                                           key_file=str(key), port=0, **kwargs)


class ControllerRunner:
    """Start and stop a controller in a nursery (to test restarts)."""

    def __init__(self, nursery: trio.Nursery, config: ControllerConfig) -> None:
        self.nursery = nursery
        self.config = config
        self.controller: Controller | None = None
        self.stop: Callable[[], Awaitable[None]] | None = None  # set by start

    async def start(self, port: int = 0) -> Controller:
        import attrs

        self.controller = Controller(attrs.evolve(self.config, port=port))
        self.stop = await start_stoppable(self.nursery, self.controller.run)
        return self.controller


async def dial(port: int, pki: PkiPaths, name: str, *, trust: PkiPaths | None = None,
               hello: bool = True, hello_name: str | None = None) -> Channel:
    """A node's channel to the controller: TLS with ``name``'s certificate from ``pki``, trusting
    the CA of ``trust`` (default ``pki``), then the hellos (``hello_name`` as the node id)."""
    pair = pki.pair(name)
    context = tls.client_context(pair.cert, pair.key, (trust or pki).ca_cert)
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="controller")
    channel = Channel(stream)
    if hello:
        await channel.hello(Hello(version=PROTOCOL_VERSION, node_id=hello_name or name, role="node",
                                  capabilities=("events", "person.upsert", "person.remove", "node.status")),
                            timeout=5)
    return channel


class ChannelNode:
    """A node the test drives over a real :class:`Channel`: it sends events and requests, records
    what the controller sends, and answers the controller's requests from ``handlers``."""

    def __init__(self, channel: Channel, name: str) -> None:
        self.channel = channel
        self.name = name
        self.acks: list[Ack] = []
        self.pushes: list[Request] = []
        self.requests: list[Request] = []
        self.handlers: dict[str, Any] = {"person.upsert": lambda args: {}, "person.remove": lambda args: {"removed": True}}
        self.closed: str | None = None
        self._responses: dict[int, Response] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count(100)  # explicit seqs in tests stay below
        self._changed = trio.Event()

    @classmethod
    async def connect(cls, nursery: trio.Nursery, port: int, pki: PkiPaths, name: str) -> ChannelNode:
        node = cls(await dial(port, pki, name), name)
        nursery.start_soon(node._read)
        return node

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.channel.receive()
                if isinstance(msg, Ack):
                    self.acks.append(msg)
                elif isinstance(msg, Response):
                    self._responses[msg.id] = msg
                elif isinstance(msg, Request):
                    await self._answer(msg)
                self._notify()
        except LinkClosed as exc:
            self.closed = str(exc)
            self._notify()

    async def _answer(self, request: Request) -> None:
        (self.pushes if request.op.startswith("person.") else self.requests).append(request)
        handler = self.handlers.get(request.op)
        if handler is None:
            response = Response.failure(request.id, f"unknown op {request.op}")
        else:
            try:
                result = handler(request.args)
            except Exception as exc:  # noqa: BLE001 - the refusal becomes ok: false, as a node does
                response = Response.failure(request.id, exc)
            else:
                if result is None:
                    return  # never answered (a node that hangs)
                response = Response.success(request.id, result)
        await self.channel.send(response)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def event(self, kind: str, data: dict, *, key: str | None = None, seq: int | None = None) -> Ack:
        """Send an event and wait for its ack."""
        seq = next(self._seq) if seq is None else seq
        key = key or f"{self.name}:{seq}"
        await self.channel.send(Event(seq=seq, key=key, kind=kind, node_id=self.name, at=1.7e9, data=data))
        await self.wait_until(lambda: any(a.key == key for a in self.acks))
        return next(a for a in self.acks if a.key == key)

    async def request(self, op: str, args: dict) -> Response:
        request_id = next(self._ids)
        await self.channel.send(Request(id=request_id, op=op, args=args))
        await self.wait_until(lambda: request_id in self._responses)
        return self._responses.pop(request_id)


def person_wire(person_id: str, *, origin: str = "gate-a", card: bytes | None = None) -> dict:
    return {"person_id": person_id, "card_digest": card or os.urandom(32), "card_last4": "4242",
            "phone_digest": os.urandom(32),
            "palms": [{"palm": "right", "templates": [template_bytes() for _ in range(3)]}],
            "enrolled_at": 1.7e9, "origin_node": origin}


def template_bytes() -> bytes:
    """A well-formed PalmTemplate (both modalities, random codes) as the node stores it."""
    import numpy as np

    from palmnode.biometrics.types import (
        SURFACE_ROWS,
        VEIN_ROWS,
        ModalityCode,
        PalmTemplate,
    )

    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    surface, vein = (ModalityCode.from_planes(rng.integers(0, 2**32, (4, rows), dtype=np.uint32))
                     for rows in (SURFACE_ROWS, VEIN_ROWS))
    return PalmTemplate(surface=surface, vein=vein).to_bytes()


class VaultNode:
    """A node as the product wires it, minus the flows: a real Vault as the outbox and a real
    LinkClient that applies replication to the vault and syncs from its stored cursor on connect."""

    CURSOR = "controller_cursor"

    def __init__(self, tmp_path: Path, pki: PkiPaths, name: str, port: int) -> None:
        from palmnode.link.client import LinkClient, LinkConfig
        from palmnode.vault import Vault, VaultKeys

        pair = pki.pair(name)
        self.name = name
        self.path = tmp_path / f"{name}.vault"
        self.vault = Vault.open(self.path, VaultKeys.from_secret(os.urandom(32)), node_id=name)
        self.config = LinkConfig(host="127.0.0.1", port=port, ca=str(pki.ca_cert), cert=str(pair.cert),
                                 key=str(pair.key), node_id=name, backoff_initial_s=0.02, backoff_max_s=0.1,
                                 hello_timeout_s=5.0)
        self._client_class = LinkClient
        self.client: LinkClient | None = None
        self.synced = 0
        self._stop: Callable[[], Awaitable[None]] | None = None

    async def start(self, nursery: trio.Nursery) -> VaultNode:
        """Start (or restart) the node's link; returns at once, the link dials in the background."""
        self.client = self._client_class(self.config, outbox=self.vault, handler=self._handle,
                                         on_connected=self._sync,
                                         capabilities=("events", "person.upsert", "person.remove"))
        self._stop = await start_stoppable(nursery, self.client.run)
        return self

    async def stop(self) -> None:
        """Stop the link (the vault stays: events made now wait in its outbox)."""
        await self._stop()

    async def _handle(self, op: str, args: dict) -> dict:
        from palmnode.link.client import UnknownOp
        from palmnode.link.wire import person_from_wire

        if op == "person.upsert":
            await trio.to_thread.run_sync(self._upsert, person_from_wire(args["person"]))
            return {}
        if op == "person.remove":
            removed = await trio.to_thread.run_sync(
                lambda: self.vault.remove_person(args["person_id"], reason="replicated"))
            return {"removed": removed}
        raise UnknownOp(op)

    def _upsert(self, person) -> None:
        # one transaction, as the product's People does: a push and the connect sync can carry the
        # same person at once, and a get-then-add in two threads would both see nobody
        self.vault.upsert_people([person])

    async def _sync(self) -> None:
        from palmnode.link.wire import person_from_wire

        cursor = self.vault.get_state(self.CURSOR)
        while True:
            result = await self.client.request("sync", {"cursor": None if cursor is None else int(cursor)})
            for change in result["changes"]:
                if change["kind"] == "upsert":
                    await trio.to_thread.run_sync(self._upsert, person_from_wire(change["person"]))
                else:
                    await trio.to_thread.run_sync(
                        lambda pid=change["person_id"]: self.vault.remove_person(pid, reason="replicated"))
            cursor = str(result["cursor"])
            self.vault.set_state(self.CURSOR, cursor)
            if not result["more"]:
                break
        self.synced += 1

    def person(self, person_id: str, *, card: bytes | None = None):
        from drivers.card_reader.cardtoken import CardToken
        from palmnode.biometrics.types import PalmTemplate
        from palmnode.vault import EnrolledPalm, Person

        return Person(person_id=person_id, card=CardToken(card or os.urandom(32), "4242"),
                      phone_digest=os.urandom(32),
                      palms=(EnrolledPalm("right", tuple(PalmTemplate.from_bytes(template_bytes())
                                                         for _ in range(3))),),
                      enrolled_at=1.7e9, origin_node=self.name)

    async def enrol(self, person) -> None:
        from palmnode.link.wire import person_to_wire

        await trio.to_thread.run_sync(
            lambda: self.vault.add_person(person, event=("enrolled", {"person": person_to_wire(person)})))
        self.client.events_appended()

    async def enrol_offline(self, person) -> None:
        """Enrol ``person`` in the vault (its event in the outbox) before the link starts."""
        from palmnode.link.wire import person_to_wire

        await trio.to_thread.run_sync(
            lambda: self.vault.add_person(person, event=("enrolled", {"person": person_to_wire(person)})))

    async def delete(self, person_id: str) -> None:
        await trio.to_thread.run_sync(
            lambda: self.vault.remove_person(person_id, event=("deleted", {"person_id": person_id})))
        self.client.events_appended()

    def file_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
                        if p.exists())
