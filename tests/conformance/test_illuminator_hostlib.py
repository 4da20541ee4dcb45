"""pyfirmata2 (PyPI, unchanged) against the illuminator emulator, as user code on a real Uno would run it.

``pyfirmata2.Arduino(path)`` opens the port, spends its fixed 5 s "auto-reset" wait
(BOARD_SETUP_WAIT_TIME), uses its built-in Uno layout and reads what arrived: the protocol version
and firmware report that StandardFirmata's setup() sends after every open. It never asks for them,
so this passes only because the emulator announces itself on open like a real (auto-resetting)
Uno does. Then: a PWM write through ``get_pin('d:9:p')``, analog reporting of A0 (the thermistor)
through the library's sampling thread, and its capability-query parser.

pyfirmata2's own capability parser (``Board.auto_setup``) fails on StandardFirmata >= 2.5's real
capability response: it expects ``INPUT 1 OUTPUT 1`` and StandardFirmata puts ``INPUT_PULLUP 1``
in between (berndporr/pyFirmata2 issue #19), so it finds no digital pins and then indexes past
them. The emulator answers like the firmware, so the library fails the same way here; the test
pins that down and checks the parts the parser does get right (PWM pins, analog channels).
"""
import queue
import time

import pytest
import trio

import pyfirmata2

from drivers.illuminator import IlluminatorEmulator, Thermistor
from drivers.illuminator import codec as fc


def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


async def test_pyfirmata2_arduino_pwm_analog_and_capabilities(nursery, tmp_path):
    emu = IlluminatorEmulator(tmp_path / "illuminator", seed=5)
    await nursery.start(emu.run)

    def pwm(pin):
        return trio.from_thread.run_sync(emu.pwm, pin)

    def user_code(path):
        board = pyfirmata2.Arduino(path)
        try:
            found = {"firmware": board.firmware, "firmware_version": board.firmware_version,
                     "firmata": board.get_firmata_version()}
            led = board.get_pin("d:9:p")
            led.write(0.5)
            wait_for(lambda: pwm(9) > 0)
            found["pwm_half"] = pwm(9)
            led.write(1.0)
            wait_for(lambda: pwm(9) == 1.0)
            led.write(0.0)
            wait_for(lambda: pwm(9) == 0.0)
            led.write(0.25)
            wait_for(lambda: pwm(9) > 0)
            found["pwm_quarter"] = pwm(9)

            readings = queue.Queue()
            board.analog[0].register_callback(readings.put)
            board.samplingOn(20)
            board.analog[0].enable_reporting()
            found["analog"] = [readings.get(timeout=2) for _ in range(5)]
            board.analog[0].disable_reporting()
            board.samplingOff()

            try:
                board.auto_setup()  # sends CAPABILITY_QUERY and parses the answer
                found["auto_setup_error"] = None
            except IndexError as exc:  # pyFirmata2 issue #19, as with a real StandardFirmata 2.5
                found["auto_setup_error"] = exc
            found["layout"] = board._layout
            return found
        finally:
            board.exit()

    with trio.fail_after(20):
        found = await trio.to_thread.run_sync(user_code, str(emu.link))

    assert found["firmware"] == "StandardFirmata.ino"
    assert found["firmware_version"] == (2, 5) and found["firmata"] == (2, 5)
    assert emu.endpoint.host_baudrate() == 57600
    assert found["pwm_half"] == pytest.approx(0.5, abs=1 / 255)  # write(0.5) -> duty 128/255
    assert found["pwm_quarter"] == pytest.approx(0.25, abs=1 / 255)
    assert emu.pin_modes[9] == fc.MODE_PWM

    # A0 reads the NTC divider: about mid-scale at 25 degC, as value / 1023
    expected = Thermistor().adc(25.0) / 1023
    assert all(v == pytest.approx(expected, abs=3 / 1023) for v in found["analog"]), found["analog"]
    assert emu.sampling_interval_ms == 20

    assert isinstance(found["auto_setup_error"], IndexError)
    layout = found["layout"]
    assert layout["pwm"] == (3, 5, 6, 9, 10, 11)
    assert layout["analog"] == (0, 1, 2, 3, 4, 5)
    assert layout["disabled"] == (0, 1)  # the serial pins report no modes
    # board.exit() disabled reporting; the port is closed again
    with trio.fail_after(2):
        await emu.wait_until(lambda: not emu.host_attached or emu.reporting_channels == frozenset())
