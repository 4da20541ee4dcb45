"""Exponential restart backoff with bounded jitter."""

from __future__ import annotations

import random

import attrs


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"Backoff.{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class Backoff:
    """How long a supervisor waits before restarting a child that keeps failing.

    The n-th consecutive restart (``attempt`` = 0, 1, 2, ...) waits
    ``initial * multiplier ** attempt`` seconds, scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` so that siblings failing together do not retry in
    lockstep, and never more than ``maximum`` seconds.
    """

    initial: float = attrs.field(default=0.1, validator=_non_negative)
    maximum: float = attrs.field(default=2.0, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1.0))
    jitter: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )

    def nominal(self, attempt: int) -> float:
        """The delay for ``attempt`` before jitter: ``min(maximum, initial * multiplier**attempt)``."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        # Cap the exponent's effect before it overflows a float.
        delay = self.initial
        for _ in range(attempt):
            delay *= self.multiplier
            if delay >= self.maximum:
                return self.maximum
        return min(self.maximum, delay)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay for ``attempt`` with jitter drawn from ``rng``; always in ``[0, maximum]``."""
        factor = 1.0 + rng.uniform(-self.jitter, self.jitter)
        return min(self.maximum, max(0.0, self.nominal(attempt) * factor))
