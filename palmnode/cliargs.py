"""Value types for command-line options: each refuses a bad value with a one-line reason."""
from __future__ import annotations

import argparse
import math


def port(text: str) -> int:
    """A TCP port number (0 = any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def finite(text: str) -> float:
    """A finite number (nan and inf refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive(text: str) -> float:
    """A finite number greater than zero."""
    value = finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def count(text: str) -> int:
    """A whole number of at least 1."""
    return _whole(text, 1)


def non_negative(text: str) -> int:
    """A whole number of 0 or more."""
    return _whole(text, 0)


def counts(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers of at least 1 (``10000,100000``)."""
    parts = text.split(",")
    if not text or not all(part.strip() for part in parts):
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}")
    return tuple(count(part.strip()) for part in parts)


def bit_depth(text: str) -> int:
    """The bits per pixel a sensor gives, 8 to 16."""
    value = _whole(text, 8)
    if value > 16:
        raise argparse.ArgumentTypeError(f"must be at most 16, got {value}")
    return value


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value
