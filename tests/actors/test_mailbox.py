"""Mailbox overflow policies, statistics and request/response calls."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from palmnode.actors import Call, Mailbox, OverflowPolicy


async def test_block_policy_waits_for_room_and_nowait_raises() -> None:
    box: Mailbox[int] = Mailbox(2, OverflowPolicy.BLOCK, name="pipeline")
    box.send_nowait(1)
    await box.send(2)
    with pytest.raises(trio.WouldBlock):
        box.send_nowait(3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.send, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert box.statistics().senders_waiting == 1
        assert await box.receive() == 1
    assert [box.receive_nowait(), box.receive_nowait()] == [2, 3]
    stats = box.statistics()
    assert (stats.name, stats.sent, stats.received, stats.dropped, stats.queued) == ("pipeline", 3, 3, 0, 0)


async def test_drop_oldest_keeps_the_newest_messages() -> None:
    box: Mailbox[int] = Mailbox(3, OverflowPolicy.DROP_OLDEST)
    for i in range(5):
        await box.send(i)
    assert box.statistics().dropped == 2
    assert [box.receive_nowait() for _ in range(3)] == [2, 3, 4]


async def test_drop_newest_keeps_the_oldest_messages() -> None:
    box: Mailbox[int] = Mailbox(3, "drop_newest")  # type: ignore[arg-type]  # values work too
    for i in range(5):
        box.send_nowait(i)
    stats = box.statistics()
    assert (stats.dropped, stats.sent, stats.queued) == (2, 3, 3)
    assert [box.receive_nowait() for _ in range(3)] == [0, 1, 2]


@given(
    policy=st.sampled_from([OverflowPolicy.DROP_OLDEST, OverflowPolicy.DROP_NEWEST]),
    capacity=st.integers(1, 8),
    ops=st.lists(st.booleans(), max_size=60),
)
def test_drop_policies_never_lose_count(policy: OverflowPolicy, capacity: int, ops: list[bool]) -> None:
    """Whatever the interleaving of sends (True) and receives (False): every message sent is
    received, dropped or still queued, and the queue never exceeds its capacity."""

    async def main() -> None:
        box: Mailbox[int] = Mailbox(capacity, policy)
        attempted = received = 0
        for op in ops:
            if op:
                box.send_nowait(attempted)
                attempted += 1
            else:
                try:
                    box.receive_nowait()
                    received += 1
                except trio.WouldBlock:
                    pass
            stats = box.statistics()
            assert stats.queued <= capacity
            assert attempted == received + stats.dropped + stats.queued

    trio.run(main)


async def test_close_drains_then_ends_iteration() -> None:
    box: Mailbox[str] = Mailbox(4)
    await box.send("a")
    await box.send("b")
    box.close()
    with pytest.raises(trio.ClosedResourceError):
        await box.send("c")
    assert [m async for m in box] == ["a", "b"]
    assert box.statistics().closed


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Mailbox(0)


async def test_call_gets_the_reply() -> None:
    box: Mailbox[Call[int, int]] = Mailbox(4)

    async def doubler() -> None:
        async for call in box:
            if call.request < 0:
                call.fail(ValueError("negative"))
            else:
                call.reply(call.request * 2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(doubler)
        assert await box.call(21, timeout=1.0) == 42
        with pytest.raises(ValueError, match="negative"):
            await box.call(-1, timeout=1.0)
        nursery.cancel_scope.cancel()


async def test_call_times_out_and_a_late_reply_is_harmless(autojump_clock: trio.testing.MockClock) -> None:
    box: Mailbox[Call[str, str]] = Mailbox(4)
    with pytest.raises(trio.TooSlowError):
        await box.call("ping", timeout=2.0)
    assert trio.current_time() == pytest.approx(2.0)
    late = box.receive_nowait()
    assert late.abandoned  # the actor can tell, and skip acting on it
    late.reply("pong")  # the caller is gone: ignored
    with pytest.raises(RuntimeError, match="already answered"):
        late.reply("again")
