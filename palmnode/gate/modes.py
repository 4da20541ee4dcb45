"""The gate's mode (entry / payment / loyalty): what an identified person's decision leads to.

The controller sets it (``mode.set``); the identify flow reads ``GateModes.current`` at each
decision. A payment mode carries the pending amount; charging goes through a ``charge`` callable
the node passes in (the link's ``charge`` op), answering a :class:`ChargeResult`.
"""
from __future__ import annotations

from typing import Awaitable, Callable, Literal

import attrs

from palmnode.actors import EventBus

MODES = ("entry", "payment", "loyalty")
Mode = Literal["entry", "payment", "loyalty"]


def _check_mode(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or value not in MODES:
        raise ValueError(f"gate mode must be one of {', '.join(MODES)}, got {_shown(value)}")


@attrs.frozen
class GateMode:
    """The mode and, for payment, the amount to charge (minor units) and its currency."""

    mode: Mode = attrs.field(default="entry", validator=_check_mode)
    amount_cents: int | None = None
    currency: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.mode == "payment":
            # an int (not a bool) the charge can carry: the link's ints stop below 2**63
            if type(self.amount_cents) is not int or not 0 < self.amount_cents < 2**63:
                raise ValueError(f"payment mode needs a positive amount_cents below 2**63, got "
                                 f"{_shown(self.amount_cents)}")
            if not (isinstance(self.currency, str) and len(self.currency) == 3 and self.currency.isascii()
                    and self.currency.isalpha()):
                raise ValueError(f"payment mode needs a 3-letter currency code, got {_shown(self.currency)}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


@attrs.frozen
class ModeChanged:
    """Published when the gate's mode changes."""

    mode: GateMode
    at: float


@attrs.frozen
class ChargeResult:
    """The controller's answer to a charge: approved with a reference, or declined with a reason."""

    approved: bool
    reference: str | None = None
    reason: str | None = None


#: ``await charge(person_id, card_digest, amount_cents, currency) -> ChargeResult``
Charge = Callable[[str, bytes, int, str], Awaitable[ChargeResult]]


class GateModes:
    """Holds the current mode; ``set`` changes it and tells the bus."""

    def __init__(self, bus: EventBus | None = None, initial: GateMode = GateMode()) -> None:
        self.bus = bus
        self.current = initial

    def set(self, mode: GateMode, *, at: float) -> None:
        self.current = mode
        if self.bus is not None:
            self.bus.publish(ModeChanged(mode, at))
