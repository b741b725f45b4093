"""``Cluster.local``: nodes, registry and routing joined, in virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, Capability, Signal
from agentcluster.cluster.cluster import Cluster
from agentcluster.core.membership import NodeStatus
from agentcluster.core.registry import AgentStatus
from agentcluster.errors import ActionFailed, AgentExists, AgentUnavailable
from agentcluster.sim import VirtualClock
from agentcluster.testing.waiting import eventually


class Add(Action):
    """Add to the total."""

    class Params(BaseModel):
        n: int

    async def run(self, params: Add.Params, ctx: Any) -> Any:
        total = ctx.state.total + params.n
        return {"total": total}, ctx.set(total=total)


class Fail(Action):
    """Always fails."""

    async def run(self, params: Any, ctx: Any) -> Any:
        raise ValueError("no funds")


class Counter(Agent):
    class State(BaseModel):
        total: int = 0

    routes = {"count.add": Add, "count.fail": Fail}
    capabilities = ["counting"]


async def test_agents_spread_over_nodes_answer_by_id_and_capability() -> None:
    clock = VirtualClock(asyncio.get_running_loop())
    async with Cluster.local(nodes=3, clock=clock) as cluster:
        await eventually(lambda: len(cluster.members()) == 3, timeout=5)
        for i in range(6):
            await cluster.start_agent(Counter, f"c{i}")
        await eventually(lambda: len(cluster.find_by_capability("counting")) == 6, timeout=5)
        assert {n: len(ids) for n, ids in cluster.agents_by_node().items()} == {
            "n1": 2,
            "n2": 2,
            "n3": 2,
        }
        assert await cluster.call("c4", Signal("count.add", {"n": 5})) == {"total": 5}
        await cluster.send("c4", Signal("count.add", {"n": 1}))
        assert await cluster.call("c4", Signal("count.add", {"n": 0})) == {"total": 6}
        answered = {
            (await cluster.call(Capability("counting"), Signal("count.add", {"n": 1})))["total"]
            for _ in range(6)
        }
        assert answered == {1, 7}  # c4 had 6; every other counter starts at 0
        with pytest.raises(ActionFailed) as info:
            await cluster.call("c1", Signal("count.fail"))
        assert info.value.error_type == "ValueError"
        topology = cluster.topology()
        assert topology["alive"] == ["n1", "n2", "n3"]
        assert topology["leader"] is not None


async def test_an_id_lives_on_one_node_only() -> None:
    clock = VirtualClock(asyncio.get_running_loop())
    async with Cluster.local(nodes=2, clock=clock) as cluster:
        await cluster.start_agent(Counter, "solo", node="n1")
        await eventually(lambda: cluster.node("n2").registry.lookup("solo"), timeout=5)  # type: ignore[union-attr]
        with pytest.raises(AgentExists):
            await cluster.start_agent(Counter, "solo", node="n2")
        assert cluster.node("n2").local.lookup("solo") is None
        assert await cluster.stop_agent("solo")
        await eventually(lambda: cluster.lookup("solo") is None, timeout=5)


async def test_a_killed_node_is_declared_dead_and_its_agents_marked_unavailable() -> None:
    loop = asyncio.get_running_loop()
    clock = VirtualClock(loop)
    async with Cluster.local(nodes=3, clock=clock) as cluster:
        await eventually(lambda: len(cluster.members()) == 3, timeout=5)
        await cluster.start_agent(Counter, "victim", node="n3")
        await cluster.start_agent(Counter, "survivor", node="n2")
        await eventually(lambda: cluster.lookup("victim") is not None, timeout=5)
        killed_at = loop.time()
        await cluster.kill_node("n3")
        await eventually(
            lambda: cluster.members()["n3"].status is NodeStatus.DEAD, timeout=5, interval=0.01
        )
        detected = loop.time() - killed_at
        assert 0.7 <= detected <= 1.3, detected
        await eventually(
            lambda: (
                (e := cluster.lookup("victim")) is not None and e.status is AgentStatus.UNAVAILABLE
            ),
            timeout=5,
        )
        with pytest.raises(AgentUnavailable):
            await cluster.call("victim", Signal("count.add", {"n": 1}), timeout=2)
        assert await cluster.call("survivor", Signal("count.add", {"n": 2})) == {"total": 2}
        assert cluster.topology()["alive"] == ["n1", "n2"]


async def test_topology_shows_a_split_and_capability_picks_pass_over_suspected_nodes() -> None:
    clock = VirtualClock(asyncio.get_running_loop())
    async with Cluster.local(nodes=3, clock=clock) as cluster:
        for i in range(6):
            await cluster.start_agent(Counter, f"c{i}")
        await eventually(lambda: cluster.topology()["partitions"] == [["n1", "n2", "n3"]], 5)
        assert cluster.hub is not None
        cluster.hub.faults.partition(["n3"])
        await eventually(lambda: cluster.topology()["partitions"] == [["n1", "n2"], ["n3"]], 5)
        topology = cluster.topology()
        assert topology["suspects"]["n1"] == ["n3"]
        assert topology["suspects"]["n3"] == ["n1", "n2"]
        assert topology["alive"] == ["n1", "n2", "n3"]  # suspicion never kills
        on_n3 = set(cluster.agents_by_node()["n3"])
        for _ in range(12):
            await cluster.call(Capability("counting"), Signal("count.add", {"n": 1}), timeout=2)
        totals = {
            agent_id: cluster.node(cluster.lookup(agent_id).node).local.state(agent_id).total
            for agent_id in cluster.find_by_capability("counting")
        }
        assert all(totals[a] == 0 for a in on_n3)
        assert sum(totals.values()) == 12
        cluster.hub.faults.heal()
        await eventually(lambda: cluster.topology()["partitions"] == [["n1", "n2", "n3"]], 5)
