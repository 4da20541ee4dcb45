"""Presence from the proximity stream: a distance window, a dwell time, a stillness test and
hysteresis (sans-IO); and placement advice (too close / too far / hold still) for the person.

A hand becomes *present* once it has been inside ``[near_mm, far_mm]`` for ``dwell_s`` **and is
still** (its readings of the last ``still_window_s`` spread over at most ``still_mm``); it
stops being present once it has been outside ``[near_mm, release_mm]`` (or unreadable) for
``absent_s``. Movement never ends a presence: only leaving the window does. The identify
flow's latency is measured from the moment a hand becomes present, so a hand still swinging
in does not start the clock (nor a capture that would be blurred).
"""
from __future__ import annotations

import collections
import enum

import attrs

#: TFmini Plus manual §5.4: a strength of 65535 means the receiver is saturated (a target in
#: the blind zone, nearer than ~10 cm): for a gate, a hand held too close
SATURATED_STRENGTH = 65535


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
    dwell_s: float = 0.05      # in the window (and still) this long before it counts
    absent_s: float = 0.15     # out of the window this long before it is gone
    #: still = the readings of the last ``still_window_s`` lie within ``still_mm`` of each other
    #: (the sensor reports whole centimetres and a hovering hand trembles by a few mm, so one
    #: step of 10 mm plus noise is still; an approaching hand moves ~100 mm in 0.1 s)
    still_mm: int = 20
    still_window_s: float = 0.1


class PresenceDetector:
    """Feed it distances; it answers a :class:`PresenceChanged` when presence flips, else None."""

    def __init__(self, policy: PresencePolicy = PresencePolicy()) -> None:
        self.policy = policy
        self.present = False
        self._since: float | None = None  # when the opposite condition started holding
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def still(self, at: float) -> bool:
        """True when the in-window readings of the last ``still_window_s`` agree within ``still_mm``
        (and span most of that window, or the dwell if shorter: two readings a moment apart prove
        nothing)."""
        recent = self._recent
        p = self.policy
        if not recent or at - recent[0][0] < min(p.still_window_s * 0.8, p.dwell_s):
            return False
        values = [d for _, d in recent]
        return max(values) - min(values) <= self.policy.still_mm

    def _remember(self, distance_mm: int | None, at: float) -> None:
        p = self.policy
        if distance_mm is None or not p.near_mm <= distance_mm <= p.release_mm:
            self._recent.clear()
            return
        self._recent.append((at, distance_mm))
        while self._recent and at - self._recent[0][0] > p.still_window_s:
            self._recent.popleft()

    def update(self, distance_mm: int | None, at: float) -> PresenceChanged | None:
        p = self.policy
        self._remember(distance_mm, at)
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
        if at - self._since < hold or (not self.present and not self.still(at)):
            return None
        self.present = not self.present
        self._since = None
        return PresenceChanged(present=self.present, distance_mm=distance_mm, at=at)

    def reset(self, at: float) -> PresenceChanged | None:
        """Forget the hand (the sensor went away): a change to absent if one was present."""
        self._since = None
        self._recent.clear()
        if not self.present:
            return None
        self.present = False
        return PresenceChanged(present=False, distance_mm=None, at=at)


class Placement(enum.Enum):
    """Where the hand is, as far as the distance sensor can tell; ``advice`` is what to say."""

    NOTHING = "nothing"        # nothing near the gate (or an unreadable weak return)
    TOO_CLOSE = "too_close"
    TOO_FAR = "too_far"        # near the gate but above the capture window
    MOVING = "moving"          # in the window, not yet still
    GOOD = "good"

    @property
    def advice(self) -> str | None:
        return _ADVICE.get(self)


# the same words as the engine's FailureReason.feedback, so the person hears one voice
_ADVICE = {
    Placement.TOO_CLOSE: "move your hand a little higher",
    Placement.TOO_FAR: "move your hand a little closer",
    Placement.MOVING: "hold still",
}


@attrs.frozen
class AdvicePolicy:
    """When a placement becomes advice: it must hold ``after_s`` (a hand passing through the
    'too far' band on its way in says nothing); the same advice is not repeated within
    ``repeat_s``. A hand farther than ``notice_mm`` is not the gate's business."""

    notice_mm: int = 500
    after_s: float = 0.3
    repeat_s: float = 2.0


class PlacementAdvisor:
    """Feed it readings (distance, strength, time); it answers an advice string when the hand has
    been misplaced for a while, else None. Sans-IO: the caller publishes the words."""

    def __init__(self, presence: PresencePolicy = PresencePolicy(),
                 policy: AdvicePolicy = AdvicePolicy()) -> None:
        self.presence = presence
        self.policy = policy
        self.placement = Placement.NOTHING
        self._since = 0.0
        self._said: dict[str, float] = {}
        self._stillness = PresenceDetector(presence)

    def classify(self, distance_mm: int | None, strength: int, at: float) -> Placement:
        p = self.presence
        self._stillness._remember(distance_mm, at)
        if distance_mm is None:
            return Placement.TOO_CLOSE if strength >= SATURATED_STRENGTH else Placement.NOTHING
        if distance_mm < p.near_mm:
            return Placement.TOO_CLOSE
        if distance_mm > self.policy.notice_mm:
            return Placement.NOTHING
        if distance_mm > p.far_mm:
            return Placement.TOO_FAR
        return Placement.GOOD if self._stillness.still(at) else Placement.MOVING

    def update(self, distance_mm: int | None, strength: int, at: float) -> str | None:
        placement = self.classify(distance_mm, strength, at)
        if placement is not self.placement:
            self.placement, self._since = placement, at
            return None
        advice = placement.advice
        if advice is None or at - self._since < self.policy.after_s:
            return None
        last = self._said.get(advice)
        if last is not None and at - last < self.policy.repeat_s:
            return None
        self._said[advice] = at
        return advice
