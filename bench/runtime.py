"""Single-node runtime benchmark: cast throughput, call latency, idle memory, spawn rate.

Every figure that is a speed is reported next to the raw layer underneath measured in the
same process and loop (a bounded ``asyncio.Queue`` producer/consumer), because this machine
is shared and absolute numbers drift. Each measurement is repeated and the median kept.
The path measured is the default one a user gets: ``Signal(...)`` creation, ``node.cast``,
routing through the trie, params validation, the action, and the validated state change.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import psutil
from pydantic import BaseModel

from agentcluster import Action, Agent, LocalNode, Signal

QUEUE_SIZE = 1024


class Inc(Action):
    """Add n to the counter."""

    class Params(BaseModel):
        n: int = 1

    async def run(self, params: Inc.Params, ctx: Any) -> Any:
        return None, ctx.set(count=ctx.state.count + params.n)


class Get(Action):
    """Read the counter."""

    async def run(self, params: Any, ctx: Any) -> int:
        return int(ctx.state.count)


class Counter(Agent):
    class State(BaseModel):
        count: int = 0

    routes = {"bench.inc": Inc, "bench.get": Get}
    mailbox_size = QUEUE_SIZE


async def queue_rate(n: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue(QUEUE_SIZE)
    total = 0

    async def consume() -> None:
        nonlocal total
        for _ in range(n):
            total += await queue.get()

    start = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for _ in range(n):
        await queue.put(1)
    await consumer
    elapsed = time.perf_counter() - start
    assert total == n
    return n / elapsed


async def cast_rate(node: LocalNode, agent_id: str, n: int) -> float:
    before = await node.call(agent_id, Signal("bench.get"))
    start = time.perf_counter()
    for _ in range(n):
        await node.cast(agent_id, Signal("bench.inc", {"n": 1}))
    after = await node.call(agent_id, Signal("bench.get"))
    elapsed = time.perf_counter() - start
    assert after - before == n, (before, after, n)
    return n / elapsed


async def call_latencies(node: LocalNode, agent_id: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await node.call(agent_id, Signal("bench.inc", {"n": 1}))
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples


async def spawn(node: LocalNode, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await node.start_agent(Counter, f"idle-{i}")
    return n / (time.perf_counter() - start)


def _pct(samples: list[float], q: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * q))]


async def _measure(runs: int, casts: int, calls: int, agents: int) -> dict[str, Any]:
    queue_rates, cast_rates, ratios = [], [], []
    async with LocalNode("bench") as node:
        await node.start_agent(Counter, "counter")
        await cast_rate(node, "counter", casts // 10)  # warm-up
        for _ in range(runs):
            q = await queue_rate(casts)
            c = await cast_rate(node, "counter", casts)
            queue_rates.append(q)
            cast_rates.append(c)
            ratios.append(c / q)
        await call_latencies(node, "counter", calls // 10)
        lat = await call_latencies(node, "counter", calls)

    # Idle agents: RSS growth (what the OS sees) and traced Python allocations, separately,
    # so that tracing does not slow the spawn rate measurement.
    gc.collect()
    process = psutil.Process()
    async with LocalNode("bench-spawn") as node:
        rss_before = process.memory_info().rss
        spawn_rate = await spawn(node, agents)
        gc.collect()
        rss_after = process.memory_info().rss
        assert len(node) == agents
        node_spawned = len(node)
    async with LocalNode("bench-trace") as node:
        sample = min(agents, 20_000)
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        await spawn(node, sample)
        traced = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
    return {
        "local_cast_per_s": round(statistics.median(cast_rates)),
        "asyncio_queue_per_s": round(statistics.median(queue_rates)),
        "cast_ratio": round(statistics.median(ratios), 4),
        "call_p50_us": round(_pct(lat, 0.50) * 1e6, 2),
        "call_p99_us": round(_pct(lat, 0.99) * 1e6, 2),
        "idle_agent_kb": round((rss_after - rss_before) / node_spawned / 1024, 3),
        "idle_agent_traced_kb": round(traced / sample / 1024, 3),
        "spawn_per_s": round(spawn_rate),
        "agents_spawned": node_spawned,
        "casts_per_run": casts,
        "runs": runs,
        "calls_sampled": calls,
    }


def run(loop_name: str, runs: int, casts: int, calls: int, agents: int) -> dict[str, Any]:
    factory = _loop_factory(loop_name)
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(_measure(runs, casts, calls, agents))
    result["loop"] = loop_name
    return result


def profile_cast(n: int) -> str:
    """Where the time of the cast path goes: the top functions by own time."""

    async def go() -> None:
        async with LocalNode("bench-profile") as node:
            await node.start_agent(Counter, "counter")
            await cast_rate(node, "counter", n)

    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(go())
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(20)
    return out.getvalue()


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "asyncio":
        return None
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"unknown loop {name!r}")
