"""The REPL line protocol, sans-IO: line splitting with a bounded buffer, request parsing, encoding."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palmnode.repl.protocol import (Line, LineDecoder, LineTooLong, Malformed, Request, encode, encode_error,
                                    encode_ok, encode_request, parse_request, split_line)


def drain(decoder):
    events = []
    while (ev := decoder.next_event()) is not None:
        events.append(ev)
    return events


def test_lines_split_across_chunks_and_crlf():
    d = LineDecoder(max_line=16)
    d.receive_data(b'{"cmd":')
    assert drain(d) == []
    d.receive_data(b'"health"}\r\nsecond\nthi')
    assert drain(d) == [Line(b'{"cmd":"health"}'), Line(b"second")]
    d.receive_data(b"rd\n")
    assert drain(d) == [Line(b"third")]


def test_an_over_long_line_is_reported_once_and_skipped():
    d = LineDecoder(max_line=8)
    d.receive_data(b"x" * 5 + b"\n" + b"y" * 30)
    assert drain(d) == [Line(b"xxxxx")]
    assert d.buffered <= 10
    d.receive_data(b"y" * 30)
    assert drain(d) == []
    d.receive_data(b"yy\nok\n")
    assert drain(d) == [LineTooLong(62), Line(b"ok")]
    d.receive_data(b"z" * 9 + b"\n")  # a complete line one byte too long
    assert drain(d) == [LineTooLong(9)]
    assert d.dropped_lines == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=20))
def test_fuzz_random_chunks_never_raise_and_the_buffer_stays_bounded(chunks):
    d = LineDecoder(max_line=32)
    for chunk in chunks:
        d.receive_data(chunk)
        for ev in drain(d):
            assert isinstance(ev, (Line, LineTooLong))
            if isinstance(ev, Line):
                assert b"\n" not in ev.data and len(ev.data) <= 32
        assert d.buffered <= 34
    d.receive_data(b'\n{"cmd": "health"}\n')
    assert drain(d)[-1] == Line(b'{"cmd": "health"}')  # garbage never stops the next line


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
                                max_size=20), max_size=10),
       st.integers(1, 7))
def test_lines_come_out_whatever_the_chunking(lines, step):
    data = b"".join(line.encode() + b"\n" for line in lines)
    d = LineDecoder(max_line=200)
    out = []
    for i in range(0, len(data), step):
        d.receive_data(data[i:i + step])
        out += drain(d)
    assert out == [Line(line.encode()) for line in lines]


@pytest.mark.parametrize("line, expected", [
    (b'{"cmd": "health"}', Request("health")),
    (b'{"cmd": "light", "args": ["ir", "0.5"]}', Request("light", ("ir", "0.5"))),
    (b'health', Malformed("request is not JSON (Expecting value at column 1)")),
    (b'\xff', Malformed("request is not UTF-8")),
    (b'["health"]', Malformed('a request is a JSON object: {"cmd": "health", "args": []}')),
    (b'{"args": []}', Malformed('missing "cmd": a request is {"cmd": "health", "args": []}')),
    (b'{"cmd": 3}', Malformed('missing "cmd": a request is {"cmd": "health", "args": []}')),
    (b'{"cmd": "light", "args": ["ir", 1]}', Malformed('"args" must be a list of strings')),
    (b'{"cmd": "x", "args": "ir"}', Malformed('"args" must be a list of strings')),
    (b'{"cmd": "x", "id": 1}', Malformed("unknown request field 'id' (known: cmd, args)")),
])
def test_parse_request(line, expected):
    assert parse_request(line) == expected


@pytest.mark.parametrize("line, reason", [
    (b'{"cmd": "health", "x": ' + b"1" * 5000 + b"}", "request is not usable JSON (Exceeds the limit (4300 digits)"),
    (b"[" * 30000 + b"]" * 30000, "request is nested too deeply"),
])
def test_a_request_json_cannot_convert_is_malformed_not_an_exception(line, reason):
    """Within MAX_LINE yet beyond what json.loads converts (it raises a plain ValueError or a
    RecursionError, not a JSONDecodeError): a one-line reason, the session goes on."""
    got = parse_request(line)
    assert isinstance(got, Malformed) and got.reason.startswith(reason) and "\n" not in got.reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_request_fuzz_never_raises(data):
    assert isinstance(parse_request(data), (Request, Malformed))


def test_encoding_is_one_strict_json_line():
    assert encode_request("light", "ir", "1") == b'{"cmd":"light","args":["ir","1"]}\n'
    assert json.loads(encode_ok({"p50": float("nan"), "x": [float("inf")]}, "t")) == {
        "ok": True, "result": {"p50": None, "x": [None]}, "text": "t"}
    assert encode_error("two\nlines") == b'{"ok":false,"error":"two lines"}\n'
    assert encode({"text": "a\nb"}).count(b"\n") == 1


def test_split_line():
    assert split_line("  light ir 0.5 ") == ("light", ("ir", "0.5"))
    assert split_line('follow "decision, feedback"') == ("follow", ("decision, feedback",))
    assert split_line("py  for i in 'a b':  ") == ("py", ("for i in 'a b':",))
    assert split_line("py") == ("py", ())
    assert split_line("") == ("", ())
    with pytest.raises(ValueError, match="cannot split the line"):
        split_line('capture "unclosed')
