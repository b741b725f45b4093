"""The distributed lock on ``Cluster.local`` in virtual time: exclusion, fencing tokens,
takeover from a dead holder, and writes whose replies were lost."""

from __future__ import annotations

import asyncio

import pytest

from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.coordination.locks import (
    acquire_lock,
    check_token,
    lock_holder,
    lock_key,
)
from agentcluster.cluster.node import ClusterNode
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.membership import NodeStatus
from agentcluster.errors import ConfigurationError, LockLost, LockTimeout, UsageError
from agentcluster.sim import VirtualClock
from agentcluster.testing.waiting import eventually
from agentcluster.transport.interface import Connection
from tests.cluster.coordination.conftest import now

DETECTION = LeaseTiming().death_after  # F + m: a killed node is declared dead within ~this


def nodes(cluster: Cluster) -> tuple[ClusterNode, ClusterNode, ClusterNode]:
    return cluster.node("n1"), cluster.node("n2"), cluster.node("n3")


async def test_one_holder_at_a_time_and_each_holding_has_a_higher_token(
    cluster: Cluster,
) -> None:
    n1, n2, _ = nodes(cluster)
    first = await acquire_lock(n1, "orders/eu west#1", owner="w1", timeout=1)
    assert (first.name, first.owner, first.node_id) == ("orders/eu west#1", "w1", "n1")
    await first.check()
    holder = await lock_holder(n2, "orders/eu west#1")
    assert holder is not None
    assert (holder.owner, holder.node, holder.token) == ("w1", "n1", first.token)
    started = now()
    with pytest.raises(LockTimeout) as info:
        await acquire_lock(n2, "orders/eu west#1", owner="w2", timeout=0.5)
    assert info.value.holder == "w1"
    assert now() - started == pytest.approx(0.5, abs=0.01)
    with pytest.raises(LockTimeout):
        await acquire_lock(n2, "orders/eu west#1", owner="w2", timeout=0)
    await first.release()
    assert first.released
    assert await lock_holder(n2, "orders/eu west#1") is None
    with pytest.raises(LockLost, match="released"):
        await first.check()
    async with await acquire_lock(n2, "orders/eu west#1", owner="w2", timeout=0) as second:
        assert second.token > first.token
        assert (await check_token(n1, "orders/eu west#1", second.token)).owner == "w2"
        with pytest.raises(LockLost):
            await check_token(n1, "orders/eu west#1", first.token)
    assert second.released
    third = await acquire_lock(n1, "orders/eu west#1", owner="w1", timeout=0)
    assert third.token > second.token
    await third.release()
    await third.release()  # idempotent


async def test_a_waiter_gets_the_lock_as_soon_as_it_is_released(cluster: Cluster) -> None:
    n1, n2, _ = nodes(cluster)
    held = await acquire_lock(n1, "job", owner="w1", timeout=1)
    waiter = asyncio.create_task(acquire_lock(n2, "job", owner="w2", timeout=10))
    await asyncio.sleep(2.0)
    assert not waiter.done()
    released_at = now()
    await held.release()
    got = await waiter
    assert got.token > held.token
    assert now() - released_at < 0.05  # woken by the watch, not a poll
    await got.release()


async def test_contenders_on_every_node_take_turns_in_token_order(cluster: Cluster) -> None:
    inside: list[str] = []
    order: list[int] = []
    overlaps = 0

    async def worker(node: ClusterNode, owner: str) -> None:
        nonlocal overlaps
        for _ in range(4):
            async with await acquire_lock(node, "shared", owner=owner, timeout=30) as lock:
                if inside:
                    overlaps += 1
                inside.append(owner)
                order.append(lock.token)
                await asyncio.sleep(0.01)
                await lock.check()
                inside.remove(owner)

    await asyncio.gather(
        *(worker(node, f"{node.node_id}-{i}") for node in nodes(cluster) for i in range(2))
    )
    assert overlaps == 0
    assert len(order) == 24
    assert order == sorted(order)
    assert len(set(order)) == 24


async def test_a_killed_holders_lock_goes_to_a_waiter_with_a_higher_token(
    cluster: Cluster,
) -> None:
    n1, n2, n3 = nodes(cluster)
    held = await acquire_lock(n3, "leader-job", owner="w3", timeout=1)
    waiter = asyncio.create_task(acquire_lock(n1, "leader-job", owner="w1", timeout=10))
    await asyncio.sleep(0.5)
    assert not waiter.done()
    killed_at = now()
    await cluster.kill_node("n3")
    got = await waiter
    waited = now() - killed_at
    assert cluster.members()["n3"].status is NodeStatus.DEAD
    # Declared dead F + m after its last renewal, then one watch delivery and one write.
    assert DETECTION - 0.3 <= waited <= DETECTION + 0.3, waited
    assert got.token > held.token
    assert (got.owner, got.node_id) == ("w1", "n1")
    # The dead holder's token fails from every view, its own handle included.
    for observer in (n1, n2):
        with pytest.raises(LockLost, match="taken over by 'w1'"):
            await check_token(observer, "leader-job", held.token)
    with pytest.raises(LockLost, match="stopped"):
        await held.check()
    await got.check()
    await got.release()


async def test_a_dead_holders_token_fails_even_before_anyone_takes_over(
    cluster: Cluster,
) -> None:
    n1, _, n3 = nodes(cluster)
    held = await acquire_lock(n3, "idle", owner="w3", timeout=1)
    await cluster.kill_node("n3")
    await eventually(lambda: cluster.members()["n3"].status is NodeStatus.DEAD, 3)
    with pytest.raises(LockLost, match="node 'n3' is dead"):
        await check_token(n1, "idle", held.token)
    assert await lock_holder(n1, "idle") is None
    got = await acquire_lock(n1, "idle", owner="w1", timeout=0)
    assert got.token > held.token


async def test_a_cut_off_holder_is_fenced_then_learns_it_lost_the_lock(cluster: Cluster) -> None:
    n1, _, n3 = nodes(cluster)
    assert cluster.hub is not None
    held = await acquire_lock(n3, "fenced", owner="w3", timeout=1)
    waiter = asyncio.create_task(acquire_lock(n1, "fenced", owner="w1", timeout=10))
    cluster.hub.faults.cut_off(["n3"])
    got = await waiter
    assert got.token > held.token
    # Its lease lapsed before anyone could declare it dead: its own check fails without I/O.
    with pytest.raises(LockLost, match="lease lapsed"):
        await held.check()
    cluster.hub.faults.reconnect_store(["n3"])
    with pytest.raises(LockLost, match="taken over by 'w1'"):
        await held.release()
    assert held.released
    await got.check()
    await eventually(lambda: cluster.members()["n3"].status is NodeStatus.ALIVE, 5)
    await got.release()


async def test_a_store_leader_election_delays_an_acquire_without_breaking_it(
    cluster: Cluster,
) -> None:
    n1, n2, _ = nodes(cluster)
    assert cluster.hub is not None
    cluster.hub.faults.leader_election(2.0)
    started = now()
    with pytest.raises(LockTimeout):
        await acquire_lock(n1, "stall", owner="w1", timeout=1)
    lock = await acquire_lock(n1, "stall", owner="w1", timeout=5)
    # Writes failed fast, and every lease lapsed meanwhile: taken once both came back.
    assert now() - started >= 2.0
    assert cluster.members()["n1"].status is NodeStatus.ALIVE
    holder = await lock_holder(n2, "stall")
    assert holder is not None
    assert holder.token == lock.token
    await lock.release()


async def test_leaving_the_block_with_an_error_releases_and_keeps_the_error(
    cluster: Cluster,
) -> None:
    n1, n2, _ = nodes(cluster)
    with pytest.raises(RuntimeError, match="work failed"):
        async with await acquire_lock(n1, "err", owner="w1", timeout=1) as lock:
            raise RuntimeError("work failed")
    assert lock.released
    assert await lock_holder(n2, "err") is None


async def test_a_write_whose_reply_was_lost_gives_exactly_one_holding(cluster: Cluster) -> None:
    n1, n2, _ = nodes(cluster)
    assert cluster.hub is not None
    faults = cluster.hub.faults
    faults.ambiguous_writes(1, apply_after=0.0)
    lock = await acquire_lock(n1, "amb", owner="w1", timeout=5)
    key = lock_key("amb")
    assert [r.detail for r in faults.records if r.kind == "ambiguous_applied"] == [
        f"create coordination/{key}"
    ]
    # The timed-out create was read back and found: one holding, under its revision.
    holder = await lock_holder(n2, "amb")
    assert holder is not None
    assert (holder.owner, holder.token) == ("w1", lock.token)
    with pytest.raises(LockTimeout):
        await acquire_lock(n2, "amb", owner="w2", timeout=0.2)
    # A release whose reply is lost is found the same way.
    faults.ambiguous_writes(1, apply_after=0.0)
    await lock.release()
    assert await lock_holder(n2, "amb") is None
    again = await acquire_lock(n2, "amb", owner="w2", timeout=0)
    assert again.token > lock.token


async def test_a_cancelled_acquire_whose_write_lands_later_frees_the_lock(
    cluster: Cluster,
) -> None:
    n1, n2, _ = nodes(cluster)
    assert cluster.hub is not None
    cluster.hub.faults.ambiguous_writes(1, apply_after=0.3)
    attempt = asyncio.create_task(acquire_lock(n1, "cancelled", owner="w1", timeout=5))
    await asyncio.sleep(0.1)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    # The create lands at 0.3 s for a caller that is gone: n1 (alive) holds it for nobody...
    faults = cluster.hub.faults
    await eventually(lambda: any(r.kind == "ambiguous_applied" for r in faults.records), 1)
    orphan = await lock_holder(n2, "cancelled")
    assert orphan is not None
    assert (orphan.owner, orphan.node) == ("w1", "n1")
    # ...until the sweep, which saw its stamp, frees it again within a poll.
    lock = await acquire_lock(n2, "cancelled", owner="w2", timeout=2)
    assert lock.token > orphan.token
    assert now() < 1.0
    await lock.release()


async def test_an_acquire_that_gave_up_frees_the_lock_if_its_write_lands_late() -> None:
    # One node with slow renewals, so the three timed-out writes are all the lock's own.
    timing = LeaseTiming(renew_interval=5.0, fencing_timeout=10.3, margin=0.3)
    loop = asyncio.get_running_loop()
    async with Cluster.local(nodes=1, clock=VirtualClock(loop), timing=timing) as cluster:
        n1 = cluster.node("n1")
        assert cluster.hub is not None
        assert n1.liveness is not None
        renewer = n1.liveness.renewer
        assert renewer is not None
        before = renewer.renewals
        await eventually(lambda: renewer.renewals > before, 10)
        faults = cluster.hub.faults
        faults.ambiguous_writes(3, apply_after=4.0)
        started = now()
        with pytest.raises(LockTimeout):
            await acquire_lock(n1, "late", owner="w1", timeout=2)
        key = lock_key("late")
        gave_up = now()
        assert gave_up - started < 4.0
        # The first write lands 4 s after it was sent, after the caller gave up; the sweep
        # sees its stamp and frees the lock again within a poll.
        freed = await _wait_free(n1, "late", within=4.0)
        assert started + 4.0 <= freed <= started + 4.0 + 0.6
        await eventually(
            lambda: (
                [
                    r.kind
                    for r in faults.records
                    if r.detail.startswith(f"create coordination/{key}")
                ]
                == ["ambiguous_applied", "ambiguous_refused", "ambiguous_refused"]
            ),
            5,
        )
        again = await acquire_lock(n1, "late", owner="w1", timeout=0)
        assert again.token > 0
        await again.release()


async def _wait_free(node: ClusterNode, name: str, *, within: float) -> float:
    """When the lock was first seen free with a record in place (loop time)."""

    async def free() -> bool:
        assert node.liveness is not None
        assert node.liveness.buckets is not None
        entry = await node.liveness.buckets.coordination.get(lock_key(name))
        return entry is not None and b'"free"' in entry.value

    await eventually(free, within)
    return now()


async def test_bad_arguments_and_clients_are_refused(cluster: Cluster) -> None:
    n1, _, _ = nodes(cluster)
    with pytest.raises(ConfigurationError, match="no ttl"):
        await acquire_lock(n1, "x", owner="w", timeout=1, ttl=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="owner"):
        await acquire_lock(n1, "x", owner="", timeout=1)
    with pytest.raises(ConfigurationError, match="timeout"):
        await acquire_lock(n1, "x", owner="w", timeout=-1)
    with pytest.raises(ConfigurationError, match="name"):
        await acquire_lock(n1, "", owner="w", timeout=1)
    assert cluster.hub is not None
    hub = cluster.hub

    async def connect(name: str) -> Connection:
        return await hub.connect(name)

    client = ClusterNode(
        "c1", connect, role="client", clock=VirtualClock(asyncio.get_running_loop())
    )
    await client.start()
    try:
        with pytest.raises(UsageError, match="client"):
            await acquire_lock(client, "x", owner="w", timeout=1)
        lock = await acquire_lock(n1, "x", owner="w", timeout=1)
        assert (await check_token(client, "x", lock.token)).node == "n1"
        await lock.release()
    finally:
        await client.stop(leave=False)
