"""agentcluster: stateful agents that answer signals with actions, on one node or many.

The public API is what ``__all__`` lists; everything else is private to its layer.
"""

from agentcluster import errors
from agentcluster.agent import (
    Action,
    Agent,
    AgentInfo,
    AgentState,
    BusSensor,
    Capability,
    ChildSpec,
    Context,
    DeadLetter,
    Directive,
    IntervalSensor,
    LocalNode,
    ResourceSensor,
    Sensor,
    Skill,
)
from agentcluster.clock import Clock, ManualClock, SystemClock
from agentcluster.core.codec import decode, encode
from agentcluster.core.retry import RetryPolicy
from agentcluster.core.signal import Signal
from agentcluster.errors import (
    ActionFailed,
    ActionTimeout,
    ActionValidationError,
    AgentClusterError,
    AgentCrashed,
    AgentExists,
    AgentNotFound,
    CallCycle,
    CallTimeout,
    MailboxFull,
    NoRoute,
    RestoreFailed,
    SignalDecodeError,
    SignalExpired,
    SignalTooLarge,
)
from agentcluster.telemetry import Telemetry, attach, emit

__version__ = "0.1.0"

__all__ = [
    "Action",
    "ActionFailed",
    "ActionTimeout",
    "ActionValidationError",
    "Agent",
    "AgentClusterError",
    "AgentCrashed",
    "AgentExists",
    "AgentInfo",
    "AgentNotFound",
    "AgentState",
    "BusSensor",
    "CallCycle",
    "CallTimeout",
    "Capability",
    "ChildSpec",
    "Clock",
    "Context",
    "DeadLetter",
    "Directive",
    "IntervalSensor",
    "LocalNode",
    "MailboxFull",
    "ManualClock",
    "NoRoute",
    "ResourceSensor",
    "RestoreFailed",
    "RetryPolicy",
    "Sensor",
    "Signal",
    "SignalDecodeError",
    "SignalExpired",
    "SignalTooLarge",
    "Skill",
    "SystemClock",
    "Telemetry",
    "attach",
    "decode",
    "emit",
    "encode",
    "errors",
]
