"""The failover planner's live paths on ``Cluster.local``, in virtual time.

``core.failover`` is unit-tested as a pure planner; these tests check that its decisions
hold on a running cluster, where they are easy to lose between the leader's loop, the
registry and the activation path: an agent waiting for capacity is placed once capacity
appears, the failover limit marks an agent ``failed`` and raises the critical alert,
``min_nodes`` holds every move back until enough nodes are alive, and an activation stuck
in ``starting`` is planned again at a higher incarnation. Every test records the commits
of every agent instance (``sim.invariants.CommitLog``) and fails on any interleaving of
two incarnations of one agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from agentcluster import Agent, Signal
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.failover_manager import FailoverConfig
from agentcluster.cluster.node import ClusterNode
from agentcluster.core.membership import NodeStatus
from agentcluster.core.registry import AgentStatus
from agentcluster.examples.durable_counter import Counter
from agentcluster.sim import VirtualClock
from agentcluster.sim.invariants import CommitLog
from agentcluster.telemetry import telemetry
from agentcluster.testing.waiting import eventually, stays
from agentcluster.transport.interface import Connection

COMPLETED = ("agentcluster", "failover", "completed")
ALERT = ("agentcluster", "failover", "alert")


@dataclass
class Harness:
    cluster: Cluster
    log: CommitLog
    clock: VirtualClock


@asynccontextmanager
async def cluster_of(nodes: int = 3, **options: Any) -> AsyncIterator[Harness]:
    clock = VirtualClock(asyncio.get_running_loop())
    with CommitLog() as log:
        async with Cluster.local(nodes=nodes, clock=clock, **options) as cluster:
            await eventually(lambda: len(cluster.members()) == nodes, timeout=5)
            yield Harness(cluster, log, clock)
        assert not log.overflowed
        assert log.violations() == []


@asynccontextmanager
async def joined(harness: Harness, node_id: str, **options: Any) -> AsyncIterator[ClusterNode]:
    """A node of this process joining the running cluster over its memory transport (a new
    machine, or a crashed one restarted under its old id): ``Cluster.local`` has no call
    for it, so it is built as ``Cluster.local`` builds its own, and stopped here."""
    cluster = harness.cluster
    hub = cluster.hub
    assert hub is not None

    async def connect(name: str) -> Connection:
        return await hub.connect(name)

    node = ClusterNode(
        node_id, connect, clock=harness.clock, seed=f"agentcluster/{node_id}/2", **options
    )
    await node.start()
    cluster._nodes[node_id] = node  # so that ``instances`` sees what it runs
    try:
        await eventually(
            lambda: (
                (r := cluster.members().get(node_id)) is not None
                and r.status is NodeStatus.ALIVE
                and r.incarnation == node.incarnation
            ),
            timeout=5,
        )
        yield node
    finally:
        await node.stop(leave=True)


def instances(cluster: Cluster, agent_id: str) -> list[str]:
    """The live nodes of this process that run ``agent_id`` locally."""
    return [
        node.node_id
        for node in cluster._nodes.values()
        if not node.stopped and node.local.lookup(agent_id) is not None
    ]


def placed(cluster: Cluster, agent_id: str) -> tuple[str, str, str | None, int] | None:
    entry = cluster.lookup(agent_id)
    if entry is None:
        return None
    return entry.node, entry.status.value, entry.reason, entry.incarnation


def running_on(cluster: Cluster, agent_id: str, nodes: set[str]) -> bool:
    entry = cluster.lookup(agent_id)
    return entry is not None and entry.node in nodes and entry.status is AgentStatus.RUNNING


def dead(cluster: Cluster, node_id: str) -> bool:
    record = cluster.members().get(node_id)
    return record is not None and record.status is NodeStatus.DEAD


async def total(cluster: Cluster, agent_id: str) -> int:
    value = await cluster.call(agent_id, Signal("count.get"), timeout=5)
    assert isinstance(value, int)
    return value


async def stored_total(cluster: Cluster, agent_id: str) -> int | None:
    """The total in the agent's committed snapshot (``None`` before the first)."""
    stored = await cluster.node("n1").state_store.read(agent_id)  # type: ignore[union-attr]
    return None if stored.envelope is None else stored.envelope.state["state"]["total"]


async def add(cluster: Cluster, agent_id: str, times: int) -> None:
    for _ in range(times):
        await cluster.call(agent_id, Signal("count.add", {"n": 1}), timeout=5)


# --- 1. no capacity, then capacity ------------------------------------------------------

GPU_ON_N3 = {"n1": {"cpu": 4.0}, "n2": {"cpu": 4.0}, "n3": {"cpu": 4.0, "gpu": 1.0}}


async def wait_for_capacity(harness: Harness, agent_id: str) -> None:
    """Kill the only node with a gpu: the agent waits as ``unavailable (no_capacity)``,
    and stays so (unplaced, running nowhere) while no live node can take it."""
    cluster = harness.cluster
    await cluster.kill_node("n3")
    await eventually(lambda: placed(cluster, agent_id) == ("n3", "unavailable", "no_capacity", 1))
    entry = cluster.lookup(agent_id)
    assert entry is not None
    assert entry.status is AgentStatus.UNAVAILABLE
    assert entry.reason == "no_capacity"
    await stays(lambda: placed(cluster, agent_id), 3.0)
    assert instances(cluster, agent_id) == []


async def test_an_agent_waiting_for_capacity_moves_to_a_node_that_joins_with_it() -> None:
    async with cluster_of(3, capacity=GPU_ON_N3) as harness:
        cluster = harness.cluster
        entry = await cluster.start_agent(Counter, "trainer", resources={"gpu": 1}, mode="critical")
        assert (entry.node, entry.incarnation) == ("n3", 1)
        await add(cluster, "trainer", 4)
        await wait_for_capacity(harness, "trainer")
        async with joined(harness, "n4", capacity={"cpu": 4.0, "gpu": 1.0}):
            await eventually(lambda: running_on(cluster, "trainer", {"n4"}), timeout=10)
            entry = cluster.lookup("trainer")
            assert entry is not None
            assert (entry.incarnation, entry.reason) == (2, None)
            assert await total(cluster, "trainer") == 4
            assert await cluster.call("trainer", Signal("count.add", {"n": 1})) == {"total": 5}
            assert instances(cluster, "trainer") == ["n4"]
            assert cluster.resources()["nodes"]["n4"]["reserved"] == {"gpu": 1.0}
        assert {c.incarnation for c in harness.log.of("trainer")} == {1, 2}


async def test_an_agent_waiting_for_capacity_moves_back_to_its_node_restarted() -> None:
    async with cluster_of(3, capacity=GPU_ON_N3) as harness:
        cluster = harness.cluster
        await cluster.start_agent(Counter, "trainer", resources={"gpu": 1}, mode="critical")
        await add(cluster, "trainer", 3)
        await wait_for_capacity(harness, "trainer")
        async with joined(harness, "n3", capacity=GPU_ON_N3["n3"]) as n3:
            assert n3.incarnation == 2
            await eventually(lambda: running_on(cluster, "trainer", {"n3"}), timeout=30)
            entry = cluster.lookup("trainer")
            assert entry is not None
            assert (entry.incarnation, entry.node_incarnation, entry.reason) == (2, 2, None)
            assert await total(cluster, "trainer") == 3
            assert instances(cluster, "trainer") == ["n3"]
            # The dead incarnation's reservation was collected, not added to the new one.
            assert cluster.resources()["nodes"]["n3"]["reserved"] == {"gpu": 1.0}


# --- 2. the failover limit --------------------------------------------------------------

SLOTS = {
    "n1": {"cpu": 4.0},  # the leader hosts none, so its failover history survives
    **{f"n{i}": {"cpu": 4.0, "slot": 1.0} for i in range(2, 6)},
}


async def test_an_agent_failing_over_past_the_limit_is_failed_with_a_critical_alert() -> None:
    alerts: list[dict[str, Any]] = []
    handler = telemetry.attach(ALERT, lambda event, m, meta: alerts.append(dict(meta)))
    try:
        config = FailoverConfig(max_failovers=2, interval=0.2)
        async with cluster_of(5, capacity=SLOTS, failover=config) as harness:
            cluster = harness.cluster
            assert cluster.leader() is not None
            assert cluster.leader()[0] == "n1"  # type: ignore[index]
            await cluster.start_agent(
                Counter, "flaky", node="n5", resources={"slot": 1}, mode="critical"
            )
            await add(cluster, "flaky", 2)
            host = "n5"
            for incarnation in (2, 3):  # two failovers: within the limit
                await cluster.kill_node(host)
                await eventually(
                    lambda h=host: running_on(cluster, "flaky", {"n2", "n3", "n4", "n5"} - {h}),
                    timeout=10,
                )
                entry = cluster.lookup("flaky")
                assert entry is not None
                assert entry.incarnation == incarnation
                assert await total(cluster, "flaky") == 2
                host = entry.node
            assert alerts == []
            await cluster.kill_node(host)  # the third: past the limit
            await eventually(
                lambda: placed(cluster, "flaky") == (host, "failed", "failover_limit", 3),
                timeout=10,
            )
            # A node with a free slot is alive, and still nothing moves it.
            spare = {"n2", "n3", "n4"} & {
                n for n, r in cluster.members().items() if r.status is NodeStatus.ALIVE
            }
            assert len(spare) == 1
            await stays(lambda: placed(cluster, "flaky"), 3.0)
            assert instances(cluster, "flaky") == []
            assert cluster.node("n1").failover.marked_failed == 1  # type: ignore[union-attr]
    finally:
        telemetry.detach(handler)
    assert [(a["agent_id"], a["reason"], a["severity"]) for a in alerts] == [
        ("flaky", "failover_limit", "critical")
    ]


# --- 3. min_nodes ---------------------------------------------------------------------


async def test_min_nodes_holds_a_failover_back_until_enough_nodes_are_alive() -> None:
    passes: list[tuple[float, Mapping[str, float]]] = []

    def record(event: Any, measurements: Mapping[str, float], meta: Any) -> None:
        passes.append((asyncio.get_running_loop().time(), dict(measurements)))

    handler = telemetry.attach(COMPLETED, record)
    try:
        async with cluster_of(3, min_nodes=3) as harness:
            cluster = harness.cluster
            loop = asyncio.get_running_loop()
            await cluster.start_agent(Counter, "c", node="n3", mode="critical")
            await add(cluster, "c", 2)
            await cluster.kill_node("n3")
            await eventually(lambda: dead(cluster, "n3"), timeout=5)
            suspended_from = loop.time()
            # The leader plans the move on every pass and keeps it unwritten.
            before = placed(cluster, "c")
            assert before is not None
            assert (before[0], before[3]) == ("n3", 1)
            await stays(lambda: placed(cluster, "c"), 5.0)
            assert instances(cluster, "c") == []
            held = [m for t, m in passes if t >= suspended_from]
            assert held, "no failover pass ran while suspended"
            assert all(m["moved"] == 0 for m in held), held
            # A third node joins: failover resumes and the agent moves with its state.
            async with joined(harness, "n4", min_nodes=3):
                await eventually(lambda: running_on(cluster, "c", {"n1", "n2", "n4"}), timeout=10)
                entry = cluster.lookup("c")
                assert entry is not None
                assert entry.incarnation == 2
                assert await total(cluster, "c") == 2
                assert instances(cluster, "c") == [entry.node]
    finally:
        telemetry.detach(handler)
    assert any(m["moved"] >= 1 for t, m in passes if t >= suspended_from), passes


# --- 4. the activation timeout ----------------------------------------------------------


class _Hang:
    """The next mount of ``Stuck`` hangs on ``release`` once ``armed``."""

    armed = False
    release: asyncio.Event | None = None
    hung_on: list[str] = []


class Stuck(Agent):
    State = Counter.State

    routes = Counter.routes

    async def mount(self, ctx: Any) -> None:
        if _Hang.armed:
            _Hang.armed = False
            _Hang.hung_on.append(ctx.node.node_id)
            assert _Hang.release is not None
            await _Hang.release.wait()


async def test_an_activation_stuck_in_starting_is_moved_again_at_the_next_incarnation() -> None:
    timeout = 1.0
    _Hang.armed = False
    _Hang.release = asyncio.Event()
    _Hang.hung_on = []
    config = FailoverConfig(activation_timeout=timeout)
    try:
        async with cluster_of(3, failover=config) as harness:
            cluster = harness.cluster
            loop = asyncio.get_running_loop()
            await cluster.start_agent(Stuck, "s", node="n3", mode="critical")
            # Called: the last call's reply is in the snapshot's outbox, and the superseded
            # activation, once its mount returns, must not send it again after the newer
            # incarnation committed (the CommitLog would show the interleaving).
            for _ in range(3):
                await cluster.call("s", Signal("count.add", {"n": 1}), timeout=5)

            async def committed() -> bool:
                return await stored_total(cluster, "s") == 3

            await eventually(committed, timeout=5)
            _Hang.armed = True
            await cluster.kill_node("n3")
            stuck = await eventually(lambda: _Hang.hung_on, timeout=10)
            stuck_on = stuck[0]
            await eventually(lambda: placed(cluster, "s") == (stuck_on, "starting", None, 2))
            since = loop.time()
            await stays(lambda: placed(cluster, "s"), timeout / 2)
            assert instances(cluster, "s") == [stuck_on]  # hung in its mount
            await eventually(lambda: running_on(cluster, "s", {"n1", "n2"} - {stuck_on}))
            assert loop.time() - since >= timeout - 0.1  # not before the activation timeout
            entry = cluster.lookup("s")
            assert entry is not None
            assert entry.incarnation == 3
            assert _Hang.hung_on == [stuck_on]  # the new owner's mount did not hang
            assert await total(cluster, "s") == 3
            # The hung activation finishes late, finds itself superseded and goes away.
            _Hang.release.set()
            await eventually(lambda: instances(cluster, "s") == [entry.node], timeout=5)
            await stays(lambda: instances(cluster, "s"), 1.0)
            assert placed(cluster, "s") == (entry.node, "running", None, 3)
            assert await cluster.call("s", Signal("count.add", {"n": 1})) == {"total": 4}
            assert {c.incarnation for c in harness.log.of("s")} == {1, 2, 3}
    finally:
        _Hang.armed = False
        _Hang.release.set()
