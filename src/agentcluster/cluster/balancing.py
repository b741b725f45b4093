"""Which holder answers a ``Capability(name, "one")`` request, with breakers and shedding.

``RequestBalancer`` is one process's request balancing. Per capability it keeps a
``core.request_balance`` strategy over a snapshot of the holders (``HolderView``s built from
the registry, the membership records, the phi detector, the two breaker boards and the
observed request figures) and asks it for each request. A snapshot is rebuilt when the
holders change (the registry hands out a new tuple), when a breaker changes state, and at
most every ``refresh`` seconds otherwise (so node loads and suspicion stay current); between
snapshots ``started`` / ``finished`` patch the strategy's in-flight counts.

Three guards, each a decision of ``core``:

- **Circuit breakers**, one board per node and one per agent (``core.circuit_breaker``):
  every request's outcome is recorded on both; an open breaker excludes the node's (or the
  agent's) holders until its cool-down passes and a half-open trial succeeds. When every
  holder is excluded by breakers the request fails at once with
  ``NoAvailableNode(reason="all_breakers_open")``.
- **Quarantine** excludes: a holder whose node is quarantined or on probation (the
  ``quarantined`` predicate, set by whoever follows the quarantine keys) is never chosen;
  when every holder's node is, the request fails with
  ``NoAvailableNode(reason="all_quarantined")``.
- **Suspicion** steers, as before: holders on nodes this node suspects (phi) are passed
  over while another holder is heard; if every holder is suspected, suspicion is ignored.
- **Load shedding**: a holder with ``max_in_flight`` requests in flight from this process,
  or on a node reporting a mailbox load of ``shed_load`` or more, is saturated. When every
  holder is saturated the caller gets ``Overloaded`` at once instead of a growing queue.

A request with a ``key`` (``Capability(name, key=...)``, a sticky session) goes through
the ``sticky`` strategy whatever the configured one: the same key reaches the same holder
while it is available, and only the keys of a holder that went away move.

Every decision is remembered in a bounded history, breaker transitions and shed requests
are emitted as telemetry, and the load balancer system agent reads all of it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentcluster.clock import Clock
from agentcluster.core.circuit_breaker import (
    BreakerBoard,
    BreakerConfig,
    BreakerState,
    admit_trial,
)
from agentcluster.core.membership import NodeRecord
from agentcluster.core.node_view import HolderView, NodeView, RequestContext
from agentcluster.core.registry import AgentEntry
from agentcluster.core.request_balance import (
    REQUEST_STRATEGIES,
    RequestStats,
    RequestStrategy,
    make_request_strategy,
    steer,
    tightened,
)
from agentcluster.errors import ConfigurationError, NoAvailableNode, Overloaded
from agentcluster.telemetry import Telemetry

__all__ = [
    "BREAKER_CHANGED",
    "REQUEST_SHED",
    "BalancerConfig",
    "Decision",
    "RequestBalancer",
]

BREAKER_CHANGED = ("agentcluster", "balancer", "breaker")
"""Emitted with the new state appended: ``(..., "breaker", "open")``; metadata ``key``,
``kind`` (node / agent), ``old``, ``reason``."""
REQUEST_SHED = ("agentcluster", "balancer", "shed")
"""A request refused because every holder was saturated; metadata ``capability``."""


@dataclass(frozen=True, slots=True)
class BalancerConfig:
    """How requests to capabilities are balanced in one process.

    ``strategy``: a name of ``core.request_balance.REQUEST_STRATEGIES``;
    ``strategy_options``: its options; ``max_in_flight``: requests in flight from this
    process to one holder before it counts as saturated (None: unlimited); ``shed_load``:
    a node reporting this mailbox load (0..1) or more is saturated; ``breaker``: the
    config of every node and agent breaker; ``refresh``: the longest a snapshot is used;
    ``history``: decisions remembered; ``surge_factor``: how much a traffic surge
    tightens ``max_in_flight`` and ``shed_load``; ``surge_strategy``: the strategy to switch
    to on a surge (None: never switch).
    """

    strategy: str = "round_robin"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    max_in_flight: int | None = 1024
    shed_load: float = 0.95
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    refresh: float = 0.1
    history: int = 1000
    surge_factor: float = 0.5
    surge_strategy: str | None = None

    def __post_init__(self) -> None:
        for name in (self.strategy, self.surge_strategy):
            if name is not None and name not in REQUEST_STRATEGIES:
                raise ConfigurationError(
                    f"unknown request strategy {name!r}; known: {', '.join(REQUEST_STRATEGIES)}"
                )
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be >= 1, got {self.max_in_flight!r}")
        if not 0 < self.shed_load <= 1:
            raise ConfigurationError(f"shed_load must be within (0, 1], got {self.shed_load!r}")
        if not 0 < self.surge_factor <= 1:
            raise ConfigurationError(
                f"surge_factor must be within (0, 1], got {self.surge_factor!r}"
            )
        if self.refresh <= 0 or self.history < 1:
            raise ConfigurationError("refresh must be > 0 and history >= 1")


@dataclass(frozen=True, slots=True)
class Decision:
    """One balancing decision, as the history keeps it."""

    at: float
    """Wall-clock time (seconds since the epoch)."""
    capability: str
    strategy: str
    agent_id: str | None
    node: str | None
    outcome: str
    """``routed``, or the reason it was refused (``all_saturated``, …)."""


class _Lane:
    """One capability's strategy and the snapshot it was built from.

    ``trials`` maps the holders whose own or node breaker is half-open to that node, so
    only their picks ask the boards for a trial slot; ``blocked`` holds the ones refused a
    slot, excluded until the next snapshot."""

    __slots__ = ("blocked", "built_at", "epoch", "holders", "strategy", "trials")

    def __init__(self, strategy: RequestStrategy) -> None:
        self.strategy = strategy
        self.holders: tuple[str, ...] | None = None
        self.epoch = -1
        self.built_at = float("-inf")
        self.trials: dict[str, str] = {}
        self.blocked: set[str] = set()


class RequestBalancer:
    """Request balancing for one process (module docstring)."""

    def __init__(
        self,
        lookup: Callable[[str], AgentEntry | None],
        members: Callable[[], Mapping[str, NodeRecord]],
        suspected: Callable[[str], bool] | None,
        clock: Clock,
        telemetry: Telemetry,
        *,
        config: BalancerConfig | None = None,
        seed: str = "balancer",
        zone: str | None = None,
        region: str | None = None,
    ) -> None:
        self.config = config or BalancerConfig()
        self._lookup = lookup
        self._members = members
        self._suspected = suspected
        self._clock = clock.monotonic
        self._wall = clock.wall
        self._telemetry = telemetry
        self._rng = random.Random(seed)
        self._zone = zone
        self._region = region
        self._context = RequestContext(zone=zone, region=region)
        self.node_breakers = BreakerBoard(self.config.breaker)
        self.agent_breakers = BreakerBoard(self.config.breaker)
        self.stats = RequestStats()
        self._lanes: dict[tuple[str, bool], _Lane] = {}
        self._epoch = 0
        self._history: deque[Decision] = deque(maxlen=self.config.history)
        self.shed = 0
        self.refused = 0
        self.routed = 0
        self.strategy = self.config.strategy
        self.max_in_flight = self.config.max_in_flight
        self.shed_load = self.config.shed_load
        self.surges = 0
        self.quarantined: Callable[[str], bool] | None = None
        """Whether a node is quarantined; a snapshot reads it when it is rebuilt (at most
        ``refresh`` seconds old), so a quarantine takes effect within that."""

    # --- decisions ------------------------------------------------------------------

    def pick(self, capability: str, holders: tuple[str, ...], key: str | None = None) -> str:
        """The holder for one request; raises ``Overloaded`` (every holder saturated) or
        ``NoAvailableNode`` (every holder excluded, ``reason`` says why)."""
        now = self._clock()
        self._drain_transitions(now)
        lane = self._lane(capability, key is not None)
        if (
            lane.holders is not holders
            or lane.epoch != self._epoch
            or now - lane.built_at >= self.config.refresh
        ):
            lane.blocked.clear()
            self._rebuild(lane, holders, now)
        context = (
            self._context
            if key is None
            else RequestContext(key=key, zone=self._zone, region=self._region)
        )
        while True:
            try:
                agent_id = lane.strategy.choose(context)
            except NoAvailableNode as error:
                self._refuse(capability, lane, error.reason)
                if error.reason == "all_saturated":
                    raise Overloaded(
                        f"every holder of {capability!r} is saturated; shedding the request"
                    ) from None
                raise NoAvailableNode(
                    f"no holder of {capability!r} can take the request: {error}",
                    reason=error.reason,
                ) from None
            if not lane.trials or self._admitted(lane, agent_id, now):
                break
            # A half-open breaker has its trials out: pass this holder over for now.
            lane.blocked.add(agent_id)
            self._rebuild(lane, holders, now)
        self.routed += 1
        if len(self._history) == self._history.maxlen and self.routed % 16:
            return agent_id  # a full history keeps a sample of routine decisions
        entry = self._lookup(agent_id)
        self._history.append(
            Decision(
                self._wall(),
                capability,
                lane.strategy.name,
                agent_id,
                None if entry is None else entry.node,
                "routed",
            )
        )
        return agent_id

    def started(self, capability: str, agent_id: str, sticky: bool = False) -> None:
        lane = self._lanes.get((capability, sticky))
        if lane is not None:
            lane.strategy.started(agent_id)
        self.stats.started(agent_id)

    def finished(
        self,
        capability: str,
        agent_id: str,
        node: str | None,
        latency: float | None,
        ok: bool | None,
        sticky: bool = False,
    ) -> None:
        """A request ended: ``ok`` None means no outcome (cancelled, or refused as the
        caller's own mistake), which frees a half-open trial without judging it."""
        now = self._clock()
        lane = self._lanes.get((capability, sticky))
        if lane is not None:
            lane.strategy.finished(agent_id, latency, ok is not False)
        self.stats.finished(agent_id, latency, ok is not False)
        if ok is None:
            self.agent_breakers.release(agent_id, now)
            if node is not None:
                self.node_breakers.release(node, now)
        else:
            self.agent_breakers.record(agent_id, now, ok, latency)
            if node is not None:
                self.node_breakers.record(node, now, ok, latency)
        self._drain_transitions(now)

    # --- snapshots ------------------------------------------------------------------

    def _lane(self, capability: str, sticky: bool) -> _Lane:
        lane = self._lanes.get((capability, sticky))
        if lane is None:
            name = "sticky" if sticky else self.strategy
            options = {} if sticky else dict(self.config.strategy_options)
            strategy = make_request_strategy(
                name, rng=self._rng, max_in_flight=self.max_in_flight, **options
            )
            lane = self._lanes[(capability, sticky)] = _Lane(strategy)
        return lane

    def _rebuild(self, lane: _Lane, holders: tuple[str, ...], now: float) -> None:
        """A fresh snapshot of ``holders`` for ``lane``'s strategy (what this process
        knows of each: record, breakers, observed figures), shaped by ``core``'s
        ``steer`` (suspicion, shedding by node load)."""
        members = self._members()
        quarantined = self.quarantined
        nodes: dict[str, NodeView] = {}
        views: list[HolderView] = []
        trials: dict[str, str] = {}
        for agent_id in holders:
            entry = self._lookup(agent_id)
            if entry is None:
                continue
            node_id = entry.node
            view = nodes.get(node_id)
            if view is None:
                record = members.get(node_id)
                view = nodes[node_id] = NodeView(
                    id=node_id,
                    labels={} if record is None else record.labels,
                    capacity={} if record is None else record.capacity,
                    agent_count=0 if record is None else record.agent_count,
                    load=0.0 if record is None else record.load,
                    quarantined=quarantined is not None and quarantined(node_id),
                    breaker=self.node_breakers.state(node_id, now),
                )
            own = self.agent_breakers.state(agent_id, now)
            if agent_id in lane.blocked:
                own = BreakerState.OPEN
            elif own is BreakerState.HALF_OPEN or view.breaker is BreakerState.HALF_OPEN:
                trials[agent_id] = node_id
            views.append(self.stats.view(agent_id, view, breaker=own))
        suspected = self._suspected
        suspects = set() if suspected is None else {n for n in nodes if suspected(n)}
        lane.strategy.update(
            steer(views, suspects, shed_load=self.shed_load, max_in_flight=self.max_in_flight)
        )
        lane.trials = trials
        lane.holders = holders
        lane.epoch = self._epoch
        lane.built_at = now

    def _admitted(self, lane: _Lane, agent_id: str, now: float) -> bool:
        """Whether a half-open breaker on ``agent_id`` or its node lets this request be a
        trial (``core``'s ``admit_trial``); a holder with no tripped breaker always is."""
        node_id = lane.trials.get(agent_id)
        if node_id is None:
            return True
        return admit_trial(self.node_breakers, self.agent_breakers, node_id, agent_id, now)

    def _drain_transitions(self, now: float) -> None:
        for kind, board in (("node", self.node_breakers), ("agent", self.agent_breakers)):
            for change in board.drain_transitions():
                self._epoch += 1
                self._telemetry.emit(
                    (*BREAKER_CHANGED, change.new.value),
                    {"count": 1},
                    {
                        "key": change.key,
                        "kind": kind,
                        "old": change.old.value,
                        "reason": change.reason.value,
                    },
                )

    def _refuse(self, capability: str, lane: _Lane, reason: str) -> None:
        self.refused += 1
        if reason == "all_saturated":
            self.shed += 1
            self._telemetry.emit(
                REQUEST_SHED, {"count": 1}, {"capability": capability, "strategy": self.strategy}
            )
        self._history.append(
            Decision(self._wall(), capability, lane.strategy.name, None, None, reason)
        )

    # --- the load balancer agent's levers -------------------------------------------

    def set_strategy(self, name: str) -> None:
        """Balance every capability with ``name`` from the next request on."""
        if name not in REQUEST_STRATEGIES:
            raise ConfigurationError(
                f"unknown request strategy {name!r}; known: {', '.join(REQUEST_STRATEGIES)}"
            )
        self.strategy = name
        self._lanes = {k: v for k, v in self._lanes.items() if k[1]}

    def tighten(self, factor: float | None = None) -> dict[str, Any]:
        """A traffic surge: lower ``max_in_flight`` and ``shed_load`` by ``factor`` (the
        config's ``surge_factor``), so load is shed earlier; switch strategy only when the
        config names a ``surge_strategy``. Returns the new thresholds."""
        self.max_in_flight, self.shed_load = tightened(
            self.max_in_flight,
            self.shed_load,
            self.config.surge_factor if factor is None else factor,
        )
        self.surges += 1
        if self.config.surge_strategy is not None:
            self.strategy = self.config.surge_strategy
        self._lanes.clear()
        return self.thresholds()

    def relax(self) -> dict[str, Any]:
        """Back to the configured thresholds and strategy."""
        self.max_in_flight = self.config.max_in_flight
        self.shed_load = self.config.shed_load
        self.strategy = self.config.strategy
        self._lanes.clear()
        return self.thresholds()

    def thresholds(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "max_in_flight": self.max_in_flight,
            "shed_load": self.shed_load,
            "breaker_failure_threshold": self.config.breaker.failure_threshold,
            "breaker_error_rate_threshold": self.config.breaker.error_rate_threshold,
            "surges": self.surges,
        }

    # --- what the load balancer agent shows -----------------------------------------

    def routing_table(self) -> dict[str, Any]:
        """Per capability balanced so far: the strategy, the holders available and each
        holder's in-flight count and observed figures."""
        table: dict[str, Any] = {}
        for (capability, sticky), lane in sorted(self._lanes.items()):
            strategy = lane.strategy
            holders = {}
            for agent_id in strategy.available:
                stats = self.stats.get(agent_id)
                entry = self._lookup(agent_id)
                holders[agent_id] = {
                    "node": None if entry is None else entry.node,
                    "in_flight": strategy.in_flight(agent_id),
                    "latency_ewma_s": stats.latency_ewma,
                    "error_rate_ewma": stats.error_rate_ewma,
                    "samples": stats.samples,
                }
            table[capability + (" (sticky)" if sticky else "")] = {
                "strategy": strategy.name,
                "holders": holders,
                "excluded": sorted(set(lane.holders or ()) - set(strategy.available)),
            }
        return table

    def breakers(self) -> dict[str, dict[str, str]]:
        now = self._clock()
        return {
            "nodes": {k: s.value for k, s in self.node_breakers.states(now).items()},
            "agents": {k: s.value for k, s in self.agent_breakers.states(now).items()},
        }

    def history(self, limit: int | None = None) -> list[Decision]:
        """The latest decisions, oldest first (a full history keeps every refusal and a
        sample of routine routings)."""
        decisions = list(self._history)
        return decisions if limit is None else decisions[-limit:]

    def node_state(self, node_id: str) -> BreakerState:
        return self.node_breakers.state(node_id, self._clock())
