"""The memory backend's store faults against the real events they stand for.

Each scenario is one function run twice: on the memory backend with the fault injected, and
on a real 3-server JetStream cluster (replicas 3) with the event itself. Both runs must
reach the same outcome: the same error class while the fault lasts, the same reads, the
same data afterwards.

- leader election — ``faults.leader_election(d)`` / SIGKILL the bucket's stream leader;
- cut off — ``faults.cut_off([client])`` then ``reconnect_store`` / SIGKILL both followers
  so the client's server (the stream leader) has no quorum, then restart them. The writes
  that timed out meanwhile are ambiguous: the memory backend drops them, the isolated NATS
  leader keeps them in its log and commits them once its followers return;
- ambiguous write — ``faults.ambiguous_writes`` / the same isolated leader, healed by
  bringing its followers back: its timed-out writes commit late;
- connection kill — ``faults.kill(name)`` / SIGKILL the only server of a client that does
  not reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from agentcluster.clock import SystemClock
from agentcluster.errors import ConnectionClosed, NoResponders, RequestTimeout, TransportError
from agentcluster.testing.nats_server import NatsCluster, NatsServer
from agentcluster.testing.waiting import eventually
from agentcluster.transport.interface import (
    BucketConfig,
    Connection,
    ConnectionEvent,
    KeyValue,
)

_clock = SystemClock()

WRITE_TIMEOUT = 1.0
"""Timeout of each write during a fault: a write that waits must give up after this."""

RECOVERY_DEADLINE = 20.0
"""Writes retried after a fault must succeed within this (a leader election takes ~4-7 s)."""


@dataclass
class Outcome:
    """What a scenario saw, without timings (those differ by design and are reported)."""

    errors_during: list[str] = field(default_factory=list)
    reads_during: dict[str, bytes | str | None] = field(default_factory=dict)
    data_after: dict[str, bytes | None] = field(default_factory=dict)
    cas_after: bool = False
    events: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def comparable(self, *, reads: bool = True) -> dict[str, Any]:
        return {
            "errors_during": sorted(set(self.errors_during)),
            "reads_during": self.reads_during if reads else "not compared",
            "data_after": self.data_after,
            "cas_after": self.cas_after,
            "events": self.events,
        }


class Rig(Protocol):
    """One backend with a way to cause each fault. ``client`` is the scenario's connection."""

    kind: str

    async def open_bucket(self, bucket: str, *, on_leader: bool) -> KeyValue:
        """Create a replicas-3 bucket and return it on the client's connection; the client
        sits on the stream leader's server (``on_leader``) or away from it."""
        ...

    async def leader_election(self) -> None: ...

    async def cut_off(self) -> None: ...

    async def heal_cut_off(self) -> None: ...

    async def heal_followers_return(self) -> None: ...


# --- the memory backend -----------------------------------------------------------------

LEADER_ELECTION = 1.5
"""Seconds of the injected election; the real one takes what it takes."""


class MemoryRig:
    kind = "memory"

    def __init__(self, seed: str) -> None:
        from agentcluster.transport.memory import MemoryTransport

        self.hub = MemoryTransport(seed=seed)
        self.client: Connection | None = None
        self._pending_ambiguous: int = 0

    async def open_bucket(self, bucket: str, *, on_leader: bool) -> KeyValue:
        self.client = await self.hub.connect("client")
        return await self.client.key_value(BucketConfig(name=bucket, replicas=3))

    async def leader_election(self) -> None:
        self.hub.faults.leader_election(LEADER_ELECTION)

    async def cut_off(self) -> None:
        self.hub.faults.cut_off(["client"])

    async def heal_cut_off(self) -> None:
        self.hub.faults.reconnect_store(["client"])

    async def ambiguous(self, count: int) -> None:
        self.hub.faults.ambiguous_writes(count, apply_after=0.5)

    async def heal_followers_return(self) -> None:
        pass

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


# --- a real 3-server cluster ------------------------------------------------------------


async def _nats_connect(urls: list[str], name: str, **options: Any) -> Connection:
    from agentcluster.transport.nats import NatsConfig, connect

    return await connect(NatsConfig(servers=urls, name=name, **options))


class NatsRig:
    kind = "nats"

    def __init__(self, cluster: NatsCluster) -> None:
        self.cluster = cluster
        self.admin: Connection | None = None
        self.client: Connection | None = None
        self.stream = ""
        self.leader = -1
        self.events: list[ConnectionEvent] = []

    async def open_bucket(self, bucket: str, *, on_leader: bool) -> KeyValue:
        cluster = self.cluster
        self.admin = await _nats_connect(cluster.urls, "admin")
        await self.admin.key_value(BucketConfig(name=bucket, replicas=3))
        self.stream = f"KV_{bucket}"
        self.leader = await self._leader_index()
        if on_leader:
            urls = [cluster[self.leader].url]
        else:
            urls = [s.url for i, s in enumerate(cluster.servers) if i != self.leader]
        self.client = await _nats_connect(urls, "client")
        self.client.add_listener(self.events.append)
        return await self.client.key_value(BucketConfig(name=bucket, replicas=3))

    async def _leader_index(self) -> int:
        name: str = await eventually(
            lambda: self.cluster.stream_leader(self.stream), timeout=15, interval=0.05
        )
        return self.cluster.index_of(name)

    def _routes_settled(self) -> bool:
        """Every running server has dropped its routes to the servers that are down."""
        up = len(self.cluster.running)
        return all(s.monitor("/routez")["num_routes"] == up - 1 for s in self.cluster.running)

    async def leader_election(self) -> None:
        self.cluster.kill(self.leader)
        await eventually(self._routes_settled, timeout=10, interval=0.02)

    async def cut_off(self) -> None:
        for i in range(len(self.cluster)):
            if i != self.leader:
                self.cluster.kill(i)
        await eventually(self._routes_settled, timeout=10, interval=0.02)

    async def heal_cut_off(self) -> None:
        await self.heal_followers_return()

    async def heal_followers_return(self) -> None:
        cluster = self.cluster
        for i in range(len(cluster)):
            if i != self.leader:
                cluster.restart(i, wait=False)
        await asyncio.to_thread(cluster.wait_ready, 30)

    async def close(self) -> None:
        for conn in (self.client, self.admin):
            if conn is not None:
                await conn.close()


# --- scenarios --------------------------------------------------------------------------


async def _retry_until_written(write: Callable[[], Awaitable[int]], errors: list[str]) -> int:
    """Retry with a small backoff while the store refuses; each refusal's class goes to
    ``errors``. Fails after ``RECOVERY_DEADLINE`` seconds."""
    start = _clock.monotonic()
    backoff = 0.05
    while True:
        try:
            return await write()
        except (NoResponders, RequestTimeout) as exc:
            errors.append(type(exc).__name__)
            if _clock.monotonic() - start > RECOVERY_DEADLINE:
                raise AssertionError(f"writes still failing: {errors}") from exc
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.4)


async def _read(kv: KeyValue, key: str) -> bytes | None:
    entry = await kv.get(key, timeout=3)
    return None if entry is None else entry.value


async def _read_or_error(kv: KeyValue, key: str) -> bytes | str | None:
    """The value, or the class name of the error the read failed with."""
    try:
        entry = await kv.get(key, timeout=WRITE_TIMEOUT)
    except TransportError as exc:
        return type(exc).__name__
    return None if entry is None else entry.value


async def _read_when_back(kv: KeyValue, key: str) -> bytes | None:
    """Read once the store answers again (the client may still be reconnecting)."""

    async def attempt() -> tuple[bytes | None] | None:
        try:
            return (await _read(kv, key),)
        except TransportError:
            return None

    result: tuple[bytes | None] = await eventually(attempt, timeout=20, interval=0.1)
    return result[0]


async def leader_election_scenario(rig: Any) -> Outcome:
    """Writes fail fast with ``NoResponders`` until a leader is back; reads keep answering;
    every acknowledged write survives."""
    outcome = Outcome()
    kv = await rig.open_bucket("election", on_leader=False)
    rev_a = await kv.put("a", b"1")
    await kv.put("b", b"1")

    await rig.leader_election()
    start = _clock.monotonic()
    with pytest.raises(NoResponders) as first:
        await kv.put("a", b"2", timeout=WRITE_TIMEOUT)
    outcome.errors_during.append(type(first.value).__name__)
    outcome.timings["first_failure"] = _clock.monotonic() - start
    outcome.reads_during["a"] = await _read_or_error(kv, "a")
    rev_c = await _retry_until_written(
        lambda: kv.put("c", b"3", timeout=WRITE_TIMEOUT), outcome.errors_during
    )
    outcome.timings["writes_paused"] = _clock.monotonic() - start

    for key in ("a", "b", "c", "never"):
        outcome.data_after[key] = await _read(kv, key)
    entry = await kv.get("a")
    assert entry is not None
    assert entry.revision == rev_a
    outcome.cas_after = await kv.update("a", b"4", entry.revision) > rev_c
    return outcome


async def cut_off_scenario(rig: Any) -> Outcome:
    """Cut off from the quorum: writes wait their whole timeout and fail with
    ``RequestTimeout``, reads answer stale; once the store is back, every acknowledged
    write is there, and each timed-out write either landed or did not (ambiguous)."""
    outcome = Outcome()
    kv = await rig.open_bucket("cutoff", on_leader=True)
    await kv.put("a", b"1")
    await kv.put("keep", b"1")

    await rig.cut_off()
    for write in (
        lambda: kv.put("a", b"cut", timeout=WRITE_TIMEOUT),
        lambda: kv.create("fresh", b"cut", timeout=WRITE_TIMEOUT),
    ):
        start = _clock.monotonic()
        with pytest.raises(RequestTimeout) as failed:
            await asyncio.wait_for(write(), timeout=WRITE_TIMEOUT + 3)
        took = _clock.monotonic() - start
        assert WRITE_TIMEOUT * 0.8 <= took < WRITE_TIMEOUT + 2, took
        outcome.errors_during.append(type(failed.value).__name__)
    for key in ("a", "fresh", "keep"):
        outcome.reads_during[key] = await _read(kv, key)

    start = _clock.monotonic()
    await rig.heal_cut_off()
    after_heal: list[str] = []
    await _retry_until_written(lambda: kv.put("b", b"2", timeout=WRITE_TIMEOUT), after_heal)
    outcome.timings["healed_in"] = _clock.monotonic() - start
    for key in ("keep", "b"):
        outcome.data_after[key] = await _read_when_back(kv, key)
    # Timed-out writes are ambiguous: either outcome is allowed, nothing else.
    late = {key: await _read_when_back(kv, key) for key in ("a", "fresh")}
    assert late["a"] in (b"1", b"cut"), late
    assert late["fresh"] in (None, b"cut"), late
    outcome.timings["timed_out_writes_landed"] = float(
        (late["a"] == b"cut") + (late["fresh"] == b"cut")
    )
    entry = await kv.get("a")
    assert entry is not None
    outcome.cas_after = await kv.update("a", b"3", entry.revision) > entry.revision
    return outcome


# --- tests ------------------------------------------------------------------------------


@pytest.fixture
async def memory_rig(request: pytest.FixtureRequest) -> AsyncIterator[MemoryRig]:
    rig = MemoryRig(request.node.name)
    try:
        yield rig
    finally:
        await rig.close()


@pytest.fixture
async def nats_rig(nats_cluster: NatsCluster) -> AsyncIterator[NatsRig]:
    rig = NatsRig(nats_cluster)
    try:
        yield rig
    finally:
        await rig.close()


def _report(capsys: pytest.CaptureFixture[str], what: str, *outcomes: Outcome) -> None:
    with capsys.disabled():
        for kind, outcome in zip(("memory", "nats"), outcomes, strict=True):
            timings = {k: round(v, 2) for k, v in outcome.timings.items()}
            print(f"\n[{what} / {kind}] {outcome.comparable()} timings={timings}")


@pytest.mark.nats
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_leader_election_matches_killing_the_stream_leader(
    memory_rig: MemoryRig, nats_rig: NatsRig, capsys: pytest.CaptureFixture[str]
) -> None:
    memory = await leader_election_scenario(memory_rig)
    real = await leader_election_scenario(nats_rig)
    _report(capsys, "leader election", memory, real)
    assert memory.comparable() == real.comparable()
    assert set(real.errors_during) == {"NoResponders"}
    assert real.timings["first_failure"] < 0.5
    # With no stream leader no replica answers a read: it waits its whole timeout (the
    # memory backend's ``leader_election`` stalls reads the same way).
    assert real.reads_during == {"a": "RequestTimeout"}
    assert real.data_after == {"a": b"1", "b": b"1", "c": b"3", "never": None}
    assert real.cas_after


@pytest.mark.nats
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_cut_off_matches_losing_both_followers(
    memory_rig: MemoryRig, nats_rig: NatsRig, capsys: pytest.CaptureFixture[str]
) -> None:
    memory = await cut_off_scenario(memory_rig)
    real = await cut_off_scenario(nats_rig)
    _report(capsys, "cut off", memory, real)
    assert memory.comparable() == real.comparable()
    assert real.errors_during == ["RequestTimeout", "RequestTimeout"]
    assert real.reads_during == {"a": b"1", "fresh": None, "keep": b"1"}
    assert real.data_after == {"keep": b"1", "b": b"2"}
    assert real.cas_after


# --- a timed-out write applied later ----------------------------------------------------


async def ambiguous_write_scenario(rig: Any) -> Outcome:
    """A write that timed out is applied later: reading the key back is the only way to
    know (the write stamps of DESIGN.md)."""
    outcome = Outcome()
    kv = await rig.open_bucket("ambiguous", on_leader=True)
    await kv.put("a", b"1")
    if rig.kind == "memory":
        await rig.ambiguous(1)
    else:
        await rig.cut_off()
    with pytest.raises(RequestTimeout) as failed:
        await kv.put("a", b"late", timeout=WRITE_TIMEOUT)
    outcome.errors_during.append(type(failed.value).__name__)
    await rig.heal_followers_return()

    async def landed() -> bool:
        try:
            return await _read(kv, "a") == b"late"
        except TransportError:
            return False

    await eventually(landed, timeout=20, interval=0.1)
    outcome.data_after["a"] = await _read(kv, "a")
    entry = await kv.get("a")
    assert entry is not None
    outcome.cas_after = await kv.update("a", b"2", entry.revision) > entry.revision
    return outcome


@pytest.mark.nats
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_ambiguous_write_matches_an_isolated_leader_whose_followers_return(
    memory_rig: MemoryRig, nats_rig: NatsRig, capsys: pytest.CaptureFixture[str]
) -> None:
    memory = await ambiguous_write_scenario(memory_rig)
    real = await ambiguous_write_scenario(nats_rig)
    _report(capsys, "ambiguous write", memory, real)
    assert memory.comparable() == real.comparable()
    assert real.data_after == {"a": b"late"}


# --- a connection killed ----------------------------------------------------------------


async def _kill_scenario(conn: Connection, kill: Callable[[], Awaitable[None]]) -> Outcome:
    outcome = Outcome()
    events: list[ConnectionEvent] = []
    conn.add_listener(events.append)
    await conn.flush()
    await kill()
    await eventually(lambda: ConnectionEvent.CLOSED in events, timeout=15)
    outcome.events = [e.value for e in events]
    assert conn.is_closed
    with pytest.raises(ConnectionClosed) as refused:
        await conn.publish("after.kill", b"x")
    outcome.errors_during.append(type(refused.value).__name__)
    return outcome


@pytest.mark.nats
async def test_connection_kill_matches_losing_the_only_server_without_reconnect(
    memory_rig: MemoryRig,
    fresh_nats_server: NatsServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    memory_conn = await memory_rig.hub.connect("victim")
    memory_rig.client = memory_conn

    async def kill_memory() -> None:
        memory_rig.hub.faults.kill("victim")

    memory = await _kill_scenario(memory_conn, kill_memory)

    real_conn = await _nats_connect([fresh_nats_server.url], "victim", allow_reconnect=False)
    try:

        async def kill_server() -> None:
            fresh_nats_server.kill()

        real = await _kill_scenario(real_conn, kill_server)
    finally:
        await real_conn.close()
    _report(capsys, "connection kill", memory, real)
    assert memory.comparable() == real.comparable()
    assert real.events == ["disconnected", "closed"]
    assert real.errors_during == ["ConnectionClosed"]
