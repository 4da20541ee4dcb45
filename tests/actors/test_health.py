"""Device health transitions, counters and the gate state, with bus events."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from palmnode.actors import (
    DeviceState,
    DeviceStateChanged,
    EventBus,
    GateState,
    GateStateChanged,
    HealthRegistry,
)


async def test_device_transitions_and_gate_state(autojump_clock: trio.testing.MockClock) -> None:
    bus = EventBus()
    async with bus.subscribe(DeviceStateChanged, GateStateChanged, buffer=100) as events:
        health = HealthRegistry(bus)
        assert health.gate is GateState.STARTING
        health.register("camera")
        health.register("card")
        health.set_state("camera", DeviceState.OPENING)
        assert health.gate is GateState.STARTING
        await trio.sleep(1)
        health.set_state("camera", DeviceState.READY)
        assert health.gate is GateState.STARTING  # the card reader is still opening
        health.set_state("card", DeviceState.LOST, "no such port")
        assert health.gate is GateState.DEGRADED  # a device that fails to open: serve without it
        health.set_state("card", DeviceState.READY)
        assert health.gate is GateState.READY
        await trio.sleep(1)
        health.set_state("card", DeviceState.LOST, OSError(5, "Input/output error"))
        assert health.gate is GateState.DEGRADED
        health.set_state("camera", DeviceState.LOST, "stream stalled")
        assert health.gate is GateState.DOWN
        health.set_state("camera", DeviceState.OPENING)
        assert health.gate is GateState.DOWN  # reopening after a loss is not "starting"
        health.set_state("card", DeviceState.READY)
        assert health.gate is GateState.DEGRADED
        health.set_state("camera", DeviceState.READY)
        health.set_state("card", DeviceState.DISABLED)
        assert health.gate is GateState.READY  # disabled devices do not count
        assert health.gate_since == pytest.approx(2.0)

        seen = []
        while True:
            try:
                seen.append(events.receive_nowait())
            except trio.WouldBlock:
                break
    gates = [(e.old, e.new) for e in seen if isinstance(e, GateStateChanged)]
    assert gates == [
        (GateState.STARTING, GateState.DEGRADED),
        (GateState.DEGRADED, GateState.READY),
        (GateState.READY, GateState.DEGRADED),
        (GateState.DEGRADED, GateState.DOWN),
        (GateState.DOWN, GateState.DEGRADED),
        (GateState.DEGRADED, GateState.READY),
    ]
    lost = [e for e in seen if isinstance(e, DeviceStateChanged) and e.new is DeviceState.LOST]
    assert [(e.name, e.old, e.error, e.at) for e in lost] == [
        ("card", DeviceState.INIT, "no such port", pytest.approx(1.0)),
        ("card", DeviceState.READY, "OSError: [Errno 5] Input/output error", pytest.approx(2.0)),
        ("camera", DeviceState.READY, "stream stalled", pytest.approx(2.0)),
    ]


async def test_snapshot_counters_and_last_seen(autojump_clock: trio.testing.MockClock) -> None:
    health = HealthRegistry()
    health.register("proximity")
    await trio.sleep(3)
    health.seen("proximity")
    health.count("proximity", "checksum")
    health.count("proximity", "checksum", 2)
    health.count("proximity", "resync")
    health.note_restart("proximity")
    health.set_state("proximity", DeviceState.FAILED, ValueError("bad\nframe"))
    (snap,) = health.snapshot()
    assert snap.name == "proximity"
    assert snap.state is DeviceState.FAILED
    assert snap.last_error == "ValueError: bad frame"
    assert snap.restarts == 1
    assert snap.last_seen == pytest.approx(3.0)
    health.seen("proximity", at=2.5)
    assert health.device("proximity").last_seen == 2.5
    assert snap.since == pytest.approx(3.0)
    assert snap.counters == {"checksum": 3, "resync": 1}
    health.count("proximity", "checksum")
    assert snap.counters["checksum"] == 3  # a snapshot does not change afterwards
    assert health.gate is GateState.DOWN
    health.set_state("proximity", DeviceState.READY)
    assert health.device("proximity").last_error == "ValueError: bad frame"  # kept for diagnostics


async def test_same_state_again_publishes_nothing() -> None:
    bus = EventBus()
    health = HealthRegistry(bus)
    health.register("camera")
    async with bus.subscribe(DeviceStateChanged) as events:
        health.set_state("camera", DeviceState.INIT, "still waiting")
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()
    assert health.device("camera").last_error == "still waiting"


async def test_unknown_and_duplicate_devices() -> None:
    health = HealthRegistry()
    health.register("camera")
    with pytest.raises(ValueError, match="already registered"):
        health.register("camera")
    with pytest.raises(KeyError, match="register"):
        health.set_state("card", DeviceState.READY)


async def test_a_device_reopened_after_a_loss_is_not_starting_again() -> None:
    """A device lost before it was ever ready, then OPENING again (its actor restarted by the
    supervisor after a crash, or the devices subtree restarted) keeps the gate DEGRADED."""
    health = HealthRegistry()
    health.register("camera")
    health.register("card")
    health.set_state("camera", DeviceState.READY)
    health.set_state("card", DeviceState.OPENING)
    health.set_state("card", DeviceState.LOST, "no such port")
    assert health.gate is GateState.DEGRADED
    health.set_state("card", DeviceState.OPENING)
    assert health.gate is GateState.DEGRADED
