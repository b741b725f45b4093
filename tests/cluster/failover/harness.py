"""What the fault-tolerance tests share: a ``Cluster.local`` in virtual time whose every
commit is recorded (and checked for interleaved incarnations on exit), and the questions
they ask of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from agentcluster import Signal
from agentcluster.cluster.cluster import Cluster
from agentcluster.core.registry import AgentStatus
from agentcluster.errors import AgentClusterError
from agentcluster.sim import VirtualClock
from agentcluster.sim.invariants import CommitLog
from agentcluster.testing.waiting import eventually

__all__ = ["cluster_of", "instances", "running_elsewhere", "send_until_acknowledged", "total"]


@asynccontextmanager
async def cluster_of(nodes: int = 3, **options: Any) -> AsyncIterator[tuple[Cluster, CommitLog]]:
    clock = VirtualClock(asyncio.get_running_loop())
    with CommitLog() as log:
        async with Cluster.local(nodes=nodes, clock=clock, **options) as cluster:
            await eventually(lambda: len(cluster.members()) == nodes, timeout=5)
            yield cluster, log
        assert not log.overflowed
        assert log.violations() == []


def running_elsewhere(cluster: Cluster, agent_id: str, gone: str) -> bool:
    entry = cluster.lookup(agent_id)
    return entry is not None and entry.node != gone and entry.status is AgentStatus.RUNNING


def instances(cluster: Cluster, agent_id: str) -> list[str]:
    """The live nodes of this process that run ``agent_id`` locally."""
    return [
        node.node_id
        for node in cluster._nodes.values()
        if not node.stopped and node.local.lookup(agent_id) is not None
    ]


async def total(cluster: Cluster, agent_id: str) -> int:
    value = await cluster.call(agent_id, Signal("count.get"), timeout=5)
    assert isinstance(value, int)
    return value


async def send_until_acknowledged(cluster: Cluster, agent_id: str, signal: Signal) -> None:
    """What a client does with ``send``: retry the same id until it is acknowledged."""
    while True:
        try:
            await cluster.send(agent_id, signal, timeout=60)
            return
        except AgentClusterError as error:
            if not error.retryable:
                raise
            await asyncio.sleep(0.05)
