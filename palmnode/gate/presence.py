"""Presence from the proximity stream: a distance window, a dwell time and hysteresis (sans-IO)."""
from __future__ import annotations

import attrs


@attrs.frozen
class PresenceChanged:
    """A hand arrived in the capture window (``present``) or left it."""
    present: bool
    distance_mm: int | None
    at: float


@attrs.frozen
class PresencePolicy:
    near_mm: int = 60          # closer than this is no longer a hover
    far_mm: int = 300          # a hand enters the window below this...
    release_mm: int = 340      # ...and leaves it above this (hysteresis)
    dwell_s: float = 0.05      # in the window this long before it counts
    absent_s: float = 0.15     # out of the window this long before it is gone


class PresenceDetector:
    """Feed it distances; it answers a :class:`PresenceChanged` when presence flips, else None."""

    def __init__(self, policy: PresencePolicy = PresencePolicy()) -> None:
        self.policy = policy
        self.present = False
        self._since: float | None = None  # when the opposite condition started holding

    def update(self, distance_mm: int | None, at: float) -> PresenceChanged | None:
        p = self.policy
        if self.present:
            flipping = distance_mm is None or distance_mm > p.release_mm or distance_mm < p.near_mm
            hold = p.absent_s
        else:
            flipping = distance_mm is not None and p.near_mm <= distance_mm <= p.far_mm
            hold = p.dwell_s
        if not flipping:
            self._since = None
            return None
        if self._since is None:
            self._since = at
        if at - self._since < hold:
            return None
        self.present = not self.present
        self._since = None
        return PresenceChanged(present=self.present, distance_mm=distance_mm, at=at)

    def reset(self, at: float) -> PresenceChanged | None:
        """Forget the hand (the sensor went away): a change to absent if one was present."""
        self._since = None
        if not self.present:
            return None
        self.present = False
        return PresenceChanged(present=False, distance_mm=None, at=at)
