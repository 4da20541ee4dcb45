"""Presence with stillness, and placement advice (sans-IO: readings in, changes/advice out)."""
from __future__ import annotations

from palmnode.gate.presence import (
    SATURATED_STRENGTH,
    AdvicePolicy,
    Placement,
    PlacementAdvisor,
    PresenceDetector,
    PresencePolicy,
)


def run(detector, readings, t0=0.0, dt=0.01):
    """Feed (distance) readings at 100 Hz; the times at which presence flipped."""
    flips = []
    for i, d in enumerate(readings):
        change = detector.update(d, t0 + i * dt)
        if change is not None:
            flips.append((round(t0 + i * dt, 2), change.present))
    return flips


def test_a_swinging_hand_is_not_present_until_it_holds_still():
    det = PresenceDetector(PresencePolicy(still_mm=20, still_window_s=0.1, dwell_s=0.05))
    approach = [300 - 10 * i for i in range(15)]          # 1 m/s through the window: 300 -> 160 mm
    flips = run(det, approach + [150] * 30)
    # in the window from 0 s (dwell done at 0.05 s) but still only once the last 0.1 s of readings
    # lie within 20 mm: 170, 160, 150... from 0.13 s, so at 0.23 s
    assert flips == [(0.23, True)]


def test_tremor_of_a_hover_counts_as_still():
    det = PresenceDetector()
    assert run(det, [150, 160, 150, 150, 140, 150] * 5)[0] == (0.05, True)


def test_leaving_needs_absent_time_and_movement_never_ends_presence():
    det = PresenceDetector(PresencePolicy(absent_s=0.15))
    run(det, [150] * 20)
    assert det.present
    assert run(det, [150, 250, 120, 300, 200] * 10, t0=1.0) == []   # moving inside the window
    [(at, present)] = run(det, [None] * 20, t0=2.0)
    assert not present and 2.15 <= at <= 2.16


def advise(readings, strength=3000, policy=AdvicePolicy(after_s=0.3, repeat_s=2.0), t0=0.0):
    advisor = PlacementAdvisor(PresencePolicy(), policy)
    said = []
    for i, d in enumerate(readings):
        words = advisor.update(d, strength, t0 + i * 0.01)
        if words:
            said.append((round(t0 + i * 0.01, 2), words))
    return advisor, said


def test_too_close_from_a_saturated_sensor_and_too_far_above_the_window():
    advisor, said = advise([None] * 50, strength=SATURATED_STRENGTH)
    assert advisor.placement is Placement.TOO_CLOSE
    assert said == [(0.3, "move your hand a little higher")]
    advisor, said = advise([400] * 50)
    assert advisor.placement is Placement.TOO_FAR and said == [(0.3, "move your hand a little closer")]


def test_no_advice_for_a_hand_passing_through_or_nothing_there_and_no_repeats():
    _, said = advise(list(range(450, 150, -20)) + [150] * 100)   # comes in, hovers: fine
    assert said == []
    _, said = advise([1200] * 100 + [None] * 100)                 # the ceiling; a weak return
    assert said == []
    _, said = advise([400] * 300)                                 # 3 s too far: said, and again after 2 s
    assert [t for t, _ in said] == [0.3, 2.3]


def test_hold_still_for_a_hand_moving_in_the_window():
    _, said = advise([150, 200, 250, 200] * 20)
    assert said and said[0][1] == "hold still"
