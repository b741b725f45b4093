"""System agents: the cluster's own functions, run as ordinary agents on every node.

Theory of operation (DESIGN.md, "Everything is an agent"). Every node starts, under one
*clustering supervisor* (``clustering``, one-for-one, bounded restarts), seven agents:

=========================  ==================================  ================================
agent                      id                                  signal types
=========================  ==================================  ================================
``NodeDiscoveryAgent``     ``system.<node>.node_discovery``    ``cluster.node_discovery.*``
``FailureDetectorAgent``   ``system.<node>.failure_detector``  ``cluster.failure_detector.*``
``RegistryKeeperAgent``    ``system.<node>.registry_keeper``   ``cluster.registry_keeper.*``
``ResourceManagerAgent``   ``system.<node>.resource_manager``  ``cluster.resource_manager.*``
``LoadBalancerAgent``      ``system.<node>.load_balancer``     ``cluster.load_balancer.*``
``HealthMonitorAgent``     ``system.<node>.health_monitor``    ``cluster.health_monitor.*``
``PartitionHandlerAgent``  ``system.<node>.partition_handler`` ``cluster.partition_handler.*``
=========================  ==================================  ================================

The last four live in their own modules (``cluster.resource_manager``,
``cluster.load_balancer``, ``cluster.health_monitor``, ``cluster.partition_handler``).
Before starting them, ``start_system_agents`` lends the node three node-side objects that
outlive agent restarts: the quarantine cache (``services["quarantine"]``, which placement
and request balancing read), the health monitor's ``HealthService`` and the partition
handler's ``PartitionWatch``.

Each is registered in the cluster registry like a user's plain agent, so
``cluster.call("system.n2.failure_detector", Signal("cluster.failure_detector.status"))``
reaches it from any node, and ``local.state(id)`` reads its state on its own node. They
carry the capabilities ``system`` and ``system.<name>`` (``find_by_capability
("system.failure_detector")`` lists every node's detector), which is also how anything that
counts "user agents" tells them apart (``is_system_agent``).

The agents are shells. They read the node's components (lent through
``LocalNode.services["cluster"]``, the ``ClusterNode``) and compute their views with the
pure functions below; they own no liveness. The lease renewer and the fence stay node
components on their own connection (DESIGN.md: no agent restart may interrupt them): the
failure detector *observes* the lease and the phi detectors, it does not drive them. So a
crash of a system agent is an ordinary restart by its supervisor, with its last good state;
the lease keeps renewing meanwhile. Each agent refreshes its state on a schedule
(``refresh_interval``) so that its state is worth inspecting, and every status action reads
afresh rather than answering from that state.

The registry keeper owns one cluster duty: entries of *plain* agents whose node died or left
are marked ``unavailable`` by the leader (refused as not retryable and dead-lettered at once,
by the routers), and are deleted after ``unavailable_ttl``. Only the leader's keeper
deletes, and only by compare-and-set on the revision it saw, behind its node's fence. Time
counts on the keeper's own monotonic clock from the sweep at which its cache first held the
entry ``unavailable`` at that revision (``plan_expiry``): no synchronised clocks. A new
leader, or a leader that lost and regained the role, starts counting again — deleting later
is safe, never earlier. Critical and durable entries that wait as ``unavailable`` (no
capacity) are left alone: failover plans them again. Every node's keeper also registers its
own node's system agents again when their entries went stale — after the node was declared
dead and rejoined under a new incarnation, its system agents run on while their entries
name the old one.

System agents run while their node is paused (``SystemAgent.runs_while_paused``): the
failure detector is how a lapsed lease is seen, and the keeper's writes are fenced.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from agentcluster.agent.action import Action, NoParams
from agentcluster.agent.agent import Agent
from agentcluster.agent.context import Context
from agentcluster.agent.supervisor import Supervisor
from agentcluster.cluster.health_monitor import (
    HEALTH_MONITOR,
    HEALTH_SERVICE,
    HealthMonitorAgent,
    HealthMonitorConfig,
    HealthService,
)
from agentcluster.cluster.load_balancer import LOAD_BALANCER, LoadBalancerAgent
from agentcluster.cluster.partition_handler import (
    PARTITION_HANDLER,
    PARTITION_SERVICE,
    PartitionHandlerAgent,
    PartitionWatch,
)
from agentcluster.cluster.quarantine import QUARANTINE_SERVICE, QuarantineBook
from agentcluster.cluster.resource_manager import RESOURCE_MANAGER, ResourceManagerAgent
from agentcluster.cluster.system_base import (
    CLUSTER_SERVICE,
    SYSTEM_CAPABILITY,
    SystemAgent,
    cluster_node,
    is_system_agent,
    liveness_started,
    system_agent_id,
)
from agentcluster.core.expiry import ExpiryPlan, PendingDeletion, plan_expiry
from agentcluster.core.membership import NodeStatus
from agentcluster.core.registry import AgentEntry, AgentMode, AgentStatus
from agentcluster.errors import AgentExists, ConfigurationError, TransportError

if TYPE_CHECKING:
    from agentcluster.cluster.heartbeat import PeerView
    from agentcluster.cluster.liveness import NodeLiveness
    from agentcluster.cluster.membership import Member
    from agentcluster.cluster.node import ClusterNode

__all__ = [
    "CLUSTER_SERVICE",
    "FAILURE_DETECTOR",
    "HEALTH_MONITOR",
    "LOAD_BALANCER",
    "NODE_DISCOVERY",
    "PARTITION_HANDLER",
    "REGISTRY_KEEPER",
    "RESOURCE_MANAGER",
    "SUPERVISOR_ID",
    "SYSTEM_AGENTS",
    "SYSTEM_CAPABILITY",
    "ExpiryPlan",
    "FailureDetectorAgent",
    "FailureDetectorState",
    "HealthMonitorAgent",
    "HealthMonitorConfig",
    "LeaseView",
    "LoadBalancerAgent",
    "MemberChange",
    "MemberView",
    "NodeDiscoveryAgent",
    "NodeDiscoveryState",
    "PartitionHandlerAgent",
    "PeerHealth",
    "PendingDeletion",
    "RegistryKeeperAgent",
    "RegistryKeeperState",
    "ResourceManagerAgent",
    "SystemAgent",
    "SystemAgents",
    "is_system_agent",
    "lease_view",
    "member_changes",
    "member_views",
    "peer_health",
    "plan_expiry",
    "start_system_agents",
    "system_agent_id",
]

_log = logging.getLogger("agentcluster.cluster.system_agents")

SUPERVISOR_ID = "clustering"
"""The id of the clustering supervisor on each ``LocalNode``."""

NODE_DISCOVERY = "node_discovery"
FAILURE_DETECTOR = "failure_detector"
REGISTRY_KEEPER = "registry_keeper"

_HISTORY = 32
"""Membership changes and deletions remembered in a system agent's state."""

"""Deletions per sweep, so one sweep stays short; the rest wait for the next one."""


# --- node discovery ---------------------------------------------------------------------


class MemberView(BaseModel):
    """One node as this node's membership cache holds it."""

    id: str
    status: str
    incarnation: int
    labels: dict[str, str] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=list)
    capacity: dict[str, float] = Field(default_factory=dict)
    agent_count: int = 0
    load: float = 0.0
    revision: int = 0


class MemberChange(BaseModel):
    """A node seen to change status or incarnation (``at``: this node's monotonic clock)."""

    node: str
    status: str | None
    incarnation: int | None
    previous_status: str | None
    previous_incarnation: int | None
    at: float


def member_views(records: Mapping[str, Member]) -> dict[str, MemberView]:
    """The membership cache as plain data, sorted by node id."""
    return {
        node_id: MemberView(
            id=node_id,
            status=member.record.status.value,
            incarnation=member.record.incarnation,
            labels=dict(member.record.labels),
            capabilities=list(member.record.capabilities),
            capacity=dict(member.record.capacity),
            agent_count=member.record.agent_count,
            load=member.record.load,
            revision=member.revision,
        )
        for node_id, member in sorted(records.items())
    }


def member_changes(
    old: Mapping[str, MemberView], new: Mapping[str, MemberView], now: float
) -> list[MemberChange]:
    """Nodes that appeared, vanished, or changed status or incarnation between two views."""
    changes = []
    for node_id in sorted(set(old) | set(new)):
        before, after = old.get(node_id), new.get(node_id)
        if (
            before is not None
            and after is not None
            and (before.status, before.incarnation) == (after.status, after.incarnation)
        ):
            continue
        changes.append(
            MemberChange(
                node=node_id,
                status=None if after is None else after.status,
                incarnation=None if after is None else after.incarnation,
                previous_status=None if before is None else before.status,
                previous_incarnation=None if before is None else before.incarnation,
                at=now,
            )
        )
    return changes


class NodeDiscoveryState(BaseModel):
    node_id: str = ""
    refresh_interval: float = 1.0
    members: dict[str, MemberView] = Field(default_factory=dict)
    alive: list[str] = Field(default_factory=list)
    complete: bool = False
    """The membership cache is loaded, checked and following its watch."""
    rebuilds: int = 0
    changes: list[MemberChange] = Field(default_factory=list)
    """The latest membership changes this agent noticed, oldest first (bounded)."""
    refreshed_at: float | None = None


def _discover(ctx: Context) -> dict[str, Any]:
    """The state changes of a refresh: the membership cache read now."""
    node = cluster_node(ctx)
    liveness = node.liveness
    state: NodeDiscoveryState = ctx.state
    now = ctx.node.clock.monotonic()
    if not liveness_started(liveness):
        return {"node_id": node.node_id, "refreshed_at": now}
    assert liveness is not None
    membership = liveness.membership
    views = member_views(membership.records)
    changes = member_changes(state.members, views, now) if state.refreshed_at is not None else []
    return {
        "node_id": node.node_id,
        "members": views,
        "alive": [n for n, v in views.items() if v.status == NodeStatus.ALIVE.value],
        "complete": membership.complete,
        "rebuilds": membership.rebuilds,
        "changes": [*state.changes, *changes][-_HISTORY:],
        "refreshed_at": now,
    }


def _discovery_status(changes: Mapping[str, Any], state: NodeDiscoveryState) -> dict[str, Any]:
    merged = state.model_copy(update=dict(changes))
    return merged.model_dump(mode="json", exclude={"refresh_interval"})


class DiscoveryRefresh(Action):
    """Re-read the membership; answer with every member, the alive ones and recent changes.

    Where a discovery strategy (static list, DNS, ...) will run once there is one.
    """

    name = "refresh"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        changes = _discover(ctx)
        return _discovery_status(changes, ctx.state), ctx.set(**changes)


class ListMembers(Action):
    """The members this node sees, optionally only those of one status or with some labels."""

    name = "members"

    class Params(BaseModel):
        status: Literal["alive", "dead", "left"] | None = None
        labels: dict[str, str] = Field(default_factory=dict)

    async def run(self, params: ListMembers.Params, ctx: Context) -> Any:
        changes = _discover(ctx)
        members: dict[str, MemberView] = changes.get("members", ctx.state.members)
        chosen = [
            view.model_dump(mode="json")
            for view in members.values()
            if (params.status is None or view.status == params.status)
            and all(view.labels.get(k) == v for k, v in params.labels.items())
        ]
        return {"members": chosen}, ctx.set(**changes)


class NodeDiscoveryAgent(SystemAgent):
    """Which nodes this node sees: their status, incarnation, labels, capacity and vitals."""

    State = NodeDiscoveryState
    capabilities = [SYSTEM_CAPABILITY, f"{SYSTEM_CAPABILITY}.{NODE_DISCOVERY}"]
    routes = {
        "cluster.node_discovery.status": DiscoveryRefresh,
        "cluster.node_discovery.refresh": DiscoveryRefresh,
        "cluster.node_discovery.members": ListMembers,
    }

    def mount(self, ctx: Context) -> Any:
        return None, [
            ctx.set(**_discover(ctx)),
            ctx.schedule(DiscoveryRefresh, every=ctx.state.refresh_interval, key="refresh"),
        ]


# --- failure detector -------------------------------------------------------------------


class LeaseView(BaseModel):
    """The node's own lease, as its renewer (a node component) holds it."""

    valid: bool = False
    """The fence: this node may commit now."""
    paused: bool = False
    superseded: bool = False
    left: bool = False
    incarnation: int = 0
    revision: int | None = None
    """The revision of the node's record at its last renewal; it grows with every renewal."""
    renewals: int = 0
    failures: int = 0
    conflicts: int = 0
    lapses: int = 0
    remaining: float = 0.0
    """Seconds of lease left on the lease clock (0 when lapsed)."""


class PeerHealth(BaseModel):
    """One peer as this node judges it: phi from its heartbeats, status from its record."""

    peer: str
    status: str | None = None
    """The peer's record status (None: no record in the cache)."""
    incarnation: int = 0
    phi: float | None = None
    """None when the detector does not track the peer (never heard, or forgotten once dead)."""
    suspected: bool = False
    """Phi at or above the (self-aware) threshold; for an untracked peer, its record is not
    ``alive``."""
    last_heartbeat_age: float | None = None
    agent_count: int = 0
    load: float = 0.0


def lease_view(liveness: NodeLiveness | None) -> LeaseView:
    """The lease component's state as plain data (all false before the node joined)."""
    renewer = None if liveness is None else liveness.renewer
    if renewer is None:
        return LeaseView()
    valid_until = renewer.lease.valid_until
    remaining = valid_until - renewer.now() if math.isfinite(valid_until) else 0.0
    return LeaseView(
        valid=renewer.valid(),
        paused=renewer.paused,
        superseded=renewer.superseded is not None,
        left=renewer.left,
        incarnation=renewer.incarnation,
        revision=renewer.revision,
        renewals=renewer.renewals,
        failures=renewer.failures,
        conflicts=renewer.conflicts,
        lapses=renewer.lease.lapses,
        remaining=max(0.0, remaining),
    )


def peer_health(
    own: str, heard: Iterable[PeerView], records: Mapping[str, Member]
) -> dict[str, PeerHealth]:
    """Every peer heard from or known to the membership cache, sorted by id."""
    views = {v.peer: v for v in heard}
    peers: dict[str, PeerHealth] = {}
    for peer in sorted((set(views) | set(records)) - {own}):
        member, view = records.get(peer), views.get(peer)
        status = None if member is None else member.record.status.value
        if view is None:
            peers[peer] = PeerHealth(
                peer=peer,
                status=status,
                incarnation=0 if member is None else member.record.incarnation,
                suspected=status is not None and status != NodeStatus.ALIVE.value,
            )
        else:
            peers[peer] = PeerHealth(
                peer=peer,
                status=status,
                incarnation=view.incarnation,
                phi=view.phi,
                suspected=view.suspected,
                last_heartbeat_age=view.last_heartbeat_age,
                agent_count=view.agent_count,
                load=view.load,
            )
    return peers


class FailureDetectorState(BaseModel):
    node_id: str = ""
    refresh_interval: float = 1.0
    lease: LeaseView = Field(default_factory=LeaseView)
    peers: dict[str, PeerHealth] = Field(default_factory=dict)
    suspects: list[str] = Field(default_factory=list)
    loop_lag: float = 0.0
    """How late this node's own heartbeat timer fired last (seconds)."""
    awareness: int = 0
    """Lifeguard's self-distrust score; suspicion thresholds are stretched by 1 + it."""
    leader: list[Any] | None = None
    """``[node, term]`` of the current leader, as this node sees it."""
    refreshed_at: float | None = None


def _detect(ctx: Context) -> dict[str, Any]:
    """The state changes of a refresh: the lease and the detectors read now."""
    node = cluster_node(ctx)
    liveness = node.liveness
    now = ctx.node.clock.monotonic()
    if not liveness_started(liveness):
        return {"node_id": node.node_id, "lease": lease_view(liveness), "refreshed_at": now}
    assert liveness is not None
    heartbeats = liveness.heartbeats
    peers = peer_health(node.node_id, liveness.topology(), liveness.membership.records)
    leader = liveness.leader()
    return {
        "node_id": node.node_id,
        "lease": lease_view(liveness),
        "peers": peers,
        "suspects": [p for p, h in peers.items() if h.suspected],
        "loop_lag": heartbeats.lag,
        "awareness": heartbeats.health.score,
        "leader": None if leader is None else list(leader),
        "refreshed_at": now,
    }


class DetectorStatus(Action):
    """The lease (valid, paused, incarnation, renewals) and every peer's phi and suspicion."""

    name = "status"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        changes = _detect(ctx)
        merged = ctx.state.model_copy(update=changes)
        return merged.model_dump(mode="json", exclude={"refresh_interval"}), ctx.set(**changes)


class DetectorLease(Action):
    """The node's own lease only."""

    name = "lease"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        changes = _detect(ctx)
        return changes["lease"].model_dump(mode="json"), ctx.set(**changes)


class DetectorPeers(Action):
    """Peers and their phi; with ``peer``, that one peer (null when unknown)."""

    name = "peers"

    class Params(BaseModel):
        peer: str | None = None

    async def run(self, params: DetectorPeers.Params, ctx: Context) -> Any:
        changes = _detect(ctx)
        peers: dict[str, PeerHealth] = changes.get("peers", {})
        if params.peer is not None:
            found = peers.get(params.peer)
            return (None if found is None else found.model_dump(mode="json")), ctx.set(**changes)
        return {
            "peers": {p: h.model_dump(mode="json") for p, h in peers.items()},
            "suspects": changes.get("suspects", []),
        }, ctx.set(**changes)


class FailureDetectorAgent(SystemAgent):
    """Observes the lease component and the phi detectors; decides nothing about death."""

    State = FailureDetectorState
    capabilities = [SYSTEM_CAPABILITY, f"{SYSTEM_CAPABILITY}.{FAILURE_DETECTOR}"]
    routes = {
        "cluster.failure_detector.status": DetectorStatus,
        "cluster.failure_detector.lease": DetectorLease,
        "cluster.failure_detector.peers": DetectorPeers,
    }

    def mount(self, ctx: Context) -> Any:
        return None, [
            ctx.set(**_detect(ctx)),
            ctx.schedule(DetectorStatus, every=ctx.state.refresh_interval, key="refresh"),
        ]


# --- registry keeper --------------------------------------------------------------------


def _expirable(entry: AgentEntry) -> bool:
    return entry.status is AgentStatus.UNAVAILABLE and entry.mode is AgentMode.PLAIN


class RegistryKeeperState(BaseModel):
    node_id: str = ""
    refresh_interval: float = 1.0
    """Seconds between sweeps (a deletion may come up to this late after the ttl)."""
    unavailable_ttl: float = 60.0
    entries: int = 0
    loaded: bool = False
    complete: bool = False
    """The cache is loaded, checked against the bucket's keys and following its watch."""
    rebuilds: int = 0
    corrupt: int = 0
    unavailable: int = 0
    """Entries the cache holds as ``unavailable`` (of any mode)."""
    leader: bool = False
    term: int | None = None
    """The leader term during which ``pending`` was timed (None: not leading)."""
    pending: dict[str, PendingDeletion] = Field(default_factory=dict)
    deleted: int = 0
    """Entries this keeper deleted since it started."""
    lost: int = 0
    """Deletions that lost their compare-and-set (the entry changed meanwhile)."""
    recently_deleted: list[str] = Field(default_factory=list)
    repaired: int = 0
    """Times this keeper registered one of its node's system agents again (after a rejoin)."""
    swept_at: float | None = None


def _cache_stats(node: ClusterNode) -> dict[str, Any]:
    registry = node.registry
    if registry is None:
        return {"node_id": node.node_id}
    return {
        "node_id": node.node_id,
        "entries": len(registry.index),
        "loaded": registry.loaded,
        "complete": registry.complete,
        "rebuilds": registry.rebuilds,
        "corrupt": registry.corrupt,
        "unavailable": sum(1 for e in registry.index if e.status is AgentStatus.UNAVAILABLE),
    }


def _keeper_status(changes: Mapping[str, Any], state: RegistryKeeperState) -> dict[str, Any]:
    merged = state.model_copy(update=dict(changes))
    return merged.model_dump(mode="json", exclude={"refresh_interval"})


def _needs_repair(entry: AgentEntry | None, node: ClusterNode) -> bool:
    return entry is None or (
        entry.node == node.node_id
        and (entry.node_incarnation < node.incarnation or entry.status is not AgentStatus.RUNNING)
    )


async def _repair_own_entries(node: ClusterNode) -> list[str]:
    """Register again this node's running system agents whose entries are gone or stale.

    After the node was declared dead and rejoined under a new incarnation, its system agents
    run on (the node stops only user agents) while their entries name the old incarnation,
    are marked ``unavailable`` by the leader, and would be deleted after the ttl. Only while
    this node's own record is ``alive`` at its incarnation, and behind its fence; an entry
    that names another node is left alone.
    """
    registry, liveness = node.registry, node.liveness
    if registry is None or liveness is None or node.stopped or not liveness.valid():
        return []
    members = node.members()
    own = members.get(node.node_id)
    if own is None or own.status is not NodeStatus.ALIVE or own.incarnation != node.incarnation:
        return []
    repaired = []
    for name, agent in SYSTEM_AGENTS.items():
        agent_id = system_agent_id(node.node_id, name)
        info = node.local.lookup(agent_id)
        entry = registry.lookup(agent_id)
        if info is None or info.status not in ("idle", "running") or not _needs_repair(entry, node):
            continue
        fresh = AgentEntry(
            agent_id,
            node.node_id,
            node.incarnation,
            capabilities=tuple(agent.capabilities),
            spec={"class": f"{agent.__module__}:{agent.__qualname__}"},
        )
        # Ours at this incarnation yet not running: no takeover rule covers it, so it is
        # deleted at the revision seen and created anew.
        current = entry is not None and entry.node_incarnation == node.incarnation
        revision = registry.revision_of(agent_id)
        try:
            if current and (revision is None or not await registry.unregister(agent_id, revision)):
                continue
            await registry.register(fresh, members)
        except (AgentExists, TransportError) as error:
            _log.info("system agent %r not registered again yet: %s", agent_id, error)
            continue
        repaired.append(agent_id)
    if repaired:
        _log.warning("registered system agents of %r again: %s", node.node_id, repaired)
    return repaired


async def _expire(
    node: ClusterNode, state: RegistryKeeperState, now: float
) -> tuple[list[str], dict[str, Any]]:
    """While this node leads: delete the plain entries unavailable for the ttl."""
    liveness, registry = node.liveness, node.registry
    leader = liveness.leader() if liveness_started(liveness) and liveness is not None else None
    leading = liveness is not None and leader is not None and liveness.is_leader
    if not leading or registry is None or liveness is None or leader is None:
        return [], {"leader": False, "term": None, "pending": {}}
    term = leader[1]
    held = state.pending if state.term == term else {}
    candidates = [
        (e.id, revision)
        for e in registry.index
        if _expirable(e) and (revision := registry.revision_of(e.id)) is not None
    ]
    plan = plan_expiry(candidates, held, now, state.unavailable_ttl)
    deleted: list[str] = []
    lost = 0
    for agent_id, revision in plan.due:
        if not (liveness.is_leader and liveness.valid()):
            break  # deposed or fenced meanwhile: a later leader counts again
        try:
            removed = await registry.unregister(agent_id, revision)
        except TransportError as error:
            _log.warning("could not delete unavailable entry %r: %s", agent_id, error)
            continue  # still due; the next sweep tries again
        if removed:
            deleted.append(agent_id)
        else:
            lost += 1
    if deleted:
        _log.info(
            "deleted %d unavailable entries after %gs: %s",
            len(deleted),
            state.unavailable_ttl,
            ", ".join(deleted),
        )
    return deleted, {
        "leader": True,
        "term": term,
        "pending": plan.pending,
        "deleted": state.deleted + len(deleted),
        "lost": state.lost + lost,
        "recently_deleted": [*state.recently_deleted, *deleted][-_HISTORY:],
    }


async def _sweep(ctx: Context) -> tuple[list[str], dict[str, Any]]:
    """One sweep: cache stats, this node's own system entries, and (leader) expiry.

    Returns the ids deleted and the state changes.
    """
    node = cluster_node(ctx)
    state: RegistryKeeperState = ctx.state
    repaired = await _repair_own_entries(node)
    deleted, changes = await _expire(node, state, ctx.node.clock.monotonic())
    changes.update(_cache_stats(node))
    changes["swept_at"] = ctx.node.clock.monotonic()
    if repaired:
        changes["repaired"] = state.repaired + len(repaired)
    return deleted, changes


class KeeperSweep(Action):
    """Sweep now: while this node leads, delete plain entries unavailable for the ttl."""

    name = "sweep"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        deleted, changes = await _sweep(ctx)
        status = _keeper_status(changes, ctx.state)
        return {**status, "deleted_now": deleted}, ctx.set(**changes)


class KeeperStatus(Action):
    """The registry cache's health (entries, complete, rebuilds) and the deletions pending."""

    name = "status"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        changes = _cache_stats(cluster_node(ctx))
        return _keeper_status(changes, ctx.state), ctx.set(**changes)


class RegistryKeeperAgent(SystemAgent):
    """Watches over the registry cache and expires unavailable plain entries (leader only)."""

    State = RegistryKeeperState
    capabilities = [SYSTEM_CAPABILITY, f"{SYSTEM_CAPABILITY}.{REGISTRY_KEEPER}"]
    routes = {
        "cluster.registry_keeper.status": KeeperStatus,
        "cluster.registry_keeper.sweep": KeeperSweep,
    }

    def mount(self, ctx: Context) -> Any:
        return None, [
            ctx.set(**_cache_stats(cluster_node(ctx))),
            ctx.schedule(KeeperSweep, every=ctx.state.refresh_interval, key="sweep"),
        ]


# --- starting them ----------------------------------------------------------------------

SYSTEM_AGENTS: Mapping[str, type[Agent]] = {
    NODE_DISCOVERY: NodeDiscoveryAgent,
    FAILURE_DETECTOR: FailureDetectorAgent,
    REGISTRY_KEEPER: RegistryKeeperAgent,
    RESOURCE_MANAGER: ResourceManagerAgent,
    LOAD_BALANCER: LoadBalancerAgent,
    HEALTH_MONITOR: HealthMonitorAgent,
    PARTITION_HANDLER: PartitionHandlerAgent,
}
"""Every system agent by role name, in start order."""


@dataclass(frozen=True, slots=True)
class SystemAgents:
    """The system agents started on one node, and the node-side objects they share."""

    node_id: str
    supervisor: Supervisor
    ids: Mapping[str, str]
    """Role name (``failure_detector``, ...) -> agent id."""
    quarantine: QuarantineBook | None = None
    health: HealthService | None = None
    partition: PartitionWatch | None = None

    def failover_suspended(self) -> bool:
        """Whether automatic failover must wait now (``PartitionWatch.failover_suspended``:
        fewer than ``min_nodes`` alive, or this node's lease lapsed)."""
        return self.partition is not None and self.partition.failover_suspended()


def _seconds(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a finite number of seconds > 0, got {value!r}")


async def start_system_agents(
    node: ClusterNode,
    *,
    unavailable_ttl: float = 60.0,
    reservation_grace: float = 15.0,
    refresh_interval: float = 1.0,
    max_restarts: int = 5,
    restart_period: float = 10.0,
    health: HealthMonitorConfig | None = None,
    min_nodes: int | None = None,
    partition_history: int = 1000,
) -> SystemAgents:
    """Start the system agents of a started ``node`` under its clustering supervisor.

    Lends the node to them as ``node.local.services["cluster"]``, starts the supervisor
    (one-for-one, at most ``max_restarts`` restarts in ``restart_period`` seconds, then it
    gives up on them with a critical alert; the node and its lease carry on), and starts and
    registers each agent as a permanent child. Raises ``ConfigurationError`` when the node
    is not started or its system agents already run.

    ``health`` configures the health monitor (``configure_health_monitor`` changes it
    later); ``min_nodes`` suspends automatic failover below that many alive nodes and
    ``partition_history`` bounds the partition handler's history (``PartitionWatch``).
    """
    _seconds("unavailable_ttl", unavailable_ttl)
    _seconds("refresh_interval", refresh_interval)
    _seconds("reservation_grace", reservation_grace)
    if node.registry is None or node.liveness is None:
        raise ConfigurationError(f"node {node.node_id!r} is not started")
    local = node.local
    held = local.services.get(CLUSTER_SERVICE)
    if held is not None and held is not node:
        raise ConfigurationError(
            f"node {node.node_id!r} already lends services[{CLUSTER_SERVICE!r}] to another node"
        )
    local.services[CLUSTER_SERVICE] = node
    quarantine, service, watch = await _lend_services(node, health, min_nodes, partition_history)
    supervisor = await local.start_supervisor(
        SUPERVISOR_ID, [], strategy="one_for_one", max_restarts=max_restarts, period=restart_period
    )
    settings: dict[str, dict[str, Any]] = {
        NODE_DISCOVERY: {"refresh_interval": refresh_interval},
        FAILURE_DETECTOR: {"refresh_interval": refresh_interval},
        REGISTRY_KEEPER: {
            "refresh_interval": refresh_interval,
            "unavailable_ttl": unavailable_ttl,
        },
        RESOURCE_MANAGER: {"refresh_interval": refresh_interval, "grace": reservation_grace},
        LOAD_BALANCER: {"refresh_interval": refresh_interval},
        HEALTH_MONITOR: {},
        PARTITION_HANDLER: {"refresh_interval": refresh_interval},
    }
    ids: dict[str, str] = {}
    for name, agent in SYSTEM_AGENTS.items():
        agent_id = system_agent_id(node.node_id, name)
        await node.start_agent(
            agent,
            agent_id,
            capabilities=tuple(agent.capabilities),
            state={"node_id": node.node_id, **settings[name]},
            restart="permanent",
            supervisor=SUPERVISOR_ID,
        )
        ids[name] = agent_id
    return SystemAgents(node.node_id, supervisor, ids, quarantine, service, watch)


async def _lend_services(
    node: ClusterNode,
    health: HealthMonitorConfig | None,
    min_nodes: int | None,
    partition_history: int,
) -> tuple[QuarantineBook, HealthService, PartitionWatch]:
    """The quarantine cache, the health service and the partition watch, on the node.

    The quarantine cache follows its watch until the node's data connection closes; the
    request balancer of the node reads it from then on.
    """
    local = node.local
    liveness = node.liveness
    assert liveness is not None
    assert liveness.buckets is not None
    book = local.services.get(QUARANTINE_SERVICE)
    if not isinstance(book, QuarantineBook):
        renewer = liveness.renewer
        if renewer is None:
            raise ConfigurationError(f"node {node.node_id!r} has no lease: it writes nothing")
        book = QuarantineBook(liveness.buckets.coordination, lambda: renewer.stamps)
        await book.start()
        local.services[QUARANTINE_SERVICE] = book
    if node.outbound is not None:
        node.outbound.balancer.quarantined = book.holds
    service = local.services.get(HEALTH_SERVICE)
    if not isinstance(service, HealthService):
        service = local.services[HEALTH_SERVICE] = HealthService(node, health)
    elif health is not None:
        service.configure(health)
    watch = local.services.get(PARTITION_SERVICE)
    if not isinstance(watch, PartitionWatch):
        watch = local.services[PARTITION_SERVICE] = PartitionWatch(
            node, min_nodes=min_nodes, history=partition_history
        )
    elif min_nodes is not None:
        watch.min_nodes = min_nodes
    return book, service, watch
