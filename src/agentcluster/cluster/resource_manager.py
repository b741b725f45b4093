"""The resource manager system agent: the cluster's resources, and the reservation collector.

``system.<node>.resource_manager`` answers ``cluster.resource_manager.status`` with what
``Cluster.resources()`` reports (capacity, reserved, used and free per node and in total),
from its node's caches. While its node leads, each sweep also collects reservations that
no longer match the registry (``core.reservations.plan_collection``): an entry whose agent
is not registered on that node at that incarnation in a status that holds resources
(``starting``, ``running``, ``moving``) is removed once this collector has seen it
unmatched for ``grace`` seconds of its own clock. That covers a placement whose starter
died before registering, a stop whose release was lost, and the agents of a node that died.
Collection is by compare-and-set on the node's key, behind the fence, so a placement that
raced it simply re-reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from agentcluster.agent.action import Action, NoParams
from agentcluster.agent.context import Context
from agentcluster.cluster.system_base import (
    SYSTEM_CAPABILITY,
    SystemAgent,
    cluster_node,
    liveness_started,
)
from agentcluster.core.membership import NodeStatus
from agentcluster.core.registry import AgentStatus
from agentcluster.core.reservations import ReservationKey, plan_collection, resource_totals
from agentcluster.errors import TransportError

__all__ = ["RESOURCE_MANAGER", "ResourceManagerAgent", "ResourceManagerState", "cluster_resources"]

_log = logging.getLogger("agentcluster.cluster.resource_manager")

RESOURCE_MANAGER = "resource_manager"

_HOLDING = frozenset({AgentStatus.STARTING, AgentStatus.RUNNING, AgentStatus.MOVING})
"""Registry statuses under which an agent's reservation stays."""

_HISTORY = 32


class ResourceManagerState(BaseModel):
    node_id: str = ""
    refresh_interval: float = 1.0
    grace: float = 15.0
    """Seconds an unmatched reservation waits before it is collected (longer than a start
    takes between its reservation and its registration)."""
    leader: bool = False
    pending: dict[str, float] = Field(default_factory=dict)
    """``node|agent|incarnation`` -> when this collector first saw it unmatched."""
    collected: int = 0
    recently_collected: list[str] = Field(default_factory=list)
    swept_at: float | None = None


def _pending_key(node_id: str, key: ReservationKey) -> str:
    return f"{node_id}|{key[0]}|{key[1]}"


def cluster_resources(node: Any) -> dict[str, Any]:
    """Capacity, reserved, used and free per live node and in total, from ``node``'s caches
    (a ``ClusterNode``); what ``Cluster.resources()`` returns."""
    registry, reservations = node.registry, node.reservations
    nodes: dict[str, Any] = {}
    for node_id, record in sorted(node.members().items()):
        if record.status is not NodeStatus.ALIVE:
            continue
        held = None if reservations is None else reservations.of(node_id)
        reserved = {} if held is None else held.reserved()
        used: dict[str, float] = {}
        if held is not None and registry is not None:
            for (agent_id, incarnation), reservation in held.entries.items():
                entry = registry.lookup(agent_id)
                if (
                    entry is not None
                    and entry.node == node_id
                    and entry.incarnation == incarnation
                    and entry.status is AgentStatus.RUNNING
                ):
                    for name, amount in reservation.resources.items():
                        used[name] = used.get(name, 0.0) + amount
        capacity = dict(record.capacity)
        users = 0 if registry is None else len(registry.user_agents(node_id))
        nodes[node_id] = {
            "capacity": capacity,
            "reserved": reserved,
            "used": used,
            "free": {
                name: capacity.get(name, 0.0) - reserved.get(name, 0.0)
                for name in sorted(set(capacity) | set(reserved))
            },
            "load": record.load,
            "agents": users,
            "labels": dict(record.labels),
        }
    total: dict[str, Any] = {
        kind: resource_totals(n[kind] for n in nodes.values())
        for kind in ("capacity", "reserved", "used", "free")
    }
    total["agents"] = sum(n["agents"] for n in nodes.values())
    return {"nodes": nodes, "total": total}


async def collect_reservations(
    node: Any, pending: Mapping[str, float], now: float, grace: float
) -> tuple[list[str], dict[str, float]]:
    """One collection sweep while ``node`` leads: the entries removed and the new pending
    table (empty when not leading)."""
    liveness, registry, reservations = node.liveness, node.registry, node.reservations
    if (
        not liveness_started(liveness)
        or registry is None
        or reservations is None
        or not liveness.is_leader
        or not liveness.valid()
    ):
        return [], {}

    def matches(node_id: str, key: ReservationKey) -> bool:
        entry = registry.lookup(key[0])
        return (
            entry is not None
            and entry.node == node_id
            and entry.incarnation == key[1]
            and entry.status in _HOLDING
        )

    held = {}
    for text, first_seen in pending.items():
        node_id, agent_id, incarnation = text.rsplit("|", 2)
        held[(node_id, (agent_id, int(incarnation)))] = first_seen
    plan = plan_collection(reservations.all(), matches, held, now, grace)
    collected: list[str] = []
    for node_id, keys in plan.due.items():
        if not (liveness.is_leader and liveness.valid()):
            break
        try:
            await reservations.release(node_id, keys)
        except TransportError as error:
            _log.warning("could not collect reservations on %r: %s", node_id, error)
            continue
        collected.extend(_pending_key(node_id, key) for key in keys)
    if collected:
        _log.info("collected %d stale reservations: %s", len(collected), ", ".join(collected))
    done = set(collected)
    table = {
        _pending_key(n, k): t
        for (n, k), t in plan.pending.items()
        if _pending_key(n, k) not in done
    }
    return collected, table


class ResourceStatus(Action):
    """Capacity, reserved, used and free resources per node and in total."""

    name = "status"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        state: ResourceManagerState = ctx.state
        report = cluster_resources(cluster_node(ctx))
        report["collector"] = {
            "leader": state.leader,
            "pending": len(state.pending),
            "collected": state.collected,
            "recently_collected": state.recently_collected,
        }
        return report


class CollectReservations(Action):
    """Sweep now: while this node leads, remove reservations unmatched for ``grace``."""

    name = "collect"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        node = cluster_node(ctx)
        state: ResourceManagerState = ctx.state
        now = ctx.node.clock.monotonic()
        collected, pending = await collect_reservations(node, state.pending, now, state.grace)
        liveness = node.liveness
        changes = {
            "leader": liveness is not None and liveness_started(liveness) and liveness.is_leader,
            "pending": pending,
            "collected": state.collected + len(collected),
            "recently_collected": [*state.recently_collected, *collected][-_HISTORY:],
            "swept_at": now,
        }
        return {"collected": collected, "pending": len(pending)}, ctx.set(**changes)


class ResourceManagerAgent(SystemAgent):
    """Reports the cluster's resources; collects stale reservations while leading."""

    State = ResourceManagerState
    capabilities = [SYSTEM_CAPABILITY, f"{SYSTEM_CAPABILITY}.{RESOURCE_MANAGER}"]
    routes = {
        "cluster.resource_manager.status": ResourceStatus,
        "cluster.resource_manager.collect": CollectReservations,
    }

    def mount(self, ctx: Context) -> Any:
        return None, [
            ctx.schedule(CollectReservations, every=ctx.state.refresh_interval, key="collect"),
        ]
