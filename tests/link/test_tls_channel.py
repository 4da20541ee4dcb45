"""Development PKI, TLS contexts and Channel over real sockets with real mutual TLS (§1, §4, §7)."""
from __future__ import annotations

import argparse
import ssl
import stat

import pytest
import trio
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from palmnode.link import certs
from palmnode.link.certs import PkiError, make_dev_pki
from palmnode.link.channel import Channel, LinkClosed, LinkProtocolError
from palmnode.link.codec import HEADER, MAX_FRAME
from palmnode.link.messages import (
    PROTOCOL_VERSION,
    Ack,
    DropReason,
    Event,
    Hello,
    Request,
    Response,
)
from palmnode.link.tls import TlsConfigError, client_context, server_context

from .stub import StubController


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


# ---- PKI -----------------------------------------------------------------------------------------


def test_dev_pki_files_and_extensions(pki):
    assert stat.S_IMODE(pki.folder.stat().st_mode) == 0o700
    for key in (pki.ca_key, pki.controller.key, *(p.key for p in pki.nodes.values())):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = load(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    node = load(pki.nodes["gate-1"].cert)
    assert node.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gate-1"
    assert node.issuer == ca.subject
    assert not node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["gate-1", "localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert list(node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    controller = load(pki.controller.cert)
    assert list(controller.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]


def test_dev_pki_reuses_its_ca_to_add_nodes(tmp_path):
    first = make_dev_pki(tmp_path, nodes=["gate-1"])
    ca = pki_ca = first.ca_cert.read_bytes()
    second = make_dev_pki(tmp_path, nodes=["gate-3"])
    assert second.ca_cert.read_bytes() == pki_ca == ca
    assert load(second.nodes["gate-3"].cert).issuer == load(first.ca_cert).subject


@pytest.mark.parametrize("nodes", [["../x"], ["ca"], ["gate-1", "gate-1"], ["controller"], [""]])
def test_dev_pki_refuses_bad_names(tmp_path, nodes):
    with pytest.raises(PkiError):
        make_dev_pki(tmp_path, nodes=nodes)


def test_certs_subcommand(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    certs.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "pki"), "--node", "gate-1", "--node", "gate-2"])
    assert certs.main(args) == 0
    out = capsys.readouterr().out
    assert "gate-2" in out and (tmp_path / "pki" / "gate-2.key").exists()
    assert certs.main(parser.parse_args(["--out", str(tmp_path / "pki"), "--node", "bad/name"])) == 1
    assert "not a usable name" in capsys.readouterr().err


def test_missing_files_are_one_line_config_errors(pki, tmp_path):
    with pytest.raises(TlsConfigError, match="palmnode certs"):
        client_context(tmp_path / "nope.pem", pki.nodes["gate-1"].key, pki.ca_cert)
    with pytest.raises(TlsConfigError, match="cannot use link certificate"):
        server_context(pki.controller.cert, pki.nodes["gate-1"].key, pki.ca_cert)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_private_key_others_may_read_is_refused(pki, tmp_path, mode):
    """A gate's or the controller's TLS key readable by its group or others was loaded: whoever read
    it could speak as that gate (events, deletions, charges) or pose as the controller. Refused now,
    as the vault's and the card token's keys are."""
    for make, pair in ((client_context, pki.nodes["gate-1"]), (server_context, pki.controller)):
        key = tmp_path / f"{pair.key.stem}.key"
        key.write_bytes(pair.key.read_bytes())
        key.chmod(mode)
        with pytest.raises(TlsConfigError, match=f"link key {key} has mode {mode:04o}, readable beyond its owner; "
                                                 f"run `chmod 600 {key}`"):
            make(pair.cert, key, pki.ca_cert)
        key.chmod(0o600)
        make(pair.cert, key, pki.ca_cert)


def test_contexts_are_tls13_with_certificates_both_ways(pki):
    for ctx in (server_context(pki.controller.cert, pki.controller.key, pki.ca_cert),
                client_context(pki.nodes["gate-1"].cert, pki.nodes["gate-1"].key, pki.ca_cert)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED


# ---- Channel over TLS ------------------------------------------------------------------------------


async def dial(pki, port: int, name: str = "gate-1", *, ca=None, server_hostname="controller") -> Channel:
    pair = pki.pair(name)
    ctx = client_context(pair.cert, pair.key, ca or pki.ca_cert)
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    return Channel(trio.SSLStream(tcp, ctx, server_hostname=server_hostname))


def node_hello(node_id: str = "gate-1") -> Hello:
    return Hello(version=PROTOCOL_VERSION, node_id=node_id, role="node", capabilities=("events",))


@pytest.fixture
async def stub(nursery, pki):
    server = StubController(pki)
    await nursery.start(server.run)
    return server


async def test_hello_and_requests_both_ways(stub, pki, nursery):
    channel = await dial(pki, stub.port)
    peer = await channel.hello(node_hello(), timeout=5)
    assert (peer.role, peer.node_id, channel.version, channel.peer_name) == ("controller", "controller", 1, "controller")
    await stub.changes.wait_until(lambda: "gate-1" in stub.channels)
    assert stub.channels["gate-1"].peer_name == "gate-1"

    await channel.send(Request(id=1, op="echo", args={"x": b"\x01"}))
    assert await channel.receive() == Response(id=1, ok=True, result={"x": b"\x01"}, error=None)

    async def answer():
        req = await channel.receive()
        await channel.send(Response.success(req.id, {"op": req.op}))

    nursery.start_soon(answer)
    response = await stub.request("gate-1", "node.status", {})
    assert response.result == {"op": "node.status"}
    await channel.aclose()


async def test_event_then_ack(stub, pki):
    channel = await dial(pki, stub.port)
    await channel.hello(node_hello(), timeout=5)
    await channel.send(Event(seq=1, key="gate-1:1", kind="unknown", node_id="gate-1", at=1.0, data={}))
    assert await channel.receive() == Ack(seq=1, key="gate-1:1")
    await channel.aclose()


async def test_hello_node_id_must_match_the_certificate(stub, pki):
    channel = await dial(pki, stub.port, "gate-1")
    await channel.hello(node_hello("gate-2"), timeout=5)  # both send at once: the refusal follows
    with pytest.raises(LinkClosed, match="does not match certificate CN gate-1"):
        await channel.receive()
    await stub.changes.wait_until(lambda: stub.stats.dropped.get(DropReason.PROTOCOL) == 1)


async def test_first_frame_must_be_hello(stub, pki):
    channel = await dial(pki, stub.port)
    await channel.handshake()
    await channel.send(Request(id=1, op="echo", args={}))
    with pytest.raises(LinkClosed, match="expected hello first, got request"):
        await channel.receive()  # the server's hello, then its goodbye
        await channel.receive()


@pytest.mark.parametrize("second", [node_hello(), Ack(seq=1, key="k")], ids=["second hello", "ack to controller"])
async def test_rule_breaches_after_hello(stub, pki, second):
    channel = await dial(pki, stub.port)
    await channel.hello(node_hello(), timeout=5)
    await channel.send(second)
    with pytest.raises(LinkClosed, match="peer closed the connection: (a second hello|an ack sent)"):
        await channel.receive()


async def test_node_side_refuses_an_event(pki, nursery):
    # the node's channel enforces the direction rules too: an event sent to a node ends the link
    ctx = server_context(pki.controller.cert, pki.controller.key, pki.ca_cert)
    listeners = await trio.open_ssl_over_tcp_listeners(0, ctx, host="127.0.0.1")
    port = listeners[0].transport_listener.socket.getsockname()[1]

    async def rogue(stream):
        channel = Channel(stream)
        await channel.hello(Hello(version=1, node_id="controller", role="controller"), timeout=5)
        await channel.send(Event(seq=1, key="k", kind="x", node_id="controller", at=0.0, data={}))
        await trio.sleep_forever()

    await nursery.start(trio.serve_listeners, rogue, listeners)
    channel = await dial(pki, port)
    await channel.hello(node_hello(), timeout=5)
    with pytest.raises(LinkProtocolError, match="an event sent to a node"):
        await channel.receive()
    assert channel.stats.dropped == {DropReason.PROTOCOL: 1}


async def test_foreign_node_certificate_is_refused_by_the_controller(stub, pki, other_pki):
    # the node trusts the real CA but its own certificate comes from another CA
    pair = other_pki.pair("gate-1")
    ctx = client_context(pair.cert, pair.key, pki.ca_cert)
    tcp = await trio.open_tcp_stream("127.0.0.1", stub.port)
    channel = Channel(trio.SSLStream(tcp, ctx, server_hostname="controller"))
    with pytest.raises(LinkClosed):
        await channel.hello(node_hello(), timeout=5)
    await stub.changes.wait_until(lambda: any("certificate verify failed" in e for e in stub.errors))
    assert stub.hellos == []


async def test_foreign_controller_certificate_is_refused_by_the_node(pki, other_pki, nursery):
    rogue = StubController(other_pki.__class__(  # a controller cert from another CA, trusting the real CA
        folder=other_pki.folder, ca_cert=pki.ca_cert, ca_key=pki.ca_key, controller=other_pki.controller,
        nodes=other_pki.nodes))
    await nursery.start(rogue.run)
    channel = await dial(pki, rogue.port)
    with pytest.raises(LinkClosed, match="certificate verify failed"):
        await channel.hello(node_hello(), timeout=5)
    assert rogue.hellos == []


async def test_a_node_certificate_cannot_pose_as_the_controller(pki, nursery):
    impostor = StubController(pki, name="gate-2")
    await nursery.start(impostor.run)
    for hostname in ("controller", "gate-2"):  # wrong name; right name but no serverAuth usage
        channel = await dial(pki, impostor.port, server_hostname=hostname)
        with pytest.raises(LinkClosed, match="certificate verify failed"):
            await channel.hello(node_hello(), timeout=5)


@pytest.mark.parametrize(
    "garbage, kind",
    [(HEADER.pack(MAX_FRAME + 1) + b"\x00" * 100, DropReason.OVERSIZE),
     (HEADER.pack(3) + b"\xc1\xc1\xc1", DropReason.MSGPACK)],
    ids=["oversize", "bad msgpack"],
)
async def test_bad_frame_closes_only_that_connection(stub, pki, garbage, kind):
    good = await dial(pki, stub.port, "gate-1")
    await good.hello(node_hello("gate-1"), timeout=5)
    bad = await dial(pki, stub.port, "gate-2")
    await bad.hello(node_hello("gate-2"), timeout=5)
    await bad.stream.send_all(garbage)
    with pytest.raises(LinkClosed, match="peer closed the connection: "):
        await bad.receive()
    assert stub.stats.dropped == {kind: 1}
    await good.send(Request(id=5, op="echo", args={"still": True}))
    assert (await good.receive()).result == {"still": True}
    await good.aclose()


async def test_hello_timeout(pki, nursery):
    ctx = server_context(pki.controller.cert, pki.controller.key, pki.ca_cert)
    listeners = await trio.open_ssl_over_tcp_listeners(0, ctx, host="127.0.0.1")
    port = listeners[0].transport_listener.socket.getsockname()[1]

    async def mute(stream):
        await stream.do_handshake()
        await trio.sleep_forever()

    await nursery.start(trio.serve_listeners, mute, listeners)
    channel = await dial(pki, port)
    with pytest.raises(LinkClosed, match="no hello from the peer within 0.2 s"):
        await channel.hello(node_hello(), timeout=0.2)


async def deaf_controller(pki, nursery) -> int:
    """A controller that says hello and then reads nothing (its receive buffer kept small)."""
    import socket

    ctx = server_context(pki.controller.cert, pki.controller.key, pki.ca_cert)
    listeners = await trio.open_ssl_over_tcp_listeners(0, ctx, host="127.0.0.1")
    listeners[0].transport_listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    async def deaf(stream):
        channel = Channel(stream)
        await channel.hello(Hello(version=1, node_id="controller", role="controller"), timeout=5)
        await trio.sleep_forever()

    await nursery.start(trio.serve_listeners, deaf, listeners)
    return listeners[0].transport_listener.socket.getsockname()[1]


async def test_a_send_the_peer_does_not_take_ends_the_connection_after_the_frame_timeout(pki, nursery):
    port = await deaf_controller(pki, nursery)
    channel = await dial(pki, port)
    channel.frame_timeout = 0.2
    await channel.hello(node_hello(), timeout=5)
    big = Request(id=1, op="x", args={"pad": b"\x00" * 1_000_000})
    with trio.fail_after(10), pytest.raises(LinkClosed, match=r"the peer took no frame for 0.2 s \(not reading\)"):
        for _ in range(64):  # enough to fill every socket buffer on the way
            await channel.send(big)
    assert channel.closed and channel.stats.dropped == {DropReason.STALLED: 1}
    with pytest.raises(LinkClosed, match="not reading"):  # a receive after it says why too
        await channel.receive()


async def test_a_send_cut_short_by_its_caller_closes_the_connection_at_once(pki, nursery):
    """A frame half sent can never be finished (the peer would read the next frame's bytes as its
    rest): the channel closes, and a task waiting to receive hears it at once instead of waiting
    on a peer that may never speak again."""
    port = await deaf_controller(pki, nursery)
    channel = await dial(pki, port)
    await channel.hello(node_hello(), timeout=5)
    big = Request(id=1, op="x", args={"pad": b"\x00" * 1_000_000})
    ended = []

    async def receiving():
        try:
            await channel.receive()
        except LinkClosed as exc:
            ended.append(str(exc))

    async with trio.open_nursery() as inner:
        inner.start_soon(receiving)
        with trio.move_on_after(0.2) as scope:  # e.g. a request's own timeout
            for _ in range(64):
                await channel.send(big)
        assert scope.cancelled_caught
        with trio.fail_after(1):
            while not ended:
                await trio.sleep(0.01)
    assert channel.closed and ended == ["a frame's sending was cut short"]
