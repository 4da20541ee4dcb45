"""Deterministic people, templates and keys for the vault tests (also imported by the kill -9 child)."""
from __future__ import annotations

import hashlib
import random

import numpy as np

from drivers.card_reader.cardtoken import CardToken
from palmnode.biometrics.types import (
    SURFACE_ROWS,
    VEIN_ROWS,
    ModalityCode,
    PalmTemplate,
)
from palmnode.vault import EnrolledPalm, Person, VaultKeys

SECRET_HEX = "5a" * 32
KEYS = VaultKeys.from_secret(bytes.fromhex(SECRET_HEX))
OTHER_KEYS = VaultKeys.from_secret(bytes.fromhex("a5" * 32))


def template(rng: random.Random) -> PalmTemplate:
    def code(rows: int) -> ModalityCode:
        planes = np.frombuffer(rng.randbytes(4 * rows * 4), dtype=np.uint32).reshape(4, rows)
        return ModalityCode.from_planes(planes)
    return PalmTemplate(surface=code(SURFACE_ROWS), vein=code(VEIN_ROWS))


def card(n: int) -> CardToken:
    return CardToken(hashlib.sha256(b"card %d" % n).digest(), f"{n % 10000:04d}")


def phone(n: int) -> str:
    return f"+44 7700 9{n:05d}"


def person_id(n: int) -> str:
    return f"p{n:06d}-{hashlib.sha256(b'id %d' % n).hexdigest()[:12]}"


def person(n: int, vault, *, palms: int | None = None, templates: int = 3, seed: int = 0) -> Person:
    """Person ``p{n:06d}`` with 1 or 2 palms (alternating unless given) of ``templates`` templates each."""
    rng = random.Random(seed * 1_000_003 + n)
    palms = palms if palms is not None else 1 + n % 2
    names = ("right", "left")[:palms]
    return Person(person_id=person_id(n), card=card(n),
                  phone_digest=vault.phone_digest(phone(n)),
                  palms=tuple(EnrolledPalm(name, tuple(template(rng) for _ in range(templates))) for name in names),
                  enrolled_at=1_700_000_000.0 + n, origin_node="node-a")


def template_bytes(p: Person) -> list[bytes]:
    return [t.to_bytes() for palm in p.palms for t in palm.templates]


def same_person(a: Person, b: Person) -> bool:
    return (a.person_id, a.card, a.phone_digest, a.enrolled_at, a.origin_node,
            [p.palm for p in a.palms], template_bytes(a)) == \
        (b.person_id, b.card, b.phone_digest, b.enrolled_at, b.origin_node, [p.palm for p in b.palms], template_bytes(b))
