"""sd_notify over a real AF_UNIX datagram socket; the watchdog feeds only while healthy (MockClock)."""
from __future__ import annotations

import os
import socket
import tempfile

import pytest
import trio

from palmnode.actors import ChildSpec, Supervisor, SupervisorEscalation
from palmnode.systemd import Notifier, notify_stopping, serve_systemd, tree_healthy, watchdog_interval


@pytest.fixture
async def listener():
    """A bound datagram socket at a short path (sun_path is 108 bytes) → (its path, socket)."""
    folder = tempfile.mkdtemp(prefix="sd-", dir="/tmp")
    path = os.path.join(folder, "notify")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(path)
    yield path, sock
    sock.close()
    os.unlink(path)
    os.rmdir(folder)


def parse(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().split("\n"))


async def receive(sock, timeout: float = 5) -> dict[str, str]:
    with trio.fail_after(timeout):
        return parse(await sock.recv(4096))


async def test_notify_to_a_path(listener):
    path, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("serving 3 devices\nok")
    assert await receive(sock) == {"READY": "1", "STATUS": "serving 3 devices ok"}
    assert notifier.watchdog() and await receive(sock) == {"WATCHDOG": "1"}
    assert notifier.stopping() and await receive(sock) == {"STOPPING": "1"}
    assert notifier.sent == 3
    notifier.close()


async def test_notify_to_an_abstract_address():
    name = f"palmnode-test-{os.getpid()}-{id(object())}"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.bind("\0" + name)
        notifier = Notifier(f"@{name}")
        assert notifier.status("hello")
        assert await receive(sock) == {"STATUS": "hello"}
        notifier.close()


def test_no_notify_socket_is_a_no_op():
    notifier = Notifier.from_env({})
    assert not notifier.enabled and not notifier.ready() and not notifier.watchdog()
    assert not Notifier("vsock:2:1234").enabled  # unsupported transport: off, with one warning


def test_vanished_socket_is_counted_not_raised(tmp_path):
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.watchdog() is False and notifier.watchdog() is False
    assert notifier.failures == 2


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_our_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


async def test_watchdog_pings_only_while_healthy(listener, autojump_clock):
    path, sock = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}  # WatchdogSec=10 → ping every 5 s
    healthy = True
    received: list[tuple[float, dict[str, str]]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_systemd(lambda: healthy, env=env, task_status=task_status))
        start = trio.current_time()

        async def collect():
            while True:
                message = parse(await sock.recv(4096))  # no timeout: virtual gaps of 20 s
                received.append((trio.current_time() - start, message))

        nursery.start_soon(collect)
        await trio.sleep(22.5)  # pings at 5, 10, 15, 20
        healthy = False
        await trio.sleep(20)  # 25..40: none
        healthy = True
        await trio.sleep(12)  # 45, 50
        nursery.cancel_scope.cancel()
    assert received[0] == (0, {"READY": "1", "STATUS": "serving"})
    pings = [round(at) for at, message in received if message.get("WATCHDOG") == "1"]
    assert pings == [5, 10, 15, 20, 45, 50]
    statuses = [(round(at), m["STATUS"]) for at, m in received[1:] if "STATUS" in m]
    assert statuses == [(23, "unhealthy (supervision tree not running): serving"), (43, "serving")]  # within 1 s
    # cancelled (e.g. restarted with a supervisor sibling) it says nothing: no STOPPING=1
    assert notify_stopping(env=env)
    assert await receive(sock) == {"STOPPING": "1", "STATUS": "stopping"}
    assert not notify_stopping(env={})


@pytest.mark.parametrize("env", [{}, {"WATCHDOG_USEC": "30000000"}])  # without a watchdog; WatchdogSec=30s
async def test_status_text_follows_the_callable_within_a_second(listener, autojump_clock, env):
    """`systemctl status` shows the gate's state as it changes, not up to a watchdog period
    (15 s under the unit) or 10 s late."""
    path, sock = listener
    text = "gate starting"
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_systemd(
            lambda: True, status=lambda: text, env={"NOTIFY_SOCKET": path, **env}, task_status=task_status))
        start = trio.current_time()
        assert await receive(sock) == {"READY": "1", "STATUS": "gate starting"}
        await trio.sleep(2.5)
        text = "gate ready, 3 palms"
        assert await receive(sock, 1.0) == {"STATUS": "gate ready, 3 palms"}
        await trio.sleep(4.5)
        text = "gate degraded, 3 palms"  # at 7.5 s
        message = await receive(sock, 30)  # an unchanged text is not resent: nothing in between
        assert message == {"STATUS": "gate degraded, 3 palms"} and trio.current_time() - start <= 8.5
        nursery.cancel_scope.cancel()


async def test_serve_systemd_without_notify_socket_just_waits(autojump_clock):
    with trio.move_on_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_systemd(lambda: True, env={}, task_status=task_status))
    assert trio.current_time() >= 100


async def test_tree_health_follows_the_supervisor(autojump_clock):

    async def forever(ctx):
        await trio.sleep_forever()

    async def crash(ctx):
        await trio.sleep(1)
        raise RuntimeError("broken device")

    degraded = Supervisor("optional", [ChildSpec("flaky", crash)], intensity=1, period=100)
    async with trio.open_nursery() as nursery:
        root = Supervisor("node", [ChildSpec("worker", forever),
                                   degraded.as_child(id="optional", restart="temporary")])
        assert not tree_healthy(None) and not tree_healthy(root.tree())  # not started
        await nursery.start(root.run)
        assert tree_healthy(root.tree())
        while root.tree().children[1].subtree.state.value != "escalated":
            await trio.sleep(1)
        assert tree_healthy(root.tree())  # a temporary part gave up: degraded, still healthy
        await root.stop()
    assert not tree_healthy(root.tree())

    nested = Supervisor("devices", [ChildSpec("flaky", crash)], intensity=0, period=100)
    top = Supervisor("node", [nested.as_child(id="devices")], intensity=0, period=100)
    with pytest.raises(SupervisorEscalation):
        await top.run()
    assert not tree_healthy(top.tree())
