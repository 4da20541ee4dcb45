"""Supervisor semantics under a MockClock: hours of backoff run in milliseconds, no real sleeps."""

from __future__ import annotations

import logging
import random
from functools import partial

import pytest
import trio
import trio.testing

from palmnode.actors import (
    Backoff,
    ChildSpec,
    ChildState,
    ChildStateChanged,
    DeviceState,
    EventBus,
    HealthRegistry,
    Supervisor,
    SupervisorEscalation,
    SupervisorState,
)
from tests.actors.harness import Harness

NO_BACKOFF = Backoff(initial=0.0, maximum=0.0, multiplier=1.0, jitter=0.0)
EXACT = Backoff(initial=0.1, maximum=2.0, multiplier=2.0, jitter=0.0)


def specs(h: Harness, *names: str, **kwargs) -> list[ChildSpec]:
    return [ChildSpec(name, h.body(name), **kwargs) for name in names]


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def raises_escalation() -> pytest.RaisesGroup[SupervisorEscalation]:
    return pytest.RaisesGroup(SupervisorEscalation, flatten_subgroups=True)


def leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def test_starts_in_order_and_stops_in_reverse(nursery: trio.Nursery) -> None:
    h = Harness()
    sup = Supervisor("node", specs(h, "a", "b", "c"))
    await nursery.start(sup.run)
    await settle()
    assert h.log == ["start a", "start b", "start c"]
    assert sup.tree().state is SupervisorState.RUNNING
    h.clear()
    await sup.stop()
    assert h.log == ["stop c", "stop b", "stop a"]
    assert [c.state for c in sup.tree().children] == [ChildState.STOPPED] * 3
    assert sup.tree().state is SupervisorState.STOPPED


async def test_signalled_start_waits_for_each_child(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    children = [
        ChildSpec("a", h.body("a", start_delay=1.0, signals=True), signals_started=True),
        ChildSpec("b", h.body("b", start_delay=2.0, signals=True), signals_started=True),
        ChildSpec("c", h.body("c")),
    ]
    sup = Supervisor("node", children)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        # nursery.start returns once every child has started: a at 1 s, then b at 3 s
        assert trio.current_time() == pytest.approx(3.0)
        assert h.start_times("a") == [pytest.approx(0.0)]
        assert h.start_times("b") == [pytest.approx(1.0)]
        assert h.start_times("c") == [pytest.approx(3.0)]
        await sup.stop()


async def test_cancellation_stops_children_in_reverse() -> None:
    h = Harness()
    sup = Supervisor("node", specs(h, "a", "b", "c"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await settle()
        h.clear()
        nursery.cancel_scope.cancel()
    assert h.log == ["stop c", "stop b", "stop a"]
    assert not h.live


async def test_child_failing_to_start_fails_the_supervisor_start() -> None:
    h = Harness()
    children = [
        ChildSpec("a", h.body("a")),
        ChildSpec("b", h.body("b", signals=True, fail_runs={1}), signals_started=True),
        ChildSpec("c", h.body("c")),
    ]
    sup = Supervisor("node", children)
    with raises_escalation() as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
    assert leaf(info.value).child == "b"
    assert "failed to start" in str(leaf(info.value))
    assert h.log == ["start a", "failstart b", "stop a"]
    assert sup.tree().state is SupervisorState.ESCALATED
    assert sup.tree().children[1].state is ChildState.FAILED


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("one_for_one", ["stop b", "start b"]),
        ("rest_for_one", ["stop b", "stop d", "stop c", "start b", "start c", "start d"]),
        ("one_for_all", ["stop b", "stop d", "stop c", "stop a", "start a", "start b", "start c", "start d"]),
    ],
)
async def test_restart_strategies_pick_the_right_set(
    autojump_clock: trio.testing.MockClock, strategy: str, expected: list[str]
) -> None:
    h = Harness()
    sup = Supervisor("node", specs(h, "a", "b", "c", "d"), strategy=strategy, backoff=EXACT)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await settle()
        h.clear()
        h.crash("b")
        await trio.sleep(1)
        assert h.log == expected
        assert set(h.live) == {"a", "b", "c", "d"}
        restarted = {e.split()[1] for e in expected if e.startswith("start")}
        assert {c.id: c.restarts for c in sup.tree().children} == {
            n: int(n in restarted) for n in "abcd"
        }
        await sup.stop()


async def test_rest_for_one_stops_but_never_restarts_a_temporary_sibling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    children = [
        ChildSpec("a", h.body("a")),
        ChildSpec("b", h.body("b"), restart="temporary"),
        ChildSpec("c", h.body("c")),
    ]
    sup = Supervisor("node", children, strategy="rest_for_one", backoff=EXACT)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await settle()
        h.clear()
        h.crash("a")
        await trio.sleep(1)
        assert h.log == ["stop a", "stop c", "stop b", "start a", "start c"]
        assert [c.state for c in sup.tree().children] == [
            ChildState.RUNNING,
            ChildState.STOPPED,
            ChildState.RUNNING,
        ]
        await sup.stop()


@pytest.mark.parametrize(
    ("restart", "outcome", "restarted", "final"),
    [
        ("permanent", "crash", True, ChildState.RUNNING),
        ("permanent", "exit", True, ChildState.RUNNING),
        ("transient", "crash", True, ChildState.RUNNING),
        ("transient", "exit", False, ChildState.STOPPED),
        ("temporary", "crash", False, ChildState.FAILED),
        ("temporary", "exit", False, ChildState.STOPPED),
    ],
)
async def test_restart_types(
    autojump_clock: trio.testing.MockClock, restart: str, outcome: str, restarted: bool, final: ChildState
) -> None:
    h = Harness()
    sup = Supervisor("node", [ChildSpec("x", h.body("x"), restart=restart)], backoff=EXACT)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await settle()
        getattr(h, outcome)("x")
        await trio.sleep(10)
        assert h.starts["x"] == (2 if restarted else 1)
        child = sup.tree().children[0]
        assert child.state is final
        assert child.restarts == int(restarted)
        if outcome == "crash":
            assert child.last_error == "Boom: x crashed second line"
        await sup.stop()


async def test_intensity_exceeded_escalates_after_stopping_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    sup = Supervisor("node", specs(h, "a", "b"), intensity=2, period=5.0, backoff=NO_BACKOFF)
    with raises_escalation() as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            for _ in range(3):  # the third restart within 5 s is one too many
                await trio.sleep(1)
                h.crash("b")
    assert leaf(info.value).child == "b"
    assert "3 restarts within 5 s" in str(leaf(info.value))
    assert isinstance(leaf(info.value).__cause__, Exception)
    assert not h.live
    assert h.log[-2:] == ["stop b", "stop a"]
    assert sup.tree().state is SupervisorState.ESCALATED
    assert sup.tree().children[1].state is ChildState.FAILED


async def test_restarts_spread_beyond_the_period_never_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    sup = Supervisor("node", specs(h, "a"), intensity=2, period=5.0, backoff=NO_BACKOFF)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for _ in range(20):
            await trio.sleep(2.6)  # at most two restarts in any 5 s window
            h.crash("a")
        await settle()
        assert sup.tree().children[0].restarts == 20
        await sup.stop()


async def test_nested_supervisor_escalates_to_its_parent(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    inner = Supervisor("devices", specs(h, "camera", "reader"), intensity=1, period=5.0, backoff=NO_BACKOFF)
    outer = Supervisor(
        "node", [ChildSpec("link", h.body("link")), inner.as_child()], intensity=1, period=60.0, backoff=EXACT
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(outer.run)
        await settle()
        assert h.log == ["start link", "start camera", "start reader"]
        h.clear()
        h.crash("reader")  # restart 1 of 1 allowed
        await settle()
        h.crash("reader")  # too many: devices gives up, node restarts it after its backoff
        await trio.sleep(1)
        assert h.log == [
            "stop reader", "start reader",
            "stop reader", "stop camera",
            "start camera", "start reader",
        ]
        tree = outer.tree()
        devices = tree.children[1]
        assert devices.id == "devices" and devices.restarts == 1
        assert devices.state is ChildState.RUNNING
        assert devices.last_error is not None and "gave up on child 'reader'" in devices.last_error
        assert devices.subtree is not None
        assert [(c.id, c.state) for c in devices.subtree.children] == [
            ("camera", ChildState.RUNNING),
            ("reader", ChildState.RUNNING),
        ]
        assert devices.subtree.children[1].restarts == 1  # the second failure was not restarted by 'devices'
        assert tree.children[0].subtree is None
        h.clear()
        await outer.stop()
        assert h.log == ["stop reader", "stop camera", "stop link"]


async def test_escalation_climbs_to_the_top(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    inner = Supervisor("devices", specs(h, "camera"), intensity=0, backoff=NO_BACKOFF)
    outer = Supervisor("node", [inner.as_child()], intensity=0, backoff=NO_BACKOFF)
    with raises_escalation() as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(outer.run)
            h.crash("camera")
    assert leaf(info.value).supervisor == "node" and leaf(info.value).child == "devices"
    assert isinstance(leaf(info.value).__cause__, SupervisorEscalation)
    assert not h.live


async def test_backoff_grows_exponentially_up_to_the_maximum(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    child = ChildSpec("x", h.body("x", crash_after=0.0))  # crashes as soon as it runs
    sup = Supervisor("node", [child], intensity=1000, period=5.0, backoff=EXACT)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        await sup.stop()
    starts = h.start_times("x")
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[:7] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])


async def test_backoff_jitter_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    child = ChildSpec("x", h.body("x", crash_after=0.0))
    backoff = Backoff(initial=0.1, maximum=2.0, multiplier=2.0, jitter=0.1)
    sup = Supervisor("node", [child], intensity=1000, backoff=backoff, rng=random.Random(7))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(30)
        await sup.stop()
    starts = h.start_times("x")
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(gaps) > 10
    for attempt, gap in enumerate(gaps):
        nominal = backoff.nominal(attempt)
        assert nominal * 0.9 - 1e-9 <= gap <= min(2.0, nominal * 1.1) + 1e-9
    assert len({round(g, 6) for g in gaps[6:]}) > 1  # jitter actually varies


async def test_backoff_resets_after_a_healthy_run(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    sup = Supervisor("node", specs(h, "x"), intensity=100, period=5.0, backoff=EXACT)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for _ in range(4):  # quick failures: 0.1, 0.2, 0.4, 0.8
            await settle()
            h.crash("x")
            await trio.sleep(2.0)
        await trio.sleep(5.0)  # now it runs healthily for a whole period
        h.crash("x")
        await trio.sleep(1.0)
        await sup.stop()
    starts = h.start_times("x")
    crash_times = [t for e, t in h.times if e == "stop x"]
    delays = [s - c for c, s in zip(crash_times, starts[1:])]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 0.1])


async def test_one_for_one_handles_other_children_during_a_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    slow = Backoff(initial=10.0, maximum=10.0, multiplier=1.0, jitter=0.0)
    sup = Supervisor("node", specs(h, "a", "b"), intensity=10, backoff=slow)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await settle()
        h.crash("a")
        await trio.sleep(1)
        h.crash("b")
        await trio.sleep(9.5)
        assert h.start_times("a") == [0.0, pytest.approx(10.0)]
        assert h.start_times("b") == [0.0]  # b waits its own 10 s
        await trio.sleep(1)
        assert h.start_times("b") == [0.0, pytest.approx(11.0)]
        await sup.stop()


async def test_restart_that_fails_to_start_counts_and_backs_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    body = h.body("x", signals=True, fail_runs={2, 3, 4})
    sup = Supervisor("node", [ChildSpec("x", body, signals_started=True)], intensity=10, backoff=EXACT)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await settle()
        h.crash("x")
        await trio.sleep(5)
        assert [(e, round(t, 6)) for e, t in h.times] == [
            ("start x", 0.0),
            ("stop x", 0.0),
            ("failstart x", 0.1),
            ("failstart x", 0.3),
            ("failstart x", 0.7),
            ("start x", 1.5),
        ]
        child = sup.tree().children[0]
        assert (child.state, child.restarts, child.last_error) == (
            ChildState.RUNNING, 4, "Boom: x cannot start",
        )
        await sup.stop()


async def test_failed_restarts_count_toward_intensity(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    body = h.body("x", signals=True, fail_runs={2, 3, 4})
    sup = Supervisor("node", [ChildSpec("x", body, signals_started=True)], intensity=2, backoff=EXACT)
    with raises_escalation() as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await settle()
            h.crash("x")
    assert "3 restarts within 5 s" in str(leaf(info.value))
    assert "cannot start" in str(leaf(info.value))
    assert h.starts["x"] == 3


async def test_stuck_child_is_abandoned_after_its_shutdown_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[tuple[str, float]] = []

    async def stuck(ctx) -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(100)  # ignores the cancellation for 100 s
            log.append(("stuck gone", trio.current_time()))

    h = Harness()
    children = [ChildSpec("a", h.body("a")), ChildSpec("stuck", stuck, shutdown_timeout=1.0)]
    sup = Supervisor("node", children)
    caplog.set_level(logging.ERROR, logger="palmnode.actors.supervisor")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await sup.stop()
        assert trio.current_time() == pytest.approx(1.0)  # not held up for 100 s
        assert h.times[-1] == ("stop a", pytest.approx(1.0))
        child = sup.tree().children[1]
        assert child.state is ChildState.FAILED
        assert child.last_error is not None and "abandoned" in child.last_error
        assert "'stuck' did not stop within 1 s" in caplog.text
    assert log == [("stuck gone", pytest.approx(100.0))]  # run() returned once it really ended


async def test_tree_snapshot_and_bus_events(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    bus = EventBus()
    health = HealthRegistry(bus)
    health.register("camera")
    children = [
        ChildSpec("camera", h.body("camera"), device="camera"),
        ChildSpec("enrol", h.body("enrol"), restart="transient"),
    ]
    sup = Supervisor("node", children, backoff=EXACT, health=health, bus=bus)
    before = sup.tree()
    assert before.state is SupervisorState.IDLE
    assert [(c.id, c.state, c.since) for c in before.children] == [
        ("camera", ChildState.STOPPED, None),
        ("enrol", ChildState.STOPPED, None),
    ]
    async with bus.subscribe(ChildStateChanged, buffer=100) as events, trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(3)
        h.crash("camera")
        await settle()
        assert health.device("camera").state is DeviceState.LOST
        assert sup.tree().children[0].state is ChildState.RESTARTING
        await trio.sleep(1)
        h.exit("enrol")
        await settle()
        tree = sup.tree()
        assert tree.name == "node" and tree.strategy == "one_for_one" and tree.intensity == 3
        camera, enrol = tree.children
        assert (camera.state, camera.restarts, camera.last_error) == (
            ChildState.RUNNING, 1, "Boom: camera crashed second line",
        )
        assert camera.since == pytest.approx(3.1)
        assert (enrol.state, enrol.restarts, enrol.last_error, enrol.since) == (
            ChildState.STOPPED, 0, None, pytest.approx(4.0),
        )
        assert health.device("camera").restarts == 1
        await sup.stop()
        seen = []
        while True:
            try:
                e = events.receive_nowait()
            except trio.WouldBlock:
                break
            seen.append((e.child, e.old.value, e.new.value))
    assert seen == [
        ("camera", "stopped", "starting"),
        ("camera", "starting", "running"),
        ("enrol", "stopped", "starting"),
        ("enrol", "starting", "running"),
        ("camera", "running", "restarting"),
        ("camera", "restarting", "starting"),
        ("camera", "starting", "running"),
        ("enrol", "running", "stopped"),
        ("camera", "running", "stopped"),
    ]


async def test_run_twice_at_once_is_refused(nursery: trio.Nursery) -> None:
    h = Harness()
    sup = Supervisor("node", specs(h, "a"))
    await nursery.start(sup.run)
    with pytest.raises(RuntimeError, match="already running"):
        await sup.run()
    await sup.stop()
    await sup.stop()  # idempotent


def test_specs_are_validated() -> None:
    async def body(ctx) -> None: ...

    with pytest.raises(ValueError):
        ChildSpec("x", body, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ChildSpec("", body)
    with pytest.raises(ValueError, match="duplicate child ids"):
        Supervisor("node", [ChildSpec("x", body), ChildSpec("x", body)])
    with pytest.raises(ValueError, match="strategy"):
        Supervisor("node", [], strategy="all_for_one")  # type: ignore[arg-type]


async def test_failing_optional_device_degrades_the_gate_without_stopping_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The node's shape: a card reader that keeps failing ends FAILED, the camera keeps going."""
    h = Harness()
    health = HealthRegistry()
    health.register("camera")
    health.register("card")

    async def device_actor(name: str, ctx) -> None:
        ctx.started()  # signal before touching hardware that may be missing
        health.set_state(name, DeviceState.OPENING)
        if name == "card":
            raise OSError(5, "Input/output error")
        health.set_state(name, DeviceState.READY)
        await h.body(name)(ctx)

    card = Supervisor(
        "card", [ChildSpec("card-reader", partial(device_actor, "card"), signals_started=True)],
        intensity=2, period=5.0, backoff=EXACT,
    )
    node = Supervisor(
        "node",
        [
            ChildSpec("camera", partial(device_actor, "camera"), signals_started=True, device="camera"),
            card.as_child(restart="temporary", device="card"),
        ],
        health=health,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await trio.sleep(5)
        assert health.device("card").state is DeviceState.FAILED
        assert "gave up on child 'card-reader'" in (health.device("card").last_error or "")
        assert health.device("camera").state is DeviceState.READY
        assert health.gate.value == "degraded"
        assert [c.state for c in node.tree().children] == [ChildState.RUNNING, ChildState.FAILED]
        assert set(h.live) == {"camera"}
        await node.stop()


async def test_child_hanging_in_start_is_cancelled_after_its_start_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A restart that never signals started is a failed start: the supervisor goes on handling
    its other children (a crash of 'a' used to stay unhandled, 'a' shown RUNNING, for good)."""
    h = Harness()
    runs: list[float] = []

    async def b(ctx) -> None:
        runs.append(trio.current_time())
        if len(runs) == 1:
            ctx.started()
            await trio.sleep(1)
            raise RuntimeError("b crashed")
        if len(runs) == 2:
            await trio.sleep_forever()  # hangs before it has started
        ctx.started()
        await trio.sleep_forever()

    children = [ChildSpec("a", h.body("a")), ChildSpec("b", b, signals_started=True, start_timeout=10.0)]
    sup = Supervisor("node", children, intensity=10, backoff=EXACT)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(2)
        h.crash("a")
        await trio.sleep(100)
        assert h.starts["a"] == 2
        assert runs == [0.0, pytest.approx(1.1), pytest.approx(11.3)]  # 10 s start timeout, backoff 0.2 s
        a, b_child = sup.tree().children
        assert (a.state, b_child.state, b_child.restarts) == (ChildState.RUNNING, ChildState.RUNNING, 2)
        assert b_child.last_error == "TimeoutError: did not signal started within 10 s"
        await sup.stop()


async def test_an_abandoned_child_is_restarted_only_once_it_has_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A sibling stopped for a restart that outlives its shutdown_timeout is not run twice at once."""
    h = Harness()
    running: list[int] = []
    starts: list[float] = []

    async def stuck(ctx) -> None:
        starts.append(trio.current_time())
        running.append(1)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(100 if len(starts) == 1 else 0)  # the first ignores cancellation 100 s
            running.pop()

    children = [ChildSpec("a", h.body("a")), ChildSpec("stuck", stuck, shutdown_timeout=1.0),
                ChildSpec("c", h.body("c"))]
    sup = Supervisor("node", children, strategy="rest_for_one", backoff=EXACT)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(1)
        h.crash("a")
        await trio.sleep(50)
        assert len(running) == 1 and starts == [0.0]  # the first still runs: no second one yet
        assert h.starts["a"] == 2  # 'a', before it, was restarted after its backoff; 'c' waits
        assert h.starts["c"] == 1
        assert [c.state for c in sup.tree().children][1:] == [ChildState.RESTARTING] * 2
        await trio.sleep(100)
        assert len(running) == 1 and starts == [0.0, pytest.approx(101.0)]  # once it ended
        assert h.start_times("c") == [0.0, pytest.approx(101.0)]
        assert [c.state for c in sup.tree().children] == [ChildState.RUNNING] * 3
        await sup.stop()


async def test_a_crash_whose_message_names_a_person_is_kept_by_its_type_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A vault error names a person (the identify flow's second look reading a tampered template:
    "template right#1 of person p…"). The tree keeps a child's last error until its next one —
    past that person's deletion, in memory and in the REPL's `tree` — so, like the log
    (logs.error_text), it keeps the type alone; so does the ChildStateChanged on the bus."""
    from palmnode.vault import TamperedData

    person = "p000001-cd3d"
    runs = 0

    async def identify(ctx) -> None:
        nonlocal runs
        runs += 1
        ctx.started()
        if runs == 1:
            raise TamperedData(f"template right#1 of person {person} in vault v.db: sealed value fails authentication")
        await trio.sleep_forever()

    bus = EventBus()
    sup = Supervisor("gate", [ChildSpec("identify", identify, signals_started=True)], backoff=EXACT, bus=bus)
    async with bus.subscribe(ChildStateChanged, buffer=100) as events, trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(1)
        child = sup.tree().children[0]
        assert (child.state, child.restarts) == (ChildState.RUNNING, 1)
        assert child.last_error == "TamperedData (its message names a person: not kept)"
        await sup.stop()
        errors = []
        while True:
            try:
                errors.append(events.receive_nowait().error)
            except trio.WouldBlock:
                break
    assert "TamperedData (its message names a person: not kept)" in errors
    assert not any(person in (e or "") for e in errors), errors
