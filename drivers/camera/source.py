"""What a camera source names (no OpenCV needed): a V4L2 device, by index or /dev/videoN path, or a
stream URL (the virtual gate's MJPEG camera, an IP camera)."""
from __future__ import annotations


def parse_source(text: str) -> int | str:
    """A source as written in a config file: digits are a device index."""
    return int(text) if text.isdigit() else text


def source_kind(source: int | str) -> str:
    """``"device"`` or ``"stream"``; ValueError naming the accepted forms otherwise."""
    if isinstance(source, int) and not isinstance(source, bool):
        return "device"
    if isinstance(source, str):
        if "://" in source:
            return "stream"
        if source.startswith("/dev/"):
            return "device"
    raise ValueError(f"camera source {source!r} is not a device index, a /dev/videoN path or a "
                     f"stream URL such as http://127.0.0.1:8080/stream.mjpg")
