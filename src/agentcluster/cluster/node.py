"""One cluster node: liveness, the registry, the router and the agents it hosts, joined up.

``ClusterNode`` owns two connections to the substrate — data (watches, heartbeats,
routing, registry writes) and lease (its own record, renewals, death declarations), so a
busy data path never delays a renewal — and a ``LocalNode`` that hosts its agents. An
agent started here is started locally first and then registered uniquely; if the
registration loses, the local agent is stopped again and ``AgentExists`` raised. The
router resolves ids through the registry cache.

While this node leads, it marks the entries of every node that is declared dead or left
as ``unavailable`` (keeping their restart spec), and it sweeps the registry for such
entries when it is elected, so a leader that died half-way strands nothing.

Not yet here (see the README's Status): pausing agents while the lease has lapsed,
failover of critical and durable agents, and the capability strategies of placement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from agentcluster.agent.agent import Agent
from agentcluster.agent.node import LocalNode
from agentcluster.clock import Clock
from agentcluster.cluster.liveness import LivenessHooks, NodeLiveness
from agentcluster.cluster.membership import JoinSpec, Vitals
from agentcluster.cluster.registry import Registry
from agentcluster.cluster.routing import Placement, Router
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.registry import AgentEntry, AgentStatus
from agentcluster.errors import AgentExists, ConnectionClosed
from agentcluster.transport.interface import Connection

__all__ = ["ClusterNode", "Connect"]

_log = logging.getLogger("agentcluster.cluster.node")

Connect = Callable[[str], Awaitable[Connection]]
"""Opens a connection to the substrate for the node named by the argument."""


_PLACEMENT: dict[AgentStatus, Literal["running", "starting", "unavailable"]] = {
    AgentStatus.RUNNING: "running",
    AgentStatus.STARTING: "starting",
    AgentStatus.MOVING: "starting",
    AgentStatus.UNAVAILABLE: "unavailable",
    AgentStatus.FAILED: "unavailable",
}
"""How the router treats each registry status: moving counts as starting (retry soon)."""


def _spec_of(agent: type[Agent]) -> dict[str, Any]:
    return {"class": f"{agent.__module__}:{agent.__qualname__}"}


class ClusterNode:
    """A node of the cluster (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        connect: Connect,
        *,
        labels: Mapping[str, str] | None = None,
        capacity: Mapping[str, float] | None = None,
        timing: LeaseTiming | None = None,
        clock: Clock | None = None,
        seed: str | None = None,
    ) -> None:
        self.node_id = node_id
        self._connect = connect
        self._spec = JoinSpec(node_id, dict(labels or {}), (), dict(capacity or {}))
        self._timing = timing
        self._clock = clock
        self.local = LocalNode(node_id, clock=clock, seed=seed)
        self.liveness: NodeLiveness | None = None
        self.registry: Registry | None = None
        self.router: Router | None = None
        self._connections: list[Connection] = []
        self._duties: set[asyncio.Task[None]] = set()
        self._stopped = False

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        data = await self._connect(self.node_id)
        lease = await self._connect(self.node_id)
        self._connections = [data, lease]
        liveness = NodeLiveness(
            data,
            lease,
            self._spec,
            timing=self._timing,
            clock=self._clock,
            vitals=self._vitals,
            hooks=LivenessHooks(on_node_down=self._node_down, on_elected=self._elected),
        )
        self.liveness = liveness
        await liveness.start()
        assert liveness.buckets is not None
        assert liveness.renewer is not None
        renewer = liveness.renewer
        self.registry = Registry(liveness.buckets.agents, lambda: renewer.stamps)
        await self.registry.start()
        self.router = Router(
            self.node_id, liveness.incarnation, data, self.local, self._resolve, clock=self._clock
        )
        await self.router.start()

    async def stop(self, *, leave: bool = True) -> None:
        """Stop everything; with ``leave`` the record says ``left`` (a graceful exit)."""
        if self._stopped:
            return
        self._stopped = True
        for task in list(self._duties):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.router is not None:
            await self.router.stop()
        await self.local.stop()
        if self.registry is not None:
            await self.registry.stop()
        if self.liveness is not None:
            if leave:
                await self.liveness.leave()
            else:
                await self.liveness.stop()
        for conn in self._connections:
            await conn.close()

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def incarnation(self) -> int:
        return 0 if self.liveness is None else self.liveness.incarnation

    def members(self) -> dict[str, NodeRecord]:
        return {} if self.liveness is None else self.liveness.membership.members()

    # --- agents ---------------------------------------------------------------------

    async def start_agent(
        self,
        agent: type[Agent],
        agent_id: str,
        *,
        capabilities: tuple[str, ...] = (),
        **options: Any,
    ) -> AgentEntry:
        """Start ``agent`` here and register it; ``AgentExists`` if the id lives elsewhere."""
        registry = self._registry()
        held = registry.lookup(agent_id)
        if held is not None and held.node == self.node_id and self.local.lookup(agent_id):
            return held
        await self.local.start_agent(agent, agent_id, capabilities=capabilities, **options)
        entry = AgentEntry(
            agent_id,
            self.node_id,
            self.incarnation,
            capabilities=tuple(capabilities) or tuple(agent.capabilities),
            spec=_spec_of(agent),
        )
        try:
            written, _revision = await registry.register(entry, self.members())
        except AgentExists:
            await self.local.stop_agent(agent_id)
            raise
        return written

    async def stop_agent(self, agent_id: str) -> bool:
        """Stop a local agent and remove its registry entry; False if it is not here."""
        if self.local.lookup(agent_id) is None:
            return False
        await self.local.stop_agent(agent_id)
        registry = self._registry()
        revision = registry.revision_of(agent_id)
        entry = registry.lookup(agent_id)
        if revision is not None and entry is not None and entry.node == self.node_id:
            await registry.unregister(agent_id, revision)
        return True

    def _registry(self) -> Registry:
        if self.registry is None:
            raise ConnectionClosed(f"node {self.node_id!r} is not started")
        return self.registry

    def _resolve(self, agent_id: str) -> Placement | None:
        entry = None if self.registry is None else self.registry.lookup(agent_id)
        if entry is None:
            return None
        return Placement(entry.node, entry.node_incarnation, _PLACEMENT[entry.status])

    def _vitals(self) -> Vitals:
        return Vitals(agent_count=len(self.local), load=0.0)

    # --- leader duties --------------------------------------------------------------

    def _node_down(self, record: NodeRecord, reason: str) -> None:
        if self.liveness is not None and self.liveness.is_leader:
            self._duty(self._mark(record.id, f"node_{reason}"))

    def _elected(self, term: int) -> None:
        _log.info("node %r leads the cluster (term %d)", self.node_id, term)
        self._duty(self._sweep())

    async def _sweep(self) -> None:
        for record in self.members().values():
            if record.status is not NodeStatus.ALIVE:
                await self._mark(record.id, f"node_{record.status.value}")

    async def _mark(self, node_id: str, reason: str) -> None:
        if self.registry is None:
            return
        marked = await self.registry.mark_unavailable(node_id, reason)
        if marked:
            _log.info("marked %d agents of %r unavailable (%s)", len(marked), node_id, reason)

    def _duty(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("leader duty on %r failed", self.node_id)

        task = asyncio.get_running_loop().create_task(run())
        self._duties.add(task)
        task.add_done_callback(self._duties.discard)

    def unavailable_agents(self) -> list[str]:
        """Entries this node's cache shows as ``unavailable``."""
        if self.registry is None:
            return []
        return sorted(e.id for e in self.registry.index if e.status is AgentStatus.UNAVAILABLE)
