"""Firmata codec: byte-for-byte vectors from firmata/protocol protocol.md, and fuzzing of both decoders."""
import pytest
from hypothesis import given, settings, strategies as st

from drivers.illuminator import codec as fc


def decode_all(decoder, data: bytes) -> list:
    decoder.receive_data(data)
    return list(decoder)


def board(data: bytes) -> list:
    return decode_all(fc.BoardToHostDecoder(), data)


def host(data: bytes) -> list:
    return decode_all(fc.HostToBoardDecoder(), data)


def text7(text: str) -> bytes:
    return b"".join(bytes([ord(c) & 0x7F, ord(c) >> 7]) for c in text)


# ---- vectors: (section of protocol.md, encoded bytes, event, direction) ----------------------
VECTORS = [
    # "Data Message Expansion / Analog 14-bit data format": 0xE0|pin, LSB, MSB
    ("Analog 14-bit data format", fc.analog_message(9, 255), b"\xe9\x7f\x01", fc.AnalogMessage(9, 255)),
    ("Analog 14-bit data format", fc.analog_message(0, 1023), b"\xe0\x7f\x07", fc.AnalogMessage(0, 1023)),
    # "Two byte digital data format ... eg 0x92 is the third port, port 2"
    ("Two byte digital data format", fc.digital_message(2, 0x81), b"\x92\x01\x01", fc.DigitalMessage(2, 0x81)),
    # "Toggle analogIn reporting by pin": 0xC0-0xCF, disable(0)/enable(non-zero)
    ("Toggle analogIn reporting", fc.report_analog(0, True), b"\xc0\x01", fc.ReportAnalog(0, True)),
    # "Toggle digital port reporting ... eg 0xD1 is port 1 is pins 8 to 15"
    ("Toggle digital port reporting", fc.report_digital(1, False), b"\xd1\x00", fc.ReportDigital(1, False)),
    # "Set pin mode": 0xF4, pin, mode (PWM = 3)
    ("Set pin mode", fc.set_pin_mode(9, fc.MODE_PWM), b"\xf4\x09\x03", fc.SetPinMode(9, 3)),
    # "Set digital pin value (added in v2.5)": 0xF5, pin, value
    ("Set digital pin value", fc.set_digital_pin_value(13, 1), b"\xf5\x0d\x01", fc.SetDigitalPinValue(13, 1)),
    # "Request version report": 0xF9 alone from the host
    ("Request version report", fc.version_query(), b"\xf9", fc.VersionQuery()),
    # "Message Types": system reset 0xFF
    ("Message Types", fc.system_reset(), b"\xff", fc.SystemReset()),
    # "Query Firmware Name and Version": F0 79 F7
    ("Query Firmware Name and Version", fc.firmware_query(), b"\xf0\x79\xf7", fc.FirmwareQuery()),
    # "Capabilities query": F0 6B F7
    ("Capabilities query", fc.capability_query(), b"\xf0\x6b\xf7", fc.CapabilityQuery()),
    # "Analog mapping query": F0 69 F7
    ("Analog mapping query", fc.analog_mapping_query(), b"\xf0\x69\xf7", fc.AnalogMappingQuery()),
    # "Pin state query": F0 6D pin F7
    ("Pin state query", fc.pin_state_query(9), b"\xf0\x6d\x09\xf7", fc.PinStateQuery(9)),
    # "Extended Analog": F0 6F pin bits0-6 bits7-13 F7
    ("Extended Analog", fc.extended_analog(18, 200), b"\xf0\x6f\x12\x48\x01\xf7", fc.ExtendedAnalog(18, 200)),
    # "Sampling Interval": F0 7A LSB MSB F7, the Arduino default 19 ms
    ("Sampling Interval", fc.sampling_interval(19), b"\xf0\x7a\x13\x00\xf7", fc.SamplingInterval(19)),
    # docs/protocols/illuminator.md: dead-man arm, 200 ms = 0x48 + 1 * 128
    ("illuminator.md Dead-man", fc.deadman_arm(200), b"\xf0\x0d\x01\x48\x01\xf7", fc.DeadmanArm(200)),
]

BOARD_VECTORS = [
    # "Version report format": F9 major minor
    ("Version report format", fc.protocol_version(2, 5), b"\xf9\x02\x05", fc.ProtocolVersion(2, 5)),
    # "Receive Firmware Name and Version": F0 79 major minor name(LSB, MSB per char) F7
    ("Receive Firmware Name and Version", fc.firmware_report(2, 5, "StandardFirmata.ino"),
     b"\xf0\x79\x02\x05" + text7("StandardFirmata.ino") + b"\xf7",
     fc.FirmwareReport(2, 5, "StandardFirmata.ino")),
    # "Capabilities response": modes/resolutions per pin, 0x7F after each pin
    ("Capabilities response", fc.capability_response([[], [(0, 1), (1, 1), (3, 8)], [(2, 10)]]),
     b"\xf0\x6c\x7f\x00\x01\x01\x01\x03\x08\x7f\x02\x0a\x7f\xf7",
     fc.CapabilityResponse(((), ((0, 1), (1, 1), (3, 8)), ((2, 10),)))),
    # "Analog mapping response": one byte per pin, 127 = no analog
    ("Analog mapping response", fc.analog_mapping_response([None, None, 0, 1]),
     b"\xf0\x6a\x7f\x7f\x00\x01\xf7", fc.AnalogMappingResponse((None, None, 0, 1))),
    # "Pin state response": pin, mode, state bits 0-6, (optional) bits 7-13
    ("Pin state response", fc.pin_state_response(9, fc.MODE_PWM, 255),
     b"\xf0\x6e\x09\x03\x7f\x01\xf7", fc.PinStateResponse(9, 3, 255)),
    ("Pin state response", fc.pin_state_response(10, fc.MODE_PWM, 0),
     b"\xf0\x6e\x0a\x03\x00\xf7", fc.PinStateResponse(10, 3, 0)),
    # "String": F0 71 chars(LSB, MSB) F7
    ("String", fc.string_data("Hi"), b"\xf0\x71\x48\x00\x69\x00\xf7", fc.StringData("Hi")),
    # docs/protocols/illuminator.md: ack, trip (cause 1 = dead-man), clear (cause 2 = over-temperature)
    ("illuminator.md Dead-man", fc.deadman_ack(200), b"\xf0\x0d\x02\x48\x01\xf7", fc.DeadmanAck(200)),
    ("illuminator.md Safety", fc.safety_trip(fc.TRIP_DEADMAN), b"\xf0\x0d\x03\x01\xf7", fc.SafetyTrip(1)),
    ("illuminator.md Safety", fc.safety_clear(fc.TRIP_OVER_TEMPERATURE), b"\xf0\x0d\x04\x02\xf7", fc.SafetyClear(2)),
]


@pytest.mark.parametrize("section,encoded,expected,event", VECTORS, ids=[v[0] for v in VECTORS])
def test_host_to_board_vectors(section, encoded, expected, event):
    assert encoded == expected
    assert host(expected) == [event]
    assert fc.encode(event) == expected


@pytest.mark.parametrize("section,encoded,expected,event", BOARD_VECTORS, ids=[v[0] for v in BOARD_VECTORS])
def test_board_to_host_vectors(section, encoded, expected, event):
    assert encoded == expected
    assert board(expected) == [event]
    assert fc.encode(event) == expected


def test_direction_decides_f9_and_firmware_sysex():
    # the same bytes mean a request from the host and an answer from the board
    assert host(b"\xf9") == [fc.VersionQuery()]
    assert board(b"\xf9\x02\x05") == [fc.ProtocolVersion(2, 5)]
    assert board(b"\xf0\x79\xf7")[0].reason == fc.BAD_PAYLOAD
    assert host(b"\xf0\x79\x02\x05\x53\x00\xf7") == [fc.FirmwareQuery()]


def test_uno_capability_response_as_standardfirmata_sends_it():
    # StandardFirmata.ino CAPABILITY_QUERY on an Uno (Boards.h): digital pins 2-19 report INPUT,
    # PULLUP, OUTPUT, then ANALOG 10 (14-19), PWM 8 (3,5,6,9,10,11), SERVO 14, I2C 1 (18, 19)
    dig = b"\x00\x01\x0b\x01\x01\x01"
    pins = [b"\x7f", b"\x7f"]
    for pin in range(2, 20):
        caps = dig
        if pin >= 14:
            caps += b"\x02\x0a"
        if pin in (3, 5, 6, 9, 10, 11):
            caps += b"\x03\x08"
        caps += b"\x04\x0e"
        if pin in (18, 19):
            caps += b"\x06\x01"
        pins.append(caps + b"\x7f")
    raw = b"\xf0\x6c" + b"".join(pins) + b"\xf7"
    (event,) = board(raw)
    assert event.pins_with(fc.MODE_PWM) == (3, 5, 6, 9, 10, 11)
    assert event.pins_with(fc.MODE_ANALOG) == (14, 15, 16, 17, 18, 19)
    assert event.modes(0) == {} and event.modes(9)[fc.MODE_PWM] == 8
    assert fc.encode(event) == raw


def test_resync_on_command_byte_mid_message():
    # a command byte where data was expected ends the broken message (FirmataParser does the same)
    events = board(b"\xe0\x05" + b"\xf9\x02\x05")
    assert events == [fc.Malformed(fc.TRUNCATED, b"\xe0\x05"), fc.ProtocolVersion(2, 5)]
    events = board(b"\xf0\x71\x41" + b"\xf0\x0d\x02\x10\x00\xf7")
    assert [type(e) for e in events] == [fc.Malformed, fc.DeadmanAck]
    assert events[0].reason == fc.SYSEX_UNTERMINATED


def test_stray_bytes_and_unknown_commands_are_counted_once_per_run():
    decoder = fc.BoardToHostDecoder()
    events = decode_all(decoder, b"\x01\x02\x03\x85\xf7\xe9\x01\x00")
    assert [e.reason for e in events[:-1]] == [fc.STRAY_DATA, fc.UNKNOWN_COMMAND, fc.STRAY_END]
    assert events[-1] == fc.AnalogMessage(9, 1)
    assert decoder.dropped == {fc.STRAY_DATA: 1, fc.UNKNOWN_COMMAND: 1, fc.STRAY_END: 1}


def test_oversize_sysex_is_dropped_and_skipped_to_its_end():
    decoder = fc.HostToBoardDecoder()
    events = decode_all(decoder, b"\xf0\x71" + b"\x41\x00" * 100 + b"\xf7" + b"\xf9")
    assert [type(e) for e in events] == [fc.Malformed, fc.VersionQuery]
    assert events[0].reason == fc.SYSEX_TOO_LONG


def test_partial_input_waits_for_more():
    decoder = fc.BoardToHostDecoder()
    raw = fc.firmware_report(2, 5, "StandardFirmata.ino")
    for b in raw[:-1]:
        decoder.receive_data(bytes([b]))
        assert decoder.next_event() is None
    decoder.receive_data(raw[-1:])
    assert decoder.next_event() == fc.FirmwareReport(2, 5, "StandardFirmata.ino")


def test_buffer_is_bounded_when_nobody_drains_it():
    decoder = fc.BoardToHostDecoder()
    for _ in range(20):
        decoder.receive_data(b"\xe0\x01\x02" * 1000)
        assert decoder.buffered <= fc.MAX_BUFFER + decoder.max_sysex
    events = list(decoder)
    assert events[0].reason == fc.OVERFLOW
    assert events[-1] == fc.AnalogMessage(0, 0x101)


def test_encoders_refuse_values_that_do_not_fit():
    with pytest.raises(ValueError):
        fc.analog_message(16, 0)
    with pytest.raises(ValueError):
        fc.analog_message(3, 1 << 14)
    with pytest.raises(ValueError):
        fc.sysex(0x71, b"\x80")
    with pytest.raises(TypeError):
        fc.encode(fc.Malformed("x"))


# ---- fuzz -----------------------------------------------------------------------------------
u7 = st.integers(0, 127)
u14 = st.integers(0, fc.MAX_14BIT)
text = st.text(alphabet=st.characters(max_codepoint=fc.MAX_14BIT), max_size=30)

HOST_KNOWN = {fc.STRING_DATA, fc.PALMNODE_SAFETY, fc.REPORT_FIRMWARE, fc.CAPABILITY_QUERY,
              fc.ANALOG_MAPPING_QUERY, fc.PIN_STATE_QUERY, fc.EXTENDED_ANALOG, fc.SAMPLING_INTERVAL}
BOARD_KNOWN = {fc.STRING_DATA, fc.PALMNODE_SAFETY, fc.REPORT_FIRMWARE, fc.CAPABILITY_RESPONSE,
               fc.ANALOG_MAPPING_RESPONSE, fc.PIN_STATE_RESPONSE}

common_events = st.one_of(
    st.builds(fc.AnalogMessage, st.integers(0, 15), u14),
    st.builds(fc.DigitalMessage, st.integers(0, 15), u14),
    st.builds(fc.StringData, text),
)
host_events = st.one_of(
    common_events,
    st.builds(fc.ReportAnalog, st.integers(0, 15), st.booleans()),
    st.builds(fc.ReportDigital, st.integers(0, 15), st.booleans()),
    st.builds(fc.SetPinMode, u7, u7),
    st.builds(fc.SetDigitalPinValue, u7, st.integers(0, 1)),
    st.just(fc.VersionQuery()), st.just(fc.SystemReset()), st.just(fc.FirmwareQuery()),
    st.just(fc.CapabilityQuery()), st.just(fc.AnalogMappingQuery()),
    st.builds(fc.PinStateQuery, u7),
    st.builds(fc.ExtendedAnalog, u7, st.integers(0, 2**21 - 1)),
    st.builds(fc.SamplingInterval, u14),
    st.builds(fc.DeadmanArm, u14),
    st.builds(fc.UnknownSysex, u7.filter(lambda c: c not in HOST_KNOWN), st.binary(max_size=40).map(
        lambda b: bytes(x & 0x7F for x in b))),
)
capabilities = st.lists(st.lists(st.tuples(st.integers(0, 126), u7), max_size=6), max_size=24)
board_events = st.one_of(
    common_events,
    st.builds(fc.ProtocolVersion, u7, u7),
    st.builds(fc.FirmwareReport, u7, u7, text),
    capabilities.map(lambda pins: fc.CapabilityResponse(tuple(tuple(p) for p in pins))),
    st.lists(st.one_of(st.none(), st.integers(0, 126)), max_size=70).map(
        lambda chs: fc.AnalogMappingResponse(tuple(chs))),
    st.builds(fc.PinStateResponse, u7, u7, st.integers(0, 2**21 - 1)),
    st.builds(fc.PinStateResponse, u7, st.none(), st.just(0)),
    st.builds(fc.DeadmanAck, u14),
    st.builds(fc.SafetyTrip, u7),
    st.builds(fc.SafetyClear, u7),
    st.builds(fc.UnknownSysex, u7.filter(lambda c: c not in BOARD_KNOWN), st.binary(max_size=40).map(
        lambda b: bytes(x & 0x7F for x in b))),
)
DECODERS = [(fc.HostToBoardDecoder, host_events), (fc.BoardToHostDecoder, board_events)]


@pytest.mark.parametrize("make", [fc.HostToBoardDecoder, fc.BoardToHostDecoder])
@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=12))
def test_fuzz_random_bytes_never_raise_and_stay_bounded(make, chunks):
    decoder = make()
    for chunk in chunks:
        decoder.receive_data(chunk)
        assert decoder.buffered <= fc.MAX_BUFFER + decoder.max_sysex
        for event in decoder:
            assert not isinstance(event, Exception)
        assert decoder.buffered <= decoder.max_sysex + 3


@pytest.mark.parametrize("make,events", DECODERS, ids=["host-to-board", "board-to-host"])
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_fuzz_roundtrip_and_valid_frames_after_garbage(make, events, data):
    wanted = data.draw(st.lists(events, min_size=1, max_size=6))
    garbage = data.draw(st.binary(max_size=80))
    decoder = make()
    got = decode_all(decoder, garbage + b"".join(fc.encode(e) for e in wanted))
    assert got[-len(wanted):] == wanted


@pytest.mark.parametrize("make,events", DECODERS, ids=["host-to-board", "board-to-host"])
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_fuzz_truncated_frame_then_valid_frame(make, events, data):
    first, second = data.draw(events), data.draw(events)
    raw = fc.encode(first)
    cut = data.draw(st.integers(1, len(raw)))
    got = decode_all(make(), raw[:-cut] + fc.encode(second) if cut < len(raw) else fc.encode(second))
    assert got[-1] == second
    assert all(isinstance(e, fc.Malformed) for e in got[:-1])


@pytest.mark.parametrize("make", [fc.HostToBoardDecoder, fc.BoardToHostDecoder])
@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 5000), command=u7)
def test_fuzz_oversize_sysex_lengths(make, size, command):
    decoder = make()
    raw = fc.sysex(command, bytes(size)) + fc.system_reset()
    got = []
    for i in range(0, len(raw), 256):  # as a driver does: feed what arrived, drain events
        got += decode_all(decoder, raw[i:i + 256])
        assert decoder.buffered <= decoder.max_sysex + 256
    assert got[-1] == fc.SystemReset()
    if size + 1 > decoder.max_sysex:
        assert got[0].reason == fc.SYSEX_TOO_LONG
    assert decoder.buffered == 0
