"""Independent TFmini host libraries, unchanged, against the TFmini emulator.

* ``adafruit_tfmini.TFmini`` (Adafruit CircuitPython TFmini) given a pyserial ``serial.Serial``, as on
  a Raspberry Pi: ``.distance`` (cm) and ``.strength`` parse our 9-byte frames and checksums.
  Its ``mode`` setter speaks the original TFmini's ``42 57 ...`` configuration protocol, which the
  TFmini-S / Plus do not have, so it is not exercised (``.mode`` reads Temp_L on an S / Plus).
* ``tfmini`` (PyPI 0.3.2, Sparkfun TFmini): its constructor always sends the original TFmini's
  ``42 57 02 00 ...`` enter/format/exit-config frames, which a TFmini-S / Plus ignores, and then
  scans the next 80 bytes of the line for a 0x42 "echo" (``reply[2]`` on ``None`` otherwise: a
  TypeError). On a real S / Plus it therefore only constructs when a 0x42 byte happens to be in
  the data stream, e.g. with a target at 66 cm (Dist_L = 0x42) -- which is how it is run here.
  After that, ``read()`` (STD mode) decodes our standard frames: metres and strength.
"""
import serial
import trio

from drivers.proximity.emulator import ProximityEmulator

import adafruit_tfmini
import tfmini


async def start(nursery, tmp_path, target_mm, **kwargs):
    emu = ProximityEmulator(tmp_path / "tfmini", seed=11, **kwargs)
    emu.set_target(target_mm)
    await nursery.start(emu.run)
    return emu


async def test_adafruit_tfmini_reads_distance_and_strength(nursery, tmp_path):
    emu = await start(nursery, tmp_path, 437)  # factory default unit: cm

    def user_code(path):
        with serial.Serial(path, 115200, timeout=1) as uart:
            sensor = adafruit_tfmini.TFmini(uart)
            distances = [sensor.distance for _ in range(20)]
            strength = sensor.strength
            return distances, strength

    with trio.fail_after(10):
        distances, strength = await trio.to_thread.run_sync(user_code, str(emu.link))
    assert all(abs(d - 43.7) <= 2 for d in distances), distances  # TFmini accuracy: ±1-2 cm
    assert 5000 < strength < 65535

    emu.set_target(None)  # the ceiling at 1200 mm, as the gate sees it with no hand

    def read_once(path):
        with serial.Serial(path, 115200, timeout=1) as uart:
            sensor = adafruit_tfmini.TFmini(uart)
            return sensor.distance, sensor.strength

    with trio.fail_after(10):
        d, s = await trio.to_thread.run_sync(read_once, str(emu.link))
    assert abs(d - 120) <= 3 and 100 <= s < strength


async def test_adafruit_tfmini_survives_corrupt_frames_and_garbage(nursery, tmp_path):
    emu = await start(nursery, tmp_path, 250)

    def user_code(path):
        with serial.Serial(path, 115200, timeout=1) as uart:
            sensor = adafruit_tfmini.TFmini(uart)
            sensor.distance  # the stream is flowing
            emu.corrupt_next(50)  # the library must skip frames whose checksum fails
            trio.from_thread.run_sync(emu.inject_garbage, 64)
            return [sensor.distance for _ in range(10)]

    with trio.fail_after(10):
        distances = await trio.to_thread.run_sync(user_code, str(emu.link))
    assert all(abs(d - 25) <= 2 for d in distances), distances


async def test_tfmini_package_std_mode(nursery, tmp_path):
    emu = await start(nursery, tmp_path, 660)  # 66 cm: Dist_L = 0x42, see the module docstring

    def user_code(path, moves):
        sensor = tfmini.TFmini(path, mode=tfmini.TFmini.STD_MODE)
        try:
            readings = []
            for target in moves:
                trio.from_thread.run_sync(emu.set_target, target)
                got = None
                for _ in range(5):  # read() returns None when its header scan gives up
                    got = sensor.read()
                    if got is not None:
                        break
                readings.append((got, sensor.strength))
            return readings
        finally:
            sensor.close()

    with trio.fail_after(20):
        readings = await trio.to_thread.run_sync(user_code, str(emu.link), [660, 250, None])
    (near66, s66), (near25, s25), (ceiling, s_ceiling) = readings
    assert abs(near66 - 0.66) <= 0.02 and abs(near25 - 0.25) <= 0.02 and abs(ceiling - 1.20) <= 0.03
    assert s25 > s66 > s_ceiling >= 100
    # the library's old-TFmini config frames reached the sensor and were ignored, as on an S / Plus
    assert list(emu.commands_received) == []
    assert emu.settings.fmt == 1  # still the standard cm format
