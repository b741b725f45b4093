"""Request strategies: which holder of a capability answers a request.

Theory of operation. One strategy object serves one set of holders (one capability, as a
caller sees it). ``update(holders)`` takes a snapshot of ``HolderView``s whenever the set
or what is known about a holder changes; ``choose(ctx)`` names the holder for the next
request, or raises ``NoAvailableNode``. Between snapshots the caller reports each request
with ``started(agent_id)`` when it is sent and ``finished(agent_id, latency_s, ok)`` when
it ends; every strategy keeps its own in-flight counts (and, where it uses them, latency
and error EWMAs) from these calls, patching its precomputed order instead of rebuilding
it, so a request costs no snapshot. ``choose`` itself records nothing: a caller that
chooses and then does not send must not call ``started``.

``RequestStats`` is the caller's memory of the same figures across snapshots: feed it the
same ``started``/``finished`` calls and build the next snapshot's views with
``RequestStats.view``, so a rebuilt strategy starts from what was observed.

Exclusion, in order, names the reason when nothing is left: no holder at all
(``no_nodes``); every holder's node quarantined or unhealthy (``all_quarantined``); every
remaining holder's breaker, or its node's, open (``all_breakers_open``); every remaining
holder with ``max_in_flight`` requests in flight (``all_saturated`` — this is load
shedding: the caller refuses the request rather than queueing it). Half-open breakers let
requests through. Holders are sorted by agent id in ``update``, so decisions depend on the
snapshot, the calls made since and the ``random.Random`` only.

The strategies (``REQUEST_STRATEGIES``):

- ``round_robin``: holders in turn; a saturated holder is passed over and the turn moves
  past the holder chosen.
- ``weighted_round_robin``: smooth and deterministic, as nginx's: each holder's share is
  its weight (holder weight * node weight, times the node's free share ``1 - load`` with
  ``load_scaled=True``) and the picks interleave. Implemented as stride scheduling on a
  heap: a holder's k-th turn falls at virtual time ``origin + (k - 1/2) / weight``, the
  earliest turn goes next, so with integer weights every cycle of ``sum(weights)`` picks
  gives each holder exactly its weight, at O(log n) a pick. Turns survive ``update`` for
  holders whose weight did not change. Zero-weight holders get nothing; when all have
  zero weight the reason is ``no_capacity``.
- ``least_connections``: fewest requests in flight, ties in turn. Holders sit in buckets
  by in-flight count, so ``started``/``finished`` move one holder and a pick is O(1).
- ``random``: uniform over the holders that are not saturated.
- ``power_of_two_choices``: two distinct holders at random, the one with fewer in flight.
- ``latency_aware``: lowest latency EWMA, an unknown latency counting as
  ``unknown_latency_s`` (1 s, the seed's pessimistic default); optionally
  ``zone_penalty_s`` is added for a holder outside the caller's zone and
  ``region_penalty_s`` outside its region. Kept sorted, so a pick reads the head.
- ``zone``: holders in the caller's zone in turn, then its region, then any; a saturated
  tier spills into the next.
- ``sticky``: consistent hashing of ``ctx.key`` over the holders (``placement.HashRing``),
  walking past excluded and saturated ones; without a key, round robin.
- ``adaptive``: learns from what it observes. Its cost of a holder is
  ``latency * (1 + error_penalty * error_rate) * (1 + in_flight) / weight``, latency being
  the EWMA or, while unknown, the mean of the known ones (or ``prior_s``). A pick is the
  cheaper of two holders drawn at random (power of two choices on that cost, so traffic
  leaves a slow or failing holder without herding onto the single best one); the second
  must be cheaper by more than ``tolerance`` (10 %) to win, so holders whose figures
  differ by noise share the traffic even when requests come one at a time. With
  probability ``explore`` the pick is instead a random holder with fewer than
  ``min_samples`` observations, or any random holder when all have enough, so new holders
  are measured and a penalised one can show that it recovered.
"""

from __future__ import annotations

import heapq
import math
import os
import random
from abc import ABC, abstractmethod
from bisect import bisect_left, insort
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from agentcluster.core.circuit_breaker import BreakerState
from agentcluster.core.node_view import Health, HolderView, NodeView, RequestContext
from agentcluster.core.placement import HashRing
from agentcluster.errors import ConfigurationError, NoAvailableNode

__all__ = [
    "DEFAULT_ALPHA",
    "REQUEST_STRATEGIES",
    "HolderStats",
    "RequestContext",
    "RequestStats",
    "RequestStrategy",
    "ewma",
    "make_request_strategy",
    "steer",
    "tightened",
]

DEFAULT_ALPHA = 0.2
"""Weight of the newest sample in the EWMAs: about the last ten requests dominate."""

_NO_CONTEXT = RequestContext()


def ewma(previous: float | None, sample: float, alpha: float) -> float:
    """The exponentially weighted moving average after ``sample``; the first sample is
    taken as is."""
    if previous is None:
        return sample
    return previous + alpha * (sample - previous)


def _check_alpha(name: str, alpha: float) -> float:
    if not (isinstance(alpha, int | float) and 0 < alpha <= 1):
        raise ConfigurationError(f"{name} must be within (0, 1], not {alpha!r}")
    return float(alpha)


@dataclass(frozen=True, slots=True)
class HolderStats:
    """What ``RequestStats`` knows about one holder; ``samples`` counts finished requests."""

    in_flight: int = 0
    latency_ewma: float | None = None
    error_rate_ewma: float = 0.0
    samples: int = 0


class _Entry:
    __slots__ = ("error_rate", "in_flight", "latency", "samples")

    def __init__(self) -> None:
        self.in_flight = 0
        self.latency: float | None = None
        self.error_rate = 0.0
        self.samples = 0


class RequestStats:
    """Per-holder in-flight count, latency EWMA and error-rate EWMA, bounded.

    ``alpha`` weighs new latency samples, ``error_alpha`` (default ``alpha``) new outcomes
    (1 for a failure, 0 for a success). At most ``max_holders`` are kept: the holder not
    reported on for longest is forgotten first, and ``retain`` forgets holders that left.
    """

    __slots__ = ("_alpha", "_entries", "_error_alpha", "_max_holders")

    def __init__(
        self,
        *,
        alpha: float = DEFAULT_ALPHA,
        error_alpha: float | None = None,
        max_holders: int = 10_000,
    ) -> None:
        self._alpha = _check_alpha("alpha", alpha)
        self._error_alpha = _check_alpha(
            "error_alpha", alpha if error_alpha is None else error_alpha
        )
        if max_holders < 1:
            raise ConfigurationError(f"max_holders must be >= 1, not {max_holders!r}")
        self._max_holders = max_holders
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, holder: object) -> bool:
        return holder in self._entries

    def _touch(self, holder: str) -> _Entry:
        entries = self._entries
        entry = entries.pop(holder, None)
        if entry is None:
            entry = _Entry()
            if len(entries) >= self._max_holders:
                del entries[next(iter(entries))]
        entries[holder] = entry
        return entry

    def started(self, holder: str) -> None:
        """A request was sent to ``holder``."""
        self._touch(holder).in_flight += 1

    def finished(self, holder: str, latency_s: float | None = None, ok: bool = True) -> None:
        """A request to ``holder`` ended after ``latency_s`` (``None``: no latency sample,
        e.g. it was cancelled); ``ok`` is false when it failed or timed out."""
        entry = self._touch(holder)
        if entry.in_flight > 0:
            entry.in_flight -= 1
        if latency_s is not None:
            entry.latency = ewma(entry.latency, latency_s, self._alpha)
        entry.error_rate += self._error_alpha * ((0.0 if ok else 1.0) - entry.error_rate)
        entry.samples += 1

    def get(self, holder: str) -> HolderStats:
        """The figures of ``holder``; zeros for one never reported on."""
        entry = self._entries.get(holder)
        if entry is None:
            return HolderStats()
        return HolderStats(entry.in_flight, entry.latency, entry.error_rate, entry.samples)

    def view(
        self,
        agent_id: str,
        node: NodeView,
        *,
        breaker: BreakerState = BreakerState.CLOSED,
        weight: float = 1.0,
    ) -> HolderView:
        """The snapshot of ``agent_id`` on ``node`` with the figures observed so far."""
        stats = self.get(agent_id)
        return HolderView(
            agent_id=agent_id,
            node=node,
            in_flight=stats.in_flight,
            latency_ewma=stats.latency_ewma,
            error_rate_ewma=stats.error_rate_ewma,
            breaker=breaker,
            weight=weight,
            samples=stats.samples,
        )

    def retain(self, holders: Iterable[str]) -> None:
        """Forget every holder not in ``holders``."""
        keep = set(holders)
        for holder in [h for h in self._entries if h not in keep]:
            del self._entries[holder]


def _agent_id(holder: HolderView) -> str:
    return holder.agent_id


_REASON_TEXT = {
    "no_nodes": "there is no holder",
    "all_quarantined": "every holder's node is quarantined or unhealthy",
    "all_breakers_open": "every remaining holder's breaker is open",
    "all_saturated": "every available holder has max_in_flight requests in flight",
    "no_capacity": "every available holder has zero weight",
}


class RequestStrategy(ABC):
    """One request strategy over one set of holders: ``update``, ``choose``, and
    ``started``/``finished`` per request. Not thread-safe. Built by
    ``make_request_strategy``; ``max_in_flight`` (an option of every strategy) is the
    per-holder limit past which a holder is saturated."""

    name: ClassVar[str]
    options: ClassVar[frozenset[str]] = frozenset()

    __slots__ = (
        "_holders",
        "_ids",
        "_in_flight",
        "_index",
        "_limit",
        "_reason",
        "_rng",
        "_saturated",
    )

    def __init__(self, rng: random.Random, *, max_in_flight: int | None = None) -> None:
        if max_in_flight is not None and (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise ConfigurationError(f"max_in_flight must be an int >= 1, not {max_in_flight!r}")
        self._rng = rng
        self._limit = max_in_flight
        self._holders: tuple[HolderView, ...] = ()
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._in_flight: list[int] = []
        self._saturated = 0
        self._reason = "no_nodes"

    def update(self, holders: Iterable[HolderView]) -> None:
        """Take a new snapshot of every holder (excluded ones included: they decide the
        reason when nothing is available). In-flight counts restart from the views."""
        listed = sorted(holders, key=_agent_id)
        healthy = [h for h in listed if not h.node.excluded_by_health]
        available = [h for h in healthy if not h.breaker_open]
        if not listed:
            self._reason = "no_nodes"
        elif not healthy:
            self._reason = "all_quarantined"
        elif not available:
            self._reason = "all_breakers_open"
        self._holders = tuple(available)
        self._ids = [h.agent_id for h in available]
        self._index = {agent_id: i for i, agent_id in enumerate(self._ids)}
        self._in_flight = [max(0, h.in_flight) for h in available]
        limit = self._limit
        self._saturated = 0 if limit is None else sum(c >= limit for c in self._in_flight)
        self._rebuilt(listed)

    def choose(self, ctx: RequestContext | None = None) -> str:
        """The holder for the next request; raises ``NoAvailableNode``."""
        ids = self._ids
        if self._saturated >= len(ids):
            raise self._unavailable(self._reason if not ids else "all_saturated")
        return ids[self._pick(_NO_CONTEXT if ctx is None else ctx)]

    def started(self, agent_id: str) -> None:
        """A request was sent to ``agent_id`` (ignored for a holder not available)."""
        i = self._index.get(agent_id)
        if i is None:
            return
        old = self._in_flight[i]
        self._in_flight[i] = old + 1
        if old + 1 == self._limit:
            self._saturated += 1
        self._moved(i, old, old + 1)

    def finished(self, agent_id: str, latency_s: float | None = None, ok: bool = True) -> None:
        """A request to ``agent_id`` ended after ``latency_s`` (``None``: no sample)."""
        i = self._index.get(agent_id)
        if i is None:
            return
        old = self._in_flight[i]
        if old > 0:
            self._in_flight[i] = old - 1
            if old == self._limit:
                self._saturated -= 1
            self._moved(i, old, old - 1)
        self._observed(i, latency_s, ok)

    def in_flight(self, agent_id: str) -> int:
        """Requests in flight to ``agent_id`` as this strategy counts them."""
        i = self._index.get(agent_id)
        return 0 if i is None else self._in_flight[i]

    @property
    def available(self) -> tuple[str, ...]:
        """The holders not excluded by health or breakers, by agent id."""
        return tuple(self._ids)

    def _free(self, i: int) -> bool:
        return self._limit is None or self._in_flight[i] < self._limit

    def _free_indices(self) -> list[int]:
        limit = self._limit
        return [i for i, c in enumerate(self._in_flight) if limit is None or c < limit]

    def _rebuilt(self, listed: list[HolderView]) -> None:
        """Called at the end of ``update`` with every holder, sorted by agent id."""
        return  # a hook: strategies that need it override it

    def _moved(self, i: int, old: int, new: int) -> None:
        """Holder ``i``'s in-flight count went from ``old`` to ``new``."""
        return  # a hook: strategies that need it override it

    def _observed(self, i: int, latency_s: float | None, ok: bool) -> None:
        """A request to holder ``i`` finished."""
        return  # a hook: strategies that need it override it

    @abstractmethod
    def _pick(self, ctx: RequestContext) -> int:
        """The index of a holder that is not saturated (at least one is)."""

    def _unavailable(self, reason: str) -> NoAvailableNode:
        return NoAvailableNode(
            f"no holder can take the request ({self.name}): {_REASON_TEXT[reason]}",
            reason=reason,
        )


class _RoundRobin(RequestStrategy):
    name = "round_robin"
    __slots__ = ("_turn",)

    def __init__(self, rng: random.Random, *, max_in_flight: int | None = None) -> None:
        super().__init__(rng, max_in_flight=max_in_flight)
        self._turn = 0

    def _pick(self, ctx: RequestContext) -> int:
        count = len(self._ids)
        i = self._turn % count
        if self._limit is not None:
            while not self._free(i):
                i = (i + 1) % count
        self._turn = i + 1
        return i


class _WeightedRoundRobin(RequestStrategy):
    name = "weighted_round_robin"
    options = frozenset({"load_scaled"})
    __slots__ = ("_clock", "_heap", "_load_scaled", "_origin", "_turns", "_weight_of", "_weights")

    def __init__(
        self, rng: random.Random, *, max_in_flight: int | None = None, load_scaled: bool = False
    ) -> None:
        super().__init__(rng, max_in_flight=max_in_flight)
        self._load_scaled = load_scaled
        self._clock = 0.0
        self._heap: list[tuple[float, int]] = []
        self._weights: list[float] = []
        self._origin: dict[str, float] = {}
        self._turns: dict[str, int] = {}
        self._weight_of: dict[str, float] = {}

    def weight(self, holder: HolderView) -> float:
        """The holder's share: its weight * its node's, * ``1 - load`` when load-scaled."""
        weight = holder.weight * holder.node.weight
        if self._load_scaled:
            weight *= max(0.0, 1.0 - holder.node.load)
        return weight if math.isfinite(weight) and weight > 0 else 0.0

    def _rebuilt(self, listed: list[HolderView]) -> None:
        origin, turns, weight_of = self._origin, self._turns, self._weight_of
        self._weights = [self.weight(h) for h in self._holders]
        present = set(self._ids)
        for agent_id in [a for a in origin if a not in present]:
            del origin[agent_id], turns[agent_id], weight_of[agent_id]
        heap: list[tuple[float, int]] = []
        for i, (agent_id, weight) in enumerate(zip(self._ids, self._weights, strict=True)):
            if weight <= 0:
                continue
            if weight_of.get(agent_id) != weight:
                origin[agent_id] = self._clock
                turns[agent_id] = 0
                weight_of[agent_id] = weight
            heap.append((origin[agent_id] + (turns[agent_id] + 0.5) / weight, i))
        heapq.heapify(heap)
        self._heap = heap

    def _pick(self, ctx: RequestContext) -> int:
        heap = self._heap
        if not heap:
            raise self._unavailable("no_capacity")
        ids, turns, origin, weights = self._ids, self._turns, self._origin, self._weights
        if self._limit is None:
            due, i = heap[0]
            agent_id = ids[i]
            turn = turns[agent_id] + 1
            turns[agent_id] = turn
            self._clock = due
            heapq.heapreplace(heap, (origin[agent_id] + (turn + 0.5) / weights[i], i))
            return i
        passed: list[tuple[float, int]] = []
        chosen = -1
        while heap:
            due, i = heapq.heappop(heap)
            agent_id = ids[i]
            turn = turns[agent_id] + 1
            turns[agent_id] = turn
            self._clock = due
            passed.append((origin[agent_id] + (turn + 0.5) / weights[i], i))
            if self._free(i):
                chosen = i
                break
        for entry in passed:
            heapq.heappush(heap, entry)
        if chosen < 0:
            raise self._unavailable("all_saturated")
        return chosen


class _LeastConnections(RequestStrategy):
    name = "least_connections"
    __slots__ = ("_buckets", "_lowest", "_position", "_turn")

    def __init__(self, rng: random.Random, *, max_in_flight: int | None = None) -> None:
        super().__init__(rng, max_in_flight=max_in_flight)
        self._buckets: dict[int, list[int]] = {}
        self._position: list[int] = []
        self._lowest = 0
        self._turn = 0

    def _rebuilt(self, listed: list[HolderView]) -> None:
        buckets: dict[int, list[int]] = {}
        position = [0] * len(self._ids)
        for i, count in enumerate(self._in_flight):
            bucket = buckets.setdefault(count, [])
            position[i] = len(bucket)
            bucket.append(i)
        self._buckets = buckets
        self._position = position
        self._lowest = min(buckets) if buckets else 0

    def _moved(self, i: int, old: int, new: int) -> None:
        buckets, position = self._buckets, self._position
        bucket = buckets[old]
        last = bucket.pop()
        if last != i:
            bucket[position[i]] = last
            position[last] = position[i]
        if not bucket:
            del buckets[old]
        target = buckets.get(new)
        if target is None:
            target = buckets[new] = []
        position[i] = len(target)
        target.append(i)
        if new < self._lowest or (old == self._lowest and not bucket):
            self._lowest = new

    def _pick(self, ctx: RequestContext) -> int:
        bucket = self._buckets[self._lowest]
        turn = self._turn
        self._turn = turn + 1
        return bucket[turn % len(bucket)]


class _Random(RequestStrategy):
    name = "random"
    __slots__ = ()

    _TRIES = 4

    def _pick(self, ctx: RequestContext) -> int:
        count = len(self._ids)
        draw = self._rng.random
        i = int(draw() * count)
        if self._limit is None or self._free(i):
            return i
        for _ in range(self._TRIES):
            i = int(draw() * count)
            if self._free(i):
                return i
        free = self._free_indices()
        return free[int(draw() * len(free))]


class _PowerOfTwoChoices(RequestStrategy):
    name = "power_of_two_choices"
    __slots__ = ()

    def _pick(self, ctx: RequestContext) -> int:
        count = len(self._ids)
        if count == 1:
            return 0
        draw = self._rng.random
        i = int(draw() * count)
        j = int(draw() * (count - 1))
        if j >= i:
            j += 1
        in_flight = self._in_flight
        better, worse = (j, i) if in_flight[j] < in_flight[i] else (i, j)
        if self._free(better):
            return better
        if self._free(worse):
            return worse
        free = self._free_indices()
        if len(free) == 1:
            return free[0]
        i = free[int(draw() * len(free))]
        j = free[int(draw() * len(free))]
        return j if in_flight[j] < in_flight[i] else i


class _Ranking:
    """Holder indices sorted by a float key; changing one key is a binary search and a
    list insertion, reading the best is reading the head."""

    __slots__ = ("entries",)

    def __init__(self, entries: Iterable[tuple[float, int]]) -> None:
        self.entries = sorted(entries)

    def move(self, i: int, old: float, new: float) -> None:
        entries = self.entries
        del entries[bisect_left(entries, (old, i))]
        insort(entries, (new, i))

    def first(self, strategy: RequestStrategy) -> tuple[float, int] | None:
        for entry in self.entries:
            if strategy._free(entry[1]):
                return entry
        return None


class _LatencyAware(RequestStrategy):
    name = "latency_aware"
    options = frozenset({"alpha", "unknown_latency_s", "zone_penalty_s", "region_penalty_s"})
    __slots__ = (
        "_alpha",
        "_by_region",
        "_by_zone",
        "_keys",
        "_latency",
        "_ranking",
        "_region_penalty",
        "_unknown",
        "_zone_penalty",
    )

    def __init__(
        self,
        rng: random.Random,
        *,
        max_in_flight: int | None = None,
        alpha: float = DEFAULT_ALPHA,
        unknown_latency_s: float = 1.0,
        zone_penalty_s: float = 0.0,
        region_penalty_s: float = 0.0,
    ) -> None:
        super().__init__(rng, max_in_flight=max_in_flight)
        self._alpha = _check_alpha("alpha", alpha)
        for name, value in (
            ("unknown_latency_s", unknown_latency_s),
            ("zone_penalty_s", zone_penalty_s),
            ("region_penalty_s", region_penalty_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"{name} must be finite and >= 0, not {value!r}")
        self._unknown = float(unknown_latency_s)
        self._zone_penalty = float(zone_penalty_s)
        self._region_penalty = float(region_penalty_s)
        self._latency: list[float | None] = []
        self._keys: list[float] = []
        self._ranking = _Ranking(())
        self._by_zone: dict[str | None, _Ranking] = {}
        self._by_region: dict[str | None, _Ranking] = {}

    def _rebuilt(self, listed: list[HolderView]) -> None:
        self._latency = [h.latency_ewma for h in self._holders]
        self._keys = [self._unknown if lat is None else lat for lat in self._latency]
        self._ranking = _Ranking((key, i) for i, key in enumerate(self._keys))
        self._by_zone = {}
        self._by_region = {}
        if self._zone_penalty or self._region_penalty:
            zones: dict[str | None, list[tuple[float, int]]] = {}
            regions: dict[str | None, list[tuple[float, int]]] = {}
            for i, (holder, key) in enumerate(zip(self._holders, self._keys, strict=True)):
                zones.setdefault(holder.zone, []).append((key, i))
                regions.setdefault(holder.region, []).append((key, i))
            self._by_zone = {zone: _Ranking(entries) for zone, entries in zones.items()}
            self._by_region = {region: _Ranking(entries) for region, entries in regions.items()}

    def _observed(self, i: int, latency_s: float | None, ok: bool) -> None:
        if latency_s is None:
            return
        latency = ewma(self._latency[i], latency_s, self._alpha)
        self._latency[i] = latency
        old = self._keys[i]
        self._keys[i] = latency
        self._ranking.move(i, old, latency)
        if self._by_zone:
            holder = self._holders[i]
            self._by_zone[holder.zone].move(i, old, latency)
            self._by_region[holder.region].move(i, old, latency)

    def penalty(self, holder: HolderView, ctx: RequestContext) -> float:
        """Seconds added to ``holder``'s latency for a caller at ``ctx``."""
        penalty = 0.0
        if ctx.zone is not None and holder.zone != ctx.zone:
            penalty += self._zone_penalty
        if ctx.region is not None and holder.region != ctx.region:
            penalty += self._region_penalty
        return penalty

    def _pick(self, ctx: RequestContext) -> int:
        best = self._ranking.first(self)
        assert best is not None
        if not self._by_zone or (ctx.zone is None and ctx.region is None):
            return best[1]
        # The best of the caller's zone, of its region and of all: whichever class a
        # holder is in, the head of that class is at least as good once penalised.
        holders = self._holders
        cost = best[0] + self.penalty(holders[best[1]], ctx)
        chosen = best[1]
        for rankings, where in ((self._by_zone, ctx.zone), (self._by_region, ctx.region)):
            ranking = rankings.get(where) if where is not None else None
            head = None if ranking is None else ranking.first(self)
            if head is not None:
                candidate = head[0] + self.penalty(holders[head[1]], ctx)
                if candidate < cost or (candidate == cost and head[1] < chosen):
                    cost, chosen = candidate, head[1]
        return chosen


class _Tiers:
    __slots__ = ("tiers", "turn")

    def __init__(self, tiers: tuple[tuple[int, ...], ...]) -> None:
        self.tiers = tiers
        self.turn = 0


class _Zone(RequestStrategy):
    name = "zone"
    __slots__ = ("_located",)

    _MEMO_LIMIT = 256

    def __init__(self, rng: random.Random, *, max_in_flight: int | None = None) -> None:
        super().__init__(rng, max_in_flight=max_in_flight)
        self._located: dict[tuple[str | None, str | None], _Tiers] = {}

    def _rebuilt(self, listed: list[HolderView]) -> None:
        self._located = {}

    def _tiers(self, zone: str | None, region: str | None) -> _Tiers:
        near: list[int] = []
        regional: list[int] = []
        rest: list[int] = []
        for i, holder in enumerate(self._holders):
            if zone is not None and holder.zone == zone:
                near.append(i)
            elif region is not None and holder.region == region:
                regional.append(i)
            else:
                rest.append(i)
        if len(self._located) >= self._MEMO_LIMIT:
            self._located.clear()
        found = _Tiers(tuple(tuple(tier) for tier in (near, regional, rest) if tier))
        self._located[(zone, region)] = found
        return found

    def _pick(self, ctx: RequestContext) -> int:
        located = self._located.get((ctx.zone, ctx.region))
        if located is None:
            located = self._tiers(ctx.zone, ctx.region)
        turn = located.turn
        located.turn = turn + 1
        for tier in located.tiers:
            count = len(tier)
            for step in range(count):
                i = tier[(turn + step) % count]
                if self._free(i):
                    return i
        raise AssertionError("choose checked that a holder is free")  # pragma: no cover


class _Sticky(_RoundRobin):
    name = "sticky"
    options = frozenset({"replicas"})
    __slots__ = ("_accept", "_narrow", "_ring")

    _WALK = 64
    """Ring points walked past excluded holders before switching to a ring of the
    available holders alone (built once per snapshot); either gives the same answer."""

    def __init__(
        self, rng: random.Random, *, max_in_flight: int | None = None, replicas: int = 100
    ) -> None:
        super().__init__(rng, max_in_flight=max_in_flight)
        self._ring = HashRing(replicas)
        self._narrow: HashRing | None = None
        self._accept = self._accepts

    def _accepts(self, agent_id: str) -> bool:
        i = self._index.get(agent_id)
        return i is not None and self._free(i)

    def _rebuilt(self, listed: list[HolderView]) -> None:
        self._ring.set_members(h.agent_id for h in listed)
        self._narrow = self._ring if len(self._ids) == len(listed) else None

    def _pick(self, ctx: RequestContext) -> int:
        key = ctx.key
        if key is None:
            return super()._pick(ctx)
        ring = self._narrow
        found = None
        if ring is None:
            found = self._ring.lookup(key, self._accept, max_steps=self._WALK)
            if found is None:
                ring = self._narrow = self._ring.restricted(self._ids)
        if ring is not None:
            found = ring.lookup(key, self._accept if self._limit is not None else None)
        assert found is not None
        return self._index[found]


class _Adaptive(RequestStrategy):
    name = "adaptive"
    options = frozenset(
        {"alpha", "error_penalty", "explore", "min_samples", "prior_s", "tolerance"}
    )
    __slots__ = (
        "_alpha",
        "_error",
        "_error_penalty",
        "_explore",
        "_fresh",
        "_fresh_position",
        "_known_count",
        "_known_sum",
        "_latency",
        "_min_samples",
        "_prior",
        "_samples",
        "_tolerance",
        "_weights",
    )

    def __init__(
        self,
        rng: random.Random,
        *,
        max_in_flight: int | None = None,
        alpha: float = DEFAULT_ALPHA,
        error_penalty: float = 10.0,
        explore: float = 0.05,
        min_samples: int = 5,
        prior_s: float | None = None,
        tolerance: float = 0.1,
    ) -> None:
        super().__init__(rng, max_in_flight=max_in_flight)
        self._alpha = _check_alpha("alpha", alpha)
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ConfigurationError(f"tolerance must be finite and >= 0, not {tolerance!r}")
        self._tolerance = 1.0 + tolerance
        if not math.isfinite(error_penalty) or error_penalty < 0:
            raise ConfigurationError(
                f"error_penalty must be finite and >= 0, not {error_penalty!r}"
            )
        if not 0 <= explore <= 1:
            raise ConfigurationError(f"explore must be within [0, 1], not {explore!r}")
        if min_samples < 0:
            raise ConfigurationError(f"min_samples must be >= 0, not {min_samples!r}")
        if prior_s is not None and not (math.isfinite(prior_s) and prior_s > 0):
            raise ConfigurationError(f"prior_s must be finite and > 0, not {prior_s!r}")
        self._error_penalty = float(error_penalty)
        self._explore = float(explore)
        self._min_samples = min_samples
        self._prior = prior_s
        self._latency: list[float | None] = []
        self._error: list[float] = []
        self._samples: list[int] = []
        self._weights: list[float] = []
        self._known_sum = 0.0
        self._known_count = 0
        self._fresh: list[int] = []
        self._fresh_position: dict[int, int] = {}

    def _rebuilt(self, listed: list[HolderView]) -> None:
        holders = self._holders
        self._latency = [h.latency_ewma for h in holders]
        self._error = [min(1.0, max(0.0, h.error_rate_ewma)) for h in holders]
        self._samples = [h.samples for h in holders]
        self._weights = [max(0.0, h.weight * h.node.weight) for h in holders]
        known = [lat for lat in self._latency if lat is not None]
        self._known_sum = math.fsum(known)
        self._known_count = len(known)
        self._fresh = [i for i, n in enumerate(self._samples) if n < self._min_samples]
        self._fresh_position = {i: p for p, i in enumerate(self._fresh)}

    def _observed(self, i: int, latency_s: float | None, ok: bool) -> None:
        if latency_s is not None:
            old = self._latency[i]
            new = ewma(old, latency_s, self._alpha)
            self._latency[i] = new
            if old is None:
                self._known_count += 1
                self._known_sum += new
            else:
                self._known_sum += new - old
        self._error[i] += self._alpha * ((0.0 if ok else 1.0) - self._error[i])
        samples = self._samples[i] + 1
        self._samples[i] = samples
        if samples == self._min_samples:
            position = self._fresh_position.pop(i)
            last = self._fresh.pop()
            if last != i:
                self._fresh[position] = last
                self._fresh_position[last] = position

    def cost(self, i: int) -> float:
        """Holder ``i``'s expected cost of one more request (lower is better)."""
        latency = self._latency[i]
        if latency is None:
            latency = self._prior_latency()
        weight = self._weights[i]
        if weight <= 0:
            return math.inf
        return (
            latency
            * (1.0 + self._error_penalty * self._error[i])
            * (1 + self._in_flight[i])
            / weight
        )

    def _prior_latency(self) -> float:
        if self._prior is not None:
            return self._prior
        if self._known_count:
            return max(self._known_sum / self._known_count, 1e-9)
        return 1.0

    def _pick(self, ctx: RequestContext) -> int:
        count = len(self._ids)
        if count == 1:
            return 0
        draw = self._rng.random
        if self._explore and draw() < self._explore:
            fresh = self._fresh
            i = fresh[int(draw() * len(fresh))] if fresh else int(draw() * count)
            if self._free(i):
                return i
        i = int(draw() * count)
        j = int(draw() * (count - 1))
        if j >= i:
            j += 1
        better, worse = (j, i) if self.cost(j) * self._tolerance < self.cost(i) else (i, j)
        if self._free(better):
            return better
        if self._free(worse):
            return worse
        free = self._free_indices()
        return min(free, key=self.cost)


_REQUESTS: dict[str, type[RequestStrategy]] = {
    cls.name: cls
    for cls in (
        _RoundRobin,
        _WeightedRoundRobin,
        _LeastConnections,
        _Random,
        _PowerOfTwoChoices,
        _LatencyAware,
        _Zone,
        _Sticky,
        _Adaptive,
    )
}

REQUEST_STRATEGIES: tuple[str, ...] = tuple(_REQUESTS)
"""The names ``make_request_strategy`` accepts."""


def make_request_strategy(
    name: str, *, rng: random.Random | None = None, **options: Any
) -> RequestStrategy:
    """A fresh request strategy by name.

    Every strategy takes ``max_in_flight`` (per-holder limit; ``None``, the default, is
    unlimited). Others: ``weighted_round_robin`` ``load_scaled``; ``latency_aware``
    ``alpha``, ``unknown_latency_s``, ``zone_penalty_s``, ``region_penalty_s``; ``sticky``
    ``replicas``; ``adaptive`` ``alpha``, ``error_penalty``, ``explore``, ``min_samples``,
    ``prior_s``, ``tolerance``. ``rng`` drives the random draws; pass a seeded one for
    reproducible runs (without it, one seeded from the OS). Unknown names or options raise
    ``ConfigurationError``.
    """
    cls = _REQUESTS.get(name)
    if cls is None:
        raise ConfigurationError(
            f"unknown request strategy {name!r}; one of {', '.join(REQUEST_STRATEGIES)}"
        )
    unknown = set(options) - cls.options - {"max_in_flight"}
    if unknown:
        raise ConfigurationError(
            f"request strategy {name!r} takes no option {', '.join(sorted(unknown))}"
        )
    return cls(rng if rng is not None else random.Random(os.urandom(32)), **options)


def steer(
    holders: Sequence[HolderView],
    suspected: Collection[str],
    *,
    shed_load: float,
    max_in_flight: int | None,
) -> list[HolderView]:
    """The caller's snapshot as the strategies should see it.

    Holders on nodes the caller suspects (phi) count as unhealthy while some holder's node
    is not suspected; when every one is, suspicion is ignored (it steers the choice, it
    never empties it). A holder on a node reporting a load of ``shed_load`` or more counts
    as saturated (its in-flight count raised to ``max_in_flight``), so when all are, the
    request is shed rather than queued.
    """
    steering = bool(suspected) and any(h.node.id not in suspected for h in holders)
    shaped: list[HolderView] = []
    for holder in holders:
        node = holder.node
        if steering and node.id in suspected and node.health is not Health.UNHEALTHY:
            holder = replace(holder, node=replace(node, health=Health.UNHEALTHY))
        if max_in_flight is not None and node.load >= shed_load:
            holder = replace(holder, in_flight=max(holder.in_flight, max_in_flight))
        shaped.append(holder)
    return shaped


def tightened(
    max_in_flight: int | None, shed_load: float, factor: float
) -> tuple[int | None, float]:
    """The shedding thresholds after a traffic surge: both scaled by ``factor`` (within
    (0, 1]), never below one request in flight or a load of 0.05."""
    if not 0 < factor <= 1:
        raise ConfigurationError(f"a surge factor is within (0, 1], got {factor!r}")
    limit = None if max_in_flight is None else max(1, int(max_in_flight * factor))
    return limit, max(0.05, shed_load * factor)
