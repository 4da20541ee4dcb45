"""Hypothesis: no input makes the PN532 frame decoders or the TLV parser misbehave."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.card_reader import codec, tlv
from drivers.card_reader.codec import ChipFrameDecoder, Command, HostFrameDecoder, Malformed, Response

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

payloads = st.binary(min_size=0, max_size=300)
chip_frames = st.builds(lambda cmd, data: codec.encode_response(cmd, data), st.integers(0, 0x7F).map(lambda x: 2 * x), st.binary(max_size=263))
host_frames = st.builds(lambda cmd, data: codec.encode_command(Command(cmd, data)), st.integers(0, 0xFF),
                        st.binary(max_size=263))


def mangle(frame: bytes, how: int, where: int) -> bytes:
    if not frame:
        return frame
    where %= len(frame)
    if how == 0:
        return frame[:where]  # truncated
    if how == 1:
        return frame[:where] + bytes([frame[where] ^ 0x01]) + frame[where + 1:]  # wrong checksum / byte
    return frame[:3] + b"\xff\xff\xff" + frame[6:]  # oversize extended length


def drain(decoder):
    out = []
    for _ in range(10_000):
        event = decoder.next_event()
        if event is None:
            return out
        out.append(event)
        assert decoder.buffered <= codec.MAX_BUFFER
    raise AssertionError("decoder did not come to rest")


@FAST
@given(noise=st.lists(payloads, max_size=6), chunk=st.integers(1, 64))
def test_random_bytes_never_escape(noise, chunk):
    for decoder in (ChipFrameDecoder(), HostFrameDecoder()):
        data = b"".join(noise)
        for i in range(0, len(data), chunk):
            decoder.receive_data(data[i:i + chunk])
            drain(decoder)
        assert decoder.buffered <= codec.MAX_BUFFER


@FAST
@given(frame=chip_frames, garbage=payloads, how=st.integers(0, 2), where=st.integers(0, 400), chunk=st.integers(1, 40))
def test_chip_decoder_recovers_after_damage(frame, garbage, how, where, chunk):
    good = codec.encode_response(0x4A, b"\x01\x01\x00\x04\x08\x04\xde\xad\xbe\xef")
    # a run of zeros ends any half-frame the damage started (the PN532 idles between frames)
    data = garbage + mangle(frame, how, where) + bytes(300) + good
    decoder = ChipFrameDecoder()
    got = []
    for i in range(0, len(data), chunk):
        decoder.receive_data(data[i:i + chunk])
        got += drain(decoder)
    assert got and got[-1] == Response(0x4A, good[7:-2])
    assert all(isinstance(e, (Malformed, Response, codec.Ack, codec.Nack, codec.ErrorFrame)) for e in got)


@FAST
@given(frame=host_frames, garbage=payloads, how=st.integers(0, 2), where=st.integers(0, 400))
def test_host_decoder_recovers_after_damage(frame, garbage, how, where):
    data = garbage + mangle(frame, how, where) + bytes(300) + codec.encode_command(Command(0x02))
    decoder = HostFrameDecoder()
    decoder.receive_data(data[:codec.MAX_BUFFER])
    got = drain(decoder)
    decoder.receive_data(data[codec.MAX_BUFFER:])
    got += drain(decoder)
    assert got[-1] == Command(0x02)


@FAST
@given(frame=chip_frames)
def test_valid_frames_roundtrip(frame):
    decoder = ChipFrameDecoder()
    decoder.receive_data(frame)
    [event] = drain(decoder)
    assert isinstance(event, Response) and codec.encode_response(event.command, event.data) == frame


tlv_leaf = st.builds(lambda tag, value: tlv.encode(tag, value),
                     st.sampled_from([0x5A, 0x57, 0x5F24, 0x9F38, 0x84, 0x87]), st.binary(max_size=40))
tlv_tree = st.recursive(tlv_leaf, lambda kids: st.builds(
    lambda tag, parts: tlv.encode(tag, *parts), st.sampled_from([0x6F, 0x70, 0x77, 0xA5, 0xBF0C, 0x61]),
    st.lists(kids, max_size=3)), max_leaves=8)


@FAST
@given(data=st.binary(max_size=400))
def test_tlv_parser_only_raises_tlv_error(data):
    try:
        objects = tlv.parse(data)
    except tlv.TlvError as exc:
        assert 0 <= exc.offset <= len(data)
        return
    for obj in objects:
        for node in obj.walk():
            assert len(node.value) <= len(data)


@FAST
@given(tree=tlv_tree, cut=st.integers(0, 1000))
def test_tlv_well_formed_trees_parse_and_truncations_fail(tree, cut):
    [obj] = tlv.parse(tree)
    assert tlv.encode(obj.tag, obj.value) == tree
    cut %= len(tree)
    if cut:
        try:
            tlv.parse(tree[:cut])
        except tlv.TlvError:
            pass
        else:  # a cut can only land cleanly after padding-like zero bytes, never mid-object
            raise AssertionError("a truncated data object parsed")
