"""Directives: what an action asks the runtime to do once it has returned.

Actions compute; the agent server applies. An action never changes its agent's state or
starts anything itself: it returns its result together with directives, and the server
carries them out in order after the action succeeded. A failed action therefore changes
nothing, which is what lets a crashed agent restart with its last good state and what
later lets a persistent agent release effects only after its snapshot commits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentcluster.errors import ConfigurationError

if TYPE_CHECKING:
    from agentcluster.agent.action import Action
    from agentcluster.agent.agent import Agent
    from agentcluster.core.signal import Signal

__all__ = [
    "Directive",
    "Emit",
    "Enqueue",
    "RegisterAction",
    "RemoveAction",
    "Schedule",
    "SetState",
    "Spawn",
    "Stop",
    "StopChild",
    "Unschedule",
]


class Directive:
    """Base of every directive; only the runtime interprets them."""

    __slots__ = ()


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class SetState(Directive):
    """Replace some fields of the agent's state (or of a skill's namespace)."""

    changes: Mapping[str, Any]
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class Emit(Directive):
    """Send a signal: to ``signal.target`` when set, else publish it on the node's bus."""

    signal: Signal


@dataclass(frozen=True, slots=True)
class Enqueue(Directive):
    """Run another action of this agent right after the current one."""

    action: type[Action] | str
    params: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Schedule(Directive):
    """Run an action later (``after`` seconds) and, with ``every``, periodically.

    Schedules belong to the agent's snapshot and are re-armed when it is restored.
    A schedule with the same ``key`` replaces the previous one.
    """

    action: type[Action] | str
    params: Mapping[str, Any] | None = None
    after: float = 0.0
    every: float | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        # Refused when built, inside the action, so a bad schedule fails the action
        # before any of its directives (its state change included) is applied.
        if not _is_seconds(self.after) or self.after < 0:
            raise ConfigurationError(f"schedule needs a finite after >= 0, got {self.after!r}")
        if self.every is not None and (not _is_seconds(self.every) or self.every <= 0):
            raise ConfigurationError(f"schedule needs a finite every > 0, got {self.every!r}")


@dataclass(frozen=True, slots=True)
class Unschedule(Directive):
    """Cancel a pending schedule by key."""

    key: str


@dataclass(frozen=True, slots=True)
class Spawn(Directive):
    """Start a child agent supervised by this one; it stops when its parent stops."""

    agent: type[Agent]
    id: str | None = None
    state: Mapping[str, Any] | None = None
    restart: str = "transient"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StopChild(Directive):
    """Stop a child agent this agent spawned."""

    id: str


@dataclass(frozen=True, slots=True)
class RegisterAction(Directive):
    """Add an action to this agent at run time, optionally routed by ``pattern``."""

    action: type[Action]
    pattern: str | None = None
    priority: int = 0


@dataclass(frozen=True, slots=True)
class RemoveAction(Directive):
    """Remove an action (and every route to it) from this agent at run time."""

    action: type[Action] | str


@dataclass(frozen=True, slots=True)
class Stop(Directive):
    """Stop this agent after the current action; ``reason`` "normal" is a clean exit."""

    reason: str = "normal"
