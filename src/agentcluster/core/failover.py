"""The failover planner: what the leader does with the registry entries of gone nodes.

Theory of operation. Failover is reconciliation: the leader compares the registry with the
membership and plans, for each entry that no longer names a live placement, the one
compare-and-set that brings it forward. The shell carries the plan out, each decision at
the revision it names, so a decision that lost to a newer write simply fails and the next
plan starts from what the registry then holds; a leader that dies half-way strands nothing.

An entry is *orphaned* when ``registry.may_take_over`` says so: its node is dead, left,
unknown, or alive under a newer incarnation than the entry names. For each entry, in
agent-id order:

- ``failed`` entries are final and never touched;
- a *plain* orphan becomes ``MarkUnavailable`` (``node_dead``, ``node_left`` or
  ``node_restarted``); plain entries are never moved, and one already unavailable is left;
- a *critical* or *durable* orphan, or one waiting as ``unavailable`` (``no_capacity``),
  is moved: ``MoveTo`` a node chosen by its spec's placement strategy (default
  ``least_loaded``) among the live nodes with room for its resources, at agent
  incarnation + 1, status ``starting``. With no node able to take it, it waits as
  ``MarkUnavailable(no_capacity)`` (``detail`` keeps the placement's own reason), and the
  next plan tries again; an entry already waiting so gets no new write;
- a critical or durable entry ``starting`` on a live node at its current incarnation for
  ``activation_timeout`` or longer, on this planner's clock, is moved again. The node it
  was stuck on is excluded from that choice while another node can take it (a node that
  did not activate the agent in time is the likeliest not to now), and used when no other
  can, so a one-node cluster still retries;
- every other entry on a live node at its current incarnation is left alone.

Every ``MoveTo`` is a failover, recorded in the agent's history at ``history_now`` (the
history's own clock: the shell keeps it in the registry entries in wall-clock seconds, so
any leader counts on; ``now`` when not given). The move carries the agent's history with
itself added (``MoveTo.failovers``), for the shell to write with it. A move that would be
the ``max_failovers + 1``-th within ``failover_window`` becomes ``MarkFailed``
(``failover_limit``) with a critical alert instead: an agent that kills node after node,
or never activates, stops being moved. A failover at ``t`` counts while
``history_now - t < failover_window``.

Placement sees the nodes as the shell built them (``NodeView``: reservations, health,
quarantine, breakers), restricted to those the membership holds alive; quarantined,
unhealthy and open-breaker nodes are excluded by the strategies themselves. Each move
adds its resources to its target's reservations and one to its agent count before the
next choice, so one plan never promises the same free slot twice; the shell's
reservation compare-and-set stays the real guard. Reservations of a moved agent's
earlier incarnation are not credited back (the collector frees them): the plan may
under-use a node, never overcommit it.

Time counts as in ``core.expiry``: the planner notes when it first saw an entry
``starting`` at a revision, and a new revision starts the count again. The plan hands back
that table and the trimmed failover histories for the shell to pass to the next call, and
``next_deadline``, when a waiting activation next times out. At most ``limit`` decisions
are planned per call, in agent-id order; ``remaining`` counts the candidates left for the
next call.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.node_view import NodeView, PlacementRequest
from agentcluster.core.placement import PLACEMENT_STRATEGIES, PlacementStrategy, make_placement
from agentcluster.core.registry import AgentEntry, AgentMode, AgentStatus, may_take_over
from agentcluster.core.reservations import check_resources
from agentcluster.errors import ConfigurationError, NoAvailableNode

__all__ = [
    "ACTIVATION_TIMEOUT",
    "DEFAULT_PLACEMENT",
    "FAILOVER_WINDOW",
    "MAX_DECISIONS",
    "MAX_FAILOVERS",
    "MOVABLE",
    "Decision",
    "FailoverPlan",
    "MarkFailed",
    "MarkUnavailable",
    "MoveTo",
    "Placement",
    "PlanPlacer",
    "StartingSince",
    "move_to",
    "placement_of",
    "plan_failover",
]

MAX_FAILOVERS = 3
"""Failovers of one agent allowed within ``FAILOVER_WINDOW``; the next one marks it failed."""

FAILOVER_WINDOW = 600.0
"""Seconds over which failovers are counted."""

ACTIVATION_TIMEOUT = 10.0
"""Seconds an entry may stay ``starting`` before it is planned again."""

MAX_DECISIONS = 256
"""Decisions one call may plan."""

DEFAULT_PLACEMENT = "least_loaded"
"""The strategy used when an entry's spec names none (as ``start_agent``)."""

NODE_DEAD = "node_dead"
NODE_LEFT = "node_left"
NODE_RESTARTED = "node_restarted"
NO_CAPACITY = "no_capacity"
FAILOVER_LIMIT = "failover_limit"
INVALID_SPEC = "invalid_spec"

MOVABLE = frozenset({AgentMode.CRITICAL, AgentMode.DURABLE})
"""The modes whose agents are moved (by a failover or a drain); plain ones never are."""


@dataclass(frozen=True, slots=True)
class MoveTo:
    """Rewrite the entry at ``revision`` to ``{node, node_incarnation, incarnation:
    agent_incarnation, status: starting}``, reserving ``resources`` on ``node`` first."""

    agent_id: str
    revision: int
    node: str
    node_incarnation: int
    agent_incarnation: int
    resources: Mapping[str, float] = field(default_factory=dict)
    failovers: tuple[float, ...] = field(default=(), compare=False)
    """The agent's failovers within the window, this one last (``history_now`` clock):
    bookkeeping to write with the move, not part of which move it is (equality)."""


@dataclass(frozen=True, slots=True)
class MarkUnavailable:
    """Rewrite the entry at ``revision`` as ``unavailable`` with ``reason``; ``detail`` is
    the placement's reason (``no_capacity``, ``no_capability``, ``all_quarantined``…)
    when no node could take a movable agent."""

    agent_id: str
    revision: int
    reason: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class MarkFailed:
    """Rewrite the entry at ``revision`` as ``failed`` with ``reason``; ``alert`` says a
    critical alert is due (a critical or durable agent is lost until someone acts)."""

    agent_id: str
    revision: int
    reason: str
    alert: bool = True


Decision = MoveTo | MarkUnavailable | MarkFailed


@dataclass(frozen=True, slots=True)
class StartingSince:
    """An entry being timed in ``starting``: the revision seen and when first seen there."""

    revision: int
    first_seen: float


@dataclass(frozen=True, slots=True)
class FailoverPlan:
    """One planning pass: the decisions, and the tables to pass to the next call."""

    decisions: tuple[Decision, ...]
    """Sorted by agent id, at most ``limit``."""
    starting: dict[str, StartingSince]
    """Every critical or durable entry now ``starting`` on a live node at its current
    incarnation, with when this planner first saw it so."""
    history: dict[str, tuple[float, ...]]
    """Failover times per agent within the window, this plan's moves included."""
    remaining: int = 0
    """Candidates not examined because the limit was reached: call again soon."""
    next_deadline: float | None = None
    """When the earliest timed ``starting`` entry will time out, if any is waiting."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an entry's restart spec asks its agent to be placed (``placement_of``)."""

    strategy: str
    resources: Mapping[str, float]
    requires: frozenset[str]
    zone: str | None
    region: str | None
    key: str | None


def plan_failover(
    entries: Iterable[tuple[AgentEntry, int]],
    nodes: Mapping[str, NodeRecord],
    views: Iterable[NodeView],
    *,
    now: float,
    rng: random.Random,
    starting: Mapping[str, StartingSince] | None = None,
    history: Mapping[str, Sequence[float]] | None = None,
    history_now: float | None = None,
    leader: str | None = None,
    max_failovers: int = MAX_FAILOVERS,
    failover_window: float = FAILOVER_WINDOW,
    activation_timeout: float = ACTIVATION_TIMEOUT,
    limit: int = MAX_DECISIONS,
) -> FailoverPlan:
    """Plan the registry writes that fail over the entries of gone nodes.

    ``entries`` are ``(entry, revision)`` from the registry cache; ``nodes`` the membership;
    ``views`` the placement snapshot of the alive nodes (any other is ignored); ``rng``
    drives the random strategies; ``leader`` is handed to ``leader_only``. ``starting`` and
    ``history`` are the tables of the previous plan (empty at first); ``history_now`` is
    the present on the history's clock (default ``now``).
    """
    if max_failovers < 0:
        raise ConfigurationError(f"max_failovers must be >= 0, not {max_failovers!r}")
    if not failover_window > 0 or not activation_timeout > 0:
        raise ConfigurationError(
            "failover_window and activation_timeout must be > 0, "
            f"not {failover_window!r} and {activation_timeout!r}"
        )
    if limit < 1:
        raise ConfigurationError(f"limit must be >= 1, not {limit!r}")
    held_starting = starting or {}
    times: dict[str, tuple[float, ...]] = {}
    at = now if history_now is None else history_now
    for agent_id, earlier in (history or {}).items():
        recent = tuple(t for t in earlier if at - t < failover_window)
        if recent:
            times[agent_id] = recent

    timed: dict[str, StartingSince] = {}
    next_deadline: float | None = None
    candidates: list[tuple[AgentEntry, int, str | None]] = []
    for entry, revision in sorted(entries, key=lambda pair: pair[0].id):
        if entry.status is AgentStatus.FAILED:
            continue
        movable = entry.mode in MOVABLE
        if may_take_over(entry, nodes):
            if movable or entry.status is not AgentStatus.UNAVAILABLE:
                candidates.append((entry, revision, None))
            continue
        if not movable:
            continue
        if entry.status is AgentStatus.UNAVAILABLE and entry.reason == NO_CAPACITY:
            candidates.append((entry, revision, None))
        elif entry.status is AgentStatus.STARTING:
            seen = held_starting.get(entry.id)
            if seen is None or seen.revision != revision:
                seen = StartingSince(revision, now)
            timed[entry.id] = seen
            deadline = seen.first_seen + activation_timeout
            if now >= deadline:
                candidates.append((entry, revision, entry.node))
            elif next_deadline is None or deadline < next_deadline:
                next_deadline = deadline

    placer = PlanPlacer(nodes, views, rng, leader)
    decisions: list[Decision] = []
    examined = 0
    for entry, revision, stuck_on in candidates:
        if len(decisions) >= limit:
            break
        examined += 1
        if entry.mode not in MOVABLE:
            decisions.append(MarkUnavailable(entry.id, revision, _gone_reason(entry, nodes)))
            continue
        earlier = times.get(entry.id, ())
        if len(earlier) >= max_failovers:
            decisions.append(MarkFailed(entry.id, revision, FAILOVER_LIMIT))
            continue
        try:
            placement = placement_of(entry.spec)
        except ConfigurationError:
            decisions.append(MarkFailed(entry.id, revision, INVALID_SPEC))
            continue
        try:
            target = placer.choose(entry.id, placement, exclude=stuck_on)
        except NoAvailableNode as refused:
            if entry.status is not AgentStatus.UNAVAILABLE or entry.reason != NO_CAPACITY:
                decisions.append(
                    MarkUnavailable(entry.id, revision, NO_CAPACITY, detail=refused.reason)
                )
            continue
        placer.reserve(target, placement.resources)
        times[entry.id] = (*earlier, at)
        decisions.append(move_to(entry, revision, target, nodes, placement, times[entry.id]))
    return FailoverPlan(
        decisions=tuple(decisions),
        starting=timed,
        history=dict(sorted(times.items())),
        remaining=len(candidates) - examined,
        next_deadline=next_deadline,
    )


def move_to(
    entry: AgentEntry,
    revision: int,
    target: str,
    nodes: Mapping[str, NodeRecord],
    placement: Placement,
    failovers: tuple[float, ...] = (),
) -> MoveTo:
    """The move of ``entry`` (at ``revision``) to ``target``, at the next incarnation."""
    return MoveTo(
        agent_id=entry.id,
        revision=revision,
        node=target,
        node_incarnation=nodes[target].incarnation,
        agent_incarnation=entry.incarnation + 1,
        resources=dict(placement.resources),
        failovers=failovers,
    )


def _gone_reason(entry: AgentEntry, nodes: Mapping[str, NodeRecord]) -> str:
    record = nodes.get(entry.node)
    if record is None or record.status is NodeStatus.DEAD:
        return NODE_DEAD
    if record.status is NodeStatus.LEFT:
        return NODE_LEFT
    return NODE_RESTARTED


def placement_of(spec: Mapping[str, Any] | None) -> Placement:
    """The placement an entry's restart spec asks for (the shape ``start_agent`` stores:
    top-level ``resources``, and ``placement`` with ``strategy``, ``requires``, ``zone``,
    ``region``, ``key``); ``ConfigurationError`` when it does not parse."""
    spec = spec or {}
    raw = spec.get("placement") or {}
    if isinstance(raw, str):
        raw = {"strategy": raw}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"placement is a mapping, not {raw!r}")
    strategy = raw.get("strategy", DEFAULT_PLACEMENT)
    if strategy not in PLACEMENT_STRATEGIES:
        raise ConfigurationError(f"unknown placement strategy {strategy!r}")
    requires = raw.get("requires", ())
    if isinstance(requires, str) or not all(isinstance(r, str) for r in requires):
        raise ConfigurationError(f"placement 'requires' is a list of names, not {requires!r}")
    located: dict[str, str | None] = {}
    for name in ("zone", "region", "key"):
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"placement {name!r} must be a string, not {value!r}")
        located[name] = value
    resources = spec.get("resources")
    if resources is None:
        resources = raw.get("resources")
    return Placement(
        strategy=strategy,
        resources=check_resources(resources),
        requires=frozenset(requires),
        zone=located["zone"],
        region=located["region"],
        key=located["key"],
    )


class PlanPlacer:
    """The strategies of one plan over views that grow with each planned move."""

    __slots__ = ("_dirty", "_leader", "_rng", "_strategies", "_views")

    def __init__(
        self,
        nodes: Mapping[str, NodeRecord],
        views: Iterable[NodeView],
        rng: random.Random,
        leader: str | None,
    ) -> None:
        self._views = {
            view.id: view
            for view in views
            if (record := nodes.get(view.id)) is not None and record.status is NodeStatus.ALIVE
        }
        self._rng = rng
        self._leader = leader
        self._strategies: dict[str, PlacementStrategy] = {}
        self._dirty: set[str] = set()

    def choose(self, agent_id: str, placement: Placement, *, exclude: str | None) -> str:
        request = PlacementRequest(
            agent_id=agent_id,
            resources=placement.resources,
            capabilities=placement.requires,
            zone=placement.zone,
            region=placement.region,
            leader=self._leader,
            key=placement.key,
        )
        if exclude is not None and exclude in self._views:
            others = make_placement(placement.strategy, rng=self._rng)
            others.update(v for v in self._views.values() if v.id != exclude)
            try:
                return others.choose(request)
            except NoAvailableNode:
                pass
        return self._strategy(placement.strategy).choose(request)

    def reserve(self, node: str, resources: Mapping[str, float]) -> None:
        view = self._views[node]
        reserved = dict(view.reserved)
        for resource, amount in resources.items():
            reserved[resource] = reserved.get(resource, 0.0) + amount
        self._views[node] = replace(view, reserved=reserved, agent_count=view.agent_count + 1)
        self._dirty.update(self._strategies)

    def _strategy(self, name: str) -> PlacementStrategy:
        strategy = self._strategies.get(name)
        if strategy is None:
            strategy = self._strategies[name] = make_placement(name, rng=self._rng)
            strategy.update(self._views.values())
        elif name in self._dirty:
            strategy.update(self._views.values())
        self._dirty.discard(name)
        return strategy
