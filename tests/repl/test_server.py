"""The REPL over a real unix socket against a real node on the virtual gate."""
from __future__ import annotations

import base64
import contextlib
import functools
import logging
import os
import stat

import cv2
import numpy as np
import pytest
import trio

import palmnode
from drivers.card_reader.cardtoken import CardToken
from drivers.card_reader.reads import BadgeRead, PaymentCardRead
from palmnode.actors import Backoff, ChildSpec, GateState, Supervisor
from palmnode.biometrics.gallery import Gallery
from palmnode.gate.events import Decision, PersonEnrolled
from palmnode.repl import ReplSocketError, serve_repl
from palmnode.repl.protocol import MAX_LINE
from palmnode.repl.server import IDLE_TIMEOUT_S, MAX_SESSIONS, SESSIONS_LIMIT
from tests.conftest import wait_for
from tests.repl.conftest import BareTarget, Client, OtherTree


async def ready(node):
    await wait_for(lambda: node.health is not None and node.health.gate is GateState.READY, timeout=5)


# -- the socket

async def test_socket_is_0600_and_greets(repl_path, connect, node):
    mode = os.stat(repl_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    client = await connect()
    assert client.hello["protocol"] == "palmnode-repl/1" and client.hello["node_id"] == "demo-gate"
    assert client.hello["version"] == palmnode.__version__
    assert {"health", "tree", "follow", "stats", "gallery", "capture", "light", "config", "py",
            "help"} <= set(client.hello["commands"])
    assert "decision" in client.hello["follow"] and client.hello["lights"] == ["ir", "surface"]
    await client.aclose()


async def test_second_node_is_refused_stale_socket_replaced_and_socket_removed(target, short_dir):
    path = os.path.join(short_dir, "repl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_repl, target, path)
        first_inode = os.stat(path).st_ino
        with pytest.raises(ReplSocketError, match="another node serves the REPL at"):
            await serve_repl(target, path)
        assert os.stat(path).st_ino == first_inode  # untouched
        nursery.cancel_scope.cancel()
    assert not os.path.exists(path)  # removed on the way out

    import socket as socket_module  # a socket left behind by a node that died
    stale = socket_module.socket(socket_module.AF_UNIX)
    stale.bind(path)
    stale.close()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_repl, target, path)
        stream = await trio.open_unix_socket(path)
        client = Client(stream)
        assert "hello" in await client.line()
        await client.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["a regular file", "a folder", "a symbolic link", "a FIFO"])
async def test_refuses_to_replace_a_file_that_is_not_a_socket(target, short_dir, kind):
    """Something that is not a socket at the path is never removed; the error names it and what it
    is, and is the config's to fix (``config``: `palmnode run` exits 78, a restart would meet it)."""
    path = os.path.join(short_dir, "repl.sock")
    if kind == "a regular file":
        with open(path, "w") as f:
            f.write("precious")
    elif kind == "a folder":
        os.mkdir(path)
        with open(os.path.join(path, "inside"), "w") as f:
            f.write("precious")
    elif kind == "a symbolic link":
        os.symlink(os.path.join(short_dir, "elsewhere"), path)
    else:
        os.mkfifo(path)
    before = os.lstat(path)
    with pytest.raises(ReplSocketError) as info:
        await serve_repl(target, path)
    assert str(info.value) == (f"REPL socket path {path} is {kind}, not a socket: move it away or choose another "
                               "[repl] socket_path")
    assert info.value.config
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    if kind == "a regular file":
        with open(path) as f:
            assert f.read() == "precious"
    if kind == "a folder":
        assert os.listdir(path) == ["inside"]


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o703])
async def test_refuses_a_socket_folder_others_may_write(target, short_dir, mode):
    """The node served in a world-writable folder (a socket_path under /tmp): another user could
    plant the lock or a socket of their own before it started, or rename its socket away and put
    theirs in its place for the operator's `palmnode repl` to talk to. Refused now, before anything
    is created there."""
    os.chmod(short_dir, mode)
    async with trio.open_nursery() as nursery:  # a node that served would be cancelled, not hang the test
        with pytest.raises(ReplSocketError) as info:
            await nursery.start(serve_repl, target, os.path.join(short_dir, "repl.sock"))
    assert str(info.value) == (f"REPL socket folder {short_dir} is writable by others (mode {mode:04o}): choose a "
                               "[repl] socket_path in a folder only the node's user can write (e.g. /run/palmnode)")
    assert info.value.config
    assert os.listdir(short_dir) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
async def test_refuses_a_socket_folder_another_user_owns(target, short_dir):
    os.chmod(short_dir, 0o755)
    os.chown(short_dir, 65534, 65534)
    async with trio.open_nursery() as nursery:
        with pytest.raises(ReplSocketError) as info:
            await nursery.start(serve_repl, target, os.path.join(short_dir, "repl.sock"))
    assert str(info.value) == (f"REPL socket folder {short_dir} belongs to uid 65534, not to the node's user (uid 0) "
                               "nor root: choose a [repl] socket_path in a folder only the node's user can write "
                               "(e.g. /run/palmnode)")
    assert info.value.config
    assert os.listdir(short_dir) == []
    os.chown(short_dir, 0, 0)  # a root-owned 0755 folder is fine
    path = os.path.join(short_dir, "repl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_repl, target, path)
        stream = await trio.open_unix_socket(path)
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_socket_path_error_says_whether_a_restart_could_cure_it(target, short_dir):
    with pytest.raises(ReplSocketError, match="longer than 107 bytes") as info:
        await serve_repl(target, os.path.join(short_dir, "x" * 120))
    assert info.value.config
    with open(os.path.join(short_dir, "file"), "w"):
        pass
    with pytest.raises(ReplSocketError) as info:
        await serve_repl(target, os.path.join(short_dir, "file", "repl.sock"))
    assert str(info.value) == f"cannot create the REPL socket folder {short_dir}/file: a file is in the way"
    assert info.value.config
    path = os.path.join(short_dir, "repl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_repl, target, path)
        with pytest.raises(ReplSocketError, match="another node serves the REPL at") as info:
            await serve_repl(target, path)
        assert not info.value.config  # the other node may be stopping: a restart may find it free
        nursery.cancel_scope.cancel()


# -- commands

async def test_health_tree_config(node, connect):
    await ready(node)
    client = await connect()
    _, health = await client.call("health")
    assert health["ok"] and health["result"]["gate"] == "ready"
    devices = {d["name"]: d for d in health["result"]["devices"]}
    assert set(devices) == {"proximity", "card_reader", "illuminator", "camera"}
    assert all(d["state"] == "ready" and d["restarts"] == 0 for d in devices.values())
    assert health["text"].startswith("gate READY")

    _, tree = await client.call("tree")
    root = tree["result"]
    assert root["name"] == "node" and root["state"] == "running" and root["strategy"] == "rest_for_one"
    devices_sup = next(c for c in root["children"] if c["id"] == "devices")["subtree"]
    assert {c["id"]: c["restarts"] for c in devices_sup["children"]} == {
        "illuminator": 0, "proximity": 0, "camera": 0, "card_reader": 0}
    assert "└─ card_reader (permanent) running" in tree["text"]

    _, config = await client.call("config")
    key_file = node.config.card_reader.token_key_file
    assert config["result"]["card_reader"]["token_key_file"] == key_file
    with open(key_file, "rb") as f:
        key = f.read().strip()
    assert key.decode(errors="replace") not in config["text"] and key.hex() not in config["text"]
    assert f'token_key_file = "{key_file}"' in config["text"]
    await client.aclose()


async def test_health_counts_device_restarts_after_an_unplug(node, gate, connect):
    await ready(node)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.devices["proximity"].unplug, 0.3)
        await wait_for(lambda: node.health.device("proximity").state.value == "lost", timeout=3)
    await ready(node)
    client = await connect()
    _, health = await client.call("health")
    assert {d["name"]: d["restarts"] for d in health["result"]["devices"]}["proximity"] >= 1


async def test_tree_shows_child_restarts_and_errors(node, target, short_dir):
    crashes = 0

    async def flaky(ctx):
        nonlocal crashes
        if crashes < 2:
            crashes += 1
            raise RuntimeError("flaky part broke")
        await trio.sleep_forever()

    inner = Supervisor("parts", [ChildSpec("flaky", flaky)], intensity=5, period=60,
                       backoff=Backoff(initial=0.001, maximum=0.001))
    other = OtherTree(node, Supervisor("node", [inner.as_child(id="parts")]))
    path = os.path.join(short_dir, "t.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(other.supervisor.run)
        await nursery.start(serve_repl, other, path)
        await wait_for(lambda: inner.tree().children[0].restarts == 2 and
                       inner.tree().children[0].state.value == "running", timeout=3)
        client = Client(await trio.open_unix_socket(path))
        await client.line()
        _, tree = await client.call("tree")
        flaky_child = tree["result"]["children"][0]["subtree"]["children"][0]
        assert flaky_child["restarts"] == 2 and flaky_child["last_error"] == "RuntimeError: flaky part broke"
        assert "   └─ flaky (permanent) running" in tree["text"]
        assert "restarts 2  last error: RuntimeError: flaky part broke" in tree["text"]
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_stats_from_metrics_and_gallery(node, connect, target):
    m = target.metrics
    for v in (100, 120, 140, 160, 290):
        m.observe("palmnode_identify_latency_ms", v, outcome="identified")
    m.observe("palmnode_identify_latency_ms", 80, outcome="unknown")
    m.inc("palmnode_decisions_total", 5, outcome="identified")
    m.inc("palmnode_decisions_total", outcome="unknown")
    m.inc("palmnode_decisions_unrecorded_total", 2, reason="vault")
    m.inc("palmnode_enrolments_total", 2, result="ok")
    m.inc("palmnode_deletions_total")
    client = await connect()
    _, stats = await client.call("stats")
    result = stats["result"]
    assert result["latency_ms"]["identified"] == {"count": 5, "p50": 140.0, "p95": pytest.approx(264.0),
                                                   "p99": pytest.approx(284.8)}
    assert result["latency_ms"]["all"]["count"] == 6
    assert result["decisions"] == {"identified": 5, "unknown": 1}
    assert result["enrolments"] == {"ok": 2} and result["deletions"] == 1
    assert "identified  5" in stats["text"] and "decisions: identified 5, unknown 1" in stats["text"]
    assert result["decisions_unrecorded"] == {"vault": 2} and "decisions not recorded: vault 2" in stats["text"]

    if target.gallery is None:  # a node without a vault has none
        _, gallery = await client.call("gallery")
        assert gallery == {"ok": False, "error": "no gallery is loaded on this node yet"}
        target.gallery = Gallery()
    _, gallery = await client.call("gallery")
    assert gallery["ok"] and gallery["result"]["palms"] == 0
    assert gallery["result"]["memory_bytes"] == target.gallery.memory_bytes()


async def test_follow_streams_events_without_secrets_until_interrupted(node, connect):
    # every device open first: a device turning ready mid-follow is an event of its own
    await wait_for(lambda: node.health is not None and node.health.gate is GateState.READY, timeout=5)
    client = await connect()
    await client.send("follow")
    first = await client.line()
    assert first["text"].startswith("following ")
    token = CardToken(digest=b"\x01" * 32, last4="4444")
    node.bus.publish(PaymentCardRead(token=token, last4="4444", expiry="2907", scheme="mastercard"))
    node.bus.publish(Decision("identified", "p-17", "right", 0.91, None, 120.5, "entry", 3.0))
    card = await client.line()
    decision = await client.line()
    assert card == {"event": {"type": "PaymentCardRead", "last4": "4444", "scheme": "mastercard"}}
    assert decision["event"] == {"type": "Decision", "outcome": "identified", "person_id": "p-17",
                                 "palm": "right", "score": 0.91, "reason": None, "latency_ms": 120.5,
                                 "mode": "entry", "at": 3.0}
    await client.send("interrupt")
    _, final = await client.until_final()
    assert final == {"ok": True, "result": {"interrupted": True}, "text": "interrupted"}
    _, health = await client.call("health")  # the session goes on
    assert health["ok"]


async def test_follow_selected_types_and_unknown_type(node, connect):
    client = await connect()
    _, bad = await client.call("follow", "decision", "nonsense")
    assert bad["ok"] is False and bad["error"].startswith("no event type 'nonsense': use devices, cards")
    await client.send("follow", "gate")
    assert "PersonEnrolled" in (await client.line())["text"]
    node.bus.publish(BadgeRead(uid_hex="04A1B2C3"))  # not followed
    node.bus.publish(PersonEnrolled("p-1", ("left", "right"), 5.0))
    assert (await client.line())["event"] == {"type": "PersonEnrolled", "person_id": "p-1",
                                              "palms": ["left", "right"], "at": 5.0}
    await client.send("interrupt")
    streamed, final = await client.until_final()
    assert streamed == [] and final["result"] == {"interrupted": True}


@pytest.mark.parametrize("publish", [True, False], ids=["event-after", "silent"])
async def test_client_dropping_mid_follow_leaves_the_node_serving(node, connect, publish):
    baseline = node.bus.statistics().subscribers
    client = await connect()
    await client.send("follow")
    await client.line()
    assert node.bus.statistics().subscribers == baseline + 1
    await client.stream.aclose()  # gone without a word
    if publish:
        node.bus.publish(BadgeRead(uid_hex="01"))  # the next event finds nobody
    await wait_for(lambda: node.bus.statistics().subscribers == baseline, timeout=3)
    other = await connect()
    _, health = await other.call("health")
    assert health["ok"]


async def test_light_sets_the_board_and_rejects_bad_arguments(node, gate, connect):
    await ready(node)
    client = await connect()
    _, reply = await client.call("light", "ir", "0.5")
    assert reply == {"ok": True, "result": {"channel": "ir", "level": 0.5}, "text": "ir light at 0.5"}
    await wait_for(lambda: abs(gate.lighting().ir - 0.5) < 0.01, timeout=2)
    _, reply = await client.call("light", "ir", "off")
    await wait_for(lambda: gate.lighting().ir == 0, timeout=2)
    for args, error in [
        (("uv", "1"), "no light channel 'uv': use one of ir, surface"),
        (("ir", "bright"), "level must be a number 0..1 (or on/off), not 'bright'"),
        (("ir", "1.5"), "level must be within 0..1, not 1.5"),
        (("ir",), "usage: light CHANNEL LEVEL"),
    ]:
        _, reply = await client.call("light", *args)
        assert reply == {"ok": False, "error": error}


async def test_capture_returns_one_roi_png_and_writes_nothing(node, gate, connect, short_dir, tmp_path):
    await ready(node)
    before = _pngs(short_dir, tmp_path, os.getcwd())
    client = await connect()
    _, nothing = await client.call("capture")
    assert nothing["ok"] is False and nothing["error"].startswith("no palm in view (no_hand")
    gate.hand.present(3)
    gate.hand.distance_mm = 150.0
    _, reply = await client.call("capture", "somewhere.png", timeout=10)
    assert reply["ok"], reply
    png = base64.b64decode(reply["result"]["png_base64"])
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.ndim == 2 and image.shape == (reply["result"]["height"], reply["result"]["width"])
    assert image.shape[1] == 2 * image.shape[0]  # NIR | surface, square ROIs
    nir, surface = image[:, :image.shape[0]], image[:, image.shape[0]:]
    assert nir.mean() > 40 and surface.mean() > 40  # both lit, both a palm
    # lights off after: the board applies the node's last write when its bytes arrive (Firmata
    # writes are not acknowledged), which may be just after the reply
    await wait_for(lambda: gate.lighting().ir == 0 and gate.lighting().surface == 0, timeout=2.0)
    assert _pngs(short_dir, tmp_path, os.getcwd()) == before  # the node wrote no image


def _pngs(*folders):
    """PNG files in the test's folders (recursively) and in the current folder (top level: other
    people's work may change the rest of a shared checkout meanwhile)."""
    *private, cwd = folders
    found = {os.path.join(root, name) for folder in private for root, _, names in os.walk(folder)
             for name in names if name.endswith(".png")}
    return found | {os.path.join(cwd, name) for name in os.listdir(cwd) if name.endswith(".png")}


async def test_bad_requests_get_one_error_line_each_and_the_session_continues(node, connect):
    client = await connect()
    for line, error in [
        (b"health\n", "request is not JSON"),
        (b'{"cmd": "bogus"}\n', "unknown command 'bogus': type help for the list"),
        (b'{"cmd": "health", "args": ["x"]}\n', "usage: health"),
        (b'{"cmd": "help", "args": ["nothing"]}\n', "no command 'nothing': type help for the list"),
        (b'[1, 2]\n', "a request is a JSON object"),
        (b"\xff\xfe\n", "request is not UTF-8"),
        (b"x" * (MAX_LINE + 10) + b"\n", f"request line too long ({MAX_LINE + 10} bytes"),
        (b'{"cmd": "health", "x": ' + b"1" * 5000 + b"}\n", "request is not usable JSON"),
        (b"[" * 30000 + b"]" * 30000 + b"\n", "request is nested too deeply"),
    ]:
        await client.stream.send_all(line)
        reply = await client.line()
        assert reply["ok"] is False and reply["error"].startswith(error), (line[:20], reply)
    await client.stream.send_all(b"\n\n")  # blank lines are nothing
    _, reply = await client.call("help", "stats")
    assert reply["ok"] and reply["text"].startswith("stats\n")


async def test_an_error_reading_one_session_ends_that_session_only(node, connect, monkeypatch, caplog):
    from palmnode.repl import protocol

    other = await connect()
    broken = await connect()
    real = protocol.parse_request
    monkeypatch.setattr(protocol, "parse_request",
                        lambda line: (_ for _ in ()).throw(RuntimeError("bug")) if b"boom" in line else real(line))
    await broken.stream.send_all(b'{"cmd": "boom"}\n')
    assert await broken.stream.receive_some(100) == b""              # that session ends
    _, reply = await other.call("health")                             # the other one goes on
    assert reply["ok"]
    assert "REPL session ended by an error" in caplog.text
    third = await connect()                                            # and the REPL takes new ones
    _, reply = await third.call("health")
    assert reply["ok"]


async def test_many_clients_at_once_and_one_too_many(node, connect, repl_path):
    await ready(node)
    clients = [await connect() for _ in range(MAX_SESSIONS)]
    results = []

    async def ask(client):
        _, reply = await client.call("health")
        results.append(reply["result"]["gate"])

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(ask, client)
    assert results == ["ready"] * MAX_SESSIONS
    extra = Client(await trio.open_unix_socket(str(repl_path)))
    assert (await extra.line())["error"].startswith(f"too many REPL sessions ({MAX_SESSIONS})")
    await clients[0].aclose()
    with trio.fail_after(3):  # the freed slot serves a newcomer
        while True:
            newcomer = Client(await trio.open_unix_socket(str(repl_path)))
            first = await newcomer.line()
            if "hello" in first:
                break
            await newcomer.aclose()
            await trio.sleep(0.01)
    _, reply = await newcomer.call("help")
    assert reply["ok"]


async def test_python_console(node, connect):
    client = await connect()
    _, banner = await client.call("py")
    assert banner["ok"] and "Top-level await works" in banner["text"]
    _, reply = await client.call("py", "x = node.config.node.node_id")
    assert reply == {"ok": True, "result": {"more": False, "exit": False}, "text": ""}
    _, reply = await client.call("py", "x")
    assert reply["text"] == "'demo-gate'\n"
    _, reply = await client.call("py", "await trio.sleep(0); print('slept', len(node.health.snapshot()))")
    assert reply["text"] == "slept 4\n"
    _, reply = await client.call("py", "for i in range(2):")
    assert reply["result"]["more"] is True
    _, reply = await client.call("py", "for i in range(2):\n    print(i)\n")
    assert reply["text"] == "0\n1\n"
    _, reply = await client.call("py", "1/0")
    assert reply["ok"] and reply["text"].splitlines()[-1] == "ZeroDivisionError: division by zero"
    _, reply = await client.call("py", "def f(:")
    assert reply["ok"] and "SyntaxError" in reply["text"]
    await client.send("py", "await trio.sleep(1000)")
    await trio.testing.wait_all_tasks_blocked()
    await client.send("interrupt")
    _, reply = await client.until_final()
    assert reply["result"] == {"interrupted": True}
    _, reply = await client.call("py", "exit()")
    assert reply["result"]["exit"] is True
    _, reply = await client.call("py", "x")  # the namespace lives as long as the session
    assert reply["text"] == "'demo-gate'\n"


async def test_python_console_is_off_unless_enabled(target, short_dir):
    path = os.path.join(short_dir, "off.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_repl, target, path)
        client = Client(await trio.open_unix_socket(path))
        hello = (await client.line())["hello"]
        assert "py" not in hello["commands"] and hello["python_console"] is False
        _, reply = await client.call("py", "1+1")
        assert reply == {"ok": False, "error": "the Python console is off: set [repl] python_console = "
                                                "true in the node's config and restart the node"}
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_is_dropped(short_dir, autojump_clock):
    target = BareTarget()
    path = os.path.join(short_dir, "stuck.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_repl, target, path)
        client = Client(await trio.open_unix_socket(path))
        await client.line()
        _, reply = await client.call("health")
        assert reply == {"ok": False, "error": "the node is still starting: no health yet"}
        await client.send("follow")
        assert "following" in (await client.line())["text"]
        started = trio.current_time()
        while target.bus.statistics().subscribers:  # the client reads nothing more
            for _ in range(200):
                target.bus.publish(BadgeRead(uid_hex="AB" * 100))
            await trio.sleep(0.1)
            assert trio.current_time() - started < 60
        assert target.bus.statistics().dropped > 0  # the follower's buffer stayed bounded
        with trio.fail_after(60):  # what was sent is still readable, then the end
            while await client.stream.receive_some(1 << 20):
                pass
        other = Client(await trio.open_unix_socket(path))
        assert "hello" in await other.line()
        nursery.cancel_scope.cancel()


class _WaitingEnrol:
    """An enrolment flow that waits for a person forever (until cancelled)."""

    class Request:
        def __init__(self):
            self.done = trio.Event()

        async def wait(self):
            await self.done.wait()

    def __init__(self):
        self.cancelled = False

    def begin(self, phone, palms):
        return self.Request()

    def cancel(self):
        self.cancelled = True
        return True


@contextlib.asynccontextmanager
async def _enrolling(short_dir):
    """A REPL serving a gate whose enrolment waits for a person, and a client that began one."""
    target = BareTarget()
    target.people, target.enrol = object(), _WaitingEnrol()
    path = os.path.join(short_dir, "enrol.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_repl, target, path)
        client = Client(await trio.open_unix_socket(path))
        await client.line()
        await client.send("enrol", "+4930555000001")
        await wait_for(lambda: target.bus.statistics().subscribers == 1, timeout=5)
        yield target, client, nursery


async def test_a_client_gone_mid_enrol_ends_it_at_once(short_dir, caplog):
    """The operator's terminal is gone while the enrolment waits for a card: nobody can cancel it
    any more, so it ends (it went on up to its card timeout, and the next card tapped joined it)."""
    from palmnode.gate.events import EnrolProgress

    async with _enrolling(short_dir) as (target, client, nursery):
        target.bus.publish(EnrolProgress("card", "tap a card", 0.0))
        assert (await client.line())["text"] == "card: tap a card"
        await client.stream.aclose()
        await wait_for(lambda: target.enrol.cancelled, timeout=5)
        await wait_for(lambda: target.bus.statistics().subscribers == 0, timeout=5)
        assert "REPL command enrol failed" not in caplog.text
        nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_mid_enrol_is_dropped_without_an_error(short_dir, autojump_clock,
                                                                                 caplog):
    """Its progress lines stop going out (the send times out inside the enrol command's own
    nursery): the session ends and the enrolment is cancelled, as for a client gone elsewhere
    (it was logged as 'REPL command enrol failed' with a traceback)."""
    from palmnode.gate.events import EnrolProgress

    async with _enrolling(short_dir) as (target, client, nursery):
        started = trio.current_time()
        while not target.enrol.cancelled:  # the client reads nothing more
            for _ in range(60):
                target.bus.publish(EnrolProgress("palm", "x" * 4000, 0.0))
            await trio.sleep(0.1)
            assert trio.current_time() - started < 60
        await wait_for(lambda: target.bus.statistics().subscribers == 0, timeout=5)
        assert "REPL command enrol failed" not in caplog.text
        nursery.cancel_scope.cancel()


# -- idle sessions

@contextlib.asynccontextmanager
async def _bare_repl(short_dir, **options):
    """A REPL on a BareTarget (for MockClock tests), and a function connecting a client."""
    target = BareTarget()
    path = os.path.join(short_dir, "idle.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_repl, target, path, **options))

        async def connect():
            client = Client(await trio.open_unix_socket(path))
            client.hello = await client.line()
            return client
        yield target, connect
        nursery.cancel_scope.cancel()


async def test_an_idle_session_is_told_why_and_closed(short_dir, autojump_clock, caplog):
    """An operator who walked away: 15 minutes (IDLE_TIMEOUT_S) after the last command the node
    sends one closing line and closes (it kept the session, and a live console, open forever)."""
    assert IDLE_TIMEOUT_S == 15 * 60
    caplog.set_level(logging.INFO, logger="palmnode.repl")
    async with _bare_repl(short_dir) as (target, connect):
        client = await connect()
        await trio.sleep(IDLE_TIMEOUT_S - 1)
        _, reply = await client.call("help", "light", timeout=1)  # a command restarts the wait
        answered = trio.current_time()
        await client.stream.send_all(b"\n\n" + b'{"cmd": "interrupt"}\n')  # neither is a command
        closing = await client.line(timeout=IDLE_TIMEOUT_S + 60)
        assert trio.current_time() - answered == pytest.approx(IDLE_TIMEOUT_S, abs=0.01)
        assert closing == {"closing": "idle", "text": "no command for 15 min: the node closed this session "
                                                      "([repl] idle_timeout_s); connect again to go on"}
        with pytest.raises(EOFError):
            await client.line(timeout=1)
        assert "REPL session closed: idle" in caplog.text


async def test_a_running_command_is_not_idle(short_dir, autojump_clock):
    """A follow watched for an hour, a py statement awaiting longer than the timeout: both run on;
    the wait for the next command starts when they end."""
    idle = 90.0
    async with _bare_repl(short_dir, python_console=True, idle_timeout_s=idle) as (target, connect):
        client = await connect()
        await client.send("follow", "cards")
        assert "following" in (await client.line(timeout=1))["text"]
        await trio.sleep(3600)
        target.bus.publish(BadgeRead(uid_hex="04A1B2C3"))
        assert (await client.line(timeout=1))["event"]["uid_hex"] == "04A1B2C3"
        await client.send("interrupt")
        _, reply = await client.until_final(timeout=1)
        assert reply["result"] == {"interrupted": True}

        started = trio.current_time()
        _, reply = await client.call("py", "await trio.sleep(600); print('done')", timeout=700)
        assert reply["text"] == "done\n" and trio.current_time() - started == pytest.approx(600, abs=0.01)
        answered = trio.current_time()
        closing = await client.line(timeout=idle + 60)
        assert closing["closing"] == "idle" and closing["text"].startswith("no command for 90 s: ")
        assert trio.current_time() - answered == pytest.approx(idle, abs=0.01)


async def test_an_idle_session_frees_its_slot(short_dir, autojump_clock):
    """At the session limit a newcomer is refused in one line that says the idle ones close; once
    the idle one is closed the newcomer gets in."""
    async with _bare_repl(short_dir, max_sessions=1, idle_timeout_s=300) as (target, connect):
        first = await connect()
        refused = await connect()
        assert refused.hello == {"ok": False, "error": "too many REPL sessions (1): close one and retry "
                                                       "(an idle one is closed after 5 min)"}
        with pytest.raises(EOFError):
            await refused.line(timeout=1)
        assert (await first.line(timeout=400))["closing"] == "idle"
        with pytest.raises(EOFError):  # closed: its slot was freed just before
            await first.line(timeout=1)
        newcomer = await connect()
        assert "hello" in newcomer.hello
        _, reply = await newcomer.call("help", timeout=1)
        assert reply["ok"]


@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
async def test_serve_repl_refuses_a_timeout_that_is_not_positive(short_dir, value):
    with pytest.raises(ValueError, match="idle_timeout_s must be greater than 0"), trio.fail_after(5):
        await serve_repl(BareTarget(), os.path.join(short_dir, "t.sock"), idle_timeout_s=value)
    assert not os.path.exists(os.path.join(short_dir, "t.sock"))


@pytest.mark.parametrize("sessions", [0, SESSIONS_LIMIT + 1])
async def test_serve_repl_refuses_a_session_count_beyond_its_bounds(short_dir, sessions):
    path = os.path.join(short_dir, "bound.sock")
    with pytest.raises(ValueError, match=f"max_sessions must be 1 to {SESSIONS_LIMIT}, got {sessions}"):
        await serve_repl(BareTarget(), path, max_sessions=sessions)
    assert not os.path.exists(path)
