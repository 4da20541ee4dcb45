"""The actor runtime: OTP-style supervisors, mailboxes, an event bus and device health.

Each device, the pipeline, the controller link and the diagnostics server is an actor: a
task with a :class:`Mailbox` and a health state, run as a :class:`ChildSpec` under a
:class:`Supervisor`.
"""

from palmnode.actors.backoff import Backoff
from palmnode.actors.bus import BusStatistics, EventBus, Subscription, SubscriptionStatistics
from palmnode.actors.health import (
    DeviceHealth,
    DeviceState,
    DeviceStateChanged,
    GateState,
    GateStateChanged,
    HealthRegistry,
)
from palmnode.actors.mailbox import Call, Mailbox, MailboxStatistics, OverflowPolicy
from palmnode.actors.supervisor import ChildContext, ChildSpec, Supervisor, SupervisorEscalation
from palmnode.actors.tree import (
    ChildSnapshot,
    ChildState,
    ChildStateChanged,
    RestartType,
    Strategy,
    SupervisorSnapshot,
    SupervisorState,
)

__all__ = [
    "Backoff",
    "BusStatistics",
    "Call",
    "ChildContext",
    "ChildSnapshot",
    "ChildSpec",
    "ChildState",
    "ChildStateChanged",
    "DeviceHealth",
    "DeviceState",
    "DeviceStateChanged",
    "EventBus",
    "GateState",
    "GateStateChanged",
    "HealthRegistry",
    "Mailbox",
    "MailboxStatistics",
    "OverflowPolicy",
    "RestartType",
    "Strategy",
    "Subscription",
    "SubscriptionStatistics",
    "Supervisor",
    "SupervisorEscalation",
    "SupervisorSnapshot",
    "SupervisorState",
]
