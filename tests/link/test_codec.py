"""The link's framing and messages (docs/protocols/controller.md §2, §3, §7), byte for byte and fuzzed."""
from __future__ import annotations

import itertools
import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from palmnode.link.codec import (
    HEADER,
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_FRAME,
    Decoder,
    FrameTooLarge,
    decode_body,
    encode,
)
from palmnode.link.messages import (
    Ack,
    DropReason,
    Event,
    Goodbye,
    Hello,
    Malformed,
    Request,
    Response,
    from_wire,
)

SAMPLES = [
    Hello(version=1, node_id="gate-1", role="node", capabilities=("events", "enrol.begin")),
    Request(id=7, op="mode.set", args={"mode": "payment", "amount_cents": 450, "currency": "EUR"}),
    Response(id=7, ok=True, result={"mode": "payment"}, error=None),
    Response.failure(8, "unknown op\nfoo"),
    Event(seq=3, key="gate-1:3", kind="identified", node_id="gate-1", at=1.5,
          data={"person_id": "p1", "palm": "right", "score": 0.9, "latency_ms": 80.0, "mode": "entry"}),
    Ack(seq=3, key="gate-1:3"),
    Goodbye(reason="frame too big"),
    Request(id=1, op="person.delete", args={"card_digest": b"\x00\xff" * 16}),
]


def drain(decoder: Decoder) -> list:
    out = []
    while (ev := decoder.next_event()) is not None:
        out.append(ev)
    return out


def test_vector_byte_for_byte():
    # §2: uint32 big-endian body length, then the msgpack map (fixmap of 3: type, seq, key)
    frame = encode(Ack(seq=3, key="k"))
    body = b"\x83\xa4type\xa3ack\xa3seq\x03\xa3key\xa1k"
    assert frame == struct.pack(">I", len(body)) + body
    assert frame[:4] == b"\x00\x00\x00\x15"


def test_bytes_travel_as_bin_and_str_as_str():
    body = encode(Request(id=1, op="x", args={"b": b"\x01", "s": "é"}))[4:]
    assert b"\xc4\x01\x01" in body  # §2: bin 8 (use_bin_type)
    assert b"\xa2\xc3\xa9" in body  # fixstr, UTF-8


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    dec = Decoder()
    dec.receive_data(encode(msg))
    assert drain(dec) == [msg]
    assert dec.buffered == 0


def test_many_frames_split_at_every_byte():
    stream = b"".join(encode(m) for m in SAMPLES)
    dec = Decoder()
    got = []
    for i in range(len(stream)):
        dec.receive_data(stream[i:i + 1])
        got += drain(dec)
    assert got == SAMPLES


def test_oversize_length_refused_from_the_header_alone():
    dec = Decoder()
    dec.receive_data(HEADER.pack(MAX_FRAME + 1) + b"x" * 10)
    assert dec.buffered == 0  # nothing of the body is kept
    [bad] = drain(dec)
    assert bad.kind == DropReason.OVERSIZE
    assert "exceeds" in bad.reason
    dec.receive_data(encode(SAMPLES[0]))  # terminal: later data is ignored
    assert drain(dec) == [] and dec.failed == bad


def test_frame_exactly_at_cap_decodes():
    cap = 1000
    msg = Request(id=1, op="x", args={"p": b""})
    overhead = len(encode(msg)) - 4
    fill = cap - overhead - 1  # bin8 (2-byte header) -> bin16 (3 bytes) past 255 bytes
    msg = Request(id=1, op="x", args={"p": b"a" * fill})
    frame = encode(msg, max_frame=cap)
    assert len(frame) - 4 == cap
    dec = Decoder(max_frame=cap)
    dec.receive_data(frame)
    assert drain(dec) == [msg]
    with pytest.raises(FrameTooLarge):
        encode(Request(id=1, op="x", args={"p": b"a" * (fill + 1)}), max_frame=cap)


@pytest.mark.parametrize(
    "body, kind",
    [
        (b"", DropReason.MSGPACK),
        (b"\xc1", DropReason.MSGPACK),  # never used byte
        (msgpack.packb({"type": "ack", "seq": 1, "key": "k"}) + b"\x00", DropReason.MSGPACK),
        (msgpack.packb({1: 2}), DropReason.MSGPACK),  # non-str key
        (b"\x81\xa1a\xa2\xff\xfe", DropReason.MSGPACK),  # bad UTF-8
        (msgpack.packb({"type": "ack", "x": msgpack.ExtType(5, b"z")}), DropReason.MSGPACK),
        (msgpack.packb({"type": "ack", "x": msgpack.Timestamp(1, 0)}), DropReason.MSGPACK),
        (b"\x91" * (MAX_DEPTH + 1) + b"\xc0", DropReason.MSGPACK),
        (msgpack.packb([1, 2]), DropReason.SHAPE),
        (msgpack.packb({"type": "nope"}), DropReason.SHAPE),
        (msgpack.packb({"type": "ack", "seq": 1}), DropReason.SHAPE),
        (msgpack.packb({"type": "ack", "seq": True, "key": "k"}), DropReason.SHAPE),
        (msgpack.packb({"type": "ack", "seq": -1, "key": "k"}), DropReason.SHAPE),
        (msgpack.packb({"type": "ack", "seq": 1, "key": b"k"}, use_bin_type=True), DropReason.SHAPE),
        (msgpack.packb({"type": "response", "id": 1, "ok": False, "result": {}, "error": None}), DropReason.SHAPE),
        (msgpack.packb({"type": "hello", "version": 1, "node_id": "n", "role": "boss", "capabilities": []}),
         DropReason.SHAPE),
        (msgpack.packb({"type": "event", "seq": 1, "key": "k", "kind": "x", "node_id": "n", "at": float("nan"),
                        "data": {}}), DropReason.SHAPE),
        (msgpack.packb({"type": "request", "id": 1, "op": "x", "args": []}), DropReason.SHAPE),
        # strict_map_key lets bytes keys through; the link's maps have str keys only
        (msgpack.packb({"type": "ack", "seq": 1, "key": "k", b"k": 1}, use_bin_type=True), DropReason.MSGPACK),
        (msgpack.packb({"type": "event", "seq": 1, "key": "k", "kind": "x", "node_id": "n", "at": 1.0,
                        "data": {"extra": {b"k": 1}}}, use_bin_type=True), DropReason.MSGPACK),
    ],
)
def test_malformed_bodies(body, kind):
    bad = decode_body(body)
    assert isinstance(bad, Malformed), bad
    assert bad.kind == kind, bad
    assert "\n" not in bad.reason
    dec = Decoder()
    dec.receive_data(HEADER.pack(len(body)) + body + encode(SAMPLES[0]))
    assert drain(dec) == [bad]


def test_deep_nesting_within_the_limit_is_fine():
    args = cur = {}
    for _ in range(MAX_DEPTH - 2):
        cur["a"] = {}
        cur = cur["a"]
    assert decode_body(encode(Request(id=1, op="x", args=args))[4:]) == Request(id=1, op="x", args=args)


def peak_decoding(body: bytes) -> tuple[object, float]:
    """What ``decode_body`` makes of ``body`` and the most memory it held meanwhile (MB)."""
    tracemalloc.start()
    try:
        result = decode_body(body)
        return result, tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def array32(count: int, item: bytes) -> bytes:
    return b"\xdd" + count.to_bytes(4, "big") + item * count


def request_body(args_value: bytes) -> bytes:
    """A request frame body whose args map holds ``{"a": <args_value, raw msgpack>}``."""
    return b"\x84\xa4type\xa7request\xa2id\x01\xa2op\xa1x\xa4args\x81\xa1a" + args_value


@pytest.mark.parametrize("item", [b"\x90", b"\x80"], ids=["empty arrays", "empty maps"])
def test_a_frame_of_many_small_containers_is_refused_before_it_is_all_unpacked(item):
    # a 1 MiB body of a million empty arrays is ~100 MB of Python lists: the decoder stops counting
    # at MAX_CONTAINERS instead of unpacking it all and then looking at it
    body = request_body(array32(MAX_FRAME - 64, item))
    assert len(body) <= MAX_FRAME
    bad, peak_mb = peak_decoding(body)
    assert bad == Malformed(f"more than {MAX_CONTAINERS} maps and arrays", DropReason.MSGPACK)
    assert peak_mb < 16, peak_mb
    many = request_body(array32(MAX_CONTAINERS - 3, b"\x90"))  # + the body's map, args and the array
    assert isinstance(decode_body(many), Request)


def test_checking_a_frame_of_a_million_values_takes_no_memory_per_value():
    # a valid request whose args hold a million nils: its list is 8 MB; looking at every value for
    # its type must not cost another object per value
    message, peak_mb = peak_decoding(request_body(array32(MAX_FRAME - 64, b"\xc0")))
    assert isinstance(message, Request) and len(message.args["a"]) == MAX_FRAME - 64
    assert peak_mb < 20, peak_mb


def test_nesting_past_msgpacks_own_limit_is_named():
    bad = decode_body(b"\x91" * 5000 + b"\xc0")
    assert bad == Malformed(f"nesting deeper than {MAX_DEPTH}", DropReason.MSGPACK)


def test_unknown_fields_are_ignored():
    wire = Ack(seq=1, key="k").to_wire() | {"extra": [1, 2]}
    assert from_wire(wire) == Ack(seq=1, key="k")


def test_int_at_becomes_float():
    ev = decode_body(msgpack.packb({"type": "event", "seq": 1, "key": "k", "kind": "x", "node_id": "n",
                                    "at": 5, "data": {}}))
    assert ev.at == 5.0 and type(ev.at) is float


def test_truncated_at_end_of_stream():
    frame = encode(SAMPLES[1])
    dec = Decoder()
    dec.receive_data(frame[:-1])
    assert drain(dec) == []
    dec.receive_data(b"")
    [bad] = drain(dec)
    assert bad.kind == DropReason.TRUNCATED


def test_clean_end_of_stream_is_not_malformed():
    dec = Decoder()
    dec.receive_data(encode(SAMPLES[0]))
    dec.receive_data(b"")
    assert drain(dec) == [SAMPLES[0]]
    assert dec.failed is None


def test_buffer_overflow_when_caller_does_not_drain():
    dec = Decoder(max_frame=100, max_buffer=200)
    frame = encode(Ack(seq=1, key="k"))
    for _ in range(200 // len(frame)):
        dec.receive_data(frame)
    dec.receive_data(frame)
    assert dec.buffered == 0
    assert next(m for m in drain(dec) if isinstance(m, Malformed)).kind == DropReason.OVERFLOW


def test_constructing_a_bad_message_is_a_programming_error():
    with pytest.raises(TypeError):
        Request(id="1", op="x", args={})
    with pytest.raises(ValueError):
        Response(id=1, ok=False, result={}, error=None)
    with pytest.raises(TypeError):
        Hello(version=1, node_id="", role="node")


# ---- fuzz: no exception escapes, the buffer stays bounded, Malformed is terminal -----------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
small_cap = st.integers(min_value=1, max_value=4096)

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


def _check(dec: Decoder, chunks: list[bytes]) -> list:
    events = []
    for chunk in chunks:
        dec.receive_data(chunk)
        assert dec.buffered <= dec.max_buffer
        events += drain(dec)
    dec.receive_data(b"")
    events += drain(dec)
    bad = [i for i, e in enumerate(events) if isinstance(e, Malformed)]
    assert len(bad) <= 1 and (not bad or bad[0] == len(events) - 1)  # terminal, reported once
    return events


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20), small_cap)
def test_fuzz_random_bytes(chunks, cap):
    _check(Decoder(max_frame=cap, max_buffer=cap + 4 + 300), chunks)


@FUZZ
@given(st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=6), st.data())
def test_fuzz_truncated_and_split_frames(msgs, data):
    stream = b"".join(encode(m) for m in msgs)
    cut = data.draw(st.integers(0, len(stream)))
    pieces = data.draw(st.lists(st.integers(0, cut), max_size=8))  # chunk bounds; empty chunks are dropped below
    bounds = sorted({0, cut, *pieces})
    events = _check(Decoder(), [stream[a:b] for a, b in itertools.pairwise(bounds)])
    good = [e for e in events if not isinstance(e, Malformed)]
    ends = [sum(len(encode(m)) for m in msgs[: i + 1]) for i in range(len(msgs))]
    assert good == msgs[: sum(1 for e in ends if e <= cut)]
    if cut in (0, *ends):
        assert all(not isinstance(e, Malformed) for e in events)
    else:
        assert events[-1].kind == DropReason.TRUNCATED


@FUZZ
@given(st.integers(min_value=1, max_value=2**32 - 1), small_cap, st.binary(max_size=64))
def test_fuzz_lengths(length, cap, tail):
    events = _check(Decoder(max_frame=cap), [HEADER.pack(length) + tail])
    if length > cap:
        assert events[-1].kind == DropReason.OVERSIZE


@FUZZ
@given(msgpack_values)
def test_fuzz_valid_msgpack_of_wrong_shapes(value):
    body = msgpack.packb(value, use_bin_type=True)
    dec = Decoder()
    events = _check(dec, [HEADER.pack(len(body)) + body] if body else [])
    for ev in events:
        assert isinstance(ev, (Malformed, Hello, Request, Response, Event, Ack, Goodbye))


@FUZZ
@given(st.sampled_from(SAMPLES), st.dictionaries(st.text(max_size=8), msgpack_values, max_size=4),
       st.sets(st.text(max_size=10), max_size=3))
def test_fuzz_mutated_messages(msg, extra, drop):
    wire = msg.to_wire() | extra
    for key in drop:
        wire.pop(key, None)
    body = msgpack.packb(wire, use_bin_type=True)
    _check(Decoder(), [HEADER.pack(len(body)) + body])
