"""Smoke tests of the memory backend's basic semantics (the conformance suite goes deeper)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator

import pytest

from agentcluster.errors import (
    ConnectionClosed,
    InvalidName,
    KeyExists,
    NoResponders,
    PayloadTooLarge,
    RequestTimeout,
    RevisionMismatch,
    SubjectFull,
    SubstrateError,
    WatchLost,
)
from agentcluster.testing.waiting import eventually, stays
from agentcluster.transport.interface import (
    BucketConfig,
    Connection,
    ConnectionEvent,
    Consumer,
    ConsumerConfig,
    Delivery,
    KeyValue,
    Message,
    ObjectStore,
    ObjectStoreConfig,
    Operation,
    Stream,
    StreamConfig,
    Subscription,
    Watcher,
)
from agentcluster.transport.memory import MemoryConnection, MemoryTransport


@pytest.fixture
async def hub() -> AsyncIterator[MemoryTransport]:
    transport = MemoryTransport(seed="backend", max_payload=1024)
    yield transport
    await transport.close()


@pytest.fixture
async def a(hub: MemoryTransport) -> MemoryConnection:
    return await hub.connect("a")


@pytest.fixture
async def b(hub: MemoryTransport) -> MemoryConnection:
    return await hub.connect("b")


async def collect(
    conn: MemoryConnection, subject: str, queue: str | None = None, pending_limit: int = 65536
) -> tuple[list[Message], Subscription]:
    got: list[Message] = []

    async def handler(msg: Message) -> None:
        got.append(msg)

    sub = await conn.subscribe(subject, handler, queue=queue, pending_limit=pending_limit)
    return got, sub


# --- protocols ------------------------------------------------------------------------


async def test_every_object_implements_its_protocol(a: MemoryConnection) -> None:
    assert isinstance(a, Connection)
    _, sub = await collect(a, "x")
    assert isinstance(sub, Subscription)
    kv = await a.key_value(BucketConfig("kv"))
    assert isinstance(kv, KeyValue)
    assert isinstance(await kv.watch(), Watcher)
    stream = await a.stream(StreamConfig("s", ("s.>",)))
    assert isinstance(stream, Stream)
    consumer = await stream.consumer(ConsumerConfig("d"))
    assert isinstance(consumer, Consumer)
    await stream.publish("s.x", b"1")
    (delivery,) = await consumer.fetch(1, timeout=0.1)
    assert isinstance(delivery, Delivery)
    assert isinstance(await a.object_store(ObjectStoreConfig("o")), ObjectStore)


# --- messages -------------------------------------------------------------------------


async def test_wildcards_fan_out_in_order(a: MemoryConnection, b: MemoryConnection) -> None:
    star, _ = await collect(b, "orders.*")
    tail, _ = await collect(b, "orders.>")
    exact, _ = await collect(b, "orders.new")
    for i in range(5):
        await a.publish("orders.new", str(i).encode())
    await a.publish("orders.new.eu", b"deep")
    await eventually(lambda: len(tail) == 6)
    assert [m.data for m in star] == [b"0", b"1", b"2", b"3", b"4"]
    assert [m.data for m in exact] == [b"0", b"1", b"2", b"3", b"4"]
    assert tail[-1].subject == "orders.new.eu"


async def test_queue_group_hands_each_message_to_one_member(
    hub: MemoryTransport, a: MemoryConnection, b: MemoryConnection
) -> None:
    c = await hub.connect("c")
    first, _ = await collect(b, "work", queue="workers")
    second, _ = await collect(c, "work", queue="workers")
    everyone, _ = await collect(c, "work")
    for i in range(10):
        await a.publish("work", str(i).encode())
    await eventually(lambda: len(first) + len(second) == 10 and len(everyone) == 10)
    assert first
    assert second
    assert sorted(m.data for m in first + second) == sorted(str(i).encode() for i in range(10))


async def test_request_reply_no_responders_and_timeout(
    a: MemoryConnection, b: MemoryConnection
) -> None:
    async def echo(msg: Message) -> None:
        await b.publish(msg.reply, msg.data.upper(), headers={"h": "1"})

    async def silent(msg: Message) -> None:
        return None

    await b.subscribe("echo", echo)
    await b.subscribe("silent", silent)
    answer = await a.request("echo", b"hi", timeout=1.0)
    assert answer.data == b"HI"
    assert answer.headers == {"h": "1"}
    with pytest.raises(NoResponders):
        await a.request("nobody", b"", timeout=1.0)
    with pytest.raises(RequestTimeout):
        await a.request("silent", b"", timeout=0.05)


async def test_slow_consumer_drops_and_reports(a: MemoryConnection, b: MemoryConnection) -> None:
    events: list[ConnectionEvent] = []
    b.add_listener(events.append)
    release = asyncio.Event()
    got: list[bytes] = []

    async def blocked(msg: Message) -> None:
        await release.wait()
        got.append(msg.data)

    sub = await b.subscribe("slow", blocked, pending_limit=2)
    await a.publish("slow", b"0")
    await asyncio.sleep(0)
    for i in range(1, 6):
        await a.publish("slow", str(i).encode())
    assert sub.dropped == 3
    assert events == [ConnectionEvent.SLOW_CONSUMER]
    release.set()
    await eventually(lambda: len(got) == 3)
    assert got == [b"0", b"1", b"2"]


async def test_failing_handler_keeps_its_subscription(
    a: MemoryConnection, b: MemoryConnection
) -> None:
    got: list[bytes] = []

    async def flaky(msg: Message) -> None:
        if msg.data == b"boom":
            raise RuntimeError("boom")
        got.append(msg.data)

    await b.subscribe("f", flaky)
    for data in (b"1", b"boom", b"2"):
        await a.publish("f", data)
    await eventually(lambda: got == [b"1", b"2"])


async def test_unsubscribe_stops_delivery(a: MemoryConnection, b: MemoryConnection) -> None:
    got, sub = await collect(b, "u")
    await a.publish("u", b"1")
    await eventually(lambda: len(got) == 1)
    await sub.unsubscribe()
    await sub.unsubscribe()
    await a.publish("u", b"2")
    await stays(lambda: len(got), 0.05)


async def test_validation_comes_first(hub: MemoryTransport, a: MemoryConnection) -> None:
    with pytest.raises(InvalidName):
        await a.publish("bad subject", b"")
    with pytest.raises(InvalidName):
        await a.publish("a.*", b"")
    with pytest.raises(InvalidName):
        await a.subscribe("a..b", collect)  # type: ignore[arg-type]
    with pytest.raises(PayloadTooLarge):
        await a.publish("ok", b"x" * 1025)
    kv = await a.key_value(BucketConfig("v", max_value_size=10))
    with pytest.raises(PayloadTooLarge):
        await kv.put("k", b"x" * 11)
    with pytest.raises(InvalidName):
        await kv.put("bad key", b"")
    with pytest.raises(InvalidName):
        await a.key_value(BucketConfig("no.dots"))
    events: list[ConnectionEvent] = []
    a.add_listener(events.append)
    remove = a.add_listener(events.append)
    remove()
    await a.close()
    await a.close()
    assert events == [ConnectionEvent.CLOSED]
    assert a.is_closed
    assert not a.is_connected
    with pytest.raises(ConnectionClosed):
        await a.publish("ok", b"")
    with pytest.raises(ConnectionClosed):
        await kv.get("k")
    with pytest.raises(ConnectionClosed):
        await a.flush()


# --- key-value ------------------------------------------------------------------------


async def test_kv_revisions_and_compare_and_set(a: MemoryConnection, b: MemoryConnection) -> None:
    kv = await a.key_value(BucketConfig("cas"))
    same = await b.key_value(BucketConfig("cas"))
    assert await kv.get("k") is None
    r1 = await kv.create("k", b"1")
    assert r1 == 1
    with pytest.raises(KeyExists):
        await same.create("k", b"2")
    r2 = await same.update("k", b"2", r1)
    with pytest.raises(RevisionMismatch):
        await kv.update("k", b"3", r1)
    with pytest.raises(RevisionMismatch):
        await kv.update("never", b"x", 1)
    with pytest.raises(RevisionMismatch):
        await kv.delete("k", revision=r1)
    await kv.delete("k", revision=r2)
    assert await kv.get("k") is None
    r4 = await kv.create("k", b"again")
    assert r4 == 4
    entry = await kv.get("k")
    assert entry is not None
    assert (entry.value, entry.revision) == (b"again", 4)
    for key in ("n1.a", "n1.b.c", "n10.a", "n1"):
        await kv.put(key, b"")
    assert await kv.keys("n1") == ["n1.a", "n1.b.c"]
    assert await kv.keys() == ["k", "n1", "n1.a", "n1.b.c", "n10.a"]


async def test_watch_snapshot_then_changes(a: MemoryConnection) -> None:
    kv = await a.key_value(BucketConfig("w"))
    await kv.put("n.b", b"1")
    await kv.put("n.a", b"2")
    await kv.put("other", b"x")
    watcher = await kv.watch("n")
    assert [(e.key, e.revision) for e in watcher.initial] == [("n.b", 1), ("n.a", 2)]
    await kv.put("n.c", b"3")
    await kv.put("other", b"y")
    await kv.delete("n.a")
    first = await watcher.next(1.0)
    second = await watcher.next(1.0)
    assert first is not None
    assert (first.key, first.revision) == ("n.c", 4)
    assert second is not None
    assert second.operation is Operation.DELETE
    assert second.value == b""
    assert await watcher.next(0.02) is None
    await watcher.stop()
    with pytest.raises(StopAsyncIteration):
        await watcher.__anext__()


async def test_watch_overflow_raises_watch_lost(a: MemoryConnection) -> None:
    kv = await a.key_value(BucketConfig("lost"))
    watcher = await kv.watch(pending_limit=2)
    for i in range(4):
        await kv.put("k", str(i).encode())
    seen = [await watcher.__anext__(), await watcher.__anext__()]
    with pytest.raises(WatchLost):
        await watcher.__anext__()
    assert [e.value for e in seen] == [b"0", b"1"]
    assert await watcher.next(0.01) is None


# --- streams --------------------------------------------------------------------------


async def test_stream_dedup_next_message_purge_state(a: MemoryConnection) -> None:
    stream = await a.stream(StreamConfig("inbox", ("inbox.>",)))
    assert (await stream.publish("inbox.a", b"1", msg_id="m1")).seq == 1
    dup = await stream.publish("inbox.a", b"1", msg_id="m1")
    assert (dup.seq, dup.duplicate) == (1, True)
    await stream.publish("inbox.b", b"2")
    await stream.publish("inbox.a", b"3")
    found = await stream.next_message("inbox.a", 2)
    assert found is not None
    assert (found.seq, found.data) == (3, b"3")
    assert await stream.next_message("inbox.a", 4) is None
    await stream.purge("inbox.a", below_seq=3)
    assert (await stream.next_message("inbox.a", 1)).seq == 3  # type: ignore[union-attr]
    state = await stream.state()
    assert (state.messages, state.first_seq, state.last_seq) == (2, 2, 3)
    with pytest.raises(NoResponders):
        await stream.publish("elsewhere", b"")


async def test_stream_limits(a: MemoryConnection) -> None:
    full = await a.stream(StreamConfig("full", ("full.>",), discard="new", max_msgs_per_subject=1))
    await full.publish("full.x", b"1")
    with pytest.raises(SubjectFull):
        await full.publish("full.x", b"2")
    old = await a.stream(StreamConfig("old", ("old.>",), max_msgs_per_subject=1, max_msg_size=4))
    await old.publish("old.x", b"1")
    await old.publish("old.x", b"2")
    assert (await old.next_message("old.x")).data == b"2"  # type: ignore[union-attr]
    with pytest.raises(PayloadTooLarge):
        await old.publish("old.x", b"12345")
    aging = await a.stream(StreamConfig("aging", ("aging",), max_age=0.05))
    await aging.publish("aging", b"1")
    await eventually(lambda: _empty(aging))


async def _empty(stream: Stream) -> bool:
    return (await stream.state()).messages == 0


async def test_consumer_redelivery_shared_across_connections(
    a: MemoryConnection, b: MemoryConnection
) -> None:
    stream = await a.stream(StreamConfig("jobs", ("jobs.>",)))
    config = ConsumerConfig("workers", ack_wait=0.05, max_deliver=2)
    mine = await stream.consumer(config)
    theirs = await (await b.stream(StreamConfig("jobs", ("jobs.>",)))).consumer(config)
    assert await mine.fetch(1, timeout=0.01) == []
    await stream.publish("jobs.1", b"one")
    await stream.publish("jobs.2", b"two")
    first = await mine.fetch(5, timeout=0.1)
    assert [(d.seq, d.num_delivered) for d in first] == [(1, 1), (2, 1)]
    await first[1].ack()
    await a.close()
    again = await theirs.fetch(5, timeout=1.0)
    assert [(d.seq, d.num_delivered) for d in again] == [(1, 2)]
    assert await theirs.fetch(5, timeout=0.15) == []


async def test_consumer_nak_term_and_deliver_new(a: MemoryConnection) -> None:
    stream = await a.stream(StreamConfig("q", ("q.*",)))
    await stream.publish("q.old", b"0")
    consumer = await stream.consumer(ConsumerConfig("new", deliver="new", filter_subject="q.a"))
    await stream.publish("q.b", b"skip")
    await stream.publish("q.a", b"1")
    (d,) = await consumer.fetch(5, timeout=0.1)
    assert d.data == b"1"
    await d.nak()
    (again,) = await consumer.fetch(5, timeout=0.1)
    assert (again.seq, again.num_delivered) == (d.seq, 2)
    await again.term()
    assert await consumer.fetch(1, timeout=0.05) == []
    await stream.delete_consumer("new")
    with pytest.raises(SubstrateError):
        await consumer.fetch(1, timeout=0.01)


# --- objects --------------------------------------------------------------------------


async def test_objects_any_size_with_nats_digest(a: MemoryConnection) -> None:
    store = await a.object_store(ObjectStoreConfig("snaps"))
    big = b"x" * 10_000
    info = await store.put("agent/1", big)
    expected = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(big).digest()).decode()
    assert (info.size, info.digest) == (10_000, expected)
    assert expected.endswith("=")
    assert await store.get("agent/1") == big
    assert await store.info("agent/1") == info
    await store.delete("agent/1")
    await store.delete("agent/1")
    assert await store.get("agent/1") is None
