"""Draining a quarantined node on ``Cluster.local``, in virtual time: its critical and
durable agents are handed off alive, with their state and every acknowledged signal; its
plain agents stay; nothing is committed by two instances."""

from __future__ import annotations

import asyncio
from typing import Any

from agentcluster import Signal
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.drain import AGENT_DRAINED
from agentcluster.cluster.health_monitor import HEALTH_MONITOR
from agentcluster.cluster.system_base import system_agent_id
from agentcluster.core.registry import AgentStatus
from agentcluster.examples.durable_counter import Counter
from agentcluster.sim import VirtualClock
from agentcluster.sim.invariants import CommitLog
from agentcluster.telemetry import EventRecorder, attach, detach
from agentcluster.testing.waiting import eventually, stays
from tests.cluster.failover.harness import send_until_acknowledged

SENDS = 60


async def quarantine(cluster: Cluster, node: str, *, drain: bool) -> Any:
    leader = cluster.leader()
    assert leader is not None
    return await cluster.call(
        system_agent_id(leader[0], HEALTH_MONITOR),
        Signal(
            "cluster.health_monitor.quarantine",
            {"node": node, "reason": "disk swap", "drain": drain},
        ),
        timeout=5,
    )


async def test_a_drained_node_hands_off_its_persistent_agents_with_every_signal() -> None:
    clock = VirtualClock(asyncio.get_running_loop())
    drained = EventRecorder()
    handler = attach(AGENT_DRAINED, drained)
    try:
        await _drain_under_traffic(clock, drained)
    finally:
        detach(handler)


async def _drain_under_traffic(clock: VirtualClock, drained: EventRecorder) -> None:
    with CommitLog() as log:
        async with Cluster.local(nodes=3, clock=clock) as cluster:
            await eventually(lambda: cluster.leader() is not None, timeout=5)
            await cluster.start_agent(Counter, "b", node="n2", mode="durable")
            await cluster.start_agent(
                Counter, "d", node="n3", mode="durable", state={"forward": "b"}
            )
            await cluster.start_agent(Counter, "c", node="n3", mode="critical")
            await cluster.start_agent(Counter, "p", node="n3")
            for _ in range(3):
                await cluster.call("c", Signal("count.add", {"n": 1}), timeout=5)
                await cluster.call("p", Signal("count.add", {"n": 1}), timeout=5)
            before = {a: cluster.lookup(a) for a in ("c", "d")}

            async def load() -> None:
                for _ in range(SENDS):
                    await send_until_acknowledged(cluster, "d", Signal("count.add", {"n": 1}))

            sending = asyncio.create_task(load())
            await eventually(lambda: cluster.node("n3").local.state("d").total >= 10, timeout=10)
            record = await quarantine(cluster, "n3", drain=True)
            assert record["drain"] is True

            def handed_off(agent_id: str) -> bool:
                entry, was = cluster.lookup(agent_id), before[agent_id]
                return (
                    entry is not None
                    and was is not None
                    and entry.node != "n3"
                    and entry.incarnation == was.incarnation + 1
                    and entry.status is AgentStatus.RUNNING
                )

            await eventually(lambda: handed_off("c") and handed_off("d"), timeout=20)
            await asyncio.wait_for(sending, 60)
            # State and every acknowledged send came along; the forwards too, exactly.
            assert await cluster.call("c", Signal("count.get"), timeout=5) == 3
            await eventually(lambda: cluster.lookup("d") is not None, timeout=5)
            assert await cluster.call("d", Signal("count.get"), timeout=5) == SENDS

            async def b_total() -> bool:
                return await cluster.call("b", Signal("count.get"), timeout=5) == SENDS

            await eventually(b_total, timeout=20)
            # The plain agent stays where it lives, and it is the only one left there.
            assert cluster.node("n3").local.lookup("p") is not None
            assert await cluster.call("p", Signal("count.get"), timeout=5) == 3
            assert cluster.node("n3").drainer.stayed == {"p": "plain"}  # type: ignore[union-attr]
            assert cluster.node("n3").local.lookup("c") is None
            assert cluster.node("n3").local.lookup("d") is None
            assert sorted(e.metadata["agent_id"] for e in drained.events()) == ["c", "d"]
            # Nothing moves back, nor anywhere else, while the quarantine holds.
            await stays(lambda: (cluster.lookup("c"), cluster.lookup("d")), 3.0, 0.1)
    assert not log.overflowed
    assert log.violations() == []


async def test_a_quarantine_without_drain_moves_nothing() -> None:
    clock = VirtualClock(asyncio.get_running_loop())
    async with Cluster.local(nodes=3, clock=clock) as cluster:
        await eventually(lambda: cluster.leader() is not None, timeout=5)
        entry = await cluster.start_agent(Counter, "c", node="n3", mode="critical")
        await quarantine(cluster, "n3", drain=False)
        await stays(lambda: cluster.lookup("c"), 3.0, 0.1)
        assert cluster.lookup("c") == entry
