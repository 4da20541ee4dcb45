"""The shared pty emulator base and the host serial port, over real ptys."""
import trio
import pytest

from drivers.emulation import SerialEmulator
from drivers.errors import DeviceLost, PortUnavailable
from drivers.serialport import SerialPort


class Echo(SerialEmulator):
    device = "echo"

    async def on_receive(self, data: bytes) -> None:
        await self.send(data.upper())


async def _roundtrip(port: SerialPort, data: bytes) -> bytes:
    await port.send_all(data)
    got = b""
    with trio.fail_after(2):
        while len(got) < len(data):
            got += await port.receive_some()
    return got


async def test_echo_roundtrip_and_traffic_log(nursery, tmp_path):
    emu = Echo(tmp_path / "echo")
    await nursery.start(emu.run)
    async with SerialPort.open(str(emu.link), 115200) as port:
        assert await _roundtrip(port, b"hello") == b"HELLO"
        assert port.bytes_in == 5 and port.bytes_out == 5
        dump = port.traffic.dump()
        assert dump[0].endswith("tx 68 65 6c 6c 6f") and dump[-1].endswith("rx 48 45 4c 4c 4f")


async def test_open_is_exclusive_and_missing_port_is_named(nursery, tmp_path):
    with pytest.raises(PortUnavailable, match="nope"):
        SerialPort.open(str(tmp_path / "nope"), 115200)
    emu = Echo(tmp_path / "echo")
    await nursery.start(emu.run)
    async with SerialPort.open(str(emu.link), 115200):
        with pytest.raises(PortUnavailable, match="cannot open serial port"):
            SerialPort.open(str(emu.link), 115200)


async def test_unplug_is_device_lost_and_replug_reopens_same_path(nursery, tmp_path):
    emu = Echo(tmp_path / "echo")
    await nursery.start(emu.run)
    port = SerialPort.open(str(emu.link), 115200)
    assert await _roundtrip(port, b"a") == b"A"
    unplugged = trio.Event()

    async def pull():
        nursery.start_soon(emu.unplug, 0.3)
        unplugged.set()

    nursery.start_soon(pull)
    await unplugged.wait()
    with pytest.raises(DeviceLost, match="vanished"):
        with trio.fail_after(2):
            await port.receive_some()
    await port.aclose()
    assert not emu.link.exists()
    with pytest.raises(PortUnavailable):
        SerialPort.open(str(emu.link), 115200)
    with trio.fail_after(2):
        await emu.replugged()
    async with SerialPort.open(str(emu.link), 115200) as again:
        assert await _roundtrip(again, b"b") == b"B"


async def test_host_close_and_reopen_and_faults(nursery, tmp_path):
    emu = Echo(tmp_path / "echo", seed=1)
    await nursery.start(emu.run)
    for text in (b"one", b"two"):
        async with SerialPort.open(str(emu.link), 115200) as port:
            assert await _roundtrip(port, text) == text.upper()
    async with SerialPort.open(str(emu.link), 115200) as port:
        await _roundtrip(port, b"x")
        emu.corrupt_next(1)
        assert await _roundtrip(port, b"ab") == b"A\xbd"
        emu.inject_garbage(b"\x00\xff")
        assert await port.receive_some() == b"\x00\xff"
        emu.stall(0.3)
        await port.send_all(b"lost")
        with trio.move_on_after(0.2):
            await port.receive_some()
            pytest.fail("a stalled device answered")
        await trio.sleep(0.15)
        assert await _roundtrip(port, b"ok") == b"OK"


# ---- devices that speak first: the base notices a host opening the port ----------------
class Banner(SerialEmulator):
    """Announces itself on every open (like a board that resets on DTR), streams ticks from a
    timer task while a host listens, echoes commands; reports its hooks on a channel."""

    device = "banner"

    def __init__(self, link, **kwargs) -> None:
        super().__init__(link, **kwargs)
        self.hooks_in, self.hooks = trio.open_memory_channel(16)
        self.ticking = False
        self.ticks_out = 0

    async def on_host_attached(self) -> None:
        self.hooks_in.send_nowait("attached")
        await self.send(b"HELLO\n")

    async def on_host_detached(self) -> None:
        self.hooks_in.send_nowait("detached")

    async def on_receive(self, data: bytes) -> None:
        await self.send(data.upper())

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(super().run)
            nursery.start_soon(self._tick)
            task_status.started()

    async def _tick(self) -> None:
        while True:
            await self.wait_host_attached()
            if self.ticking and self.emit(b"."):
                self.ticks_out += 1
            await trio.sleep(0.01)


async def _hook(emu: Banner) -> str:
    with trio.fail_after(2):
        return await emu.hooks.receive()


async def _read_until(port: SerialPort, marker: bytes) -> bytes:
    got = b""
    with trio.fail_after(2):
        while marker not in got:
            got += await port.receive_some()
    return got


async def test_speak_first_host_sees_banner_without_writing(nursery, tmp_path):
    emu = Banner(tmp_path / "banner")
    await nursery.start(emu.run)
    assert not emu.host_attached
    async with SerialPort.open(str(emu.link), 115200) as port:
        assert await _read_until(port, b"\n") == b"HELLO\n"
        assert emu.host_attached and port.bytes_out == 0
        emu.ticking = True
        dots = await _read_until(port, b"...")
        assert dots == b"." * len(dots)  # emit() streams, unasked
        assert emu.ticks_out >= 3
        await port.send_all(b"x")
        assert (await _read_until(port, b"X")).replace(b".", b"") == b"X"  # and it still answers


async def test_hooks_fire_on_open_close_and_reopen(nursery, tmp_path):
    emu = Banner(tmp_path / "banner")
    await nursery.start(emu.run)
    for _ in range(3):
        async with SerialPort.open(str(emu.link), 115200) as port:
            assert await _hook(emu) == "attached"
            assert await _read_until(port, b"\n") == b"HELLO\n"  # every open, not just the first
        # a pty cannot tell a close from a close+reopen that the emulator did not see in between,
        # so the host waits for the device to notice (real hosts take far longer to reopen)
        assert await _hook(emu) == "detached"
        assert not emu.host_attached
    assert emu.emit(b"nobody") is False  # nobody listening: dropped


async def test_speak_first_unplug_replug(nursery, tmp_path):
    emu = Banner(tmp_path / "banner")
    await nursery.start(emu.run)
    port = SerialPort.open(str(emu.link), 115200)
    assert await _hook(emu) == "attached"
    await _read_until(port, b"\n")
    unplugging = trio.Event()

    async def pull():
        unplugging.set()
        await emu.unplug(0.2)

    nursery.start_soon(pull)
    await unplugging.wait()
    assert await _hook(emu) == "detached"  # the cable, not the host, ended the session
    with pytest.raises(DeviceLost):
        with trio.fail_after(2):
            await port.receive_some()
    await port.aclose()
    with trio.fail_after(2):
        await emu.replugged()
    assert not emu.host_attached
    async with SerialPort.open(str(emu.link), 115200) as again:
        assert await _hook(emu) == "attached"
        assert await _read_until(again, b"\n") == b"HELLO\n"
        assert await _roundtrip(again, b"ok") == b"OK"
    assert await _hook(emu) == "detached"


async def test_emit_honours_stall_and_corruption_and_skips_slow_first_answer(nursery, tmp_path):
    emu = Banner(tmp_path / "banner", seed=3)
    emu.slow_first_answer(1.0)
    await nursery.start(emu.run)
    opened = trio.current_time()  # before the open, so before the emulator's late answer starts its wait
    async with SerialPort.open(str(emu.link), 115200) as port:
        await _hook(emu)
        emu.corrupt_next(1)
        assert emu.emit(b"AB")  # streamed data is not held back by the slow first answer
        assert await _read_until(port, b"A") == b"A\xbd"
        assert trio.current_time() - opened < 1.0
        assert await _read_until(port, b"\n") == b"HELLO\n"  # the first answer is late
        assert trio.current_time() - opened >= 1.0
        emu.stall(5)
        assert emu.emit(b"lost") is False
        emu.stall(0)
        assert emu.emit(b"back")
        assert await _read_until(port, b"back") == b"back"


async def test_read_interval_batches_reads_and_still_sees_unplug(nursery, tmp_path):
    emu = Echo(tmp_path / "echo")
    await nursery.start(emu.run)
    port = SerialPort.open(str(emu.link), 115200, read_interval_s=0.05)
    with trio.fail_after(2):
        await port.send_all(b"a")
        first = await port.receive_some()
        t_first = trio.current_time()
        for c in (b"b", b"c", b"d"):
            await port.send_all(c)
        got = b""
        while len(got) < 3:
            got += await port.receive_some()
    assert first == b"A" and got == b"BCD"
    assert trio.current_time() - t_first >= 0.05  # no read before the interval is over
    assert port.bytes_in == 4
    nursery.start_soon(emu.unplug, 0.3)
    with pytest.raises(DeviceLost):
        with trio.fail_after(2):
            await port.receive_some()
    await port.aclose()
