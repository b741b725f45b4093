"""System agents on every node of ``Cluster.local``: reachable, restartable, and the keeper's ttl.

All in virtual time (``tests/cluster/conftest.py``): a 5-second ttl costs no real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, Signal
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.node import ClusterNode
from agentcluster.cluster.registry import agent_key
from agentcluster.cluster.system_agents import (
    FAILURE_DETECTOR,
    NODE_DISCOVERY,
    REGISTRY_KEEPER,
    SUPERVISOR_ID,
    SYSTEM_AGENTS,
    FailureDetectorState,
    MemberView,
    NodeDiscoveryState,
    PendingDeletion,
    RegistryKeeperState,
    is_system_agent,
    member_changes,
    plan_expiry,
    start_system_agents,
    system_agent_id,
)
from agentcluster.core.membership import NodeStatus
from agentcluster.core.registry import AgentEntry, AgentMode, AgentStatus
from agentcluster.errors import AgentUnavailable, ConfigurationError
from agentcluster.sim import VirtualClock
from agentcluster.testing.waiting import eventually, stays

ROLES = tuple(SYSTEM_AGENTS)


class Add(Action):
    """Add to the total."""

    class Params(BaseModel):
        n: int

    async def run(self, params: Add.Params, ctx: Any) -> Any:
        total = ctx.state.total + params.n
        return {"total": total}, ctx.set(total=total)


class Counter(Agent):
    class State(BaseModel):
        total: int = 0

    routes = {"count.add": Add}


@asynccontextmanager
async def system_cluster(nodes: int = 3, *, ttl: float = 60.0) -> AsyncIterator[Cluster]:
    """A local cluster whose nodes all run their system agents, each visible from every node.

    Nodes that do not start their system agents themselves get them here with ``ttl``;
    tests read the ttl in force from the keeper's state.
    """
    clock = VirtualClock(asyncio.get_running_loop())
    async with Cluster.local(nodes=nodes, clock=clock) as cluster:
        await eventually(lambda: len(cluster.members()) == nodes, timeout=5)
        for node_id in cluster.nodes:
            node = cluster.node(node_id)
            if node.local.lookup(system_agent_id(node_id, REGISTRY_KEEPER)) is None:
                await start_system_agents(node, unavailable_ttl=ttl)
        every = [system_agent_id(n, role) for n in cluster.nodes for role in ROLES]
        for node_id in cluster.nodes:
            registry = cluster.node(node_id).registry
            assert registry is not None
            await eventually(lambda r=registry: all(r.lookup(i) for i in every), timeout=5)
        await eventually(lambda: cluster.leader() is not None, timeout=5)
        yield cluster


def lease_revision(node: ClusterNode) -> int:
    assert node.liveness is not None
    assert node.liveness.renewer is not None
    revision = node.liveness.renewer.revision
    assert revision is not None
    return revision


async def status(cluster: Cluster, node_id: str, role: str) -> Any:
    return await cluster.call(
        system_agent_id(node_id, role), Signal(f"cluster.{role}.status"), timeout=2
    )


# --- reachable and inspectable ------------------------------------------------------------


async def test_each_system_agent_is_registered_and_answers_its_status_from_any_node() -> None:
    async with system_cluster(3) as cluster:
        assert sorted(cluster.find_by_capability("system.failure_detector")) == [
            "system.n1.failure_detector",
            "system.n2.failure_detector",
            "system.n3.failure_detector",
        ]
        entry = cluster.lookup("system.n2.registry_keeper")
        assert entry is not None
        assert entry.node == "n2"
        assert is_system_agent(entry.capabilities)
        n3 = cluster.node("n3")
        info = n3.local.lookup("system.n3.node_discovery")
        assert info is not None
        assert is_system_agent(info.capabilities)
        assert sorted(n3.local.supervisor(SUPERVISOR_ID).children()) == sorted(
            system_agent_id("n3", role) for role in ROLES
        )

        # Calls go through n1; the n2 and n3 agents answer from their own nodes.
        discovery = await status(cluster, "n2", NODE_DISCOVERY)
        assert discovery["node_id"] == "n2"
        assert discovery["alive"] == ["n1", "n2", "n3"]
        assert discovery["members"]["n3"]["status"] == "alive"
        members = await cluster.call(
            "system.n3.node_discovery",
            Signal("cluster.node_discovery.members", {"status": "alive"}),
            timeout=2,
        )
        assert [m["id"] for m in members["members"]] == ["n1", "n2", "n3"]

        detector = await status(cluster, "n3", FAILURE_DETECTOR)
        assert detector["node_id"] == "n3"
        assert detector["lease"]["valid"] is True
        assert detector["lease"]["paused"] is False
        assert detector["lease"]["incarnation"] == n3.incarnation
        assert set(detector["peers"]) == {"n1", "n2"}
        assert detector["suspects"] == []
        assert all(p["phi"] is not None and p["phi"] < 8 for p in detector["peers"].values())

        keeper = await status(cluster, "n2", REGISTRY_KEEPER)
        assert keeper["node_id"] == "n2"
        assert keeper["complete"] is True
        assert keeper["entries"] >= 9  # three system agents per node
        assert keeper["unavailable"] == 0

        # The state is refreshed on a schedule, so reading it is worth something.
        state = n3.local.state("system.n3.failure_detector")
        assert isinstance(state, FailureDetectorState)
        seen = state.refreshed_at
        assert seen is not None
        assert state.lease.valid
        await eventually(
            lambda: n3.local.state("system.n3.failure_detector").refreshed_at > seen,  # type: ignore[attr-defined]
            timeout=3,
        )


async def test_system_agents_start_once_per_node() -> None:
    async with system_cluster(1) as cluster:
        with pytest.raises(ConfigurationError):
            await start_system_agents(cluster.node("n1"))


async def test_the_failure_detector_reports_a_killed_peer_while_its_own_lease_stays_valid() -> None:
    async with system_cluster(3) as cluster:
        await cluster.kill_node("n2")

        async def n2_suspected() -> Any:
            view = await cluster.call(
                "system.n1.failure_detector",
                Signal("cluster.failure_detector.peers", {"peer": "n2"}),
                timeout=1,
            )
            return view if view["suspected"] else None

        view = await eventually(n2_suspected, timeout=1, interval=0.01)
        assert view["status"] == "alive"  # suspected by phi well before declared dead
        assert view["phi"] >= 8
        lease = await cluster.call(
            "system.n1.failure_detector", Signal("cluster.failure_detector.lease"), timeout=1
        )
        assert lease["valid"] is True
        assert lease["paused"] is False

        await eventually(lambda: cluster.members()["n2"].status is NodeStatus.DEAD, timeout=5)
        n1 = cluster.node("n1")

        def n2_dead_in_state() -> bool:
            state = n1.local.state("system.n1.failure_detector")
            assert isinstance(state, FailureDetectorState)
            peer = state.peers.get("n2")
            return peer is not None and peer.status == "dead" and peer.suspected

        await eventually(n2_dead_in_state, timeout=3)
        state = n1.local.state("system.n1.failure_detector")
        assert isinstance(state, FailureDetectorState)
        assert state.suspects == ["n2"]
        assert state.peers["n3"].suspected is False
        assert state.lease.valid

        def discovery_saw_n2_die() -> bool:
            seen = n1.local.state("system.n1.node_discovery")
            assert isinstance(seen, NodeDiscoveryState)
            return any(
                (c.node, c.previous_status, c.status) == ("n2", "alive", "dead")
                for c in seen.changes
            )

        await eventually(discovery_saw_n2_die, timeout=3)


# --- crashes are restarts, and the lease does not notice ----------------------------------


async def test_a_crashed_system_agent_is_restarted_and_the_lease_keeps_renewing() -> None:
    async with system_cluster(3) as cluster:
        n2 = cluster.node("n2")
        assert n2.liveness is not None
        agent_id = "system.n2.failure_detector"
        restarts, crashes = n2.local.restarts, n2.local.crashes
        before = lease_revision(n2)

        n2.local.server(agent_id).request_control("crash", RuntimeError("boom"))
        await eventually(lambda: n2.local.restarts == restarts + 1, timeout=2)
        assert n2.local.crashes == crashes + 1

        # The lease never paused and the node stayed alive through the crash and well past
        # the time a stalled lease needs to be declared dead (F + m = 1 s).
        liveness = n2.liveness
        assert await stays(lambda: (liveness.paused, liveness.valid()), 2.0) == (False, True)
        assert lease_revision(n2) >= before + 5
        assert cluster.members()["n2"].status is NodeStatus.ALIVE
        assert cluster.members()["n2"].incarnation == n2.incarnation

        # It answers again, with its state carried over the restart.
        detector = await status(cluster, "n2", FAILURE_DETECTOR)
        assert detector["lease"]["valid"] is True
        assert detector["lease"]["revision"] > before
        assert n2.local.lookup(agent_id) is not None


async def test_restarts_are_bounded_and_giving_up_leaves_the_node_running() -> None:
    async with system_cluster(2) as cluster:
        n2 = cluster.node("n2")
        await cluster.start_agent(Counter, "user", node="n2")
        agent_id = "system.n2.registry_keeper"
        crashes = n2.local.crashes
        for i in range(6):  # one more than the supervisor's max_restarts (5 in 10 s)
            n2.local.server(agent_id).request_control("crash", RuntimeError(f"boom {i}"))
            await eventually(lambda i=i: n2.local.crashes == crashes + i + 1, timeout=2)
        supervisor = n2.local.supervisor(SUPERVISOR_ID)
        await eventually(lambda: supervisor.failed, timeout=2)
        assert n2.local.lookup(agent_id) is None or n2.local.lookup(agent_id).status == "failed"  # type: ignore[union-attr]

        before = lease_revision(n2)
        assert n2.liveness is not None
        assert await stays(lambda: n2.liveness.paused, 2.0) is False  # type: ignore[union-attr]
        assert lease_revision(n2) >= before + 5
        assert cluster.members()["n2"].status is NodeStatus.ALIVE
        assert await cluster.call("user", Signal("count.add", {"n": 3}), timeout=2) == {"total": 3}


async def test_after_a_rejoin_the_system_agents_are_registered_again_at_the_new_incarnation() -> (
    None
):
    async with system_cluster(3) as cluster:
        leader = cluster.leader()
        assert leader is not None
        victim = next(n for n in ("n3", "n2") if n != leader[0])
        node = cluster.node(victim)
        ids = [system_agent_id(victim, role) for role in ROLES]
        assert node.incarnation == 1

        # Cut off from the store: paused, declared dead, its entries marked unavailable.
        cluster.hub.faults.cut_off([victim])  # type: ignore[union-attr]
        await eventually(lambda: cluster.members()[victim].status is NodeStatus.DEAD, timeout=5)
        await eventually(
            lambda: all(
                (e := cluster.lookup(i)) is not None and e.status is AgentStatus.UNAVAILABLE
                for i in ids
            ),
            timeout=5,
        )
        cluster.hub.faults.reconnect_store([victim])  # type: ignore[union-attr]
        await eventually(lambda: node.incarnation == 2, timeout=5)

        # Its system agents ran on; its keeper registers them again, reachable as before.
        def registered_again() -> bool:
            for agent_id in ids:
                entry = cluster.lookup(agent_id)
                if entry is None or entry.status is not AgentStatus.RUNNING:
                    return False
                if (entry.node, entry.node_incarnation) != (victim, 2):
                    return False
            return True

        await eventually(registered_again, timeout=5)
        assert keeper_state(cluster, victim).repaired >= len(ids)
        detector = await status(cluster, victim, FAILURE_DETECTOR)
        assert detector["lease"]["incarnation"] == 2
        assert detector["lease"]["valid"] is True


async def test_the_failure_detector_answers_while_its_node_is_paused() -> None:
    async with system_cluster(3) as cluster:
        leader = cluster.leader()
        assert leader is not None
        victim = next(n for n in ("n3", "n2") if n != leader[0])
        node = cluster.node(victim)
        cluster.hub.faults.cut_off([victim])  # type: ignore[union-attr]
        try:
            await eventually(lambda: node.liveness.paused, timeout=3)  # type: ignore[union-attr]
            lease = await node.local.call(
                system_agent_id(victim, FAILURE_DETECTOR),
                Signal("cluster.failure_detector.lease"),
                timeout=1,
            )
            assert lease["paused"] is True
            assert lease["valid"] is False
        finally:
            cluster.hub.faults.reconnect_store([victim])  # type: ignore[union-attr]


# --- the keeper's unavailable_ttl ---------------------------------------------------------


def keeper_state(cluster: Cluster, node_id: str) -> RegistryKeeperState:
    state = cluster.node(node_id).local.state(system_agent_id(node_id, REGISTRY_KEEPER))
    assert isinstance(state, RegistryKeeperState)
    return state


async def test_unavailable_plain_entries_are_deleted_by_the_leader_only_after_the_ttl() -> None:
    loop = asyncio.get_running_loop()
    async with system_cluster(3, ttl=5.0) as cluster:
        leader = cluster.leader()
        assert leader is not None
        ttl = keeper_state(cluster, leader[0]).unavailable_ttl
        victim = next(n for n in ("n3", "n2") if n != leader[0])
        await cluster.start_agent(Counter, "victim", node=victim)
        # A critical agent waiting for capacity is unavailable too, but failover plans it
        # again: the keeper must leave it alone.
        waiting = AgentEntry(
            "waiting",
            victim,
            cluster.node(victim).incarnation,
            mode=AgentMode.CRITICAL,
            status=AgentStatus.UNAVAILABLE,
            reason="no_capacity",
        )
        buckets = cluster.node("n1").liveness.buckets  # type: ignore[union-attr]
        assert buckets is not None
        await buckets.agents.create(agent_key("waiting"), waiting.to_bytes())

        await cluster.kill_node(victim)
        await eventually(
            lambda: (
                (e := cluster.lookup("victim")) is not None and e.status is AgentStatus.UNAVAILABLE
            ),
            timeout=5,
        )
        marked = loop.time()
        letters = cluster.node("n1").local.dead_letters
        with pytest.raises(AgentUnavailable) as info:
            await cluster.call("victim", Signal("count.add", {"n": 1}), timeout=2)
        assert info.value.retryable is False
        assert [d.agent_id for d in letters.list(reason="unavailable")] == ["victim"]

        # Present until the ttl has passed on the leader's clock, gone soon after.
        assert await stays(lambda: cluster.lookup("victim") is not None, ttl - 0.2) is True
        await eventually(lambda: cluster.lookup("victim") is None, timeout=2.5)
        assert loop.time() - marked >= ttl
        await eventually(
            lambda: cluster.lookup(system_agent_id(victim, FAILURE_DETECTOR)) is None, timeout=2
        )

        state = keeper_state(cluster, leader[0])
        assert state.leader
        assert "victim" in state.recently_deleted
        assert state.deleted == 1 + len(ROLES)  # the user's agent and the victim's system agents
        for node_id in cluster.nodes:
            if node_id not in (leader[0], victim):
                other = keeper_state(cluster, node_id)
                assert (other.leader, other.deleted, other.pending) == (False, 0, {})

        # The critical entry stays, and a sweep on a follower deletes nothing.
        follower = next(n for n in cluster.nodes if n not in (leader[0], victim))
        swept = await cluster.call(
            system_agent_id(follower, REGISTRY_KEEPER),
            Signal("cluster.registry_keeper.sweep"),
            timeout=2,
        )
        assert swept["leader"] is False
        assert swept["deleted_now"] == []
        assert await stays(lambda: cluster.lookup("waiting") is not None, ttl) is True


async def test_a_new_leader_counts_the_ttl_again() -> None:
    loop = asyncio.get_running_loop()
    async with system_cluster(4, ttl=5.0) as cluster:
        leader = cluster.leader()
        assert leader is not None
        ttl = keeper_state(cluster, leader[0]).unavailable_ttl
        victim = next(n for n in ("n4", "n3") if n != leader[0])
        await cluster.start_agent(Counter, "victim", node=victim)
        await cluster.kill_node(victim)
        await eventually(
            lambda: (
                (e := cluster.lookup("victim")) is not None and e.status is AgentStatus.UNAVAILABLE
            ),
            timeout=5,
        )
        marked = loop.time()
        await eventually(lambda: "victim" in keeper_state(cluster, leader[0]).pending, timeout=2)

        # Part of the ttl passes under the first leader.
        assert await stays(lambda: cluster.lookup("victim") is not None, 3.0) is True
        await cluster.kill_node(leader[0])
        await eventually(
            lambda: (now := cluster.leader()) is not None and now[0] != leader[0], timeout=10
        )
        successor = cluster.leader()
        assert successor is not None

        # The old leader's count is lost with it; deleting at the first ttl would be early
        # for the new leader, which first saw the entry only after its election.
        assert await stays(lambda: cluster.lookup("victim") is not None, ttl) is True
        await eventually(lambda: cluster.lookup("victim") is None, timeout=ttl)
        assert loop.time() - marked >= 3.0 + ttl
        assert "victim" in keeper_state(cluster, successor[0]).recently_deleted


# --- the pure decision --------------------------------------------------------------------


def test_plan_expiry_times_each_revision_from_when_it_was_first_seen() -> None:
    first = plan_expiry([("b", 7), ("a", 3)], {}, now=100.0, ttl=5.0)
    assert first.due == ()
    assert first.pending == {
        "a": PendingDeletion(revision=3, first_seen=100.0),
        "b": PendingDeletion(revision=7, first_seen=100.0),
    }

    early = plan_expiry([("a", 3), ("b", 7)], first.pending, now=104.9, ttl=5.0)
    assert early.due == ()

    # "b" was rewritten meanwhile (a new revision): its count starts again.
    later = plan_expiry([("a", 3), ("b", 8)], early.pending, now=105.0, ttl=5.0)
    assert later.due == (("a", 3),)
    assert later.pending["b"] == PendingDeletion(revision=8, first_seen=105.0)

    # Entries that are no longer unavailable are forgotten; due ones are bounded and sorted.
    gone = plan_expiry([], later.pending, now=200.0, ttl=5.0)
    assert gone.pending == {}
    assert gone.due == ()
    many = {f"x{i}": PendingDeletion(revision=i, first_seen=0.0) for i in range(5)}
    bounded = plan_expiry([(f"x{i}", i) for i in (4, 1, 3, 0, 2)], many, 10.0, 5.0, limit=2)
    assert bounded.due == (("x0", 0), ("x1", 1))
    assert len(bounded.pending) == 5


def test_member_changes_lists_nodes_that_came_went_or_changed() -> None:
    def view(node: str, status: str, incarnation: int) -> MemberView:
        return MemberView(id=node, status=status, incarnation=incarnation)

    old = {"a": view("a", "alive", 1), "b": view("b", "alive", 1), "c": view("c", "alive", 1)}
    new = {"a": view("a", "alive", 1), "b": view("b", "dead", 1), "d": view("d", "alive", 1)}
    changes = member_changes(old, new, now=7.0)
    assert [(c.node, c.previous_status, c.status) for c in changes] == [
        ("b", "alive", "dead"),
        ("c", "alive", None),
        ("d", None, "alive"),
    ]
    assert {c.at for c in changes} == {7.0}
    rejoined = member_changes(new, {**new, "b": view("b", "alive", 2)}, now=8.0)
    assert [(c.previous_incarnation, c.incarnation) for c in rejoined] == [(1, 2)]


async def test_start_system_agents_refuses_bad_settings_and_unstarted_nodes() -> None:
    node = ClusterNode("n1", connect=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unavailable_ttl"):
        await start_system_agents(node, unavailable_ttl=0)
    with pytest.raises(ConfigurationError, match="not started"):
        await start_system_agents(node)
