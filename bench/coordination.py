"""Coordination benchmark: a lock cycle and a barrier against one raw key-value
compare-and-set, in one run, on one local nats-server (started here, stopped by PID).

This process joins the cluster as node ``bc1`` (``Cluster.connect(url, node_id="bc1")``)
and measures, in interleaved chunks so drift on this shared machine hits every figure alike:

- ``lock``: one ``acquire_lock`` + ``release`` cycle of one lock name, uncontended, p50 /
  p99. Steady state is two compare-and-sets (the node remembers the revision of its own
  ``free`` record, so acquiring needs no read first).
- ``raw_kv_cas``: one ``kv.update(key, value, revision)`` at the current revision on the
  ``coordination`` bucket itself, through the node's own transport ``Connection`` — the
  floor under each lock write. ``nats_py_kv_cas`` is the same through a plain nats-py
  connection (``KeyValue.update(last=...)``).
- ``barrier``: three participants in this one process on the same barrier id, round after
  round (its generations). ``barrier_p50_us`` is the release latency: two participants
  have arrived and are waiting on their watches (given 20 ms to set them up, during which
  the connection is kept busy with reads, as the back-to-back baseline is: an idle
  connection's first request costs about twice as much here); the time from the third's
  ``barrier`` call until every one of the three has returned (its read and its
  compare-and-set, then the watch delivering that write to the two waiters).
  ``barrier_round_p50_us`` is a whole round: the three called at once, until all have
  returned (arrival conflicts, each waiter's watch set up, the releasing delivery).

Ratios are over ``raw_kv_cas_p50_us``. Goal: ``lock_latency_ratio`` <= 3.

Run it alone with ``python -m bench.coordination [--quick] [--loop asyncio|uvloop]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from agentcluster.cluster import Cluster
from agentcluster.cluster.coordination.barrier import barrier, barrier_key
from agentcluster.cluster.coordination.locks import acquire_lock
from agentcluster.cluster.node import ClusterNode
from agentcluster.core.coordination import BarrierRecord
from agentcluster.transport.interface import KeyValue

US = 1e6
PARTICIPANTS = ("p1", "p2", "p3")
GOALS = {"lock_latency_ratio": ("<=", 3.0)}


@dataclass(frozen=True)
class Sizes:
    chunks: int
    cycles: int
    barriers: int


FULL = Sizes(chunks=5, cycles=1000, barriers=60)
QUICK = Sizes(chunks=2, cycles=150, barriers=15)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _raw_cas(kv: KeyValue, n: int) -> list[float]:
    key = "bench.raw-cas"
    revision = await kv.put(key, b"0")
    samples = []
    for i in range(n):
        start = time.perf_counter()
        revision = await kv.update(key, str(i).encode(), revision)
        samples.append(time.perf_counter() - start)
    return samples


async def _nats_py_cas(url: str, n: int) -> list[float]:
    import nats

    nc = await nats.connect(url, name="bench-coordination-raw")
    try:
        kv = await nc.jetstream().key_value("coordination")
        key = "bench.nats-py-cas"
        revision = await kv.put(key, b"0")
        samples = []
        for i in range(n):
            start = time.perf_counter()
            revision = await kv.update(key, str(i).encode(), last=revision)
            samples.append(time.perf_counter() - start)
        return samples
    finally:
        await nc.close()


async def _lock_cycles(node: ClusterNode, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        lock = await acquire_lock(node, "bench", owner="bench", timeout=5)
        await lock.release()
        samples.append(time.perf_counter() - start)
    return samples


async def _arrived(kv: KeyValue, want: int, generation: int) -> None:
    """Until the barrier's round ``generation`` shows ``want`` arrivals (bounded)."""
    deadline = time.perf_counter() + 5.0
    while time.perf_counter() < deadline:
        entry = await kv.get(barrier_key("bench"))
        if entry is not None:
            record = BarrierRecord.from_bytes(entry.value)
            if record.generation == generation and len(record.arrived) >= want:
                return
        await asyncio.sleep(0.001)
    raise TimeoutError(f"barrier round {generation}: {want} arrivals not seen within 5 s")


async def _busy(kv: KeyValue, seconds: float) -> None:
    """Pass ``seconds`` keeping the connection busy with reads: on this machine the first
    request after a few idle milliseconds costs about twice a busy one (the server and the
    client wake up), which the back-to-back baseline never pays."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        await kv.get(barrier_key("bench"))


async def _barrier_release(node: ClusterNode, kv: KeyValue, n: int, start_gen: int) -> list[float]:
    samples = []
    for i in range(n):
        early = [
            asyncio.create_task(barrier(node, "bench", PARTICIPANTS, participant=p, timeout=10))
            for p in PARTICIPANTS[:2]
        ]
        await _arrived(kv, 2, start_gen + i)
        await _busy(kv, 0.02)  # let both waiters' watches be set up after their arrival
        start = time.perf_counter()
        await barrier(node, "bench", PARTICIPANTS, participant=PARTICIPANTS[2], timeout=10)
        await asyncio.gather(*early)
        samples.append(time.perf_counter() - start)
    return samples


async def _barrier_rounds(node: ClusterNode, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await asyncio.gather(
            *(barrier(node, "bench", PARTICIPANTS, participant=p, timeout=10) for p in PARTICIPANTS)
        )
        samples.append(time.perf_counter() - start)
    return samples


async def _generation(kv: KeyValue) -> int:
    entry = await kv.get(barrier_key("bench"))
    return 0 if entry is None else BarrierRecord.from_bytes(entry.value).generation


async def measure_locks(quick: bool) -> dict[str, float]:
    """Every figure of the module docstring, measured on the running loop."""
    from agentcluster.testing.nats_server import NatsServer, find_nats_server

    if find_nats_server() is None:
        raise SystemExit(
            "the coordination benchmark needs nats-server: apt-get install nats-server"
        )
    sizes = QUICK if quick else FULL
    raw: list[float] = []
    nats_py: list[float] = []
    lock: list[float] = []
    release: list[float] = []
    rounds: list[float] = []
    with NatsServer() as server:
        async with Cluster.connect(server.url, node_id="bc1") as cluster:
            node = cluster.node("bc1")
            assert node.liveness is not None
            assert node.liveness.buckets is not None
            kv = node.liveness.buckets.coordination
            await _raw_cas(kv, 100)  # warm-up
            await _nats_py_cas(server.url, 100)
            await _lock_cycles(node, 100)
            await _barrier_rounds(node, 3)
            for _ in range(sizes.chunks):
                raw.extend(await _raw_cas(kv, sizes.cycles))
                nats_py.extend(await _nats_py_cas(server.url, sizes.cycles))
                lock.extend(await _lock_cycles(node, sizes.cycles))
                generation = await _generation(kv)
                release.extend(await _barrier_release(node, kv, sizes.barriers, generation + 1))
                rounds.extend(await _barrier_rounds(node, sizes.barriers))
    out = {
        "lock_p50_us": round(_percentile(lock, 0.5) * US, 1),
        "lock_p99_us": round(_percentile(lock, 0.99) * US, 1),
        "raw_kv_cas_p50_us": round(_percentile(raw, 0.5) * US, 1),
        "raw_kv_cas_p99_us": round(_percentile(raw, 0.99) * US, 1),
        "nats_py_kv_cas_p50_us": round(_percentile(nats_py, 0.5) * US, 1),
        "barrier_p50_us": round(_percentile(release, 0.5) * US, 1),
        "barrier_p99_us": round(_percentile(release, 0.99) * US, 1),
        "barrier_round_p50_us": round(_percentile(rounds, 0.5) * US, 1),
        "barrier_round_p99_us": round(_percentile(rounds, 0.99) * US, 1),
        "lock_cycles": float(len(lock)),
        "barrier_rounds": float(len(release) + len(rounds)),
    }
    out["lock_latency_ratio"] = round(out["lock_p50_us"] / out["raw_kv_cas_p50_us"], 3)
    out["barrier_ratio"] = round(out["barrier_p50_us"] / out["raw_kv_cas_p50_us"], 3)
    out["barrier_round_ratio"] = round(out["barrier_round_p50_us"] / out["raw_kv_cas_p50_us"], 3)
    out["lock_mean_us"] = round(statistics.fmean(lock) * US, 1)
    return out


def run(quick: bool, loop: str = "asyncio") -> dict[str, float]:
    """``measure_locks`` on a fresh loop of that kind (``asyncio`` or ``uvloop``)."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    coro: Awaitable[dict[str, float]] = measure_locks(quick)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures: dict[str, Any] = run(args.quick, args.loop)
    print(json.dumps({"loop": args.loop, **figures}, indent=2))
    for key, (op, goal) in GOALS.items():
        value = figures[key]
        met = value <= goal if op == "<=" else value >= goal
        print(f"{key} = {value} (goal {op} {goal}): {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
