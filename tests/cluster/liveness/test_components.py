"""The pieces under the scenarios: the stamped write, the watched cache, heartbeats, leave."""

from __future__ import annotations

import asyncio

import pytest

from agentcluster.cluster.buckets import NODES, bucket_configs, ensure_buckets, stamped_update
from agentcluster.cluster.heartbeat import Heartbeat, Heartbeats, heartbeat_subject
from agentcluster.cluster.membership import Membership, node_stamp
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import CorruptRecord, NoResponders, RequestTimeout, RevisionMismatch
from agentcluster.sim import VirtualClock
from agentcluster.testing.waiting import eventually
from agentcluster.transport.interface import BucketConfig, KeyValue
from agentcluster.transport.memory import MemoryTransport
from tests.cluster.liveness.conftest import EPS, F, Harness, M, now

pytestmark = pytest.mark.sim


def record(node: str, incarnation: int, writer: str, nonce: int) -> NodeRecord:
    return NodeRecord(node, incarnation, stamp=WriteStamp(writer, 1, nonce))


def mine(nonce: int) -> tuple[bytes, WriteStamp]:
    """Node ``a``'s record, stamped ``(a, 1, nonce)``, and the stamp."""
    stamp = WriteStamp("a", 1, nonce)
    return NodeRecord("a", 1, stamp=stamp).to_bytes(), stamp


async def nodes_bucket(hub: MemoryTransport, name: str = "w") -> KeyValue:
    conn = await hub.connect(name)
    return await conn.key_value(BucketConfig(NODES, storage="memory"))


# --- the stamped write -----------------------------------------------------------------------


async def test_a_timed_out_write_that_landed_is_found_by_its_stamp() -> None:
    hub = MemoryTransport(seed="stamps")
    kv = await nodes_bucket(hub)
    rev = await kv.create("a", record("a", 1, "a", 1).to_bytes())
    value, stamp = mine(2)
    hub.faults.ambiguous_writes(1, apply_after=0.05)
    began = now()
    landed = await stamped_update(kv, "a", value, stamp, rev, stamp_of=node_stamp, timeout=0.2)
    assert now() - began == pytest.approx(0.2)
    entry = await kv.get("a")
    assert entry is not None
    assert entry.revision == landed == rev + 1
    assert entry.value == value


async def test_a_timed_out_write_that_did_not_land_is_repeated_at_the_same_revision() -> None:
    hub = MemoryTransport(seed="stamps")
    kv = await nodes_bucket(hub)
    rev = await kv.create("a", record("a", 1, "a", 1).to_bytes())
    value, stamp = mine(2)
    hub.faults.ambiguous_writes(1, apply_after=0.5)
    landed = await stamped_update(kv, "a", value, stamp, rev, stamp_of=node_stamp, timeout=0.2)
    assert landed == rev + 1
    await asyncio.sleep(0.5)
    assert [r.kind for r in hub.faults.records][-1] == "ambiguous_refused"
    entry = await kv.get("a")
    assert entry is not None
    assert entry.revision == landed


async def test_a_repeat_never_overwrites_another_writer() -> None:
    """An observer's ``alive -> dead`` that lands while our renewal's reply is lost stays."""
    hub = MemoryTransport(seed="stamps")
    kv = await nodes_bucket(hub)
    observer = await nodes_bucket(hub, "observer")
    alive = record("a", 1, "a", 1)
    rev = await kv.create("a", alive.to_bytes())
    value, stamp = mine(2)
    dead = alive.declared_dead(WriteStamp("observer", 1, 1))
    hub.faults.ambiguous_writes(1, apply_after=1.0)
    asyncio.get_running_loop().call_later(
        0.1, lambda: asyncio.ensure_future(observer.update("a", dead.to_bytes(), rev))
    )
    with pytest.raises(RevisionMismatch):
        await stamped_update(kv, "a", value, stamp, rev, stamp_of=node_stamp, timeout=0.2)
    await asyncio.sleep(1.0)
    entry = await kv.get("a")
    assert entry is not None
    assert NodeRecord.from_bytes(entry.value).status is NodeStatus.DEAD


async def test_a_cut_off_write_stays_unknown_after_its_attempts() -> None:
    hub = MemoryTransport(seed="stamps")
    kv = await nodes_bucket(hub)
    rev = await kv.create("a", record("a", 1, "a", 1).to_bytes())
    value, stamp = mine(2)
    hub.faults.cut_off(["w"])
    began = now()
    with pytest.raises(RequestTimeout):
        await stamped_update(
            kv, "a", value, stamp, rev, stamp_of=node_stamp, timeout=0.2, attempts=3
        )
    assert now() - began == pytest.approx(0.6)


async def test_a_write_refused_fast_raises_at_once_and_creates_fail_on_present_keys() -> None:
    hub = MemoryTransport(seed="stamps")
    kv = await nodes_bucket(hub)
    value, stamp = mine(1)
    hub.faults.leader_election(1.0)
    with pytest.raises(NoResponders):
        await stamped_update(kv, "a", value, stamp, None, stamp_of=node_stamp, timeout=0.2)
    assert now() == 0.0
    await asyncio.sleep(1.0)
    rev = await stamped_update(kv, "a", value, stamp, None, stamp_of=node_stamp, timeout=0.2)
    assert rev == 1


async def test_buckets_are_created_once_with_their_replicas() -> None:
    hub = MemoryTransport(seed="buckets")
    conn = await hub.connect("a")
    first = await ensure_buckets(conn, replicas=3, storage="memory")
    again = await ensure_buckets(conn, replicas=3, storage="memory")
    assert first.nodes.bucket == again.nodes.bucket == "nodes"
    assert [c.name for c in bucket_configs()] == [
        "nodes",
        "agents",
        "leader",
        "state",
        "reservations",
        "coordination",
    ]
    assert {c.replicas for c in bucket_configs(3)} == {3}


# --- the membership cache --------------------------------------------------------------------


async def test_a_membership_cache_that_fell_behind_is_rebuilt_complete() -> None:
    hub = MemoryTransport(seed="cache")
    writer = await nodes_bucket(hub)
    for i in range(3):
        await writer.create(f"n{i}", record(f"n{i}", 1, f"n{i}", 1).to_bytes())
    seen: list[tuple[str, str]] = []
    cache = Membership(
        await nodes_bucket(hub, "reader"),
        observer="reader",
        pending_limit=4,
        on_node_up=lambda r: seen.append(("up", r.id)),
        on_node_down=lambda r, why: seen.append((why, r.id)),
        poll=0.1,
    )
    await cache.start()
    await eventually(lambda: cache.complete, timeout=1.0)
    assert sorted(cache.alive()) == ["n0", "n1", "n2"]
    for i in range(3, 12):  # no await yields in between: the watcher overflows
        await writer.create(f"n{i}", record(f"n{i}", 1, f"n{i}", 1).to_bytes())
    entry = await writer.get("n0")
    assert entry is not None
    await writer.update("n0", NodeRecord("n0", 1, NodeStatus.DEAD).to_bytes(), entry.revision)
    await eventually(lambda: cache.rebuilds == 1 and cache.complete, timeout=2.0)
    assert sorted(cache.alive()) == sorted(f"n{i}" for i in range(1, 12))
    dead = cache.get("n0")
    assert dead is not None
    assert dead.status is NodeStatus.DEAD
    assert ("dead", "n0") in seen
    assert sorted(id for kind, id in seen if kind == "up") == sorted(f"n{i}" for i in range(12))
    await cache.stop()


async def test_unreadable_records_are_counted_and_left_out() -> None:
    hub = MemoryTransport(seed="cache")
    writer = await nodes_bucket(hub)
    await writer.create("bad", b"{not json")
    await writer.create("good", record("good", 1, "good", 1).to_bytes())
    cache = Membership(await nodes_bucket(hub, "reader"), observer="reader")
    await cache.start()
    assert sorted(cache.members()) == ["good"]
    assert cache.corrupt == 1
    await cache.stop()


# --- heartbeats ------------------------------------------------------------------------------


class _StallClock(VirtualClock):
    """Reads the loop, plus whatever time the test says this node lost."""

    stalled = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self.stalled


async def test_own_loop_lag_is_measured_and_stretches_suspicion() -> None:
    hub = MemoryTransport(seed="lag")
    clock = _StallClock(asyncio.get_running_loop())
    listener = Heartbeats(await hub.connect("a"), "a", incarnation=lambda: 1, clock=clock)
    talker = Heartbeats(await hub.connect("b"), "b", incarnation=lambda: 1)
    await listener.start()
    await talker.start()
    await asyncio.sleep(1.0)
    assert listener.lag == 0.0
    assert listener.health.score == 0
    clock.stalled += 0.3  # the next timer of "a" fires 0.3 s late
    await eventually(lambda: listener.lag > 0.0, timeout=0.2, interval=0.001)
    assert listener.lag == pytest.approx(0.3)
    assert listener.health.score == 1
    assert listener.view()[0].peer == "b"
    await listener.stop()
    await talker.stop()


async def test_heartbeats_of_an_older_incarnation_are_ignored_and_bad_ones_counted() -> None:
    hub = MemoryTransport(seed="hb")
    conn = await hub.connect("a")
    beats = Heartbeats(conn, "a", incarnation=lambda: 1, publish=False)
    await beats.start()
    sender = await hub.connect("b")
    await sender.publish(heartbeat_subject("b"), Heartbeat("b", 2, 1, 3, 0.5).to_bytes())
    await sender.publish(heartbeat_subject("b"), Heartbeat("b", 1, 9, 1, 0.1).to_bytes())
    await sender.publish(heartbeat_subject("b"), b"[]")
    await asyncio.sleep(0.01)
    [view] = beats.view()
    assert (view.peer, view.incarnation, view.agent_count) == ("b", 2, 3)
    assert beats.malformed == 1
    with pytest.raises(CorruptRecord):
        Heartbeat.from_bytes(b'{"node": "x", "inc": true}')
    await beats.stop()


# --- leaving ---------------------------------------------------------------------------------


async def test_a_node_that_leaves_is_never_declared_dead_and_its_lead_passes_on(
    cluster: Harness,
) -> None:
    n1 = await cluster.start("n1")
    n2 = await cluster.start("n2")
    await eventually(lambda: n1.liveness.is_leader or n2.liveness.is_leader, timeout=2.0)
    leader, other = (n1, n2) if n1.liveness.is_leader else (n2, n1)
    await eventually(lambda: other.liveness.leader() == (leader.node_id, 1), timeout=1.0)
    await asyncio.sleep(0.5)
    left_at = now()
    assert await leader.liveness.leave()
    await eventually(lambda: other.downs(leader.node_id), timeout=1.0)
    [(at, reason, incarnation)] = other.downs(leader.node_id)
    assert (reason, incarnation) == ("left", 1)
    assert at == pytest.approx(left_at)
    await eventually(lambda: other.liveness.is_leader, timeout=1.0)
    assert other.liveness.leader() == (other.node_id, 2)
    assert abs(other.when("elected")[0] - left_at) < EPS
    await asyncio.sleep(F + M + 1.0)
    assert not cluster.events("node_declared_dead")
    assert other.record(leader.node_id).status is NodeStatus.LEFT
