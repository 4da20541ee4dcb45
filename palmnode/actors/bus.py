"""Publish/subscribe of typed events between actors.

Publishers never wait: every subscriber has its own bounded buffer, and a subscriber that
falls behind loses its oldest events (counted), so a slow diagnostics client can never
stall a device or the identification pipeline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import attrs
import trio

from palmnode.actors.mailbox import Mailbox, OverflowPolicy

E = TypeVar("E")

DEFAULT_BUFFER = 64


@attrs.frozen
class SubscriptionStatistics:
    """One subscriber's buffer and losses."""

    event_types: tuple[type, ...]
    buffer: int
    queued: int
    delivered: int
    """Events put into this subscriber's buffer."""
    dropped: int
    """Events lost because the subscriber fell behind (oldest dropped first)."""


@attrs.frozen
class BusStatistics:
    """Bus-wide totals; ``dropped`` includes subscribers that have since gone away."""

    published: int
    subscribers: int
    delivered: int
    dropped: int


class Subscription(Generic[E]):
    """The receiving end of :meth:`EventBus.subscribe`: iterate it, or ``await receive()``."""

    def __init__(self, event_types: tuple[type, ...], buffer: int) -> None:
        self.event_types = event_types
        self._mailbox: Mailbox[E] = Mailbox(buffer, OverflowPolicy.DROP_OLDEST, name="subscription")

    def wants(self, event: object) -> bool:
        """Whether ``event`` matches this subscription (any event if no types were given)."""
        return not self.event_types or isinstance(event, self.event_types)

    async def receive(self) -> E:
        """The next event, waiting for one."""
        return await self._mailbox.receive()

    def receive_nowait(self) -> E:
        """The next event, or :exc:`trio.WouldBlock` if none is queued."""
        return self._mailbox.receive_nowait()

    def __aiter__(self) -> Subscription[E]:
        return self

    async def __anext__(self) -> E:
        try:
            return await self._mailbox.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def statistics(self) -> SubscriptionStatistics:
        stats = self._mailbox.statistics()
        return SubscriptionStatistics(
            event_types=self.event_types,
            buffer=stats.capacity,
            queued=stats.queued,
            delivered=stats.sent,
            dropped=stats.dropped,
        )

    def _offer(self, event: E) -> None:
        self._mailbox.send_nowait(event)

    def _close(self) -> None:
        self._mailbox.close()


class EventBus:
    """Fan-out of typed events (attrs instances) to every interested subscriber.

    ``publish(event)`` is synchronous and never blocks. ``async with bus.subscribe(T1, T2)
    as events: async for event in events: ...`` receives events that are instances of any
    of the given types (all events if none are given), published while subscribed.
    """

    def __init__(self) -> None:
        self._subscriptions: list[Subscription[Any]] = []
        self._published = 0
        self._delivered_gone = 0
        self._dropped_gone = 0

    def publish(self, event: object) -> None:
        """Deliver ``event`` to every matching subscriber without waiting.

        Raises :exc:`TypeError` if ``event`` is not an attrs instance (events are typed).
        """
        if not attrs.has(type(event)):
            raise TypeError(f"events must be attrs instances, got {type(event).__name__}")
        self._published += 1
        for subscription in self._subscriptions:
            if subscription.wants(event):
                subscription._offer(event)

    @asynccontextmanager
    async def subscribe(
        self, *event_types: type[E], buffer: int = DEFAULT_BUFFER
    ) -> AsyncIterator[Subscription[E]]:
        """Subscribe for the duration of the ``async with`` block.

        ``buffer`` bounds how many undelivered events this subscriber may hold; beyond it
        the oldest are dropped and counted in the subscription's ``statistics()``.
        """
        for event_type in event_types:
            if not isinstance(event_type, type):
                raise TypeError(f"subscribe() takes event classes, got {event_type!r}")
        subscription: Subscription[E] = Subscription(tuple(event_types), buffer)
        self._subscriptions.append(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.remove(subscription)
            subscription._close()
            stats = subscription.statistics()
            self._delivered_gone += stats.delivered
            self._dropped_gone += stats.dropped

    def statistics(self) -> BusStatistics:
        current = [s.statistics() for s in self._subscriptions]
        return BusStatistics(
            published=self._published,
            subscribers=len(current),
            delivered=self._delivered_gone + sum(s.delivered for s in current),
            dropped=self._dropped_gone + sum(s.dropped for s in current),
        )


__all__ = ["BusStatistics", "EventBus", "Subscription", "SubscriptionStatistics"]
