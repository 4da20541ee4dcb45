"""Card numbers become keyed tokens at once: the clear number is never kept, logged or returned.

A :class:`CardToken` is HMAC-SHA256(deployment key, PAN digits): the same card gives the same
token under the same key, and the token is useless without the key. Only the last four digits
(which receipts print anyway) travel with it.
"""
from __future__ import annotations

import hashlib
import hmac

import attrs

MIN_KEY_BYTES = 16  # an HMAC key shorter than this is guessable
PAN_DIGITS = range(12, 20)  # ISO/IEC 7812-1: a PAN has at most 19 digits; EMV Book 3 tag 5A


class InvalidCardNumber(ValueError):
    """The card number is malformed or fails its check digit. Never carries the number."""


def luhn_ok(digits: str) -> bool:
    """ISO/IEC 7812-1 Annex B check digit (the Luhn formula)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digest_repr(digest: bytes) -> str:
    return digest[:4].hex() + "…"


@attrs.frozen(repr=False)
class CardToken:
    """A keyed token for a card number, plus its last four digits. Compare tokens with ``==``."""

    digest: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))
    last4: str

    @classmethod
    def from_pan(cls, pan: str, key: bytes) -> "CardToken":
        """Tokenise ``pan`` (digits only) under ``key``; raises :class:`InvalidCardNumber`."""
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"token_key must be at least {MIN_KEY_BYTES} bytes; generate one with os.urandom(32)")
        if not pan.isdigit() or len(pan) not in PAN_DIGITS:
            raise InvalidCardNumber("card number is not 12 to 19 digits")
        if not luhn_ok(pan):
            raise InvalidCardNumber("card number fails its check digit (misread or not a payment card)")
        return cls(hmac.new(key, pan.encode("ascii"), hashlib.sha256).digest(), pan[-4:])

    @property
    def hex(self) -> str:
        return self.digest.hex()

    def __repr__(self) -> str:
        return f"CardToken({_digest_repr(self.digest)}, last4={self.last4})"

    __str__ = __repr__
