"""Property tests: random crash schedules against a model of restart intensity."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import event, given, settings, strategies as st

from palmnode.actors import Backoff, ChildSpec, ChildState, Supervisor, SupervisorEscalation
from tests.actors.harness import Harness

NAMES = ["a", "b", "c", "d", "e"]


@given(
    attempt=st.integers(0, 200),
    initial=st.floats(0.0, 5.0),
    maximum=st.floats(0.0, 60.0),
    multiplier=st.floats(1.0, 4.0),
    jitter=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_backoff_delay_is_bounded(
    attempt: int, initial: float, maximum: float, multiplier: float, jitter: float, seed: int
) -> None:
    backoff = Backoff(initial=initial, maximum=maximum, multiplier=multiplier, jitter=jitter)
    nominal = backoff.nominal(attempt)
    assert nominal == maximum or nominal == pytest.approx(initial * multiplier**attempt)
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= maximum
    assert nominal * (1 - jitter) - 1e-9 <= delay <= nominal * (1 + jitter) + 1e-9
    assert backoff.nominal(attempt + 1) >= nominal


def _escalates(restart_times: list[float], intensity: int, period: float) -> bool:
    """The model: give up at the first restart with more than ``intensity`` in the window."""
    for k, now in enumerate(restart_times):
        if sum(1 for t in restart_times[: k + 1] if t > now - period) > intensity:
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(
    strategy=st.sampled_from(["one_for_one", "rest_for_one", "one_for_all"]),
    restart_types=st.lists(st.sampled_from(["permanent", "transient", "temporary"]), min_size=1, max_size=5),
    intensity=st.integers(0, 4),
    period=st.sampled_from([0.5, 2.0, 5.0]),
    schedule=st.lists(
        st.tuples(st.sampled_from([0.0, 0.05, 0.3, 1.0, 3.0]), st.integers(0, 4), st.sampled_from(["crash", "exit"])),
        min_size=3,
        max_size=25,
    ),
    seed=st.integers(0, 1000),
)
def test_random_crash_schedules(
    strategy: str,
    restart_types: list[str],
    intensity: int,
    period: float,
    schedule: list[tuple[float, int, str]],
    seed: int,
) -> None:
    """Whatever fails when: each child runs at most once at a time, nothing outlives the
    supervisor, restart counts match the starts observed, and the supervisor gives up exactly
    when the intensity model says so."""
    names = NAMES[: len(restart_types)]
    restart_of = dict(zip(names, restart_types))
    h = Harness()
    restart_times: list[float] = []
    escalated = False
    sup = Supervisor(
        "node",
        [ChildSpec(n, h.body(n), restart=restart_of[n]) for n in names],  # type: ignore[arg-type]
        strategy=strategy,  # type: ignore[arg-type]
        intensity=intensity,
        period=period,
        backoff=Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.1),
        rng=random.Random(seed),
    )

    async def main() -> None:
        nonlocal escalated
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
                for delay, who, outcome in schedule:
                    await trio.sleep(delay)
                    await trio.testing.wait_all_tasks_blocked()
                    assert h.duplicates == 0
                    name = names[who % len(names)]
                    if name not in h.live:
                        continue
                    kind = restart_of[name]
                    if kind == "permanent" or (kind == "transient" and outcome == "crash"):
                        restart_times.append(trio.current_time())
                    getattr(h, outcome)(name)
                    await trio.testing.wait_all_tasks_blocked()
                await sup.stop()
        except* SupervisorEscalation:
            escalated = True

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    event(f"escalated={escalated} restarts={len(restart_times) > 0}")
    assert not h.live, "a child outlived its supervisor"
    assert h.duplicates == 0
    assert escalated == _escalates(restart_times, intensity, period)
    tree = sup.tree()
    for child in tree.children:
        assert child.restarts == h.starts[child.id] - 1
        assert child.state in (ChildState.STOPPED, ChildState.FAILED)
    for name in names:
        if restart_of[name] == "temporary":
            assert h.starts[name] == 1
    if strategy == "one_for_all" and not escalated:
        permanent = [c.restarts for c in tree.children if c.restart == "permanent"]
        assert len(set(permanent)) <= 1  # they always restart together
