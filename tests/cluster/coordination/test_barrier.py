"""The barrier on ``Cluster.local`` in virtual time: released together, rounds by generation,
a dead participant named, retries and lost replies."""

from __future__ import annotations

import asyncio

import pytest

from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.coordination.barrier import barrier, barrier_key
from agentcluster.cluster.node import ClusterNode
from agentcluster.core.coordination import BarrierRecord
from agentcluster.errors import BarrierTimeout, ConfigurationError, UsageError
from tests.cluster.coordination.conftest import now

PARTICIPANTS = ("p1", "p2", "p3")


def node_of(cluster: Cluster, participant: str) -> ClusterNode:
    """Participant ``pN`` runs on node ``nN``."""
    return cluster.node(f"n{participant[1:]}")


async def read_round(cluster: Cluster, barrier_id: str) -> BarrierRecord | None:
    liveness = cluster.node("n1").liveness
    assert liveness is not None
    assert liveness.buckets is not None
    entry = await liveness.buckets.coordination.get(barrier_key(barrier_id))
    return None if entry is None else BarrierRecord.from_bytes(entry.value)


async def test_everyone_is_released_together_once_the_last_arrives(cluster: Cluster) -> None:
    released: dict[str, float] = {}

    async def participant(name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await barrier(node_of(cluster, name), "stage-1", PARTICIPANTS, participant=name, timeout=10)
        released[name] = now()

    start = now()
    await asyncio.gather(participant("p1", 0.0), participant("p2", 0.3), participant("p3", 1.2))
    last_arrival = start + 1.2
    assert set(released) == set(PARTICIPANTS)
    assert min(released.values()) >= last_arrival
    assert max(released.values()) - min(released.values()) < 0.01
    record = await read_round(cluster, "stage-1")
    assert record is not None
    assert (record.generation, record.complete) == (1, True)


async def test_a_participant_on_a_killed_node_is_named_by_the_others(cluster: Cluster) -> None:
    async def waiting(name: str) -> BaseException:
        with pytest.raises(BarrierTimeout) as info:
            await barrier(node_of(cluster, name), "mid", PARTICIPANTS, participant=name, timeout=3)
        return info.value

    async def late_p3() -> None:
        await asyncio.sleep(1.0)
        await barrier(node_of(cluster, "p3"), "mid", PARTICIPANTS, participant="p3", timeout=3)

    start = now()
    p3 = asyncio.create_task(late_p3())
    waiters = asyncio.gather(waiting("p1"), waiting("p2"))
    await asyncio.sleep(0.5)
    await cluster.kill_node("n3")  # before p3 arrives
    errors = await waiters
    assert p3.done()
    p3.exception()  # its node was stopped under it; what it raised does not matter here
    for error in errors:
        assert isinstance(error, BarrierTimeout)
        assert error.missing == ("p3",)
        assert error.barrier_id == "mid"
        assert "p3" in str(error)
    assert now() - start == pytest.approx(3.0, abs=0.05)


async def test_one_id_serves_round_after_round(cluster: Cluster) -> None:
    rounds: list[list[str]] = []

    async def participant(name: str) -> None:
        for i in range(3):
            await asyncio.sleep(0.1 * int(name[1:]))  # arrive in a different order each time
            await barrier(node_of(cluster, name), "loop", PARTICIPANTS, participant=name, timeout=5)
            rounds.append([name, str(i)])

    await asyncio.gather(*(participant(p) for p in PARTICIPANTS))
    assert len(rounds) == 9
    record = await read_round(cluster, "loop")
    assert record is not None
    assert (record.generation, record.complete) == (3, True)
    assert len(record.previous) == 3


async def test_a_slow_waiter_that_only_sees_the_next_round_is_released(cluster: Cluster) -> None:
    assert cluster.hub is not None
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    pair = ("a", "b")
    b_first = asyncio.create_task(barrier(n2, "pair", pair, participant="b", timeout=5))
    await asyncio.sleep(0.1)
    cluster.hub.faults.delay_watch(0.5)  # b's watch now lags behind the store
    await barrier(n1, "pair", pair, participant="a", timeout=5)  # completes round 1
    a_next = asyncio.create_task(barrier(n1, "pair", pair, participant="a", timeout=5))
    await asyncio.sleep(0.05)
    record = await read_round(cluster, "pair")
    assert record is not None
    assert (record.generation, sorted(record.arrived)) == (2, ["a"])
    await b_first  # round 1 complete, or round 2 open: either releases it
    cluster.hub.faults.delay_watch(0)
    await barrier(n2, "pair", pair, participant="b", timeout=5)
    await a_next


async def test_a_retry_after_a_timeout_finds_itself_recorded(cluster: Cluster) -> None:
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    with pytest.raises(BarrierTimeout) as info:
        await barrier(n1, "retry", ("a", "b"), participant="a", timeout=0.5)
    assert info.value.missing == ("b",)
    again = asyncio.create_task(barrier(n1, "retry", ("a", "b"), participant="a", timeout=5))
    await asyncio.sleep(0.2)
    record = await read_round(cluster, "retry")
    assert record is not None
    assert (record.generation, sorted(record.arrived)) == (1, ["a"])
    await barrier(n2, "retry", ("a", "b"), participant="b", timeout=5)
    await again


async def test_an_arrival_whose_reply_was_lost_is_not_counted_twice(cluster: Cluster) -> None:
    assert cluster.hub is not None
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    faults = cluster.hub.faults
    faults.ambiguous_writes(1, apply_after=0.0)
    first = asyncio.create_task(barrier(n1, "amb", ("a", "b"), participant="a", timeout=5))
    await asyncio.sleep(1.5)
    assert [r.detail for r in faults.records if r.kind == "ambiguous_applied"] == [
        f"create coordination/{barrier_key('amb')}"
    ]
    record = await read_round(cluster, "amb")
    assert record is not None
    assert (record.generation, sorted(record.arrived)) == (1, ["a"])
    await barrier(n2, "amb", ("a", "b"), participant="b", timeout=5)
    await first
    record = await read_round(cluster, "amb")
    assert record is not None
    assert (record.generation, record.complete) == (1, True)


async def test_misuse_is_refused(cluster: Cluster) -> None:
    n1 = cluster.node("n1")
    with pytest.raises(UsageError, match="not a participant"):
        await barrier(n1, "x", ("a", "b"), participant="c", timeout=1)
    with pytest.raises(UsageError, match="twice"):
        await barrier(n1, "x", ("a", "a"), participant="a", timeout=1)
    with pytest.raises(ConfigurationError, match="timeout"):
        await barrier(n1, "x", ("a", "b"), participant="a", timeout=-1)
    with pytest.raises(ConfigurationError, match="id"):
        await barrier(n1, "", ("a", "b"), participant="a", timeout=1)
    open_round = asyncio.create_task(barrier(n1, "x", ("a", "b"), participant="a", timeout=2))
    await asyncio.sleep(0.1)
    with pytest.raises(UsageError, match="open for participants"):
        await barrier(cluster.node("n2"), "x", ("a", "c"), participant="c", timeout=1)
    with pytest.raises(BarrierTimeout):
        await open_round
