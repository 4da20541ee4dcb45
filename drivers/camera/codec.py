"""MJPEG over HTTP, sans-IO: the framing an IP camera serves and the requests it answers.

The camera emulator speaks this; the driver does not (OpenCV's FFmpeg backend parses the stream),
so these bytes are also what any independent MJPEG client must accept. No sockets, no trio, no
clocks here: requests are decoded from bytes with :class:`RequestDecoder` (h11 style), responses
are built by plain functions returning bytes. See docs/protocols/camera.md.
"""
from __future__ import annotations

import attrs

#: multipart boundary; RFC 2046 §5.1.1: 1..70 characters from bchars, no trailing space
BOUNDARY = "palmnodeframe"
#: line terminator of HTTP heads and MIME part headers (RFC 9112 §2.1, RFC 2046 §5.1.1)
CRLF = b"\r\n"
#: a head ends with an empty line (RFC 9112 §2.1: CRLF after the last field line)
HEAD_END = b"\r\n\r\n"
#: media type of a stream of replacing parts (the Netscape "server push" convention; FFmpeg's
#: mpjpeg demuxer registers this MIME type, libavformat/mpjpegdec.c)
STREAM_MEDIA_TYPE = "multipart/x-mixed-replace"
#: media type of each part and of a snapshot (RFC 2046 §4.2, image/jpeg)
JPEG_MEDIA_TYPE = "image/jpeg"
#: JPEG start/end of image markers (ITU-T T.81 Annex B.1.1.3, Table B.1: SOI = FFD8, EOI = FFD9)
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
#: largest request head we keep (request line + fields); RFC 9112 §3 lets a server pick a bound
#: and answer 400/431 beyond it. 8 KiB is the common default (nginx large_client_header_buffers).
MAX_BUFFER = 8192
#: paths the camera serves (the usual IP-camera names; mjpg-streamer uses ?action=stream instead)
STREAM_PATH = "/stream.mjpg"
SNAPSHOT_PATH = "/snapshot.jpg"

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@attrs.frozen
class Request:
    """One HTTP request head (RFC 9112 §3: method SP request-target SP HTTP-version)."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> str:
        """The target without its query string (RFC 3986 §3.4)."""
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The first field called ``name`` (case-insensitive, RFC 9110 §5.1), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


@attrs.frozen
class Malformed:
    """Bytes that are not a request head; ``status`` is the answer a server should send."""

    reason: str
    status: int = 400


class RequestDecoder:
    """Feed bytes with :meth:`receive_data`, take :class:`Request`/:class:`Malformed` from :meth:`next_event`.

    The buffer never grows past :data:`MAX_BUFFER`: a head that does not end in time is reported
    as :class:`Malformed` (431) and dropped, and decoding resumes after the next empty line.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skipping = False  # inside an oversize head: drop bytes until its end
        self.dropped = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> Request | Malformed | None:
        end = self._buffer.find(HEAD_END)
        if self._skipping:
            if end < 0:
                del self._buffer[: max(0, len(self._buffer) - (len(HEAD_END) - 1))]
                return None
            del self._buffer[: end + len(HEAD_END)]
            self._skipping = False
            end = self._buffer.find(HEAD_END)
        if end < 0:
            if len(self._buffer) <= MAX_BUFFER:
                return None
            self._skipping = True
            del self._buffer[: len(self._buffer) - (len(HEAD_END) - 1)]
            self.dropped += 1
            return Malformed("request head longer than %d bytes" % MAX_BUFFER, status=431)
        head = bytes(self._buffer[:end])
        del self._buffer[: end + len(HEAD_END)]
        if len(head) > MAX_BUFFER:
            self.dropped += 1
            return Malformed("request head longer than %d bytes" % MAX_BUFFER, status=431)
        event = _parse_head(head)
        if isinstance(event, Malformed):
            self.dropped += 1
        return event


def _parse_head(head: bytes) -> Request | Malformed:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return Malformed("request head is not ASCII")
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line
    lines = text.lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        return Malformed("bad request line %r" % lines[0][:60])
    method, target, version = parts
    if not method.isalpha() or not method.isupper():
        return Malformed("bad method %r" % method[:20])
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        return Malformed("unsupported version %r" % version[:20])
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        # RFC 9112 §5.1: no whitespace between field name and colon; §5.2: no obs-fold
        if not sep or not name or name != name.strip() or " " in name or "\t" in name:
            return Malformed("bad header line %r" % line[:60])
        headers.append((name, value.strip(" \t")))
    return Request(method, target, version, tuple(headers))


def _head(status: int, fields: list[tuple[str, str]]) -> bytes:
    lines = ["HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Error"))]
    lines += ["%s: %s" % field for field in fields]
    return ("\r\n".join(lines)).encode("ascii") + HEAD_END


def stream_response_head(boundary: str = BOUNDARY) -> bytes:
    """The response head that opens an MJPEG stream; the body runs until the connection closes.

    No Content-Length and no chunked coding: RFC 9112 §6.3 (8) lets a response body end at close,
    which is what IP cameras do and what FFmpeg's HTTP client expects for a live stream.
    """
    return _head(200, [
        ("Content-Type", "%s; boundary=%s" % (STREAM_MEDIA_TYPE, boundary)),
        ("Cache-Control", "no-cache, no-store, must-revalidate"),
        ("Pragma", "no-cache"),
        ("Connection", "close"),
    ])


def mjpeg_part(jpeg: bytes, boundary: str = BOUNDARY) -> bytes:
    """One body part: ``--boundary``, its header fields, an empty line, the JPEG, then CRLF.

    RFC 2046 §5.1.1: the delimiter is CRLF "--" boundary; the first part may omit the leading CRLF,
    so each part is written as "--boundary CRLF fields CRLF CRLF data CRLF" and the data's trailing
    CRLF is the next delimiter's leading one. Content-Length lets a reader take the JPEG without
    scanning for the boundary (FFmpeg's mpjpeg demuxer does exactly that).
    """
    head = "--%s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        boundary, JPEG_MEDIA_TYPE, len(jpeg))
    return head.encode("ascii") + jpeg + CRLF


def snapshot_response(jpeg: bytes) -> bytes:
    """A complete response carrying one JPEG."""
    return _head(200, [
        ("Content-Type", JPEG_MEDIA_TYPE),
        ("Content-Length", str(len(jpeg))),
        ("Cache-Control", "no-cache, no-store, must-revalidate"),
        ("Connection", "close"),
    ]) + jpeg


def error_response(status: int, text: str) -> bytes:
    """A complete plain-text error response (404 unknown path, 405 not GET, 400 malformed...)."""
    body = (text.rstrip("\n") + "\n").encode("utf-8", "replace")
    fields = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
              ("Connection", "close")]
    if status == 405:
        fields.append(("Allow", "GET"))  # RFC 9110 §15.5.6: a 405 MUST list the allowed methods
    return _head(status, fields) + body
