"""The gate's mode (entry / payment / loyalty): what an identified person's decision leads to.

The controller sets it (``mode.set``); the identify flow reads ``GateModes.current`` at each
decision. A payment mode carries the pending amount; charging goes through a ``charge`` callable
the node passes in (the link's ``charge`` op), answering a :class:`ChargeResult`.

A payment is charged to every person identified (a fare) unless it is ``once`` (a store's
basket): then only the first approved charge pays it, and the gate returns to the mode it had
before the basket was set (``GateModes.paid``). The mode lives in memory only: a node started
again starts in its configured mode (``[gate] mode``), a basket pending then is gone.
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
    """The mode and, for payment, the amount to charge (minor units) and its currency; ``once``
    (payment only): one person pays it, then the gate returns to the mode before it."""

    mode: Mode = attrs.field(default="entry", validator=_check_mode)
    amount_cents: int | None = None
    currency: str | None = None
    once: bool = False

    def __attrs_post_init__(self) -> None:
        if type(self.once) is not bool:
            raise ValueError(f"once must be true or false, got {type(self.once).__name__}")
        if self.once and self.mode != "payment":
            raise ValueError(f"once is for payment mode only, not {self.mode}")
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
    """Published when the gate's mode changes: ``reason`` "set" (``mode.set``, the REPL's
    ``mode``) or "paid" (a one-shot payment was approved: back to the mode before it)."""

    mode: GateMode
    at: float
    reason: str = "set"


@attrs.frozen
class ChargeResult:
    """The controller's answer to a charge: approved with a reference, or declined with a reason."""

    approved: bool
    reference: str | None = None
    reason: str | None = None


#: ``await charge(person_id, card_digest, amount_cents, currency) -> ChargeResult``
Charge = Callable[[str, bytes, int, str], Awaitable[ChargeResult]]


def payment_words(payment: dict) -> str:
    """A pending payment (``GateModes.pending_payment()``, ``node.status``'s ``payment``) in words:
    how much, in what, who pays it and, for a basket, what the gate returns to in full (a fare:
    its amount too) (the REPL's ``status``, systemd's STATUS=)."""
    amount = f"{payment['amount_cents']} {payment['currency']}"
    if payment["once"]:
        back = payment["returns_to"]
        if (fare := payment.get("returns_to_fare")) is not None:
            back += f" ({fare['amount_cents']} {fare['currency']} from each person identified)"
        return f"{amount} from the next person identified, then {back}"
    return f"{amount} from each person identified"


class GateModes:
    """Holds the current mode; ``set`` changes it and tells the bus; ``paid`` ends a one-shot
    payment. ``serial`` counts the changes: a charge notes it when it starts, so its approval
    cannot undo a mode set while it was awaited."""

    def __init__(self, bus: EventBus | None = None, initial: GateMode = GateMode()) -> None:
        if initial.once:
            raise ValueError("a one-shot payment is set by mode.set, not as the gate's starting mode")
        self.bus = bus
        self.current = initial
        #: while a one-shot payment is pending: the mode the gate returns to once it is paid
        self.returns_to: GateMode | None = None
        self.serial = 0

    def set(self, mode: GateMode, *, at: float) -> None:
        if mode.once:  # a basket over a basket replaces it: back to the mode before the first
            self.returns_to = self.returns_to if self.current.once else self.current
        else:
            self.returns_to = None
        self._change(mode, at, "set")

    def paid(self, serial: int, *, at: float) -> bool:
        """A charge started under mode change ``serial`` was approved: a one-shot payment still in
        force is done, the gate returns to the mode before it (True). A mode set since (a new
        basket, another mode) stands: False."""
        if serial != self.serial or not self.current.once or self.returns_to is None:
            return False
        back, self.returns_to = self.returns_to, None
        self._change(back, at, "paid")
        return True

    def pending_payment(self) -> dict | None:
        """The payment a person identified now is charged, as plain data (``node.status``)."""
        mode = self.current
        if mode.mode != "payment":
            return None
        back = self.returns_to
        return {"amount_cents": mode.amount_cents, "currency": mode.currency, "once": mode.once,
                "returns_to": back.mode if back is not None else None,
                # a basket set over a fare returns to that fare: its amount (the mode's name alone
                # said "then payment", not how much)
                "returns_to_fare": ({"amount_cents": back.amount_cents, "currency": back.currency}
                                    if back is not None and back.mode == "payment" else None)}

    def _change(self, mode: GateMode, at: float, reason: str) -> None:
        self.current = mode
        self.serial += 1
        if self.bus is not None:
            self.bus.publish(ModeChanged(mode, at, reason))
