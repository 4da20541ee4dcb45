"""Camera codec: MJPEG/HTTP framing byte for byte, and the request decoder under fuzz."""
from hypothesis import given, settings, strategies as st

from drivers.camera import codec
from drivers.camera.codec import Malformed, Request, RequestDecoder

# the exact request OpenCV 5's FFmpeg backend (libavformat 62, http.c http_connect) sends
FFMPEG_REQUEST = (b"GET /stream.mjpg HTTP/1.1\r\nUser-Agent: Lavf/62.12.101\r\nAccept: */*\r\n"
                  b"Range: bytes=0-\r\nConnection: close\r\nHost: 127.0.0.1:45355\r\n"
                  b"Icy-MetaData: 1\r\n\r\n")


def test_stream_head_bytes():
    # RFC 9112 §4 status line, §6.3 (8) body delimited by close; RFC 2046 §5.1.1 boundary parameter
    assert codec.stream_response_head() == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: multipart/x-mixed-replace; boundary=palmnodeframe\r\n"
        b"Cache-Control: no-cache, no-store, must-revalidate\r\n"
        b"Pragma: no-cache\r\n"
        b"Connection: close\r\n\r\n")


def test_part_bytes():
    # RFC 2046 §5.1.1: "--" boundary CRLF, part fields, empty line, body; CRLF before the next delimiter
    jpeg = b"\xff\xd8abc\xff\xd9"
    assert codec.mjpeg_part(jpeg) == (
        b"--palmnodeframe\r\nContent-Type: image/jpeg\r\nContent-Length: 7\r\n\r\n"
        b"\xff\xd8abc\xff\xd9\r\n")
    assert codec.mjpeg_part(b"", boundary="b") == b"--b\r\nContent-Type: image/jpeg\r\nContent-Length: 0\r\n\r\n\r\n"


def test_snapshot_and_error_bytes():
    assert codec.snapshot_response(b"\xff\xd8\xff\xd9") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 4\r\n"
        b"Cache-Control: no-cache, no-store, must-revalidate\r\nConnection: close\r\n\r\n"
        b"\xff\xd8\xff\xd9")
    assert codec.error_response(404, "no such path /x") == (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 16\r\nConnection: close\r\n\r\nno such path /x\n")
    # RFC 9110 §15.5.6: 405 carries Allow
    assert b"\r\nAllow: GET\r\n" in codec.error_response(405, "POST not allowed")


def test_decodes_ffmpeg_request_in_any_split():
    for cut in range(len(FFMPEG_REQUEST) + 1):
        decoder = RequestDecoder()
        decoder.receive_data(FFMPEG_REQUEST[:cut])
        first = decoder.next_event()
        decoder.receive_data(FFMPEG_REQUEST[cut:])
        event = first if first is not None else decoder.next_event()
        assert event == Request("GET", "/stream.mjpg", "HTTP/1.1", (
            ("User-Agent", "Lavf/62.12.101"), ("Accept", "*/*"), ("Range", "bytes=0-"),
            ("Connection", "close"), ("Host", "127.0.0.1:45355"), ("Icy-MetaData", "1")))
        assert event.header("host") == "127.0.0.1:45355" and event.path == "/stream.mjpg"
        assert decoder.next_event() is None and decoder.buffered == 0


def test_two_pipelined_requests_and_query():
    decoder = RequestDecoder()
    decoder.receive_data(b"GET /snapshot.jpg?t=1 HTTP/1.0\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    first, second = decoder.next_event(), decoder.next_event()
    assert first.path == "/snapshot.jpg" and first.target == "/snapshot.jpg?t=1" and first.version == "HTTP/1.0"
    assert second.method == "HEAD" and second.header("Host") == "x"
    assert decoder.next_event() is None


def test_malformed_requests_are_events():
    cases = {
        b"GARBAGE\r\n\r\n": "bad request line",
        b"GET / HTTP/2.0\r\n\r\n": "unsupported version",
        b"get / HTTP/1.1\r\n\r\n": "bad method",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n": "bad header line",  # RFC 9112 §5.1
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n": "bad header line",
        b"GET /\xff HTTP/1.1\r\n\r\n": "not ASCII",
    }
    for data, reason in cases.items():
        decoder = RequestDecoder()
        decoder.receive_data(data + b"GET / HTTP/1.1\r\n\r\n")
        event = decoder.next_event()
        assert isinstance(event, Malformed) and reason in event.reason and event.status == 400
        assert decoder.next_event() == Request("GET", "/", "HTTP/1.1")  # resynchronised
        assert decoder.dropped == 1


def test_oversize_head_is_431_and_bounded():
    decoder = RequestDecoder()
    decoder.receive_data(b"GET /" + b"a" * (codec.MAX_BUFFER + 10))
    event = decoder.next_event()
    assert isinstance(event, Malformed) and event.status == 431
    assert decoder.buffered < 4
    decoder.receive_data(b"b" * 50000)
    assert decoder.next_event() is None and decoder.buffered < 4
    decoder.receive_data(b" HTTP/1.1\r\n\r\nGET /ok HTTP/1.1\r\n\r\n")
    assert decoder.next_event() == Request("GET", "/ok", "HTTP/1.1")


VALID = b"GET /stream.mjpg HTTP/1.1\r\nHost: cam\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.one_of(
    st.binary(max_size=64),
    # oversize heads: long runs of one byte (cheap to generate, same effect on the buffer)
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=2),
              st.integers(codec.MAX_BUFFER // 2 - 50, codec.MAX_BUFFER // 2 + 100)),
    st.sampled_from([b"\r\n", b"\r\n\r\n", b"GET ", b"HTTP/1.1", b":", VALID[:20], VALID[20:]]),
), max_size=12), cut=st.integers(min_value=0, max_value=len(VALID)))
def test_fuzz_request_decoder(chunks, cut):
    decoder = RequestDecoder()
    for chunk in chunks:
        decoder.receive_data(chunk)
        while (event := decoder.next_event()) is not None:
            assert isinstance(event, (Request, Malformed))
        assert decoder.buffered <= codec.MAX_BUFFER
    # whatever came before, a fresh head after an empty line decodes
    decoder.receive_data(b"\r\n\r\n" + VALID[:cut])
    events = []
    while (event := decoder.next_event()) is not None:
        events.append(event)
    decoder.receive_data(VALID[cut:])
    while (event := decoder.next_event()) is not None:
        events.append(event)
    assert events and events[-1] == Request("GET", "/stream.mjpg", "HTTP/1.1", (("Host", "cam"),))
    assert decoder.buffered == 0
