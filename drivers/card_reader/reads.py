"""What the card reader reports: a badge's UID, or a payment card as a token (never its number)."""
from __future__ import annotations

import attrs

from drivers.card_reader.cardtoken import CardToken


@attrs.frozen
class BadgeRead:
    """A card without a payment application, known by its UID (upper-case hex)."""

    uid_hex: str


@attrs.frozen
class PaymentCardRead:
    """A payment card: keyed token, last four digits, expiry ``YYMM``, scheme (``"visa"`` ...)."""

    token: CardToken
    last4: str
    expiry: str
    scheme: str


@attrs.frozen
class CardNotRead:
    """A card was presented but could not be read (taken away too soon, an EMV step failed, an
    invalid card number): the person should tap it again. ``reason`` names no card data."""

    reason: str


CardRead = BadgeRead | PaymentCardRead
