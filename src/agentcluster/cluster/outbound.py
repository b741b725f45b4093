"""Targets across the cluster: an agent id, or a capability held by agents on any node.

``ClusterOutbound`` is what a cluster node lends its ``LocalNode`` as ``outbound`` (so an
agent's own ``ctx.call`` / ``ctx.cast`` reach agents on every node) and what the
``Cluster`` facade sends through. It turns a target into agent ids — a capability with
``one`` is balanced by ``cluster.balancing.RequestBalancer`` (a request strategy, circuit
breakers, suspicion, load shedding; each request's outcome fed back), ``all`` takes each — and
hands each id to the node's ``Router``, which finds the node and delivers. A capability no
agent holds is dead-lettered here with ``AgentNotFound``, as a local node does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from agentcluster.agent.node import Capability, LocalNode, Target
from agentcluster.cluster.balancing import BalancerConfig, RequestBalancer
from agentcluster.cluster.inbox import DUPLICATE_WINDOW
from agentcluster.cluster.registry import Registry
from agentcluster.cluster.routing import Router
from agentcluster.core.membership import NodeRecord
from agentcluster.core.registry import AgentMode
from agentcluster.core.signal import Signal
from agentcluster.errors import (
    AgentClusterError,
    AgentNotFound,
    ConfigurationError,
    InvalidSignal,
    NoAvailableNode,
    Overloaded,
    UsageError,
)

__all__ = ["ClusterOutbound"]

T = TypeVar("T")


class ClusterOutbound:
    """Cast, send and call to ids and capabilities anywhere in the cluster."""

    def __init__(
        self,
        router: Router,
        registry: Registry,
        local: LocalNode,
        suspected: Callable[[str], bool] | None = None,
        members: Callable[[], Mapping[str, NodeRecord]] | None = None,
        balancing: BalancerConfig | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self._router = router
        self._registry = registry
        self._local = local
        self.balancer = RequestBalancer(
            registry.lookup,
            members if members is not None else dict,
            suspected,
            local.clock,
            local.telemetry,
            config=balancing,
            seed=f"{local.node_id}/balancer",
            zone=(labels or {}).get("zone"),
            region=(labels or {}).get("region"),
        )

    def _pick(self, target: Capability, signal: Signal) -> str:
        holders = self._registry.find_by_capability(target.name)
        if not holders:
            error: AgentClusterError = AgentNotFound(f"no agent has capability {target.name!r}")
            self._local.dead_letter(signal, error, None)
            raise error
        try:
            return self.balancer.pick(target.name, holders, target.key)
        except (NoAvailableNode, Overloaded) as refused:
            self._local.dead_letter(signal, refused, None)
            raise

    def targets(self, target: Target, signal: Signal) -> list[str]:
        if type(target) is str:
            return [target]
        if not isinstance(target, Capability):
            raise ConfigurationError(f"a target is an agent id or a Capability, not {target!r}")
        if target.mode == "all":
            holders = self._registry.find_by_capability(target.name)
            if not holders:
                error = AgentNotFound(f"no agent has capability {target.name!r}")
                self._local.dead_letter(signal, error, None)
                raise error
            return list(holders)
        return [self._pick(target, signal)]

    async def _balanced(self, target: Capability, agent_id: str, request: Awaitable[T]) -> T:
        """Run one balanced request, feeding its outcome to the strategy and breakers."""
        balancer = self.balancer
        sticky = target.key is not None
        entry = self._registry.lookup(agent_id)
        node = None if entry is None else entry.node
        clock = self._local.clock.monotonic
        balancer.started(target.name, agent_id, sticky)
        began = clock()
        try:
            result = await request
        except UsageError:
            balancer.finished(target.name, agent_id, node, None, None, sticky)
            raise
        except AgentClusterError:
            balancer.finished(target.name, agent_id, node, clock() - began, False, sticky)
            raise
        except BaseException:
            balancer.finished(target.name, agent_id, node, None, None, sticky)
            raise
        balancer.finished(target.name, agent_id, node, clock() - began, True, sticky)
        return result

    async def cast(self, target: Target, signal: Signal) -> None:
        for agent_id in self.targets(target, signal):
            await self._router.cast(agent_id, signal)

    async def send(self, target: Target, signal: Signal, *, timeout: float | None = None) -> None:
        if isinstance(target, Capability) and target.mode == "one":
            agent_id = self._pick(target, signal)
            await self._balanced(
                target, agent_id, self._router.send(agent_id, signal, timeout=timeout)
            )
            return
        for agent_id in self.targets(target, signal):
            self._check_durable(agent_id, signal, timeout)
            await self._router.send(agent_id, signal, timeout=timeout)

    def _check_durable(self, agent_id: str, signal: Signal, timeout: float | None) -> None:
        """A send to a durable agent whose deadline outlives the inbox's duplicate window
        would be stored twice by a late retry: refused before anything is sent."""
        entry = self._registry.lookup(agent_id)
        if entry is None or entry.mode is not AgentMode.DURABLE:
            return
        budget = timeout
        if budget is None and signal.deadline is not None:
            budget = signal.deadline - self._local.clock.monotonic()
        if budget is not None and budget > DUPLICATE_WINDOW:
            raise InvalidSignal(
                f"a send to durable agent {agent_id!r} may have a deadline of at most "
                f"{DUPLICATE_WINDOW:g} s (the inbox's duplicate window), not {budget:.0f} s: "
                "a later retry would be stored twice"
            )

    async def call(self, target: Target, signal: Signal, *, timeout: float | None = None) -> Any:
        if type(target) is str:
            return await self._router.call(target, signal, timeout=timeout)
        if not isinstance(target, Capability):
            raise ConfigurationError(f"a target is an agent id or a Capability, not {target!r}")
        if target.mode == "all":
            raise ConfigurationError("call goes to one agent; use mode='one'")
        agent_id = self._pick(target, signal)
        return await self._balanced(
            target, agent_id, self._router.call(agent_id, signal, timeout=timeout)
        )

    async def broadcast(self, signal: Signal) -> None:
        await self._router.broadcast_all(signal)
