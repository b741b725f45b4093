"""Placement across real node processes over a real nats-server: twelve concurrent
placements from two clients (each its own NATS connection) race for the two GPUs of one
node process through its control subject; the node's compare-and-set on its reservations
key, on the real substrate, grants exactly the capacity."""

from __future__ import annotations

import asyncio

import pytest

from agentcluster.cluster import Cluster
from agentcluster.core.registry import AgentEntry
from agentcluster.errors import NoAvailableNode
from agentcluster.testing.nats_server import NatsServer
from agentcluster.testing.waiting import eventually
from tests.multiprocess.conftest import Nodes, client

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.timeout(60)]

ECHO = "agentcluster.examples.workers:Echo"


async def place(cluster: Cluster, prefix: str, count: int) -> list[AgentEntry | BaseException]:
    return await asyncio.gather(
        *(cluster.start_agent(ECHO, f"{prefix}-{i}", resources={"gpu": 1}) for i in range(count)),
        return_exceptions=True,
    )


async def test_concurrent_placements_from_two_clients_never_overcommit_a_node(
    fresh_nats_server: NatsServer, nodes: Nodes
) -> None:
    url = fresh_nats_server.url
    procs = {
        "n1": nodes.spawn(url, "n1", agents=(), extra_args=["--capacity", "gpu=2"]),
        "n2": nodes.spawn(url, "n2", agents=(), extra_args=["--capacity", "cpu=4"]),
    }
    for proc in procs.values():
        proc.start(wait=None)
    for proc in procs.values():
        await asyncio.to_thread(proc.wait_event, "ready", 30.0)
    async with client(url) as first, client(url) as second:
        for cluster in (first, second):
            await eventually(
                lambda cluster=cluster: (
                    {"n1", "n2"}  # type: ignore[misc]
                    <= {n for n, r in cluster.members().items() if r.status.value == "alive"}
                ),
                10,
            )
        results = [*await asyncio.gather(place(first, "a", 6), place(second, "b", 6))]
        outcomes = [r for group in results for r in group]
        granted = [r for r in outcomes if isinstance(r, AgentEntry)]
        refused = [r for r in outcomes if isinstance(r, BaseException)]
        assert len(granted) == 2, outcomes  # n1's two GPUs, whoever won them
        assert {e.node for e in granted} == {"n1"}
        assert len(refused) == 10
        assert all(isinstance(r, NoAvailableNode) and r.reason == "no_capacity" for r in refused)
        await eventually(lambda: first.resources()["nodes"]["n1"]["reserved"] == {"gpu": 2.0}, 10)
        assert first.resources()["nodes"]["n2"]["reserved"] == {}
        # a stop releases its reservation, and the freed GPU can be placed again
        assert await second.stop_agent(granted[0].id)
        await eventually(lambda: second.resources()["nodes"]["n1"]["reserved"] == {"gpu": 1.0}, 10)
        again = await second.start_agent(ECHO, "c-0", resources={"gpu": 1})
        assert again.node == "n1"
