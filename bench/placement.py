"""Decision cost of the placement and request strategies (``core.placement``,
``core.request_balance``) at 10, 100 and 1,000 nodes.

Each strategy is measured on a realistic snapshot: nodes spread over three regions of
three zones, varied capacity (cpu, memory_mb, network_mbps, gpu on a fifth of them) with
varied reservations, load and agent counts, a few degraded, unhealthy or quarantined
nodes and a few open or half-open breakers. Placement requests cycle through a dozen
shapes (cpu, memory, a quarter needing a gpu) from callers in every zone with distinct
sticky keys; request contexts carry distinct session keys and zones. Request strategies
run with ``max_in_flight=32`` so the load-shedding checks are part of the cost.

Figures, each the median of several repeats of many calls (``time.perf_counter_ns``,
loop included):

- ``decision_us_<strategy>_<n>`` / ``decision_us_request_<strategy>_<n>``: one ``choose``.
- ``cold_decision_us_<strategy>_<n>``: the first placement ``choose`` after an ``update``,
  when the request's shape is filtered afresh (what a caller that updates before every
  placement pays on top of the update).
- ``update_us_<strategy>_<n>`` / ``update_us_request_<strategy>_<n>``: one ``update`` after
  one node's vitals (placement) or one holder's latency (requests) changed.
- ``join_us_sticky_<n>`` / ``join_us_request_sticky_<n>``: one ``update`` after a node or
  holder joined or left (the hash ring changes).
- ``incremental_us_request_<strategy>_<n>``: one request's bookkeeping, ``started`` then
  ``finished`` with a latency sample.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from agentcluster.core.circuit_breaker import BreakerState
from agentcluster.core.node_view import (
    Health,
    HolderView,
    NodeView,
    PlacementRequest,
    RequestContext,
)
from agentcluster.core.placement import PLACEMENT_STRATEGIES, make_placement
from agentcluster.core.request_balance import REQUEST_STRATEGIES, make_request_strategy

SIZES = (10, 100, 1000)
GOAL_US = 10.0
ADAPTIVE_GOAL_US = 50.0
MAX_IN_FLIGHT = 32

_ZONES = [(f"r{r}", f"r{r}-z{z}") for r in range(3) for z in range(3)]

REQUEST_OPTIONS: dict[str, dict[str, object]] = {
    "latency_aware": {"zone_penalty_s": 0.005, "region_penalty_s": 0.05},
}


def node_views(count: int, rng: random.Random) -> list[NodeView]:
    """``count`` nodes with varied capacity, reservations, vitals, health and breakers."""
    views = []
    for i in range(count):
        region, zone = _ZONES[i % len(_ZONES)]
        gpu = i % 5 == 0
        capacity = {
            "cpu": float(rng.choice((4, 8, 16, 32))),
            "memory_mb": float(rng.choice((8192, 16384, 32768, 65536))),
            "network_mbps": float(rng.choice((1000, 10000))),
        }
        if gpu:
            capacity["gpu"] = float(rng.randint(1, 4))
        reserved = {r: c * rng.uniform(0.0, 0.97) for r, c in capacity.items()}
        if gpu:
            reserved["gpu"] = float(rng.randint(0, int(capacity["gpu"])))
        if i == 0:  # the leader: an empty, healthy gpu node, so every request fits somewhere
            capacity["gpu"] = 4.0
            reserved = {}
        capabilities = {"general"}
        if gpu:
            capabilities.add("gpu")
        if rng.random() < 0.5:
            capabilities.add("ssd")
        draw = rng.random() if i else 1.0
        health = (
            Health.UNHEALTHY if draw < 0.01 else Health.DEGRADED if draw < 0.06 else Health.HEALTHY
        )
        draw = rng.random() if i else 1.0
        breaker = (
            BreakerState.OPEN
            if draw < 0.02
            else BreakerState.HALF_OPEN
            if draw < 0.04
            else BreakerState.CLOSED
        )
        views.append(
            NodeView(
                id=f"node-{i:04d}",
                labels={"zone": zone, "region": region},
                capabilities=frozenset(capabilities),
                capacity=capacity,
                reserved=reserved,
                agent_count=rng.randint(0, 200),
                load=rng.random(),
                in_flight=rng.randint(0, 50),
                latency_ewma=rng.uniform(0.001, 0.05),
                error_rate_ewma=rng.random() * 0.05,
                health=health,
                quarantined=i > 0 and rng.random() < 0.01,
                breaker=breaker,
                weight=float(rng.choice((1, 1, 2, 4))),
            )
        )
    return views


def placement_requests(views: Sequence[NodeView], rng: random.Random) -> list[PlacementRequest]:
    leader = views[0].id
    requests = []
    for k in range(256):
        region, zone = rng.choice(_ZONES)
        needs_gpu = k % 4 == 0
        resources = {"cpu": rng.choice((0.5, 1.0, 2.0)), "memory_mb": rng.choice((512.0, 1024.0))}
        if needs_gpu:
            resources["gpu"] = 1.0
        requests.append(
            PlacementRequest(
                agent_id=f"agent-{k}",
                resources=resources,
                capabilities=frozenset({"gpu"}) if needs_gpu else frozenset(),
                zone=zone,
                region=region,
                local=rng.choice(views).id,
                leader=leader,
            )
        )
    return requests


def holder_views(views: Sequence[NodeView], rng: random.Random) -> list[HolderView]:
    """One holder per node; some never measured, a few behind their own open breaker."""
    holders = []
    for i, node in enumerate(views):
        measured = rng.random() < 0.9
        holders.append(
            HolderView(
                agent_id=f"worker-{i:04d}",
                node=node,
                in_flight=rng.randint(0, 8),
                latency_ewma=rng.uniform(0.001, 0.05) if measured else None,
                error_rate_ewma=rng.random() * 0.05 if measured else 0.0,
                breaker=BreakerState.OPEN if rng.random() < 0.02 else BreakerState.CLOSED,
                weight=float(rng.choice((1, 2, 3))),
                samples=rng.randint(5, 500) if measured else 0,
            )
        )
    return holders


def request_contexts(rng: random.Random) -> list[RequestContext]:
    contexts = []
    for k in range(256):
        region, zone = rng.choice(_ZONES)
        contexts.append(RequestContext(key=f"session-{k}", zone=zone, region=region))
    return contexts


def _per_call_us(run: Callable[[], None], calls: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        run()
        samples.append((time.perf_counter_ns() - start) / calls / 1000)
    return round(statistics.median(samples), 3)


def _changed_views(views: list[NodeView], rng: random.Random) -> list[NodeView]:
    changed = list(views)
    i = rng.randrange(len(views))
    node = changed[i]
    changed[i] = replace(
        node,
        load=rng.random(),
        agent_count=node.agent_count + 1,
        reserved={r: a * 0.9 for r, a in node.reserved.items()},
    )
    return changed


def measure_placement(
    name: str, count: int, calls: int, repeats: int, updates: int
) -> dict[str, float]:
    rng = random.Random(f"placement/{name}/{count}")
    views = node_views(count, rng)
    changed = _changed_views(views, rng)
    requests = placement_requests(views, rng)
    batch = [requests[k % len(requests)] for k in range(calls)]
    strategy = make_placement(name, rng=random.Random(7))
    strategy.update(views)
    choose = strategy.choose

    def decide() -> None:
        for request in batch:
            choose(request)

    decide()  # warm-up: the shapes' memos fill once per snapshot
    out = {f"decision_us_{name}_{count}": _per_call_us(decide, calls, repeats)}

    def update() -> None:
        for k in range(updates):
            strategy.update(changed if k % 2 else views)

    out[f"update_us_{name}_{count}"] = _per_call_us(update, updates, repeats)

    def cold() -> None:
        for k in range(updates):
            strategy.update(changed if k % 2 else views)
            start = time.perf_counter_ns()
            choose(requests[k % len(requests)])
            timings.append(time.perf_counter_ns() - start)

    cold_samples = []
    for _ in range(repeats):
        timings: list[int] = []
        cold()
        cold_samples.append(statistics.mean(timings) / 1000)
    out[f"cold_decision_us_{name}_{count}"] = round(statistics.median(cold_samples), 3)
    if name == "sticky":
        smaller = views[:-1]

        def join() -> None:
            for k in range(updates):
                strategy.update(smaller if k % 2 else views)

        out[f"join_us_{name}_{count}"] = _per_call_us(join, updates, repeats)
    return out


def measure_request(
    name: str, count: int, calls: int, repeats: int, updates: int
) -> dict[str, float]:
    rng = random.Random(f"request/{name}/{count}")
    holders = holder_views(node_views(count, rng), rng)
    changed = list(holders)
    changed[0] = replace(changed[0], latency_ewma=0.2, samples=changed[0].samples + 1)
    contexts = request_contexts(rng)
    batch = [contexts[k % len(contexts)] for k in range(calls)]
    options = dict(REQUEST_OPTIONS.get(name, {}))
    strategy = make_request_strategy(
        name, rng=random.Random(7), max_in_flight=MAX_IN_FLIGHT, **options
    )
    strategy.update(holders)
    choose = strategy.choose

    def decide() -> None:
        for ctx in batch:
            choose(ctx)

    decide()
    prefix = f"request_{name}_{count}"
    out = {f"decision_us_{prefix}": _per_call_us(decide, calls, repeats)}

    ids = list(strategy.available)
    pairs = [ids[k % len(ids)] for k in range(calls)]
    started, finished = strategy.started, strategy.finished

    def bookkeeping() -> None:
        for agent_id in pairs:
            started(agent_id)
            finished(agent_id, 0.01, True)

    out[f"incremental_us_{prefix}"] = _per_call_us(bookkeeping, calls, repeats)

    def update() -> None:
        for k in range(updates):
            strategy.update(changed if k % 2 else holders)

    out[f"update_us_{prefix}"] = _per_call_us(update, updates, repeats)
    if name == "sticky":
        smaller = holders[:-1]

        def join() -> None:
            for k in range(updates):
                strategy.update(smaller if k % 2 else holders)

        out[f"join_us_{prefix}"] = _per_call_us(join, updates, repeats)
    return out


def measure_decisions(quick: bool) -> dict[str, float]:
    """Every figure named in the module docstring, for every strategy and size."""
    calls, repeats = (2_000, 3) if quick else (20_000, 7)
    results: dict[str, float] = {}
    for count in SIZES:
        updates = max(4, (40 if quick else 400) // max(1, count // 10))
        for name in PLACEMENT_STRATEGIES:
            results.update(measure_placement(name, count, calls, repeats, updates))
        for name in REQUEST_STRATEGIES:
            results.update(measure_request(name, count, calls, repeats, updates))
    return results


def goal_us(strategy: str) -> float:
    """The decision-cost goal at 100 nodes."""
    return ADAPTIVE_GOAL_US if strategy == "adaptive" else GOAL_US


def table(results: dict[str, float]) -> str:
    """A Markdown table: one row per strategy, decision and update cost per size."""
    header = (
        "| strategy | "
        + " | ".join(f"decision µs @{n}" for n in SIZES)
        + " | "
        + " | ".join(f"update µs @{n}" for n in SIZES)
        + " | cold decision µs @100 | incremental µs @100 | goal @100 |"
    )
    lines = [header, "|" + "---|" * (2 * len(SIZES) + 4)]
    rows = [("", name) for name in PLACEMENT_STRATEGIES]
    rows += [("request_", name) for name in REQUEST_STRATEGIES]
    for prefix, name in rows:
        decisions = [results[f"decision_us_{prefix}{name}_{n}"] for n in SIZES]
        updates = [results[f"update_us_{prefix}{name}_{n}"] for n in SIZES]
        incremental = results.get(f"incremental_us_{prefix}{name}_100")
        cold = results.get(f"cold_decision_us_{prefix}{name}_100")
        goal = goal_us(name)
        verdict = "met" if decisions[1] < goal else "MISSED"
        lines.append(
            f"| {'request ' if prefix else ''}{name} | "
            + " | ".join(f"{d:g}" for d in decisions)
            + " | "
            + " | ".join(f"{u:g}" for u in updates)
            + f" | {'' if cold is None else f'{cold:g}'}"
            + f" | {'' if incremental is None else f'{incremental:g}'} | {verdict} (< {goal:g}) |"
        )
    joins = [key for key in sorted(results) if key.startswith("join_us_")]
    if joins:
        lines.append("")
        lines.extend(f"- `{key}`: {results[key]:g}" for key in joins)
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(measure_decisions("--quick" in sys.argv[1:])))


async def _balanced_calls(calls: int, repeats: int) -> dict[str, float]:
    from agentcluster import Action, Agent, Capability, Signal
    from agentcluster.cluster import Cluster

    class Pong(Action):
        """Answer at once."""

        async def run(self, params: object, ctx: object) -> object:
            return {"ok": True}

    class Pinged(Agent):
        routes = {"bench.ping": Pong}
        capabilities = ["bench"]

    by_id: list[float] = []
    balanced: list[float] = []
    async with Cluster.local(nodes=3) as cluster:
        for node in ("n2", "n3"):
            await cluster.start_agent(Pinged, f"pinged-{node}", node=node)
        for _ in range(min(500, calls)):
            await cluster.call("pinged-n2", Signal("bench.ping"))
            await cluster.call(Capability("bench"), Signal("bench.ping"))
        for _ in range(repeats):
            ids: list[float] = []
            caps: list[float] = []
            for _ in range(calls):
                began = time.perf_counter_ns()
                await cluster.call("pinged-n2", Signal("bench.ping"))
                ids.append(time.perf_counter_ns() - began)
                began = time.perf_counter_ns()
                await cluster.call(Capability("bench"), Signal("bench.ping"))
                caps.append(time.perf_counter_ns() - began)
            by_id.append(statistics.median(ids) / 1000)
            balanced.append(statistics.median(caps) / 1000)
    id_us, cap_us = statistics.median(by_id), statistics.median(balanced)
    return {
        "call_by_id_p50_us": round(id_us, 1),
        "call_by_capability_p50_us": round(cap_us, 1),
        "balancing_overhead_us": round(cap_us - id_us, 1),
    }


def measure_balanced_calls(quick: bool) -> dict[str, float]:
    """What request balancing adds to a call on the default path: ``cluster.call`` by id
    against ``cluster.call(Capability(...))`` (strategy, breakers, bookkeeping) to agents
    on other nodes of a ``Cluster.local`` (memory backend), alternating, same run."""
    import asyncio

    calls, repeats = (500, 2) if quick else (3000, 5)
    return asyncio.run(_balanced_calls(calls, repeats))
