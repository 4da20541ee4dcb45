"""The vault's value types: what callers put in and get back (attrs, frozen)."""
from __future__ import annotations

from typing import Any

import attrs

from drivers.card_reader.cardtoken import CardToken
from palmnode.biometrics.types import PalmTemplate

PALMS = ("left", "right", "unknown")
MAX_PERSON_ID = 128  # an id longer than this is a caller's bug, not a person


@attrs.frozen
class VaultConfig:
    """Where the vault lives and where its key comes from (a 0600 key file, else the environment)."""

    path: str
    key_file: str | None = None
    key_env: str = "PALMNODE_VAULT_KEY"


def _palm_name(instance: Any, attribute: Any, value: str) -> None:
    if value not in PALMS:
        raise ValueError(f"palm must be one of {', '.join(PALMS)}, got {value!r}")


def _templates(instance: Any, attribute: Any, value: tuple) -> None:
    if not value:
        raise ValueError("an enrolled palm needs at least one template")
    for template in value:
        if not isinstance(template, PalmTemplate):
            raise TypeError(f"templates must be PalmTemplate, got {type(template).__name__}")


@attrs.frozen
class EnrolledPalm:
    """One palm of a person and the templates captured of it; the first is its search template
    (the one a gallery holds: the enrol flow puts the capture the others match best first)."""

    palm: str = attrs.field(validator=_palm_name)
    templates: tuple[PalmTemplate, ...] = attrs.field(converter=tuple, validator=_templates)


def _person_id(instance: Any, attribute: Any, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_PERSON_ID:
        raise ValueError(f"person_id must be a non-empty string of at most {MAX_PERSON_ID} characters")


def _palms(instance: Any, attribute: Any, value: tuple) -> None:
    names = [p.palm for p in value]
    if len(set(names)) != len(names):
        raise ValueError(f"a person has each palm once, got {names}")


@attrs.frozen
class Person:
    """An enrolled person. ``card``/``phone_digest`` are keyed digests; the clear numbers are never here."""

    person_id: str = attrs.field(validator=_person_id)
    card: CardToken | None = attrs.field(validator=attrs.validators.optional(attrs.validators.instance_of(CardToken)))
    phone_digest: bytes | None = attrs.field(validator=attrs.validators.optional(attrs.validators.instance_of(bytes)))
    palms: tuple[EnrolledPalm, ...] = attrs.field(converter=tuple, validator=_palms)
    enrolled_at: float
    origin_node: str


@attrs.frozen
class OutboxEvent:
    """An event waiting for (or past) delivery to the store controller; ``key`` is its idempotency key."""

    seq: int
    key: str
    kind: str
    at: float
    data: dict
