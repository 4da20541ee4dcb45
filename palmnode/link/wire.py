"""A person on the wire (docs/protocols/controller.md §8): ``Person`` <-> a msgpack-ready map.

Card and phone travel only as keyed digests; templates as ``PalmTemplate.to_bytes()``.
"""
from __future__ import annotations

import math
from typing import Any

from drivers.card_reader.cardtoken import CardToken
from palmnode.biometrics.types import PalmTemplate
from palmnode.link.messages import one_line
from palmnode.vault.records import EnrolledPalm, Person

DIGEST_SIZE = 32  # §8: keyed digests are HMAC-SHA256; one of another length never matches a card or phone
MAX_TEMPLATES = 32  # §8: templates per palm; an enrolment keeps a handful
MAX_NAME = 128  # §8: an origin node's name (a certificate CN is at most 64 characters)


class WireError(ValueError):
    """A person map from the wire has the wrong shape; one line, no biometric data."""


def person_to_wire(person: Person) -> dict[str, Any]:
    """``person`` as the §8 map."""
    return {
        "person_id": person.person_id,
        "card_digest": person.card.digest if person.card is not None else None,
        "card_last4": person.card.last4 if person.card is not None else None,
        "phone_digest": person.phone_digest,
        "palms": [
            {"palm": p.palm, "templates": [t.to_bytes() for t in p.templates]} for p in person.palms
        ],
        "enrolled_at": float(person.enrolled_at),
        "origin_node": person.origin_node,
    }


def _field(wire: dict, name: str, types: tuple[type, ...], *, optional: bool = False) -> Any:
    if name not in wire:
        raise WireError(f"person: missing field {name!r}")
    value = wire[name]
    if value is None and optional:
        return None
    if type(value) not in types:
        raise WireError(f"person.{name}: expected {' or '.join(t.__name__ for t in types)}, "
                        f"got {type(value).__name__}")
    return value


def _digest(wire: dict, name: str) -> bytes | None:
    value = _field(wire, name, (bytes,), optional=True)
    if value is not None and len(value) != DIGEST_SIZE:
        raise WireError(f"person.{name}: a digest of {len(value)} bytes ({DIGEST_SIZE} expected)")
    return value


def _template(data: bytes) -> PalmTemplate:
    try:
        template = PalmTemplate.from_bytes(data)
    except ValueError as exc:
        raise WireError(f"person.palms.templates: {one_line(exc)}") from None
    if template.surface is None and template.vein is None:  # matches nothing; a gallery refuses it
        raise WireError("person.palms.templates: a template with neither modality")
    return template


def person_from_wire(wire: object) -> Person:
    """The :class:`Person` in a §8 map; raises :class:`WireError` on a bad shape."""
    if not isinstance(wire, dict):
        raise WireError(f"person: expected a map, got {type(wire).__name__}")
    person_id = _field(wire, "person_id", (str,))
    card_digest = _digest(wire, "card_digest")
    card_last4 = _field(wire, "card_last4", (str,), optional=True)
    if card_last4 is not None and not (len(card_last4) <= 4 and card_last4.isascii()
                                       and (card_last4.isdigit() or not card_last4)):
        raise WireError("person.card_last4: up to 4 digits expected")
    phone_digest = _digest(wire, "phone_digest")
    enrolled_at = float(_field(wire, "enrolled_at", (int, float)))
    if not math.isfinite(enrolled_at):
        raise WireError("person.enrolled_at: must be finite")
    origin_node = _field(wire, "origin_node", (str,))
    if len(origin_node) > MAX_NAME:
        raise WireError(f"person.origin_node: at most {MAX_NAME} characters")
    palms = []
    entries = _field(wire, "palms", (list,))
    if not entries:
        raise WireError("person.palms: at least one palm")
    for entry in entries:
        if not isinstance(entry, dict):
            raise WireError("person.palms: each palm must be a map")
        templates = _field(entry, "templates", (list,))
        if not 1 <= len(templates) <= MAX_TEMPLATES or not all(type(t) is bytes for t in templates):
            raise WireError(f"person.palms.templates: 1 to {MAX_TEMPLATES} byte strings expected")
        palms.append((_field(entry, "palm", (str,)), tuple(_template(t) for t in templates)))
    card = None
    if card_digest is not None:
        card = CardToken(card_digest, card_last4 if card_last4 is not None else "")
    try:
        return Person(
            person_id=person_id,
            card=card,
            phone_digest=phone_digest,
            palms=tuple(EnrolledPalm(palm=name, templates=ts) for name, ts in palms),
            enrolled_at=enrolled_at,
            origin_node=origin_node,
        )
    except (TypeError, ValueError) as exc:
        raise WireError(f"person: {one_line(exc)}") from None
