"""Request strategies and RequestStats: property tests against a naive oracle, and
table tests."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agentcluster.core.circuit_breaker import BreakerState
from agentcluster.core.node_view import Health, HolderView, NodeView, RequestContext
from agentcluster.core.placement import HashRing
from agentcluster.core.request_balance import (
    REQUEST_STRATEGIES,
    HolderStats,
    RequestStats,
    RequestStrategy,
    ewma,
    make_request_strategy,
    steer,
    tightened,
)
from agentcluster.errors import ConfigurationError, NoAvailableNode

ZONES = (("r1", "r1-a"), ("r1", "r1-b"), ("r2", "r2-a"))


def holder(
    agent_id: str,
    *,
    zone: str = "r1-a",
    region: str = "r1",
    quarantined: bool = False,
    health: Health = Health.HEALTHY,
    node_breaker: BreakerState = BreakerState.CLOSED,
    **fields: object,
) -> HolderView:
    node = NodeView(
        f"node-of-{agent_id}",
        labels={"zone": zone, "region": region},
        quarantined=quarantined,
        health=health,
        breaker=node_breaker,
    )
    return HolderView(agent_id, node, **fields)


# --- the naive oracle -------------------------------------------------------------


def oracle(
    holders: Sequence[HolderView], in_flight: dict[str, int], limit: int | None
) -> tuple[list[HolderView], str]:
    if not holders:
        return [], "no_nodes"
    healthy = [h for h in holders if not h.node.quarantined and h.node.health != Health.UNHEALTHY]
    if not healthy:
        return [], "all_quarantined"
    closed = [
        h for h in healthy if h.breaker != BreakerState.OPEN and h.node.breaker != BreakerState.OPEN
    ]
    if not closed:
        return [], "all_breakers_open"
    free = [h for h in closed if limit is None or in_flight[h.agent_id] < limit]
    if not free:
        return [], "all_saturated"
    return free, ""


# Mostly available, so that most draws choose and some exclude everything.
MOSTLY_FALSE = st.sampled_from((False, False, False, False, True))
HEALTH = st.sampled_from((Health.HEALTHY, Health.HEALTHY, Health.DEGRADED, Health.UNHEALTHY))
BREAKER = st.sampled_from(
    (BreakerState.CLOSED, BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN)
)


@st.composite
def holder_sets(draw: st.DrawFn) -> list[HolderView]:
    count = draw(st.integers(0, 7))
    holders = []
    for i in range(count):
        region, zone = draw(st.sampled_from(ZONES))
        holders.append(
            holder(
                f"h{i}",
                zone=zone,
                region=region,
                quarantined=draw(MOSTLY_FALSE),
                health=draw(HEALTH),
                node_breaker=draw(BREAKER),
                breaker=draw(BREAKER),
                in_flight=draw(st.integers(0, 3)),
                latency_ewma=draw(st.one_of(st.none(), st.sampled_from((0.01, 0.02, 0.5)))),
                error_rate_ewma=draw(st.sampled_from((0.0, 0.1, 0.9))),
                weight=draw(st.sampled_from((0.0, 1.0, 2.0, 3.0))),
                samples=draw(st.integers(0, 10)),
            )
        )
    return holders


contexts = st.builds(
    RequestContext,
    key=st.one_of(st.none(), st.text("abc", min_size=1, max_size=3)),
    zone=st.one_of(st.none(), st.sampled_from([z for _, z in ZONES] + ["elsewhere"])),
    region=st.one_of(st.none(), st.sampled_from(["r1", "r2", "r9"])),
)

operations = st.lists(
    st.tuples(
        st.sampled_from(("none", "started", "finished")),
        st.integers(0, 7),
        st.sampled_from((None, 0.005, 0.05, 0.5)),
        st.booleans(),
        contexts,
    ),
    min_size=1,
    max_size=30,
)


@pytest.mark.parametrize("name", REQUEST_STRATEGIES)
@settings(max_examples=100, deadline=None)
@given(holders=holder_sets(), limit=st.sampled_from((None, 1, 2, 3)), ops=operations)
def test_never_chooses_an_excluded_or_saturated_holder_and_names_the_reason(
    name: str,
    holders: list[HolderView],
    limit: int | None,
    ops: list[tuple[str, int, float | None, bool, RequestContext]],
) -> None:
    strategy = make_request_strategy(name, rng=random.Random(2), max_in_flight=limit)
    strategy.update(holders)
    in_flight = {h.agent_id: h.in_flight for h in holders}
    available = {h.agent_id for h in oracle(holders, in_flight, None)[0]}
    for op, who, latency, ok, ctx in ops:
        agent_id = f"h{who}"
        if op == "started":
            strategy.started(agent_id)
            if agent_id in available:
                in_flight[agent_id] += 1
        elif op == "finished":
            strategy.finished(agent_id, latency, ok)
            if agent_id in available and in_flight[agent_id] > 0:
                in_flight[agent_id] -= 1
        for agent in available:
            assert strategy.in_flight(agent) == in_flight[agent]
        eligible, reason = oracle(holders, in_flight, limit)
        if name == "weighted_round_robin" and not reason:
            weighted = [h for h in eligible if h.weight > 0]
            if not weighted:
                positive = [h for h in holders if h.agent_id in available and h.weight > 0]
                reason = "all_saturated" if positive else "no_capacity"
            eligible = weighted
        if reason:
            event(f"refused: {reason}")
            with pytest.raises(NoAvailableNode) as raised:
                strategy.choose(ctx)
            assert raised.value.reason == reason
            continue
        event("chosen")
        chosen = strategy.choose(ctx)
        assert chosen in {h.agent_id for h in eligible}
        check_exact(name, chosen, eligible, in_flight, ctx)


def check_exact(
    name: str,
    chosen: str,
    eligible: list[HolderView],
    in_flight: dict[str, int],
    ctx: RequestContext,
) -> None:
    """The deterministic strategies against their one-line definitions."""
    if name == "least_connections":
        assert in_flight[chosen] == min(in_flight[h.agent_id] for h in eligible)
    elif name == "zone":
        for tier in (
            [h for h in eligible if ctx.zone is not None and h.zone == ctx.zone],
            [h for h in eligible if ctx.region is not None and h.region == ctx.region],
            eligible,
        ):
            if tier:
                assert chosen in {h.agent_id for h in tier}
                break
    elif name == "sticky" and ctx.key is not None:
        ring = HashRing()
        ring.set_members(h.agent_id for h in eligible)
        assert chosen == ring.lookup(ctx.key)


# --- reasons and load shedding ----------------------------------------------------


REASONS = [
    ([], "no_nodes"),
    ([holder("a", quarantined=True), holder("b", health=Health.UNHEALTHY)], "all_quarantined"),
    (
        [
            holder("a", quarantined=True),
            holder("b", breaker=BreakerState.OPEN),
            holder("c", node_breaker=BreakerState.OPEN),
        ],
        "all_breakers_open",
    ),
    ([holder("a", in_flight=2), holder("b", in_flight=5)], "all_saturated"),
]


@pytest.mark.parametrize("name", REQUEST_STRATEGIES)
@pytest.mark.parametrize(("holders", "reason"), REASONS)
def test_reason_when_every_holder_is_excluded(
    name: str, holders: list[HolderView], reason: str
) -> None:
    strategy = make_request_strategy(name, rng=random.Random(0), max_in_flight=2)
    strategy.update(holders)
    with pytest.raises(NoAvailableNode) as raised:
        strategy.choose(RequestContext(key="k"))
    assert raised.value.reason == reason
    assert raised.value.retryable


@pytest.mark.parametrize("name", REQUEST_STRATEGIES)
def test_load_is_shed_at_the_limit_and_resumes_when_a_request_ends(name: str) -> None:
    strategy = make_request_strategy(name, rng=random.Random(0), max_in_flight=2)
    strategy.update([holder("a"), holder("b")])
    for _ in range(4):
        strategy.started(strategy.choose(RequestContext(key="k")))
    assert strategy.in_flight("a") == strategy.in_flight("b") == 2
    with pytest.raises(NoAvailableNode) as raised:
        strategy.choose(RequestContext(key="k"))
    assert raised.value.reason == "all_saturated"
    while strategy.in_flight("b") > 1:
        strategy.finished("b", 0.01)
    assert strategy.choose(RequestContext(key="k")) == "b"


def test_unknown_or_excluded_holders_are_ignored_by_the_bookkeeping() -> None:
    strategy = make_request_strategy("least_connections")
    strategy.update([holder("a"), holder("b", breaker=BreakerState.OPEN)])
    strategy.started("b")
    strategy.started("nobody")
    strategy.finished("nobody", 0.1)
    strategy.finished("a")  # nothing in flight: stays at 0
    assert (strategy.in_flight("a"), strategy.in_flight("b")) == (0, 0)
    assert strategy.available == ("a",)


# --- one strategy at a time -------------------------------------------------------


def test_round_robin_passes_over_saturated_holders() -> None:
    strategy = make_request_strategy("round_robin", max_in_flight=1)
    strategy.update([holder("c"), holder("a"), holder("b")])
    assert [strategy.choose() for _ in range(4)] == ["a", "b", "c", "a"]
    strategy.started("b")
    assert [strategy.choose() for _ in range(3)] == ["c", "a", "c"]


@settings(max_examples=100, deadline=None)
@given(weights=st.lists(st.integers(1, 9), min_size=1, max_size=8), cycles=st.integers(1, 4))
def test_weighted_round_robin_is_exact_over_each_cycle(weights: list[int], cycles: int) -> None:
    strategy = make_request_strategy("weighted_round_robin")
    strategy.update([holder(f"h{i}", weight=float(w)) for i, w in enumerate(weights)])
    total = sum(weights)
    for cycle in range(cycles):
        counts = Counter(strategy.choose() for _ in range(total))
        assert counts == {f"h{i}": w for i, w in enumerate(weights)}, cycle
        # A fresh snapshot of the same holders does not disturb the turns.
        strategy.update([holder(f"h{i}", weight=float(w)) for i, w in enumerate(weights)])


def test_weighted_round_robin_interleaves_like_nginx() -> None:
    strategy = make_request_strategy("weighted_round_robin")
    strategy.update([holder("a", weight=5.0), holder("b"), holder("c")])
    picks = [strategy.choose() for _ in range(7)]
    assert Counter(picks) == {"a": 5, "b": 1, "c": 1}
    assert "a" * 4 not in "".join(picks)  # b and c are not left to the end of the cycle


def test_weighted_round_robin_scales_by_node_weight_and_free_load() -> None:
    heavy = NodeView("big", weight=2.0, load=0.0)
    busy = NodeView("busy", weight=1.0, load=0.75)
    holders = [HolderView("on-big", heavy), HolderView("on-busy", busy, weight=2.0)]
    plain = make_request_strategy("weighted_round_robin")
    plain.update(holders)
    assert Counter(plain.choose() for _ in range(400)) == {"on-big": 200, "on-busy": 200}
    scaled = make_request_strategy("weighted_round_robin", load_scaled=True)
    scaled.update(holders)
    assert Counter(scaled.choose() for _ in range(500)) == {"on-big": 400, "on-busy": 100}
    scaled.update([HolderView("full", NodeView("n", load=1.0))])
    with pytest.raises(NoAvailableNode) as raised:
        scaled.choose()
    assert raised.value.reason == "no_capacity"


def test_least_connections_follows_started_and_finished() -> None:
    strategy = make_request_strategy("least_connections")
    strategy.update([holder("a", in_flight=3), holder("b", in_flight=1), holder("c")])
    assert strategy.choose() == "c"
    strategy.started("c")
    assert strategy.choose() in {"b", "c"}
    strategy.started("c")
    assert strategy.choose() == "b"
    strategy.started("b")
    strategy.started("b")
    strategy.started("c")
    # a 3, b 3, c 3: ties are taken in turn
    assert {strategy.choose() for _ in range(3)} == {"a", "b", "c"}
    strategy.finished("a", 0.01)
    assert strategy.choose() == "a"
    for _ in range(3):
        strategy.finished("b", 0.01)
    assert strategy.choose() == "b"
    assert [strategy.in_flight(h) for h in "abc"] == [2, 0, 3]


@settings(max_examples=100, deadline=None)
@given(
    counts=st.lists(st.integers(0, 4), min_size=1, max_size=6),
    moves=st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=40),
)
def test_least_connections_agrees_with_a_scan(
    counts: list[int], moves: list[tuple[int, bool]]
) -> None:
    strategy = make_request_strategy("least_connections")
    strategy.update([holder(f"h{i}", in_flight=c) for i, c in enumerate(counts)])
    tracked = list(counts)
    for who, up in moves:
        if who >= len(counts):
            continue
        if up:
            strategy.started(f"h{who}")
            tracked[who] += 1
        else:
            strategy.finished(f"h{who}")
            tracked[who] = max(0, tracked[who] - 1)
        chosen = int(strategy.choose()[1:])
        assert tracked[chosen] == min(tracked)


@pytest.mark.parametrize("name", ["random", "power_of_two_choices"])
def test_random_draws_are_roughly_uniform_over_equal_holders(name: str) -> None:
    strategy = make_request_strategy(name, rng=random.Random(4))
    strategy.update([holder(f"h{i}") for i in range(5)])
    counts = Counter(strategy.choose() for _ in range(20_000))
    assert len(counts) == 5
    assert all(3_600 <= c <= 4_400 for c in counts.values())


def test_power_of_two_choices_prefers_fewer_in_flight() -> None:
    strategy = make_request_strategy("power_of_two_choices", rng=random.Random(4))
    strategy.update([holder(f"h{i}", in_flight=i) for i in range(4)])
    counts = Counter(strategy.choose() for _ in range(20_000))
    assert counts["h3"] == 0
    assert 0.47 <= counts["h0"] / 20_000 <= 0.53


@pytest.mark.parametrize("name", ["random", "power_of_two_choices", "adaptive", "sticky"])
def test_same_seed_same_choices(name: str) -> None:
    holders = [holder(f"h{i}", latency_ewma=0.01 * (i + 1), samples=i) for i in range(9)]

    def run(seed: int) -> list[str]:
        strategy = make_request_strategy(name, rng=random.Random(seed))
        strategy.update(holders)
        picks = []
        for k in range(300):
            chosen = strategy.choose(RequestContext(key=f"s{k % 17}"))
            strategy.started(chosen)
            strategy.finished(chosen, 0.001 * (k % 13), k % 7 != 0)
            picks.append(chosen)
        return picks

    assert run(5) == run(5)
    if name != "sticky":
        assert run(5) != run(6)


def test_latency_aware_picks_the_fastest_and_learns_from_finished_requests() -> None:
    strategy = make_request_strategy("latency_aware", alpha=0.5, unknown_latency_s=0.05)
    strategy.update([holder("a", latency_ewma=0.02), holder("b", latency_ewma=0.01), holder("new")])
    assert strategy.choose() == "b"
    strategy.finished("b", 0.09)  # ewma 0.05: a is now faster
    assert strategy.choose() == "a"
    strategy.finished("a", 0.2)
    strategy.finished("a", 0.2)
    assert strategy.choose() == "b"  # 0.05 ties the unknown prior; b sorts first
    strategy.finished("b", 0.09)
    assert strategy.choose() == "new"


def test_latency_aware_penalises_distance_from_the_caller() -> None:
    holders = [
        holder("near", zone="r1-a", region="r1", latency_ewma=0.030),
        holder("region", zone="r1-b", region="r1", latency_ewma=0.022),
        holder("far", zone="r2-a", region="r2", latency_ewma=0.010),
    ]
    strategy = make_request_strategy("latency_aware", zone_penalty_s=0.005, region_penalty_s=0.05)
    strategy.update(holders)
    assert strategy.choose(RequestContext(zone="r1-a", region="r1")) == "region"
    assert strategy.choose(RequestContext(zone="r2-a", region="r2")) == "far"
    assert strategy.choose() == "far"
    strategy.finished("region", 0.1)
    assert strategy.choose(RequestContext(zone="r1-a", region="r1")) == "near"


@settings(max_examples=100, deadline=None)
@given(
    latencies=st.lists(st.sampled_from((0.001, 0.01, 0.02, 0.05)), min_size=1, max_size=6),
    ctx=contexts,
    samples=st.lists(st.tuples(st.integers(0, 5), st.sampled_from((0.001, 0.03, 0.2)))),
)
def test_latency_aware_agrees_with_a_scan(
    latencies: list[float],
    ctx: RequestContext,
    samples: list[tuple[int, float]],
) -> None:
    zp, rp = 0.004, 0.03
    holders = [
        holder(f"h{i}", zone=ZONES[i % 3][1], region=ZONES[i % 3][0], latency_ewma=lat)
        for i, lat in enumerate(latencies)
    ]
    strategy = make_request_strategy(
        "latency_aware", alpha=0.5, zone_penalty_s=zp, region_penalty_s=rp
    )
    strategy.update(holders)
    known = list(latencies)
    for who, latency in samples:
        if who < len(known):
            strategy.finished(f"h{who}", latency)
            known[who] = ewma(known[who], latency, 0.5)

    def cost(i: int) -> float:
        h = holders[i]
        penalty = zp if ctx.zone is not None and h.zone != ctx.zone else 0.0
        penalty += rp if ctx.region is not None and h.region != ctx.region else 0.0
        return known[i] + penalty

    chosen = int(strategy.choose(ctx)[1:])
    assert cost(chosen) == pytest.approx(min(cost(i) for i in range(len(known))))


def test_zone_keeps_requests_near_and_spills_when_saturated() -> None:
    holders = [
        holder("a1", zone="r1-a"),
        holder("a2", zone="r1-a"),
        holder("b1", zone="r1-b"),
        holder("c1", zone="r2-a", region="r2"),
    ]
    strategy = make_request_strategy("zone", max_in_flight=1)
    strategy.update(holders)
    here = RequestContext(zone="r1-a", region="r1")
    assert {strategy.choose(here) for _ in range(4)} == {"a1", "a2"}
    assert strategy.choose(RequestContext(zone="r1-c", region="r1")) in {"a1", "a2", "b1"}
    assert strategy.choose(RequestContext(zone="r2-a", region="r2")) == "c1"
    assert strategy.choose(RequestContext(region="r2")) == "c1"
    strategy.started("a1")
    strategy.started("a2")
    assert strategy.choose(here) == "b1"
    strategy.started("b1")
    assert strategy.choose(here) == "c1"


def test_sticky_keeps_a_session_on_its_holder_and_moves_about_one_nth() -> None:
    keys = [f"session-{i}" for i in range(10_000)]
    strategy = make_request_strategy("sticky")
    strategy.update([holder(f"h{i}") for i in range(10)])
    before = {k: strategy.choose(RequestContext(key=k)) for k in keys}
    assert all(strategy.choose(RequestContext(key=k)) == before[k] for k in keys[:100])
    strategy.update([holder(f"h{i}") for i in range(11)])
    after = {k: strategy.choose(RequestContext(key=k)) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert 0.05 <= len(moved) / len(keys) <= 0.15
    assert {after[k] for k in moved} == {"h10"}


def test_sticky_without_a_key_takes_holders_in_turn() -> None:
    strategy = make_request_strategy("sticky")
    strategy.update([holder("a"), holder("b")])
    assert [strategy.choose() for _ in range(4)] == ["a", "b", "a", "b"]


def test_sticky_over_few_available_holders_uses_their_own_ring() -> None:
    holders = [holder(f"h{i}", quarantined=i % 10 != 0) for i in range(50)]
    strategy = make_request_strategy("sticky", replicas=30)
    strategy.update(holders)
    ring = HashRing(30)
    ring.set_members(h.agent_id for h in holders if not h.node.quarantined)
    for i in range(300):
        assert strategy.choose(RequestContext(key=f"k{i}")) == ring.lookup(f"k{i}")


def feed(
    strategy: RequestStrategy,
    requests: int,
    latency: dict[str, float],
    failing: frozenset[str] = frozenset(),
) -> Counter[str]:
    """Send ``requests`` one at a time, each answered after its holder's latency."""
    picks: Counter[str] = Counter()
    for _ in range(requests):
        chosen = strategy.choose()
        strategy.started(chosen)
        strategy.finished(chosen, latency[chosen], chosen not in failing)
        picks[chosen] += 1
    return picks


def test_adaptive_shifts_traffic_away_from_a_slow_holder() -> None:
    strategy = make_request_strategy("adaptive", rng=random.Random(1))
    strategy.update([holder("a"), holder("b"), holder("c")])
    warm = feed(strategy, 300, {"a": 0.01, "b": 0.01, "c": 0.01})
    assert min(warm.values()) > 60
    picks = feed(strategy, 2_000, {"a": 0.01, "b": 0.01, "c": 0.1})
    assert picks["c"] / 2_000 < 0.1
    assert picks["a"] > 600
    assert picks["b"] > 600


def test_adaptive_shifts_traffic_away_from_an_erroring_holder_and_back() -> None:
    strategy = make_request_strategy("adaptive", rng=random.Random(2))
    strategy.update([holder("a"), holder("b")])
    same = {"a": 0.01, "b": 0.01}
    feed(strategy, 200, same)
    picks = feed(strategy, 2_000, same, failing=frozenset({"b"}))
    assert picks["b"] / 2_000 < 0.1
    recovered = feed(strategy, 4_000, same)
    assert recovered["b"] / 4_000 > 0.3  # exploration saw it succeed again


def test_adaptive_explores_holders_it_has_not_measured() -> None:
    strategy = make_request_strategy("adaptive", rng=random.Random(3), min_samples=5)
    measured = [holder(f"m{i}", latency_ewma=0.001, samples=100) for i in range(4)]
    strategy.update([*measured, holder("new")])
    picks = feed(strategy, 400, {**{f"m{i}": 0.001 for i in range(4)}, "new": 0.5})
    assert 5 <= picks["new"] <= 40


def test_adaptive_counts_in_flight_like_peak_ewma() -> None:
    strategy = make_request_strategy("adaptive", rng=random.Random(0), explore=0.0)
    strategy.update(
        [holder("a", latency_ewma=0.01, samples=50), holder("b", latency_ewma=0.015, samples=50)]
    )
    assert strategy.choose() == "a"
    strategy.started("a")  # a: 0.01 * 2 > b: 0.015
    assert strategy.choose() == "b"


# --- RequestStats -----------------------------------------------------------------


def test_request_stats_track_in_flight_latency_and_errors() -> None:
    stats = RequestStats(alpha=0.5)
    assert stats.get("a") == HolderStats()
    stats.started("a")
    stats.started("a")
    assert stats.get("a").in_flight == 2
    stats.finished("a", 0.1, ok=True)
    stats.finished("a", 0.3, ok=False)
    stats.finished("a", None, ok=False)  # nothing left in flight: stays at 0
    got = stats.get("a")
    assert got.in_flight == 0
    assert got.latency_ewma == pytest.approx(0.2)
    assert got.error_rate_ewma == pytest.approx(0.75)
    assert got.samples == 3
    node = NodeView("n1")
    view = stats.view("a", node, breaker=BreakerState.HALF_OPEN, weight=2.0)
    assert view == HolderView("a", node, 0, got.latency_ewma, 0.75, BreakerState.HALF_OPEN, 2.0, 3)


def test_request_stats_are_bounded_and_forget_holders_that_left() -> None:
    stats = RequestStats(max_holders=3, error_alpha=0.1)
    for name in "abc":
        stats.started(name)
    stats.finished("a", 0.1)  # a is now the most recently reported
    stats.started("d")
    assert "b" not in stats
    assert len(stats) == 3
    stats.retain(["a", "x"])
    assert "a" in stats
    assert len(stats) == 1


def test_stats_feed_a_rebuilt_strategy() -> None:
    stats = RequestStats()
    strategy = make_request_strategy("latency_aware")
    nodes = {name: NodeView(f"node-{name}") for name in "ab"}
    for latency, name in ((0.5, "a"), (0.01, "b")):
        stats.started(name)
        stats.finished(name, latency)
    strategy.update(stats.view(name, node) for name, node in nodes.items())
    assert strategy.choose() == "b"


def test_options_are_checked() -> None:
    assert len(REQUEST_STRATEGIES) == 9
    for name in REQUEST_STRATEGIES:
        assert make_request_strategy(name).name == name
    for name, options in [
        ("nearest", {}),
        ("round_robin", {"replicas": 3}),
        ("round_robin", {"max_in_flight": 0}),
        ("round_robin", {"max_in_flight": True}),
        ("adaptive", {"explore": 1.5}),
        ("adaptive", {"alpha": 0.0}),
        ("adaptive", {"prior_s": 0.0}),
        ("adaptive", {"min_samples": -1}),
        ("adaptive", {"error_penalty": -1.0}),
        ("latency_aware", {"zone_penalty_s": -1.0}),
        ("sticky", {"replicas": 0}),
    ]:
        with pytest.raises(ConfigurationError):
            make_request_strategy(name, **options)
    with pytest.raises(ConfigurationError):
        RequestStats(alpha=2.0)
    with pytest.raises(ConfigurationError):
        RequestStats(max_holders=0)


def test_ewma_takes_the_first_sample_as_is() -> None:
    assert ewma(None, 0.3, 0.2) == 0.3
    assert ewma(1.0, 0.0, 0.25) == 0.75


def _holder(agent_id: str, node_id: str, *, load: float = 0.0, in_flight: int = 0) -> HolderView:
    return HolderView(agent_id, NodeView(node_id, load=load), in_flight=in_flight)


def test_steer_passes_over_suspected_nodes_while_another_is_heard() -> None:
    holders = [_holder("a", "n1"), _holder("b", "n2"), _holder("c", "n3")]
    shaped = steer(holders, {"n2"}, shed_load=0.95, max_in_flight=None)
    assert [h.node.health for h in shaped] == [Health.HEALTHY, Health.UNHEALTHY, Health.HEALTHY]
    everyone = steer(holders, {"n1", "n2", "n3"}, shed_load=0.95, max_in_flight=None)
    assert all(h.node.health is Health.HEALTHY for h in everyone)  # never empties the choice


def test_steer_marks_holders_on_loaded_nodes_saturated() -> None:
    holders = [_holder("a", "n1", load=0.96, in_flight=3), _holder("b", "n2", load=0.5)]
    shaped = steer(holders, (), shed_load=0.95, max_in_flight=8)
    assert [h.in_flight for h in shaped] == [8, 0]
    assert steer(holders, (), shed_load=0.95, max_in_flight=None) == holders


def test_tightened_scales_both_thresholds_with_floors() -> None:
    assert tightened(1024, 0.95, 0.5) == (512, 0.475)
    assert tightened(1, 0.06, 0.5) == (1, 0.05)
    assert tightened(None, 0.95, 0.5) == (None, 0.475)
    with pytest.raises(ConfigurationError):
        tightened(10, 0.9, 0)
