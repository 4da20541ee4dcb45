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
    if value not in MODES:
        raise ValueError(f"gate mode must be one of {', '.join(MODES)}, got {value!r}")


@attrs.frozen
class GateMode:
    """The mode and, for payment, the amount to charge (minor units) and its currency."""

    mode: Mode = attrs.field(default="entry", validator=_check_mode)
    amount_cents: int | None = None
    currency: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.mode == "payment":
            if not isinstance(self.amount_cents, int) or self.amount_cents <= 0:
                raise ValueError(f"payment mode needs a positive amount_cents, got {self.amount_cents!r}")
            if not (isinstance(self.currency, str) and len(self.currency) == 3 and self.currency.isalpha()):
                raise ValueError(f"payment mode needs a 3-letter currency code, got {self.currency!r}")


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
