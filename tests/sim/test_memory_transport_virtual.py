"""The memory transport on the virtual-time loop: every fault lands at an exact virtual time,
and each test, seconds or minutes of cluster time, takes milliseconds of real time.

These run through ``conftest.py`` (``pytest_asyncio_loop_factories``), so fixtures and tests
share one ``VirtualEventLoop`` that starts at 0.0; the replay tests call ``sim.run`` twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from agentcluster.errors import NoResponders, RequestTimeout
from agentcluster.sim import VirtualEventLoop, run
from agentcluster.transport.interface import (
    BucketConfig,
    ConsumerConfig,
    Message,
    Operation,
    StreamConfig,
)
from agentcluster.transport.memory import MemoryConnection, MemoryTransport

pytestmark = pytest.mark.sim


def now() -> float:
    return asyncio.get_running_loop().time()


@pytest.fixture(autouse=True)
def _fast() -> Iterator[None]:
    """Every test here must take milliseconds of real time, whatever it simulates."""
    began = time.perf_counter()
    yield
    assert time.perf_counter() - began < 1.0


@pytest.fixture
async def hub() -> AsyncIterator[MemoryTransport]:
    assert isinstance(asyncio.get_running_loop(), VirtualEventLoop)
    transport = MemoryTransport(seed="virtual")
    yield transport
    await transport.close()


@pytest.fixture
async def a(hub: MemoryTransport) -> MemoryConnection:
    return await hub.connect("a")


@pytest.fixture
async def b(hub: MemoryTransport) -> MemoryConnection:
    return await hub.connect("b")


# --- store faults --------------------------------------------------------------------------


async def test_leader_election_refuses_writes_for_exactly_its_duration(
    hub: MemoryTransport, a: MemoryConnection
) -> None:
    kv = await a.key_value(BucketConfig("cfg"))
    await kv.put("k", b"0")
    start = now()
    hub.faults.leader_election(5.0)
    failures = 0
    while True:
        try:
            await kv.put("k", b"1")
            break
        except NoResponders:
            failures += 1
            await asyncio.sleep(0.5)
    assert now() - start == 5.0
    assert failures == 10
    entry = await kv.get("k")
    assert entry is not None
    assert entry.value == b"1"


async def test_leader_election_stalls_reads_until_it_ends_or_they_time_out(
    hub: MemoryTransport, a: MemoryConnection
) -> None:
    kv = await a.key_value(BucketConfig("cfg"))
    await kv.put("k", b"v")
    hub.faults.leader_election(5.0)
    start = now()
    with pytest.raises(RequestTimeout):
        await kv.get("k", timeout=2.0)
    assert now() - start == 2.0
    entry = await kv.get("k", timeout=10.0)  # waits out the remaining 3 s
    assert entry is not None
    assert now() - start == 5.0


async def test_cut_off_writes_time_out_after_their_timeout_and_reads_are_stale(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    kv_a = await a.key_value(BucketConfig("nodes"))
    kv_b = await b.key_value(BucketConfig("nodes"))
    await kv_a.put("n.a", b"1")
    hub.faults.cut_off(["b"])
    await kv_a.put("n.a", b"2")

    start = now()
    with pytest.raises(RequestTimeout):
        await kv_b.put("n.b", b"x", timeout=0.75)
    assert now() - start == 0.75
    with pytest.raises(RequestTimeout):
        await kv_b.put("n.b", b"x")  # the interface default: 5 s
    assert now() - start == 5.75

    stale = await kv_b.get("n.a")
    assert stale is not None
    assert stale.value == b"1"
    assert await kv_b.get("n.b") is None

    hub.faults.reconnect_store(["b"])
    fresh = await kv_b.get("n.a")
    assert fresh is not None
    assert fresh.value == b"2"


async def test_ambiguous_write_times_out_and_lands_at_its_exact_time(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    kv_a = await a.key_value(BucketConfig("cfg"))
    kv_b = await b.key_value(BucketConfig("cfg"))
    watcher = await kv_b.watch("k")
    hub.faults.ambiguous_writes(1, apply_after=3.0)
    start = now()
    with pytest.raises(RequestTimeout):
        await kv_a.put("k.x", b"late", timeout=1.0)
    assert now() - start == 1.0
    assert await kv_a.get("k.x") is None
    entry = await watcher.next(timeout=10.0)
    assert entry is not None
    assert entry.value == b"late"
    assert now() - start == 3.0
    await watcher.stop()


# --- messages ------------------------------------------------------------------------------


async def test_delayed_messages_arrive_at_exact_times_in_order(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    arrivals: list[tuple[float, bytes]] = []
    done = asyncio.Event()

    async def handler(msg: Message) -> None:
        arrivals.append((now(), msg.data))
        if msg.data == b"3":
            done.set()

    await b.subscribe("hb.>", handler)
    hub.faults.delay(0.25, subject="hb.>")
    await a.publish("hb.a", b"1")
    await asyncio.sleep(0.125)
    await a.publish("hb.a", b"2")
    hub.faults.clear_message_faults()
    await a.publish("hb.a", b"3")  # undelayed, yet queued behind the delayed ones
    await done.wait()
    assert arrivals == [(0.25, b"1"), (0.375, b"2"), (0.375, b"3")]
    assert hub.faults.delayed == 2


async def test_request_without_reply_times_out_at_exact_time(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    async def silent(msg: Message) -> None:
        return None

    async def echo(msg: Message) -> None:
        await asyncio.sleep(1.5)
        await b.publish(msg.reply, msg.data)

    await b.subscribe("svc.silent", silent)
    await b.subscribe("svc.echo", echo)
    start = now()
    with pytest.raises(RequestTimeout):
        await a.request("svc.silent", b"?", timeout=30.0)
    assert now() - start == 30.0
    reply = await a.request("svc.echo", b"hi", timeout=2.0)
    assert reply.data == b"hi"
    assert now() - start == 31.5
    hub.faults.partition(["b"])
    with pytest.raises(RequestTimeout):
        await a.request("svc.echo", b"hi", timeout=2.0)
    assert now() - start == 33.5


# --- watches and consumers -------------------------------------------------------------------


async def test_key_value_watch_sees_changes_when_they_happen(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    kv_a = await a.key_value(BucketConfig("agents"))
    kv_b = await b.key_value(BucketConfig("agents"))
    await kv_a.put("agent.one", b"v1")
    watcher = await kv_b.watch("agent")
    assert [e.key for e in watcher.initial] == ["agent.one"]

    async def writer() -> None:
        await asyncio.sleep(1.0)
        await kv_a.put("agent.two", b"v1")
        await asyncio.sleep(1.0)
        hub.faults.delay_watch(1.5)
        await kv_a.delete("agent.one")
        await asyncio.sleep(10.0)
        await kv_a.put("other.key", b"ignored")

    seen: list[tuple[float, str, Operation]] = []
    async with asyncio.TaskGroup() as tg:
        tg.create_task(writer())
        for _ in range(2):
            entry = await watcher.next(timeout=60.0)
            assert entry is not None
            seen.append((now(), entry.key, entry.operation))
        assert await watcher.next(timeout=4.0) is None
        timed_out_at = now()
    assert seen == [(1.0, "agent.two", Operation.PUT), (3.5, "agent.one", Operation.DELETE)]
    assert timed_out_at == 7.5
    await watcher.stop()


async def test_consumer_redelivers_after_ack_wait_at_exact_time(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    stream_a = await a.stream(StreamConfig("WORK", ("work.>",)))
    stream_b = await b.stream(StreamConfig("WORK", ("work.>",)))
    await stream_a.publish("work.job", b"job-1")
    config = ConsumerConfig("workers", ack_wait=30.0)
    first = await (await stream_a.consumer(config)).fetch(1, timeout=1.0)
    assert [(d.data, d.num_delivered) for d in first] == [(b"job-1", 1)]
    taken_at = now()

    # Worker a dies without acking; worker b waits, and gets it back after ack_wait.
    second = await (await stream_b.consumer(config)).fetch(1, timeout=120.0)
    assert [(d.data, d.num_delivered) for d in second] == [(b"job-1", 2)]
    assert now() - taken_at == 30.0

    await second[0].nak(delay=12.5)
    third = await (await stream_b.consumer(config)).fetch(1, timeout=120.0)
    assert [d.num_delivered for d in third] == [3]
    assert now() - taken_at == 42.5
    await third[0].ack()
    assert await (await stream_b.consumer(config)).fetch(1, timeout=90.0) == []
    assert now() - taken_at == 132.5


async def test_a_minute_of_idle_cluster_costs_nothing(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    got: list[float] = []

    async def handler(msg: Message) -> None:
        got.append(now())

    await b.subscribe("tick", handler)
    for _ in range(600):
        await asyncio.sleep(0.1)
        await a.publish("tick", b"")
    await a.flush()
    await asyncio.sleep(0)
    assert len(got) == 600
    assert got[-1] == pytest.approx(60.0)


# --- replay ----------------------------------------------------------------------------------


async def _transport_heartbeats(seed: str, seconds: float) -> list[tuple[float, str]]:
    """Five nodes heartbeat every 100 ms over a hub with seeded delay jitter and drops; each
    records what it hears."""
    hub = MemoryTransport(seed=seed)
    names = [f"n{i}" for i in range(5)]
    conns = {n: await hub.connect(n) for n in names}
    trace: list[tuple[float, str]] = []

    for name, conn in conns.items():

        async def heard(msg: Message, me: str = name) -> None:
            trace.append((now(), f"{me}<-{msg.subject}:{msg.data.decode()}"))

        await conn.subscribe("hb.*", heard)
    hub.faults.delay(0.002, jitter=0.008, subject="hb.*")
    hub.faults.drop(0.05, subject="hb.*")
    end = now() + seconds

    async def beat(name: str) -> None:
        seq = 0
        while now() < end:
            await asyncio.sleep(0.1)
            seq += 1
            await conns[name].publish(f"hb.{name}", str(seq).encode())

    async with asyncio.TaskGroup() as tg:
        for name in names:
            tg.create_task(beat(name))
    for conn in conns.values():
        await conn.flush()
    await asyncio.sleep(0.1)
    await hub.close()
    return trace


@pytest.mark.parametrize("shuffle", [False, True], ids=["fifo", "shuffled"])
def test_heartbeats_over_the_memory_transport_replay_per_seed(shuffle: bool) -> None:
    began = time.perf_counter()
    first = run(_transport_heartbeats("one", 60.0), seed="one", shuffle=shuffle)
    elapsed = time.perf_counter() - began
    assert elapsed < 1.0, f"60 s over the memory transport took {elapsed:.3f} s"
    assert len(first) > 5 * 5 * 600 * 0.9
    assert run(_transport_heartbeats("one", 60.0), seed="one", shuffle=shuffle) == first
    assert run(_transport_heartbeats("two", 60.0), seed="two", shuffle=shuffle) != first
