"""Event bus fan-out, type filtering, slow-subscriber drops and a publisher that never waits."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from palmnode.actors import EventBus


@attrs.frozen
class Presence:
    distance_mm: int


@attrs.frozen
class CardTapped:
    token: str


@attrs.frozen
class Near(Presence):
    pass


def drain(subscription) -> list:
    out = []
    while True:
        try:
            out.append(subscription.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_fan_out_by_type() -> None:
    bus = EventBus()
    async with (
        bus.subscribe(Presence) as presence,
        bus.subscribe(CardTapped) as cards,
        bus.subscribe() as everything,
    ):
        events = [Presence(300), CardTapped("t1"), Near(50)]
        for event in events:
            bus.publish(event)
        assert drain(presence) == [Presence(300), Near(50)]  # subclasses match
        assert drain(cards) == [CardTapped("t1")]
        assert drain(everything) == events
        assert bus.statistics().subscribers == 3
    stats = bus.statistics()
    assert (stats.published, stats.subscribers, stats.delivered, stats.dropped) == (3, 0, 6, 0)


async def test_slow_subscriber_loses_oldest_and_publisher_never_waits() -> None:
    bus = EventBus()
    async with bus.subscribe(Presence, buffer=4) as slow, bus.subscribe(Presence, buffer=100) as fast:
        for i in range(10):
            bus.publish(Presence(i))  # synchronous: cannot block, no checkpoint
        assert [e.distance_mm for e in drain(slow)] == [6, 7, 8, 9]
        assert len(drain(fast)) == 10
        assert slow.statistics().dropped == 6
        assert fast.statistics().dropped == 0
    assert bus.statistics().dropped == 6


async def test_subscriber_iterates_while_a_publisher_runs(autojump_clock: trio.testing.MockClock) -> None:
    bus = EventBus()
    received: list[int] = []

    async def consumer(task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with bus.subscribe(Presence) as events:
            task_status.started()
            async for event in events:
                received.append(event.distance_mm)
                if event.distance_mm == 2:
                    return

    async with trio.open_nursery() as nursery:
        await nursery.start(consumer)
        for i in range(3):
            bus.publish(Presence(i))
            await trio.sleep(0.1)
    assert received == [0, 1, 2]
    assert bus.statistics().subscribers == 0


async def test_events_published_before_subscribing_are_not_seen() -> None:
    bus = EventBus()
    bus.publish(Presence(1))
    async with bus.subscribe(Presence) as events:
        assert drain(events) == []


def test_only_typed_events() -> None:
    bus = EventBus()
    with pytest.raises(TypeError, match="attrs instances"):
        bus.publish({"distance": 3})
