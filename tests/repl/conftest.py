"""A real node on the virtual gate served over a real unix socket, and a small async test client."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
import trio

from palmnode.repl import serve_repl
from palmnode.repl.protocol import encode_request


class OtherTree:
    """The node as a ReplTarget, but showing another supervision tree."""

    def __init__(self, node, supervisor):
        self.node = node
        self.supervisor = supervisor

    def __getattr__(self, name):
        return getattr(self.node, name)


class BareTarget:
    """A target made of the real parts, without devices (for MockClock tests)."""

    def __init__(self):
        from palmnode.actors import EventBus
        from palmnode.devices.camera import FrameSource
        from palmnode.devices.illuminator import Lights
        from palmnode.metrics import Metrics

        self.config = None
        self.bus = EventBus()
        self.health = None
        self.supervisor = None
        self.metrics = Metrics()
        self.lights = Lights()
        self.frames = FrameSource()
        self.gallery = None


@pytest.fixture
def short_dir():
    """A folder with a short path (a unix socket path is at most 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="repl-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def target(node):
    """The REPL's target is the node itself (palmnode.node.Node satisfies ReplTarget)."""
    return node


@pytest.fixture
async def repl_path(nursery, target, short_dir):
    return await nursery.start(lambda task_status: serve_repl(
        target, os.path.join(short_dir, "repl.sock"), python_console=True, task_status=task_status))


class Client:
    def __init__(self, stream):
        self.stream = stream
        self.buffer = b""

    async def line(self, timeout=5.0):
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("the node closed the connection")
                self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    async def send(self, cmd, *args):
        await self.stream.send_all(encode_request(cmd, *args))

    async def call(self, cmd, *args, timeout=5.0):
        """→ (streamed lines, final reply)."""
        await self.send(cmd, *args)
        return await self.until_final(timeout)

    async def until_final(self, timeout=5.0):
        streamed = []
        while True:
            reply = await self.line(timeout)
            if "ok" in reply:
                return streamed, reply
            streamed.append(reply)

    async def aclose(self):
        await self.stream.aclose()


@pytest.fixture
def connect(repl_path):
    async def open_client(path=None):
        stream = await trio.open_unix_socket(str(path or repl_path))
        client = Client(stream)
        client.hello = (await client.line())["hello"]
        return client
    return open_client
