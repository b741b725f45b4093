"""Placement strategies: which node an agent starts on.

Theory of operation. A strategy is fed the whole snapshot with ``update(views)`` whenever
an input changes (membership, a node's vitals, a reservation, quarantine, a breaker) and
answers ``choose(request)`` with a node id, or raises ``NoAvailableNode``. ``update`` does
the work that depends only on the snapshot; ``choose`` does the rest, and is meant to be
called far more often.

Exclusion is the same for every strategy and names the reason, filter by filter: no node
at all (``no_nodes``); every node quarantined or unhealthy (``all_quarantined``); every
remaining breaker open (``all_breakers_open``); none of the rest declares the requested
capabilities (``no_capability``); none of those has the requested resources free
(``no_capacity``). The first three filters depend only on the snapshot and run in
``update``, which also sorts the available nodes in the order the strategy prefers them.
The last two depend on the request's *shape* (capabilities and resources); their result,
still in preference order, is memoised per shape until the next ``update``, since a
cluster places a handful of agent kinds over and over. A strategy then picks from that
ordered tuple, usually its head, so a decision costs a few dictionary look-ups.

``update`` sorts nodes by id first, so a decision depends on the snapshot and the
``random.Random`` only, never on the order the caller listed the nodes in.

The strategies (``PLACEMENT_STRATEGIES``):

- ``round_robin``: the eligible nodes in turn.
- ``least_loaded``: lowest ``load``, then fewest agents (then id).
- ``random``: uniform over the eligible nodes.
- ``power_of_two_choices``: two distinct nodes at random, the less loaded of the two.
- ``capability_matched``: the node whose capabilities match the request most tightly
  (fewest capabilities it was not asked for), so scarce capabilities stay free for the
  agents that need them; then least loaded.
- ``capacity_aware``: highest weighted free-capacity score, ``sum(w_r * free_r /
  capacity_r)`` with weights cpu 0.4, memory_mb 0.3, network_mbps 0.3 by default (a
  resource the node does not declare scores 0); then least loaded.
- ``zone``: the least loaded node in the request's zone, else in its region, else any.
- ``local_preferred``: ``request.local`` when it is eligible, else least loaded.
- ``leader_only``: ``request.leader``; ``no_leader`` when there is none or it is excluded.
- ``sticky``: consistent hashing of ``request.sticky_key`` (see ``HashRing``), over the
  eligible nodes.
"""

from __future__ import annotations

import math
import os
import random
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from hashlib import blake2b
from typing import Any, ClassVar

from agentcluster.core.circuit_breaker import BreakerState
from agentcluster.core.node_view import FIT_SLACK, NodeView, PlacementRequest
from agentcluster.errors import ConfigurationError, NoAvailableNode

__all__ = [
    "DEFAULT_CAPACITY_WEIGHTS",
    "PLACEMENT_STRATEGIES",
    "HashRing",
    "PlacementRequest",
    "PlacementStrategy",
    "make_placement",
    "stable_hash",
]

DEFAULT_CAPACITY_WEIGHTS: Mapping[str, float] = {"cpu": 0.4, "memory_mb": 0.3, "network_mbps": 0.3}
"""``capacity_aware``'s weights per resource, as the seed's capacity-aware routing."""

_MEMO_LIMIT = 256
"""Shapes remembered between updates; past it the memo starts over (a burst of odd shapes
must not grow memory)."""


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that every process and run agrees on (blake2b), unlike
    ``hash()`` of a ``str``, which is salted per process."""
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "big")


_SLOT_BITS = 24
_SLOT_MASK = (1 << _SLOT_BITS) - 1


class HashRing:
    """Consistent hashing on a 64-bit circle with ``replicas`` points per member.

    A key belongs to the first point at or after its hash, walking on past members the
    caller does not ``accept``; skipping members is the same as hashing onto the ring of
    the accepted members alone. When a member joins it takes only the keys that land just
    before its own points, about 1/N of them, and no key moves between two members that
    stay. Rendezvous hashing has the same property but costs one hash per member and
    decision; the ring costs one hash and a binary search, and ``replicas`` (100 by
    default) keeps the spread of the members' shares near 10 % of 1/N.

    Each point is stored as ``hash << 24 | slot`` in one sorted list of ints, the slot
    naming the member, so a look-up is a single ``bisect`` and membership changes merge
    sorted runs. A member's points are computed once, when it first joins.
    """

    __slots__ = (
        "_free_slots",
        "_hashed",
        "_members",
        "_owners",
        "_points",
        "_replicas",
        "_slot_of",
    )

    _HASHED_LIMIT = 8192
    """Keys whose hash is remembered (sessions repeat); past it the memory starts over."""

    def __init__(self, replicas: int = 100) -> None:
        if replicas < 1:
            raise ConfigurationError(f"replicas must be >= 1, not {replicas!r}")
        self._replicas = replicas
        self._points: list[int] = []
        self._owners: list[str] = []
        self._slot_of: dict[str, int] = {}
        self._free_slots: list[int] = []
        self._members: frozenset[str] = frozenset()
        self._hashed: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._members)

    @property
    def members(self) -> frozenset[str]:
        return self._members

    def set_members(self, members: Iterable[str]) -> bool:
        """Make the ring hold exactly ``members``; returns whether anything changed."""
        wanted = frozenset(members)
        if wanted == self._members:
            return False
        gone = self._members - wanted
        joined = sorted(wanted - self._members)
        if gone:
            gone_slots = {self._slot_of.pop(member) for member in gone}
            self._free_slots.extend(sorted(gone_slots, reverse=True))
            self._points = [p for p in self._points if p & _SLOT_MASK not in gone_slots]
        if joined:
            fresh: list[int] = []
            for member in joined:
                slot = self._free_slots.pop() if self._free_slots else len(self._owners)
                if slot == len(self._owners):
                    if slot > _SLOT_MASK:
                        raise ConfigurationError(f"a ring holds at most {_SLOT_MASK + 1} members")
                    self._owners.append(member)
                else:
                    self._owners[slot] = member
                self._slot_of[member] = slot
                fresh.extend(
                    (stable_hash(f"{member}#{i}") << _SLOT_BITS) | slot
                    for i in range(self._replicas)
                )
            fresh.sort()
            self._points.extend(fresh)
            self._points.sort()
        self._members = wanted
        return True

    def restricted(self, members: Iterable[str]) -> HashRing:
        """A ring of only ``members`` (a subset), sharing this ring's points: it answers
        exactly as this one does when the others are not accepted, without the walk."""
        keep = {self._slot_of[m] for m in members if m in self._slot_of}
        ring = HashRing(self._replicas)
        ring._owners = list(self._owners)
        ring._slot_of = {self._owners[slot]: slot for slot in keep}
        ring._members = frozenset(ring._slot_of)
        ring._points = [p for p in self._points if p & _SLOT_MASK in keep]
        return ring

    def lookup(
        self,
        key: str,
        accept: Callable[[str], bool] | None = None,
        *,
        max_steps: int | None = None,
    ) -> str | None:
        """The member ``key`` belongs to among those ``accept`` allows; ``None`` when none
        is accepted, or none within ``max_steps`` points of the walk."""
        points = self._points
        count = len(points)
        if not count:
            return None
        hashed = self._hashed.get(key)
        if hashed is None:
            if len(self._hashed) >= self._HASHED_LIMIT:
                self._hashed.clear()
            hashed = self._hashed[key] = stable_hash(key) << _SLOT_BITS
        start = bisect_left(points, hashed)
        owners = self._owners
        if accept is None:
            return owners[points[start % count] & _SLOT_MASK]
        steps = count if max_steps is None else min(count, max_steps)
        for step in range(steps):
            member = owners[points[(start + step) % count] & _SLOT_MASK]
            if accept(member):
                return member
        return None


class _Shape:
    """The eligible nodes for one request shape, in the strategy's preference order."""

    __slots__ = ("_ids", "key", "nodes", "reason")

    def __init__(self, key: object, nodes: tuple[NodeView, ...], reason: str) -> None:
        self.key = key
        self.nodes = nodes
        self.reason = reason
        self._ids: frozenset[str] | None = None

    @property
    def ids(self) -> frozenset[str]:
        if self._ids is None:
            self._ids = frozenset(node.id for node in self.nodes)
        return self._ids


def _resource_key(resources: Mapping[str, float]) -> frozenset[tuple[str, float]]:
    return frozenset(resources.items())


def _fitting(nodes: Iterable[NodeView], resources: Mapping[str, float]) -> list[NodeView]:
    """``[n for n in nodes if n.fits(resources)]``, inlined: it runs over every node."""
    needs = [(resource, amount - FIT_SLACK) for resource, amount in resources.items() if amount > 0]
    if not needs:
        return list(nodes)
    fitting = []
    for node in nodes:
        capacity, reserved = node.capacity, node.reserved
        for resource, need in needs:
            if capacity.get(resource, 0.0) - reserved.get(resource, 0.0) < need:
                break
        else:
            fitting.append(node)
    return fitting


def _load_key(node: NodeView) -> tuple[float, int, str]:
    return (node.load, node.agent_count, node.id)


def _node_id(node: NodeView) -> str:
    return node.id


_REASON_TEXT = {
    "no_nodes": "no node is alive",
    "all_quarantined": "every node is quarantined or unhealthy",
    "all_breakers_open": "every available node's breaker is open",
    "no_capability": "no available node declares the capabilities",
    "no_capacity": "no capable node has the resources free",
}


class PlacementStrategy(ABC):
    """One placement strategy: ``update`` with each new snapshot, then ``choose``.

    Not thread-safe; one instance per caller (a node's placement shell). Built by
    ``make_placement``.
    """

    name: ClassVar[str]
    options: ClassVar[frozenset[str]] = frozenset()

    __slots__ = ("_base_reason", "_by_id", "_count", "_everything", "_memo", "_ordered", "_rng")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._count = 0
        self._ordered: tuple[NodeView, ...] = ()
        self._by_id: dict[str, NodeView] = {}
        self._base_reason = "no_nodes"
        self._everything = _Shape(None, (), "no_nodes")
        self._memo: dict[object, _Shape] = {}

    def update(self, views: Iterable[NodeView]) -> None:
        """Take a new snapshot of the alive nodes (all of them, excluded ones included:
        they decide the reason when nothing is eligible)."""
        nodes = sorted(views, key=_node_id)
        self._count = len(nodes)
        healthy = [node for node in nodes if not node.excluded_by_health]
        available = [node for node in healthy if node.breaker is not BreakerState.OPEN]
        if not nodes:
            self._base_reason = "no_nodes"
        elif not healthy:
            self._base_reason = "all_quarantined"
        elif not available:
            self._base_reason = "all_breakers_open"
        else:
            self._base_reason = ""
        self._ordered = tuple(self._order(available))
        self._by_id = {node.id: node for node in available}
        self._everything = _Shape(None, self._ordered, self._base_reason)
        self._memo = {}
        self._refreshed(nodes)

    def choose(self, request: PlacementRequest) -> str:
        """The node ``request`` should start on; raises ``NoAvailableNode``."""
        return self._pick(self._eligible(request), request).id

    @property
    def eligible_count(self) -> int:
        """Nodes that pass the snapshot's own exclusions (quarantine, health, breakers)."""
        return len(self._ordered)

    def _order(self, available: list[NodeView]) -> list[NodeView]:
        """The available nodes in preference order (already sorted by id)."""
        return available

    def _refreshed(self, nodes: list[NodeView]) -> None:
        """Called at the end of ``update`` with every node, sorted by id."""
        return  # a hook: strategies that need it override it

    @abstractmethod
    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:
        """One of ``shape.nodes`` (never empty)."""

    def _eligible(self, request: PlacementRequest) -> _Shape:
        capabilities = request.capabilities
        resources = request.resources
        if not capabilities and not resources:
            shape = self._everything
        else:
            key = (capabilities, _resource_key(resources))
            found = self._memo.get(key)
            shape = found if found is not None else self._filter(key, capabilities, resources)
        if not shape.nodes:
            raise self._unavailable(shape.reason, request)
        return shape

    def _filter(
        self,
        key: tuple[frozenset[str], frozenset[tuple[str, float]]],
        capabilities: frozenset[str],
        resources: Mapping[str, float],
    ) -> _Shape:
        nodes: tuple[NodeView, ...] = ()
        reason = self._base_reason
        if self._ordered:
            capable = (
                [node for node in self._ordered if capabilities <= node.capabilities]
                if capabilities
                else self._ordered
            )
            nodes = tuple(_fitting(capable, resources))
            reason = "no_capability" if not capable else "no_capacity"
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        shape = _Shape(key, nodes, reason)
        self._memo[key] = shape
        return shape

    def _unavailable(self, reason: str, request: PlacementRequest) -> NoAvailableNode:
        return NoAvailableNode(
            f"no node can take {request.agent_id!r} ({self.name}): {_REASON_TEXT[reason]}",
            reason=reason,
            agent_id=request.agent_id,
        )


class _RoundRobin(PlacementStrategy):
    name = "round_robin"
    __slots__ = ("_turn",)

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._turn = 0

    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:
        nodes = shape.nodes
        turn = self._turn
        self._turn = turn + 1
        return nodes[turn % len(nodes)]


class _LeastLoaded(PlacementStrategy):
    name = "least_loaded"
    __slots__ = ()

    def _order(self, available: list[NodeView]) -> list[NodeView]:
        return sorted(available, key=_load_key)

    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:
        return shape.nodes[0]


class _Random(PlacementStrategy):
    name = "random"
    __slots__ = ()

    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:
        nodes = shape.nodes
        return nodes[int(self._rng.random() * len(nodes))]


class _PowerOfTwoChoices(PlacementStrategy):
    name = "power_of_two_choices"
    __slots__ = ()

    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:
        nodes = shape.nodes
        count = len(nodes)
        if count == 1:
            return nodes[0]
        draw = self._rng.random
        i = int(draw() * count)
        j = int(draw() * (count - 1))
        if j >= i:
            j += 1
        a, b = nodes[i], nodes[j]
        if (b.load, b.agent_count) < (a.load, a.agent_count):
            return b
        return a


class _CapabilityMatched(PlacementStrategy):
    name = "capability_matched"
    __slots__ = ()

    def _order(self, available: list[NodeView]) -> list[NodeView]:
        # Every eligible node holds the requested capabilities, so the fewest extra ones
        # is the fewest in all: one order serves every request.
        return sorted(available, key=lambda n: (len(n.capabilities), *_load_key(n)))

    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:
        return shape.nodes[0]


class _CapacityAware(PlacementStrategy):
    name = "capacity_aware"
    options = frozenset({"weights"})
    __slots__ = ("_weights",)

    def __init__(self, rng: random.Random, *, weights: Mapping[str, float] | None = None) -> None:
        super().__init__(rng)
        chosen = dict(DEFAULT_CAPACITY_WEIGHTS if weights is None else weights)
        for resource, weight in chosen.items():
            if not math.isfinite(weight) or weight < 0:
                raise ConfigurationError(
                    f"capacity weight for {resource!r} must be finite and >= 0, not {weight!r}"
                )
        self._weights = tuple(chosen.items())

    def score(self, node: NodeView) -> float:
        """The weighted share of each resource still free on ``node``."""
        capacity, reserved = node.capacity, node.reserved
        total = 0.0
        for resource, weight in self._weights:
            declared = capacity.get(resource, 0.0)
            if declared > 0:
                share = (declared - reserved.get(resource, 0.0)) / declared
                total += weight * (0.0 if share < 0 else 1.0 if share > 1 else share)
        return total

    def _order(self, available: list[NodeView]) -> list[NodeView]:
        return sorted(available, key=lambda n: (-self.score(n), *_load_key(n)))

    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:
        return shape.nodes[0]


class _Zone(PlacementStrategy):
    name = "zone"
    __slots__ = ("_located",)

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._located: dict[tuple[object, str | None, str | None], NodeView] = {}

    def _refreshed(self, nodes: list[NodeView]) -> None:
        self._located = {}

    def _order(self, available: list[NodeView]) -> list[NodeView]:
        return sorted(available, key=_load_key)

    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:
        where = (shape.key, request.zone, request.region)
        found = self._located.get(where)
        if found is None:
            found = _nearest(shape.nodes, request.zone, request.region)
            if len(self._located) >= _MEMO_LIMIT:
                self._located.clear()
            self._located[where] = found
        return found


def _nearest(nodes: tuple[NodeView, ...], zone: str | None, region: str | None) -> NodeView:
    """The first of ``nodes`` in ``zone``, else the first in ``region``, else the first."""
    if zone is not None:
        for node in nodes:
            if node.zone == zone:
                return node
    if region is not None:
        for node in nodes:
            if node.region == region:
                return node
    return nodes[0]


class _LocalPreferred(PlacementStrategy):
    name = "local_preferred"
    __slots__ = ()

    def _order(self, available: list[NodeView]) -> list[NodeView]:
        return sorted(available, key=_load_key)

    def choose(self, request: PlacementRequest) -> str:
        local = request.local
        if local is not None:
            node = self._by_id.get(local)
            if (
                node is not None
                and request.capabilities <= node.capabilities
                and node.fits(request.resources)
            ):
                return local
        return super().choose(request)

    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:
        return shape.nodes[0]


class _LeaderOnly(PlacementStrategy):
    name = "leader_only"
    __slots__ = ("_known",)

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._known: dict[str, NodeView] = {}

    def _refreshed(self, nodes: list[NodeView]) -> None:
        self._known = {node.id: node for node in nodes}

    def choose(self, request: PlacementRequest) -> str:
        if not self._count:
            raise self._unavailable("no_nodes", request)
        leader = request.leader
        if leader is None:
            why = "there is no leader"
        elif leader not in self._known:
            why = f"the leader {leader!r} is not an alive node"
        elif leader not in self._by_id:
            node = self._known[leader]
            why = f"the leader {leader!r} is " + (
                "quarantined or unhealthy" if node.excluded_by_health else "behind an open breaker"
            )
        else:
            node = self._by_id[leader]
            if not request.capabilities <= node.capabilities:
                why = f"the leader {leader!r} lacks the capabilities"
            elif not node.fits(request.resources):
                why = f"the leader {leader!r} has not the resources free"
            else:
                return leader
        raise NoAvailableNode(
            f"no node can take {request.agent_id!r} (leader_only): {why}",
            reason="no_leader",
            agent_id=request.agent_id,
            node_id=leader,
        )

    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:  # pragma: no cover
        raise AssertionError("leader_only decides in choose")


class _Sticky(PlacementStrategy):
    name = "sticky"
    options = frozenset({"replicas"})
    __slots__ = ("_narrow", "_ring")

    _WALK = 64
    """Ring points walked past ineligible nodes before switching to a ring of the eligible
    nodes alone (built once per shape and snapshot); either gives the same answer."""

    def __init__(self, rng: random.Random, *, replicas: int = 100) -> None:
        super().__init__(rng)
        self._ring = HashRing(replicas)
        self._narrow: dict[object, HashRing] = {}

    def _refreshed(self, nodes: list[NodeView]) -> None:
        self._ring.set_members(node.id for node in nodes)
        self._narrow = {}

    def _pick(self, shape: _Shape, request: PlacementRequest) -> NodeView:
        key = request.sticky_key
        if len(shape.nodes) == self._count:
            found = self._ring.lookup(key)
        else:
            ring = self._narrow.get(shape.key)
            if ring is None:
                found = self._ring.lookup(key, shape.ids.__contains__, max_steps=self._WALK)
                if found is None:
                    ring = self._ring.restricted(shape.ids)
                    if len(self._narrow) >= _MEMO_LIMIT:
                        self._narrow.clear()
                    self._narrow[shape.key] = ring
            if ring is not None:
                found = ring.lookup(key)
        assert found is not None  # the eligible nodes are ring members
        return self._by_id[found]


_PLACEMENTS: dict[str, type[PlacementStrategy]] = {
    cls.name: cls
    for cls in (
        _RoundRobin,
        _LeastLoaded,
        _Random,
        _PowerOfTwoChoices,
        _CapabilityMatched,
        _CapacityAware,
        _Zone,
        _LocalPreferred,
        _LeaderOnly,
        _Sticky,
    )
}

PLACEMENT_STRATEGIES: tuple[str, ...] = tuple(_PLACEMENTS)
"""The names ``make_placement`` accepts."""


def make_placement(
    name: str, *, rng: random.Random | None = None, **options: Any
) -> PlacementStrategy:
    """A fresh placement strategy by name.

    ``rng`` drives ``random`` and ``power_of_two_choices``; pass a seeded one for
    reproducible runs (without it, one seeded from the OS, so nodes do not draw alike).
    Options: ``capacity_aware`` takes ``weights`` (resource → weight), ``sticky`` takes
    ``replicas`` (points per node on the ring). Unknown names or options raise
    ``ConfigurationError``.
    """
    cls = _PLACEMENTS.get(name)
    if cls is None:
        raise ConfigurationError(
            f"unknown placement strategy {name!r}; one of {', '.join(PLACEMENT_STRATEGIES)}"
        )
    unknown = set(options) - cls.options
    if unknown:
        raise ConfigurationError(
            f"placement strategy {name!r} takes no option {', '.join(sorted(unknown))}"
        )
    return cls(rng if rng is not None else random.Random(os.urandom(32)), **options)
