"""A bounded per-actor inbox with an explicit overflow policy, and request/response calls.

An actor owns one :class:`Mailbox` and reads it in a loop (``async for msg in mailbox``);
anyone holding the mailbox can send to it. What happens when the inbox is full is decided
once, by its :class:`OverflowPolicy`, not by each sender.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

import attrs
import trio

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class OverflowPolicy(enum.Enum):
    """What :meth:`Mailbox.send` does when the mailbox is full."""

    BLOCK = "block"
    """The sender waits for room (``send_nowait`` raises :exc:`trio.WouldBlock`)."""
    DROP_OLDEST = "drop_oldest"
    """The oldest queued message is discarded to make room; sending never waits."""
    DROP_NEWEST = "drop_newest"
    """The message being sent is discarded; sending never waits."""


@attrs.frozen
class MailboxStatistics:
    """A snapshot of a mailbox's queue and its losses."""

    name: str
    policy: OverflowPolicy
    capacity: int
    queued: int
    sent: int
    """Messages accepted into the queue (including ones later dropped as oldest)."""
    received: int
    dropped: int
    """Messages lost to the overflow policy, oldest or newest."""
    senders_waiting: int
    receivers_waiting: int
    closed: bool


class Mailbox(Generic[T]):
    """A bounded inbox of ``capacity`` messages (>= 1) with an overflow ``policy``.

    ``await send(msg)`` / ``send_nowait(msg)`` put a message in; ``await receive()``,
    ``receive_nowait()`` or ``async for msg in mailbox`` take them out in order.
    ``close()`` ends the mailbox: further sends raise :exc:`trio.ClosedResourceError`,
    and receivers get the queued messages and then :exc:`trio.EndOfChannel` (iteration stops).
    """

    def __init__(
        self,
        capacity: int,
        policy: OverflowPolicy = OverflowPolicy.BLOCK,
        *,
        name: str = "",
    ) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"mailbox {name!r}: capacity must be an int >= 1, got {capacity!r}")
        self.name = name
        self.policy = OverflowPolicy(policy)
        self.capacity = capacity
        self._send, self._receive = trio.open_memory_channel[T](capacity)
        self._sent = 0
        self._received = 0
        self._dropped = 0

    def send_nowait(self, message: T) -> None:
        """Queue ``message`` without waiting.

        Under ``BLOCK`` a full mailbox raises :exc:`trio.WouldBlock`; under the drop
        policies a full mailbox loses a message (counted in ``statistics().dropped``).
        """
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            if self.policy is OverflowPolicy.BLOCK:
                raise
            self._dropped += 1
            if self.policy is OverflowPolicy.DROP_NEWEST:
                return
            # DROP_OLDEST: a full buffer means nobody is waiting to receive, so this cannot race.
            self._receive.receive_nowait()
            self._send.send_nowait(message)
        self._sent += 1

    async def send(self, message: T) -> None:
        """Queue ``message``; waits for room only under ``BLOCK``. Always a checkpoint."""
        if self.policy is OverflowPolicy.BLOCK:
            await self._send.send(message)
            self._sent += 1
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        self.send_nowait(message)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> T:
        """The next message, waiting for one; :exc:`trio.EndOfChannel` once closed and drained."""
        message = await self._receive.receive()
        self._received += 1
        return message

    def receive_nowait(self) -> T:
        """The next message, or :exc:`trio.WouldBlock` if the mailbox is empty."""
        message = self._receive.receive_nowait()
        self._received += 1
        return message

    def close(self) -> None:
        """Refuse further messages; receivers drain what is queued, then see the end."""
        self._send.close()

    def __aiter__(self) -> Mailbox[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def statistics(self) -> MailboxStatistics:
        """Queue length, totals and waiting tasks (trio's naming)."""
        stats = self._send.statistics()
        return MailboxStatistics(
            name=self.name,
            policy=self.policy,
            capacity=self.capacity,
            queued=stats.current_buffer_used,
            sent=self._sent,
            received=self._received,
            dropped=self._dropped,
            senders_waiting=stats.tasks_waiting_send,
            receivers_waiting=stats.tasks_waiting_receive,
            closed=stats.open_send_channels == 0,
        )

    async def call(self: Mailbox[Call[Req, Resp]], request: Req, timeout: float) -> Resp:
        """Send ``request`` wrapped in a :class:`Call` and wait up to ``timeout`` s for the reply.

        The actor answers with ``call.reply(value)`` or ``call.fail(exc)`` (then ``exc``
        is raised here). Raises :exc:`trio.TooSlowError` if no answer comes in time,
        including when the request was dropped by the overflow policy.
        """
        reply_send, reply_receive = trio.open_memory_channel[_Outcome[Resp]](1)
        with reply_receive, trio.fail_after(timeout):
            await self.send(Call(request, reply_send))
            outcome = await reply_receive.receive()
        if isinstance(outcome, _Failure):
            raise outcome.error
        return outcome.value


@attrs.frozen
class _Reply(Generic[Resp]):
    value: Resp


@attrs.frozen
class _Failure:
    error: Exception


_Outcome = _Reply[Resp] | _Failure


@attrs.frozen
class Call(Generic[Req, Resp]):
    """A request sent with :meth:`Mailbox.call`; answer it exactly once.

    Answering never blocks, and is silently ignored if the caller has already given up.
    """

    request: Req
    _reply_to: trio.MemorySendChannel[_Outcome[Resp]] = attrs.field(repr=False)

    @property
    def abandoned(self) -> bool:
        """The caller has given up (timed out or cancelled): an answer would reach nobody."""
        return self._reply_to.statistics().open_receive_channels == 0

    def reply(self, value: Resp) -> None:
        """Send ``value`` back to the caller."""
        self._answer(_Reply(value))

    def fail(self, error: Exception) -> None:
        """Make the caller's ``call`` raise ``error``."""
        self._answer(_Failure(error))

    def _answer(self, outcome: _Outcome[Resp]) -> None:
        try:
            self._reply_to.send_nowait(outcome)
        except trio.ClosedResourceError:
            raise RuntimeError(f"{self!r} was already answered") from None
        except trio.BrokenResourceError:
            pass  # the caller timed out or was cancelled; nobody is listening
        finally:
            self._reply_to.close()


__all__ = ["Call", "Mailbox", "MailboxStatistics", "OverflowPolicy"]
