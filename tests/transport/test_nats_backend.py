"""What is specific to the NATS backend: configuration, connecting, authentication, the
translation of nats-py's and JetStream's errors, connection events and watch loss.

The shared semantics are pinned by the conformance suite; a smoke test here keeps this file
useful on its own. Every test talks to a real ``nats-server`` started by this module.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcluster.errors import (
    ConfigurationError,
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
from agentcluster.testing.nats_server import NatsServer
from agentcluster.testing.ports import free_port
from agentcluster.testing.waiting import eventually
from agentcluster.transport.interface import (
    BucketConfig,
    Connection,
    ConnectionEvent,
    Consumer,
    ConsumerConfig,
    Delivery,
    Entry,
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
from agentcluster.transport.nats import NatsConfig, connect

pytestmark = pytest.mark.nats


@pytest.fixture
def nats_bin(nats_server_bin: str) -> str:
    return nats_server_bin


@pytest.fixture
def server(nats_server: NatsServer) -> NatsServer:
    return nats_server


@pytest.fixture
async def conn(server: NatsServer) -> AsyncIterator[Connection]:
    connection = await connect(NatsConfig(servers=[server.url], name="test"))
    try:
        yield connection
    finally:
        await connection.close()


_names = iter(range(1_000_000))


def unique(base: str) -> str:
    return f"{base}{os.getpid()}x{next(_names)}"


# --- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"servers": []}, "servers"),
        ({"servers": ["http://127.0.0.1:4222"]}, "servers"),
        ({"servers": ["nats://:4222"]}, "servers"),
        ({"servers": ["nats://host:99999"]}, "servers"),
        ({"servers": ["nats://host:4222/path"]}, "servers"),
        ({"user": "a"}, "password"),
        ({"password": "b"}, "user"),
        ({"user": "a", "password": "b", "token": "t"}, "token"),
        ({"nkeys_seed": "seed.nk", "creds_file": "user.creds"}, "creds_file"),
        ({"servers": ["nats://u:p@127.0.0.1:4222"], "token": "t"}, "servers"),
        ({"tls_cert_file": "cert.pem"}, "tls_key_file"),
        ({"tls_key_file": "key.pem"}, "tls_cert_file"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"request_timeout": -1}, "request_timeout"),
        ({"ping_interval": 0}, "ping_interval"),
        ({"reconnect_time_wait": -0.1}, "reconnect_time_wait"),
        ({"reconnect_jitter": -1}, "reconnect_jitter"),
        ({"max_reconnect_attempts": 0}, "max_reconnect_attempts"),
        ({"max_reconnect_attempts": -2}, "max_reconnect_attempts"),
        ({"allow_reconnect": "yes"}, "allow_reconnect"),
        ({"name": ""}, "name"),
        ({"token": ""}, "token"),
        ({"pending_bytes_limit": -1}, "pending_bytes_limit"),
        ({"watch_heartbeat": 0}, "watch_heartbeat"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(settings: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"NatsConfig\.{field}\b"):
        NatsConfig(**settings)  # type: ignore[arg-type]


def test_settings_are_normalised() -> None:
    config = NatsConfig(servers="tls://example.org:4443")
    assert config.servers == ("tls://example.org:4443",)
    assert config.tls_required
    assert not NatsConfig().tls_required
    secret = NatsConfig(servers=["nats://me:pw@h:1"], name="n")
    assert "pw" not in secret.describe()
    assert "pw" not in repr(NatsConfig(user="me", password="pw"))
    with pytest.raises(AttributeError):
        config.name = "other"  # type: ignore[misc]


async def test_unreadable_files_fail_at_connect_by_field(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match=r"NatsConfig\.tls_ca_file"):
        await connect(NatsConfig(servers=["tls://127.0.0.1:1"], tls_ca_file=missing))
    with pytest.raises(ConfigurationError, match=r"NatsConfig\.creds_file"):
        await connect(NatsConfig(servers=["nats://127.0.0.1:1"], creds_file=missing))


def test_importing_the_transport_does_not_import_nats_py() -> None:
    code = (
        "import sys, agentcluster.transport, agentcluster.transport.nats as n; "
        "n.NatsConfig(); assert 'nats' not in sys.modules, 'nats-py imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- connecting -------------------------------------------------------------------------


async def test_a_dead_port_fails_typed_within_connect_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(SubstrateError) as info:
        await connect(NatsConfig(servers=[f"nats://127.0.0.1:{free_port()}"], connect_timeout=0.5))
    assert loop.time() - started < 1.5
    assert info.value.retryable
    assert "127.0.0.1" in str(info.value)


async def test_user_and_password(nats_bin: str, tmp_path: Path) -> None:
    with NatsServer(tmp_path, binary=nats_bin, user="alice", password="s3cret") as srv:
        good = await connect(NatsConfig(servers=[srv.url], user="alice", password="s3cret"))
        try:
            assert good.is_connected
            reply_kv = await good.key_value(BucketConfig(name="auth"))
            assert await reply_kv.put("k", b"v") > 0
        finally:
            await good.close()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(SubstrateError, match="uthorization") as info:
            await connect(
                NatsConfig(servers=[srv.url], user="alice", password="wrong", connect_timeout=3)
            )
        assert not info.value.retryable
        assert loop.time() - started < 2, "a refused password must not wait for the timeout"
        with pytest.raises(SubstrateError):
            await connect(NatsConfig(servers=[srv.url], connect_timeout=1))


async def test_token(nats_bin: str, tmp_path: Path) -> None:
    with NatsServer(tmp_path, binary=nats_bin, token="t0ken") as srv:
        good = await connect(NatsConfig(servers=[srv.url], token="t0ken"))
        await good.close()
        with pytest.raises(SubstrateError) as info:
            await connect(NatsConfig(servers=[srv.url], token="nope", connect_timeout=3))
        assert not info.value.retryable


async def test_tls_configured_against_a_plaintext_server_is_refused(server: NatsServer) -> None:
    url = server.url.replace("nats://", "tls://")
    with pytest.raises(SubstrateError, match="TLS"):
        await connect(NatsConfig(servers=[url], connect_timeout=1))


# --- the protocol objects and a smoke test ----------------------------------------------


async def test_every_object_implements_its_protocol(conn: Connection) -> None:
    assert isinstance(conn, Connection)
    assert conn.max_payload == 1024 * 1024
    assert conn.name == "test"
    assert conn.is_connected
    assert not conn.is_closed

    async def ignore(msg: Message) -> None:
        pass

    sub = await conn.subscribe(unique("p"), ignore)
    assert isinstance(sub, Subscription)
    kv = await conn.key_value(BucketConfig(name=unique("kv")))
    assert isinstance(kv, KeyValue)
    watcher = await kv.watch()
    assert isinstance(watcher, Watcher)
    await watcher.stop()
    root = unique("s")
    stream = await conn.stream(StreamConfig(name=unique("S"), subjects=(f"{root}.>",)))
    assert isinstance(stream, Stream)
    consumer = await stream.consumer(ConsumerConfig(durable="c"))
    assert isinstance(consumer, Consumer)
    await stream.publish(f"{root}.a", b"x")
    (delivery,) = await consumer.fetch(1, timeout=2)
    assert isinstance(delivery, Delivery)
    await delivery.ack()
    store = await conn.object_store(ObjectStoreConfig(name=unique("o")))
    assert isinstance(store, ObjectStore)


async def test_smoke_messages_kv_stream_objects(conn: Connection, server: NatsServer) -> None:
    other = await connect(NatsConfig(servers=[server.url], name="other"))
    try:
        subject = unique("svc")

        async def echo(msg: Message) -> None:
            await other.publish(msg.reply, msg.data[::-1])

        await other.subscribe(subject, echo)
        await other.flush()
        assert (await conn.request(subject, b"abc", timeout=2)).data == b"cba"

        kv = await conn.key_value(BucketConfig(name=unique("kv"), storage="memory", history=3))
        rev = await kv.create("a.b", b"1")
        rev2 = await kv.update("a.b", b"2", rev)
        entry = await kv.get("a.b")
        assert entry == Entry(kv.bucket, "a.b", b"2", rev2)
        assert await kv.keys() == ["a.b"]

        root = unique("s")
        stream = await conn.stream(
            StreamConfig(name=unique("S"), subjects=(f"{root}.>",), storage="memory")
        )
        ack = await stream.publish(f"{root}.x", b"payload", msg_id="m1")
        stored = await stream.next_message(f"{root}.x")
        assert stored is not None
        assert (stored.seq, stored.data, stored.stream) == (ack.seq, b"payload", stream.name)
        assert stored.headers is not None
        assert stored.headers.get("Nats-Msg-Id") == "m1"

        store = await conn.object_store(ObjectStoreConfig(name=unique("o")))
        info = await store.put("empty", b"")
        assert (info.size, await store.get("empty")) == (0, b"")
    finally:
        await other.close()


# --- error translation ----------------------------------------------------------------


async def test_key_exists_and_revision_mismatch_are_told_apart(conn: Connection) -> None:
    kv = await conn.key_value(BucketConfig(name=unique("kv")))
    rev = await kv.create("k", b"1")
    with pytest.raises(KeyExists):
        await kv.create("k", b"again")
    with pytest.raises(RevisionMismatch) as info:
        await kv.update("k", b"2", rev + 100)
    assert info.value.expected == rev + 100
    with pytest.raises(RevisionMismatch):
        await kv.delete("k", revision=rev + 100)
    await kv.delete("k", revision=rev)
    assert await kv.get("k") is None
    again = await kv.create("k", b"3")  # over the delete marker: CAS on the marker's revision
    assert again > rev
    with pytest.raises(KeyExists):
        await kv.create("k", b"4")


async def test_keys_on_empty_bucket_and_by_whole_tokens(conn: Connection) -> None:
    kv = await conn.key_value(BucketConfig(name=unique("kv")))
    assert await kv.keys() == []
    assert await kv.keys("n1") == []
    for key in ("n1.a", "n10.a", "n1", "n1.b.c"):
        await kv.put(key, b"v")
    await kv.delete("n1.b.c")
    assert await kv.keys("n1") == ["n1.a"]
    assert await kv.keys("n10") == ["n10.a"]
    assert await kv.keys() == ["n1", "n1.a", "n10.a"]


async def test_keys_leave_no_consumer_behind(conn: Connection) -> None:
    name = unique("kv")
    kv = await conn.key_value(BucketConfig(name=name))
    await kv.put("a", b"1")
    for _ in range(3):
        assert await kv.keys() == ["a"]

    async def consumers() -> bool:
        info = await conn._api(f"$JS.API.STREAM.INFO.KV_{name}", None, 2, "info")  # type: ignore[attr-defined]
        return bool(info["state"]["consumer_count"] == 0)

    await eventually(consumers, timeout=3)


async def test_full_subject_vs_full_stream_vs_no_stream(conn: Connection) -> None:
    root = unique("s")
    per_subject = await conn.stream(
        StreamConfig(
            name=unique("S"), subjects=(f"{root}.>",), discard="new", max_msgs_per_subject=1
        )
    )
    await per_subject.publish(f"{root}.a", b"1")
    with pytest.raises(SubjectFull) as full:
        await per_subject.publish(f"{root}.a", b"2")
    assert (full.value.stream, full.value.subject) == (per_subject.name, f"{root}.a")
    assert full.value.retryable
    dup = await per_subject.publish(f"{root}.b", b"1", msg_id="same")
    again = await per_subject.publish(f"{root}.b", b"1", msg_id="same")
    assert (again.seq, again.duplicate) == (dup.seq, True)

    whole = unique("w")
    capped = await conn.stream(
        StreamConfig(name=unique("W"), subjects=(f"{whole}.>",), discard="new", max_msgs=1)
    )
    await capped.publish(f"{whole}.a", b"1")
    with pytest.raises(SubstrateError) as stream_full:
        await capped.publish(f"{whole}.b", b"1")
    assert stream_full.value.code == 10077
    assert not isinstance(stream_full.value, SubjectFull)

    with pytest.raises(NoResponders):
        await capped.publish(unique("nowhere"), b"x", timeout=2)


def test_jetstream_error_codes_map_to_errors() -> None:
    from agentcluster.transport.nats.translate import api_error

    leader = api_error(
        {"code": 503, "err_code": 10008, "description": "JetStream system temporarily unavailable"},
        "write",
    )
    assert isinstance(leader, NoResponders)
    assert leader.retryable
    full = api_error(
        {"code": 503, "err_code": 10077, "description": "maximum messages per subject exceeded"},
        "publish",
        stream="S",
        subject="s.a",
    )
    assert isinstance(full, SubjectFull)
    other = api_error(
        {"code": 400, "err_code": 10071, "description": "wrong last sequence: 3"}, "w"
    )
    assert isinstance(other, SubstrateError)
    assert other.code == 10071


def test_nats_py_exceptions_are_translated() -> None:
    import nats.errors
    import nats.js.errors

    from agentcluster.transport.nats.translate import translate

    assert isinstance(translate(nats.errors.ConnectionClosedError(), "x"), ConnectionClosed)
    assert isinstance(translate(nats.errors.NoRespondersError(), "x"), NoResponders)
    assert isinstance(translate(nats.js.errors.ServiceUnavailableError(), "x"), NoResponders)
    assert isinstance(translate(nats.errors.TimeoutError(), "x"), RequestTimeout)
    wrong_last = translate(nats.js.errors.KeyWrongLastSequenceError("x"), "x")
    assert isinstance(wrong_last, SubstrateError)
    assert wrong_last.code == 10071
    assert isinstance(translate(nats.js.errors.NotFoundError(), "x"), SubstrateError)
    assert isinstance(translate(OSError("reset"), "x"), SubstrateError)
    unknown = translate(nats.errors.Error("odd"), "x")
    assert isinstance(unknown, SubstrateError)
    assert "odd" in str(unknown)


async def test_reads_that_find_nothing(conn: Connection) -> None:
    root = unique("s")
    stream = await conn.stream(StreamConfig(name=unique("S"), subjects=(f"{root}.>",)))
    assert await stream.next_message(f"{root}.none", 1) is None
    await stream.purge(f"{root}.none", below_seq=1)
    consumer = await stream.consumer(ConsumerConfig(durable="idle"))
    assert await consumer.fetch(3, timeout=0.2) == []
    assert await consumer.fetch(1, timeout=0.2) == []
    store = await conn.object_store(ObjectStoreConfig(name=unique("o")))
    assert await store.get("none") is None
    assert await store.info("none") is None
    await store.delete("none")


async def test_deleting_what_is_absent_is_fine(conn: Connection) -> None:
    await conn.delete_key_value(unique("kv"))
    await conn.delete_stream(unique("S"))
    await conn.delete_object_store(unique("o"))
    root = unique("s")
    stream = await conn.stream(StreamConfig(name=unique("S"), subjects=(f"{root}.>",)))
    await stream.delete_consumer("never")
    await conn.delete_stream(stream.name)
    with pytest.raises(InvalidName):
        await conn.delete_stream("bad.name")


async def test_headers_count_against_max_payload(conn: Connection) -> None:
    subject = unique("big")
    data = b"x" * (conn.max_payload - 4)
    with pytest.raises(PayloadTooLarge):
        await conn.publish(subject, data, headers={"key": "value"})
    kv = await conn.key_value(BucketConfig(name=unique("kv")))
    with pytest.raises(PayloadTooLarge):
        await kv.update("k", data, 1)
    await conn.publish(subject, b"still connected")
    await conn.flush()
    assert conn.is_connected


async def test_stream_settings_reach_the_server(conn: Connection) -> None:
    root = unique("s")
    config = StreamConfig(
        name=unique("S"),
        subjects=(f"{root}.>",),
        storage="memory",
        discard="new",
        max_msgs_per_subject=2,
        max_age=60,
        duplicate_window=5,
    )
    stream = await conn.stream(config)
    info = await conn._api(f"$JS.API.STREAM.INFO.{stream.name}", None, 2, "info")  # type: ignore[attr-defined]
    found = info["config"]
    assert found["discard_new_per_subject"] is True
    assert (found["max_age"], found["duplicate_window"]) == (60 * 10**9, 5 * 10**9)
    assert found["storage"] == "memory"
    wider = await conn.stream(
        StreamConfig(name=stream.name, subjects=(f"{root}.>",), storage="memory", max_msgs=10)
    )
    info = await conn._api(f"$JS.API.STREAM.INFO.{wider.name}", None, 2, "info")  # type: ignore[attr-defined]
    assert info["config"]["max_msgs"] == 10, "stream() updates an existing stream's config"


async def test_deliveries_settle_once(conn: Connection) -> None:
    root = unique("s")
    stream = await conn.stream(StreamConfig(name=unique("S"), subjects=(f"{root}.>",)))
    consumer = await stream.consumer(ConsumerConfig(durable="w", ack_wait=0.5))
    await stream.publish(f"{root}.job", b"1")
    (first,) = await consumer.fetch(1, timeout=2)
    await first.in_progress()
    await first.ack()
    await first.nak()
    await first.term()
    assert await consumer.fetch(1, timeout=0.8) == []
    rebound = await stream.consumer(ConsumerConfig(durable="w", deliver="new"))
    assert rebound.name == "w", "a consumer whose settings cannot change is bound as it is"


async def test_calls_after_close_refuse(server: NatsServer) -> None:
    conn = await connect(NatsConfig(servers=[server.url]))
    kv = await conn.key_value(BucketConfig(name=unique("kv")))
    root = unique("s")
    stream = await conn.stream(StreamConfig(name=unique("S"), subjects=(f"{root}.>",)))
    await conn.close()
    with pytest.raises(ConnectionClosed):
        await kv.get("k")
    with pytest.raises(ConnectionClosed):
        await kv.put("k", b"v")
    with pytest.raises(ConnectionClosed):
        await stream.publish(f"{root}.x", b"v")
    with pytest.raises(ConnectionClosed):
        await conn.flush()
    with pytest.raises(ConnectionClosed):
        await conn.stream(StreamConfig(name=unique("S"), subjects=("z.>",)))


# --- interoperability with nats-py's own helpers ------------------------------------------


async def test_layout_is_the_one_other_clients_use(conn: Connection, server: NatsServer) -> None:
    import nats

    bucket, objects = unique("kv"), unique("o")
    kv = await conn.key_value(BucketConfig(name=bucket))
    store = await conn.object_store(ObjectStoreConfig(name=objects))
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        raw_kv = await js.key_value(bucket)
        await kv.put("ours", b"1")
        assert (await raw_kv.get("ours")).value == b"1"
        theirs = await raw_kv.create("theirs", b"2")
        entry = await kv.get("theirs")
        assert entry is not None
        assert (entry.value, entry.revision) == (b"2", theirs)
        await raw_kv.delete("theirs")
        assert await kv.get("theirs") is None

        raw_store = await js.object_store(objects)
        blob = os.urandom(300_000)
        info = await store.put("ours", blob)
        got = await raw_store.get("ours")
        assert (got.data, got.info.digest) == (blob, info.digest)
        await raw_store.put("theirs", blob[:1000])
        assert await store.get("theirs") == blob[:1000]
    finally:
        await nc.close()


# --- events and watch loss --------------------------------------------------------------


async def test_events_on_server_loss_return_and_close(nats_bin: str, tmp_path: Path) -> None:
    srv = NatsServer(tmp_path, binary=nats_bin).start()
    try:
        conn = await connect(
            NatsConfig(servers=[srv.url], reconnect_time_wait=0.05, watch_heartbeat=0.2)
        )
        events: list[ConnectionEvent] = []
        conn.add_listener(events.append)
        kv = await conn.key_value(BucketConfig(name="ev", storage="memory"))
        watcher = await kv.watch()
        srv.stop()
        await eventually(lambda: ConnectionEvent.DISCONNECTED in events, timeout=5)
        assert not conn.is_connected
        srv.start()
        await eventually(lambda: ConnectionEvent.RECONNECTED in events, timeout=10)
        assert conn.is_connected
        # The server restarted: the watch's consumer is gone, and the watch says so.
        with pytest.raises(WatchLost):
            await watcher.next(5)
        assert await watcher.next(0.01) is None, "a lost watch ends after saying so"
        await watcher.stop()
        await conn.close()
        await eventually(lambda: ConnectionEvent.CLOSED in events, timeout=3)
        assert events.index(ConnectionEvent.RECONNECTED) < events.index(ConnectionEvent.CLOSED)
    finally:
        srv.stop()


async def test_slow_subscription_counts_drops_and_reports(conn: Connection) -> None:
    events: list[ConnectionEvent] = []
    conn.add_listener(events.append)
    subject = unique("slow")
    gate = asyncio.Event()
    seen: list[bytes] = []

    async def stuck(msg: Message) -> None:
        await gate.wait()
        seen.append(msg.data)

    sub = await conn.subscribe(subject, stuck, pending_limit=10)
    await conn.flush()
    for i in range(100):
        await conn.publish(subject, str(i).encode())
    await conn.flush()
    await eventually(lambda: sub.dropped > 0, timeout=3)
    assert ConnectionEvent.SLOW_CONSUMER in events
    gate.set()
    await eventually(lambda: len(seen) + sub.dropped == 100, timeout=3)
    await sub.unsubscribe()


async def _read_into(got: list[Entry], watcher: Watcher, count: int) -> None:
    for _ in range(count):
        entry = await watcher.next(2)
        assert entry is not None
        got.append(entry)


async def test_unread_watch_is_lost_not_silently_short(conn: Connection) -> None:
    kv = await conn.key_value(BucketConfig(name=unique("kv")))
    for i in range(50):
        await kv.put(f"before.{i}", b"v")
    watcher = await kv.watch(pending_limit=5)
    assert len(watcher.initial) == 50, "the snapshot is not bounded by the live queue"
    for i in range(10):
        await kv.put(f"after.{i}", b"v")
    got: list[Entry] = []
    with pytest.raises(WatchLost):
        await _read_into(got, watcher, 10)
    # the updates that came before the loss were delivered first, in order
    assert [e.key for e in got] == [f"after.{i}" for i in range(5)]
    await watcher.stop()
    assert await watcher.next(0.01) is None
    assert [e async for e in watcher] == []


async def test_watch_reports_deletes_and_ends_when_the_connection_closes(
    server: NatsServer,
) -> None:
    conn = await connect(NatsConfig(servers=[server.url]))
    kv = await conn.key_value(BucketConfig(name=unique("kv")))
    await kv.put("gone", b"1")
    await kv.put("kept", b"1")
    await kv.delete("gone")
    watcher = await kv.watch()
    assert [e.key for e in watcher.initial] == ["kept"]
    await kv.delete("kept")
    update = await watcher.next(3)
    assert update is not None
    assert (update.key, update.operation, update.value) == ("kept", Operation.DELETE, b"")
    await conn.close()
    assert [e async for e in watcher] == []


async def test_a_subscription_is_in_effect_once_flush_returns(
    conn: Connection, server: NatsServer
) -> None:
    """nats-py writes its flush PING ahead of SUBs still waiting for its flusher task, so a
    bare PING/PONG could return before the server saw the SUB (measured here: about 1
    request in 2,000 then found no responders). ``flush`` writes the queue out first; many
    rounds give the reordering many chances to show."""
    requester = await connect(NatsConfig(servers=[server.url], name="requester"))
    try:
        for _ in range(2_000):
            subject = unique("flushed")

            async def echo(msg: Message) -> None:
                await conn.publish(msg.reply, b"here")

            await conn.subscribe(subject, echo)
            await conn.flush()
            reply = await requester.request(subject, b"?", timeout=2)
            assert reply.data == b"here"
    finally:
        await requester.close()


async def test_no_responders_notices_never_reach_a_subscription(conn: Connection) -> None:
    """nats-server answers a publish to a subject nobody subscribes to with an empty 503
    status message on its reply subject; a subscription on that subject must not take it
    for a message (a router's reply inbox would try to decode it)."""
    from agentcluster.transport.nats.connection import NatsConnection

    assert isinstance(conn, NatsConnection)
    inbox = unique("replies")
    seen: list[Message] = []

    async def take(msg: Message) -> None:
        seen.append(msg)

    sub = await conn.subscribe(inbox, take)
    await conn.flush()
    before = conn.no_responder_notices
    await conn.publish(unique("nobody"), b"hello", reply=inbox)
    await conn.publish(inbox, b"real")  # after the notice, on the same connection
    await conn.flush()
    await eventually(lambda: len(seen) >= 1, timeout=3)
    assert [m.data for m in seen] == [b"real"]
    assert conn.no_responder_notices == before + 1
    await sub.unsubscribe()
