"""LinkClient over real sockets and TLS against a stub controller, with a real Vault as its outbox."""
from __future__ import annotations

import itertools
import logging
import socket

import pytest
import trio
import trio.testing

from palmnode.link.channel import Channel, LinkClosed
from palmnode.link.client import (
    LinkClient,
    LinkConfig,
    LinkConfigError,
    LinkUnavailable,
    RequestFailed,
    RequestRefused,
    UnknownOp,
)
from palmnode.link.codec import HEADER, MAX_FRAME
from palmnode.link.messages import PROTOCOL_VERSION, DropReason, Hello
from palmnode.link.tls import TlsConfigError, client_context
from palmnode.vault import Vault, load_keys
from palmnode.vault.errors import VaultError
from tests.conftest import wait_for
from tests.gate.test_people import write_locked

from .stub import Changes, StubController


@pytest.fixture
def vault(tmp_path):
    vault = Vault.open(tmp_path / "vault.db", load_keys(tmp_path / "vault.key", create=True), node_id="gate-1")
    yield vault
    vault.close()


def config(pki, port: int, node: str = "gate-1", pki_for_node=None, **overrides) -> LinkConfig:
    pair = (pki_for_node or pki).pair(node)
    values = {"host": "127.0.0.1", "port": port, "ca": str(pki.ca_cert), "cert": str(pair.cert),
              "key": str(pair.key), "node_id": node, "backoff_initial_s": 0.02, "backoff_max_s": 0.1,
              "outbox_poll_s": 0.2}
    return LinkConfig(**(values | overrides))


async def serve(op: str, args: dict) -> dict:
    if op == "node.status":
        return {"node_id": "gate-1", "people": 3}
    if op == "enrol.begin":
        raise RuntimeError("no card tapped\nwithin 30 s")
    if op == "person.delete":
        raise RequestRefused("no such person")
    raise UnknownOp(op)


@pytest.fixture
async def stub(nursery, pki):
    server = StubController(pki)
    await nursery.start(server.run)
    return server


async def pending(vault: Vault) -> list[int]:
    return [e.seq for e in await pending_in(vault)]


async def pending_in(vault: Vault) -> list:
    """The vault's undelivered events (read in a worker thread: the client's steps use the vault too)."""
    return await trio.to_thread.run_sync(lambda: vault.pending_events(limit=1000))


async def test_requests_both_ways_and_the_connected_hook(stub, pki, vault, nursery):
    synced = trio.Event()
    client = LinkClient(config(pki, stub.port), vault, serve, capabilities=("events", "node.status"))

    async def on_connected():
        assert (await client.request("sync", {"cursor": None})) == {"changes": [], "cursor": 0}
        synced.set()

    client._on_connected = on_connected
    await nursery.start(client.run)
    with trio.fail_after(5):
        await client.wait_connected()
        await synced.wait()
    assert client.controller_hello.node_id == "controller"
    sock = client._channel.stream.transport_stream.socket
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    assert stub.hellos[0].capabilities == ("events", "node.status")

    assert await client.request("echo", {"b": b"\x00", "n": 1}) == {"b": b"\x00", "n": 1}
    with pytest.raises(RequestFailed, match="unknown op charge"):
        await client.request("charge", {})
    with pytest.raises(LinkUnavailable, match="no answer to slow within 0.1 s"):
        await client.request("slow", {}, timeout=0.1)

    ok = await stub.request("gate-1", "node.status", {})
    assert (ok.ok, ok.result) == (True, {"node_id": "gate-1", "people": 3})
    failed = await stub.request("gate-1", "enrol.begin", {"phone": "+441234"})
    assert (failed.ok, failed.error) == (False, "no card tapped within 30 s")
    unknown = await stub.request("gate-1", "mode.set", {"mode": "entry"})
    assert (unknown.ok, unknown.error) == (False, "unknown op mode.set")
    assert client.stats.requests_served == 3 and client.stats.requests_sent == 4


async def test_a_refused_request_is_one_log_line_and_a_fault_keeps_its_traceback(stub, pki, vault, nursery, caplog):
    client = LinkClient(config(pki, stub.port), vault, serve)
    await nursery.start(client.run)
    with trio.fail_after(5):
        await client.wait_connected()
    with caplog.at_level(logging.INFO, logger="palmnode.link"):
        refused = await stub.request("gate-1", "person.delete", {"person_id": "x"})
        failed = await stub.request("gate-1", "enrol.begin", {})
    assert (refused.ok, refused.error, failed.ok) == (False, "no such person", False)
    records = {r.getMessage(): r for r in caplog.records if r.name == "palmnode.link" and "request" in r.getMessage()}
    assert records["link request refused: no such person"].exc_info is None
    assert records["link request failed"].exc_info is not None


async def test_events_are_acked_and_marked_delivered(stub, pki, vault, nursery):
    for i in range(3):
        vault.append_event("unknown", {"latency_ms": 10.0 + i, "reason": "no match"})
    client = LinkClient(config(pki, stub.port), vault)
    await nursery.start(client.run)
    await stub.changes.wait_until(lambda: len(stub.applied) == 3)
    for i in range(2):
        vault.append_event("deleted", {"person_id": f"p{i}"})
        client.events_appended()
    await stub.changes.wait_until(lambda: len(stub.applied) == 5)
    with trio.fail_after(5):
        while await pending(vault) or client.stats.events_acked < 5:
            await trio.sleep(0.01)
    ev = stub.received[0]
    assert (ev.kind, ev.node_id, ev.data["reason"]) == ("unknown", "gate-1", "no match")
    assert [e.seq for e in stub.received] == sorted(e.seq for e in stub.received)
    assert len(stub.received) == 5 and client.stats.events_sent == 5


async def test_an_unreadable_event_is_dropped_and_the_ones_after_it_are_delivered(stub, pki, vault, nursery, caplog):
    """A damaged outbox row can never be sent: it leaves the queue (audited by seq) instead of
    failing the link every time it is read and holding back every event after it."""
    seqs = [vault.append_event("unknown", {"latency_ms": float(i), "reason": "no match"}).seq for i in range(3)]
    vault._conn.execute("UPDATE outbox SET sealed = ? WHERE seq = ?", (b"\0" * 40, seqs[1]))
    client = LinkClient(config(pki, stub.port), vault)
    with caplog.at_level(logging.WARNING, logger="palmnode.link"):
        await nursery.start(client.run)
        await stub.changes.wait_until(lambda: len(stub.applied) == 2)
        with trio.fail_after(5):
            while await pending(vault):
                await trio.sleep(0.01)
    assert [e.seq for e in stub.received] == [seqs[0], seqs[2]]
    assert client.stats.events_unreadable == 1 and client.stats.disconnects == 0
    assert "1 outbox event(s) unreadable in the vault" in caplog.text
    assert [(e["kind"], e["seq"]) for e in vault.audit_entries()] == [("outbox_event_dropped", seqs[1])]


async def test_controller_restart_resends_unacked_events(pki, vault, nursery):
    first = StubController(pki, ack=False)
    await nursery.start(first.run)
    keys = [vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x"}).key for _ in range(2)]
    client = LinkClient(config(pki, first.port), vault)
    await nursery.start(client.run)
    await first.changes.wait_until(lambda: len(first.received) == 2)
    first.stop()
    with trio.fail_after(5):
        await client.wait_connected(False)
    keys.append(vault.append_event("deleted", {"person_id": "p"}).key)  # while the controller is away
    client.events_appended()
    assert len(await pending(vault)) == 3

    second = StubController(pki, port=first.port)
    await nursery.start(second.run)
    await second.changes.wait_until(lambda: set(second.applied) == set(keys))
    with trio.fail_after(5):
        while await pending(vault):
            await trio.sleep(0.01)
    assert client.stats.connects == 2 and client.stats.disconnects == 1


async def test_missing_acks_end_the_connection_and_events_come_again(pki, vault, nursery):
    stub = StubController(pki, ack=False)
    await nursery.start(stub.run)
    key = vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x"}).key
    client = LinkClient(config(pki, stub.port, ack_timeout_s=0.2, outbox_poll_s=0.05), vault)
    await nursery.start(client.run)
    await stub.changes.wait_until(lambda: len(stub.received) >= 2)  # sent, no ack, reconnect, sent again
    assert {e.key for e in stub.received} == {key} and list(stub.applied) == [key]
    assert any("no ack from the controller within 0.2 s" in e for e in stub.errors)


async def test_foreign_certificate_refused_both_ways(pki, other_pki, stub, vault, nursery):
    # a node whose certificate another CA issued: the controller refuses it
    outsider = LinkClient(config(pki, stub.port, pki_for_node=other_pki), vault)
    await nursery.start(outsider.run)
    await stub.changes.wait_until(lambda: any("certificate verify failed" in e for e in stub.errors))
    # a node that trusts only another CA: it refuses the controller
    doubter = LinkClient(config(other_pki, stub.port, node="gate-2"), vault)
    await nursery.start(doubter.run)
    with trio.fail_after(5):
        while doubter.stats.failed_attempts < 2 or outsider.stats.failed_attempts < 2:
            await trio.sleep(0.01)
    assert "certificate verify failed" in doubter.stats.last_error
    assert not outsider.connected and not doubter.connected
    assert stub.hellos == [] and outsider.stats.connects == doubter.stats.connects == 0


@pytest.mark.parametrize("garbage, kind", [(HEADER.pack(MAX_FRAME + 1), DropReason.OVERSIZE),
                                           (HEADER.pack(2) + b"\x92\xc1", DropReason.MSGPACK)],
                         ids=["oversize", "bad msgpack"])
async def test_a_bad_peer_does_not_disturb_a_good_client(stub, pki, vault, nursery, garbage, kind):
    client = LinkClient(config(pki, stub.port), vault)
    await nursery.start(client.run)
    with trio.fail_after(5):
        await client.wait_connected()

    pair = pki.pair("gate-2")
    tcp = await trio.open_tcp_stream("127.0.0.1", stub.port)
    bad = Channel(trio.SSLStream(tcp, client_context(pair.cert, pair.key, pki.ca_cert), server_hostname="controller"))
    await bad.hello(Hello(version=PROTOCOL_VERSION, node_id="gate-2", role="node"), timeout=5)
    await bad.stream.send_all(garbage)
    with pytest.raises(LinkClosed):
        await bad.receive()
    assert stub.stats.dropped == {kind: 1}

    assert await client.request("echo", {"after": kind}) == {"after": kind}
    vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x"})
    client.events_appended()
    await stub.changes.wait_until(lambda: len(stub.applied) == 1)
    assert client.connected and client.stats.connects == 1


async def test_an_event_too_big_to_send_is_held_back_and_the_rest_go(stub, pki, vault, nursery, caplog):
    big = vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x" * 20_000}).seq
    small = vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x"}).key
    client = LinkClient(config(pki, stub.port, max_frame=10_000), vault)
    await nursery.start(client.run)
    await stub.changes.wait_until(lambda: list(stub.applied) == [small])
    with trio.fail_after(5):  # the controller's ack reaches the vault a moment after it applied
        while await pending(vault) != [big]:  # the big one is never dropped: still in the outbox
            await trio.sleep(0.01)
    assert any(r.getMessage() == "link event cannot be sent, held back" for r in caplog.records)
    assert client.connected


async def test_refused_after_hello_keeps_backing_off(stub, pki, vault, nursery, caplog):
    # the certificate says gate-1, the hello gate-2: the controller says goodbye right after the hellos
    caplog.set_level(logging.INFO, logger="palmnode.link")
    client = LinkClient(config(pki, stub.port, node_id="gate-2", backoff_initial_s=0.01, backoff_max_s=1.0), vault)
    await nursery.start(client.run)
    with trio.fail_after(5):
        while client.stats.disconnects < 4:
            await client.wait_connected(not client.connected)
    waits = [r.fields["retry_in_s"] for r in caplog.records if r.getMessage() == "link down"][:4]
    assert all(0.9 * 0.01 * 2**i - 1e-3 <= w <= 1.1 * 0.01 * 2**i + 1e-3 for i, w in enumerate(waits)), waits
    assert "does not match certificate CN gate-1" in client.stats.last_error


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mock_clock():
    # jump virtual time once every task has waited 50 ms of real time (the refused dial is instant)
    return trio.testing.MockClock(autojump_threshold=0.05)


class AttemptTimes(logging.Handler):
    """Records the trio time of each failed dial (the client logs one debug line per attempt)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "link attempt failed":
            self.times.append(trio.current_time())


async def test_backoff_grows_to_its_cap_and_logs_once(mock_clock, pki, vault, nursery, caplog):
    caplog.set_level(logging.DEBUG, logger="palmnode.link")
    attempts = AttemptTimes()
    logging.getLogger("palmnode.link").addHandler(attempts)
    try:
        client = LinkClient(config(pki, free_port(), backoff_initial_s=1.0, backoff_max_s=60.0), vault)
        await nursery.start(client.run)
        await trio.sleep(600)
    finally:
        logging.getLogger("palmnode.link").removeHandler(attempts)
    gaps = [b - a for a, b in itertools.pairwise(attempts.times)]
    # waits of 1, 2, 4, ... s capped at 60 s, each within the ±10% jitter
    for i, gap in enumerate(gaps):
        nominal = min(60.0, 2.0**i)
        assert 0.9 * nominal - 1e-6 <= gap <= 1.1 * nominal + 1e-6, (i, gap)
    assert 14 <= len(attempts.times) == client.stats.failed_attempts <= 17
    assert "Connection refused" in client.stats.last_error
    downs = [r for r in caplog.records if r.getMessage() == "link down"]
    assert len(downs) == 1  # the same failure again and again is one state change


async def test_not_connected_request_fails_at_once(pki, vault):
    client = LinkClient(config(pki, 1), vault)
    with pytest.raises(LinkUnavailable, match="not connected"):
        await client.request("sync", {})


def test_config_errors(pki, tmp_path, vault):
    with pytest.raises(LinkConfigError, match="backoff_max_s"):
        config(pki, 1, backoff_max_s=0)
    with pytest.raises(LinkConfigError, match="link.cert is not set"):
        LinkClient(config(pki, 1, cert=""), vault)
    with pytest.raises(TlsConfigError, match="not found"):
        LinkClient(config(pki, 1, ca=str(tmp_path / "none.pem")), vault)


async def test_changes_helper_times_out():
    with pytest.raises(trio.TooSlowError):
        await Changes().wait_until(lambda: False, timeout=0.01)


async def test_a_stop_while_an_ack_waits_for_a_vault_another_process_holds_is_served_within_a_step(
        pki, stub, vault):
    """The controller's ack is marked in the vault from the receive loop; with another process
    holding the vault's write lock (an sqlite3 shell) that write waited out SQLite's 5 s busy
    timeout in a worker thread trio cannot cancel, so a stop meanwhile came ~5 s late. It now
    waits in 0.1 s steps, and the event, not marked, stays to be sent again (at least once)."""
    import time

    key = vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x"}).key
    client = LinkClient(config(pki, stub.port), vault)
    with write_locked(vault.path):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await stub.changes.wait_until(lambda: key in stub.applied)
            await trio.sleep(0.3)  # its ack reaches the node, whose write meets the lock
            assert client.stats.events_acked == 0
            started = time.monotonic()
            nursery.cancel_scope.cancel()
        served = time.monotonic() - started
    assert served < 2.0, f"the stop was served {served:.2f} s late"  # a step is 0.1 s; it was ~5 s
    assert [e.key for e in vault.pending_events()] == [key]


# -- another process holding the vault's write lock past its busy timeout -----------------------------

class CountedOutbox:
    """The vault as the client's outbox, counting its outbox reads (every step of every pump
    round): how a test knows rounds have gone by, without sleeping for it."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.reads = 0

    @property
    def busy_timeout(self) -> float:
        return self.vault.busy_timeout

    def pending_events(self, **kwargs):
        self.reads += 1
        return self.vault.pending_events(**kwargs)

    def mark_delivered(self, seq: int, **kwargs) -> None:
        self.vault.mark_delivered(seq, **kwargs)


@pytest.fixture
def quick_vault(tmp_path):
    """A vault that waits 0.3 s for another process's write lock (its busy timeout), not 5 s."""
    vault = Vault.open(tmp_path / "vault.db", load_keys(tmp_path / "vault.key", create=True), node_id="gate-1",
                       busy_timeout=0.3)
    yield vault
    vault.close()


def link_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "palmnode.link" and r.levelno >= logging.WARNING]


async def test_acks_the_vault_will_not_mark_past_its_busy_timeout_are_kept_and_marked_later(
        pki, stub, quick_vault, caplog):
    """Another process holding the vault's write lock past its busy timeout (an sqlite3 shell, a
    backup) made an ack's mark raise VaultBusy, which crashed the link actor (a traceback, a
    reconnect by its supervisor). Now the acked events are kept in memory (one warning line), not
    sent again on the connection, and marked delivered once the vault is free; the connection
    stays up and the controller's requests are served meanwhile."""
    vault, outbox = quick_vault, CountedOutbox(quick_vault)
    keys = [vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x"}).key for _ in range(2)]
    client = LinkClient(config(pki, stub.port), outbox, serve)
    with caplog.at_level(logging.INFO, logger="palmnode.link"), write_locked(vault.path) as other:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)  # its outbox read is not a write: the events go
            await wait_for(lambda: client.stats.acks_deferred == 2)  # the first after 0.3 s, the second at once
            reads = outbox.reads
            await wait_for(lambda: outbox.reads >= reads + 3, timeout=10)  # rounds of the pump go by
            assert [e.key for e in stub.received] == keys  # each sent once: not again on this connection
            assert client.stats.events_acked == 0 and [e.key for e in await pending_in(vault)] == keys
            answer = await stub.request("gate-1", "node.status", {})  # the connection serves meanwhile
            assert (answer.ok, answer.result) == (True, {"node_id": "gate-1", "people": 3})
            other.execute("COMMIT")  # the other process lets go: the next round marks them
            await wait_for(lambda: client.stats.events_acked == 2, timeout=10)
            assert await pending_in(vault) == []
            assert (client.stats.connects, client.stats.disconnects, len(stub.received)) == (1, 0, 2)
            nursery.cancel_scope.cancel()
    warnings = link_warnings(caplog)
    assert [r.getMessage() for r in warnings] == [
        f"link ack not marked delivered, kept to mark later: vault {vault.path}: database is locked (nothing was "
        "written)"]
    assert warnings[0].exc_info is None
    assert "link acks marked delivered" in caplog.messages
    assert client.stats.snapshot()["acks_deferred"] == 2


async def test_an_acked_event_not_yet_marked_when_the_node_stops_is_sent_again_after_the_restart(
        pki, stub, quick_vault):
    """The acked events kept in memory live as long as the process: stopped before the vault let
    them be marked, they are still undelivered in the vault and go again after the restart,
    where the controller (by key) applies them once."""
    vault = quick_vault
    key = vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x"}).key
    with write_locked(vault.path):
        async with trio.open_nursery() as nursery:
            first = LinkClient(config(pki, stub.port), vault)
            await nursery.start(first.run)
            await wait_for(lambda: first.stats.acks_deferred == 1)
            nursery.cancel_scope.cancel()  # the node stops
    assert [e.key for e in await pending_in(vault)] == [key]
    async with trio.open_nursery() as nursery:
        again = LinkClient(config(pki, stub.port), vault)  # the restart
        await nursery.start(again.run)
        await wait_for(lambda: again.stats.events_acked == 1)
        nursery.cancel_scope.cancel()
    assert [e.key for e in stub.received] == [key, key] and list(stub.applied) == [key]
    assert await pending_in(vault) == []


async def test_an_outbox_read_the_vault_refuses_past_its_busy_timeout_is_tried_again_on_the_connection(
        pki, stub, quick_vault, caplog):
    """The pump's outbox read writes when it drops an unreadable event; with another process
    holding the vault past its busy timeout that VaultBusy crashed the link actor (a traceback, a
    reconnect). Now it is one warning line for the whole while, the read is tried again each poll,
    requests are served meanwhile, and once the vault is free the events go on the same connection."""
    vault, outbox = quick_vault, CountedOutbox(quick_vault)
    seqs = [vault.append_event("unknown", {"latency_ms": float(i), "reason": "no match"}).seq for i in range(3)]
    vault._conn.execute("UPDATE outbox SET sealed = ? WHERE seq = ?", (b"\0" * 40, seqs[1]))
    client = LinkClient(config(pki, stub.port), outbox, serve)
    with caplog.at_level(logging.INFO, logger="palmnode.link"), write_locked(vault.path) as other:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await client.wait_connected()
            await wait_for(lambda: outbox.reads >= 15, timeout=10)  # a round is 3 to 4 reads: rounds go by
            assert stub.received == [] and client.stats.events_unreadable == 0
            assert await client.request("echo", {"n": 1}) == {"n": 1}
            answer = await stub.request("gate-1", "node.status", {})
            assert answer.ok
            other.execute("COMMIT")
            await stub.changes.wait_until(lambda: len(stub.applied) == 2, timeout=10)
            await wait_for(lambda: client.stats.events_acked == 2)
            assert [e.seq for e in stub.received] == [seqs[0], seqs[2]] and client.stats.events_unreadable == 1
            assert (client.stats.connects, client.stats.disconnects) == (1, 0)
            nursery.cancel_scope.cancel()
    warnings = link_warnings(caplog)
    assert [r.getMessage() for r in warnings] == [
        f"link outbox not read, again every 0.2 s meanwhile: vault {vault.path}: database is locked (nothing was "
        "written)", "1 outbox event(s) unreadable in the vault (a sealed payload fails to open): dropped, not sent; "
        "the vault's audit log has their seq"]
    assert warnings[0].exc_info is None and "link outbox read again" in caplog.messages


async def test_the_controllers_answers_are_read_while_an_ack_waits_for_a_vault_another_process_holds(
        pki, stub, tmp_path):
    """An ack was marked delivered by the receive loop itself, so while another process held the
    vault it read nothing else for up to the busy timeout (5 s by default): the answer to a
    request of the node's (a charge's, whose timeout is 3 s) waited behind it. The pump marks acks
    now; the receive loop never waits for the vault."""
    vault = Vault.open(tmp_path / "vault.db", load_keys(tmp_path / "vault.key", create=True), node_id="gate-1",
                       busy_timeout=30.0)
    try:
        key = vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x"}).key
        client = LinkClient(config(pki, stub.port), vault, serve)
        with write_locked(vault.path) as other:
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                await stub.changes.wait_until(lambda: key in stub.applied, timeout=10)  # acked, now marking
                with trio.fail_after(5):    # it waited for the vault's 30 s before
                    assert await client.request("echo", {"n": 1}) == {"n": 1}
                assert client.stats.events_acked == 0 and [e.key for e in await pending_in(vault)] == [key]
                other.execute("COMMIT")
                await wait_for(lambda: client.stats.events_acked == 1, timeout=10)
                nursery.cancel_scope.cancel()
        assert await pending_in(vault) == [] and list(stub.applied) == [key]
    finally:
        vault.close()


# -- a vault error that may pass (a full disk), and one that will not (a damaged file) --------------

class FailingOutbox(CountedOutbox):
    """The vault as the outbox, its marks (``mark_error``) and reads (``read_error``: its drop of
    an unreadable event is a write) failing while set, as SQLite's writes do with the disk full
    (no test can fill a disk; the vault turns SQLite's error into this one line)."""

    def __init__(self, vault: Vault, *, mark_error: VaultError | None = None,
                 read_error: VaultError | None = None) -> None:
        super().__init__(vault)
        self.mark_error, self.read_error = mark_error, read_error

    def pending_events(self, **kwargs):
        if self.read_error is not None:
            self.reads += 1
            raise self.read_error
        return super().pending_events(**kwargs)

    def mark_delivered(self, seq: int, **kwargs) -> None:
        if self.mark_error is not None:
            raise self.mark_error
        super().mark_delivered(seq, **kwargs)


def disk_full(vault: Vault) -> VaultError:
    return VaultError(f"vault {vault.path}: database or disk is full (nothing was written)")


async def test_a_full_disk_puts_acks_and_reads_off_like_a_held_vault_and_the_connection_stays(pki, stub, vault, caplog):
    """A vault error that may pass other than another process's lock (a full disk, an I/O error)
    crashed the link actor: a traceback and a reconnect by its supervisor, again on every ack
    while it lasted. Now it is what a held vault is: the acked event kept in memory, the outbox
    read again each poll, one warning line each, requests served meanwhile."""
    key = vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x"}).key
    full = disk_full(vault)
    outbox = FailingOutbox(vault, mark_error=full)  # full before the ack is marked
    client = LinkClient(config(pki, stub.port), outbox, serve)
    with caplog.at_level(logging.INFO, logger="palmnode.link"):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await wait_for(lambda: client.stats.acks_deferred == 1, timeout=10)
            outbox.read_error = full  # and the outbox read too
            reads = outbox.reads
            await wait_for(lambda: outbox.reads >= reads + 3, timeout=10)  # rounds of the pump go by
            later = vault.append_event("unknown", {"latency_ms": 2.0, "reason": "y"}).key
            assert await client.request("echo", {"n": 1}) == {"n": 1}
            assert (await stub.request("gate-1", "node.status", {})).ok
            assert [e.key for e in stub.received] == [key] and client.stats.events_acked == 0
            outbox.mark_error = outbox.read_error = None  # space again
            await wait_for(lambda: client.stats.events_acked == 2, timeout=10)
            assert [e.key for e in stub.received] == [key, later] and await pending_in(vault) == []
            assert (client.stats.connects, client.stats.disconnects) == (1, 0)
            nursery.cancel_scope.cancel()
    warnings = link_warnings(caplog)
    error = f"vault {vault.path}: database or disk is full (nothing was written)"
    assert [r.getMessage() for r in warnings] == [
        f"link ack not marked delivered, kept to mark later: {error}",
        f"link outbox not read, again every 0.2 s meanwhile: {error}"]
    assert all(r.exc_info is None for r in warnings)


async def test_a_damaged_vault_under_the_outbox_ends_the_link_for_its_supervisor(pki, stub, vault):
    """A lasting vault error (corrupt pages: an operator must restore the file) is not put off:
    the link ends with it, for its supervisor to restart and report."""
    vault.append_event("unknown", {"latency_ms": 1.0, "reason": "x"})
    damaged = VaultError(f"vault {vault.path}: database disk image is malformed", reason="damaged")
    client = LinkClient(config(pki, stub.port), FailingOutbox(vault, read_error=damaged), serve)
    with pytest.RaisesGroup(pytest.RaisesExc(VaultError, match="malformed", check=lambda e: e.lasting),
                            flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
    assert stub.received == []
