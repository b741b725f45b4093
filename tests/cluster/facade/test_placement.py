"""Placement through ``Cluster``: strategies, resources reserved by compare-and-set, the
overcommit race, release on stop and the collection of stale reservations."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentcluster import Agent
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.control import request_start, spec_of
from agentcluster.cluster.resource_manager import RESOURCE_MANAGER
from agentcluster.cluster.system_base import system_agent_id
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.reservations import Reservation
from agentcluster.core.signal import Signal
from agentcluster.errors import ConfigurationError, NoAvailableNode
from agentcluster.sim import VirtualClock
from agentcluster.testing.waiting import eventually


class Worker(Agent):
    capabilities = ["work"]


CAPACITY = {
    "n1": {"cpu": 4.0, "memory_mb": 4096.0, "gpu": 2.0},
    "n2": {"cpu": 4.0, "memory_mb": 4096.0},
    "n3": {"cpu": 2.0, "memory_mb": 1024.0},
}
LABELS = {
    "n1": {"zone": "eu-1a", "region": "eu"},
    "n2": {"zone": "eu-1b", "region": "eu"},
    "n3": {"zone": "us-1a", "region": "us"},
}


def _cluster(**options: Any) -> Any:
    clock = VirtualClock(asyncio.get_running_loop())
    return Cluster.local(nodes=3, clock=clock, capacity=CAPACITY, labels=LABELS, **options)


async def test_a_gpu_agent_goes_to_the_node_with_gpus_and_is_accounted() -> None:
    async with _cluster() as cluster:
        entry = await cluster.start_agent(Worker, "trainer", resources={"gpu": 1, "cpu": 1})
        assert entry.node == "n1"
        report = cluster.resources()
        assert report["nodes"]["n1"]["reserved"] == {"gpu": 1.0, "cpu": 1.0}
        assert report["nodes"]["n1"]["used"] == {"gpu": 1.0, "cpu": 1.0}
        assert report["nodes"]["n1"]["free"]["gpu"] == 1.0
        assert report["total"]["capacity"]["cpu"] == 10.0
        assert report["total"]["reserved"] == {"gpu": 1.0, "cpu": 1.0}
        assert await cluster.stop_agent("trainer")
        await eventually(lambda: cluster.resources()["total"]["reserved"] == {}, timeout=5)


async def test_no_node_with_the_resources_is_a_typed_refusal() -> None:
    async with _cluster() as cluster:
        with pytest.raises(NoAvailableNode) as caught:
            await cluster.start_agent(Worker, "big", resources={"memory_mb": 8192})
        assert caught.value.reason == "no_capacity"
        assert cluster.lookup("big") is None
        assert cluster.resources()["total"]["reserved"] == {}
        with pytest.raises(NoAvailableNode) as needs:
            cluster.select_node({"requires": ["tpu"]}, "capability_matched")
        assert needs.value.reason == "no_capability"


async def test_concurrent_placements_for_the_last_slots_never_overcommit() -> None:
    async with _cluster() as cluster:
        attempts = 24
        results = await asyncio.gather(
            *(cluster.start_agent(Worker, f"g{i}", resources={"gpu": 1}) for i in range(attempts)),
            return_exceptions=True,
        )
        granted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(granted) == 2  # exactly n1's capacity, whatever the interleaving
        assert all(e.node == "n1" for e in granted)
        assert len(refused) == attempts - 2
        assert all(isinstance(r, NoAvailableNode) and r.reason == "no_capacity" for r in refused)
        assert cluster.resources()["nodes"]["n1"]["reserved"] == {"gpu": 2.0}
        # every node's own view agrees once the watches caught up
        for name in cluster.nodes:
            await eventually(
                lambda name=name: cluster.node(name).reservations.reserved("n1") == {"gpu": 2.0},  # type: ignore[union-attr,misc]
                timeout=5,
            )


async def test_concurrent_cpu_placements_fill_every_node_exactly() -> None:
    async with _cluster() as cluster:
        results = await asyncio.gather(
            *(cluster.start_agent(Worker, f"w{i}", resources={"cpu": 1}) for i in range(14)),
            return_exceptions=True,
        )
        granted = [r for r in results if not isinstance(r, BaseException)]
        assert len(granted) == 10  # 4 + 4 + 2 cpus
        per_node = {
            n: v["reserved"].get("cpu", 0.0) for n, v in cluster.resources()["nodes"].items()
        }
        assert per_node == {"n1": 4.0, "n2": 4.0, "n3": 2.0}


async def test_zone_placement_prefers_the_zone_then_the_region() -> None:
    async with _cluster() as cluster:
        first = await cluster.start_agent(
            Worker, "near", placement={"strategy": "zone", "zone": "us-1a"}
        )
        assert first.node == "n3"
        # n3 is full of cpu: the same region has nothing else, so any node will do;
        # asking for eu-1b's region finds eu-1a or eu-1b
        region = cluster.select_node({"zone": "eu-9z", "region": "eu"}, "zone")
        assert region in {"n1", "n2"}
        assert cluster.lookup("near").spec["placement"] == {"strategy": "zone", "zone": "us-1a"}  # type: ignore[union-attr]


async def test_sticky_and_leader_only_and_unknown_strategies() -> None:
    async with _cluster() as cluster:
        chosen = {cluster.select_node({"key": "session-7"}, "sticky") for _ in range(5)}
        assert len(chosen) == 1
        leader = cluster.leader()
        assert leader is not None
        assert cluster.select_node(None, "leader_only") == leader[0]
        with pytest.raises(ConfigurationError, match="unknown placement strategy"):
            await cluster.start_agent(Worker, "x", placement="fastest")
        with pytest.raises(ConfigurationError, match="resource 'cpu'"):
            await cluster.start_agent(Worker, "x", resources={"cpu": -1})


async def test_least_loaded_spreads_sequential_placements() -> None:
    async with _cluster() as cluster:
        for i in range(6):
            await cluster.start_agent(Worker, f"s{i}")
        counts = {n: len(ids) for n, ids in cluster.agents_by_node().items()}
        assert counts == {"n1": 2, "n2": 2, "n3": 2}


async def test_a_reservation_nobody_registered_is_collected_by_the_leader() -> None:
    timing = LeaseTiming()
    async with _cluster(timing=timing) as cluster:
        leader = cluster.leader()
        assert leader is not None
        node = cluster.node("n2")
        assert node.reservations is not None
        # a placement whose starter died between its reservation and its registration
        await node.reservations.reserve("n2", node.capacity, Reservation("ghost", 1, {"cpu": 2}))
        await cluster.start_agent(Worker, "real", node="n2", resources={"cpu": 1})
        assert cluster.resources()["nodes"]["n2"]["reserved"] == {"cpu": 3.0}
        manager = system_agent_id(leader[0], RESOURCE_MANAGER)
        await eventually(
            lambda: cluster.resources()["nodes"]["n2"]["reserved"] == {"cpu": 1.0}, timeout=60
        )
        status = await cluster.call(manager, Signal("cluster.resource_manager.status"))
        assert status["collector"]["collected"] >= 1
        assert "n2|ghost|1" in status["collector"]["recently_collected"]
        # the registered agent's reservation stays
        assert cluster.node("n2").reservations.of("n2").holds(("real", 1))  # type: ignore[union-attr]


async def test_a_dead_nodes_reservations_are_collected() -> None:
    async with _cluster(unavailable_ttl=600.0) as cluster:
        leader = cluster.leader()
        assert leader is not None
        victim = next(n for n in ("n2", "n3", "n1") if n != leader[0])
        await cluster.start_agent(Worker, "doomed", node=victim, resources={"cpu": 1})
        assert cluster.resources()["nodes"][victim]["reserved"] == {"cpu": 1.0}
        await cluster.kill_node(victim)
        survivor = cluster.node(leader[0])
        assert survivor.reservations is not None
        await eventually(lambda: survivor.reservations.reserved(victim) == {}, timeout=60)  # type: ignore[union-attr]


async def test_a_remote_start_reserves_from_its_spec_and_keeps_the_placement() -> None:
    async with _cluster() as cluster:
        via = cluster.node("n1")
        assert via.data is not None
        spec = spec_of(
            "tests.cluster.facade.test_placement:Worker",
            resources={"gpu": 1},
            placement={"strategy": "least_loaded"},
        )
        with pytest.raises(NoAvailableNode) as refused:  # the typed error crosses the wire
            await request_start(via.data, "n2", "remote-gpu", spec, 5.0)
        assert refused.value.reason == "no_capacity"
        entry, _ = await request_start(via.data, "n1", "remote-gpu", spec, 5.0)
        assert entry.node == "n1"
        assert entry.spec is not None
        assert entry.spec["resources"] == {"gpu": 1.0}
        assert entry.spec["placement"] == {"strategy": "least_loaded"}
        await eventually(
            lambda: cluster.resources()["nodes"]["n1"]["reserved"] == {"gpu": 1.0}, timeout=5
        )
        assert await cluster.stop_agent("remote-gpu")
        await eventually(lambda: cluster.resources()["nodes"]["n1"]["reserved"] == {}, timeout=5)


async def test_concurrent_placements_without_resources_spread_over_the_nodes() -> None:
    async with _cluster() as cluster:
        await asyncio.gather(*(cluster.start_agent(Worker, f"c{i}") for i in range(9)))
        counts = {n: len(ids) for n, ids in cluster.agents_by_node().items()}
        assert counts == {"n1": 3, "n2": 3, "n3": 3}
