"""The health monitor's part of the demo: an anomaly, an alert, a quarantine, a placement.

Every live node's monitor is given synthetic vitals (so the story is the same on every
machine), checks run on demand (``cluster.health_monitor.check`` on the leader's monitor)
rather than on their minutes-long default intervals, and ``n2``'s memory then climbs far
above the baseline the calm checks taught. Two unhealthy check windows quarantine it, with
``drain``; the quarantine reaches every node's cache through the store, a new placement
goes elsewhere, and n2 hands its critical and durable agents off to the other nodes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agentcluster.agent.agent import Agent
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.health_monitor import (
    HEALTH_MONITOR,
    HealthMonitorConfig,
    configure_health_monitor,
)
from agentcluster.cluster.quarantine import quarantine_book
from agentcluster.cluster.system_base import system_agent_id
from agentcluster.core.health import CheckLevel, HealthPolicy
from agentcluster.core.membership import NodeStatus
from agentcluster.core.registry import AgentStatus
from agentcluster.core.signal import Signal
from agentcluster.errors import NodeUnavailable

__all__ = ["drained", "health_story"]

ANOMALOUS = "n2"
CALM_CHECKS = 6
MAX_CHECKS = 8
_QUIET = 3600.0
"""Interval of the periodic checks during the story: only the story's own checks run."""


class Newcomer(Agent):
    """An agent placed after the quarantine."""

    capabilities = ["demo.newcomer"]


class _Memory:
    """Synthetic vitals: a steady node with a small wobble, until ``climb`` is set."""

    def __init__(self) -> None:
        self.climb = 0.0
        self.reads: dict[str, int] = {}

    def __call__(self, node_id: str) -> dict[str, float]:
        n = self.reads[node_id] = self.reads.get(node_id, 0) + 1
        wobble = 4.0 if n % 2 else -4.0
        memory = 512.0 + wobble + (self.climb if node_id == ANOMALOUS else 0.0)
        return {"cpu_percent": 20.0, "memory_mb": memory, "loop_lag_ms": 1.0, "error_rate": 0.0}


async def _check(cluster: Cluster) -> dict[str, Any]:
    leader = cluster.leader()
    if leader is None:
        return {"checked": False}
    reply = await cluster.call(
        system_agent_id(leader[0], HEALTH_MONITOR),
        Signal("cluster.health_monitor.check"),
        timeout=10,
    )
    return reply if isinstance(reply, dict) else {"checked": False}


async def _everywhere(cluster: Cluster, node: str, within: float = 5.0) -> bool:
    """Wait (bounded) until every live node's quarantine cache holds ``node``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        books = [
            quarantine_book(cluster.node(n).local.services)
            for n, record in cluster.members().items()
            if record.status is NodeStatus.ALIVE and n in cluster.nodes
        ]
        if books and all(b is not None and b.holds(node) for b in books):
            return True
        await asyncio.sleep(0.01)
    return False


async def health_story(cluster: Cluster) -> tuple[list[str], list[str], str]:
    """Run the story; returns the alert messages, the quarantined nodes and the node the
    newcomer was placed on."""
    vitals = _Memory()
    config = HealthMonitorConfig(
        policy=HealthPolicy(
            intervals={
                CheckLevel.BASIC: _QUIET,
                CheckLevel.COMPREHENSIVE: _QUIET,
                CheckLevel.DEEP: _QUIET,
            },
            min_samples=5,
            quarantine_after=2,
            drain=True,
        ),
        vitals=vitals,
        vitals_timeout=2.0,
        ping_timeout=2.0,
    )
    live = [n for n, r in cluster.members().items() if r.status is NodeStatus.ALIVE]
    for node_id in live:
        if node_id in cluster.nodes:
            configure_health_monitor(cluster.node(node_id), config)
    for _ in range(CALM_CHECKS):
        await _check(cluster)
    vitals.climb = 3000.0
    alerts: list[str] = []
    quarantined: list[str] = []
    for _ in range(MAX_CHECKS):
        result = await _check(cluster)
        alerts.extend(a["message"] for a in result.get("alerts", ()) if a.get("severity") != "info")
        quarantined = list(result.get("quarantined", ()))
        if ANOMALOUS in quarantined:
            break
    if ANOMALOUS not in quarantined or not await _everywhere(cluster, ANOMALOUS):
        raise NodeUnavailable(f"{ANOMALOUS} was not quarantined: alerts {alerts}")
    entry = await cluster.start_agent(Newcomer, "newcomer")
    return alerts, quarantined, entry.node


async def drained(cluster: Cluster, agents: list[str], within: float = 10.0) -> dict[str, str]:
    """Wait (bounded) until none of ``agents`` runs on the quarantined node; returns where
    each one runs then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    where: dict[str, str] = {}
    while loop.time() < deadline:
        where = {}
        for agent_id in agents:
            entry = cluster.lookup(agent_id)
            if entry is not None and entry.status is AgentStatus.RUNNING:
                where[agent_id] = entry.node
        if len(where) == len(agents) and ANOMALOUS not in where.values():
            break
        await asyncio.sleep(0.02)
    return where
