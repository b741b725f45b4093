"""Cluster benchmark: signals between node processes against raw nats-py, the registry cache,
and how fast a killed node is declared dead — in one run, on one local nats-server.

Topology (all on loopback, one nats-server with JetStream started here and stopped by PID):

- **this process** joins the cluster as node ``b1`` (``Cluster.connect(url, node_id="b1")``,
  the default role ``node``) and sends through the public API: ``cluster.cast`` and
  ``cluster.call``;
- **node process** ``b2``, a plain ``agentcluster node`` (``NodeProcess``), hosts
  ``workers:Counter`` (``counter-b2``) and ``workers:Echo`` (``echo-b2``);
- **raw peer** (``bench.cluster_peer raw``), the far end of the raw nats-py baselines,
  sent to from a raw nats-py connection of this process.

The pass is made on uvloop (when installed) and again on asyncio, every process on that
loop; the asyncio pass uses nodes ``a1`` / ``a2``. In each repeat the raw and the cluster
measurements run back to back, so drift on this shared machine hits both alike:

- ``call``: sequential ``cluster.call("echo-b2", Signal("echo.ping", ...))``, p50 / p99; raw:
  sequential nats-py ``request`` with a payload the size of the call's envelope, echoed;
- ``cast``: a burst of ``cluster.cast("counter-b2", Signal("counter.add", {"n": 1}))``, then
  a ``counter.read`` call; throughput counts only the signals the counter received, over the
  time from the first cast to the read's answer (casts the node refuses, e.g. with a full
  mailbox, are dead-lettered there and do not count). Raw: the same number of messages,
  each the size of one cast envelope, published one per message to the peer, and the same
  envelopes as JSON arrays of ``RouterConfig.max_batch`` (512) per message, the router's
  batch in a burst; the rate is over the time until the peer reports it has all of them.

Once, on the first loop: the registry's lookup costs with 100k entries loaded through the
real watch (``Cluster.local(nodes=1)``; the entries are written into its ``agents`` bucket
over the memory transport and its registry follows them), per call in a timed loop, next
to a plain ``dict.get`` in the same loop; failure detection: victims (``agentcluster node``
processes on that loop, started five at a time) seen ``alive`` by ``b1``, then ``kill -9``
one at a time, timed on ``b1``'s loop clock from the kill until
``cluster.members()[id].status`` is ``dead``; and a cProfile of the cast and call paths in
this process and in a node process (``bench.cluster_peer profiled-node``, switched on only
for the window measured), which ``python -m bench`` writes into ``cluster.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import logging
import os
import pstats
import random
import signal
import statistics
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcluster import Signal
from agentcluster.cluster import Cluster, wire
from agentcluster.cluster.buckets import AGENTS, bucket_configs
from agentcluster.cluster.registry import agent_key
from agentcluster.cluster.routing import RouterConfig
from agentcluster.core import codec
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.registry import AgentEntry
from agentcluster.core.stamps import WriteStamp
from agentcluster.testing.node_process import NodeProcess
from agentcluster.testing.waiting import eventually
from bench.peers import bench_env, peer_process

ROOT = Path(__file__).resolve().parent.parent
WORKERS = "agentcluster.examples.workers"
BATCH = RouterConfig().max_batch
KILL_GROUP = 5
CAPABILITIES = 100
US = 1e6


@dataclass(frozen=True)
class Sizes:
    runs: int
    calls: int
    casts: int
    kills: int
    agents: int
    profile_casts: int
    profile_calls: int


FULL = Sizes(
    runs=3,
    calls=4000,
    casts=50_000,
    kills=20,
    agents=100_000,
    profile_casts=20_000,
    profile_calls=2000,
)
QUICK = Sizes(
    runs=1, calls=500, casts=10_000, kills=5, agents=20_000, profile_casts=5000, profile_calls=300
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _run_on(loop: str, coro: Awaitable[Any]) -> Any:
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


class LapseCounter(logging.Handler):
    """Counts this process's "lease lapsed" warnings (a busy loop starving its renewals)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "lease lapsed" in record.getMessage():
            self.count += 1


def raw_peer(url: str, subject: str, loop: str) -> Any:
    """The raw baselines' far end, started and stopped by PID."""
    return peer_process(
        "bench.cluster_peer", ["raw", "--url", url, "--subject", subject, "--loop", loop]
    )


def _envelope(kind: wire.Kind, agent_id: str, sig: Signal, now: float) -> bytes:
    """The bytes the router puts on the wire for one signal (for the raw payload sizes)."""
    return wire.signal_frame(kind, agent_id, codec.encode(sig, now))


# --- raw nats-py ----------------------------------------------------------------------


async def raw_request(nc: Any, subject: str, payload: bytes, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await nc.request(f"{subject}.req", payload, timeout=5)
        samples.append(time.perf_counter() - start)
    return samples


async def raw_publish(nc: Any, subject: str, messages: list[bytes], signals: int) -> float:
    """Publish ``messages`` to the peer; signals per second until it reports all arrived."""
    done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_done(msg: Any) -> None:
        if not done.done():
            done.set_result(msg.data)

    sub = await nc.subscribe(f"{subject}.done", cb=on_done)
    await nc.request(f"{subject}.expect", str(signals).encode(), timeout=5)
    name = "one" if len(messages) == signals else "batch"
    start = time.perf_counter()
    for data in messages:
        await nc.publish(f"{subject}.{name}", data)
    await nc.flush()
    await asyncio.wait_for(done, timeout=120)
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return signals / elapsed


# --- the cluster ----------------------------------------------------------------------


async def cluster_calls(cluster: Cluster, agent_id: str, n: int) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await cluster.call(agent_id, Signal("echo.ping", {"seq": i}))
        samples.append(time.perf_counter() - start)
    return samples


async def cluster_cast(cluster: Cluster, agent_id: str, n: int) -> dict[str, float]:
    """A burst of casts; counted at the receiver (``counter.read`` after the burst)."""
    stats = cluster.node(cluster.nodes[0]).router.stats  # type: ignore[union-attr]
    before = await cluster.call(agent_id, Signal("counter.read"))
    queued, batches = stats.envelopes_queued, stats.batches_sent
    start = time.perf_counter()
    for _ in range(n):
        await cluster.cast(agent_id, Signal("counter.add", {"n": 1}))
    sent = time.perf_counter() - start
    after = await cluster.call(agent_id, Signal("counter.read"), timeout=120)
    elapsed = time.perf_counter() - start
    received = after["received"] - before["received"]
    return {
        "per_s": received / elapsed,
        "sent_per_s": n / sent,
        "delivered": received / n,
        "batch": (stats.envelopes_queued - queued) / max(1, stats.batches_sent - batches),
    }


async def measure(
    url: str, node: str, host: str, sizes: Sizes, loop: str, primary: bool
) -> dict[str, Any]:
    """One loop's figures, measured from this process joined as node ``node``."""
    import nats

    subject = f"bench.cluster.{node}"
    counter, echo = f"counter-{host}", f"echo-{host}"
    lapses = LapseCounter()
    logging.getLogger("agentcluster").addHandler(lapses)
    try:
        async with Cluster.connect(url, node_id=node) as cluster:
            nc = await nats.connect(url, name="bench-cluster-raw")
            now = asyncio.get_running_loop().time()
            cast_frame = _envelope(wire.Kind.CAST, counter, Signal("counter.add", {"n": 1}), now)
            call_frame = _envelope(
                wire.Kind.CALL, echo, Signal("echo.ping", {"seq": 0}, deadline=now + 30), now
            )
            one = [cast_frame] * sizes.casts
            batched = [
                b"[" + b",".join([cast_frame] * min(BATCH, sizes.casts - i)) + b"]"
                for i in range(0, sizes.casts, BATCH)
            ]
            await eventually(lambda: cluster.lookup(counter) and cluster.lookup(echo), 10)
            # Warm-up: connections, code paths, the agents' first activation.
            await raw_request(nc, subject, call_frame, 200)
            await cluster_calls(cluster, echo, 200)
            await cluster_cast(cluster, counter, min(5000, sizes.casts))
            req: list[float] = []
            calls: list[float] = []
            raw_one: list[float] = []
            raw_batched: list[float] = []
            casts: list[dict[str, float]] = []
            for _ in range(sizes.runs):
                req.extend(await raw_request(nc, subject, call_frame, sizes.calls))
                calls.extend(await cluster_calls(cluster, echo, sizes.calls))
                raw_one.append(await raw_publish(nc, subject, one, sizes.casts))
                raw_batched.append(await raw_publish(nc, subject, batched, sizes.casts))
                casts.append(await cluster_cast(cluster, counter, sizes.casts))
            await nc.publish(f"{subject}.quit", b"")
            await nc.close()
            out: dict[str, Any] = {
                "raw_request_p50_us": round(_percentile(req, 0.5) * US, 1),
                "raw_request_p99_us": round(_percentile(req, 0.99) * US, 1),
                "call_p50_us": round(_percentile(calls, 0.5) * US, 1),
                "call_p99_us": round(_percentile(calls, 0.99) * US, 1),
                "raw_publish_per_s": round(statistics.median(raw_one)),
                "raw_batched_publish_per_s": round(statistics.median(raw_batched)),
                "cast_per_s": round(statistics.median(c["per_s"] for c in casts)),
                "cast_sent_per_s": round(statistics.median(c["sent_per_s"] for c in casts)),
                "cast_delivered": round(min(c["delivered"] for c in casts), 4),
                "cast_mean_batch": round(statistics.median(c["batch"] for c in casts), 1),
                "cast_envelope_bytes": len(cast_frame),
                "call_envelope_bytes": len(call_frame),
            }
            out["call_latency_ratio"] = round(out["call_p50_us"] / out["raw_request_p50_us"], 3)
            out["cast_ratio"] = round(out["cast_per_s"] / out["raw_publish_per_s"], 3)
            out["cast_batched_ratio"] = round(
                out["cast_per_s"] / out["raw_batched_publish_per_s"], 3
            )
            if primary:
                out.update(await detection(cluster, url, sizes.kills, loop))
                out["profile"] = await profile(cluster, url, sizes, loop)
    finally:
        logging.getLogger("agentcluster").removeHandler(lapses)
    out["measuring_lease_lapses"] = lapses.count
    return out


# --- failure detection ----------------------------------------------------------------


async def detection(cluster: Cluster, url: str, kills: int, loop_name: str) -> dict[str, Any]:
    """``kill -9`` ``kills`` node processes; time from each kill to ``dead`` in our cache."""
    loop = asyncio.get_running_loop()
    timing = LeaseTiming()
    seen: dict[str, tuple[float, int]] = {}  # victim -> (loop time its renewal was seen, count)
    watching: set[str] = set()

    async def follow() -> None:
        while True:
            members = cluster.members()
            now = loop.time()
            for victim in watching:
                record = members.get(victim)
                if record is not None and seen.get(victim, (0.0, -1))[1] != record.renewals:
                    seen[victim] = (now, record.renewals)
            await asyncio.sleep(0.001)

    def status(victim: str) -> str | None:
        record = cluster.members().get(victim)
        return None if record is None else record.status.value

    to_dead: list[float] = []
    after_renewal: list[float] = []
    follower = asyncio.ensure_future(follow())
    directory = Path(tempfile.mkdtemp(prefix="bench-victims-"))
    try:
        for group in range(0, kills, KILL_GROUP):
            victims = [
                NodeProcess(url, f"victim-{i}", directory=directory, loop=loop_name)
                for i in range(group, min(kills, group + KILL_GROUP))
            ]
            try:
                for victim in victims:
                    victim.start(wait=None)
                for victim in victims:
                    await asyncio.to_thread(victim.wait_event, "ready", 60.0)
                for victim in victims:
                    await eventually(lambda v=victim: status(v.node_id) == "alive", 30)
                    watching.add(victim.node_id)
                await asyncio.sleep(2 * timing.renew_interval)  # renewals seen for each
                for victim in victims:
                    killed = loop.time()
                    victim.kill()
                    await eventually(lambda v=victim: status(v.node_id) == "dead", 30, 0.001)
                    dead = loop.time()
                    to_dead.append(dead - killed)
                    after_renewal.append(dead - seen[victim.node_id][0])
                    watching.discard(victim.node_id)
            finally:
                for victim in victims:
                    victim.kill()
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    deadline = timing.fencing_timeout + timing.margin
    return {
        "detection_median_s": round(statistics.median(to_dead), 3),
        "detection_max_s": round(max(to_dead), 3),
        "detection_min_s": round(min(to_dead), 3),
        "detection_after_last_renewal_median_s": round(statistics.median(after_renewal), 3),
        "detection_ideal_s": f"{deadline - timing.renew_interval:g}-{deadline:g}",
        "detection_kills": len(to_dead),
    }


# --- the registry -----------------------------------------------------------------------


def _per_call_us(fn: Callable[[Any], Any], args: list[Any], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for arg in args:
            fn(arg)
    return (time.perf_counter() - start) / (rounds * len(args)) * US


async def _timed(fn: Callable[[Any], Any], args: list[Any], calls: int) -> float:
    """µs per call over ``calls`` calls, in chunks that let the loop breathe in between (the
    node's lease renewer shares it); the median chunk."""
    chunk = len(args)
    figures = []
    for _ in range(max(1, calls // chunk)):
        figures.append(_per_call_us(fn, args, 1))
        await asyncio.sleep(0)
    return statistics.median(figures)


async def registry_costs(agents: int, calls: int = 2_000_000) -> dict[str, Any]:
    """Lookups on a node whose registry cache holds ``agents`` entries (module docstring)."""
    rng = random.Random("bench-registry")
    async with Cluster.local(nodes=1) as cluster:
        node = cluster.node("n1")
        registry = node.registry
        assert registry is not None
        assert cluster.hub is not None
        conn = await cluster.hub.connect("bench-loader")
        config = next(c for c in bucket_configs() if c.name == AGENTS)
        kv = await conn.key_value(config)
        base = len(registry.index)
        start = time.perf_counter()
        for i in range(agents):
            entry = AgentEntry(
                f"agent-{i}",
                "n1",
                node.incarnation,
                capabilities=(f"cap{i % CAPABILITIES}",),
                spec={"class": f"{WORKERS}:Echo"},
                stamp=WriteStamp("bench-loader", 1, i),
            )
            await kv.put(agent_key(entry.id), entry.to_bytes())
            if i % 1000 == 999:
                await asyncio.sleep(0)
            if i % 10_000 == 9999 or i == agents - 1:
                await eventually(lambda n=base + i + 1: len(registry.index) >= n, 60)
        load = time.perf_counter() - start
        assert registry.complete
        assert len(registry.index) == base + agents

        ids = [f"agent-{rng.randrange(agents)}" for _ in range(10_000)]
        caps = [f"cap{rng.randrange(CAPABILITIES)}" for _ in range(10_000)]
        plain = {f"agent-{i}": i for i in range(agents)}
        out: dict[str, Any] = {
            "registry_agents": len(registry.index),
            "registry_load_s": round(load, 2),
            "dict_get_us": await _timed(plain.get, ids, calls),
            "lookup_us": await _timed(cluster.lookup, ids, calls),
            "registry_lookup_us": await _timed(registry.lookup, ids, calls),
            "find_by_capability_us": await _timed(cluster.find_by_capability, caps, calls),
            "registry_find_by_capability_us": await _timed(
                registry.find_by_capability, caps, calls
            ),
        }
        # A query right after a holder changed rebuilds that capability's tuple (1000 holders).
        after_change = []
        for k in range(200):
            i = rng.randrange(agents)
            i -= i % CAPABILITIES  # a holder of cap0
            entry = AgentEntry(
                f"agent-{i}",
                "n1",
                node.incarnation,
                capabilities=("cap0",),
                metadata={"k": k},
                stamp=WriteStamp("bench-loader", 2, k),
            )
            revision = await kv.put(agent_key(entry.id), entry.to_bytes())
            await registry.wait_for(entry.id, revision, 5.0)
            start = time.perf_counter()
            cluster.find_by_capability("cap0")
            after_change.append(time.perf_counter() - start)
        out["find_by_capability_after_change_us"] = statistics.median(after_change) * US
        await conn.close()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


# --- profile ------------------------------------------------------------------------------


def _top(stats: pstats.Stats, title: str, lines: int = 14) -> str:
    """The top functions by own time, then this package's by cumulative time."""
    paths = sysconfig.get_paths()
    prefixes = [str(ROOT / "src") + "/", paths["purelib"] + "/", paths["stdlib"] + "/"]
    blocks = []
    for order, restrict in (("tottime", ()), ("cumulative", ("agentcluster/", 10))):
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(*(restrict or (lines,)))
        text = out.getvalue()
        for prefix in prefixes:
            text = text.replace(prefix, "")
        blocks.append(text[text.find("   ncalls") :].rstrip())
    return (
        f"### {title}\n\nBy own time:\n\n```\n{blocks[0]}\n```\n\n"
        f"This package, by cumulative time:\n\n```\n{blocks[1]}\n```\n"
    )


def profiled(node: NodeProcess, out: Path) -> None:
    """Run ``node`` as ``bench.cluster_peer profiled-node``, writing its profile to ``out``
    (profiling is switched on only for the window measured)."""
    node.args = [
        node.args[0],
        "-m",
        "bench.cluster_peer",
        "profiled-node",
        "--profile-out",
        str(out),
        "--",
        *node.args[4:],
    ]


async def profile(cluster: Cluster, url: str, sizes: Sizes, loop: str) -> str:
    """cProfile of this process and of a node process over a cast burst, then over calls."""
    directory = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    out = directory / "node.prof"
    node = NodeProcess(
        url,
        "p2",
        agents=(f"{WORKERS}:Counter", f"{WORKERS}:Echo"),
        directory=directory,
        loop=loop,
        env=bench_env(),
    )
    profiled(node, out)
    sections = []
    await asyncio.to_thread(node.start)
    try:
        # "ready" means registered; our cache sees the entries once the watch delivers them.
        await eventually(lambda: cluster.lookup("echo-p2") and cluster.lookup("counter-p2"), 10)
        await cluster_calls(cluster, "echo-p2", 100)
        for what, work in (
            ("cast", lambda: cluster_cast(cluster, "counter-p2", sizes.profile_casts)),
            ("call", lambda: cluster_calls(cluster, "echo-p2", sizes.profile_calls)),
        ):
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
            os.kill(node.pid, signal.SIGUSR1)
            await asyncio.sleep(0.2)
            here = cProfile.Profile()
            here.enable()
            await work()
            here.disable()
            os.kill(node.pid, signal.SIGUSR2)
            for _ in range(500):
                if out.exists():
                    break
                await asyncio.sleep(0.02)
            sections.append(_top(pstats.Stats(here), f"{what}: the sending process (b1)"))
            sections.append(_top(pstats.Stats(str(out)), f"{what}: the node process (p2)"))
    finally:
        await asyncio.to_thread(node.terminate)
    return "\n".join(sections)


# --- the run --------------------------------------------------------------------------------


def _lapses(node: NodeProcess) -> int:
    return node.log_tail(50_000_000).count("lease lapsed")


def run(loops: list[str], quick: bool) -> tuple[dict[str, Any], str]:
    """Every figure, the first loop's at the top level and the others' prefixed by loop."""
    from agentcluster.testing.nats_server import NatsServer, find_nats_server

    if find_nats_server() is None:
        raise SystemExit("the cluster benchmark needs nats-server: apt-get install nats-server")
    sizes = QUICK if quick else FULL
    flat: dict[str, Any] = {}
    profile_text = ""
    with NatsServer() as server, tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for index, loop in enumerate(loops):
            primary = index == 0
            tag = "b" if primary else loop[0]
            host = NodeProcess(
                server.url,
                f"{tag}2",
                agents=(
                    f"{WORKERS}:Counter=counter-{tag}2",
                    f"{WORKERS}:Echo=echo-{tag}2",
                ),
                directory=tmp,
                loop=loop,
            )
            host.start(timeout=60)
            try:
                with raw_peer(server.url, f"bench.cluster.{tag}1", loop):
                    figures = _run_on(
                        loop, measure(server.url, f"{tag}1", f"{tag}2", sizes, loop, primary)
                    )
            finally:
                host.terminate()
            figures["node_lease_lapses"] = _lapses(host)
            if primary:
                profile_text = figures.pop("profile")
                figures.update(_run_on(loop, registry_costs(sizes.agents)))
            prefix = "" if primary else f"{loop}_"
            flat.update({f"{prefix}{k}": v for k, v in figures.items()})
    flat["loop"] = loops[0]
    flat.update({f"size_{k}": v for k, v in vars(sizes).items()})
    flat["topology"] = (
        "one nats-server (JetStream) on loopback; this process joins as node b1 "
        "(Cluster.connect, role node) and casts/calls through the Cluster API to agents on "
        "node process b2 (agentcluster node: workers:Counter, workers:Echo); raw baselines "
        "from a nats-py connection of this process to a peer process (bench.cluster_peer); "
        f"2 cores shared; processes on {loops[0]} (asyncio figures prefixed)"
    )
    return flat, profile_text
