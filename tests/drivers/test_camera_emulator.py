"""The camera emulator's HTTP output, read over real loopback sockets by a tiny independent parser."""
import cv2
import numpy as np
import pytest
import trio

from drivers.camera import DARK, FULL_IR, CameraEmulator, DiscScene, Lighting


class Wire:
    """A deliberately separate HTTP/multipart reader (no code shared with drivers.camera.codec)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def get(cls, port: int, path: str) -> "Wire":
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return cls(stream)

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError
        self.buf += data

    async def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            await self._fill()
        head, self.buf = self.buf.split(marker, 1)
        return head

    async def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    async def head(self) -> tuple[str, dict[str, str]]:
        lines = (await self.until(b"\r\n\r\n")).decode("ascii").split("\r\n")
        return lines[0], {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}

    async def part(self, boundary: str) -> tuple[dict[str, str], bytes]:
        lines = (await self.until(b"\r\n\r\n")).decode("ascii").split("\r\n")
        while lines and lines[0] == "":
            lines.pop(0)
        assert lines[0] == "--" + boundary
        fields = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        body = await self.take(int(fields["content-length"]))
        assert await self.take(2) == b"\r\n"
        return fields, body

    async def rest(self) -> bytes:
        with trio.fail_after(2):
            while True:
                try:
                    await self._fill()
                except EOFError:
                    return self.buf


async def open_stream(port: int) -> tuple[Wire, str]:
    wire = await Wire.get(port, "/stream.mjpg")
    status, fields = await wire.head()
    assert status == "HTTP/1.1 200 OK"
    media, _, param = fields["content-type"].partition(";")
    assert media == "multipart/x-mixed-replace"
    key, _, boundary = param.strip().partition("=")
    assert key == "boundary" and 1 <= len(boundary) <= 70  # RFC 2046 §5.1.1
    assert "content-length" not in fields  # a live stream ends at close
    return wire, boundary


async def test_stream_framing_and_jpeg_markers(nursery):
    emu = CameraEmulator(seed=1)
    await nursery.start(emu.run)
    assert emu.url == f"http://127.0.0.1:{emu.port}/stream.mjpg"
    with trio.fail_after(5):
        wire, boundary = await open_stream(emu.port)
        for _ in range(3):
            fields, jpeg = await wire.part(boundary)
            assert fields["content-type"] == "image/jpeg"
            assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"  # T.81 B.1.1.3 SOI/EOI
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
            assert image.shape == (480, 640)
        await wire.stream.aclose()


async def test_snapshot_404_405_and_several_clients(nursery):
    emu = CameraEmulator(seed=2, width=320, height=240)
    await nursery.start(emu.run)
    with trio.fail_after(5):
        (a, ba), (b, bb) = await open_stream(emu.port), await open_stream(emu.port)
        _, ja = await a.part(ba)
        _, jb = await b.part(bb)
        assert ja[:2] == jb[:2] == b"\xff\xd8"
        assert emu.stats.stream_clients == 2

        snap = await Wire.get(emu.port, "/snapshot.jpg")
        status, fields = await snap.head()
        assert status == "HTTP/1.1 200 OK" and fields["content-type"] == "image/jpeg"
        body = await snap.take(int(fields["content-length"]))
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (240, 320)
        assert await snap.rest() == b""  # Connection: close, nothing after the body

        missing = await Wire.get(emu.port, "/index.html")
        status, fields = await missing.head()
        assert status == "HTTP/1.1 404 Not Found"
        assert b"/stream.mjpg" in await missing.rest()

        post = await trio.open_tcp_stream("127.0.0.1", emu.port)
        await post.send_all(b"POST /stream.mjpg HTTP/1.1\r\n\r\n")
        status, fields = await Wire(post).head()
        assert status == "HTTP/1.1 405 Method Not Allowed" and fields["allow"] == "GET"

        bad = await trio.open_tcp_stream("127.0.0.1", emu.port)
        await bad.send_all(b"NOT HTTP\r\n\r\n")
        assert (await Wire(bad).head())[0] == "HTTP/1.1 400 Bad Request"
        for wire in (a, b):
            await wire.stream.aclose()


async def test_frames_follow_lighting_and_dark_is_noise(nursery):
    light = [FULL_IR]
    emu = CameraEmulator(seed=3, lighting=lambda: light[0])
    await nursery.start(emu.run)

    async def mean_of_next(wire, boundary):
        _, jpeg = await wire.part(boundary)
        return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).mean()

    with trio.fail_after(5):
        wire, boundary = await open_stream(emu.port)
        lit = await mean_of_next(wire, boundary)
        light[0] = DARK
        # one part may already be in flight, rendered under the old light
        dark = min([await mean_of_next(wire, boundary) for _ in range(3)])
        light[0] = Lighting(surface=1.0)
        surface = await mean_of_next(wire, boundary)
        surface = max(surface, await mean_of_next(wire, boundary))
        await wire.stream.aclose()
    assert dark < 6 < 25 < lit < surface


def test_scene_is_deterministic_per_seed_and_follows_light():
    a, b = DiscScene(seed=7), DiscScene(seed=7)
    assert np.array_equal(a(FULL_IR, 0.5), b(FULL_IR, 0.5))
    assert not np.array_equal(a(FULL_IR, 0.0), DiscScene(seed=8)(FULL_IR, 0.0))
    lit, half, dark = a(FULL_IR, 0.0), a(Lighting(ir=0.5), 0.0), a(DARK, 0.0)
    assert lit.dtype == np.uint8 and lit.shape == (480, 640)
    centre = (slice(250, 280), slice(300, 340))
    assert 100 < lit[centre].mean() < 120 and 45 < half[centre].mean() < 65
    assert 10 < lit[:20, :20].mean() < 20  # background ~15 (docs/synthetic-hands.md, real-capture targets)
    assert dark.mean() < 5 and dark.std() > 0.5  # sensor noise only
    with pytest.raises(ValueError, match="within 0..1"):
        Lighting(ir=1.5)


async def test_corrupt_part_is_well_framed_but_undecodable(nursery):
    emu = CameraEmulator(seed=4)
    await nursery.start(emu.run)
    with trio.fail_after(5):
        wire, boundary = await open_stream(emu.port)
        await wire.part(boundary)
        emu.inject_garbage()
        bad = None
        for _ in range(4):
            fields, jpeg = await wire.part(boundary)
            if cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE) is None:
                bad = jpeg
                break
        assert bad is not None and bad[:2] == b"\xff\xd8" and emu.stats.corrupt_parts == 1
        _, good = await wire.part(boundary)  # the stream goes on
        assert cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_GRAYSCALE) is not None
        await wire.stream.aclose()


async def test_unplug_refuses_then_serves_on_same_port(nursery):
    emu = CameraEmulator(seed=5)
    await nursery.start(emu.run)
    port = emu.port
    with trio.fail_after(5):
        wire, boundary = await open_stream(port)
        await wire.part(boundary)
        done = trio.Event()

        async def pull():
            await emu.unplug(0.3)
            done.set()

        nursery.start_soon(pull)
        with pytest.raises((EOFError, trio.BrokenResourceError)):
            while True:
                await wire.part(boundary)
        assert not emu.plugged
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        await emu.replugged()
        await done.wait()
        assert emu.port == port
        wire, boundary = await open_stream(port)
        fields, jpeg = await wire.part(boundary)
        assert jpeg[:2] == b"\xff\xd8"
        await wire.stream.aclose()


async def test_stall_keeps_connection_and_slow_first_answer(nursery):
    emu = CameraEmulator(seed=6)
    await nursery.start(emu.run)
    with trio.fail_after(5):
        wire, boundary = await open_stream(emu.port)
        await wire.part(boundary)
        sent = emu.stats.parts_sent
        emu.stall(0.4)
        with trio.move_on_after(0.2):
            await wire.part(boundary)  # at most the part already in flight
            await wire.part(boundary)
            pytest.fail("frames kept coming during a stall")
        assert emu.stats.parts_sent <= sent + 1
        await wire.part(boundary)  # the same connection resumes
        await wire.stream.aclose()

        emu.slow_first_answer(0.3)
        start = trio.current_time()
        wire, boundary = await open_stream(emu.port)
        assert trio.current_time() - start >= 0.3
        await wire.part(boundary)
        await wire.stream.aclose()


async def test_scene_of_wrong_size_is_named(nursery):
    emu = CameraEmulator(scene=lambda lighting, t: np.zeros((10, 10), np.uint8))
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="make the scene match the emulator size"),
                            flatten_subgroups=True):
        with trio.fail_after(5):
            async with trio.open_nursery() as inner:
                await inner.start(emu.run)
                wire = await Wire.get(emu.port, "/snapshot.jpg")
                await wire.rest()
