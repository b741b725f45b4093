"""The ``state`` bucket's fenced writes when a write's outcome is unknown (memory backend).

A write that timed out may land later, or never: only a value that is not ours at the key
means another writer. Reading the key back and finding our previous value — the write has
not landed (yet) — must not fence the agent, and a write that lands after its outcome was
given up must not fence the next one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentcluster.cluster.state_store import StateStore, state_key
from agentcluster.core.snapshots import SnapshotEnvelope
from agentcluster.errors import AgentFenced, RequestTimeout
from agentcluster.testing.waiting import eventually
from agentcluster.transport.interface import BucketConfig, KeyValue
from agentcluster.transport.memory import MemoryTransport

TIMEOUT = 0.05


def envelope(total: int, incarnation: int = 1) -> SnapshotEnvelope:
    return SnapshotEnvelope(
        schema_version=1,
        state={"state": {"total": total}},
        schedules=[],
        outbox=[],
        inbox=None,
        agent_incarnation=incarnation,
    )


@pytest.fixture
async def hub() -> AsyncIterator[MemoryTransport]:
    transport = MemoryTransport(seed="state-store")
    yield transport
    await transport.close()


@pytest.fixture
async def kv(hub: MemoryTransport) -> KeyValue:
    conn = await hub.connect("n1")
    return await conn.key_value(BucketConfig("state"))


def store_of(kv: KeyValue) -> StateStore:
    return StateStore(kv, None, kv_limit=65536, timeout=TIMEOUT)


async def total_at(kv: KeyValue) -> tuple[int, int] | None:
    entry = await kv.get(state_key("a"))
    if entry is None:
        return None
    return entry.revision, SnapshotEnvelope.from_bytes(entry.value).state["state"]["total"]


async def test_a_timed_out_write_not_landed_yet_is_repeated_not_fenced(
    hub: MemoryTransport, kv: KeyValue
) -> None:
    store = store_of(kv)
    first, _ = await store.write("a", envelope(1), None)
    # The write times out and lands only later: the key still holds our previous value.
    hub.faults.ambiguous_writes(1, apply_after=4 * TIMEOUT)
    second, _ = await store.write("a", envelope(2), first)
    assert second > first
    assert await total_at(kv) == (second, 2)
    # The late copy expected the old revision and is refused on arrival.
    await eventually(lambda: hub.faults.records[-1].kind == "ambiguous_refused", 1)
    assert await total_at(kv) == (second, 2)
    third, _ = await store.write("a", envelope(3), second)
    assert await total_at(kv) == (third, 3)


async def test_a_write_that_lands_after_its_outcome_was_given_up_does_not_fence_the_next(
    hub: MemoryTransport, kv: KeyValue
) -> None:
    store = store_of(kv)
    first, _ = await store.write("a", envelope(1), None)
    hub.faults.ambiguous_writes(5, apply_after=20 * TIMEOUT)
    with pytest.raises(RequestTimeout):
        await store.write("a", envelope(2), first)
    # Now the first of those copies lands; the caller still holds the old revision.
    await eventually(lambda: total_at(kv), 2)
    await eventually(
        lambda: any(r.kind == "ambiguous_applied" for r in hub.faults.records), 2, 0.01
    )
    landed = await total_at(kv)
    assert landed is not None
    assert landed[1] == 2
    third, _ = await store.write("a", envelope(3), first)
    assert await total_at(kv) == (third, 3)


async def test_a_created_key_whose_create_timed_out_is_ours(
    hub: MemoryTransport, kv: KeyValue
) -> None:
    store = store_of(kv)
    hub.faults.ambiguous_writes(1)
    created, _ = await store.write("a", envelope(1), None)
    assert await total_at(kv) == (created, 1)


async def test_another_writers_value_still_fences(hub: MemoryTransport, kv: KeyValue) -> None:
    store = store_of(kv)
    first, _ = await store.write("a", envelope(1), None)
    newer, _ = await store_of(kv).write("a", envelope(0, incarnation=2), first)
    with pytest.raises(AgentFenced):
        await store.write("a", envelope(2), first)
    # Also when our write timed out: the key holds a value that is not ours.
    hub.faults.ambiguous_writes(1, apply_after=4 * TIMEOUT)
    with pytest.raises(AgentFenced):
        await store.write("a", envelope(3), first)
    assert await total_at(kv) == (newer, 0)
