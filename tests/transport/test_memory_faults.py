"""Each fault of the memory backend, by its observable outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentcluster.errors import (
    ConfigurationError,
    ConnectionClosed,
    NoResponders,
    RequestTimeout,
)
from agentcluster.testing.waiting import eventually, stays
from agentcluster.transport.interface import (
    BucketConfig,
    ConnectionEvent,
    ConsumerConfig,
    Entry,
    KeyValue,
    Message,
    ObjectStoreConfig,
    Operation,
    StreamConfig,
)
from agentcluster.transport.memory import MemoryConnection, MemoryTransport


@pytest.fixture
async def hub() -> AsyncIterator[MemoryTransport]:
    transport = MemoryTransport(seed="faults")
    yield transport
    await transport.close()


@pytest.fixture
async def a(hub: MemoryTransport) -> MemoryConnection:
    return await hub.connect("a")


@pytest.fixture
async def b(hub: MemoryTransport) -> MemoryConnection:
    return await hub.connect("b")


@pytest.fixture
async def c(hub: MemoryTransport) -> MemoryConnection:
    return await hub.connect("c")


async def collect(conn: MemoryConnection, subject: str, queue: str | None = None) -> list[bytes]:
    got: list[bytes] = []

    async def handler(msg: Message) -> None:
        got.append(msg.data)

    await conn.subscribe(subject, handler, queue=queue)
    return got


async def answer(conn: MemoryConnection, subject: str) -> None:
    async def handler(msg: Message) -> None:
        await conn.publish(msg.reply, b"ok")

    await conn.subscribe(subject, handler)


async def value_of(kv: KeyValue, key: str) -> bytes | None:
    entry = await kv.get(key)
    return entry.value if entry is not None else None


# --- partition ------------------------------------------------------------------------


async def test_partition_cuts_both_ways_and_heal_restores(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection, c: MemoryConnection
) -> None:
    at_b = await collect(b, "t")
    at_c = await collect(c, "t")
    at_a = await collect(a, "back")
    hub.faults.partition(["c"])
    await a.publish("t", b"1")
    await c.publish("back", b"from c")
    await eventually(lambda: at_b == [b"1"])
    await stays(lambda: (len(at_c), len(at_a)), 0.03)
    assert hub.faults.lost == 2
    hub.faults.heal()
    await a.publish("t", b"2")
    await c.publish("back", b"from c")
    await eventually(lambda: at_c == [b"2"] and at_a == [b"from c"])


async def test_partition_makes_a_request_time_out_not_fail_fast(
    hub: MemoryTransport, a: MemoryConnection, c: MemoryConnection
) -> None:
    await answer(c, "svc")
    assert (await a.request("svc", b"", timeout=1.0)).data == b"ok"
    hub.faults.partition(["c"])
    with pytest.raises(RequestTimeout):
        await a.request("svc", b"", timeout=0.05)
    with pytest.raises(NoResponders):
        await a.request("nobody", b"", timeout=0.05)
    hub.faults.heal()
    assert (await a.request("svc", b"", timeout=1.0)).data == b"ok"


async def test_partition_queue_group_serves_the_senders_side(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection, c: MemoryConnection
) -> None:
    at_b = await collect(b, "work", queue="q")
    at_c = await collect(c, "work", queue="q")
    hub.faults.partition(["c"])
    for i in range(6):
        await a.publish("work", str(i).encode())
    await eventually(lambda: len(at_b) == 6)
    assert at_c == []


async def test_each_partition_call_makes_one_more_group(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection, c: MemoryConnection
) -> None:
    d = await hub.connect("d")
    at_b = await collect(b, "t")
    at_c = await collect(c, "t")
    at_d = await collect(d, "t")
    hub.faults.partition(["a"])
    hub.faults.partition(["b", "late"])
    late = await hub.connect("late")
    at_late = await collect(late, "t")
    await c.publish("t", b"rest")
    await b.publish("t", b"group2")
    await a.publish("t", b"alone")
    await eventually(lambda: at_d == [b"rest"] and at_late == [b"group2"])
    await stays(lambda: (at_b, at_c), 0.03)
    assert at_b == [b"group2"]
    assert at_c == [b"rest"]


# --- drop and delay -------------------------------------------------------------------


async def test_drop_probability_one_loses_everything_on_its_subjects(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    lossy = await collect(b, "lossy.x")
    fine = await collect(b, "fine")
    hub.faults.drop(1.0, "lossy.>")
    for _ in range(10):
        await a.publish("lossy.x", b"")
        await a.publish("fine", b"")
    await eventually(lambda: len(fine) == 10)
    await stays(lambda: len(lossy), 0.03)
    assert lossy == []
    assert hub.faults.dropped == 10
    hub.faults.clear_message_faults()
    await a.publish("lossy.x", b"back")
    await eventually(lambda: lossy == [b"back"])


async def _survivors(seed: str) -> list[int]:
    hub = MemoryTransport(seed=seed)
    try:
        a = await hub.connect("a")
        b = await hub.connect("b")
        got = await collect(b, "t")
        hub.faults.drop(0.5)
        for i in range(200):
            await a.publish("t", str(i).encode())
        await eventually(lambda: len(got) == 200 - hub.faults.dropped)
        return [int(x) for x in got]
    finally:
        await hub.close()


async def test_drop_is_reproducible_for_a_seed() -> None:
    first = await _survivors("seed-1")
    again = await _survivors("seed-1")
    other = await _survivors("seed-2")
    assert first == again
    assert 50 < len(first) < 150
    assert other != first


async def test_delay_holds_messages_back_and_keeps_order(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    got = await collect(b, "t")
    hub.faults.delay(0.1, probability=0.5, jitter=0.05)
    for i in range(20):
        await a.publish("t", str(i).encode())
    with pytest.raises(RequestTimeout):
        await a.flush(timeout=0.01)
    assert len(got) < 20
    await a.flush(timeout=1.0)
    await eventually(lambda: len(got) == 20)
    assert got == [str(i).encode() for i in range(20)]
    assert 0 < hub.faults.delayed < 20


async def test_delay_applies_only_to_its_subject(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    got: list[str] = []

    async def handler(msg: Message) -> None:
        got.append(msg.subject)

    await b.subscribe(">", handler)
    loop = asyncio.get_running_loop()
    hub.faults.delay(0.1, subject="slow")
    start = loop.time()
    await a.publish("slow", b"")
    await b.publish("fast", b"")
    await eventually(lambda: got == ["fast", "slow"])
    assert loop.time() - start >= 0.1
    assert hub.faults.delayed == 1


# --- kill -----------------------------------------------------------------------------


async def test_kill_disconnects_then_closes_and_fails_everything(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection, c: MemoryConnection
) -> None:
    events: list[ConnectionEvent] = []
    b.add_listener(events.append)
    at_b = await collect(b, "t")
    kv = await b.key_value(BucketConfig("k"))
    watcher = await kv.watch()

    async def silent(msg: Message) -> None:
        return None

    await c.subscribe("silent", silent)
    pending = asyncio.create_task(b.request("silent", b"", timeout=5.0))
    await asyncio.sleep(0)
    assert hub.faults.kill("b") == 1
    assert events == [ConnectionEvent.DISCONNECTED, ConnectionEvent.CLOSED]
    assert b.is_closed
    with pytest.raises(ConnectionClosed):
        await pending
    with pytest.raises(ConnectionClosed):
        await watcher.next(0.1)
    with pytest.raises(ConnectionClosed):
        await b.publish("t", b"")
    with pytest.raises(ConnectionClosed):
        await kv.get("x")
    await a.publish("t", b"after")
    await stays(lambda: len(at_b), 0.03)
    assert hub.faults.kill("b") == 0


async def test_graceful_close_only_reports_closed(a: MemoryConnection) -> None:
    events: list[ConnectionEvent] = []
    a.add_listener(events.append)
    watcher = await (await a.key_value(BucketConfig("k"))).watch()
    await a.close()
    assert events == [ConnectionEvent.CLOSED]
    assert await watcher.next(0.01) is None


async def test_a_killed_nodes_work_is_redelivered_to_its_successor(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    config = ConsumerConfig("inbox", ack_wait=0.05)
    stream = await a.stream(StreamConfig("s", ("s",)))
    await stream.publish("s", b"job")
    (taken,) = await (await stream.consumer(config)).fetch(1, timeout=0.1)
    hub.faults.kill("a")
    successor = await (await b.stream(StreamConfig("s", ("s",)))).consumer(config)
    (again,) = await successor.fetch(1, timeout=1.0)
    assert (again.seq, again.num_delivered) == (taken.seq, 2)


# --- leader election ------------------------------------------------------------------


async def test_leader_election_fails_writes_fast_and_stalls_reads(
    hub: MemoryTransport, a: MemoryConnection
) -> None:
    loop = asyncio.get_running_loop()
    kv = await a.key_value(BucketConfig("k"))
    stream = await a.stream(StreamConfig("s", ("s",)))
    objects = await a.object_store(ObjectStoreConfig("o"))
    await kv.put("x", b"before")
    await stream.publish("s", b"before")
    hub.faults.leader_election(0.2)
    start = loop.time()
    with pytest.raises(NoResponders):
        await kv.put("x", b"during", timeout=1.0)
    with pytest.raises(NoResponders):
        await kv.delete("x")
    with pytest.raises(NoResponders):
        await stream.publish("s", b"during")
    with pytest.raises(NoResponders):
        await stream.purge("s", below_seq=5)
    with pytest.raises(NoResponders):
        await objects.put("o", b"during")
    assert loop.time() - start < 0.1
    with pytest.raises(RequestTimeout):
        await kv.get("x", timeout=0.02)
    with pytest.raises(RequestTimeout):
        await stream.next_message("s", 1, timeout=0.02)
    with pytest.raises(RequestTimeout):
        await objects.get("o", timeout=0.02)
    assert await value_of(kv, "x") == b"before"  # waits out the election
    assert loop.time() - start >= 0.2
    assert (await stream.state()).messages == 1
    assert await kv.keys() == ["x"]

    async def writes_again() -> bool:
        try:
            await kv.put("x", b"after")
        except NoResponders:
            return False
        return True

    await eventually(writes_again, timeout=1.0)
    assert loop.time() - start >= 0.2
    assert await value_of(kv, "x") == b"after"


async def test_leader_election_can_let_reads_answer(
    hub: MemoryTransport, a: MemoryConnection
) -> None:
    loop = asyncio.get_running_loop()
    kv = await a.key_value(BucketConfig("k"))
    await kv.put("x", b"before")
    hub.faults.leader_election(5, reads="answer")
    start = loop.time()
    assert await value_of(kv, "x") == b"before"
    assert loop.time() - start < 0.1
    with pytest.raises(NoResponders):
        await kv.put("x", b"during")
    with pytest.raises(ConfigurationError):
        hub.faults.leader_election(1, reads="sometimes")


# --- ambiguous writes -----------------------------------------------------------------


async def test_ambiguous_write_times_out_yet_lands(
    hub: MemoryTransport, a: MemoryConnection
) -> None:
    kv = await a.key_value(BucketConfig("k"))
    hub.faults.ambiguous_writes(1)
    with pytest.raises(RequestTimeout):
        await kv.put("x", b"landed", timeout=0.03)
    assert await value_of(kv, "x") == b"landed"
    assert await kv.put("y", b"normal", timeout=0.03) == 2


async def test_ambiguous_write_lands_later(hub: MemoryTransport, a: MemoryConnection) -> None:
    stream = await a.stream(StreamConfig("s", ("s",)))
    kv = await a.key_value(BucketConfig("k"))
    hub.faults.ambiguous_writes(2, apply_after=0.1)
    with pytest.raises(RequestTimeout):
        await kv.create("x", b"late", timeout=0.02)
    with pytest.raises(RequestTimeout):
        await stream.publish("s", b"late", timeout=0.02)
    assert await kv.get("x") is None
    await eventually(lambda: value_of(kv, "x"))
    assert await value_of(kv, "x") == b"late"
    await eventually(lambda: stream.next_message("s"))
    assert [r.kind for r in hub.faults.records].count("ambiguous_applied") == 2


async def test_ambiguous_write_refused_on_arrival_is_only_recorded(
    hub: MemoryTransport, a: MemoryConnection
) -> None:
    kv = await a.key_value(BucketConfig("k"))
    await kv.put("x", b"there")
    hub.faults.ambiguous_writes(1)
    with pytest.raises(RequestTimeout):
        await kv.create("x", b"clash", timeout=0.02)
    assert await value_of(kv, "x") == b"there"
    assert hub.faults.records[-1].kind == "ambiguous_refused"


# --- cut off --------------------------------------------------------------------------


async def test_cut_off_reads_stale_writes_time_out_and_watchers_catch_up(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    live = await a.key_value(BucketConfig("k"))
    stale = await b.key_value(BucketConfig("k"))
    await live.put("n.x", b"v1")
    await live.put("n.gone", b"v1")
    watcher = await stale.watch("n")
    hub.faults.cut_off(["b"])
    await live.put("n.x", b"v2")
    await live.put("n.y", b"new")
    await live.delete("n.gone")
    assert await value_of(stale, "n.x") == b"v1"
    assert await stale.keys("n") == ["n.gone", "n.x"]
    with pytest.raises(RequestTimeout):
        await stale.put("n.x", b"minority", timeout=0.03)
    assert await value_of(live, "n.x") == b"v2"
    assert await watcher.next(0.03) is None
    hub.faults.reconnect_store(["b"])
    caught: list[Entry] = []
    for _ in range(3):
        entry = await watcher.next(1.0)
        assert entry is not None
        caught.append(entry)
    assert [(e.key, e.revision, e.operation) for e in caught] == [
        ("n.x", 3, Operation.PUT),
        ("n.y", 4, Operation.PUT),
        ("n.gone", 5, Operation.DELETE),
    ]
    assert await value_of(stale, "n.x") == b"v2"
    await live.put("n.z", b"live again")
    assert (await watcher.next(1.0)) == await live.get("n.z")


async def test_cut_off_stream_reads_are_stale_and_fetch_gets_nothing(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    stream = await a.stream(StreamConfig("s", ("s",)))
    theirs = await b.stream(StreamConfig("s", ("s",)))
    consumer = await theirs.consumer(ConsumerConfig("d"))
    hub.faults.cut_off(["b"])
    await stream.publish("s", b"after the cut")
    assert await theirs.next_message("s") is None
    assert (await theirs.state()).messages == 0
    assert await consumer.fetch(1, timeout=0.03) == []
    hub.faults.heal()
    (delivery,) = await consumer.fetch(1, timeout=0.1)
    assert delivery.data == b"after the cut"


# --- watch delay ----------------------------------------------------------------------


async def test_delay_watch_delivers_late_in_order(
    hub: MemoryTransport, a: MemoryConnection
) -> None:
    kv = await a.key_value(BucketConfig("k"))
    watcher = await kv.watch()
    loop = asyncio.get_running_loop()
    hub.faults.delay_watch(0.1)
    start = loop.time()
    for i in range(3):
        await kv.put("x", str(i).encode())
    assert await watcher.next(0.03) is None
    hub.faults.delay_watch(0)
    await kv.put("x", b"3")
    got = []
    for _ in range(4):
        entry = await watcher.next(1.0)
        assert entry is not None
        got.append(entry.value)
    assert got == [b"0", b"1", b"2", b"3"]
    assert loop.time() - start >= 0.1
    await kv.put("x", b"4")
    assert (await watcher.next(0.01)) is not None


# --- heal and bookkeeping -------------------------------------------------------------


async def test_heal_ends_every_fault(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    got = await collect(b, "t")
    kv = await b.key_value(BucketConfig("k"))
    watcher = await kv.watch()
    faults = hub.faults
    faults.partition(["b"])
    faults.drop(1.0)
    faults.leader_election(60)
    faults.ambiguous_writes(5)
    faults.cut_off(["b"])
    faults.delay_watch(60)
    faults.heal()
    await a.publish("t", b"1")
    await eventually(lambda: got == [b"1"])
    assert await kv.put("x", b"ok", timeout=0.05) == 1
    entry = await watcher.next(0.05)
    assert entry is not None
    assert entry.value == b"ok"
    kinds = [r.kind for r in faults.records]
    assert kinds[:7] == [
        "partition",
        "drop",
        "leader_election",
        "ambiguous_writes",
        "cut_off",
        "delay_watch",
        "heal",
    ]


def test_fault_arguments_are_checked() -> None:
    faults = MemoryTransport().faults
    with pytest.raises(ConfigurationError):
        faults.drop(1.5)
    with pytest.raises(ConfigurationError):
        faults.delay(-1)
    with pytest.raises(ConfigurationError):
        faults.ambiguous_writes(0)
