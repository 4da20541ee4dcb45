"""Per-device health and the gate's overall state.

Device actors report what they see (``set_state``, ``seen``, ``count``); the supervisor
reports restarts; diagnostics read ``snapshot()`` and ``gate``. The gate state is a
first-class value, never an exception: a lost card reader makes the gate DEGRADED, not dead.
"""

from __future__ import annotations

import enum

import attrs
import trio

from palmnode.actors.bus import EventBus


class DeviceState(enum.Enum):
    """Life cycle of one device as its actor sees it."""

    INIT = "init"
    """Registered, its actor has not tried to open it yet."""
    OPENING = "opening"
    """Opening the port / handshaking (also while reopening after a loss)."""
    READY = "ready"
    LOST = "lost"
    """Was working and went away (unplugged, stopped answering); a reopen is coming."""
    FAILED = "failed"
    """Given up on: the supervisor will not restart it."""
    DISABLED = "disabled"
    """Switched off on purpose (configuration or operator); ignored by the gate state."""


class GateState(enum.Enum):
    """What the gate as a whole can do right now."""

    STARTING = "starting"
    """Devices are still opening for the first time, and none has been lost yet."""
    READY = "ready"
    """Every enabled device is ready."""
    DEGRADED = "degraded"
    """Some device is not ready, some is: the gate serves with what it has."""
    DOWN = "down"
    """No enabled device is ready (after start): the gate cannot serve at all."""


@attrs.frozen
class DeviceHealth:
    """One device's health at a moment (a copy: later changes do not show in it)."""

    name: str
    state: DeviceState
    last_error: str | None
    """One line: the most recent error reported, kept after the device recovers."""
    restarts: int
    last_seen: float | None
    """trio time of the last frame/byte received from the device."""
    since: float
    """trio time of the last state change."""
    counters: dict[str, int] = attrs.field(hash=False)
    """Named event counters: drops by reason (``"dropped_checksum"``) and the like (the camera's
    ``"frames_skipped"``: frames passed over for a newer one, not lost)."""


@attrs.frozen
class DeviceStateChanged:
    """Published on the bus whenever a device changes state."""

    name: str
    old: DeviceState
    new: DeviceState
    error: str | None
    at: float


@attrs.frozen
class GateStateChanged:
    """Published on the bus whenever the gate state changes."""

    old: GateState
    new: GateState
    at: float


def one_line(error: BaseException | str) -> str:
    """``"Type: message"`` on a single line, for health and tree displays; the type alone when its
    message may name a person (``exc.names_person``, as in logs.error_text): a last error is kept
    until the next one, past that person's deletion."""
    if isinstance(error, BaseException):
        if getattr(error, "names_person", False):
            return f"{type(error).__name__} (its message names a person: not kept)"
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    else:
        text = error
    return " ".join(text.split())


@attrs.define
class _Device:
    name: str
    state: DeviceState
    since: float
    last_error: str | None = None
    restarts: int = 0
    last_seen: float | None = None
    counters: dict[str, int] = attrs.field(factory=dict)
    been_ready: bool = False
    been_lost: bool = False


class HealthRegistry:
    """Health of every device of the node, and the gate state derived from it.

    Must be used inside ``trio.run`` (timestamps are ``trio.current_time()``). If a
    ``bus`` is given, every device state change publishes :class:`DeviceStateChanged`
    and every gate state change :class:`GateStateChanged`.
    """

    def __init__(self, bus: EventBus | None = None) -> None:
        self._bus = bus
        self._devices: dict[str, _Device] = {}
        self._gate = GateState.STARTING
        self._gate_since = trio.current_time()

    def register(self, name: str) -> None:
        """Add device ``name`` in state INIT."""
        if name in self._devices:
            raise ValueError(f"device {name!r} is already registered")
        self._devices[name] = _Device(name, DeviceState.INIT, trio.current_time())
        self._update_gate()

    def set_state(self, name: str, state: DeviceState, error: BaseException | str | None = None) -> None:
        """Move ``name`` to ``state``; ``error`` (an exception or text) becomes its last error.

        Setting the current state again only updates the error and publishes nothing.
        """
        device = self._device(name)
        state = DeviceState(state)
        if error is not None:
            device.last_error = one_line(error)
        if state is device.state:
            return
        old, device.state = device.state, state
        device.since = trio.current_time()
        device.been_ready = device.been_ready or state is DeviceState.READY
        device.been_lost = device.been_lost or state in (DeviceState.LOST, DeviceState.FAILED)
        if self._bus is not None:
            self._bus.publish(
                DeviceStateChanged(name, old, state, one_line(error) if error else None, device.since)
            )
        self._update_gate()

    def seen(self, name: str, at: float | None = None) -> None:
        """Record that ``name`` just sent something (at trio time ``at``, default now)."""
        self._device(name).last_seen = trio.current_time() if at is None else at

    def count(self, name: str, counter: str, n: int = 1) -> None:
        """Add ``n`` to the device's ``counter`` (created at 0)."""
        counters = self._device(name).counters
        counters[counter] = counters.get(counter, 0) + n

    def note_restart(self, name: str) -> None:
        """Count one restart of the device's actor (the supervisor calls this)."""
        self._device(name).restarts += 1

    def device(self, name: str) -> DeviceHealth:
        """A snapshot of one device."""
        return self._snapshot(self._device(name))

    def snapshot(self) -> tuple[DeviceHealth, ...]:
        """Every device, in registration order."""
        return tuple(self._snapshot(d) for d in self._devices.values())

    @property
    def gate(self) -> GateState:
        """The gate state now (see :class:`GateState`)."""
        return self._gate

    @property
    def gate_since(self) -> float:
        """trio time of the last gate state change."""
        return self._gate_since

    def _device(self, name: str) -> _Device:
        try:
            return self._devices[name]
        except KeyError:
            raise KeyError(f"unknown device {name!r}: register() it first") from None

    @staticmethod
    def _snapshot(d: _Device) -> DeviceHealth:
        return DeviceHealth(
            name=d.name,
            state=d.state,
            last_error=d.last_error,
            restarts=d.restarts,
            last_seen=d.last_seen,
            since=d.since,
            counters=dict(d.counters),
        )

    def _compute_gate(self) -> GateState:
        enabled = [d for d in self._devices.values() if d.state is not DeviceState.DISABLED]
        if not enabled:
            return GateState.STARTING
        ready = [d for d in enabled if d.state is DeviceState.READY]
        if len(ready) == len(enabled):
            return GateState.READY
        first_opening = any(not d.been_ready and d.state in (DeviceState.INIT, DeviceState.OPENING)
                            for d in enabled)
        lost = any(d.been_lost for d in enabled)  # now or before: reopening is not starting
        if first_opening and not lost:
            return GateState.STARTING
        return GateState.DEGRADED if ready else GateState.DOWN

    def _update_gate(self) -> None:
        new = self._compute_gate()
        if new is self._gate:
            return
        old, self._gate = self._gate, new
        self._gate_since = trio.current_time()
        if self._bus is not None:
            self._bus.publish(GateStateChanged(old, new, self._gate_since))


__all__ = [
    "DeviceHealth",
    "DeviceState",
    "DeviceStateChanged",
    "GateState",
    "GateStateChanged",
    "HealthRegistry",
    "one_line",
]
