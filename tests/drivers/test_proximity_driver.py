"""The TFmini driver against the TFmini emulator over real ptys."""
import pytest
import trio
import trio.testing

from drivers.errors import DeviceLost, DeviceTimeout, PortUnavailable
from drivers.proximity import codec
from drivers.proximity.driver import Distance, ProximitySensor
from drivers.proximity.emulator import FACTORY_SETTINGS, ProximityEmulator
from drivers.serialport import SerialPort


@pytest.fixture
async def emu(nursery, tmp_path):
    emulator = ProximityEmulator(tmp_path / "tfmini", seed=7)
    await nursery.start(emulator.run)
    return emulator


async def take(sensor: ProximitySensor, n: int) -> list[Distance]:
    got = []
    with trio.fail_after(5):
        async for d in sensor.measurements():
            got.append(d)
            if len(got) == n:
                return got


async def exchange(port: SerialPort, command, reply_type):
    """Send one command on a raw port and wait for its reply (data frames interleave)."""
    dec = codec.SensorDecoder()
    await port.send_all(codec.encode_command(command))
    with trio.fail_after(2):
        while True:
            dec.receive_data(await port.receive_some())
            while (e := dec.next_event()) is not None:
                if isinstance(e, reply_type):
                    return e


async def test_handshake_configures_the_sensor(emu):
    async with await ProximitySensor.open(str(emu.link), frame_rate_hz=50) as sensor:
        assert sensor.firmware_version == codec.FirmwareVersion(2, 0, 6)
        assert str(sensor.firmware_version) == "2.0.6"
        assert emu.settings.fmt == codec.OutputFormat.STANDARD_MM
        assert emu.settings.frame_rate_hz == 50 and emu.settings.output_enabled
        assert emu.saved_settings == FACTORY_SETTINGS  # the driver does not wear the flash
        assert [type(c) for c in emu.commands_received] == [
            codec.GetFirmwareVersion, codec.SetOutputFormat, codec.SetFrameRate, codec.EnableOutput]
        assert sensor.stats.replies == 4


async def test_stream_follows_the_scene(emu):
    emu.set_target(250)
    async with await ProximitySensor.open(str(emu.link)) as sensor:
        near = await take(sensor, 30)
        assert all(d.distance_mm is not None and abs(d.distance_mm - 250) <= 12 for d in near)
        assert all(d.strength > 5000 and d.temperature_c == 36.0 for d in near)
        assert all(b.at > a.at for a, b in zip(near, near[1:]))
        emu.set_target(None)  # nothing in view: the ceiling at 1200 mm, weaker
        far = [d for d in await take(sensor, 40) if d.distance_mm is not None and d.distance_mm > 1000]
        assert far and all(abs(d.distance_mm - 1200) <= 25 for d in far)
        assert max(d.strength for d in far) < min(d.strength for d in near)
        emu.set_target(40)  # inside the 10 cm blind zone: unreliable, reported as no distance
        close = (await take(sensor, 20))[-5:]
        assert all(d.distance_mm is None and d.strength == 65535 for d in close)
        emu.background_mm = None  # nothing in range at all: weak signal
        emu.set_target(None)
        empty = (await take(sensor, 20))[-5:]
        assert all(d.distance_mm is None and d.strength < 100 for d in empty)
        assert sensor.stats.unreliable >= 10 and sensor.stats.frames_ok >= 110


async def test_cm_unit_is_converted_to_mm(emu):
    emu.set_target(437)
    async with await ProximitySensor.open(str(emu.link), unit="cm") as sensor:
        assert emu.settings.fmt == codec.OutputFormat.STANDARD_CM
        got = await take(sensor, 10)
        assert all(d.distance_mm % 10 == 0 and abs(d.distance_mm - 437) <= 15 for d in got)


async def test_a_sensor_reset_behind_the_port_is_brought_back_to_mm(emu):
    # a brown-out resets the sensor to its saved settings (cm) while the port stays: nothing in
    # the frames says so, and without the unit sent again every distance would read 10x too short
    emu.set_target(300)
    async with await ProximitySensor.open(str(emu.link), reassert_s=0.3) as sensor:
        assert abs((await take(sensor, 3))[-1].distance_mm - 300) <= 12
        emu.power_cycle()
        assert emu.settings.fmt == codec.OutputFormat.STANDARD_CM
        got = await take(sensor, 100)  # 1 s at 100 Hz
        assert any(d.distance_mm is not None and d.distance_mm < 60 for d in got)   # read as mm: 30
        assert all(abs(d.distance_mm - 300) <= 12 for d in got[-20:])
        assert emu.settings.fmt == codec.OutputFormat.STANDARD_MM and sensor.stats.reasserts >= 1


async def test_unplug_is_device_lost_then_reopen(emu, nursery):
    emu.set_target(300)
    sensor = await ProximitySensor.open(str(emu.link))
    await take(sensor, 3)
    nursery.start_soon(emu.unplug, 0.2)
    with pytest.raises(DeviceLost):
        await take(sensor, 1000)
    with pytest.raises(PortUnavailable):
        await ProximitySensor.open(str(emu.link))
    with trio.fail_after(2):
        await emu.replugged()
    assert emu.settings == FACTORY_SETTINGS  # power cycle: unsaved mm / rate are gone
    async with await ProximitySensor.open(str(emu.link)) as again:
        assert emu.settings.fmt == codec.OutputFormat.STANDARD_MM
        assert abs((await take(again, 3))[-1].distance_mm - 300) <= 12


async def test_garbage_and_checksum_errors_are_dropped_and_counted(emu):
    emu.set_target(200)
    async with await ProximitySensor.open(str(emu.link)) as sensor:
        await take(sensor, 2)
        emu.corrupt_next(3)
        emu.inject_garbage(bytes(range(0x60, 0x80)))  # no 59/5A: pure garbage
        got = await take(sensor, 20)
        assert all(abs(d.distance_mm - 200) <= 12 for d in got)
        assert sensor.stats.drops["checksum"] == 3
        assert sensor.stats.drops["garbage"] >= 1
        assert "rx 59 59" in "\n".join(sensor.traffic.dump())


async def test_stall_raises_device_timeout_then_stream_resumes(emu):
    async with await ProximitySensor.open(str(emu.link), gap_timeout=0.2) as sensor:
        await take(sensor, 2)
        emu.stall(0.3)
        with pytest.raises(DeviceTimeout, match=r"no data frame for 0.2s .*stalled"):
            await take(sensor, 1000)
        assert sensor.stats.timeouts == 1
        await take(sensor, 5)  # after the stall the same sensor streams again


async def test_gap_timeout_default_is_ten_periods_at_least_200ms(emu):
    async with await ProximitySensor.open(str(emu.link), frame_rate_hz=20) as slow:
        assert slow.gap_timeout == pytest.approx(0.5)
    async with await ProximitySensor.open(str(emu.link), frame_rate_hz=1000) as fast:
        assert fast.gap_timeout == pytest.approx(0.2)


async def test_slow_first_answer_still_opens_within_timeout(emu):
    emu.slow_first_answer(0.6)
    t0 = trio.current_time()
    async with await ProximitySensor.open(str(emu.link), timeout=2.0) as sensor:
        assert trio.current_time() - t0 >= 0.6
        assert sensor.firmware_version is not None


async def test_first_answer_later_than_timeout_is_device_timeout(emu):
    emu.slow_first_answer(0.5)
    with pytest.raises(DeviceTimeout, match=r"at .*tfmini: no answer to 'firmware version' within 0.25s"):
        await ProximitySensor.open(str(emu.link), timeout=0.25)
    async with await ProximitySensor.open(str(emu.link), timeout=2.0):
        pass  # the failed open released the port


async def test_silent_port_times_out_naming_port(emu):
    emu.stall(5)
    with pytest.raises(DeviceTimeout, match="proximity sensor .* no answer .* baud"):
        await ProximitySensor.open(str(emu.link), timeout=0.3)


async def test_settings_persistence(emu):
    # a host changes the unit without saving: a power cycle brings the flash copy (cm) back
    async with SerialPort.open(str(emu.link), 115200) as port:
        await exchange(port, codec.SetOutputFormat(codec.OutputFormat.STANDARD_MM), codec.OutputFormatReply)
        await exchange(port, codec.SetFrameRate(20), codec.FrameRateReply)
        assert emu.settings.fmt == codec.OutputFormat.STANDARD_MM
    await emu.unplug(0.05)
    assert emu.settings == FACTORY_SETTINGS
    # save, replug: the settings survive; a system reset also keeps saved ones and drops unsaved
    async with SerialPort.open(str(emu.link), 115200) as port:
        await exchange(port, codec.SetOutputFormat(codec.OutputFormat.STANDARD_MM), codec.OutputFormatReply)
        assert await exchange(port, codec.SaveSettings(), codec.SaveSettingsReply) == codec.SaveSettingsReply(True)
        await exchange(port, codec.SetFrameRate(20), codec.FrameRateReply)
        assert await exchange(port, codec.SystemReset(), codec.SystemResetReply) == codec.SystemResetReply(True)
        assert emu.settings.fmt == codec.OutputFormat.STANDARD_MM and emu.settings.frame_rate_hz == 100
    await emu.unplug(0.05)
    assert emu.settings.fmt == codec.OutputFormat.STANDARD_MM
    # restore factory resets RAM and flash
    async with SerialPort.open(str(emu.link), 115200) as port:
        assert (await exchange(port, codec.RestoreFactorySettings(), codec.RestoreFactoryReply)
                == codec.RestoreFactoryReply(True))
        assert await exchange(port, codec.GetFirmwareVersion(), codec.FirmwareVersion) == emu.firmware
        assert await exchange(port, codec.SetBaudRate(460800), codec.BaudRateReply) == codec.BaudRateReply(460800)
    assert emu.saved_settings == FACTORY_SETTINGS and emu.settings.baudrate == 460800


async def test_output_disable_and_trigger_mode(emu):
    async with SerialPort.open(str(emu.link), 115200) as port:
        await exchange(port, codec.EnableOutput(False), codec.OutputEnableReply)
        await exchange(port, codec.SetFrameRate(0), codec.FrameRateReply)
        sent = emu.frames_sent
        # triggered: exactly one data frame per trigger
        m = await exchange(port, codec.TriggerDetection(), codec.Measurement)
        assert m.distance > 0
        await trio.testing.wait_all_tasks_blocked()
        assert emu.frames_sent == sent
    # the driver turns output back on and sets a rate
    async with await ProximitySensor.open(str(emu.link)) as sensor:
        assert len(await take(sensor, 5)) == 5


async def test_pixhawk_format_streams_metres(emu):
    emu.set_target(1210)
    async with SerialPort.open(str(emu.link), 115200) as port:
        await exchange(port, codec.SetOutputFormat(codec.OutputFormat.PIXHAWK), codec.OutputFormatReply)
        line = await exchange(port, codec.GetFirmwareVersion(), codec.PixhawkDistance)
        assert abs(line.distance_m - 1.21) <= 0.03


@pytest.fixture
def fast_clock():
    # autojump would outrun the kernel's pty delivery; a clock 10x faster than real time does not
    return trio.testing.MockClock(rate=10)


async def test_frame_clock_runs_on_trio_time(nursery, tmp_path, fast_clock):
    emu = ProximityEmulator(tmp_path / "tfmini", seed=3)
    await nursery.start(emu.run)
    emu.set_target(180)
    async with await ProximitySensor.open(str(emu.link), gap_timeout=2.0) as sensor:
        first = (await take(sensor, 1))[0]
        got = await take(sensor, 300)
        # 300 frames at 100 Hz of the mock clock: 3 virtual seconds in about 0.3 real ones
        assert got[-1].at - first.at == pytest.approx(3.0, abs=0.2)
        assert all(abs(d.distance_mm - 180) <= 12 for d in got)
