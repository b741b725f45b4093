"""Placement, circuit breakers and map-reduce on three nodes: ``agentcluster demo``'s first act.

Theory of operation. ``Cluster.local(nodes=3)`` starts three nodes in two zones with
declared capacities: n1 (eu-1a) has 2 GPUs, n2 (eu-1b) none, n3 (us-1a) less cpu.

1. **Placement by resources and zone.** Two trainers asking for a GPU each land on n1 —
   the only node with GPUs — and a third is refused with ``NoAvailableNode`` whose reason
   is ``no_capacity`` (the reservations on n1 are full; nothing is overcommitted). An
   ``edge`` agent placed with the ``zone`` strategy for us-1a lands on n3. Six word counters
   asking for one cpu each are placed ``least_loaded``. ``cluster.resources()`` shows
   capacity, reserved and free per node.
2. **A breaker opens on a failing node.** n3's word counters are switched to fail, and
   40 requests go to ``Capability("words")``. The requests that reach n3 fail until its
   node breaker opens (after ``failure_threshold`` consecutive failures); from then on n3
   is passed over and every request is answered by n1 and n2. The transition comes from
   telemetry.
3. **Map-reduce over a capability.** A corpus is split into balanced chunks over the
   word counters; the chunks sent to n3's failing counters are retried on other holders,
   and the reduced counts equal a local count of the same corpus.

``judge`` turns the measurements into invariants; nothing printed is made up.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agentcluster.agent import Action, Agent, Capability
from agentcluster.clock import Clock, SystemClock
from agentcluster.cluster import Cluster
from agentcluster.cluster.balancing import BREAKER_CHANGED, BalancerConfig
from agentcluster.cluster.coordination.scatter import CHUNK_RETRIED
from agentcluster.core.circuit_breaker import BreakerConfig
from agentcluster.core.signal import Signal
from agentcluster.errors import AgentClusterError, NoAvailableNode
from agentcluster.examples.orders import Invariant
from agentcluster.telemetry import EventRecorder, attach, detach

__all__ = ["CORPUS", "PlacementDemoReport", "judge", "run_placement_demo"]

LABELS = {
    "n1": {"zone": "eu-1a", "region": "eu"},
    "n2": {"zone": "eu-1b", "region": "eu"},
    "n3": {"zone": "us-1a", "region": "us"},
}
CAPACITY = {
    "n1": {"cpu": 8.0, "memory_mb": 8192.0, "gpu": 2.0},
    "n2": {"cpu": 8.0, "memory_mb": 8192.0},
    "n3": {"cpu": 4.0, "memory_mb": 4096.0},
}
FAILURE_THRESHOLD = 3

CORPUS = [
    "agents answer signals with actions",
    "the cluster places agents where resources fit",
    "a breaker opens when a node keeps failing",
    "map reduce splits work over agents",
    "signals that cannot be delivered are dead lettered",
    "every wait has a deadline",
    "the leader plans and every node reconciles",
    "resources are reserved by compare and set",
    "sticky sessions keep a key on one agent",
    "load is shed when every holder is saturated",
    "agents answer again after a failover",
    "the cluster keeps running when a machine dies",
]


class CountWords(Action):
    """Count the words of the lines in ``items``; fails while the counter is set to fail."""

    class Params(BaseModel):
        items: list[str]
        chunk: int = 0

    async def run(self, params: CountWords.Params, ctx: Any) -> Any:
        if ctx.state.failing:
            raise RuntimeError(f"{ctx.agent_id} is failing on purpose")
        counts: Counter[str] = Counter()
        for line in params.items:
            counts.update(line.split())
        return dict(counts)


class Ask(Action):
    """Answer with the counter's id (or fail while set to fail)."""

    async def run(self, params: Any, ctx: Any) -> Any:
        if ctx.state.failing:
            raise RuntimeError(f"{ctx.agent_id} is failing on purpose")
        return {"by": ctx.agent_id}


class SetFailing(Action):
    """Switch failing on or off."""

    class Params(BaseModel):
        failing: bool

    async def run(self, params: SetFailing.Params, ctx: Any) -> Any:
        return None, ctx.set(failing=params.failing)


class WordCounter(Agent):
    class State(BaseModel):
        failing: bool = False

    routes = {"mapreduce.map": CountWords, "words.ask": Ask, "words.fail": SetFailing}
    capabilities = ["words"]


class Trainer(Agent):
    capabilities = ["training"]


class Edge(Agent):
    capabilities = ["edge"]


@dataclass
class PlacementDemoReport:
    placed: dict[str, str] = field(default_factory=dict)
    """Agent id -> the node it was placed on."""
    refused_reason: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    failing_node: str = "n3"
    answered_by: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    failures_after_open: int = 0
    breaker_events: list[tuple[str, str, str]] = field(default_factory=list)
    """(key, kind, new state) in order."""
    node_breakers: dict[str, str] = field(default_factory=dict)
    chunk_retries: int = 0
    reduced: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(i.held for i in judge(self))


def judge(report: PlacementDemoReport) -> list[Invariant]:
    trainers = {report.placed.get("trainer-1"), report.placed.get("trainer-2")}
    frees = [
        amount
        for node in report.resources.get("nodes", {}).values()
        for amount in node["free"].values()
    ]
    failing = report.failing_node
    return [
        Invariant(
            "both GPU trainers were placed on n1, the node with GPUs",
            trainers == {"n1"},
            f"placed on {sorted(n or '-' for n in trainers)}",
        ),
        Invariant(
            "a third GPU trainer was refused with reason no_capacity",
            report.refused_reason == "no_capacity",
            f"reason {report.refused_reason}",
        ),
        Invariant(
            "nothing reserved beyond a node's capacity",
            bool(frees) and min(frees) >= -1e-9,
            f"smallest free amount {min(frees, default=0):g}",
        ),
        Invariant(
            "the us-1a edge agent was placed on n3",
            report.placed.get("edge-us") == "n3",
            f"placed on {report.placed.get('edge-us')}",
        ),
        Invariant(
            f"the failing node's breaker opened after {FAILURE_THRESHOLD} failures",
            report.node_breakers.get(failing) == "open" and report.failures == FAILURE_THRESHOLD,
            f"{report.failures} failures; breaker {report.node_breakers.get(failing, 'closed')}",
        ),
        Invariant(
            "once open, no request went to the failing node",
            report.failures_after_open == 0
            and not any(a.endswith(failing) for a in report.answered_by),
            f"{sum(report.answered_by.values())} answered after it opened, "
            f"{report.failures_after_open} failed",
        ),
        Invariant(
            "map-reduce retried the failing node's chunks elsewhere",
            report.chunk_retries >= 1,
            f"{report.chunk_retries} chunks retried",
        ),
        Invariant(
            "map-reduce counted every word of the corpus exactly once",
            bool(report.expected) and report.reduced == report.expected,
            f"{sum(report.reduced.values())} words counted, "
            f"{sum(report.expected.values())} in the corpus",
        ),
    ]


def _merge(results: list[Any]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counts in results:
        total.update(counts)
    return dict(sorted(total.items()))


async def run_placement_demo(*, clock: Clock | None = None) -> PlacementDemoReport:
    """Run the three acts of the module docstring and measure them."""
    report = PlacementDemoReport()
    clock = clock or SystemClock()
    began = clock.monotonic()
    recorder = EventRecorder()
    balancing = BalancerConfig(
        breaker=BreakerConfig(failure_threshold=FAILURE_THRESHOLD, cool_down=60.0)
    )
    handlers = [attach(BREAKER_CHANGED, recorder), attach(CHUNK_RETRIED, recorder)]
    try:
        async with Cluster.local(
            nodes=3, labels=LABELS, capacity=CAPACITY, balancing=balancing
        ) as cluster:
            # 1. placement by resources and zone
            for name in ("trainer-1", "trainer-2"):
                entry = await cluster.start_agent(Trainer, name, resources={"gpu": 1, "cpu": 2})
                report.placed[name] = entry.node
            try:
                await cluster.start_agent(Trainer, "trainer-3", resources={"gpu": 1})
            except NoAvailableNode as error:
                report.refused_reason = error.reason
            entry = await cluster.start_agent(
                Edge, "edge-us", placement={"strategy": "zone", "zone": "us-1a"}
            )
            report.placed["edge-us"] = entry.node
            for node in ("n1", "n2", "n3"):
                for index in (1, 2):
                    agent_id = f"words-{index}-{node}"
                    await cluster.start_agent(
                        WordCounter, agent_id, node=node, resources={"cpu": 1}
                    )
                    report.placed[agent_id] = node
            report.resources = cluster.resources()

            # 2. a breaker opens on a failing node
            failing = report.failing_node
            for index in (1, 2):
                await cluster.call(
                    f"words-{index}-{failing}", Signal("words.fail", {"failing": True})
                )
            opened = False
            for _ in range(40):
                try:
                    reply = await cluster.call(Capability("words"), Signal("words.ask"))
                except AgentClusterError:
                    report.failures += 1
                    if opened:
                        report.failures_after_open += 1
                else:
                    if opened:
                        report.answered_by[reply["by"]] += 1
                if not opened and any(
                    e.event[-1] == "open" and e.metadata["key"] == failing
                    for e in recorder.events(BREAKER_CHANGED)
                ):
                    opened = True
            report.breaker_events = [
                (e.metadata["key"], e.metadata["kind"], e.event[-1])
                for e in recorder.events(BREAKER_CHANGED)
            ]
            outbound = cluster.node("n1").outbound
            if outbound is not None:
                report.node_breakers = outbound.balancer.breakers()["nodes"]

            # 3. map-reduce over the capability
            report.expected = _merge([dict(Counter(w for line in CORPUS for w in line.split()))])
            report.reduced = await cluster.map_reduce(
                "words", CORPUS, reduce=_merge, timeout=5.0, attempts=3
            )
            report.chunk_retries = len(recorder.events(CHUNK_RETRIED))
    finally:
        for handler in handlers:
            detach(handler)
    report.seconds = clock.monotonic() - began
    return report


if __name__ == "__main__":  # pragma: no cover - a manual run
    outcome = asyncio.run(run_placement_demo())
    for invariant in judge(outcome):
        print(("ok   " if invariant.held else "FAIL ") + invariant.name)
