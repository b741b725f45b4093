"""``Cluster``: many nodes, one API — the embedded in-process cluster.

``Cluster.local(nodes=3)`` runs every node in this process over the memory transport
(no server): each node has its own connections, lease, registry cache and router, as it
would in its own process, and the memory store outlives them, so a node can be killed
and the others notice. Calls made on the ``Cluster`` itself go through its first live
node, like a client attached to it.

Targets: an agent id, or ``Capability(name, "one")`` (the holders in registration order,
round robin) / ``Capability(name, "all")``.

``Cluster.connect`` (one node per process over NATS) is not built yet.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from agentcluster.agent.agent import Agent
from agentcluster.agent.node import Capability
from agentcluster.clock import Clock
from agentcluster.cluster.node import ClusterNode
from agentcluster.cluster.routing import Router
from agentcluster.core.balance import RoundRobin
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.registry import AgentEntry
from agentcluster.core.signal import Signal
from agentcluster.errors import AgentNotFound, ConfigurationError, ConnectionClosed
from agentcluster.transport.interface import Connection
from agentcluster.transport.memory import MemoryTransport

__all__ = ["Cluster"]

Target = str | Capability


class Cluster:
    """The nodes of one cluster and the calls that span them."""

    def __init__(self, nodes: list[ClusterNode], hub: MemoryTransport | None = None) -> None:
        if not nodes:
            raise ConfigurationError("a cluster needs at least one node")
        self._nodes = {node.node_id: node for node in nodes}
        self.hub = hub
        self._round_robin = RoundRobin()
        self._placement = itertools.count()
        self.visible_within = 5.0

    @classmethod
    @asynccontextmanager
    async def local(
        cls,
        nodes: int = 3,
        *,
        seed: str = "agentcluster",
        timing: LeaseTiming | None = None,
        clock: Clock | None = None,
        labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> AsyncIterator[Cluster]:
        """An in-process cluster of ``nodes`` nodes named ``n1``…; stopped on exit."""
        if nodes < 1:
            raise ConfigurationError(f"nodes must be >= 1, not {nodes!r}")
        hub = MemoryTransport(seed=seed)

        async def connect(name: str) -> Connection:
            return await hub.connect(name)

        members = [
            ClusterNode(
                f"n{i}",
                connect,
                labels=(labels or {}).get(f"n{i}"),
                timing=timing,
                clock=clock,
                seed=f"{seed}/n{i}",
            )
            for i in range(1, nodes + 1)
        ]
        cluster = cls(members, hub)
        started: list[ClusterNode] = []
        try:
            for node in members:
                await node.start()
                started.append(node)
            yield cluster
        finally:
            for node in reversed(started):
                await node.stop(leave=True)
            await hub.close()

    # --- nodes ----------------------------------------------------------------------

    def node(self, node_id: str) -> ClusterNode:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise ConfigurationError(f"no node {node_id!r} in this cluster") from None

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def _live(self) -> list[ClusterNode]:
        return [n for n in self._nodes.values() if not n.stopped]

    def _entry_node(self) -> ClusterNode:
        live = self._live()
        if not live:
            raise ConnectionClosed("every node of this cluster is stopped")
        return live[0]

    def members(self) -> dict[str, NodeRecord]:
        """Every node record, as the first live node's cache has it."""
        return self._entry_node().members()

    def leader(self) -> tuple[str, int] | None:
        liveness = self._entry_node().liveness
        return None if liveness is None else liveness.leader()

    async def kill_node(self, node_id: str) -> None:
        """Crash a node: its connections drop at once and it writes nothing more (the
        others declare it dead by the lease rule). For demos and tests."""
        node = self.node(node_id)
        if self.hub is not None:
            self.hub.faults.kill(node_id)
        await node.stop(leave=False)

    # --- agents ---------------------------------------------------------------------

    async def start_agent(
        self,
        agent: type[Agent],
        id: str,
        *,
        node: str | None = None,
        capabilities: tuple[str, ...] | list[str] | None = None,
        **options: Any,
    ) -> AgentEntry:
        """Start ``agent`` as ``id`` on ``node`` (round robin over live nodes if omitted).

        Returns once the registration is visible to the node this ``Cluster`` sends
        through (bounded by ``visible_within`` seconds), so the agent can be addressed at once.
        """
        live = self._live()
        if not live:
            raise ConnectionClosed("every node of this cluster is stopped")
        target = self.node(node) if node is not None else live[next(self._placement) % len(live)]
        entry = await target.start_agent(
            agent, id, capabilities=tuple(capabilities or ()), **options
        )
        revision = None if target.registry is None else target.registry.revision_of(id)
        via = self._entry_node().registry
        if revision is not None and via is not None:
            await via.wait_for(id, revision, self.visible_within)
        return entry

    async def stop_agent(self, id: str) -> bool:
        entry = self.lookup(id)
        if entry is None or entry.node not in self._nodes:
            return False
        return await self._nodes[entry.node].stop_agent(id)

    def lookup(self, agent_id: str) -> AgentEntry | None:
        registry = self._entry_node().registry
        return None if registry is None else registry.lookup(agent_id)

    async def lookup_fresh(self, agent_id: str) -> AgentEntry | None:
        registry = self._entry_node().registry
        return None if registry is None else await registry.lookup_fresh(agent_id)

    def find_by_capability(self, capability: str) -> tuple[str, ...]:
        registry = self._entry_node().registry
        return () if registry is None else registry.find_by_capability(capability)

    def agents_by_node(self) -> dict[str, list[str]]:
        registry = self._entry_node().registry
        return {} if registry is None else registry.agents_by_node()

    def topology(self) -> dict[str, Any]:
        """Nodes and their status, who each live node suspects, the leader, agent counts."""
        members = self.members()
        seen: dict[str, dict[str, float]] = {}
        for node in self._live():
            if node.liveness is not None:
                seen[node.node_id] = {v.peer: v.phi for v in node.liveness.topology()}
        by_node = self.agents_by_node()
        return {
            "nodes": {
                node_id: {"status": record.status.value, "incarnation": record.incarnation}
                for node_id, record in sorted(members.items())
            },
            "phi": seen,
            "leader": self.leader(),
            "agents": {node_id: len(ids) for node_id, ids in sorted(by_node.items())},
            "alive": sorted(n for n, r in members.items() if r.status is NodeStatus.ALIVE),
        }

    # --- signals --------------------------------------------------------------------

    def _router(self) -> Router:
        router = self._entry_node().router
        if router is None:
            raise ConnectionClosed("the cluster is not started")
        return router

    def _targets(self, target: Target, signal: Signal) -> list[str]:
        if isinstance(target, str):
            return [target]
        holders = self.find_by_capability(target.name)
        if not holders:
            error = AgentNotFound(f"no agent has capability {target.name!r}")
            self._entry_node().local.dead_letter(signal, error, None)
            raise error
        if target.mode == "all":
            return list(holders)
        return [self._round_robin.pick(target.name, holders)]

    async def cast(self, target: Target, signal: Signal) -> None:
        router = self._router()
        for agent_id in self._targets(target, signal):
            await router.cast(agent_id, signal)

    async def send(self, target: Target, signal: Signal, *, timeout: float | None = None) -> None:
        router = self._router()
        for agent_id in self._targets(target, signal):
            await router.send(agent_id, signal, timeout=timeout)

    async def call(self, target: Target, signal: Signal, *, timeout: float | None = None) -> Any:
        (agent_id,) = self._targets(target, signal)[:1]
        return await self._router().call(agent_id, signal, timeout=timeout)

    async def broadcast(self, signal: Signal) -> None:
        await self._router().broadcast_all(signal)
