"""The transport conformance suite: one set of tests every substrate backend must pass.

A backend is correct when this suite passes against it; the in-memory backend is held to
it exactly like NATS. To run it against a backend, subclass ``TransportConformance`` in a
test module and provide a ``substrate`` fixture returning a ``Substrate``::

    class TestMyBackend(TransportConformance):
        pass

with, in a conftest, ``@pytest.fixture async def substrate(): ...``. The suite runs on
whatever event loop pytest-asyncio gives it; this project runs it on the standard loop and
on uvloop, which order callbacks differently.

Every case states one semantic from ``agentcluster.transport.interface``. When a bug is
found in a backend, a case is added here first. Waits are bounded and poll conditions;
nothing depends on a fixed sleep being long enough.

Needs pytest (a development dependency); nothing outside the test kit imports this module.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Protocol

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
)
from agentcluster.testing.waiting import eventually
from agentcluster.transport.interface import (
    BucketConfig,
    Connection,
    ConnectionEvent,
    ConsumerConfig,
    Entry,
    KeyValue,
    Message,
    ObjectStoreConfig,
    Operation,
    Stream,
    StreamConfig,
    Watcher,
)
from agentcluster.transport.names import decode_token, encode_token

__all__ = ["Substrate", "TransportConformance"]


class Substrate(Protocol):
    """What the suite needs from a backend under test."""

    kind: str

    async def connect(self, name: str) -> Connection:
        """A new connection; the fixture closes it after the test."""
        ...

    def unique(self, base: str) -> str:
        """A name no other test uses (buckets, streams and subjects outlive a test on NATS)."""
        ...


class Inbox:
    """Collects what a subscription receives, for bounded waiting in assertions."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, msg: Message) -> None:
        self.messages.append(msg)

    @property
    def data(self) -> list[bytes]:
        return [m.data for m in self.messages]


async def _kv(substrate: Substrate, conn: Connection, **config: object) -> KeyValue:
    return await conn.key_value(BucketConfig(name=substrate.unique("kv"), **config))  # type: ignore[arg-type]


async def _stream(substrate: Substrate, conn: Connection, **config: object) -> tuple[Stream, str]:
    root = substrate.unique("s")
    stream = await conn.stream(
        StreamConfig(name=substrate.unique("S"), subjects=(f"{root}.>",), **config)  # type: ignore[arg-type]
    )
    return stream, root


async def _drain(watcher: Watcher, count: int, timeout: float = 5.0) -> list[Entry]:
    got: list[Entry] = []
    while len(got) < count:
        entry = await watcher.next(timeout)
        assert entry is not None, f"watch delivered {len(got)} of {count} updates: {got}"
        got.append(entry)
    return got


async def _collect(watcher: Watcher) -> list[Entry]:
    return [entry async for entry in watcher]


class TransportConformance:
    """Every semantic both backends share. Subclass it (``Test…``) to run it."""

    # --- messages ---------------------------------------------------------------------

    async def test_publish_reaches_subscriber_with_subject_and_headers(
        self, substrate: Substrate
    ) -> None:
        a, b = await substrate.connect("a"), await substrate.connect("b")
        subject = substrate.unique("m")
        inbox = Inbox()
        await b.subscribe(f"{subject}.x", inbox)
        await b.flush()
        await a.publish(f"{subject}.x", b"hello", headers={"k": "v"})
        await a.flush()
        await eventually(lambda: inbox.messages, timeout=3)
        msg = inbox.messages[0]
        assert (msg.subject, msg.data) == (f"{subject}.x", b"hello")
        assert msg.headers is not None
        assert msg.headers.get("k") == "v"

    async def test_star_matches_one_token_and_gt_one_or_more(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        root = substrate.unique("w")
        star, gt = Inbox(), Inbox()
        await conn.subscribe(f"{root}.*", star)
        await conn.subscribe(f"{root}.>", gt)
        await conn.flush()
        for subject in (root, f"{root}.a", f"{root}.a.b", f"{root}x.a"):
            await conn.publish(subject, subject.encode())
        await conn.publish(f"{root}.end", b"end")
        await conn.flush()
        await eventually(lambda: b"end" in star.data and b"end" in gt.data, timeout=3)
        assert star.data == [f"{root}.a".encode(), b"end"]
        assert gt.data == [f"{root}.a".encode(), f"{root}.a.b".encode(), b"end"]

    async def test_every_subscription_gets_a_copy(self, substrate: Substrate) -> None:
        a, b = await substrate.connect("a"), await substrate.connect("b")
        subject = substrate.unique("fan")
        one, two, three = Inbox(), Inbox(), Inbox()
        await a.subscribe(subject, one)
        await a.subscribe(subject, two)
        await b.subscribe(subject, three)
        await a.flush()
        await b.flush()
        await a.publish(subject, b"x")
        await eventually(lambda: one.data and two.data and three.data, timeout=3)
        assert one.data == two.data == three.data == [b"x"]

    async def test_queue_group_delivers_each_message_to_one_member(
        self, substrate: Substrate
    ) -> None:
        pub, m1, m2, watcher = [await substrate.connect(n) for n in ("p", "m1", "m2", "w")]
        subject = substrate.unique("q")
        first, second, everyone = Inbox(), Inbox(), Inbox()
        await m1.subscribe(subject, first, queue="workers")
        await m2.subscribe(subject, second, queue="workers")
        await watcher.subscribe(subject, everyone)
        for conn in (m1, m2, watcher):
            await conn.flush()
        sent = [str(i).encode() for i in range(200)]
        for data in sent:
            await pub.publish(subject, data)
        await pub.flush()
        await eventually(lambda: len(first.data) + len(second.data) == 200, timeout=5)
        await eventually(lambda: len(everyone.data) == 200, timeout=5)
        assert sorted(first.data + second.data) == sorted(sent)
        assert first.data, "both members should share the work"
        assert second.data, "both members should share the work"
        assert everyone.data == sent

    async def test_messages_from_one_publisher_arrive_in_order(self, substrate: Substrate) -> None:
        a, b = await substrate.connect("a"), await substrate.connect("b")
        subject = substrate.unique("order")
        inbox = Inbox()
        await b.subscribe(subject, inbox)
        await b.flush()
        sent = [i.to_bytes(4, "big") for i in range(1000)]
        for data in sent:
            await a.publish(subject, data)
        await a.flush()
        await eventually(lambda: len(inbox.data) == 1000, timeout=5)
        assert inbox.data == sent

    async def test_unsubscribe_stops_delivery(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        subject = substrate.unique("u")
        gone, kept = Inbox(), Inbox()
        sub = await conn.subscribe(subject, gone)
        await conn.subscribe(subject, kept)
        await conn.flush()
        await conn.publish(subject, b"1")
        await eventually(lambda: gone.data == [b"1"] and kept.data == [b"1"], timeout=3)
        await sub.unsubscribe()
        await sub.unsubscribe()
        await conn.flush()
        await conn.publish(subject, b"2")
        await eventually(lambda: kept.data == [b"1", b"2"], timeout=3)
        assert gone.data == [b"1"]
        assert sub.subject == subject
        assert sub.queue is None

    async def test_request_gets_the_reply(self, substrate: Substrate) -> None:
        server, client = await substrate.connect("server"), await substrate.connect("client")
        subject = substrate.unique("svc")

        async def echo(msg: Message) -> None:
            await server.publish(msg.reply, msg.data.upper(), headers={"seen": "yes"})

        await server.subscribe(subject, echo)
        await server.flush()
        reply = await client.request(subject, b"ping", timeout=3)
        assert reply.data == b"PING"
        assert reply.headers is not None
        assert reply.headers.get("seen") == "yes"

    async def test_request_without_responders_fails_fast_and_distinctly(
        self, substrate: Substrate
    ) -> None:
        conn = await substrate.connect("a")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(NoResponders) as info:
            await conn.request(substrate.unique("nobody"), b"?", timeout=5)
        assert loop.time() - started < 2.5, "no responders must not wait for the timeout"
        assert info.value.retryable

    async def test_request_to_a_silent_responder_times_out(self, substrate: Substrate) -> None:
        server, client = await substrate.connect("server"), await substrate.connect("client")
        subject = substrate.unique("silent")
        heard = Inbox()
        await server.subscribe(subject, heard)
        await server.flush()
        with pytest.raises(RequestTimeout) as info:
            await client.request(subject, b"?", timeout=0.3)
        assert isinstance(info.value, TimeoutError)
        assert heard.data == [b"?"]

    async def test_closed_connection_refuses_every_call(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        events: list[ConnectionEvent] = []
        conn.add_listener(events.append)
        await conn.close()
        await conn.close()
        assert conn.is_closed
        await eventually(lambda: ConnectionEvent.CLOSED in events, timeout=3)
        inbox = Inbox()
        subject = substrate.unique("closed")
        with pytest.raises(ConnectionClosed):
            await conn.publish(subject, b"x")
        with pytest.raises(ConnectionClosed):
            await conn.subscribe(subject, inbox)
        with pytest.raises(ConnectionClosed):
            await conn.request(subject, b"x", timeout=1)
        with pytest.raises(ConnectionClosed):
            await conn.key_value(BucketConfig(name=substrate.unique("kv")))

    async def test_removed_listener_hears_nothing(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kept: list[ConnectionEvent] = []
        removed: list[ConnectionEvent] = []
        conn.add_listener(kept.append)
        remove = conn.add_listener(removed.append)
        remove()
        await conn.close()
        await eventually(lambda: ConnectionEvent.CLOSED in kept, timeout=3)
        assert removed == []

    @pytest.mark.parametrize("subject", ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "ä"])
    async def test_bad_publish_subject_is_refused_by_name(
        self, substrate: Substrate, subject: str
    ) -> None:
        conn = await substrate.connect("a")
        with pytest.raises(InvalidName) as info:
            await conn.publish(subject, b"x")
        assert info.value.name == subject

    @pytest.mark.parametrize("subject", ["", "a.>.b", "a..b", "a b"])
    async def test_bad_subscribe_subject_is_refused(
        self, substrate: Substrate, subject: str
    ) -> None:
        conn = await substrate.connect("a")
        with pytest.raises(InvalidName):
            await conn.subscribe(subject, Inbox())

    async def test_oversize_payload_is_refused_before_sending(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        subject = substrate.unique("big")
        inbox = Inbox()
        await conn.subscribe(subject, inbox)
        with pytest.raises(PayloadTooLarge) as info:
            await conn.publish(subject, b"x" * (conn.max_payload + 1))
        assert info.value.limit == conn.max_payload
        await conn.publish(subject, b"small")
        await eventually(lambda: inbox.data == [b"small"], timeout=3)

    # --- key-value --------------------------------------------------------------------

    async def test_put_get_and_absent(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        rev = await kv.put("a.b", b"1")
        entry = await kv.get("a.b")
        assert entry is not None
        assert (entry.key, entry.value, entry.revision, entry.deleted) == ("a.b", b"1", rev, False)
        assert entry.bucket == kv.bucket
        assert await kv.get("missing") is None

    async def test_revisions_order_all_writes_of_a_bucket(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        revs = [await kv.put(k, b"v") for k in ("x", "y", "x", "z")]
        assert revs == sorted(revs)
        assert len(set(revs)) == 4

    async def test_create_refuses_a_present_key_but_not_a_deleted_one(
        self, substrate: Substrate
    ) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        await kv.create("k", b"1")
        with pytest.raises(KeyExists) as info:
            await kv.create("k", b"2")
        assert (info.value.key, info.value.bucket) == ("k", kv.bucket)
        await kv.delete("k")
        assert await kv.get("k") is None
        rev = await kv.create("k", b"3")
        entry = await kv.get("k")
        assert entry is not None
        assert (entry.value, entry.revision) == (b"3", rev)

    async def test_update_is_compare_and_set(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        r1 = await kv.put("k", b"1")
        r2 = await kv.update("k", b"2", r1)
        assert r2 > r1
        with pytest.raises(RevisionMismatch) as info:
            await kv.update("k", b"3", r1)
        assert info.value.expected == r1
        entry = await kv.get("k")
        assert entry is not None
        assert entry.value == b"2"
        with pytest.raises(RevisionMismatch):
            await kv.update("never", b"x", 1)
        assert await kv.get("never") is None
        with pytest.raises(RevisionMismatch):
            await kv.update("k", b"x", 0)

    async def test_update_at_revision_zero_expects_a_key_never_written(
        self, substrate: Substrate
    ) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        rev = await kv.update("fresh", b"1", 0)
        entry = await kv.get("fresh")
        assert entry is not None
        assert (entry.value, entry.revision) == (b"1", rev)
        await kv.delete("fresh")
        with pytest.raises(RevisionMismatch):
            await kv.update("fresh", b"2", 0)

    async def test_delete_on_revision(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        r1 = await kv.put("k", b"1")
        r2 = await kv.put("k", b"2")
        with pytest.raises(RevisionMismatch):
            await kv.delete("k", revision=r1)
        assert await kv.get("k") is not None
        await kv.delete("k", revision=r2)
        assert await kv.get("k") is None

    async def test_concurrent_compare_and_set_has_one_winner_per_revision(
        self, substrate: Substrate
    ) -> None:
        writers = [await substrate.connect(f"w{i}") for i in range(6)]
        name = substrate.unique("race")
        buckets = [await c.key_value(BucketConfig(name=name)) for c in writers]
        start = await buckets[0].put("counter", b"0")
        wins: dict[int, int] = {}  # revision read -> how many updates won on it
        rounds = 8

        async def increment(kv: KeyValue, who: int) -> None:
            done = 0
            while done < rounds:
                entry = await kv.get("counter")
                assert entry is not None
                try:
                    await kv.update("counter", str(int(entry.value) + 1).encode(), entry.revision)
                except RevisionMismatch:
                    continue
                wins[entry.revision] = wins.get(entry.revision, 0) + 1
                done += 1

        await asyncio.wait_for(
            asyncio.gather(*(increment(kv, i) for i, kv in enumerate(buckets))), timeout=30
        )
        final = await buckets[0].get("counter")
        assert final is not None
        assert int(final.value) == rounds * len(buckets)
        assert set(wins.values()) == {1}, "two updates won on one revision"
        assert min(wins) == start

    async def test_keys_prefix_is_whole_tokens(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        assert await kv.keys() == []
        assert await kv.keys("n1") == []
        for key in ("n1.b", "n1.a", "n10.a", "n1", "n1.c.d", "m.x", "n1.gone"):
            await kv.put(key, b"v")
        await kv.delete("n1.gone")
        assert await kv.keys("n1") == ["n1.a", "n1.b", "n1.c.d"]
        assert await kv.keys("n10") == ["n10.a"]
        assert await kv.keys("n1.c") == ["n1.c.d"]
        assert await kv.keys() == ["m.x", "n1", "n1.a", "n1.b", "n1.c.d", "n10.a"]

    async def test_watch_gives_snapshot_then_changes_in_revision_order(
        self, substrate: Substrate
    ) -> None:
        writer, reader = await substrate.connect("w"), await substrate.connect("r")
        name = substrate.unique("watch")
        kv = await writer.key_value(BucketConfig(name=name))
        seen = await reader.key_value(BucketConfig(name=name))
        await kv.put("a", b"1")
        await kv.put("b", b"1")
        await kv.put("c", b"1")
        await kv.put("a", b"2")
        await kv.delete("c")
        watcher = await seen.watch()
        try:
            assert [(e.key, e.value) for e in watcher.initial] == [("b", b"1"), ("a", b"2")]
            revs = [e.revision for e in watcher.initial]
            assert revs == sorted(revs)
            r_put = await kv.put("d", b"1")
            await kv.delete("a")
            r_upd = await kv.update("b", b"2", watcher.initial[0].revision)
            got = await _drain(watcher, 3)
            assert [(e.key, e.operation) for e in got] == [
                ("d", Operation.PUT),
                ("a", Operation.DELETE),
                ("b", Operation.PUT),
            ]
            assert got[0].revision == r_put
            assert got[2].revision == r_upd
            assert got[1].deleted
            assert got[2].value == b"2"
            assert [e.revision for e in got] == sorted(e.revision for e in got)
            assert await watcher.next(0.05) is None
        finally:
            await watcher.stop()

    async def test_watch_on_empty_bucket_and_prefix_filter(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        watcher = await kv.watch("n1")
        try:
            assert watcher.initial == []
            await kv.put("n10.a", b"x")
            await kv.put("n1", b"x")
            await kv.put("n1.a", b"y")
            got = await _drain(watcher, 1)
            assert [(e.key, e.value) for e in got] == [("n1.a", b"y")]
            assert await watcher.next(0.05) is None
        finally:
            await watcher.stop()

    async def test_stopped_watch_ends_iteration(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        await kv.put("a", b"1")
        watcher = await kv.watch()
        await kv.put("b", b"1")
        first = await watcher.next(3)
        assert first is not None
        assert first.key == "b"
        await watcher.stop()
        remaining = [e async for e in watcher]
        assert remaining == []

    async def test_closing_the_connection_ends_its_watches_quietly(
        self, substrate: Substrate
    ) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        watcher = await kv.watch()
        await kv.put("k", b"1")
        first = await watcher.next(3)
        assert first is not None
        assert first.key == "k"
        await conn.close()
        remaining = await asyncio.wait_for(_collect(watcher), timeout=5)
        assert remaining == []

    async def test_a_bucket_is_shared_by_name(self, substrate: Substrate) -> None:
        a, b = await substrate.connect("a"), await substrate.connect("b")
        config = BucketConfig(name=substrate.unique("shared"), history=1)
        kv_a = await a.key_value(config)
        await kv_a.put("k", b"from-a")
        kv_b = await b.key_value(config)
        again = await a.key_value(config)
        entry = await kv_b.get("k")
        assert entry is not None
        assert entry.value == b"from-a"
        assert await again.keys() == ["k"]

    async def test_bad_keys_are_refused_by_name(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        for key in ("", "a b", ".a", "a.", "a..b", "a*", "a.>", "ä"):
            with pytest.raises(InvalidName):
                await kv.put(key, b"x")
            with pytest.raises(InvalidName):
                await kv.get(key)
        with pytest.raises(InvalidName):
            await kv.keys("a.")
        with pytest.raises(InvalidName):
            await conn.key_value(BucketConfig(name="has.dot"))

    async def test_user_strings_round_trip_through_encoded_keys(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        ids = ["plain-id", "user@example.com", "a.b.c", "\u03b1/\u03b2 \u03b3", "x=y", "*", ">"]
        for agent_id in ids:
            await kv.put(f"agents.{encode_token(agent_id)}", agent_id.encode())
        keys = await kv.keys("agents")
        decoded = sorted(decode_token(k.split(".", 1)[1]) for k in keys)
        assert decoded == sorted(ids)

    async def test_oversize_value_is_refused(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        kv = await _kv(substrate, conn)
        with pytest.raises(PayloadTooLarge):
            await kv.put("k", b"x" * (conn.max_payload + 1))
        assert await kv.get("k") is None

    # --- streams ----------------------------------------------------------------------

    async def test_publish_deduplicates_on_msg_id(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        stream, root = await _stream(substrate, conn)
        first = await stream.publish(f"{root}.x", b"1", msg_id="id-1")
        second = await stream.publish(f"{root}.x", b"2", msg_id="id-2")
        again = await stream.publish(f"{root}.x", b"1 again", msg_id="id-1")
        assert (first.duplicate, second.duplicate) == (False, False)
        assert second.seq > first.seq
        assert (again.seq, again.duplicate) == (first.seq, True)
        assert again.stream == stream.name
        state = await stream.state()
        assert (state.messages, state.first_seq, state.last_seq) == (2, first.seq, second.seq)

    async def test_next_message_reads_a_subject_from_a_sequence(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        stream, root = await _stream(substrate, conn)
        acks = {}
        for i in range(6):
            subject = f"{root}.{'a' if i % 2 == 0 else 'b'}"
            acks[i] = await stream.publish(subject, str(i).encode(), headers={"n": str(i)})
        walked = []
        seq = 1
        while (msg := await stream.next_message(f"{root}.a", seq)) is not None:
            walked.append((msg.seq, msg.data, msg.subject))
            assert msg.headers is not None
            assert msg.headers.get("n") == msg.data.decode()
            seq = msg.seq + 1
        assert walked == [(acks[i].seq, str(i).encode(), f"{root}.a") for i in (0, 2, 4)]
        mid = await stream.next_message(f"{root}.b", acks[2].seq)
        assert mid is not None
        assert mid.seq == acks[3].seq
        assert await stream.next_message(f"{root}.b", acks[5].seq + 1) is None
        assert await stream.next_message(f"{root}.none", 1) is None

    async def test_purge_removes_a_subject_below_a_sequence(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        stream, root = await _stream(substrate, conn)
        a = [await stream.publish(f"{root}.a", str(i).encode()) for i in range(4)]
        b = await stream.publish(f"{root}.b", b"other")
        await stream.purge(f"{root}.a", below_seq=a[2].seq)
        first = await stream.next_message(f"{root}.a", 1)
        assert first is not None
        assert first.seq == a[2].seq
        other = await stream.next_message(f"{root}.b", 1)
        assert other is not None
        assert other.seq == b.seq
        state = await stream.state()
        assert state.messages == 3

    async def test_full_subject_refuses_new_messages_under_discard_new(
        self, substrate: Substrate
    ) -> None:
        conn = await substrate.connect("a")
        stream, root = await _stream(substrate, conn, discard="new", max_msgs_per_subject=2)
        await stream.publish(f"{root}.a", b"1")
        second = await stream.publish(f"{root}.a", b"2")
        with pytest.raises(SubjectFull) as info:
            await stream.publish(f"{root}.a", b"3")
        assert info.value.retryable
        await stream.publish(f"{root}.b", b"other subject still takes writes")
        await stream.purge(f"{root}.a", below_seq=second.seq)
        await stream.publish(f"{root}.a", b"3")
        data = []
        seq = 1
        while (msg := await stream.next_message(f"{root}.a", seq)) is not None:
            data.append(msg.data)
            seq = msg.seq + 1
        assert data == [b"2", b"3"]

    async def test_discard_old_keeps_the_newest_per_subject(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        stream, root = await _stream(substrate, conn, max_msgs_per_subject=2)
        for i in range(4):
            await stream.publish(f"{root}.a", str(i).encode())
        first = await stream.next_message(f"{root}.a", 1)
        assert first is not None
        assert first.data == b"2"

    async def test_publish_to_a_subject_no_stream_holds_has_no_responders(
        self, substrate: Substrate
    ) -> None:
        conn = await substrate.connect("a")
        stream, _root = await _stream(substrate, conn)
        with pytest.raises(NoResponders):
            await stream.publish(substrate.unique("elsewhere"), b"x", timeout=2)

    async def test_publish_is_pinned_to_its_stream(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        mine, _root = await _stream(substrate, conn)
        other, other_root = await _stream(substrate, conn)
        with pytest.raises(SubstrateError):
            await mine.publish(f"{other_root}.x", b"belongs to the other stream")
        assert (await other.state()).messages == 0
        assert (await mine.state()).messages == 0

    async def test_stream_creation_is_idempotent(self, substrate: Substrate) -> None:
        a, b = await substrate.connect("a"), await substrate.connect("b")
        root = substrate.unique("idem")
        config = StreamConfig(name=substrate.unique("IDEM"), subjects=(f"{root}.>",))
        s1 = await a.stream(config)
        ack = await s1.publish(f"{root}.x", b"kept")
        s2 = await b.stream(config)
        msg = await s2.next_message(f"{root}.x", 1)
        assert msg is not None
        assert (msg.seq, msg.data) == (ack.seq, b"kept")

    async def test_consumer_ack_and_nak_with_delay(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        stream, root = await _stream(substrate, conn)
        consumer = await stream.consumer(ConsumerConfig(durable="work", ack_wait=5))
        for i in range(2):
            await stream.publish(f"{root}.job", str(i).encode())
        got = await consumer.fetch(2, timeout=3)
        assert [d.data for d in got] == [b"0", b"1"]
        assert [d.num_delivered for d in got] == [1, 1]
        assert got[0].subject == f"{root}.job"
        await got[0].ack()
        await got[1].nak(delay=0.3)
        loop = asyncio.get_running_loop()
        naked = loop.time()
        again = await consumer.fetch(1, timeout=3)
        assert [d.data for d in again] == [b"1"]
        assert again[0].num_delivered == 2
        assert again[0].seq == got[1].seq
        assert loop.time() - naked >= 0.2, "nak(delay) redelivered too early"
        await again[0].ack()
        assert await consumer.fetch(1, timeout=0.3) == []

    async def test_consumer_redelivers_after_a_consumer_dies_without_acking(
        self, substrate: Substrate
    ) -> None:
        first, second = await substrate.connect("first"), await substrate.connect("second")
        stream, root = await _stream(substrate, first)
        config = ConsumerConfig(durable="jobs", ack_wait=0.5, filter_subject=f"{root}.job")
        dying = await stream.consumer(config)
        await stream.publish(f"{root}.job", b"task")
        await stream.publish(f"{root}.other", b"not for this consumer")
        taken = await dying.fetch(1, timeout=3)
        assert [d.data for d in taken] == [b"task"]
        await first.close()
        survivor_stream = await second.stream(
            StreamConfig(name=stream.name, subjects=(f"{root}.>",))
        )
        survivor = await survivor_stream.consumer(config)
        redelivered = await survivor.fetch(1, timeout=5)
        assert [d.data for d in redelivered] == [b"task"]
        assert redelivered[0].num_delivered == 2
        await redelivered[0].ack()
        assert await survivor.fetch(1, timeout=0.8) == []

    async def test_settling_a_delivery_twice_changes_nothing(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        stream, root = await _stream(substrate, conn)
        consumer = await stream.consumer(ConsumerConfig(durable="twice", ack_wait=0.3))
        await stream.publish(f"{root}.x", b"once")
        (delivery,) = await consumer.fetch(1, timeout=3)
        await delivery.ack()
        await delivery.ack()
        await delivery.nak()
        assert await consumer.fetch(1, timeout=0.8) == []

    async def test_consumer_term_and_max_deliver_stop_redelivery(
        self, substrate: Substrate
    ) -> None:
        conn = await substrate.connect("a")
        stream, root = await _stream(substrate, conn)
        consumer = await stream.consumer(ConsumerConfig(durable="c", ack_wait=0.3, max_deliver=2))
        await stream.publish(f"{root}.poison", b"p")
        await stream.publish(f"{root}.done", b"d")
        got = await consumer.fetch(2, timeout=3)
        assert sorted(d.data for d in got) == [b"d", b"p"]
        for d in got:
            if d.data == b"d":
                await d.term()
        second = await consumer.fetch(2, timeout=3)
        assert [(d.data, d.num_delivered) for d in second] == [(b"p", 2)]
        assert await consumer.fetch(1, timeout=0.8) == []

    async def test_consumer_deliver_new_skips_history(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        stream, root = await _stream(substrate, conn)
        await stream.publish(f"{root}.x", b"old")
        consumer = await stream.consumer(ConsumerConfig(durable="fresh", deliver="new"))
        await stream.publish(f"{root}.x", b"new")
        got = await consumer.fetch(5, timeout=3)
        assert [d.data for d in got] == [b"new"]
        await got[0].ack()
        await stream.delete_consumer("fresh")

    # --- objects ----------------------------------------------------------------------

    async def test_large_objects_round_trip(self, substrate: Substrate) -> None:
        conn = await substrate.connect("a")
        store = await conn.object_store(ObjectStoreConfig(name=substrate.unique("obj")))
        blob = bytes(range(256)) * (3 * conn.max_payload // 256 + 7)
        info = await store.put("snapshots/agent-1", blob)
        digest = base64.urlsafe_b64encode(hashlib.sha256(blob).digest()).decode()
        assert (info.name, info.size, info.digest) == (
            "snapshots/agent-1",
            len(blob),
            f"SHA-256={digest}",
        )
        assert await store.get("snapshots/agent-1") == blob
        assert await store.info("snapshots/agent-1") == info
        await store.put("snapshots/agent-1", b"smaller")
        assert await store.get("snapshots/agent-1") == b"smaller"
        assert await store.get("missing") is None
        assert await store.info("missing") is None
        await store.delete("snapshots/agent-1")
        await store.delete("snapshots/agent-1")
        assert await store.get("snapshots/agent-1") is None
