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
