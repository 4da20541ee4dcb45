"""Illuminator driver against the StandardFirmata emulator over real ptys, with every fault."""
import math

import pytest
import trio

from drivers.errors import DeviceLost, DeviceTimeout, ProtocolError
from drivers.illuminator import (
    Cooled, DeadmanTripped, Illuminator, IlluminatorEmulator, OverTemperature,
    OverTemperatureLockout, PinCapabilityError, Thermistor,
)
from drivers.illuminator import codec as fc
from drivers.illuminator.emulator import NOTICE_DEADMAN
from drivers.serialport import SerialPort

CHANNELS = {"ir": 9, "surface": 10}


@pytest.fixture
async def emu(nursery, tmp_path):
    board = IlluminatorEmulator(tmp_path / "illuminator", seed=7)
    await nursery.start(board.run)
    return board


async def open_lights(emu, **overrides):
    args = dict(channels=CHANNELS, thermistor_pin=0, deadman_ms=2000, max_temperature_c=60.0,
                timeout=1.0)
    args.update(overrides)
    return await Illuminator.open(str(emu.link), **args)


async def eventually(predicate, timeout=2.0):
    """Wait for a condition the driver updates from the board's reports."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def next_event(lights, kind, timeout=2.0):
    with trio.fail_after(timeout):
        while True:
            event = await lights.events().receive()
            if isinstance(event, kind):
                return event


async def test_handshake_sets_up_the_board_and_levels_reach_the_pwm(nursery, emu):
    lights = await open_lights(emu)
    assert (lights.firmware, lights.firmware_version, lights.protocol_version) == (
        "StandardFirmata.ino", (2, 5), (2, 5))
    assert emu.pin_modes[9] == emu.pin_modes[10] == fc.MODE_PWM
    assert emu.pin_modes[14] == fc.MODE_ANALOG and emu.reporting_channels == {0}
    assert emu.sampling_interval_ms == 50 and emu.deadman_timeout_ms == 2000
    assert emu.endpoint.host_baudrate() == 57600
    assert not emu.lights_on and lights.levels == {"ir": 0.0, "surface": 0.0}
    nursery.start_soon(lights.run)
    await lights.set_level("ir", 0.5)
    await lights.set_level("surface", 1.0)
    with trio.fail_after(1):
        await emu.wait_until(lambda: emu.pwm(10) == 1.0)
    assert emu.pwm(9) == pytest.approx(0.5, abs=1 / 255)
    assert lights.levels == {"ir": pytest.approx(0.5, abs=1 / 255), "surface": 1.0}
    await lights.all_off()
    with trio.fail_after(1):
        await emu.wait_until(lambda: not emu.lights_on)
    await lights.set_level("ir", 0.25)
    await lights.aclose()  # switches every light off, and ends run()
    with trio.fail_after(1):
        await emu.wait_until(lambda: not emu.lights_on)
    assert lights.stats.frames_ok > 0 and lights.stats.drops == {}


async def test_unknown_channel_and_bad_level_are_value_errors(emu):
    async with await open_lights(emu) as lights:
        with pytest.raises(ValueError, match=r"'uv'.*'ir', 'surface'"):
            await lights.set_level("uv", 1.0)
        for bad in (1.5, -0.1, math.nan):
            with pytest.raises(ValueError, match="between 0 and 1"):
                await lights.set_level("ir", bad)


async def test_channel_on_a_pin_without_pwm_is_refused_naming_the_pin(emu):
    with pytest.raises(PinCapabilityError, match=r"'ir' is on pin 8, .*PWM pins 3, 5, 6, 9, 10, 11"):
        await open_lights(emu, channels={"ir": 8, "surface": 10})
    with pytest.raises(PinCapabilityError, match="A7 does not exist"):
        await open_lights(emu, thermistor_pin=7)
    async with await open_lights(emu):  # the port was released each time
        pass


async def test_thermistor_temperature_follows_the_board(nursery, tmp_path):
    emu = IlluminatorEmulator(tmp_path / "ill", seed=3, thermal_time_constant_s=0.4,
                              rise_per_channel_c=20.0)
    await nursery.start(emu.run)
    lights = await open_lights(emu, max_temperature_c=90.0)
    assert lights.temperature_c == pytest.approx(25.0, abs=0.5)
    nursery.start_soon(lights.run)
    emu.set_ambient(30.0)
    await eventually(lambda: lights.temperature_c > 29.0)
    await lights.set_level("ir", 1.0)  # lights heat the board toward 30 + 20
    await eventually(lambda: lights.temperature_c > 45.0)
    assert lights.temperature_c == pytest.approx(emu.temperature_c, abs=1.0)
    await lights.aclose()


def test_thermistor_model_roundtrip():
    ntc = Thermistor()
    assert ntc.adc(25.0) in (511, 512)
    for celsius in (-10.0, 0.0, 25.0, 60.0, 85.0, 120.0):
        assert ntc.celsius(ntc.adc(celsius)) == pytest.approx(celsius, abs=0.6)
    assert ntc.adc(80.0) < ntc.adc(25.0)  # an NTC under the fixed resistor reads lower when hot
    assert ntc.celsius(0) == math.inf and ntc.celsius(1023) == -math.inf


async def test_over_temperature_cutoff_and_hysteresis(nursery, emu):
    lights = await open_lights(emu, max_temperature_c=60.0, hysteresis_c=5.0)
    nursery.start_soon(lights.run)
    await lights.set_level("ir", 1.0)
    with trio.fail_after(1):
        await emu.wait_until(lambda: emu.lights_on)
    emu.heat(40.0)  # 25 -> 65 degC
    event = await next_event(lights, OverTemperature)
    assert event.source == "driver" and event.temperature_c > 60.0 and event.limit_c == 60.0
    with trio.fail_after(1):
        await emu.wait_until(lambda: not emu.lights_on)
    assert lights.over_temperature and lights.levels["ir"] == 0.0
    with pytest.raises(OverTemperatureLockout, match=r"refused.*below 55 °C"):
        await lights.set_level("ir", 0.5)
    await lights.set_level("ir", 0.0)  # off is always allowed
    emu.heat(-8.0)  # 57 degC: under the limit but inside the hysteresis band
    await eventually(lambda: lights.temperature_c < 58.0)
    assert lights.over_temperature
    emu.heat(-20.0)
    await next_event(lights, Cooled)
    await lights.set_level("ir", 0.5)
    with trio.fail_after(1):
        await emu.wait_until(lambda: emu.pwm(9) > 0)
    assert lights.stats.over_temperature_trips == 1
    await lights.aclose()


async def test_board_cutoff_acts_on_its_own(nursery, emu):
    # a driver limit above the board's: the board's own cutoff (80 degC) switches the lights off
    lights = await open_lights(emu, max_temperature_c=150.0)
    nursery.start_soon(lights.run)
    await lights.set_level("surface", 1.0)
    with trio.fail_after(1):
        await emu.wait_until(lambda: emu.lights_on)
    emu.heat(60.0)
    event = await next_event(lights, OverTemperature)
    assert event.source == "board" and emu.overheated and not emu.lights_on
    assert lights.levels["surface"] == 0.0 and lights.stats.board_cutoffs == 1
    with pytest.raises(OverTemperatureLockout):
        await lights.set_level("surface", 1.0)
    emu.heat(-60.0)
    await next_event(lights, Cooled)
    await lights.set_level("surface", 1.0)
    with trio.fail_after(1):
        await emu.wait_until(lambda: emu.lights_on)
    await lights.aclose()


async def test_deadman_darkens_the_board_when_the_host_goes_silent(nursery, emu):
    lights = await open_lights(emu, deadman_ms=300)
    async with trio.open_nursery() as feeding:
        feeding.start_soon(lights.run)
        await lights.set_level("ir", 1.0)
        await trio.sleep(0.9)  # three timeouts long: run() keeps feeding, the lights stay on
        assert emu.lights_on and emu.deadman_trips == 0
        feeding.cancel_scope.cancel()  # the host goes silent, port still open
    silent_at = trio.current_time()
    with trio.fail_after(1):
        await emu.wait_until(lambda: not emu.lights_on)
    # the last feed was at most one feed period (300 ms / 3) before the host went silent
    assert trio.current_time() - silent_at >= 0.3 - 0.3 / 3 - 0.01
    assert emu.deadman_trips == 1 and emu.notices[-1] == NOTICE_DEADMAN
    assert emu.deadman_timeout_ms == 0  # one-shot: the host re-arms when it comes back
    nursery.start_soon(lights.run)  # the host is back: it reads the trip and re-arms
    await next_event(lights, DeadmanTripped)
    assert lights.levels["ir"] == 0.0 and lights.stats.deadman_trips == 1
    with trio.fail_after(1):
        await emu.wait_until(lambda: emu.deadman_timeout_ms == 300)
    await lights.aclose()


async def test_unplug_is_device_lost_then_reopen_at_same_path(nursery, emu):
    lights = await open_lights(emu)
    await lights.set_level("ir", 1.0)
    with trio.fail_after(1):
        await emu.wait_until(lambda: emu.lights_on)
    nursery.start_soon(emu.unplug, 0.3)
    with pytest.raises(DeviceLost, match="vanished"):
        with trio.fail_after(2):
            await lights.run()
    await lights.aclose()  # best effort, must not raise
    assert not emu.lights_on  # the board lost USB power
    with trio.fail_after(2):
        await emu.replugged()
    async with await open_lights(emu) as again:
        await again.set_level("surface", 0.2)
        with trio.fail_after(1):
            await emu.wait_until(lambda: emu.pwm(10) > 0)
    assert emu.boots == 2


async def test_garbage_and_corrupted_frames_are_dropped_and_counted(nursery, emu):
    lights = await open_lights(emu)
    nursery.start_soon(lights.run)
    emu.inject_garbage(b"\x00\x13\x85\xf7\xf0\x71\x41\xe0\x05")
    emu.corrupt_next(2)  # Firmata has no checksum: a flipped last byte breaks the framing
    await eventually(lambda: sum(lights.stats.drops.values()) >= 5)
    assert {fc.STRAY_DATA, fc.UNKNOWN_COMMAND, fc.SYSEX_UNTERMINATED, fc.TRUNCATED} <= set(lights.stats.drops)
    frames = lights.stats.frames_ok
    await eventually(lambda: lights.stats.frames_ok > frames + 3)  # the stream goes on
    emu.inject_garbage(48)
    await lights.set_level("ir", 0.5)
    with trio.fail_after(1):
        await emu.wait_until(lambda: emu.pwm(9) > 0)
    assert lights.temperature_c == pytest.approx(25.0, abs=1.0)
    await lights.aclose()


async def test_garbage_from_the_host_is_counted_by_the_board(emu):
    async with await open_lights(emu) as lights:
        await lights._send(b"\x01\x02\xe9\x10\xf4\x09")  # stray data, then two truncated messages
        await lights.set_level("ir", 0.5)
        with trio.fail_after(1):
            await emu.wait_until(lambda: emu.pwm(9) > 0)
    assert emu.malformed == {fc.STRAY_DATA: 1, fc.TRUNCATED: 2}


async def test_short_stall_resumes_and_long_stall_is_device_timeout(nursery, emu):
    lights = await open_lights(emu, timeout=0.5)
    emu.stall(0.2)
    stalled_until = trio.current_time() + 0.2
    async with trio.open_nursery() as running:
        running.start_soon(lights.run)
        await eventually(lambda: (lights.stats.last_frame_at or 0) > stalled_until)
        running.cancel_scope.cancel()
    emu.stall(5.0)
    started = trio.current_time()
    with pytest.raises(DeviceTimeout, match="board silent for 0.5 s"):
        with trio.fail_after(3):
            await lights.run()
    assert trio.current_time() - started >= 0.45
    await lights.aclose()


async def test_slow_first_answer_is_waited_for_within_the_timeout(emu):
    emu.slow_first_answer(0.4)
    started = trio.current_time()
    async with await open_lights(emu, timeout=2.0) as lights:
        assert trio.current_time() - started >= 0.35
        assert lights.firmware == "StandardFirmata.ino"


async def test_no_answer_in_time_is_device_timeout_naming_the_port(emu):
    emu.slow_first_answer(1.5)
    with pytest.raises(DeviceTimeout, match=rf"illuminator on {emu.link}: no firmware report within 0.3 s"):
        await open_lights(emu, timeout=0.3)


async def test_board_restart_mid_session_is_device_lost(nursery, emu):
    lights = await open_lights(emu)
    nursery.start_soon(emu.on_host_attached)  # a brown-out: the board restarts and announces itself
    with pytest.raises(DeviceLost, match="restarted"):
        with trio.fail_after(2):
            await lights.run()
    await lights.aclose()


# ---- the emulator as StandardFirmata, byte by byte ---------------------------------------
class RawHost:
    def __init__(self, port):
        self.port = port
        self.decoder = fc.BoardToHostDecoder()

    async def ask(self, data: bytes, kind, timeout=1.0):
        if data:
            await self.port.send_all(data)
        with trio.fail_after(timeout):
            while True:
                for event in self.decoder:
                    if isinstance(event, kind):
                        return event
                self.decoder.receive_data(await self.port.receive_some())


async def test_emulator_speaks_standardfirmata(emu):
    async with SerialPort.open(str(emu.link), 57600) as port:
        raw = RawHost(port)
        # setup() announces itself on open (Uno auto-reset)
        assert await raw.ask(b"", fc.ProtocolVersion) == fc.ProtocolVersion(2, 5)
        assert (await raw.ask(b"", fc.FirmwareReport)).name == "StandardFirmata.ino"
        caps = await raw.ask(fc.capability_query(), fc.CapabilityResponse)
        assert len(caps.pins) == 20 and caps.modes(0) == {} and caps.modes(19)[fc.MODE_I2C] == 1
        mapping = await raw.ask(fc.analog_mapping_query(), fc.AnalogMappingResponse)
        assert mapping.channels == (None,) * 14 + (0, 1, 2, 3, 4, 5)
        # power-up state: digital pins OUTPUT, analog pins ANALOG
        assert await raw.ask(fc.pin_state_query(9), fc.PinStateResponse) == fc.PinStateResponse(9, 1, 0)
        assert await raw.ask(fc.pin_state_query(99), fc.PinStateResponse) == fc.PinStateResponse(99, None, 0)
        # PWM via the analog message and via extended analog; state is what was written
        await port.send_all(fc.set_pin_mode(9, fc.MODE_PWM) + fc.analog_message(9, 300)
                            + fc.set_pin_mode(3, fc.MODE_PWM) + fc.extended_analog(3, 64))
        assert await raw.ask(fc.pin_state_query(9), fc.PinStateResponse) == fc.PinStateResponse(9, 3, 300)
        assert emu.pwm(9) == 1.0 and emu.pwm(3) == pytest.approx(64 / 255)
        # PWM on a pin without it: the mode does not change (setPinModeCallback)
        await port.send_all(fc.set_pin_mode(8, fc.MODE_PWM) + fc.analog_message(8, 100))
        assert (await raw.ask(fc.pin_state_query(8), fc.PinStateResponse)).mode == fc.MODE_OUTPUT
        # digital writes: port message and set digital pin value (v2.5) on OUTPUT pins
        await port.send_all(fc.digital_message(1, 0b00100000) + fc.set_digital_pin_value(12, 1))
        assert await raw.ask(fc.pin_state_query(13), fc.PinStateResponse) == fc.PinStateResponse(13, 1, 1)
        assert emu.pwm(12) == 1.0
        # an unknown mode is reported with STRING_DATA
        assert await raw.ask(fc.set_pin_mode(4, 0x55), fc.StringData) == fc.StringData("Unknown pin mode")
        # enabling analog reporting answers at once (Firmata >= 2.4), then at the sampling interval
        await port.send_all(fc.sampling_interval(10))
        first = await raw.ask(fc.report_analog(0, True), fc.AnalogMessage)
        assert first.pin == 0 and abs(first.value - Thermistor().adc(25.0)) <= 1
        await raw.ask(b"", fc.AnalogMessage)
        # system reset: every output off, reporting off
        await port.send_all(fc.system_reset())
        assert await raw.ask(fc.pin_state_query(9), fc.PinStateResponse) == fc.PinStateResponse(9, 1, 0)
        assert not emu.lights_on and emu.reporting_channels == frozenset()
        # the dead-man extension acknowledges arming and disarming
        assert await raw.ask(fc.deadman_arm(300), fc.DeadmanAck) == fc.DeadmanAck(300)
        assert await raw.ask(fc.deadman_arm(0), fc.DeadmanAck) == fc.DeadmanAck(0)


class _SampledThermistor(Thermistor):
    """Lets a test act at the moment the firmware loop reads the thermistor for its report."""

    def __init__(self, sampled) -> None:
        super().__init__()
        object.__setattr__(self, "sampled", sampled)  # a frozen attrs class

    def adc(self, celsius: float) -> int:
        self.sampled()
        return super().adc(celsius)


@pytest.mark.parametrize("reset", ["unplug", "restart", "sampling interval"])
async def test_a_reset_while_the_board_is_reporting_leaves_its_firmware_loop_running(nursery, tmp_path, reset):
    # The loop sends one report per reporting channel, each send a checkpoint. A reset in
    # between (the cable pulled, a board restart, a new sampling interval from the host) clears
    # the next sampling time; the loop used to carry on with it as its deadline (None) and crash,
    # taking down the emulator and, in `palmnode sim`, the whole virtual gate: every device
    # vanished for good right after the scenario unplugged the illuminator.
    armed: list[trio.Event] = []
    emu = IlluminatorEmulator(tmp_path / "illuminator", seed=7,
                              thermistor=_SampledThermistor(lambda: armed and armed[-1].set()))
    await nursery.start(emu.run)
    async with SerialPort.open(str(emu.link), 57600) as port:
        await RawHost(port).ask(b"", fc.FirmwareReport)  # booted: the board listens
        await port.send_all(fc.sampling_interval(10) + b"".join(fc.report_analog(ch, True) for ch in range(6)))
        with trio.fail_after(2):
            await emu.wait_until(lambda: emu.reporting_channels == frozenset(range(6)))
            armed.append(trio.Event())
            await armed[-1].wait()  # the loop has read A0 and sends six reports from here
        if reset == "unplug":
            await emu.unplug(0.1)
        elif reset == "restart":
            await emu.on_host_attached()
        else:
            await emu.on_receive(fc.sampling_interval(20))
    with trio.fail_after(2):
        await emu.replugged()
        await emu.wait_until(lambda: not emu.host_attached)  # so that it boots again on the next open
    async with SerialPort.open(str(emu.link), 57600) as port:  # the board still samples and reports
        raw = RawHost(port)
        await raw.ask(b"", fc.FirmwareReport)
        await port.send_all(fc.sampling_interval(10))
        for ask in (fc.report_analog(0, True), b"", b""):  # the answer to enabling, then the loop's reports
            assert (await raw.ask(ask, fc.AnalogMessage)).pin == 0


async def test_a_board_already_too_hot_when_opened_refuses_lights_at_once(nursery, emu):
    # hot from the last session (or the sun): the handshake's own reading must lock lights out,
    # not the next report one sampling interval later
    emu.heat(40.0)  # 25 -> 65 degC, over the driver's 60 degC but under the board's 80 degC
    lights = await open_lights(emu, max_temperature_c=60.0, sampling_interval_ms=5000)
    nursery.start_soon(lights.run)
    assert lights.over_temperature
    with pytest.raises(OverTemperatureLockout):
        await lights.set_level("ir", 1.0)
    assert not emu.lights_on
    await next_event(lights, OverTemperature)
    await lights.aclose()


async def fails_then_goes_dark(lights, emu, error, message):
    """``run()`` fails with ``error``; closed then, as the illuminator actor does, the board goes dark."""
    with pytest.raises(error, match=message):
        with trio.fail_after(2):
            await lights.run()
    await lights.aclose()
    with trio.fail_after(1):
        await emu.wait_until(lambda: not emu.lights_on)


async def test_a_board_whose_every_answer_is_garbled_is_device_timeout_and_goes_dark(nursery, emu):
    # the board still hears the host (so the dead-man timer is fed) but everything it says is
    # broken: the driver is blind to the thermistor, so that must not pass for a live board
    lights = await open_lights(emu, timeout=0.5)
    await lights.set_level("ir", 1.0)
    emu.corrupt_next(10**9)
    emu.heat(40.0)  # 65 degC: over the driver's 60 degC, which it cannot see
    await fails_then_goes_dark(lights, emu, DeviceTimeout, "board silent for 0.5 s")
    assert sum(lights.stats.drops.values()) > 0


@pytest.mark.parametrize("fault, message", [("disarm", "armed its dead-man timer for 0 ms, not 300 ms"),
                                            ("no_ack", "dead-man feed not acknowledged within 0.5 s")])
async def test_a_board_that_no_longer_confirms_its_deadman_timer_is_reset_and_goes_dark(nursery, emu, fault,
                                                                                      message):
    # the board still reports its thermistor, so it is not silent; but a board that armed 0 ms,
    # or no longer says what it armed, may not switch the lights off when the host dies
    lights = await open_lights(emu, deadman_ms=300, timeout=0.5)
    await lights.set_level("ir", 1.0)
    emu.deadman_fault = fault
    await fails_then_goes_dark(lights, emu, ProtocolError, message)


async def test_a_board_that_stops_reporting_its_thermistor_is_reset_and_goes_dark(nursery, emu):
    # still acknowledging every dead-man feed, so not silent; but the driver no longer knows the
    # temperature, and the board heats past the limit unwatched
    lights = await open_lights(emu, deadman_ms=300, timeout=0.5)
    await lights.set_level("ir", 1.0)
    emu.analog_silent = True
    emu.heat(40.0)
    await fails_then_goes_dark(lights, emu, ProtocolError, "no thermistor reading for 1 s")
    assert lights.stats.deadman_acks > 0


async def test_a_board_reopened_while_cooling_stays_locked_out_until_it_has_cooled(nursery, emu):
    # over the limit, then cooling inside the hysteresis band when the board is reopened (a
    # reconnect after DeviceLost, a node restart): the new driver must not take it for cool
    lights = await open_lights(emu, max_temperature_c=60.0, hysteresis_c=5.0)
    nursery.start_soon(lights.run)
    emu.heat(40.0)  # 65 degC
    await next_event(lights, OverTemperature)
    emu.heat(-8.0)  # 57 degC: under the limit, not yet cooled below 55 degC
    await lights.aclose()
    again = await open_lights(emu, max_temperature_c=60.0, hysteresis_c=5.0)
    nursery.start_soon(again.run)
    assert again.over_temperature
    with pytest.raises(OverTemperatureLockout, match=r"below 55 °C"):
        await again.set_level("ir", 1.0)
    assert not emu.lights_on
    emu.heat(-10.0)
    await next_event(again, Cooled)
    await again.set_level("ir", 1.0)
    with trio.fail_after(1):
        await emu.wait_until(lambda: emu.lights_on)
    await again.aclose()
