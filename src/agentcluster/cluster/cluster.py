"""``Cluster``: many nodes, one API — in one process, or one node per process over NATS.

``Cluster.local(nodes=3)`` runs every node in this process over the memory transport
(no server): each node has its own connections, lease, registry cache and router, as it
would in its own process, and the memory store outlives them, so a node can be killed
and the others notice.

``Cluster.connect(servers, node_id=..., role="node")`` joins this process to a cluster over
NATS as one node (it hosts agents, renews its lease, may lead); ``role="client"`` joins
without hosting anything, writing nothing to membership and never leading. Both return
the same API. Calls made on the ``Cluster`` go through its first live node.

``start_agent(..., node=...)`` on a node of another process asks that node over its
control subject (``cluster.control``), so the agent's class must be importable there;
without ``node=`` a placement strategy chooses (``cluster.placement``) and the chosen node
reserves the agent's ``resources`` by compare-and-set (``cluster.resources``). Targets: an
agent id, ``Capability(name, "one")`` (balanced by ``cluster.balancing``: a request
strategy, circuit breakers, sticky keys, load shedding) or ``Capability(name, "all")``.
The coordination primitives (``lock``, ``barrier``, ``elect``, ``vote``, ``pipeline``,
``map_reduce``) go through the same entry node.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from agentcluster.agent.node import Capability
from agentcluster.clock import Clock
from agentcluster.cluster.balancing import BalancerConfig
from agentcluster.cluster.control import AgentSource, request_start, request_stop, spec_of
from agentcluster.cluster.coordination.barrier import barrier
from agentcluster.cluster.coordination.election import Election, OnChange, elect
from agentcluster.cluster.coordination.locks import LockHandle, acquire_lock
from agentcluster.cluster.coordination.pipeline import pipeline
from agentcluster.cluster.coordination.scatter import map_reduce
from agentcluster.cluster.coordination.vote import VoteResult, vote
from agentcluster.cluster.dead_letters import StoredDeadLetter, read_dead_letters
from agentcluster.cluster.discovery import Discovery, TransportDiscovery, discovery_from
from agentcluster.cluster.failover_manager import FailoverConfig
from agentcluster.cluster.health_monitor import HealthMonitorConfig
from agentcluster.cluster.liveness import Role
from agentcluster.cluster.node import ClusterNode
from agentcluster.cluster.outbound import ClusterOutbound
from agentcluster.cluster.placement import PlacementSpec, Placer, placement_spec
from agentcluster.cluster.resource_manager import cluster_resources
from agentcluster.cluster.retrying import retry_for
from agentcluster.core.consensus import Quorum
from agentcluster.core.discovery import Discovered, TransportConfig, parse_discovery
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.registry import AgentEntry
from agentcluster.core.signal import Signal
from agentcluster.core.snapshots import DEFAULT_MAX_STALENESS
from agentcluster.core.topology import partitions
from agentcluster.errors import (
    ConfigurationError,
    ConnectionClosed,
    DiscoveryFailed,
    NoAvailableNode,
    NodeUnavailable,
)
from agentcluster.transport.interface import Connection, Storage
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
        self._placers: dict[str, Placer] = {}
        self.visible_within = 5.0
        self.control_timeout = 10.0
        self.discovery: Discovery | None = None
        self._entry: ClusterNode | None = None

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
        capacity: Mapping[str, Mapping[str, float]] | None = None,
        node_capabilities: Mapping[str, Sequence[str]] | None = None,
        unavailable_ttl: float = 60.0,
        balancing: BalancerConfig | None = None,
        failover: FailoverConfig | None = None,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        health: HealthMonitorConfig | None = None,
        min_nodes: int | None = None,
    ) -> AsyncIterator[Cluster]:
        """An in-process cluster of ``nodes`` nodes named ``n1``…; stopped on exit.

        ``labels``, ``capacity`` and ``node_capabilities`` are per node id (a node given no
        capacity declares this machine's cpu count and memory)."""
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
                capacity=(capacity or {}).get(f"n{i}"),
                capabilities=tuple((node_capabilities or {}).get(f"n{i}", ())),
                timing=timing,
                clock=clock,
                seed=f"{seed}/n{i}",
                unavailable_ttl=unavailable_ttl,
                balancing=balancing,
                failover=failover,
                max_staleness=max_staleness,
                health=health,
                min_nodes=min_nodes,
            )
            for i in range(1, nodes + 1)
        ]
        cluster = cls(members, hub)
        started: list[ClusterNode] = []
        try:
            for node in members:
                await node.start()
                started.append(node)
            await cluster._see_all(cluster.visible_within)
            yield cluster
        finally:
            for node in reversed(started):
                await node.stop(leave=True)
            await hub.close()

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        servers: str | Sequence[str] | None = None,
        *,
        discovery: str | Mapping[str, Any] | None = None,
        node_id: str | None = None,
        role: Role = "node",
        labels: Mapping[str, str] | None = None,
        capacity: Mapping[str, float] | None = None,
        node_capabilities: Sequence[str] = (),
        timing: LeaseTiming | None = None,
        replicas: int = 1,
        storage: Storage = "file",
        unavailable_ttl: float = 60.0,
        balancing: BalancerConfig | None = None,
        failover: FailoverConfig | None = None,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        health: HealthMonitorConfig | None = None,
        min_nodes: int | None = None,
        **nats_options: Any,
    ) -> AsyncIterator[Cluster]:
        """Join the cluster behind ``servers`` (NATS URLs) as one node or a client.

        ``replicas`` is the replication of the cluster's buckets (3 on a 3-server NATS
        cluster); ``nats_options`` go to ``NatsConfig`` (credentials, TLS, timeouts). On
        exit a node leaves gracefully (its record says ``left``).
        """
        from agentcluster.transport.nats import NatsConfig
        from agentcluster.transport.nats import connect as connect_nats

        given = () if servers is None else (servers,) if isinstance(servers, str) else servers
        strategy = parse_discovery(discovery)
        if isinstance(strategy, TransportConfig):
            urls = tuple(given) or strategy.servers
        else:
            found = await retry_for(
                discovery_from(strategy).discover,
                retry_on=lambda e: isinstance(e, DiscoveryFailed) and e.retryable,
                within=10.0,
            )
            urls = found.servers
        if not urls:
            raise ConfigurationError(
                "servers: give at least one NATS URL (or a static or dns discovery)"
            )
        if role not in ("node", "client"):
            raise ConfigurationError(f"role must be 'node' or 'client', got {role!r}")
        if node_id is None:
            if role == "node":
                raise ConfigurationError("a node needs its node_id (unique in the cluster)")
            node_id = f"client-{os.urandom(4).hex()}"

        async def connect(name: str) -> Connection:
            return await connect_nats(
                NatsConfig(servers=urls, name=f"agentcluster/{name}", **nats_options)
            )

        node = ClusterNode(
            node_id,
            connect,
            labels=labels,
            capacity=capacity,
            capabilities=tuple(node_capabilities),
            timing=timing,
            role=role,
            replicas=replicas,
            storage=storage,
            unavailable_ttl=unavailable_ttl,
            balancing=balancing,
            failover=failover,
            max_staleness=max_staleness,
            health=health,
            min_nodes=min_nodes,
        )
        await node.start()
        try:
            cluster = cls([node])
            cluster.discovery = (
                TransportDiscovery(node, urls)
                if isinstance(strategy, TransportConfig)
                else discovery_from(strategy)
            )
            yield cluster
        finally:
            await node.stop(leave=role == "node" and node.superseded is None)

    async def discover(self) -> Discovered:
        """What the cluster's discovery strategy finds now: the servers and the peers to
        expect (``transport``, the default: the alive members of the ``nodes`` bucket)."""
        if self.discovery is None:
            alive = tuple(
                sorted(n for n, r in self.members().items() if r.status is NodeStatus.ALIVE)
            )
            return Discovered(servers=(), peers=alive)
        return await self.discovery.discover()

    # --- nodes ----------------------------------------------------------------------

    async def _see_all(self, within: float) -> None:
        """Wait (bounded) until the node this cluster sends through sees every node of
        this process alive, so the first placements spread over all of them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        wanted = {n.node_id for n in self._nodes.values() if n.role == "node"}
        while loop.time() < deadline:
            members = self.members()
            if all(
                (r := members.get(n)) is not None and r.status is NodeStatus.ALIVE for n in wanted
            ):
                return
            await asyncio.sleep(0.005)

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
        entry = self._entry
        if entry is not None and not entry.stopped:
            return entry
        live = self._live()
        if not live:
            raise ConnectionClosed("every node of this cluster is stopped")
        self._entry = live[0]
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

    def _clients(self) -> set[str]:
        return {n.node_id for n in self._nodes.values() if n.role == "client"}

    def _placer(self) -> Placer:
        via = self._entry_node()
        placer = self._placers.get(via.node_id)
        if placer is None:
            placer = Placer(via, seed=f"{via.node_id}/placement")
            self._placers[via.node_id] = placer
        return placer

    def select_node(
        self,
        spec: str | Mapping[str, Any] | PlacementSpec | None = None,
        strategy: str | None = None,
        *,
        agent_id: str = "",
        exclude: Sequence[str] = (),
    ) -> str:
        """The node a placement would choose now (the seeds' ``select_optimal_node``):
        ``spec`` is a strategy name or a mapping (``resources``, ``requires``, ``zone``,
        ``region``, ``key``), ``strategy`` overrides its strategy. Raises
        ``NoAvailableNode`` whose ``reason`` says why no node qualifies."""
        placement = placement_spec(spec)
        if strategy is not None:
            placement = placement_spec(
                {**placement.to_json(), "strategy": strategy}, placement.resources
            )
        return self._placer().select(agent_id, placement, exclude=exclude)

    async def start_agent(
        self,
        agent: AgentSource,
        id: str,
        *,
        node: str | None = None,
        placement: str | Mapping[str, Any] | PlacementSpec | None = None,
        resources: Mapping[str, float] | None = None,
        capabilities: tuple[str, ...] | list[str] | None = None,
        state: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AgentEntry:
        """Start ``agent`` (a class, ``"module:Class"`` or a restart spec) as ``id``.

        Without ``node`` a placement strategy chooses (``placement``: a strategy name of
        ``core.placement``, default ``least_loaded``, or a mapping with ``strategy``,
        ``requires`` (node capabilities), ``zone``, ``region``, ``key``). ``resources``
        (e.g. ``{"cpu": 1, "memory_mb": 256, "gpu": 1}``) are reserved on the chosen node
        by compare-and-set; a node that filled up meanwhile is passed over and the next
        choice tried, and ``NoAvailableNode`` (``reason`` ``no_capacity``, …) is raised
        when none can take it.

        On a node of this process the agent starts directly; on another node the request
        goes over the control subject and the class must be importable there. Returns once
        the registration is visible to the node this ``Cluster`` sends through (bounded by
        ``visible_within`` seconds), so the agent can be addressed at once.
        """
        via = self._entry_node()
        chosen = placement_spec(placement, resources)
        if node is not None:
            return await self._start_on(node, agent, id, chosen, capabilities, state, options)
        tried: list[str] = []
        last: NoAvailableNode | None = None
        while True:
            try:
                target = self._placer().select(id, chosen, exclude=tried)
            except NoAvailableNode:
                if last is not None:
                    raise last from None
                raise
            try:
                with self._placer().placing(target):
                    return await self._start_on(
                        target, agent, id, chosen, capabilities, state, options
                    )
            except NoAvailableNode as error:
                if error.reason != "no_capacity":
                    raise
                last = error
                tried.append(target)
            except NodeUnavailable as error:
                last = NoAvailableNode(str(error), reason="no_nodes", agent_id=id)
                tried.append(target)
            if via.stopped:
                raise last

    async def _start_on(
        self,
        target: str,
        agent: AgentSource,
        id: str,
        chosen: PlacementSpec,
        capabilities: tuple[str, ...] | list[str] | None,
        state: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> AgentEntry:
        via = self._entry_node()
        local = self._nodes.get(target)
        if local is not None and local.role == "node" and not local.stopped:
            entry = await local.start_agent(
                agent,
                id,
                capabilities=tuple(capabilities or ()),
                state=state,
                resources=chosen.resources,
                placement=chosen.to_json(),
                **options,
            )
            revision = None if local.registry is None else local.registry.revision_of(id)
        else:
            if via.data is None:
                raise ConnectionClosed("the cluster is not started")
            spec = spec_of(
                agent,
                capabilities=capabilities,
                state=state,
                resources=dict(chosen.resources) or None,
                placement=chosen.to_json(),
                **options,
            )
            entry, revision = await request_start(via.data, target, id, spec, self.control_timeout)
        if via.registry is not None and revision is not None:
            await via.registry.wait_for(id, revision, self.visible_within)
        return entry

    def resources(self) -> dict[str, Any]:
        """Capacity, reservations and use per live node and in total (the seeds'
        ``get_cluster_resources``), from this process's caches.

        ``capacity``: what each node declared; ``reserved``: everything its reservations
        key holds (running agents and placements under way); ``used``: the part held by
        agents the registry shows running there; ``free``: capacity minus reserved;
        ``load``: the node's reported mailbox load (0..1); ``agents``: its user agents.
        """
        return cluster_resources(self._entry_node())

    async def stop_agent(self, id: str) -> bool:
        """Stop the agent wherever it runs and remove its entry; False if it is not found."""
        entry = self.lookup(id)
        if entry is None:
            return False
        local = self._nodes.get(entry.node)
        if local is not None and not local.stopped:
            return await local.stop_agent(id)
        data = self._entry_node().data
        if data is None:
            raise ConnectionClosed("the cluster is not started")
        return await request_stop(data, entry.node, id, self.control_timeout)

    def lookup(self, agent_id: str) -> AgentEntry | None:
        registry = self._entry_node().registry
        return None if registry is None else registry.lookup(agent_id)

    async def lookup_fresh(self, agent_id: str) -> AgentEntry | None:
        registry = self._entry_node().registry
        return None if registry is None else await registry.lookup_fresh(agent_id)

    def find_by_capability(self, capability: str) -> tuple[str, ...]:
        registry = self._entry_node().registry
        return () if registry is None else registry.find_by_capability(capability)

    def agents_by_node(self, *, system: bool = False) -> dict[str, list[str]]:
        """Agent ids by the node their entry names; the system agents only with ``system``."""
        registry = self._entry_node().registry
        if registry is None:
            return {}
        by_node = registry.agents_by_node()
        if system:
            return by_node
        shown = {node_id: registry.user_agents(node_id) for node_id in by_node}
        return {node_id: ids for node_id, ids in shown.items() if ids}

    def topology(self) -> dict[str, Any]:
        """The cluster as this process sees it.

        ``nodes``: each node's status, incarnation, labels and user agent count (from the
        records); ``phi``: for each observer in this process, the phi of every peer it
        hears; ``suspects``: for every node (this process's from their own detectors,
        the others' from what their heartbeats say), whom it suspects now;
        ``partitions``: the live nodes grouped by who hears whom (one group: no split);
        ``leader`` and ``alive``.
        """
        members = self.members()
        by_node = self.agents_by_node()
        alive = sorted(n for n, r in members.items() if r.status is NodeStatus.ALIVE)
        phi: dict[str, dict[str, float]] = {}
        suspects: dict[str, list[str]] = {}
        for node in self._live():
            if node.liveness is None:
                continue
            views = node.liveness.topology()
            phi[node.node_id] = {v.peer: v.phi for v in views}
            for view in views:
                suspects.setdefault(view.peer, sorted(view.suspects))
            if node.role == "node":
                suspects[node.node_id] = sorted(v.peer for v in views if v.suspected)
        return {
            "nodes": {
                node_id: {
                    "status": record.status.value,
                    "incarnation": record.incarnation,
                    "labels": dict(record.labels),
                    "agents": len(by_node.get(node_id, ())),
                }
                for node_id, record in sorted(members.items())
            },
            "phi": phi,
            "suspects": {n: suspects[n] for n in sorted(suspects) if n in alive},
            "partitions": [
                list(c) for c in partitions(alive, {n: suspects.get(n, ()) for n in alive})
            ],
            "leader": self.leader(),
            "agents": {node_id: len(ids) for node_id, ids in sorted(by_node.items())},
            "alive": alive,
        }

    # --- signals --------------------------------------------------------------------

    async def dead_letters(
        self, node_id: str | None = None, *, from_seq: int = 1, limit: int = 1000
    ) -> list[StoredDeadLetter]:
        """Dead letters stored in the durable stream by ``node_id`` (default: the node this
        cluster sends through), oldest first; readable after that node is gone."""
        via = self._entry_node()
        if via.dead_letters is None:
            raise ConnectionClosed("the cluster is not started")
        return await read_dead_letters(
            via.dead_letters.stream, node_id or via.node_id, from_seq=from_seq, limit=limit
        )

    def _outbound(self) -> ClusterOutbound:
        outbound = self._entry_node().outbound
        if outbound is None:
            raise ConnectionClosed("the cluster is not started")
        return outbound

    async def cast(self, target: Target, signal: Signal) -> None:
        await self._outbound().cast(target, signal)

    async def send(self, target: Target, signal: Signal, *, timeout: float | None = None) -> None:
        await self._outbound().send(target, signal, timeout=timeout)

    async def call(self, target: Target, signal: Signal, *, timeout: float | None = None) -> Any:
        return await self._outbound().call(target, signal, timeout=timeout)

    async def broadcast(self, signal: Signal) -> None:
        await self._outbound().broadcast(signal)

    # --- coordination ---------------------------------------------------------------

    async def lock(
        self, name: str, *, owner: str | None = None, timeout: float = 10.0
    ) -> LockHandle:
        """Take the cluster-wide lock ``name`` (``async with await cluster.lock("x") as
        held:``). ``held.token`` is its fencing token, larger for every new holder; the
        lock is released by ``release()`` or when its holder's node is declared dead.
        Raises ``LockTimeout`` naming the holder after ``timeout`` seconds."""
        via = self._entry_node()
        return await acquire_lock(
            via, name, owner=owner or f"{via.node_id}/{os.urandom(4).hex()}", timeout=timeout
        )

    async def barrier(
        self, barrier_id: str, participants: Sequence[str], *, participant: str, timeout: float
    ) -> None:
        """Arrive at ``barrier_id`` as ``participant``; return once every one of
        ``participants`` arrived, or raise ``BarrierTimeout`` naming the missing ones."""
        await barrier(
            self._entry_node(), barrier_id, participants, participant=participant, timeout=timeout
        )

    async def elect(
        self, group: str, member: str, *, on_change: OnChange | None = None
    ) -> Election:
        """Campaign in ``group`` as ``member``: the ``Election`` says who leads, and a
        follower takes over when the leader resigns or its node is declared dead."""
        return await elect(self._entry_node(), group, member, on_change=on_change)

    async def vote(
        self,
        group: Sequence[str],
        proposal: Any,
        *,
        quorum: Quorum = "majority",
        timeout: float = 5.0,
        signal_type: str = "consensus.vote_request",
        result_type: str = "consensus.result",
    ) -> VoteResult:
        """Ask every agent of ``group`` to vote on ``proposal``; accepted when ``quorum``
        said yes. Unavailable and timed-out members count as such; the result is signalled
        to the group."""
        return await vote(
            self._entry_node(),
            group,
            proposal,
            quorum=quorum,
            timeout=timeout,
            signal_type=signal_type,
            result_type=result_type,
        )

    async def pipeline(
        self,
        stages: Sequence[str | Capability],
        data: Any,
        *,
        timeout: float = 30.0,
        total_timeout: float | None = None,
        signal_type: str = "pipeline.process",
    ) -> Any:
        """Pass ``data`` through ``stages`` in order (each reply is the next input);
        ``StageFailed`` names the stage that failed."""
        return await pipeline(
            self._entry_node(),
            stages,
            data,
            signal_type=signal_type,
            timeout=timeout,
            total_timeout=total_timeout,
        )

    async def map_reduce(
        self,
        capability: str,
        items: Sequence[Any],
        *,
        reduce: Callable[[list[Any]], Any] | None = None,
        timeout: float = 30.0,
        chunk_size: int | None = None,
        attempts: int = 3,
        signal_type: str = "mapreduce.map",
    ) -> Any:
        """Split ``items`` into balanced chunks over the agents holding ``capability``,
        retry a failed chunk on another agent, and reduce the results in order
        (``ChunkFailed`` when a chunk failed everywhere)."""
        return await map_reduce(
            self._entry_node(),
            capability,
            items,
            reduce=reduce,
            signal_type=signal_type,
            chunk_size=chunk_size,
            timeout=timeout,
            attempts=attempts,
        )
