"""The partition handler on ``Cluster.local``: a store stall's pause and resumption, a cut-off
node's loss, split and rejoin, and failover suspension below ``min_nodes``. Virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from agentcluster import Signal
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.partition_handler import (
    PARTITION_HANDLER,
    PartitionWatch,
    failover_suspended,
    partition_watch,
)
from agentcluster.cluster.system_base import system_agent_id
from agentcluster.core.lease import LeaseTiming
from agentcluster.errors import ConfigurationError
from agentcluster.sim import VirtualClock
from agentcluster.testing.waiting import eventually

TIMING = LeaseTiming()
F = TIMING.fencing_timeout
R = TIMING.renew_interval
M = TIMING.margin


@asynccontextmanager
async def three() -> AsyncIterator[Cluster]:
    clock = VirtualClock(asyncio.get_running_loop())
    async with Cluster.local(nodes=3, clock=clock) as cluster:
        await eventually(lambda: cluster.leader() is not None, timeout=5)
        for node_id in cluster.nodes:
            handler = system_agent_id(node_id, PARTITION_HANDLER)
            await eventually(lambda h=handler: cluster.lookup(h) is not None, timeout=5)
        yield cluster


def watch_of(cluster: Cluster, node_id: str) -> PartitionWatch:
    watch = partition_watch(cluster.node(node_id))
    assert watch is not None
    return watch


def kinds(watch: PartitionWatch) -> list[str]:
    return [e["kind"] for e in watch.history]


async def test_a_store_stall_is_recorded_as_a_pause_and_its_resumption() -> None:
    async with three() as cluster:
        watches = {n: watch_of(cluster, n) for n in cluster.nodes}
        assert all(not w.failover_suspended() for w in watches.values())
        stall = 2.0
        cluster.hub.faults.leader_election(stall)  # type: ignore[union-attr]
        await eventually(lambda: all(w.pause is not None for w in watches.values()), timeout=2)
        # while its own lease has lapsed, a node suspends failover
        assert all(failover_suspended(cluster.node(n)) for n in cluster.nodes)
        assert watches["n1"].suspension() == ["lease_lapsed"]
        await eventually(lambda: all(w.pause is None for w in watches.values()), timeout=5)
        for node_id, watch in watches.items():
            assert kinds(watch) == ["paused", "resumed"], node_id
            paused, resumed = watch.history
            assert paused["incarnation"] == resumed["incarnation"] == 1
            assert set(paused["alive"]) == {"n1", "n2", "n3"}
            assert resumed["paused_at"] == paused["at"]
            # paused F after its last renewal, resumed once writes answered again
            assert stall - F - R <= resumed["duration"] <= stall - F + 2 * R
            assert resumed["at"] - paused["at"] == pytest.approx(resumed["duration"], abs=1e-6)
            assert not watch.failover_suspended()

        status = await cluster.call(
            system_agent_id("n2", PARTITION_HANDLER),
            Signal("cluster.partition_handler.status"),
            timeout=5,
        )
        assert status["node_id"] == "n2"
        assert status["paused"] is False
        assert status["counts"] == {"paused": 1, "resumed": 1}
        assert status["failover_suspended"] is False
        history = await cluster.call(
            system_agent_id("n2", PARTITION_HANDLER),
            Signal("cluster.partition_handler.history", {"kind": "resumed"}),
            timeout=5,
        )
        assert [e["kind"] for e in history["events"]] == ["resumed"]
        assert history["events"][0]["duration"] == watches["n2"].history[1]["duration"]


async def test_a_cut_off_node_is_lost_split_and_rejoins_and_min_nodes_suspends_failover() -> None:
    async with three() as cluster:
        n1, n3 = watch_of(cluster, "n1"), watch_of(cluster, "n3")
        n1.min_nodes = 3
        assert not n1.failover_suspended()
        faults = cluster.hub.faults  # type: ignore[union-attr]
        faults.partition(["n3"])
        faults.cut_off(["n3"])
        # n1 hears nobody from n3: two groups
        groups = await eventually(lambda: len(n1.refresh()) > 1 and n1.groups, timeout=2)
        assert groups == [["n1", "n2"], ["n3"]]
        assert "partition_seen" in kinds(n1)
        await eventually(lambda: "node_lost" in kinds(n1), timeout=5)
        [lost] = [e for e in n1.history if e["kind"] == "node_lost"]
        assert (lost["node"], lost["reason"]) == ("n3", "dead")
        assert n1.failover_suspended()
        assert n1.suspension() == ["alive_nodes 2 < min_nodes 3"]
        system = cluster.node("n1").system
        assert system is not None
        assert system.partition is n1
        assert system.failover_suspended()
        assert not cluster.node("n2").system.failover_suspended()  # type: ignore[union-attr]
        assert n3.pause is not None
        assert set(n3.pause["suspected"]) == {"n1", "n2"}

        faults.heal()
        await eventually(lambda: "rejoined" in kinds(n3), timeout=5)
        [rejoined] = [e for e in n3.history if e["kind"] == "rejoined"]
        assert (rejoined["previous_incarnation"], rejoined["incarnation"]) == (1, 2)
        # paused F after its last renewal; declared dead M later at the earliest; healed then
        assert M - 1e-6 <= rejoined["duration"] <= M + 3 * R
        await eventually(lambda: not n1.failover_suspended(), timeout=5)
        await eventually(lambda: len(n1.refresh()) == 1, timeout=5)
        assert kinds(n3)[:1] == ["paused"]
        assert len(n1.history) <= n1.history.maxlen  # type: ignore[operator]


def test_min_nodes_and_history_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        PartitionWatch(None, history=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        PartitionWatch(None, min_nodes=0)  # type: ignore[arg-type]
