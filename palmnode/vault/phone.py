"""Phone numbers to one canonical E.164 form, so that every way of writing a number hashes alike.

ITU-T E.164 §6: an international number is a country code (never starting with 0) and a national
number, at most 15 digits in all, written with a leading ``+``. We accept the usual separators,
an international ``00`` prefix in place of ``+``, and nothing else; national forms (a leading 0)
are refused because their country is unknown.
"""
from __future__ import annotations

from palmnode.vault.errors import InvalidPhone

MAX_DIGITS = 15  # ITU-T E.164 §6.1: at most 15 digits including the country code
MIN_DIGITS = 7  # shorter than any country code + subscriber number in service
MAX_INPUT = 64  # longer input is refused before looking at it
_SEPARATORS = frozenset(" -.()/\t")
_ASCII_DIGITS = frozenset("0123456789")


def normalise_phone(phone: str) -> str:
    """``+`` then 7–15 ASCII digits, the first not 0; :class:`InvalidPhone` (without the number) otherwise."""
    if not isinstance(phone, str):
        raise InvalidPhone(f"phone number must be text, got {type(phone).__name__}")
    if len(phone) > MAX_INPUT:
        raise InvalidPhone(f"phone number is longer than {MAX_INPUT} characters")
    text = phone.strip()
    if text.startswith("+"):
        text = text[1:]
    elif text.startswith("00"):
        text = text[2:]
    digits = []
    for ch in text:
        if ch in _ASCII_DIGITS:
            digits.append(ch)
        elif ch not in _SEPARATORS:
            raise InvalidPhone("phone number may hold only digits, a leading + and spaces, dashes, dots, "
                               "brackets or slashes")
    number = "".join(digits)
    if not number:
        raise InvalidPhone("phone number has no digits")
    if number[0] == "0":
        raise InvalidPhone("phone number must be international: + and the country code (e.g. +44 20 7946 0000)")
    if not MIN_DIGITS <= len(number) <= MAX_DIGITS:
        raise InvalidPhone(f"phone number has {len(number)} digits; E.164 numbers have {MIN_DIGITS} to "
                           f"{MAX_DIGITS} including the country code")
    return "+" + number
