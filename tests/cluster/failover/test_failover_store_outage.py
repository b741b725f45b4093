"""A store outage during a failover, on ``Cluster.local`` in virtual time.

The leader plans the move of a dead node's durable agent while every store write fails
(a stream electing its leader). Those moves were never written: they must not count
towards the agent's failover limit, or an agent that has not moved once is marked
``failed`` and every later send to it is refused for good.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agentcluster import Signal
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.death_watch import NODE_DECLARED_DEAD
from agentcluster.cluster.failover_manager import FailoverConfig
from agentcluster.core.registry import AgentStatus
from agentcluster.examples.durable_counter import Counter
from agentcluster.sim import VirtualClock
from agentcluster.sim.invariants import CommitLog
from agentcluster.telemetry import telemetry
from agentcluster.testing.waiting import eventually

OUTAGE = 0.5
"""Seconds every store write fails: shorter than F (0.7 s), so the leader keeps leading and
its failover passes (every 50 ms here) keep planning the move."""


async def test_moves_a_store_outage_kept_unwritten_do_not_use_up_the_failover_limit() -> None:
    clock = VirtualClock(asyncio.get_running_loop())
    config = FailoverConfig(interval=0.05)
    outages: list[str] = []
    hub_box: list[Any] = []

    def outage(event: Any, measurements: Any, metadata: Any) -> None:
        # Synchronously with the compare-and-set that declared the node dead, so the
        # leader's first pass for it already meets the outage.
        if not outages:
            outages.append(metadata["node_id"])
            hub_box[0].faults.leader_election(OUTAGE, reads="answer")

    handler = telemetry.attach(NODE_DECLARED_DEAD, outage)
    try:
        with CommitLog() as log:
            async with Cluster.local(nodes=3, clock=clock, failover=config) as cluster:
                hub_box.append(cluster.hub)
                await eventually(lambda: len(cluster.members()) == 3, timeout=5)
                await cluster.start_agent(Counter, "d", node="n3", mode="durable")
                for _ in range(3):
                    await cluster.send("d", Signal("count.add", {"n": 1}))
                await cluster.kill_node("n3")
                await eventually(
                    lambda: (
                        (entry := cluster.lookup("d")) is not None
                        and (entry.status is AgentStatus.FAILED or entry.node != "n3")
                        and entry.status is not AgentStatus.STARTING
                    ),
                    timeout=20,
                )
                entry = cluster.lookup("d")
                assert entry is not None
                assert (entry.status, entry.reason, entry.incarnation) == (
                    AgentStatus.RUNNING,
                    None,
                    2,
                )
                assert await cluster.call("d", Signal("count.get"), timeout=5) == 3
            assert not log.overflowed
            assert log.violations() == []
    finally:
        telemetry.detach(handler)
    assert outages == ["n3"]
