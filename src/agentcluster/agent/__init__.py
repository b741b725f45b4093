"""The agent runtime: actions, agents, skills, sensors, servers, supervisors, the node."""

from agentcluster.agent.action import Action, NoParams
from agentcluster.agent.agent import Agent, AgentState
from agentcluster.agent.bus import SignalBus, Subscription
from agentcluster.agent.context import Context
from agentcluster.agent.dead_letters import DeadLetter, DeadLetterStore
from agentcluster.agent.directives import (
    Directive,
    Emit,
    Enqueue,
    RegisterAction,
    RemoveAction,
    Schedule,
    SetState,
    Spawn,
    Stop,
    StopChild,
    Unschedule,
)
from agentcluster.agent.node import AgentInfo, Capability, ChildSpec, LocalNode, Target
from agentcluster.agent.sensor import BusSensor, IntervalSensor, ResourceSensor, Sensor
from agentcluster.agent.skill import Skill
from agentcluster.agent.supervisor import Supervisor

__all__ = [
    "Action",
    "Agent",
    "AgentInfo",
    "AgentState",
    "BusSensor",
    "Capability",
    "ChildSpec",
    "Context",
    "DeadLetter",
    "DeadLetterStore",
    "Directive",
    "Emit",
    "Enqueue",
    "IntervalSensor",
    "LocalNode",
    "NoParams",
    "RegisterAction",
    "RemoveAction",
    "ResourceSensor",
    "Schedule",
    "Sensor",
    "SetState",
    "Signal",
    "SignalBus",
    "Skill",
    "Spawn",
    "Stop",
    "StopChild",
    "Subscription",
    "Supervisor",
    "Target",
    "Unschedule",
]

from agentcluster.core.signal import Signal
