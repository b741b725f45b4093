"""Supervisors: the shell that carries out ``core.supervision``'s restart plans.

A supervisor holds agent servers in start order. When one exits it asks
``plan_restart`` what to do and does it: restart the crashed agent in place (its task,
mailbox and last good state survive), ask siblings to restart between two of their
signals, stop the ones the plan stops, and escalate when the restart intensity is
exceeded — stopping its children and failing upward: to the agent that owns it (which
then crashes), or to the node (which marks the agent failed and
raises a critical alert).

The node's root supervisor counts intensity per child (as Akka's one-for-one strategy
does), so one agent that keeps crashing cannot take every other agent of the node down
with it. Supervisors a user builds count it for the whole supervisor, as OTP does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentcluster.core.supervision import (
    ExitKind,
    RestartIntensity,
    RestartType,
    Strategy,
    plan_restart,
)
from agentcluster.errors import ConfigurationError, RestartLimitExceeded

if TYPE_CHECKING:
    from agentcluster.agent.node import LocalNode
    from agentcluster.agent.server import AgentServer

__all__ = ["Supervisor"]

log = logging.getLogger("agentcluster.supervisor")


def _enum(kind: type[Any], value: object, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ConfigurationError(f"unknown {what} {value!r}; use one of {allowed}") from None


@dataclass(slots=True)
class _Child:
    server: AgentServer
    restart: RestartType
    # Per-child intensity (the node's root supervisor) is created on the first exit only:
    # most agents never crash, and spawning must stay cheap.
    limits: tuple[int, float] | None
    intensity: RestartIntensity | None = None


class Supervisor:
    def __init__(
        self,
        node: LocalNode,
        id: str,
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
        per_child: bool = False,
        owner: AgentServer | None = None,
    ) -> None:
        self.node = node
        self.id = id
        self.strategy = _enum(Strategy, strategy, "supervisor strategy")
        self.max_restarts = max_restarts
        self.period = period
        self.per_child = per_child
        self.owner = owner
        self._intensity = RestartIntensity(max_restarts, period)
        self._children: dict[str, _Child] = {}
        self.failed = False

    def add(
        self,
        server: AgentServer,
        restart: RestartType | str,
        *,
        max_restarts: int | None = None,
        period: float | None = None,
    ) -> None:
        limits = None
        if self.per_child:
            limits = (
                self.max_restarts if max_restarts is None else max_restarts,
                self.period if period is None else period,
            )
            if limits != (self.max_restarts, self.period):
                RestartIntensity(*limits)  # validates now rather than at the first crash
        self._children[server.id] = _Child(
            server, _enum(RestartType, restart, "restart type"), limits
        )
        server.supervisor = self

    def remove(self, child_id: str) -> None:
        self._children.pop(child_id, None)

    def children(self) -> list[str]:
        return list(self._children)

    def __contains__(self, child_id: object) -> bool:
        return child_id in self._children

    def __len__(self) -> int:
        return len(self._children)

    async def child_exited(
        self, child_id: str, kind: ExitKind, error: BaseException | None
    ) -> bool:
        """Carry out the restart plan; True when the exited child runs again in place."""
        child = self._children.get(child_id)
        if child is None:
            return False
        intensity = self._intensity
        if child.limits is not None:
            if child.intensity is None:
                child.intensity = RestartIntensity(*child.limits)
            intensity = child.intensity
        if self.per_child:
            order = [(child_id, child.restart)]
        else:
            order = [(cid, c.restart) for cid, c in self._children.items()]
        plan = plan_restart(
            self.strategy, order, child_id, kind, intensity, self.node.clock.monotonic()
        )
        if plan.escalate:
            await self._escalate(child, error)
            return False
        for cid in plan.remove:
            self._children.pop(cid, None)
        for cid in plan.stop:
            if cid not in plan.start:
                sibling = self._children.pop(cid, None)
                if sibling is not None:
                    await sibling.server.stop("shutdown")
        restarted_in_place = False
        for cid in plan.start:
            record = self._children.get(cid)
            if record is None:
                continue
            if cid == child_id:
                try:
                    await record.server.restart("restart")
                except Exception as mount_error:
                    log.exception("agent %r failed to restart", cid)
                    return await self.child_exited(cid, ExitKind.CRASH, mount_error)
                restarted_in_place = True
            else:
                record.server.request_control("restart")
            self.node._restarted(record.server, error)
        return restarted_in_place

    async def _escalate(self, child: _Child, error: BaseException | None) -> None:
        reason = RestartLimitExceeded(
            f"supervisor {self.id!r} gave up on {child.server.id!r} after more than "
            f"{child.intensity.max_restarts if child.intensity else self.max_restarts} "
            f"restarts in {child.intensity.period if child.intensity else self.period}s"
            + (f": last error {type(error).__name__}: {error}" if error is not None else ""),
            agent_id=child.server.id,
            node_id=self.node.node_id,
        )
        self.node.telemetry.emit(
            ("agentcluster", "supervisor", "escalated"),
            {"count": 1},
            {"supervisor": self.id, "agent_id": child.server.id, "error": str(reason)},
        )
        if self.per_child:
            self._children.pop(child.server.id, None)
            await child.server._finish("restart_limit", failed=True)
            self.node._alert_failed(child.server, reason)
            return
        self.failed = True
        crashed = child.server
        self._children.pop(crashed.id, None)
        await crashed._finish("restart_limit", failed=True)
        await self.shutdown()
        if self.owner is not None:
            self.owner.request_control("crash", reason)
        else:
            self.node._alert_failed(crashed, reason)

    async def shutdown(self) -> None:
        """Stop every child, newest first."""
        for cid in reversed(list(self._children)):
            record = self._children.pop(cid, None)
            if record is not None:
                await record.server.stop("shutdown")
