"""Failover benchmark: how fast a killed node's critical agents serve again, and what
persistence costs per action, next to raw nats-py measured in the same run.

Topology (all on loopback; everything started here and stopped by PID):

- one ``nats-server`` 2.9 with JetStream and file storage, no NATS cluster: every bucket
  and stream has one replica (``replicas=1``, ``storage="file"``, the defaults of
  ``Cluster.connect`` and ``agentcluster node``);
- two survivor node processes ``s1`` and ``s2`` and one victim node process at a time, each
  a plain ``agentcluster node`` (``NodeProcess``; default lease timing r = 200 ms,
  F = 700 ms, m = 300 ms; default event loop). The survivors start first, so one of them
  leads: the victim is never the leader (a leader's death adds an election, not measured);
- **this process** joins as a client (``Cluster.connect(url, role="client")``: it hosts
  nothing and never leads) and drives everything through the public ``Cluster`` API; the
  raw baselines come from a plain nats-py connection of this process.

The agent is ``agentcluster.examples.durable_counter:Counter``. Figures:

1. ``failover_*_10``: per run a fresh victim process (a new node id) starts, 10 critical
   counters are started on it (``start_agent(..., node=victim, mode="critical")``) and each
   is called once (``count.add``, so the snapshot holds a total of 1); then the victim gets
   ``SIGKILL``. From the kill on, each agent is polled: a ``count.get`` call every
   ``POLL_INTERVAL`` (each may take ``CALL_TIMEOUT``; a slow answer is not abandoned) until
   one answers; the time from the kill to the first answer is the agent's figure (late by
   up to one poll interval). The answer must come from a survivor and show the restored total
   (``failover_wrong_*`` counts those that did not). Alongside, one call per agent with the
   default timeout is made at the kill (``default_call_*``: what a user's single call sees,
   the router's own retries included). ``runs`` runs; the moved agents are stopped after
   each run.
2. ``failover_*_1000``: the same with ``large`` critical agents on one victim (started
   ``START_BATCH`` at a time). Polling a thousand agents from the kill would bury the
   survivors in refused calls while they restore, so here each agent is called only once
   this client's registry cache shows it ``running`` on its new node (polled as above
   until one call answers, normally the first). ``restore_per_s_1000`` = agents /
   (last agent answering - death declared), the death declaration being the moment this
   client's membership cache shows the victim ``dead`` (the lease rule fired: failover may
   begin); ``restore_from_first_per_s_1000`` = (agents - 1) / (last - first answering).
   ``step_*`` split the median agent's time: kill -> dead declared -> its entry moved
   (the leader's compare-and-set, as this client's cache sees it) -> ``running`` (the new
   node's activation) -> answering.
3. ``snapshot_put_ratio``: sequential ``cluster.call(..., count.add)`` to a critical counter
   and to a plain counter, both on node process ``s1``. A critical agent's reply is released
   only after the snapshot holding the action committed, so the difference of the medians
   is the snapshot path's cost per action as a user sees it. The baseline is a raw nats-py
   ``kv.put`` of the very bytes the agent's state key holds, into the same ``state``
   bucket. The default is group commit (``max_staleness=0``: a lone action's snapshot is
   written at once); ``*_staleness50ms`` is a critical counter started with
   ``max_staleness=0.05``, the option that trades reply latency for fewer writes under
   load. Interleaved
   chunks.
4. ``durable_send_ratio``: ``cluster.send`` to one durable counter on ``s1``, pipelined in
   ``asyncio.gather`` batches of ``SEND_BATCH`` (each send returns once the signal is stored
   in the ``INBOX`` stream and handed to the mailbox); raw: nats-py ``js.publish`` of a
   payload the size of the stored signal, with a ``Nats-Msg-Id`` as the node stores it, to a
   subject of the same ``INBOX`` stream, in the same batches. Throughput = messages / time
   until the last batch returned.

Then, with two fresh profiled survivors (``bench.cluster_peer profiled-node``, profiling
switched on only for the window measured), a cProfile of a ``large`` failover (both
survivors and this process) and of durable sends (the hosting node and this process).

Run it alone with ``python -m bench.failover [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import pstats
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcluster import Signal
from agentcluster.cluster import Cluster
from agentcluster.cluster.inbox import INBOX_STREAM, inbox_subject
from agentcluster.cluster.state_store import state_key
from agentcluster.core import codec
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.registry import AgentEntry, AgentStatus
from agentcluster.errors import AgentClusterError
from agentcluster.testing.node_process import NodeProcess
from agentcluster.testing.waiting import eventually
from bench.cluster import profiled
from bench.peers import bench_env

COUNTER = "agentcluster.examples.durable_counter:Counter"
SURVIVORS = ("s1", "s2")
POLL_INTERVAL = 0.02
"""Seconds between two polling calls to one agent (the figures' resolution)."""
CALL_TIMEOUT = 1.0
"""Seconds one polling call may take."""
START_BATCH = 50
"""Agents started (and called, and stopped) at once, with ``asyncio.gather``."""
SEND_BATCH = 100
"""Sends (and raw publishes) in flight at once."""
US = 1e6

GOALS = {
    "failover_median_s_10": ("<=", 2.0),
    "failover_max_s_10": ("<=", 2.0),
    "restore_per_s_1000": (">=", 1000.0),
}


@dataclass(frozen=True)
class Sizes:
    runs: int
    agents: int
    large: int
    chunks: int
    calls: int
    repeats: int
    sends: int


FULL = Sizes(runs=20, agents=10, large=1000, chunks=5, calls=400, repeats=3, sends=20_000)
QUICK = Sizes(runs=3, agents=10, large=100, chunks=2, calls=100, repeats=1, sends=2000)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Counted(logging.Handler):
    """Counts this process's "lease lapsed" warnings and the router's "undecodable batch"
    warnings. The latter are also kept off the console (``quiet``): one comes for every
    batch sent to a dead node, the server's 503 "no responders" status arriving on the
    sender's inbox (see failover.md)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lapses = 0
        self.undecodable = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "lease lapsed" in record.getMessage():
            self.lapses += 1

    def quiet(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("undecodable batch"):
            self.undecodable += 1
            return False
        return True


# --- the cluster -------------------------------------------------------------------------


class Bench:
    """The node processes and the client of one benchmark run."""

    def __init__(self, url: str, directory: Path, node_loop: str) -> None:
        self.url = url
        self.directory = directory
        self.node_loop = node_loop
        self.survivors: list[NodeProcess] = []
        self.victims: list[NodeProcess] = []
        self.cluster: Cluster | None = None

    def node(self, node_id: str) -> NodeProcess:
        return NodeProcess(self.url, node_id, directory=self.directory, loop=self.node_loop)

    def profiled_node(self, node_id: str, out: Path) -> NodeProcess:
        """``agentcluster node`` under ``bench.cluster_peer profiled-node`` (SIGUSR1 starts
        cProfile, SIGUSR2 stops it and writes ``out``)."""
        node = NodeProcess(
            self.url, node_id, directory=self.directory, loop=self.node_loop, env=bench_env()
        )
        profiled(node, out)
        return node

    @property
    def client(self) -> Cluster:
        assert self.cluster is not None
        return self.cluster

    def status(self, node_id: str) -> str | None:
        record = self.client.members().get(node_id)
        return None if record is None else record.status.value

    async def start_survivors(self, survivors: list[NodeProcess]) -> None:
        self.survivors.extend(survivors)
        for proc in survivors:
            proc.start(wait=None)
        for proc in survivors:
            await asyncio.to_thread(proc.wait_event, "ready", 60.0)

    async def stop_survivors(self) -> None:
        for proc in self.survivors:
            await asyncio.to_thread(proc.terminate)
        self.survivors.clear()

    async def start_victim(self, node_id: str) -> NodeProcess:
        victim = self.node(node_id)
        self.victims.append(victim)
        await asyncio.to_thread(victim.start, timeout=60.0)
        await eventually(lambda: self.status(node_id) == "alive", 30)
        return victim

    async def batched(self, ids: list[str], work: Callable[[str], Awaitable[Any]]) -> None:
        for i in range(0, len(ids), START_BATCH):
            await asyncio.gather(*(work(agent_id) for agent_id in ids[i : i + START_BATCH]))

    async def fill(self, victim: NodeProcess, ids: list[str]) -> float:
        """Start ``ids`` as critical counters on ``victim`` and call each once; the seconds
        the starts took."""
        client = self.client
        start = time.perf_counter()
        await self.batched(
            ids,
            lambda agent_id: client.start_agent(
                COUNTER, agent_id, node=victim.node_id, mode="critical"
            ),
        )
        elapsed = time.perf_counter() - start
        await self.batched(ids, lambda a: client.call(a, Signal("count.add", {"n": 1})))
        return elapsed

    def stop_all(self) -> None:
        for proc in [*self.victims, *self.survivors]:
            proc.kill()

    def lapses(self) -> int:
        return sum(p.log_tail(50_000_000).count("lease lapsed") for p in self.survivors)


async def _answer(cluster: Cluster, agent_id: str) -> tuple[float, Any]:
    """Poll ``agent_id``: a ``count.get`` call every ``POLL_INTERVAL`` (each with
    ``CALL_TIMEOUT``, so a slow answer is not abandoned) until one answers; (when, what)."""
    loop = asyncio.get_running_loop()
    calls: set[asyncio.Task[Any]] = set()
    next_at = loop.time()
    try:
        while True:
            now = loop.time()
            if now >= next_at:
                get = cluster.call(agent_id, Signal("count.get"), timeout=CALL_TIMEOUT)
                calls.add(loop.create_task(get))
                next_at = now + POLL_INTERVAL
            if not calls:
                await asyncio.sleep(next_at - now)
                continue
            done, _ = await asyncio.wait(
                calls, timeout=max(0.0, next_at - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                calls.discard(task)
                error = task.exception()
                if error is None:
                    return time.perf_counter(), task.result()
                if not isinstance(error, AgentClusterError):
                    raise error
    finally:
        for task in calls:
            task.cancel()


async def _default_call(cluster: Cluster, agent_id: str) -> float:
    """One call with the default timeout; when it returned."""
    await cluster.call(agent_id, Signal("count.get"))
    return time.perf_counter()


async def _dead_at(bench: Bench, node_id: str) -> float:
    """When this client's membership cache shows ``node_id`` dead (polled every ms)."""
    await eventually(lambda: bench.status(node_id) == "dead", 60, 0.001)
    return time.perf_counter()


@dataclass
class Outcome:
    """One kill: per agent, seconds from the kill until each step."""

    to_serving: list[float]
    moved: list[float]
    running: list[float]
    default_call: list[float]
    dead_after: float
    wrong: int
    start_s: float

    @property
    def first(self) -> float:
        return min(self.to_serving)

    @property
    def last(self) -> float:
        return max(self.to_serving)


Window = Callable[[], contextlib.AbstractAsyncContextManager[None]]


async def failover_run(
    bench: Bench, victim_id: str, ids: list[str], *, gated: bool, window: Window | None = None
) -> Outcome:
    """Fill a fresh victim with ``ids``, kill it, time each agent serving again.

    Without ``gated`` every agent is polled from the kill on (and one default call is made
    to each); with it, from the moment this client's registry cache shows it ``running``
    elsewhere. This client's cache also gives, per agent, when it showed the move and when
    it showed ``running``. ``window`` wraps the time from just before the kill until the
    last agent answered (the profile)."""
    victim = await bench.start_victim(victim_id)
    client = bench.client
    registry = client.node(client.nodes[0]).registry
    assert registry is not None
    loop = asyncio.get_running_loop()
    moved: dict[str, float] = {}
    running: dict[str, float] = {}
    answers: dict[str, asyncio.Task[tuple[float, Any]]] = {}
    defaults: dict[str, asyncio.Task[float]] = {}
    wanted = set(ids)

    def follow(entry: AgentEntry, revision: int) -> None:
        if entry.id not in wanted or entry.node == victim_id:
            return
        now = time.perf_counter()
        moved.setdefault(entry.id, now)
        if entry.status is AgentStatus.RUNNING and entry.id not in running:
            running[entry.id] = now
            if gated:
                answers[entry.id] = loop.create_task(_answer(client, entry.id))

    start_s = await bench.fill(victim, ids)
    await asyncio.sleep(2 * LeaseTiming().renew_interval)  # steady renewals before the kill
    profiling = window() if window is not None else contextlib.nullcontext()
    try:
        async with profiling:
            dead = loop.create_task(_dead_at(bench, victim_id))
            registry.listeners.append(follow)
            killed = time.perf_counter()
            os.kill(victim.pid, signal.SIGKILL)
            try:
                if not gated:
                    for agent_id in ids:
                        answers[agent_id] = loop.create_task(_answer(client, agent_id))
                        defaults[agent_id] = loop.create_task(_default_call(client, agent_id))
                await eventually(lambda: len(answers) == len(ids), 120, 0.01)
                done = await asyncio.wait_for(asyncio.gather(*answers.values()), timeout=120)
                dead_at = await asyncio.wait_for(dead, timeout=30)
                called = await asyncio.wait_for(asyncio.gather(*defaults.values()), timeout=60)
            finally:
                registry.listeners.remove(follow)
                for task in (dead, *answers.values(), *defaults.values()):
                    task.cancel()
    finally:
        await asyncio.to_thread(victim.kill)  # reaps it
    at = dict(zip(answers, done, strict=True))
    wrong = 0
    for agent_id in ids:
        entry = client.lookup(agent_id)
        if at[agent_id][1] != 1 or entry is None or entry.node == victim_id:
            wrong += 1
    await bench.batched(ids, client.stop_agent)
    return Outcome(
        to_serving=[at[a][0] - killed for a in ids],
        moved=[moved[a] - killed for a in ids],
        running=[running[a] - killed for a in ids],
        default_call=[t - killed for t in called],
        dead_after=dead_at - killed,
        wrong=wrong,
        start_s=start_s,
    )


def _steps(outcomes: list[Outcome], suffix: int) -> dict[str, float]:
    """Medians over agents of where the time goes (module docstring)."""
    dead = [o.dead_after for o in outcomes for _ in o.to_serving]
    moved = [t for o in outcomes for t in o.moved]
    running = [t for o in outcomes for t in o.running]
    serving = [t for o in outcomes for t in o.to_serving]
    return {
        f"step_dead_s_{suffix}": round(statistics.median(dead), 3),
        f"step_moved_after_dead_s_{suffix}": round(
            statistics.median(m - d for m, d in zip(moved, dead, strict=True)), 3
        ),
        f"step_running_after_moved_s_{suffix}": round(
            statistics.median(r - m for r, m in zip(running, moved, strict=True)), 3
        ),
        f"step_serving_after_running_s_{suffix}": round(
            statistics.median(s - r for s, r in zip(serving, running, strict=True)), 3
        ),
    }


async def measure_failover(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    small: list[Outcome] = []
    for run in range(sizes.runs):
        ids = [f"r{run}-c{i}" for i in range(sizes.agents)]
        small.append(await failover_run(bench, f"v{run}", ids, gated=False))
    per_agent = [t for o in small for t in o.to_serving]
    default = [t for o in small for t in o.default_call]
    n = sizes.agents
    out: dict[str, Any] = {
        f"failover_median_s_{n}": round(statistics.median(per_agent), 3),
        f"failover_p90_s_{n}": round(_percentile(per_agent, 0.9), 3),
        f"failover_max_s_{n}": round(max(per_agent), 3),
        f"failover_min_s_{n}": round(min(per_agent), 3),
        f"failover_run_max_median_s_{n}": round(statistics.median(o.last for o in small), 3),
        f"failover_run_max_s_{n}": " ".join(f"{o.last:.3f}" for o in small),
        f"default_call_median_s_{n}": round(statistics.median(default), 3),
        f"default_call_max_s_{n}": round(max(default), 3),
        f"failover_wrong_{n}": sum(o.wrong for o in small),
        f"failover_agents_{n}": len(per_agent),
        **_steps(small, n),
    }
    m = sizes.large
    big = await failover_run(bench, "vbig", [f"big-c{i}" for i in range(m)], gated=True)
    out.update(
        {
            f"failover_last_s_{m}": round(big.last, 3),
            f"failover_first_s_{m}": round(big.first, 3),
            f"failover_median_s_{m}": round(statistics.median(big.to_serving), 3),
            f"restore_per_s_{m}": round(m / (big.last - big.dead_after), 1),
            f"restore_from_first_per_s_{m}": round((m - 1) / max(1e-9, big.last - big.first), 1),
            f"moved_last_s_{m}": round(max(big.moved), 3),
            f"running_last_s_{m}": round(max(big.running), 3),
            f"failover_wrong_{m}": big.wrong,
            f"start_per_s_{m}": round(m / big.start_s, 1),
            **_steps([big], m),
        }
    )
    return out


# --- snapshot cost -----------------------------------------------------------------------


async def _calls(cluster: Cluster, agent_id: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await cluster.call(agent_id, Signal("count.add", {"n": 1}))
        samples.append(time.perf_counter() - start)
    return samples


async def _raw_puts(kv: Any, key: str, value: bytes, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await kv.put(key, value)
        samples.append(time.perf_counter() - start)
    return samples


async def measure_snapshot(bench: Bench, nc: Any, sizes: Sizes) -> dict[str, Any]:
    cluster = bench.client
    agents = {"plain": "plain-s1", "critical": "critical-s1", "critical50": "critical50-s1"}
    await cluster.start_agent(COUNTER, agents["plain"], node="s1")
    await cluster.start_agent(COUNTER, agents["critical"], node="s1", mode="critical")
    await cluster.start_agent(
        COUNTER, agents["critical50"], node="s1", mode="critical", max_staleness=0.05
    )
    kv = await nc.jetstream().key_value("state")
    for agent_id in agents.values():
        await _calls(cluster, agent_id, 50)  # warm-up
    stored = await kv.get(state_key(agents["critical"]))
    value: bytes = stored.value
    key = "bench-raw-put"
    await _raw_puts(kv, key, value, 100)
    samples: dict[str, list[float]] = {"raw": [], **{kind: [] for kind in agents}}
    for _ in range(sizes.chunks):
        samples["raw"].extend(await _raw_puts(kv, key, value, sizes.calls))
        for kind, agent_id in agents.items():
            # A call to the 50 ms one takes ~50 ms: a tenth as many of those.
            calls = sizes.calls if kind != "critical50" else max(20, sizes.calls // 10)
            samples[kind].extend(await _calls(cluster, agent_id, calls))
    await kv.purge(key)
    p50 = {kind: _percentile(v, 0.5) * US for kind, v in samples.items()}
    p99 = {kind: _percentile(v, 0.99) * US for kind, v in samples.items()}
    cost = p50["critical"] - p50["plain"]
    cost50 = p50["critical50"] - p50["plain"]
    out: dict[str, Any] = {
        "raw_kv_put_p50_us": round(p50["raw"], 1),
        "raw_kv_put_p99_us": round(p99["raw"], 1),
        "plain_call_p50_us": round(p50["plain"], 1),
        "plain_call_p99_us": round(p99["plain"], 1),
        "critical_call_p50_us": round(p50["critical"], 1),
        "critical_call_p99_us": round(p99["critical"], 1),
        "snapshot_cost_us": round(cost, 1),
        "snapshot_put_ratio": round(cost / p50["raw"], 3),
        "critical_call_staleness50ms_p50_us": round(p50["critical50"], 1),
        "critical_call_staleness50ms_p99_us": round(p99["critical50"], 1),
        "snapshot_cost_staleness50ms_us": round(cost50, 1),
        "snapshot_bytes": len(value),
    }
    await bench.batched(list(agents.values()), cluster.stop_agent)
    return out


# --- durable sends -----------------------------------------------------------------------


async def _sends(cluster: Cluster, agent_id: str, n: int) -> float:
    start = time.perf_counter()
    for i in range(0, n, SEND_BATCH):
        await asyncio.gather(
            *(
                cluster.send(agent_id, Signal("count.add", {"n": 1}))
                for _ in range(min(SEND_BATCH, n - i))
            )
        )
    return n / (time.perf_counter() - start)


async def _raw_publishes(js: Any, subject: str, payload: bytes, n: int) -> float:
    start = time.perf_counter()
    for i in range(0, n, SEND_BATCH):
        await asyncio.gather(
            *(
                js.publish(subject, payload, headers={"Nats-Msg-Id": str(uuid.uuid4())})
                for _ in range(min(SEND_BATCH, n - i))
            )
        )
    return n / (time.perf_counter() - start)


async def _total(cluster: Cluster, agent_id: str) -> int:
    return int(await cluster.call(agent_id, Signal("count.get")))


async def measure_sends(bench: Bench, nc: Any, sizes: Sizes, host: str = "s1") -> dict[str, Any]:
    cluster = bench.client
    agent_id = f"durable-{host}"
    await cluster.start_agent(COUNTER, agent_id, node=host, mode="durable")
    js = nc.jetstream()
    raw_subject = inbox_subject("bench-raw-publish")
    payload = codec.encode(
        Signal("count.add", {"n": 1}, target=agent_id), asyncio.get_running_loop().time()
    )
    await _sends(cluster, agent_id, 1000)  # warm-up
    await _raw_publishes(js, raw_subject, payload, 1000)
    durable: list[float] = []
    raw: list[float] = []
    applied: list[float] = []
    for _ in range(sizes.repeats):
        await js.purge_stream(INBOX_STREAM, subject=raw_subject)
        raw.append(await _raw_publishes(js, raw_subject, payload, sizes.sends))
        want = await _total(cluster, agent_id) + sizes.sends
        start = time.perf_counter()
        durable.append(await _sends(cluster, agent_id, sizes.sends))

        async def caught_up(want: int = want) -> bool:
            return await _total(cluster, agent_id) >= want

        await eventually(caught_up, timeout=300, interval=0.01)
        applied.append(sizes.sends / (time.perf_counter() - start))
    await js.purge_stream(INBOX_STREAM, subject=raw_subject)
    out: dict[str, Any] = {
        "durable_send_per_s": round(statistics.median(durable)),
        "raw_js_publish_per_s": round(statistics.median(raw)),
        "durable_applied_per_s": round(statistics.median(applied)),
        "send_payload_bytes": len(payload),
    }
    out["durable_send_ratio"] = round(out["durable_send_per_s"] / out["raw_js_publish_per_s"], 3)
    await cluster.stop_agent(agent_id)
    return out


# --- profiles ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _profiling(
    nodes: list[NodeProcess], outs: list[Path], stats: list[pstats.Stats]
) -> AsyncIterator[None]:
    """cProfile on in ``nodes`` (SIGUSR1/SIGUSR2) and in this process for the block; the
    stats, this process's first, are appended to ``stats``."""
    for out in outs:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
    for node in nodes:
        os.kill(node.pid, signal.SIGUSR1)
    await asyncio.sleep(0.2)
    here = cProfile.Profile()
    here.enable()
    try:
        yield
    finally:
        here.disable()
        for node in nodes:
            os.kill(node.pid, signal.SIGUSR2)
    await eventually(lambda: all(out.exists() for out in outs), 30, 0.02)
    stats.append(pstats.Stats(here))
    stats.extend(pstats.Stats(str(out)) for out in outs)


async def profile(bench: Bench, nc: Any, sizes: Sizes) -> str:
    """Replace the survivors by two profiled ones; profile a failover of ``large`` agents
    and a burst of durable sends."""
    from bench.cluster import _top

    await bench.stop_survivors()
    outs = [bench.directory / f"{node_id}.prof" for node_id in ("p1", "p2")]
    nodes = [bench.profiled_node(n, out) for n, out in zip(("p1", "p2"), outs, strict=True)]
    await bench.start_survivors(nodes)
    await eventually(lambda: all(bench.status(n.node_id) == "alive" for n in nodes), 30)
    await eventually(lambda: (bench.client.leader() or ("",))[0] in ("p1", "p2"), 30)
    stats: list[pstats.Stats] = []
    ids = [f"prof-c{i}" for i in range(sizes.large)]
    await failover_run(
        bench, "vprof", ids, gated=True, window=lambda: _profiling(nodes, outs, stats)
    )
    leader = (bench.client.leader() or ("?",))[0]
    sections = [
        _top(stats[0], f"failover of {sizes.large} agents: this process (the client)"),
        *(
            _top(
                s,
                f"failover of {sizes.large} agents: node {n.node_id}"
                f"{' (the leader)' if n.node_id == leader else ''}",
            )
            for n, s in zip(nodes, stats[1:], strict=True)
        ),
    ]
    stats.clear()
    send_sizes = Sizes(**{**vars(sizes), "repeats": 1})
    async with _profiling(nodes[:1], outs[:1], stats):
        await measure_sends(bench, nc, send_sizes, host="p1")
    sections.append(_top(stats[0], "durable sends (and the raw baseline): this process"))
    sections.append(_top(stats[1], "durable sends: node p1, hosting the durable agent"))
    return "\n".join(sections)


# --- the run -----------------------------------------------------------------------------


async def measure(
    url: str, directory: Path, sizes: Sizes, node_loop: str, with_profile: bool
) -> tuple[dict[str, Any], str]:
    import nats

    bench = Bench(url, directory, node_loop)
    counted = Counted()
    logging.getLogger("agentcluster").addHandler(counted)
    logging.getLogger("agentcluster.routing").addFilter(counted.quiet)
    out: dict[str, Any] = {}
    profile_text = ""
    try:
        await bench.start_survivors([bench.node(node_id) for node_id in SURVIVORS])
        async with Cluster.connect(url, role="client") as cluster:
            bench.cluster = cluster
            await eventually(lambda: all(bench.status(s) == "alive" for s in SURVIVORS), 30)
            nc = await nats.connect(url, name="bench-failover-raw")
            try:
                out.update(await measure_snapshot(bench, nc, sizes))
                out.update(await measure_sends(bench, nc, sizes))
                out.update(await measure_failover(bench, sizes))
                out["leader"] = str((cluster.leader() or ("?",))[0])
                out["node_lease_lapses"] = bench.lapses()
                out["measuring_lease_lapses"] = counted.lapses
                out["client_undecodable_batches"] = counted.undecodable
                if with_profile:
                    profile_text = await profile(bench, nc, sizes)
            finally:
                await nc.close()
    finally:
        logging.getLogger("agentcluster").removeHandler(counted)
        logging.getLogger("agentcluster.routing").removeFilter(counted.quiet)
        bench.stop_all()
    return out, profile_text


def run(
    quick: bool, loop: str = "uvloop", node_loop: str = "auto", with_profile: bool = True
) -> tuple[dict[str, Any], str]:
    """Every figure (a flat dict) and the profiles' text; ``loop`` is this process's event
    loop, ``node_loop`` the node processes' (``auto``: uvloop when installed)."""
    from agentcluster.testing.nats_server import NatsServer, find_nats_server

    if find_nats_server() is None:
        raise SystemExit("the failover benchmark needs nats-server: apt-get install nats-server")
    sizes = QUICK if quick else FULL
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    load_before = os.getloadavg()
    with (
        NatsServer() as server,
        tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp,
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        flat, profile_text = runner.run(
            measure(server.url, Path(tmp), sizes, node_loop, with_profile)
        )
    flat["loop"] = loop
    flat["node_loop"] = node_loop
    flat.update({f"size_{k}": v for k, v in vars(sizes).items()})
    flat["poll_interval_s"] = POLL_INTERVAL
    flat["topology"] = TOPOLOGY
    flat["load_average_before"] = " ".join(f"{x:.2f}" for x in load_before)
    flat["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return flat, profile_text


TOPOLOGY = (
    "one nats-server 2.9 with JetStream on loopback (no NATS cluster): every bucket and "
    "stream with 1 replica, file storage; node processes s1, s2 (survivors, started first: "
    "one of them leads) and one victim at a time (agentcluster node, default lease timing "
    "r=200 ms, F=700 ms, m=300 ms); this process joins as a client (Cluster.connect, "
    "role client) and drives everything through the Cluster API; raw baselines from a "
    "nats-py connection of this process; 2 cores shared"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures, _ = run(args.quick, args.loop, with_profile=not args.no_profile)
    print(json.dumps(figures, indent=2))
    for key, (op, goal) in GOALS.items():
        if key in figures:
            value = figures[key]
            met = value <= goal if op == "<=" else value >= goal
            print(f"{key} = {value} (goal {op} {goal}): {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
