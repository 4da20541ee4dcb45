"""Typed snapshots of a supervision tree, for diagnostics and the bus."""

from __future__ import annotations

import enum
from typing import Literal

import attrs

RestartType = Literal["permanent", "transient", "temporary"]
"""OTP restart types: ``permanent`` always restarted, ``transient`` only after an
exception, ``temporary`` never."""

Strategy = Literal["one_for_one", "rest_for_one", "one_for_all"]
"""OTP restart strategies: which children restart when one of them fails."""


class ChildState(enum.Enum):
    """Where a supervised child is in its life cycle."""

    STARTING = "starting"
    """Spawned, has not signalled ``ctx.started()`` yet."""
    RUNNING = "running"
    RESTARTING = "restarting"
    """Exited or stopped for a sibling's restart; waiting out its backoff."""
    STOPPED = "stopped"
    """Not running and not coming back (normal exit not restarted, or supervisor stopped)."""
    FAILED = "failed"
    """Exited with an error and will not be restarted, or abandoned at shutdown."""


class SupervisorState(enum.Enum):
    """Life cycle of a supervisor's ``run``."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ESCALATED = "escalated"
    """Gave up: too many restarts within the period, or a child failed to start."""


@attrs.frozen
class ChildSnapshot:
    """One child of a supervisor at a moment."""

    id: str
    restart: RestartType
    state: ChildState
    restarts: int
    """How many times this supervisor has restarted it (over the supervisor's lifetime)."""
    last_error: str | None
    """One line: the last error it exited with."""
    since: float | None
    """trio time of its last state change; None before the supervisor first ran."""
    subtree: SupervisorSnapshot | None = None
    """The nested supervisor's own tree, if this child is a supervisor."""


@attrs.frozen
class SupervisorSnapshot:
    """A supervisor and its children, in start order."""

    name: str
    strategy: Strategy
    state: SupervisorState
    intensity: int
    period: float
    children: tuple[ChildSnapshot, ...]


@attrs.frozen
class ChildStateChanged:
    """Published on the supervisor's bus at every child state change."""

    supervisor: str
    child: str
    old: ChildState
    new: ChildState
    error: str | None
    at: float


__all__ = [
    "ChildSnapshot",
    "ChildState",
    "ChildStateChanged",
    "RestartType",
    "Strategy",
    "SupervisorSnapshot",
    "SupervisorState",
]
