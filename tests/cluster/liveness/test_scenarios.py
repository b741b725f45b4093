"""The key sequences of DESIGN.md ("Liveness, leases and fencing", "Key sequences") on the
memory transport, with the exact virtual-time windows the design promises.

Figures (r = 0.2 s, F = 0.7 s, m = 0.3 s): a node whose renewals stop pauses F after the
send time of its last committed renewal; observers declare it dead F + m after that, and
at most r later (their due check and compare-and-set); a cut-off node that reconnects
rejoins within about one renewal attempt.
"""

from __future__ import annotations

import asyncio

import pytest

from agentcluster.cluster.buckets import NODES
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.errors import NodeSuperseded
from agentcluster.sim import VirtualClock, run
from agentcluster.testing.waiting import eventually, stays
from agentcluster.transport.interface import BucketConfig, Watcher
from agentcluster.transport.memory import MemoryTransport
from tests.cluster.liveness.conftest import EPS, F, Harness, M, Node, R, now

pytestmark = pytest.mark.sim


async def three(cluster: Harness) -> tuple[Node, Node, Node]:
    n1 = await cluster.start("n1")
    n2 = await cluster.start("n2")
    n3 = await cluster.start("n3")

    def settled() -> bool:
        return all(
            set(n.liveness.membership.alive()) == {"n1", "n2", "n3"}
            and n.liveness.membership.complete
            for n in (n1, n2, n3)
        )

    await eventually(settled, timeout=2.0)
    return n1, n2, n3


def declared_dead(cluster: Harness, node_id: str) -> list[tuple[float, str]]:
    return [
        (float(e.measurements["revision"]), e.metadata["observer"])
        for e in cluster.events("node_declared_dead")
        if e.metadata["node_id"] == node_id
    ]


# --- 1. join, restart ------------------------------------------------------------------------


async def test_three_nodes_join_and_a_restart_moves_the_incarnation(cluster: Harness) -> None:
    n1, n2, n3 = await three(cluster)
    for node in (n1, n2, n3):
        alive = node.liveness.membership.alive()
        assert {r.incarnation for r in alive.values()} == {1}
        assert alive["n2"].labels == {"zone": "z1", "region": "r1"}
        assert alive["n2"].capabilities == ("compute",)
        assert node.liveness.incarnation == 1
        assert node.liveness.valid()
    await asyncio.sleep(2.0)
    assert n1.record("n3").renewals >= 9
    connected = {
        (e.metadata["observer"], e.metadata["node_id"]) for e in cluster.events("node_connected")
    }
    assert {("n1", "n2"), ("n2", "n3"), ("n3", "n1")} <= connected

    await cluster.stop(n2)
    again = await cluster.start("n2")
    assert again.liveness.incarnation == 2
    await eventually(
        lambda: all(n.liveness.membership.alive()["n2"].incarnation == 2 for n in (n1, n3)),
        timeout=1.0,
    )
    assert n1.downs("n2") == [(n1.downs("n2")[0][0], "restarted", 1)]
    assert [inc for _, inc in n1.ups("n2")] == [1, 2]
    assert not declared_dead(cluster, "n2")


# --- 2. a killed node ------------------------------------------------------------------------


async def test_a_killed_node_is_declared_dead_within_the_window(cluster: Harness) -> None:
    n1, n2, n3 = await three(cluster)
    await asyncio.sleep(1.53)
    await cluster.kill(n3)
    last = n3.last_renewal_sent()
    assert now() - R <= last <= now()

    await eventually(lambda: n1.downs("n3") and n2.downs("n3"), timeout=3.0)
    for observer in (n1, n2):
        [(at, reason, incarnation)] = observer.downs("n3")
        assert (reason, incarnation) == ("dead", 1)
        assert last + F + M - EPS <= at <= last + F + M + R + 0.01
    assert len(declared_dead(cluster, "n3")) == 1
    assert len(n1.death_watch.declared) + len(n2.death_watch.declared) == 1
    assert n1.record("n3").status is NodeStatus.DEAD
    await asyncio.sleep(2.0)
    assert len(n1.downs("n3")) == 1
    assert len(n2.downs("n3")) == 1
    assert not n1.when("pause")
    assert not n2.when("pause")


# --- 3. a store stall for everyone -------------------------------------------------------------


async def test_a_store_leader_election_pauses_everyone_and_kills_nobody(
    cluster: Harness,
) -> None:
    nodes = await three(cluster)
    await asyncio.sleep(1.07)
    began = now()
    cluster.hub.faults.leader_election(5.0)
    lasts = {n.node_id: n.last_renewal_sent() for n in nodes}

    await asyncio.sleep(5.0 + 2 * R)
    for node in nodes:
        [paused] = node.when("pause")
        assert abs(paused - (lasts[node.node_id] + F)) < EPS
        assert began + F - R - EPS <= paused <= began + F + EPS
        [resumed] = node.when("resume")
        assert began + 5.0 - EPS <= resumed <= began + 5.0 + R + EPS
        assert node.liveness.valid()
        assert not node.liveness.paused
    await asyncio.sleep(3.0)
    assert not cluster.events("node_declared_dead")
    assert not cluster.events("node_disconnected")
    for node in nodes:
        assert len(node.when("pause")) == 1
        assert node.liveness.incarnation == 1
        assert set(node.liveness.membership.alive()) == {"n1", "n2", "n3"}


# --- 4. a cut-off node -----------------------------------------------------------------------


async def test_a_cut_off_node_pauses_first_is_declared_dead_and_rejoins(cluster: Harness) -> None:
    n1, n2, n3 = await three(cluster)
    await asyncio.sleep(1.11)
    cluster.hub.faults.cut_off(["n3"])
    last = n3.last_renewal_sent()

    await eventually(lambda: n1.downs("n3") and n2.downs("n3"), timeout=3.0)
    [paused] = n3.when("pause")
    assert abs(paused - (last + F)) < EPS
    for observer in (n1, n2):
        [(dead_at, reason, _)] = observer.downs("n3")
        assert reason == "dead"
        assert last + F + M - EPS <= dead_at <= last + F + M + R + 0.01
        assert dead_at - paused >= M - EPS
    assert len(declared_dead(cluster, "n3")) == 1
    assert n3.liveness.incarnation == 1
    assert n3.liveness.paused

    await asyncio.sleep(2.0)
    back = now()
    cluster.hub.faults.reconnect_store(["n3"])
    await eventually(lambda: n3.seen("rejoin"), timeout=2.0)
    [rejoined] = n3.when("rejoin")
    assert n3.seen("rejoin") == [(2,)]
    assert back <= rejoined <= back + 2 * R + EPS
    assert n3.liveness.incarnation == 2
    assert n3.liveness.valid()
    assert not n3.liveness.paused
    assert not n3.seen("superseded")
    assert not n3.seen("resume")
    await eventually(
        lambda: all(n.ups("n3")[-1][1] == 2 for n in (n1, n2)),
        timeout=1.0,
    )
    await asyncio.sleep(2.0)
    assert len(declared_dead(cluster, "n3")) == 1
    assert {r.incarnation for r in n1.liveness.membership.alive().values()} == {1, 2}


# --- 5. superseded ---------------------------------------------------------------------------


async def test_a_restart_under_the_same_id_supersedes_the_cut_off_process(
    cluster: Harness,
) -> None:
    n1, old, _n3 = await three(cluster)
    await asyncio.sleep(0.93)
    cluster.hub.faults.cut_off(["n2"])
    await asyncio.sleep(0.1)
    new = await cluster.start("n2", conn_name="n2b")
    assert new.liveness.incarnation == 2
    await eventually(lambda: old.when("pause"), timeout=2.0)

    writes: list[NodeRecord] = []
    spy = await (await cluster.hub.connect("spy")).key_value(BucketConfig(NODES, storage="memory"))
    watcher = await spy.watch()
    watcher_task = asyncio.create_task(_collect(watcher, writes))

    await asyncio.sleep(1.0)
    back = now()
    cluster.hub.faults.reconnect_store(["n2"])
    await eventually(lambda: old.seen("superseded"), timeout=2.0)
    [(error,)] = old.seen("superseded")
    assert isinstance(error, NodeSuperseded)
    assert (error.node_id, error.own_incarnation, error.found_incarnation) == ("n2", 1, 2)
    assert back <= old.when("superseded")[0] <= back + 2 * R + EPS
    assert old.liveness.superseded is error
    assert not old.liveness.valid()
    renewals = old.renewer.renewals
    await asyncio.sleep(0.01)
    beats = old.liveness.heartbeats.sent

    await asyncio.sleep(3.0)
    watcher_task.cancel()
    await asyncio.wait([watcher_task])
    assert writes, "the new process keeps renewing"
    assert all(w.stamp is not None and w.stamp.incarnation == 2 for w in writes)
    assert all(w.incarnation == 2 and w.status is NodeStatus.ALIVE for w in writes)
    assert old.renewer.renewals == renewals
    assert old.liveness.heartbeats.sent == beats, "the superseded process stopped everything"
    assert not old.seen("rejoin")
    assert not old.seen("resume")
    assert not declared_dead(cluster, "n2")
    assert n1.liveness.membership.alive()["n2"].incarnation == 2


async def _collect(watcher: Watcher, into: list[NodeRecord]) -> None:
    while True:
        entry = await watcher.next(timeout=1.0)
        if entry is not None and entry.key == "n2" and not entry.deleted:
            into.append(NodeRecord.from_bytes(entry.value))


# --- 6. ambiguous write timeouts -------------------------------------------------------------


@pytest.mark.parametrize("apply_after", [0.05, 0.5])
async def test_ambiguous_renewals_are_resolved_by_their_stamps(
    cluster: Harness, apply_after: float
) -> None:
    nodes = await three(cluster)
    await asyncio.sleep(1.0)
    before = {n.node_id: n.renewer.renewals for n in nodes}
    cluster.hub.faults.ambiguous_writes(6, apply_after=apply_after)
    await asyncio.sleep(3.0)
    kinds = [r.kind for r in cluster.hub.faults.records]
    assert kinds.count("ambiguous_applied") + kinds.count("ambiguous_refused") == 6
    if apply_after < R:
        assert kinds.count("ambiguous_applied") == 6
    else:
        assert kinds.count("ambiguous_refused") >= 1
    assert not cluster.events("node_declared_dead")
    assert not cluster.events("node_disconnected")
    for node in nodes:
        assert not node.when("pause")
        assert node.renewer.failures >= 0
        assert node.renewer.renewals > before[node.node_id] + 5
        assert node.liveness.valid()
        assert node.liveness.incarnation == 1


# --- 7. the leader ---------------------------------------------------------------------------


async def test_one_leader_a_dead_leader_is_replaced_and_a_client_never_leads(
    cluster: Harness,
) -> None:
    client = await cluster.start("c1", role="client")
    nodes = await three(cluster)

    def leaders() -> list[Node]:
        return [n for n in nodes if n.liveness.is_leader]

    await eventually(lambda: len(leaders()) == 1, timeout=2.0)
    [leader] = leaders()
    holder = leader.liveness.leader()
    assert holder is not None
    assert holder[0] == leader.node_id
    await eventually(
        lambda: all(n.liveness.leader() == holder for n in (*nodes, client)), timeout=1.0
    )
    await asyncio.sleep(1.0)
    assert len(leaders()) == 1
    assert sum(len(n.seen("elected")) for n in nodes) == 1

    await cluster.kill(leader)
    last = leader.last_renewal_sent()
    rest = [n for n in nodes if n is not leader]
    await eventually(lambda: len([n for n in rest if n.liveness.is_leader]) == 1, timeout=3.0)
    [successor] = [n for n in rest if n.liveness.is_leader]
    new_holder = successor.liveness.leader()
    assert new_holder is not None
    assert new_holder[1] > holder[1]
    [(term,)] = successor.seen("elected")
    assert term == new_holder[1]
    [elected_at] = successor.when("elected")
    assert last + F + M - EPS <= elected_at <= last + F + M + R + 0.05
    await eventually(lambda: client.liveness.leader() == new_holder, timeout=1.0)

    await asyncio.sleep(2.0)
    assert not client.liveness.is_leader
    assert client.liveness.leadership.campaigns == 0
    assert all(e.metadata["node_id"] != "c1" for e in cluster.events("leader", "elected"))
    assert "c1" not in client.liveness.membership.members()
    assert [n for n in rest if n.liveness.is_leader] == [successor]


# --- 8. heartbeats ---------------------------------------------------------------------------


async def test_heartbeats_keep_phi_low_and_suspect_a_killed_peer_before_it_is_dead(
    cluster: Harness,
) -> None:
    n1, _n2, n3 = await three(cluster)
    await asyncio.sleep(1.0)
    highest = 0.0
    for _ in range(100):
        highest = max(highest, n1.liveness.heartbeats.phi("n2"), n1.liveness.heartbeats.phi("n3"))
        await asyncio.sleep(0.01)
    assert 0.0 < highest < 1.0
    assert n1.liveness.heartbeats.suspects() == frozenset()
    view = {v.peer: v for v in n1.liveness.topology()}
    assert set(view) == {"n2", "n3"}
    assert view["n3"].incarnation == 1

    await asyncio.sleep(0.047)
    await cluster.kill(n3)
    [age] = [v.last_heartbeat_age for v in n1.liveness.topology() if v.peer == "n3"]
    assert age is not None
    last_heard = now() - age
    await eventually(lambda: "n3" in n1.liveness.heartbeats.suspects(), timeout=1.0, interval=0.001)
    suspected_at = now()
    assert 0.15 <= suspected_at - last_heard <= 0.25
    assert n1.record("n3").status is NodeStatus.ALIVE
    assert n1.liveness.heartbeats.suspects() == frozenset({"n3"})
    await eventually(lambda: n1.downs("n3"), timeout=2.0)
    assert n1.downs("n3")[0][0] - suspected_at > 0.5
    await stays(lambda: "n2" in n1.liveness.heartbeats.suspects(), 0.5)


# --- replay ----------------------------------------------------------------------------------


def test_a_scenario_replays_exactly_from_its_seed() -> None:
    async def scenario() -> list[str]:
        harness = Harness(MemoryTransport(seed="replay"), VirtualClock(asyncio.get_running_loop()))
        n1, n2, n3 = await three(harness)
        await asyncio.sleep(0.5)
        await harness.kill(n3)
        harness.hub.faults.cut_off(["n2"])
        await asyncio.sleep(2.0)
        harness.hub.faults.reconnect_store(["n2"])
        await asyncio.sleep(1.0)
        log = [f"{t!r} {n.node_id} {kind} {args!r}" for n in (n1, n2) for t, kind, args in n.events]
        log += [f"{e.event} {e.measurements} {e.metadata}" for e in harness.recorder.events()]
        await harness.close()
        return log

    first = run(scenario(), seed="replay", shuffle=True)
    assert any("rejoin" in line for line in first)
    assert run(scenario(), seed="replay", shuffle=True) == first
