"""The context an action runs in: what it may read, and the directives it may return.

``ctx.state`` is the agent's state (or its skill's namespace) as it was when the action
started; the action never assigns to it. ``ctx.set(...)``, ``ctx.emit(...)`` and the
other helpers *build* directives for the action to return; nothing happens until the
agent server applies them. ``ctx.call`` / ``ctx.cast`` talk to other agents at once and
carry the call chain, so a cycle (A calls B calls A) is refused instead of deadlocking.

``ctx.cancelled`` turns true when the action's timeout passes or its caller gives up. An
async action is also interrupted at its next ``await``; a synchronous one (running in a
worker thread) cannot be, so long loops should check ``ctx.cancelled``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentcluster.agent.directives import (
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
from agentcluster.core.signal import Signal

if TYPE_CHECKING:
    from agentcluster.agent.action import Action
    from agentcluster.agent.agent import Agent
    from agentcluster.agent.node import LocalNode, Target

__all__ = ["Context"]


class Context:
    __slots__ = (
        "_cancelled",
        "action",
        "agent",
        "agent_id",
        "attempt",
        "namespace",
        "node",
        "signal",
        "state",
    )

    def __init__(
        self,
        agent: Agent,
        state: Any,
        signal: Signal | None,
        action: type[Action] | None,
        namespace: str | None,
        node: LocalNode,
    ) -> None:
        self.agent = agent
        self.agent_id = agent.id
        self.state = state
        self.signal = signal
        self.action = action
        self.namespace = namespace
        self.node = node
        self.attempt = 1
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        """True once the action's timeout passed or its caller gave up."""
        return self._cancelled

    @property
    def fencing_token(self) -> tuple[int, int] | None:
        """(agent incarnation, state revision) of a critical or durable agent; None for a
        plain one. Pass it to systems outside the cluster so they can refuse a write from
        an instance that was since replaced: both numbers only grow."""
        server = self.node._agents.get(self.agent_id)
        keeper = None if server is None else server.keeper
        return None if keeper is None else keeper.fencing_token

    # --- directives ---------------------------------------------------------------

    def set(self, **changes: Any) -> SetState:
        """Change fields of the state; validated per field when applied."""
        return SetState(changes, self.namespace)

    def emit(
        self,
        signal: Signal | str,
        data: Any = None,
        *,
        target: str | None = None,
        **attrs: Any,
    ) -> Emit:
        """A signal to send after the action succeeds, caused by the current one.

        A prebuilt ``Signal`` keeps the causation and correlation it carries; when it has
        none, they are taken from the signal being handled, as for a type string.
        """
        if isinstance(signal, str):
            if self.signal is not None:
                signal = self.signal.caused(signal, data, target=target, **attrs)
            else:
                signal = Signal(signal, data, target=target, **attrs)
        else:
            changes: dict[str, Any] = dict(attrs)
            if target is not None:
                changes["target"] = target
            cause = self.signal
            if cause is not None and signal.causationid is None:
                changes["causationid"] = cause.id
                if signal.correlationid is None:
                    changes["correlationid"] = cause.correlationid or cause.id
                if signal.traceparent is None and cause.traceparent is not None:
                    changes["traceparent"] = cause.traceparent
            if changes:
                signal = signal.evolve(**changes)
        if signal.source == "agentcluster":
            signal = signal.evolve(source=f"agentcluster/agents/{self.agent_id}")
        return Emit(signal)

    def enqueue(
        self, action: type[Action] | str, params: Mapping[str, Any] | None = None
    ) -> Enqueue:
        return Enqueue(action, params)

    def schedule(
        self,
        action: type[Action] | str,
        params: Mapping[str, Any] | None = None,
        *,
        after: float = 0.0,
        every: float | None = None,
        key: str | None = None,
    ) -> Schedule:
        return Schedule(action, params, after, every, key)

    def unschedule(self, key: str) -> Unschedule:
        return Unschedule(key)

    def spawn(
        self,
        agent: type[Agent],
        id: str | None = None,
        *,
        state: Mapping[str, Any] | None = None,
        restart: str = "transient",
        **options: Any,
    ) -> Spawn:
        return Spawn(agent, id, state, restart, options)

    def stop_child(self, id: str) -> StopChild:
        return StopChild(id)

    def register_action(
        self, action: type[Action], pattern: str | None = None, priority: int = 0
    ) -> RegisterAction:
        return RegisterAction(action, pattern, priority)

    def remove_action(self, action: type[Action] | str) -> RemoveAction:
        return RemoveAction(action)

    def stop(self, reason: str = "normal") -> Stop:
        return Stop(reason)

    # --- talking to other agents now ----------------------------------------------

    def _outgoing(self, signal: Signal | str, data: Any) -> Signal:
        if isinstance(signal, str):
            if self.signal is not None:
                return self.signal.caused(signal, data)
            return Signal(signal, data)
        return signal

    async def call(
        self,
        target: Target,
        signal: Signal | str,
        data: Any = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Call another agent and wait for its reply; the call chain rides along."""
        out = self._outgoing(signal, data)
        chain = self.signal.callchain if self.signal is not None else ()
        out = out.evolve(callchain=(*chain, self.agent_id))
        return await self.node.outbound.call(target, out, timeout=timeout)

    async def cast(self, target: Target, signal: Signal | str, data: Any = None) -> None:
        """Fire and forget to another agent, at once (not held back like ``emit``)."""
        await self.node.outbound.cast(target, self._outgoing(signal, data))
