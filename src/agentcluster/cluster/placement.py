"""Where a new agent starts: node views from this process's caches, and a strategy.

``Placer`` builds a ``core.node_view.NodeView`` of every live hosting node from what the
node it belongs to already holds in memory — the ``nodes`` records (labels, capabilities,
capacity, load), the ``reservations`` cache (what is promised), the registry (how many user
agents each node runs), the heartbeats (a node this node suspects counts as unhealthy),
the quarantine keys (``cluster.quarantine``: a quarantined or probationary node is
excluded) and the request path's node breakers — and hands them to the named strategy of
``core.placement``. The decision is the core's; nothing here chooses.

A placement is only a proposal: the chosen node reserves the resources itself by
compare-and-set (``cluster.resources``), so a node that filled up meanwhile refuses with
``NoAvailableNode(reason="no_capacity")`` and the caller places again without it.
Placements are rare next to requests, so views are rebuilt for each one rather than
maintained incrementally; request balancing (``cluster.balancing``) precomputes instead.
A start under way counts as one more agent on its node (``placing``) until it ends, so
concurrent placements from one process spread even before the registry shows them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentcluster.cluster.quarantine import quarantine_book
from agentcluster.core.circuit_breaker import BreakerState
from agentcluster.core.membership import NodeStatus
from agentcluster.core.node_view import Health, NodeView, PlacementRequest
from agentcluster.core.placement import PLACEMENT_STRATEGIES, PlacementStrategy, make_placement
from agentcluster.core.reservations import check_resources
from agentcluster.errors import ConfigurationError

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = ["DEFAULT_PLACEMENT", "PlacementSpec", "Placer", "placement_spec"]

DEFAULT_PLACEMENT = "least_loaded"
"""The strategy used when ``start_agent`` names none (the seeds' ``load_balanced``)."""


@dataclass(frozen=True, slots=True)
class PlacementSpec:
    """How to place one agent: the strategy and what it needs from a node."""

    strategy: str = DEFAULT_PLACEMENT
    resources: Mapping[str, float] = field(default_factory=dict)
    requires: frozenset[str] = frozenset()
    zone: str | None = None
    region: str | None = None
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"strategy": self.strategy}
        if self.requires:
            shown["requires"] = sorted(self.requires)
        for name in ("zone", "region", "key"):
            value = getattr(self, name)
            if value is not None:
                shown[name] = value
        return shown


_SPEC_FIELDS = frozenset({"strategy", "requires", "zone", "region", "key", "resources"})


def placement_spec(
    placement: str | Mapping[str, Any] | PlacementSpec | None,
    resources: Mapping[str, Any] | None = None,
) -> PlacementSpec:
    """Read ``start_agent``'s ``placement=`` (a strategy name, or a mapping with
    ``strategy``, ``requires``, ``zone``, ``region``, ``key``) and ``resources=``;
    ``ConfigurationError`` names what is wrong."""
    if isinstance(placement, PlacementSpec):
        spec = placement
        if resources is not None:
            spec = PlacementSpec(
                spec.strategy,
                check_resources(resources),
                spec.requires,
                spec.zone,
                spec.region,
                spec.key,
            )
        return spec
    raw: dict[str, Any]
    if placement is None:
        raw = {}
    elif isinstance(placement, str):
        raw = {"strategy": placement}
    elif isinstance(placement, Mapping):
        raw = dict(placement)
        unknown = sorted(set(raw) - _SPEC_FIELDS)
        if unknown:
            raise ConfigurationError(
                f"unknown placement keys {unknown}; known: {sorted(_SPEC_FIELDS)}"
            )
    else:
        raise ConfigurationError(f"placement is a strategy name or a mapping, not {placement!r}")
    strategy = raw.get("strategy", DEFAULT_PLACEMENT)
    if strategy not in PLACEMENT_STRATEGIES:
        raise ConfigurationError(
            f"unknown placement strategy {strategy!r}; known: {', '.join(PLACEMENT_STRATEGIES)}"
        )
    requires = raw.get("requires", ())
    if isinstance(requires, str) or not all(isinstance(r, str) for r in requires):
        raise ConfigurationError(
            f"placement 'requires' is a list of capability names, not {requires!r}"
        )
    for name in ("zone", "region", "key"):
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"placement {name!r} must be a string, not {value!r}")
    return PlacementSpec(
        strategy=strategy,
        resources=check_resources(resources if resources is not None else raw.get("resources")),
        requires=frozenset(requires),
        zone=raw.get("zone"),
        region=raw.get("region"),
        key=raw.get("key"),
    )


class Placer:
    """Chooses nodes for new agents from one ``ClusterNode``'s caches."""

    def __init__(
        self,
        node: ClusterNode,
        *,
        hosts: Callable[[], Collection[str]] | None = None,
        seed: str | None = None,
    ) -> None:
        self._node = node
        self._hosts = hosts
        self._rng = random.Random(seed if seed is not None else node.node_id)
        self._strategies: dict[str, PlacementStrategy] = {}
        self._pending: dict[str, int] = {}

    def strategy(self, name: str) -> PlacementStrategy:
        """One strategy object per name, so round robin and the random draws carry on."""
        held = self._strategies.get(name)
        if held is None:
            if name not in PLACEMENT_STRATEGIES:
                raise ConfigurationError(
                    f"unknown placement strategy {name!r}; known: {', '.join(PLACEMENT_STRATEGIES)}"
                )
            held = make_placement(name, rng=self._rng)
            self._strategies[name] = held
        return held

    def views(self, exclude: Collection[str] = ()) -> list[NodeView]:
        """A view of every live node that may host agents, by id."""
        node = self._node
        members = node.members()
        registry = node.registry
        reservations = node.reservations
        liveness = node.liveness
        heartbeats = None if liveness is None else liveness.heartbeats
        breakers = node.outbound.balancer.node_breakers if node.outbound is not None else None
        quarantine = quarantine_book(node.local.services)
        now = node.local.clock.monotonic()
        allowed = None if self._hosts is None else set(self._hosts())
        views: list[NodeView] = []
        for node_id, record in sorted(members.items()):
            if record.status is not NodeStatus.ALIVE or node_id in exclude:
                continue
            if allowed is not None and node_id not in allowed:
                continue
            users = 0 if registry is None else len(registry.user_agents(node_id))
            suspected = (
                heartbeats is not None and node_id != node.node_id and heartbeats.suspected(node_id)
            )
            views.append(
                NodeView(
                    id=node_id,
                    labels=record.labels,
                    capabilities=frozenset(record.capabilities),
                    capacity=record.capacity,
                    reserved={} if reservations is None else reservations.reserved(node_id),
                    agent_count=users + self._pending.get(node_id, 0),
                    load=record.load,
                    health=Health.UNHEALTHY if suspected else Health.HEALTHY,
                    quarantined=quarantine is not None and quarantine.holds(node_id),
                    breaker=BreakerState.CLOSED
                    if breakers is None
                    else breakers.state(node_id, now),
                )
            )
        return views

    @contextmanager
    def placing(self, node_id: str) -> Iterator[None]:
        """Count a start under way on ``node_id`` as one more agent there until it ends, so
        placements made concurrently from one snapshot spread instead of all choosing
        the node that looked least loaded."""
        self._pending[node_id] = self._pending.get(node_id, 0) + 1
        try:
            yield
        finally:
            left = self._pending[node_id] - 1
            if left:
                self._pending[node_id] = left
            else:
                del self._pending[node_id]

    def select(self, agent_id: str, spec: PlacementSpec, *, exclude: Collection[str] = ()) -> str:
        """The node ``spec.strategy`` chooses for ``agent_id``; ``NoAvailableNode`` with
        the reason when none can take it."""
        strategy = self.strategy(spec.strategy)
        strategy.update(self.views(exclude))
        node = self._node
        labels = node.local_labels
        leader = None if node.liveness is None else node.liveness.leader()
        request = PlacementRequest(
            agent_id=agent_id,
            resources=spec.resources,
            capabilities=spec.requires,
            zone=spec.zone if spec.zone is not None else labels.get("zone"),
            region=spec.region if spec.region is not None else labels.get("region"),
            local=node.node_id if node.role == "node" else None,
            leader=None if leader is None else leader[0],
            key=spec.key,
        )
        return strategy.choose(request)
