"""Transport benchmark: this transport against raw nats-py, side by side, in one run.

One local nats-server (started here, stopped by PID) serves both paths. For each loop
(standard asyncio, then uvloop) and each repeat, the raw and the transport measurements
run back to back, so drift on this shared machine hits both alike; the median is kept.

- pub/sub: this process publishes N small messages to a subscriber in another process
  (``bench.transport_peer``), which reports on a reply subject when it has all of them;
  throughput is N over the time from the first publish to that report.
- request/reply: sequential requests answered by the other process; p50 and p99.
- key-value compare-and-set: sequential ``update(key, value, revision)``; p50 and p99
  (raw: nats-py's ``KeyValue.update(key, value, last=rev)``).
- memory backend: publish to a subscriber in the same loop, the embedded default's path.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.peers import peer_process

PAYLOAD = b"x" * 128


def peer(url: str, subject: str, mode: str, loop: str) -> Any:
    """The other process, started and stopped by PID."""
    args = ["--url", url, "--subject", subject, "--mode", mode, "--loop", loop]
    return peer_process("bench.transport_peer", args)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- raw nats-py ----------------------------------------------------------------------


async def raw_pubsub(url: str, subject: str, n: int) -> float:
    import nats

    nc = await nats.connect(url, name="bench-raw")
    done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_done(msg: Any) -> None:
        if not done.done():
            done.set_result(msg.data)

    await nc.subscribe(f"{subject}.done", cb=on_done)
    await nc.request(f"{subject}.expect", str(n).encode(), timeout=5)
    start = time.perf_counter()
    for _ in range(n):
        await nc.publish(f"{subject}.pub", PAYLOAD)
    await nc.flush()
    await asyncio.wait_for(done, timeout=120)
    elapsed = time.perf_counter() - start
    await nc.close()
    return n / elapsed


async def raw_request(url: str, subject: str, n: int) -> list[float]:
    import nats

    nc = await nats.connect(url, name="bench-raw")
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await nc.request(f"{subject}.req", PAYLOAD, timeout=5)
        samples.append(time.perf_counter() - start)
    await nc.close()
    return samples


async def raw_kv_cas(url: str, bucket: str, n: int) -> list[float]:
    import nats

    nc = await nats.connect(url, name="bench-raw")
    js = nc.jetstream()
    kv = await js.create_key_value(bucket=bucket, history=1)
    rev = await kv.put("counter", b"0")
    samples = []
    for i in range(n):
        start = time.perf_counter()
        rev = await kv.update("counter", str(i).encode(), last=rev)
        samples.append(time.perf_counter() - start)
    await js.delete_key_value(bucket)
    await nc.close()
    return samples


# --- this transport -------------------------------------------------------------------


async def transport_pubsub(url: str, subject: str, n: int) -> float:
    from agentcluster.transport.interface import Message
    from agentcluster.transport.nats import NatsConfig, connect

    conn = await connect(NatsConfig(servers=[url], name="bench-transport"))
    done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_done(msg: Message) -> None:
        if not done.done():
            done.set_result(msg.data)

    await conn.subscribe(f"{subject}.done", on_done)
    await conn.request(f"{subject}.expect", str(n).encode(), timeout=5)
    start = time.perf_counter()
    for _ in range(n):
        await conn.publish(f"{subject}.pub", PAYLOAD)
    await conn.flush()
    await asyncio.wait_for(done, timeout=120)
    elapsed = time.perf_counter() - start
    await conn.close()
    return n / elapsed


async def transport_request(url: str, subject: str, n: int) -> list[float]:
    from agentcluster.transport.nats import NatsConfig, connect

    conn = await connect(NatsConfig(servers=[url], name="bench-transport"))
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await conn.request(f"{subject}.req", PAYLOAD, timeout=5)
        samples.append(time.perf_counter() - start)
    await conn.close()
    return samples


async def transport_kv_cas(url: str, bucket: str, n: int) -> list[float]:
    from agentcluster.transport.interface import BucketConfig
    from agentcluster.transport.nats import NatsConfig, connect

    conn = await connect(NatsConfig(servers=[url], name="bench-transport"))
    kv = await conn.key_value(BucketConfig(name=bucket))
    rev = await kv.put("counter", b"0")
    samples = []
    for i in range(n):
        start = time.perf_counter()
        rev = await kv.update("counter", str(i).encode(), rev)
        samples.append(time.perf_counter() - start)
    await conn.delete_key_value(bucket)
    await conn.close()
    return samples


async def memory_publish(n: int) -> float:
    from agentcluster.transport.interface import Message
    from agentcluster.transport.memory import MemoryTransport

    hub = MemoryTransport(seed="bench")
    pub = await hub.connect("pub")
    sub = await hub.connect("sub")
    received = 0
    done = asyncio.get_running_loop().create_future()

    async def counted(msg: Message) -> None:
        nonlocal received
        received += 1
        if received == n and not done.done():
            done.set_result(None)

    await sub.subscribe("bench.pub", counted, pending_limit=n + 1)
    start = time.perf_counter()
    for _ in range(n):
        await pub.publish("bench.pub", PAYLOAD)
    await asyncio.wait_for(done, timeout=120)
    elapsed = time.perf_counter() - start
    await pub.close()
    await sub.close()
    return n / elapsed


# --- the run --------------------------------------------------------------------------


def _run_on(loop: str, coro: Awaitable[Any]) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def measure(url: str, loop: str, sizes: dict[str, int]) -> dict[str, float]:
    """Both paths on one loop; each figure the median of ``sizes['runs']`` repeats."""
    rates: dict[str, list[float]] = {"raw": [], "transport": []}
    req: dict[str, list[float]] = {"raw": [], "transport": []}
    cas: dict[str, list[float]] = {"raw": [], "transport": []}
    mem: list[float] = []
    pubsub_fns: dict[str, Callable[[str, str, int], Awaitable[float]]] = {
        "raw": raw_pubsub,
        "transport": transport_pubsub,
    }
    request_fns: dict[str, Callable[[str, str, int], Awaitable[list[float]]]] = {
        "raw": raw_request,
        "transport": transport_request,
    }
    cas_fns: dict[str, Callable[[str, str, int], Awaitable[list[float]]]] = {
        "raw": raw_kv_cas,
        "transport": transport_kv_cas,
    }
    for run in range(sizes["runs"]):
        for mode in ("raw", "transport"):
            subject = f"bench.{loop}.{mode}.{run}"
            with peer(url, subject, mode, loop):
                _run_on(loop, request_fns[mode](url, subject, 200))  # warm-up
                rates[mode].append(_run_on(loop, pubsub_fns[mode](url, subject, sizes["msgs"])))
                req[mode].extend(_run_on(loop, request_fns[mode](url, subject, sizes["requests"])))
            bucket = f"bench_{loop}_{mode}_{run}"
            cas[mode].extend(_run_on(loop, cas_fns[mode](url, bucket, sizes["updates"])))
        mem.append(_run_on(loop, memory_publish(sizes["msgs"])))
    us = 1e6
    out = {
        "raw_pubsub_per_s": round(statistics.median(rates["raw"])),
        "pubsub_per_s": round(statistics.median(rates["transport"])),
        "raw_request_p50_us": round(_percentile(req["raw"], 0.5) * us, 1),
        "raw_request_p99_us": round(_percentile(req["raw"], 0.99) * us, 1),
        "request_p50_us": round(_percentile(req["transport"], 0.5) * us, 1),
        "request_p99_us": round(_percentile(req["transport"], 0.99) * us, 1),
        "raw_kv_cas_p50_us": round(_percentile(cas["raw"], 0.5) * us, 1),
        "raw_kv_cas_p99_us": round(_percentile(cas["raw"], 0.99) * us, 1),
        "kv_cas_p50_us": round(_percentile(cas["transport"], 0.5) * us, 1),
        "kv_cas_p99_us": round(_percentile(cas["transport"], 0.99) * us, 1),
        "memory_publish_per_s": round(statistics.median(mem)),
    }
    out["pubsub_ratio"] = round(out["pubsub_per_s"] / out["raw_pubsub_per_s"], 3)
    out["request_latency_ratio"] = round(out["request_p50_us"] / out["raw_request_p50_us"], 3)
    out["kv_cas_latency_ratio"] = round(out["kv_cas_p50_us"] / out["raw_kv_cas_p50_us"], 3)
    return out


def run(loops: list[str], sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    from agentcluster.testing.nats_server import NatsServer, find_nats_server

    if find_nats_server() is None:
        raise SystemExit("the transport benchmark needs nats-server: apt-get install nats-server")
    with NatsServer() as server:
        return {loop: measure(server.url, loop, sizes) for loop in loops}
