"""TFmini-S / TFmini Plus codec: vectors byte for byte from the manuals.

"Plus" = Benewake TFmini Plus manual SJ-PM-TFmini Plus-T-01 A04; "S" = TFmini-S manual A01.
"""
import pytest

from drivers.proximity import codec as c

H = bytes.fromhex


# Plus §7.4 / S Table 12: the command column, byte for byte
@pytest.mark.parametrize("command, wire", [
    (c.GetFirmwareVersion(), "5A 04 01 5F"),
    (c.SystemReset(), "5A 04 02 60"),
    (c.SetFrameRate(1000), "5A 06 03 E8 03 4E"),  # Plus §7.2, the little-endian example
    (c.SetFrameRate(100), "5A 06 03 64 00 C7"),
    (c.SetFrameRate(0), "5A 06 03 00 00 63"),
    (c.TriggerDetection(), "5A 04 04 62"),
    (c.SetOutputFormat(c.OutputFormat.STANDARD_CM), "5A 05 05 01 65"),
    (c.SetOutputFormat(c.OutputFormat.PIXHAWK), "5A 05 05 02 66"),
    (c.SetOutputFormat(c.OutputFormat.STANDARD_MM), "5A 05 05 06 6A"),
    (c.SetBaudRate(256000), "5A 08 06 00 E8 03 00 53"),  # S Table 12 note: 256000 = 00 E8 03 00
    (c.SetBaudRate(115200), "5A 08 06 00 C2 01 00 2B"),
    (c.EnableOutput(False), "5A 05 07 00 66"),
    (c.EnableOutput(True), "5A 05 07 01 67"),
    (c.RestoreFactorySettings(), "5A 04 10 6E"),
    (c.SaveSettings(), "5A 04 11 6F"),
])
def test_commands_encode_and_decode_as_the_manual_prints(command, wire):
    assert c.encode_command(command) == H(wire)
    dec = c.CommandDecoder()
    dec.receive_data(H(wire))
    assert dec.next_event() == command
    assert dec.next_event() is None


# Plus §7.4 response column. Echoed replies are the command bytes. The manuals print the status
# replies of 0x02/0x10/0x11 with the command's checksum (e.g. "5A 05 11 00 6F"), one less than
# the §7.3 rule gives; the rule is what real sensors send (host libraries that verify reply
# checksums, e.g. budryerson's TFMini-Plus, work with them), so the vectors follow the rule.
@pytest.mark.parametrize("reply, wire", [
    (c.FirmwareVersion(3, 2, 1), "5A 07 01 01 02 03 68"),  # datasheet: "01 02 03 represent V3.2.1"
    (c.SystemResetReply(ok=True), "5A 05 02 00 61"),
    (c.SystemResetReply(ok=False), "5A 05 02 01 62"),
    (c.FrameRateReply(1000), "5A 06 03 E8 03 4E"),
    (c.OutputFormatReply(c.OutputFormat.STANDARD_MM), "5A 05 05 06 6A"),
    (c.BaudRateReply(256000), "5A 08 06 00 E8 03 00 53"),
    (c.OutputEnableReply(True), "5A 05 07 01 67"),
    (c.OutputEnableReply(False), "5A 05 07 00 66"),
    (c.RestoreFactoryReply(ok=True), "5A 05 10 00 6F"),
    (c.SaveSettingsReply(ok=True), "5A 05 11 00 70"),
    (c.SaveSettingsReply(ok=False), "5A 05 11 01 71"),
])
def test_replies_encode_and_decode(reply, wire):
    assert c.encode_reply(reply) == H(wire)
    dec = c.SensorDecoder()
    dec.receive_data(H(wire))
    assert dec.next_event() == reply
    assert dec.next_event() is None


def test_firmware_version_is_v3_v2_v1():
    assert str(c.FirmwareVersion(major=3, minor=2, patch=1)) == "3.2.1"


# Plus §5.3 Table 7: 59 59 Dist_L Dist_H Strength_L Strength_H Temp_L Temp_H Checksum
def test_data_frame_layout_checksum_and_temperature():
    # 100 (cm or mm), strength 1000, temperature code 0x0920 = 2336 -> 2336/8 - 256 = 36.0 °C
    wire = H("59 59 64 00 E8 03 20 09 2A")
    assert (0x59 + 0x59 + 0x64 + 0x00 + 0xE8 + 0x03 + 0x20 + 0x09) & 0xFF == 0x2A
    assert c.encode_measurement(100, 1000, 0x0920) == wire
    assert c.temperature_raw(36.0) == 0x0920
    dec = c.SensorDecoder()
    dec.receive_data(wire)
    m = dec.next_event()
    assert m == c.Measurement(100, 1000, 36.0, c.SignalStatus.OK) and m.reliable


@pytest.mark.parametrize("wire, distance, strength, status", [
    # Plus §5.4: strength < 100 or == 65535 -> unreliable, distance set to 0
    # (e.g. 59+59+00+00+32+00+20+09 = 0x10D -> checksum 0D)
    ("59 59 00 00 32 00 20 09 0D", 0, 50, c.SignalStatus.WEAK),
    ("59 59 00 00 FF FF 20 09 D9", 0, 65535, c.SignalStatus.SATURATED),
    ("59 59 00 00 64 00 20 09 3F", 0, 100, c.SignalStatus.OK),  # 100 itself is reliable
    # S §5.4 Table 8: -1 weak, -2 (strength -1) saturated, -4 ambient light
    ("59 59 FF FF 32 00 20 09 0B", -1, 50, c.SignalStatus.WEAK),
    ("59 59 FE FF FF FF 20 09 D6", -2, 65535, c.SignalStatus.SATURATED),
    ("59 59 FC FF D0 07 20 09 AD", -4, 2000, c.SignalStatus.AMBIENT_LIGHT),
])
def test_unreliable_readings_per_manual(wire, distance, strength, status):
    assert c.encode_measurement(distance, strength, 0x0920) == H(wire)
    dec = c.SensorDecoder()
    dec.receive_data(H(wire))
    m = dec.next_event()
    assert (m.distance, m.strength, m.status) == (distance, strength, status)
    assert m.reliable is (status is c.SignalStatus.OK)


def test_pixhawk_line_is_metres():
    # Plus §5.3: "if the measurement distance is 1.21m, the string 1.21 will be output, followed by \r\n"
    assert c.encode_pixhawk(1.21) == b"1.21\r\n"
    dec = c.SensorDecoder()
    dec.receive_data(b"1.21\r\n0.35\r\n")
    assert dec.next_event() == c.PixhawkDistance(1.21)
    assert dec.next_event() == c.PixhawkDistance(0.35)
    assert dec.next_event() is None


def test_interleaved_stream_split_anywhere():
    frames = [c.encode_measurement(250, 15000, 0x0920), c.encode_reply(c.FirmwareVersion(2, 0, 6)),
              c.encode_measurement(251, 14000, 0x0921), c.encode_reply(c.OutputEnableReply(True))]
    wire = b"".join(frames)
    for split in range(len(wire) + 1):
        dec = c.SensorDecoder()
        got = []
        for part in (wire[:split], wire[split:]):
            dec.receive_data(part)
            while (e := dec.next_event()) is not None:
                got.append(e)
        assert [type(e) for e in got] == [c.Measurement, c.FirmwareVersion, c.Measurement,
                                          c.OutputEnableReply]


def test_garbage_then_corrupt_frame_then_good_frame():
    good = c.encode_measurement(300, 9000, 0x0920)
    bad = good[:-1] + bytes([good[-1] ^ 1])
    dec = c.SensorDecoder()
    dec.receive_data(b"\x00\x11\x22" + bad + good)
    events = []
    while (e := dec.next_event()) is not None:
        events.append(e)
    assert events == [c.Malformed(c.DropReason.GARBAGE, b"\x00\x11\x22"),
                      c.Malformed(c.DropReason.CHECKSUM, bad),
                      c.Measurement(300, 9000, 36.0)]
    assert dec.drops == {c.DropReason.GARBAGE: 1, c.DropReason.CHECKSUM: 1}


def test_old_tfmini_config_frames_are_garbage_to_the_s_and_plus():
    # the original TFmini's "42 57 02 00 00 00 01 02" (enter config mode) is not a TFmini-S/Plus command
    dec = c.CommandDecoder()
    dec.receive_data(H("42 57 02 00 00 00 01 02") + c.encode_command(c.SaveSettings()))
    assert dec.next_event() == c.Malformed(c.DropReason.GARBAGE, H("42 57 02 00 00 00 01 02"))
    assert dec.next_event() == c.SaveSettings()


def test_unknown_but_wellformed_frames_are_typed():
    io_mode = c.command_frame(0x3B, H("00 00 00 00 00"))  # Plus §7.4 I/O mode, 9 bytes
    dec = c.CommandDecoder()
    dec.receive_data(io_mode)
    assert dec.next_event() == c.UnknownCommand(0x3B, H("00 00 00 00 00"))
    sdec = c.SensorDecoder()
    sdec.receive_data(io_mode)
    assert sdec.next_event() == c.UnknownFrame(0x3B, H("00 00 00 00 00"))


def test_buffer_is_bounded_and_overflow_reported():
    dec = c.SensorDecoder()
    dec.receive_data(b"\x5a\x10" + b"\x00" * (c.MAX_BUFFER * 3))
    assert dec.buffered <= c.MAX_BUFFER
    assert dec.next_event().reason is c.DropReason.OVERFLOW
    while dec.next_event() is not None:
        pass
    assert dec.buffered < c.DATA_FRAME_LEN


def test_command_validation():
    with pytest.raises(ValueError):
        c.SetFrameRate(-1)
    with pytest.raises(ValueError):
        c.SetBaudRate(1 << 32)
