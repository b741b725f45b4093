"""Targets across the cluster: an agent id, or a capability held by agents on any node.

``ClusterOutbound`` is what a cluster node lends its ``LocalNode`` as ``outbound`` (so an
agent's own ``ctx.call`` / ``ctx.cast`` reach agents on every node) and what the
``Cluster`` facade sends through. It turns a target into agent ids — a capability with
``one`` picks its holders round robin from the registry cache, passing over holders on
nodes this node suspects (phi) while others are heard, ``all`` takes each — and
hands each id to the node's ``Router``, which finds the node and delivers. A capability no
agent holds is dead-lettered here with ``AgentNotFound``, as a local node does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentcluster.agent.node import Capability, LocalNode, Target
from agentcluster.cluster.registry import Registry
from agentcluster.cluster.routing import Router
from agentcluster.core.balance import RoundRobin
from agentcluster.core.circuit_breaker import BreakerBoard
from agentcluster.core.signal import Signal
from agentcluster.errors import AgentNotFound, ConfigurationError

__all__ = ["ClusterOutbound"]


class ClusterOutbound:
    """Cast, send and call to ids and capabilities anywhere in the cluster."""

    def __init__(
        self,
        router: Router,
        registry: Registry,
        local: LocalNode,
        suspected: Callable[[str], bool] | None = None,
    ) -> None:
        self._router = router
        self._registry = registry
        self._local = local
        self._suspected = suspected
        self._round_robin = RoundRobin()
        self.node_breakers = BreakerBoard()
        self.agent_breakers = BreakerBoard()

    def _pick(self, capability: str, holders: tuple[str, ...]) -> str:
        suspected = self._suspected
        if suspected is None:
            return self._round_robin.pick(capability, holders)
        lookup = self._registry.lookup

        def on_suspect(agent_id: str) -> bool:
            entry = lookup(agent_id)
            return entry is not None and suspected(entry.node)

        return self._round_robin.pick_heard(capability, holders, on_suspect)

    def targets(self, target: Target, signal: Signal) -> list[str]:
        if type(target) is str:
            return [target]
        if not isinstance(target, Capability):
            raise ConfigurationError(f"a target is an agent id or a Capability, not {target!r}")
        holders = self._registry.find_by_capability(target.name)
        if not holders:
            error = AgentNotFound(f"no agent has capability {target.name!r}")
            self._local.dead_letter(signal, error, None)
            raise error
        if target.mode == "all":
            return list(holders)
        return [self._pick(target.name, holders)]

    async def cast(self, target: Target, signal: Signal) -> None:
        for agent_id in self.targets(target, signal):
            await self._router.cast(agent_id, signal)

    async def send(self, target: Target, signal: Signal, *, timeout: float | None = None) -> None:
        for agent_id in self.targets(target, signal):
            await self._router.send(agent_id, signal, timeout=timeout)

    async def call(self, target: Target, signal: Signal, *, timeout: float | None = None) -> Any:
        if isinstance(target, Capability) and target.mode == "all":
            raise ConfigurationError("call goes to one agent; use mode='one'")
        (agent_id,) = self.targets(target, signal)
        return await self._router.call(agent_id, signal, timeout=timeout)

    async def broadcast(self, signal: Signal) -> None:
        await self._router.broadcast_all(signal)
