"""Hypothesis fuzz of both TFmini decoders: nothing escapes, the buffer stays bounded, and good
frames after garbage still decode."""
from hypothesis import given, settings, strategies as st

from drivers.proximity import codec as c

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)

measurements = st.builds(c.encode_measurement, st.integers(-4, 12000), st.integers(0, 65535),
                         st.integers(0, 0xFFFF))
replies = st.one_of(
    st.builds(c.FirmwareVersion, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
    st.builds(c.FrameRateReply, st.integers(0, 0xFFFF)),
    st.builds(c.OutputEnableReply, st.booleans()),
    st.builds(c.SaveSettingsReply, st.booleans()),
    st.builds(c.BaudRateReply, st.integers(0, 0xFFFFFFFF)),
).map(c.encode_reply)
commands = st.one_of(
    st.just(c.GetFirmwareVersion()), st.just(c.SaveSettings()), st.just(c.SystemReset()),
    st.builds(c.SetFrameRate, st.integers(0, 0xFFFF)),
    st.builds(c.SetOutputFormat, st.sampled_from(list(c.OutputFormat))),
    st.builds(c.SetBaudRate, st.integers(0, 0xFFFFFFFF)),
    st.builds(c.EnableOutput, st.booleans()),
).map(c.encode_command)
#: garbage free of the bytes that can start a frame (59, 5A, ASCII digits and '-')
inert = st.binary(max_size=64).map(
    lambda b: bytes(x for x in b if x not in (0x59, 0x5A) and x not in b"-0123456789"))


def corrupt(frame: bytes) -> bytes:
    return frame[:-1] + bytes([(frame[-1] + 1) & 0xFF])


def drain(dec, data: bytes, chunk: int):
    events = []
    for i in range(0, len(data), max(chunk, 1)):
        dec.receive_data(data[i:i + max(chunk, 1)])
        while (e := dec.next_event()) is not None:
            events.append(e)
        assert dec.buffered <= c.MAX_BUFFER
    return events


@FUZZ
@given(st.binary(max_size=3000), st.integers(1, 64))
def test_random_bytes_never_raise_and_stay_bounded(data, chunk):
    for dec in (c.SensorDecoder(), c.CommandDecoder()):
        drain(dec, data, chunk)
        assert dec.buffered <= c.COMMAND_MAX_LEN  # whatever is left is at most one partial frame


@FUZZ
@given(st.lists(st.one_of(measurements, replies, commands, st.binary(max_size=20),
                          measurements.map(corrupt), measurements.map(lambda f: f[:5]),
                          st.binary(min_size=1, max_size=3).map(lambda b: b"\x5a\xff" + b),
                          st.binary(min_size=1, max_size=3).map(lambda b: b"\x5a\x10" + b)),
                max_size=40),
       st.integers(1, 50))
def test_mixed_streams_never_raise(parts, chunk):
    data = b"".join(parts)
    for dec in (c.SensorDecoder(), c.CommandDecoder()):
        events = drain(dec, data, chunk)
        for e in events:
            assert not isinstance(e, Exception)


@FUZZ
@given(inert, st.lists(st.one_of(measurements, replies), min_size=1, max_size=10), st.integers(1, 20))
def test_good_frames_after_garbage_all_decode(garbage, frames, chunk):
    events = drain(c.SensorDecoder(), garbage + b"".join(frames), chunk)
    good = [e for e in events if not isinstance(e, c.Malformed)]
    assert len(good) == len(frames)
    assert [c.encode_measurement(e.distance, e.strength, c.temperature_raw(e.temperature_c))
            if isinstance(e, c.Measurement) else c.encode_reply(e) for e in good] == frames
    drops = [e for e in events if isinstance(e, c.Malformed)]
    assert all(d.reason is c.DropReason.GARBAGE for d in drops)
    assert b"".join(d.data for d in drops) == garbage[:32] or len(garbage) > 32  # runs split by chunk


@FUZZ
@given(st.binary(max_size=40), st.lists(measurements, min_size=4, max_size=8), st.integers(1, 20))
def test_any_garbage_costs_at_most_two_frames(garbage, frames, chunk):
    # a false header inside the garbage can swallow at most COMMAND_MAX_LEN bytes (two data frames)
    events = drain(c.SensorDecoder(), garbage + b"".join(frames), chunk)
    good = [e for e in events if isinstance(e, c.Measurement)]
    assert len(frames) - 2 <= len(good) <= len(frames) + len(garbage) // 9 + 1


@FUZZ
@given(st.lists(measurements, min_size=1, max_size=10), st.data())
def test_each_corrupted_frame_is_one_checksum_drop(frames, data):
    bad = data.draw(st.sets(st.integers(0, len(frames) - 1)))
    wire = b"".join(corrupt(f) if i in bad else f for i, f in enumerate(frames))
    dec = c.SensorDecoder()
    events = drain(dec, wire, 9)
    assert sum(isinstance(e, c.Measurement) for e in events) >= len(frames) - len(bad)
    assert dec.drops[c.DropReason.CHECKSUM] >= len(bad)


@FUZZ
@given(st.lists(st.one_of(commands, inert, st.binary(max_size=12)), max_size=30), st.integers(1, 16))
def test_command_decoder_finds_every_command_after_inert_garbage(parts, chunk):
    events = drain(c.CommandDecoder(), b"".join(parts), chunk)
    assert all(isinstance(e, (c.Malformed, c.UnknownCommand) + c.Command.__args__) for e in events)


@FUZZ
@given(inert, st.lists(commands, min_size=1, max_size=8), st.integers(1, 16))
def test_commands_after_inert_garbage_all_decode(garbage, cmds, chunk):
    events = drain(c.CommandDecoder(), garbage + b"".join(cmds), chunk)
    got = [c.encode_command(e) for e in events if not isinstance(e, c.Malformed)]
    assert got == cmds
