"""What a running ``Cluster.local`` keeps over time and across a node's death, in virtual time.

- the leader's health monitor predicts, from synthetic vitals, that one node's memory grows
  towards its declared capacity, and alerts about that node only, once it has
  ``min_history`` samples and not before;
- a critical agent's schedule is part of its snapshot: after its node dies it is re-armed on
  the new owner, whose ticks carry on from the restored count, one instance at a time;
- a durable agent's inbox subject is purged below the floor of each committed snapshot, and
  a failover after the purge still counts every send exactly once.

The tests of failover and the durable inbox record every commit (``CommitLog``) and fail on
any interleaving of two incarnations of one agent.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from agentcluster import Action, Agent, Signal
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.health_monitor import (
    HEALTH_ALERT,
    HEALTH_MONITOR,
    HealthMonitorConfig,
    health_service,
)
from agentcluster.cluster.system_base import system_agent_id
from agentcluster.core.health import CheckLevel, HealthPolicy
from agentcluster.examples.durable_counter import Counter
from agentcluster.sim import VirtualClock
from agentcluster.telemetry import EventRecorder, attach, detach
from agentcluster.testing.waiting import eventually, stays
from tests.cluster.failover.harness import cluster_of, instances, running_elsewhere


async def stored_snapshot(cluster: Cluster, via: str, agent_id: str) -> Any:
    store = cluster.node(via).state_store
    assert store is not None
    stored = await store.read(agent_id)
    assert stored.envelope is not None
    return stored.envelope


async def subject_sequences(cluster: Cluster, via: str, agent_id: str) -> list[int]:
    """The stream sequences the agent's subject of ``INBOX`` holds now, read through ``via``."""
    node = cluster.node(via)
    inbox = node.durable_inbox
    assert inbox is not None
    now = node.local.clock.monotonic()
    return [seq async for seq, _, _ in inbox.walk(agent_id, 1, now)]


# --- 1. predictive health ------------------------------------------------------------------

MIN_HISTORY = 6
LIMIT_MB = 4096.0
SLOPE_MB_PER_S = 2.0
BASE_MB = 500.0

PREDICTIVE_POLICY = HealthPolicy(
    intervals={CheckLevel.COMPREHENSIVE: 1.0, CheckLevel.PREDICTIVE: 1.0},
    min_samples=3,
    history=20,
    min_history=MIN_HISTORY,
    min_r2=0.9,
)


class GrowingMemory:
    """Synthetic vitals: flat everywhere, except the memory of ``leaky`` that grows by
    ``SLOPE_MB_PER_S`` per second of the loop's (virtual) clock from its first reading."""

    def __init__(self) -> None:
        self.leaky: str | None = None
        self.started: float | None = None

    def __call__(self, node_id: str) -> dict[str, float]:
        memory = BASE_MB
        if node_id == self.leaky:
            now = asyncio.get_running_loop().time()
            if self.started is None:
                self.started = now
            memory += SLOPE_MB_PER_S * (now - self.started)
        return {
            "cpu_percent": 10.0,
            "memory_mb": memory,
            "loop_lag_ms": 1.0,
            "mailbox_load": 0.0,
            "error_rate": 0.0,
        }


async def test_a_linear_memory_growth_raises_a_predictive_alert_for_that_node_only() -> None:
    vitals = GrowingMemory()
    config = HealthMonitorConfig(
        policy=PREDICTIVE_POLICY, vitals=vitals, vitals_timeout=0.5, ping_timeout=0.5, poll=0.5
    )
    capacity = {f"n{i}": {"cpu": 4.0, "memory_mb": LIMIT_MB} for i in (1, 2, 3)}
    recorder = EventRecorder()
    history_at_alert: list[int] = []
    holder: dict[str, Any] = {}

    def predictive_alert(event: Any, measurements: Any, meta: Any) -> None:
        recorder(event, measurements, meta)
        if meta.get("level") == "predictive":
            # The book's history of that node's trend when the alert was raised.
            book = health_service(holder["cluster"].node(meta["observer"]).local.services).book
            history_at_alert.append(len(book.trend(meta["node"], "memory_mb")))

    handler = attach(HEALTH_ALERT, predictive_alert)
    try:
        clock = VirtualClock(asyncio.get_running_loop())
        async with Cluster.local(nodes=3, clock=clock, capacity=capacity, health=config) as cluster:
            holder["cluster"] = cluster
            leader_found = await eventually(cluster.leader, timeout=5)
            leader = leader_found[0]
            leaky = max(n for n in cluster.nodes if n != leader)
            vitals.leaky = leaky

            def book() -> Any:
                return health_service(cluster.node(leader).local.services).book

            def predictive() -> list[Mapping[str, Any]]:
                return [
                    e.metadata for e in recorder.events() if e.metadata.get("level") == "predictive"
                ]

            # One sample short of min_history: no prediction yet, so no predictive alert.
            await eventually(
                lambda: len(book().trend(leaky, "memory_mb")) >= MIN_HISTORY - 1, timeout=20
            )
            assert predictive() == []
            assert book().predictions(leaky) == {}

            await eventually(predictive, timeout=10)
            alerts = predictive()
            assert {a["node"] for a in alerts} == {leaky}
            assert history_at_alert[0] == MIN_HISTORY
            first = alerts[0]
            assert (first["metric"], first["severity"], first["observer"]) == (
                "memory_mb",
                "warning",
                leader,
            )
            # its time until exhaustion and its confidence, in the alert ...
            said = re.search(
                r"in about (\d+) s \(r2 ([0-9.]+) over (\d+) samples\)", first["message"]
            )
            assert said is not None, first["message"]
            seconds, r2, samples = float(said[1]), float(said[2]), int(said[3])
            assert samples == MIN_HISTORY
            assert r2 >= 0.99
            expected = (LIMIT_MB - first["value"]) / SLOPE_MB_PER_S
            assert abs(seconds - expected) <= 2.0, (seconds, expected)
            assert f"limit {LIMIT_MB:g}" in first["message"]
            # ... as structured fields too
            assert abs(first["seconds_left"] - expected) <= 2.0
            assert first["confidence"] >= 0.99

            # ... and in the leader monitor's status, beside the flat nodes' predictions
            status = await cluster.call(
                system_agent_id(leader, HEALTH_MONITOR),
                Signal("cluster.health_monitor.status"),
                timeout=5,
            )
            assert status["leader"] is True
            found = status["predictions"][leaky]["memory_mb"]
            assert found["confident"] is True
            assert found["r2"] >= 0.99
            assert abs(found["slope"] - SLOPE_MB_PER_S) < 0.01
            assert found["samples"] >= MIN_HISTORY
            assert found["limit"] == LIMIT_MB
            left = (LIMIT_MB - found["value"]) / SLOPE_MB_PER_S
            assert abs(found["seconds_left"] - left) <= 2.0, (found, left)
            for flat in cluster.nodes:
                if flat == leaky:
                    continue
                prediction = status["predictions"][flat]["memory_mb"]
                assert prediction["seconds_left"] is None
                assert prediction["confident"] is False
            assert status["verdicts"][leaky]["predictive"] == "degraded"
            assert {v["predictive"] for n, v in status["verdicts"].items() if n != leaky} == {
                "healthy"
            }
            # The followers' monitors judge nothing: the alerts are the leader's alone.
            assert {e.metadata["observer"] for e in recorder.events()} == {leader}
    finally:
        detach(handler)


# --- 2. schedules across a failover ---------------------------------------------------------

TICK_EVERY = 0.5
_ticks: list[tuple[str, int, int, float]] = []
"""Every tick run: (node, incarnation, count after it, loop time)."""


class Tick(Action):
    name = "tick"

    async def run(self, params: Any, ctx: Any) -> Any:
        count = ctx.state.ticks + 1
        token = ctx.fencing_token
        _ticks.append((ctx.node.node_id, token[0], count, asyncio.get_running_loop().time()))
        return count, ctx.set(ticks=count)


class Begin(Action):
    """Tick every ``every`` seconds from now on."""

    name = "begin"

    class Params(BaseModel):
        every: float = Field(default=TICK_EVERY, gt=0)

    async def run(self, params: Begin.Params, ctx: Any) -> Any:
        return None, ctx.schedule(Tick, after=params.every, every=params.every, key="tick")


class Ticks(Action):
    name = "ticks"

    async def run(self, params: Any, ctx: Any) -> Any:
        return ctx.state.ticks


class Ticker(Agent):
    """Counts the ticks of its own schedule; re-arming it on restore is the runtime's job
    (no ``mount`` hook here schedules anything)."""

    class State(BaseModel):
        ticks: int = 0

    actions = [Tick]
    routes = {"tick.begin": Begin, "tick.get": Ticks}


async def test_a_schedule_is_rearmed_after_failover_and_ticks_on_from_the_restored_count() -> None:
    _ticks.clear()
    async with cluster_of(3) as (cluster, log):
        await cluster.start_agent(Ticker, "ticker", node="n3", mode="critical")
        await cluster.call("ticker", Signal("tick.begin"))
        await eventually(lambda: len(_ticks) >= 4, timeout=5)
        envelope = await eventually(lambda: stored_snapshot(cluster, "n1", "ticker"), timeout=5)
        assert [(s["key"], s["action"], s["every_ms"]) for s in envelope.schedules] == [
            ("tick", "tick", round(TICK_EVERY * 1000))
        ]

        await cluster.kill_node("n3")
        killed_at = asyncio.get_running_loop().time()
        ticked_before_kill = len(_ticks)
        # The last snapshot of the first incarnation: what the next owner restores.
        committed = (await stored_snapshot(cluster, "n1", "ticker")).state["state"]["ticks"]
        assert committed >= 3
        assert committed <= _ticks[-1][2]

        await eventually(lambda: running_elsewhere(cluster, "ticker", "n3"), timeout=10)
        entry = cluster.lookup("ticker")
        assert entry is not None
        assert entry.incarnation == 2
        await eventually(lambda: sum(1 for t in _ticks if t[1] == 2) >= 6, timeout=10)

        later = _ticks[ticked_before_kill:]
        assert all(node == entry.node and inc == 2 for node, inc, _, _ in later), later
        counts = [count for _, _, count, _ in later]
        assert counts == list(range(committed + 1, committed + 1 + len(counts)))
        # one instance, one schedule: the period holds, nothing fires twice as often
        times = [at for _, _, _, at in later]
        assert times[0] > killed_at
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(abs(gap - TICK_EVERY) < 0.05 for gap in gaps), gaps
        assert instances(cluster, "ticker") == [entry.node]
        restored = cluster.node(entry.node).local.state("ticker")
        assert restored.ticks >= counts[-1]  # type: ignore[attr-defined]
        assert await cluster.call("ticker", Signal("tick.get"), timeout=5) >= counts[-1]
        assert {c.incarnation for c in log.of("ticker")} == {1, 2}
        assert {c.node_id for c in log.of("ticker") if c.incarnation == 2} == {entry.node}


# --- 3. the durable inbox is purged below the floor ------------------------------------------

_GATE = asyncio.Event()


class GatedAdd(Action):
    """``Counter``'s add, once ``_GATE`` is open (so stored sends wait unapplied)."""

    name = "add"

    class Params(BaseModel):
        n: int = Field(default=1, ge=0)

    async def run(self, params: GatedAdd.Params, ctx: Any) -> Any:
        await _GATE.wait()
        total = ctx.state.total + params.n
        return {"total": total}, ctx.set(total=total, applied=ctx.state.applied + 1)


class GatedCounter(Agent):
    State = Counter.State

    routes = {"count.add": GatedAdd, "count.get": Counter.routes["count.get"]}


async def test_the_durable_inbox_is_purged_below_the_committed_floor_and_counts_stay_exact() -> (
    None
):
    sends = 12
    _GATE.clear()
    async with cluster_of(3) as (cluster, log):
        await cluster.start_agent(GatedCounter, "d", node="n3", mode="durable")
        # A neighbour's subject in the same stream makes d's sequences sparse.
        await cluster.start_agent(Counter, "other", node="n2", mode="durable")
        for i in range(sends):
            await cluster.send("d", Signal("count.add", {"n": 1}, id=f"d{i}"), timeout=30)
            await cluster.send("other", Signal("count.add", {"n": 1}, id=f"o{i}"), timeout=30)
        acks = [c for c in log.of("d") if c.kind == "inbox_ack"]
        assert len(acks) == sends

        # Stored and acknowledged, not applied: every send is in d's subject.
        stored = await subject_sequences(cluster, "n1", "d")
        assert len(stored) == sends
        assert stored == sorted(stored)
        assert stored[-1] - stored[0] > sends  # the neighbour's sends lie in between
        assert cluster.node("n3").local.state("d").total == 0  # type: ignore[attr-defined]

        _GATE.set()
        await eventually(
            lambda: cluster.node("n3").local.state("d").total == sends,  # type: ignore[attr-defined]
            timeout=5,
        )

        async def committed_floor() -> int | None:
            envelope = await stored_snapshot(cluster, "n1", "d")
            counted = envelope.state["state"]["total"] == sends
            floor = envelope.inbox["floor"] if envelope.inbox is not None else 0
            return floor if counted and floor >= stored[-1] else None

        floor = await eventually(committed_floor, timeout=5)
        assert floor == stored[-1]  # the floor moved over the neighbour's sequences too

        def purged(agent_id: str) -> Any:
            async def empty() -> bool:
                return await subject_sequences(cluster, "n1", agent_id) == []

            return empty

        # Nothing at or below the committed floor is left (here: the whole subject).
        await eventually(purged("d"), timeout=5)
        await eventually(purged("other"), timeout=5)

        # After the purge, the next owner restores the count from the snapshot alone.
        await cluster.kill_node("n3")
        await eventually(lambda: running_elsewhere(cluster, "d", "n3"), timeout=10)
        entry = cluster.lookup("d")
        assert entry is not None
        assert entry.incarnation == 2
        assert await cluster.call("d", Signal("count.get"), timeout=5) == sends

        await cluster.send("d", Signal("count.add", {"n": 1}, id="after"), timeout=30)
        owner = cluster.node(entry.node)
        await eventually(lambda: owner.local.state("d").total == sends + 1, timeout=5)  # type: ignore[attr-defined]
        await stays(lambda: owner.local.state("d").total, 1.0)  # type: ignore[attr-defined]
        state = owner.local.state("d")
        assert (state.total, state.applied) == (sends + 1, sends + 1)  # type: ignore[attr-defined]
        assert await cluster.call("d", Signal("count.get"), timeout=5) == sends + 1
        assert await cluster.call("other", Signal("count.get"), timeout=5) == sends
        assert instances(cluster, "d") == [entry.node]
        assert {c.incarnation for c in log.of("d")} == {1, 2}
        await eventually(purged("d"), timeout=5)  # the new owner purges behind it too
