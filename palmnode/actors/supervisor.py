"""OTP-style supervisor on trio.

A :class:`Supervisor` runs its children (:class:`ChildSpec`) as tasks in its own nursery:

* **Start in order.** Child *n+1* is spawned once child *n* has started. A child with
  ``signals_started=False`` (the default) counts as started as soon as it is spawned; one with
  ``signals_started=True`` must call ``ctx.started()`` (like ``task_status.started()`` of
  ``nursery.start``) and the supervisor waits for that. A child that raises before it has
  started fails the supervisor's start (it raises :class:`SupervisorEscalation`), as in OTP.
  So does one that has not signalled within its ``start_timeout`` (it is cancelled): the
  supervisor handles nothing else while a child starts, so a start that hung would leave its
  siblings' exits unhandled, and their restarts undone, for good.
  So a device actor should signal started *before* it blocks on hardware that may be
  missing, and report OPENING/LOST in the health registry instead.
* **Restart** when a child exits: ``permanent`` always, ``transient`` only after an exception,
  ``temporary`` never. The strategy picks the set: ``one_for_one`` the child alone,
  ``rest_for_one`` it and every child after it, ``one_for_all`` all children. The set is stopped
  in reverse order and started again in order (``temporary`` members are stopped, not restarted).
* **Backoff** before each restart: :class:`~palmnode.actors.backoff.Backoff` of the number of
  consecutive failures of the child; the count resets once a child has run for ``period``
  seconds before failing. The supervisor keeps handling other children while it waits.
* **Intensity**: more than ``intensity`` restarts within ``period`` seconds and the supervisor
  gives up: it stops every child (reverse order) and raises :class:`SupervisorEscalation` to its
  parent. A failed restart attempt (the child raises before it has started) counts as a restart.
* **Stop in reverse order** on ``await sup.stop()``, cancellation of ``run``, or escalation: each
  child is cancelled and given ``shutdown_timeout`` seconds; a child still running then is
  *abandoned*: an error is logged, it shows as FAILED, and the others are stopped without waiting
  for it. trio cannot end a task that ignores cancellation, so ``run()`` itself returns when that
  task finally exits; ``stop()`` returns as soon as the ordered stop is done. A child abandoned
  when stopped for a restart is started again only once that task has ended (never two at once),
  and so are the members of its restart group after it.

Children are shielded from outside cancellation: only the supervisor cancels them, so stopping
always happens in reverse order. Run with ``await nursery.start(sup.run)``, which returns once
every child has started. A supervisor can itself be a child: ``parent_children=[...,
sup.as_child()]`` (or ``ChildSpec("x", sup.run, signals_started=True)``).
"""

from __future__ import annotations

import collections
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from palmnode.actors.backoff import Backoff
from palmnode.actors.bus import EventBus
from palmnode.actors.health import DeviceState, HealthRegistry, one_line
from palmnode.actors.tree import (
    ChildSnapshot,
    ChildState,
    ChildStateChanged,
    RestartType,
    Strategy,
    SupervisorSnapshot,
    SupervisorState,
)
from palmnode.logs import error_text

log = logging.getLogger(__name__)

_RESTART_TYPES = ("permanent", "transient", "temporary")
_STRATEGIES = ("one_for_one", "rest_for_one", "one_for_all")


class SupervisorEscalation(Exception):
    """A supervisor gave up: restart intensity exceeded, or a child failed to start.

    ``__cause__`` is the child's last error (None if it exited normally).
    """

    def __init__(self, supervisor: str, child: str, reason: str) -> None:
        super().__init__(f"supervisor {supervisor!r} gave up on child {child!r}: {reason}")
        self.supervisor = supervisor
        self.child = child
        self.reason = reason


@attrs.frozen
class ChildSpec:
    """How to run and restart one child.

    ``start`` is the child's body, called as ``await start(ctx)`` with a :class:`ChildContext`;
    use ``functools.partial`` for more arguments. ``device`` names the device this child drives
    in the supervisor's health registry: the supervisor then marks it LOST when the child fails,
    FAILED when it will not restart it, and counts its restarts. A child with
    ``signals_started=True`` that has not called ``ctx.started()`` within ``start_timeout``
    seconds is cancelled and counts as failing to start.
    """

    id: str = attrs.field(validator=attrs.validators.min_len(1))
    start: Callable[[ChildContext], Awaitable[object]]
    restart: RestartType = attrs.field(
        default="permanent", validator=attrs.validators.in_(_RESTART_TYPES)
    )
    shutdown_timeout: float = attrs.field(default=5.0, validator=attrs.validators.ge(0.0))
    signals_started: bool = False
    start_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0.0))
    device: str | None = None


class ChildContext:
    """What a child's body receives: who it is, and ``started()`` to signal readiness.

    It is also a ``trio.TaskStatus``, so ``Supervisor.run`` can be a child's body directly.
    """

    def __init__(self, id: str, supervisor: str, restarts: int, incarnation: _Incarnation) -> None:
        self.id = id
        self.supervisor = supervisor
        self.restarts = restarts
        """How many times this child has been restarted before this run."""
        self._incarnation = incarnation

    def started(self, value: object = None) -> None:
        """Tell the supervisor this child is up (``value`` is ignored).

        Needed only with ``signals_started=True``; otherwise a harmless no-op.
        """
        inc = self._incarnation
        if inc.started_at is not None:
            if inc.slot.spec.signals_started:
                raise RuntimeError(f"child {self.id!r} called started() twice")
            return
        inc.started_at = trio.current_time()
        inc.settled.set()


@attrs.define(eq=False)
class _Slot:
    index: int
    spec: ChildSpec
    state: ChildState = ChildState.STOPPED
    since: float | None = None
    restarts: int = 0
    streak: int = 0  # consecutive failures, for backoff
    last_error: str | None = None
    current: _Incarnation | None = None


@attrs.define(eq=False)
class _Incarnation:
    """One run of a child's body."""

    slot: _Slot
    exits: trio.MemorySendChannel[_Incarnation]
    scope: trio.CancelScope = attrs.field(factory=lambda: trio.CancelScope(shield=True))
    settled: trio.Event = attrs.field(factory=trio.Event)  # started or finished
    done: trio.Event = attrs.field(factory=trio.Event)
    started_at: float | None = None
    error: Exception | None = None
    finished: bool = False
    handled: bool = False  # the supervisor has dealt with (or asked for) its exit
    abandoned: bool = False  # still running after its shutdown_timeout: no restart until it ends


def _nested_supervisor(spec: ChildSpec) -> Supervisor | None:
    owner = getattr(spec.start, "__self__", None)
    if isinstance(owner, Supervisor) and getattr(spec.start, "__func__", None) is Supervisor.run:
        return owner
    return None


class Supervisor:
    """Runs ``children`` with OTP semantics (see the module docstring).

    ``health`` and ``bus`` are optional: with a bus, every child state change publishes a
    :class:`~palmnode.actors.tree.ChildStateChanged`; with a health registry, children that
    name a ``device`` have its state and restart count kept up to date. ``rng`` seeds jitter.
    """

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = "one_for_one",
        intensity: int = 3,
        period: float = 5.0,
        backoff: Backoff = Backoff(initial=0.1, maximum=2.0, multiplier=2.0, jitter=0.1),
        health: HealthRegistry | None = None,
        bus: EventBus | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ValueError(f"supervisor {name!r}: strategy must be one of {_STRATEGIES}, got {strategy!r}")
        if intensity < 0 or period <= 0:
            raise ValueError(f"supervisor {name!r}: need intensity >= 0 and period > 0")
        ids = [c.id for c in children]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"supervisor {name!r}: duplicate child ids {duplicates}")
        self.name = name
        self.strategy: Strategy = strategy
        self.intensity = intensity
        self.period = period
        self.backoff = backoff
        self._health = health
        self._bus = bus
        self._rng = rng if rng is not None else random.Random()
        self._slots = [_Slot(i, spec) for i, spec in enumerate(children)]
        self._state = SupervisorState.IDLE
        self._pending: dict[int, float] = {}  # slot index -> trio time its restart is due
        self._restart_times: collections.deque[float] = collections.deque()
        self._loop_scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._exits_send, self._exits_receive = trio.open_memory_channel[_Incarnation](math.inf)

    # ------------------------------------------------------------------ public

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every child in order, supervise them until stopped, then stop them in reverse.

        Signals ``task_status.started()`` once all children have started. Returns after
        ``stop()``; raises :class:`SupervisorEscalation` when it gives up. Can be run again
        after it returns (restart counts in ``tree()`` accumulate).
        """
        if self._state in (SupervisorState.STARTING, SupervisorState.RUNNING, SupervisorState.STOPPING):
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._reset()
        escalation: SupervisorEscalation | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                with self._loop_scope:
                    self._state = SupervisorState.STARTING
                    for slot in self._slots:
                        if not await self._spawn(slot):
                            inc = slot.current
                            assert inc is not None
                            self._set_child_state(slot, ChildState.FAILED, inc.error)
                            self._report_device(slot, DeviceState.FAILED, inc.error)
                            raise SupervisorEscalation(
                                self.name, slot.spec.id, "failed to start"
                            ) from inc.error
                    self._state = SupervisorState.RUNNING
                    task_status.started()
                    await self._supervise()
            except SupervisorEscalation as exc:
                escalation = exc
            finally:
                with trio.CancelScope(shield=True):
                    self._state = SupervisorState.STOPPING
                    await self._stop_all()
                    self._state = SupervisorState.ESCALATED if escalation else SupervisorState.STOPPED
                    self._stopped.set()
        self._nursery = None
        if escalation is not None:
            log.error("%s", escalation)
            raise escalation

    async def stop(self) -> None:
        """Stop every child in reverse order and make ``run()`` return; waits for the stop.

        A no-op (but a checkpoint) if the supervisor is not running.
        """
        if self._state not in (SupervisorState.STARTING, SupervisorState.RUNNING, SupervisorState.STOPPING):
            await trio.lowlevel.checkpoint()
            return
        self._loop_scope.cancel()
        await self._stopped.wait()

    def tree(self) -> SupervisorSnapshot:
        """A snapshot of this supervisor and its children (nested supervisors included)."""
        return SupervisorSnapshot(
            name=self.name,
            strategy=self.strategy,
            state=self._state,
            intensity=self.intensity,
            period=self.period,
            children=tuple(self._child_snapshot(slot) for slot in self._slots),
        )

    def as_child(
        self,
        *,
        id: str | None = None,
        restart: RestartType = "permanent",
        shutdown_timeout: float = math.inf,
        device: str | None = None,
    ) -> ChildSpec:
        """A :class:`ChildSpec` running this supervisor under another one.

        The default ``shutdown_timeout`` is infinite: this supervisor bounds its own stop by
        its children's timeouts, as OTP does for supervisor children; so is its
        ``start_timeout`` (a child that hangs in start fails this supervisor's start). ``restart="temporary"``
        with a ``device`` makes a device that keeps failing end up FAILED in the parent's
        health registry (gate DEGRADED) instead of taking its siblings down.
        """
        return ChildSpec(
            id=self.name if id is None else id,
            start=self.run,
            restart=restart,
            shutdown_timeout=shutdown_timeout,
            signals_started=True,
            start_timeout=math.inf,
            device=device,
        )

    # ------------------------------------------------------------- internals

    def _reset(self) -> None:
        self._pending.clear()
        self._restart_times.clear()
        self._loop_scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._exits_send, self._exits_receive = trio.open_memory_channel[_Incarnation](math.inf)
        for slot in self._slots:
            slot.current = None
            slot.streak = 0

    def _child_snapshot(self, slot: _Slot) -> ChildSnapshot:
        nested = _nested_supervisor(slot.spec)
        return ChildSnapshot(
            id=slot.spec.id,
            restart=slot.spec.restart,
            state=slot.state,
            restarts=slot.restarts,
            last_error=slot.last_error,
            since=slot.since,
            subtree=nested.tree() if nested is not None else None,
        )

    def _set_child_state(self, slot: _Slot, state: ChildState, error: BaseException | str | None = None) -> None:
        if error is not None:
            slot.last_error = one_line(error)
        if state is slot.state and slot.since is not None:
            return
        old, slot.state = slot.state, state
        slot.since = trio.current_time()
        if self._bus is not None:
            self._bus.publish(
                ChildStateChanged(
                    self.name, slot.spec.id, old, state, one_line(error) if error else None, slot.since
                )
            )

    def _report_device(self, slot: _Slot, state: DeviceState, error: BaseException | str | None) -> None:
        if self._health is not None and slot.spec.device is not None:
            self._health.set_state(slot.spec.device, state, error)

    async def _child_main(self, inc: _Incarnation) -> None:
        slot = inc.slot
        ctx = ChildContext(slot.spec.id, self.name, slot.restarts, inc)
        try:
            with inc.scope:
                await slot.spec.start(ctx)
        except Exception as exc:
            inc.error = exc
        finally:
            inc.finished = True
            if inc.started_at is None and inc.error is None:
                # A clean exit before signalling counts as "started, then exited normally".
                inc.started_at = trio.current_time()
            inc.done.set()
            inc.settled.set()
            if (inc.started_at is not None and not inc.handled) or inc.abandoned:
                inc.exits.send_nowait(inc)

    async def _spawn(self, slot: _Slot) -> bool:
        """Start one incarnation of ``slot``; False if it raised before it had started."""
        assert self._nursery is not None
        inc = _Incarnation(slot, self._exits_send)
        slot.current = inc
        self._set_child_state(slot, ChildState.STARTING)
        if not slot.spec.signals_started:
            inc.started_at = trio.current_time()
            inc.settled.set()
        self._nursery.start_soon(self._child_main, inc, name=f"{self.name}/{slot.spec.id}")
        with trio.move_on_after(slot.spec.start_timeout):
            await inc.settled.wait()
        if not inc.settled.is_set():
            inc.error = TimeoutError(f"did not signal started within {slot.spec.start_timeout:g} s")
            await self._stop_child(slot, then=ChildState.STARTING)
        if inc.started_at is None:
            return False
        self._set_child_state(slot, ChildState.RUNNING)
        return True

    async def _supervise(self) -> None:
        while True:
            await self._restart_due()
            deadline = min((at for index, at in self._pending.items() if self._can_restart(index)),
                           default=math.inf)
            inc: _Incarnation | None = None
            with trio.move_on_at(deadline):
                inc = await self._exits_receive.receive()
            if inc is not None and not inc.handled and inc is inc.slot.current:
                await self._on_exit(inc)

    async def _restart_due(self) -> None:
        while True:
            now = trio.current_time()
            due = [index for index, at in self._pending.items() if at <= now and self._can_restart(index)]
            if not due:
                return
            slot = self._slots[min(due)]
            del self._pending[slot.index]
            slot.restarts += 1
            if self._health is not None and slot.spec.device is not None:
                self._health.note_restart(slot.spec.device)
            if not await self._spawn(slot):
                assert slot.current is not None
                await self._on_exit(slot.current)

    def _can_restart(self, index: int) -> bool:
        """False while the slot's last incarnation, abandoned, still runs (never two at once), or
        that of a slot before it in its restart group (due at the same time): start order holds."""
        at = self._pending[index]
        return all(s.current is None or s.current.finished
                   for s in self._slots[: index + 1] if self._pending.get(s.index) == at)

    def _restart_group(self, slot: _Slot) -> list[_Slot]:
        if self.strategy == "one_for_one":
            return [slot]
        if self.strategy == "rest_for_one":
            return self._slots[slot.index :]
        return list(self._slots)

    async def _on_exit(self, inc: _Incarnation) -> None:
        """Handle an exit the supervisor did not ask for: restart, give up, or let it be."""
        inc.handled = True
        slot, error = inc.slot, inc.error
        spec = slot.spec
        now = trio.current_time()
        if error is not None:
            log.warning("supervisor %r: child %r failed: %s", self.name, spec.id, error_text(error), exc_info=error)
        wants_restart = spec.restart == "permanent" or (spec.restart == "transient" and error is not None)
        if not wants_restart:
            self._set_child_state(slot, ChildState.FAILED if error else ChildState.STOPPED, error)
            if error is not None:
                self._report_device(slot, DeviceState.FAILED, error)
            return
        if inc.started_at is not None and now - inc.started_at >= self.period:
            slot.streak = 0  # it ran healthily for a while: start backing off from scratch
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] <= now - self.period:
            self._restart_times.popleft()
        if len(self._restart_times) > self.intensity:
            self._set_child_state(slot, ChildState.FAILED, error)
            self._report_device(slot, DeviceState.FAILED, error)
            reason = (
                f"{len(self._restart_times)} restarts within {self.period:g} s "
                f"(intensity {self.intensity}); last exit: {error_text(error) if error else 'normal'}"
            )
            raise SupervisorEscalation(self.name, spec.id, reason) from error
        if error is not None:
            self._report_device(slot, DeviceState.LOST, error)
        delay = self.backoff.delay(slot.streak, self._rng)
        slot.streak += 1
        group = self._restart_group(slot)
        for other in reversed(group):
            if other is not slot:
                then = ChildState.STOPPED if other.spec.restart == "temporary" else ChildState.RESTARTING
                await self._stop_child(other, then=then)
        members = [s for s in group if s.spec.restart != "temporary"]
        due = max([now + delay] + [self._pending[s.index] for s in members if s.index in self._pending])
        for member in members:
            self._pending[member.index] = due
            self._set_child_state(member, ChildState.RESTARTING, error if member is slot else None)

    async def _stop_child(self, slot: _Slot, *, then: ChildState = ChildState.STOPPED) -> None:
        """Cancel ``slot``'s running body, wait up to its shutdown_timeout, else abandon it."""
        inc = slot.current
        if inc is None or inc.finished:
            if inc is not None:
                inc.handled = True
            if slot.state in (ChildState.STARTING, ChildState.RUNNING):
                self._set_child_state(slot, then)
            return
        inc.handled = True
        inc.scope.cancel()
        with trio.move_on_after(slot.spec.shutdown_timeout):
            await inc.done.wait()
        if inc.finished:
            self._set_child_state(slot, then, inc.error)
            return
        inc.abandoned = True  # its exit (when it comes) wakes _supervise for a restart now due
        message = f"did not stop within {slot.spec.shutdown_timeout:g} s of cancellation; abandoned"
        log.error("supervisor %r: child %r %s", self.name, slot.spec.id, message)
        self._set_child_state(slot, ChildState.FAILED, message)

    async def _stop_all(self) -> None:
        self._pending.clear()
        for slot in reversed(self._slots):
            await self._stop_child(slot)
            if slot.state is ChildState.RESTARTING:
                self._set_child_state(slot, ChildState.STOPPED)


__all__ = ["ChildContext", "ChildSpec", "Supervisor", "SupervisorEscalation"]
