"""Snapshots the placement and request strategies decide on.

A strategy never reads the cluster: the shell builds these values from the ``nodes``
cache, the ``reservations.<node>`` keys, the health monitor, the circuit breakers and its
own request statistics, and hands them over whenever one of them changes. Every value is
frozen, so a strategy may keep references to them between updates.

Exclusion is shared by every strategy and is decided here: a node is *available* when it
is not quarantined, not unhealthy and its breaker is not open (half-open lets a trial
through, so it counts as available); a holder additionally needs its own breaker not open.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from agentcluster.core.circuit_breaker import BreakerState
from agentcluster.core.membership import NodeRecord

__all__ = ["FIT_SLACK", "Health", "HolderView", "NodeView", "PlacementRequest", "RequestContext"]

FIT_SLACK = 1e-9
"""Tolerance when comparing free capacity with a request: reservations are sums of floats."""


class Health(StrEnum):
    """The health monitor's verdict on a node; ``UNHEALTHY`` excludes it like quarantine."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class NodeView:
    """One alive node as the strategies see it.

    ``capacity`` is what the node declares per resource (``cpu``, ``memory_mb``, ``gpu``,
    ``network_mbps``, any custom counter); ``reserved`` is what placements hold on it. A
    resource the node does not declare has capacity 0. ``load`` is the 0..1 utilisation
    from heartbeats; ``in_flight``, ``latency_ewma`` (seconds) and ``error_rate_ewma``
    describe the requests it is serving. ``weight`` is the node's relative share in the
    weighted request strategies (a holder's weight is multiplied by its node's).
    """

    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()
    capacity: Mapping[str, float] = field(default_factory=dict)
    reserved: Mapping[str, float] = field(default_factory=dict)
    agent_count: int = 0
    load: float = 0.0
    in_flight: int = 0
    latency_ewma: float | None = None
    error_rate_ewma: float = 0.0
    health: Health = Health.HEALTHY
    quarantined: bool = False
    breaker: BreakerState = BreakerState.CLOSED
    weight: float = 1.0

    @property
    def zone(self) -> str | None:
        return self.labels.get("zone")

    @property
    def region(self) -> str | None:
        return self.labels.get("region")

    @property
    def excluded_by_health(self) -> bool:
        """Quarantined or unhealthy: the reason ``all_quarantined`` when it empties a choice."""
        return self.quarantined or self.health is Health.UNHEALTHY

    def free(self, resource: str) -> float:
        """Capacity not held by placements (negative when a node shrank under them)."""
        return self.capacity.get(resource, 0.0) - self.reserved.get(resource, 0.0)

    def fits(self, resources: Mapping[str, float]) -> bool:
        """Whether every positive amount of ``resources`` is free here."""
        for resource, amount in resources.items():
            if amount > 0 and self.free(resource) + FIT_SLACK < amount:
                return False
        return True

    @classmethod
    def from_record(
        cls,
        record: NodeRecord,
        *,
        reserved: Mapping[str, float] | None = None,
        in_flight: int = 0,
        latency_ewma: float | None = None,
        error_rate_ewma: float = 0.0,
        health: Health = Health.HEALTHY,
        quarantined: bool = False,
        breaker: BreakerState = BreakerState.CLOSED,
        weight: float = 1.0,
    ) -> NodeView:
        """The view of an alive node's record; the caller passes only alive nodes and adds
        what the record does not carry (reservations, health, breaker, request figures)."""
        return cls(
            id=record.id,
            labels=dict(record.labels),
            capabilities=frozenset(record.capabilities),
            capacity=dict(record.capacity),
            reserved=dict(reserved or {}),
            agent_count=record.agent_count,
            load=record.load,
            in_flight=in_flight,
            latency_ewma=latency_ewma,
            error_rate_ewma=error_rate_ewma,
            health=health,
            quarantined=quarantined,
            breaker=breaker,
            weight=weight,
        )


@dataclass(frozen=True, slots=True)
class HolderView:
    """One agent holding a capability, and what is known about the requests it serves.

    ``breaker`` is the agent's own breaker; its node's breaker, quarantine and health
    exclude it too. ``samples`` counts the finished requests behind the EWMAs (the
    adaptive strategy explores holders with few samples). ``RequestStats.view`` builds one.
    """

    agent_id: str
    node: NodeView
    in_flight: int = 0
    latency_ewma: float | None = None
    error_rate_ewma: float = 0.0
    breaker: BreakerState = BreakerState.CLOSED
    weight: float = 1.0
    samples: int = 0

    @property
    def zone(self) -> str | None:
        return self.node.zone

    @property
    def region(self) -> str | None:
        return self.node.region

    @property
    def breaker_open(self) -> bool:
        return self.breaker is BreakerState.OPEN or self.node.breaker is BreakerState.OPEN


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """Where should ``agent_id`` start.

    ``resources`` must be free on the node and ``capabilities`` declared by it. ``zone`` and
    ``region`` are the preferred location (the caller's, or the agent's spec), ``local`` the
    caller's node, ``leader`` the current cluster leader, ``key`` the sticky key (the agent
    id when not given).
    """

    agent_id: str
    resources: Mapping[str, float] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()
    zone: str | None = None
    region: str | None = None
    local: str | None = None
    leader: str | None = None
    key: str | None = None

    @property
    def sticky_key(self) -> str:
        return self.agent_id if self.key is None else self.key


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asks: ``key`` for sticky sessions, ``zone``/``region`` of the caller."""

    key: str | None = None
    zone: str | None = None
    region: str | None = None
