"""AES-256-GCM sealing of vault values: ``nonce(12) || ciphertext || tag(16)``.

The associated data binds a sealed value to its place (table and row identity), so a blob copied
onto another row, another palm or another person fails to open just as an altered one does.
"""
from __future__ import annotations

import functools
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from palmnode.vault.errors import TamperedData

NONCE_BYTES = 12  # NIST SP 800-38D §8.2.2: 96-bit random nonces (≤ 2^32 seals per key)
TAG_BYTES = 16  # NIST SP 800-38D §5.2.1.2: full 128-bit tag
KEY_BYTES = 32  # AES-256


# one cipher object per key: building it costs more than sealing a template
_cipher = functools.lru_cache(maxsize=8)(AESGCM)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` under ``key``, bound to ``aad``; a fresh random nonce each call."""
    if not isinstance(plaintext, (bytes, bytearray, memoryview)):
        raise TypeError(f"seal takes bytes, got {type(plaintext).__name__}")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _cipher(bytes(key)).encrypt(nonce, bytes(plaintext), aad)


def open_(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """The plaintext ``seal`` was given, or :class:`TamperedData` if ``blob`` is not exactly what it made."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TamperedData(f"sealed value is {type(blob).__name__}, not bytes")
    blob = bytes(blob)
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise TamperedData(f"sealed value is {len(blob)} bytes, shorter than nonce and tag")
    try:
        return _cipher(bytes(key)).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise TamperedData("sealed value fails authentication (altered, misplaced or another key)") from None
