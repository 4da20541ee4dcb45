"""What the gate's flows publish on the event bus (the demo, the REPL and the link read them).

Nothing here carries biometric data, card numbers or phone numbers: people appear by id only.
"""
from __future__ import annotations

from typing import Literal

import attrs

Outcome = Literal["identified", "unknown", "retry"]


@attrs.frozen
class Decision:
    """The identify flow's answer for one presented hand. ``latency_ms`` runs from the moment the
    hand became present (``PresenceChanged.at``) to this decision; ``score`` is the fused score
    the decision rests on (None when nothing was matched)."""

    outcome: Outcome
    person_id: str | None
    palm: str | None
    score: float | None
    reason: str | None
    latency_ms: float
    mode: str
    at: float


@attrs.frozen
class Feedback:
    """Words for the person at the gate ("hold still", "move your hand a little closer", ...)."""

    message: str
    at: float


@attrs.frozen
class GateOpened:
    """Entry mode: the turnstile may let ``person_id`` through."""

    person_id: str
    at: float


@attrs.frozen
class PaymentResult:
    """Payment mode: the controller's answer to charging ``person_id``'s card ``amount_cents`` of
    ``currency`` (ISO 4217, as the mode set it)."""

    person_id: str
    approved: bool
    amount_cents: int
    currency: str
    reference: str | None
    reason: str | None
    at: float


@attrs.frozen
class LoyaltyMember:
    """Loyalty mode: ``person_id`` is at the point of sale."""

    person_id: str
    at: float


@attrs.frozen
class PersonEnrolled:
    person_id: str
    palms: tuple[str, ...]
    at: float


@attrs.frozen
class PersonDeleted:
    person_id: str
    at: float


@attrs.frozen
class EnrolProgress:
    """One step of an enrolment: ``step`` is machine-readable (``started``, ``card``, ``palm``,
    ``capture``, ``again``, ``duplicate``, ``done``, ``failed``, ``cancelled``), ``detail`` is
    what the person (or the operator) reads."""

    step: str
    detail: str
    at: float
