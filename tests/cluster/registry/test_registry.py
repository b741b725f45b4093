"""The registry shell over the memory transport, in virtual time."""

from __future__ import annotations

import asyncio

import pytest

from agentcluster.cluster.registry import Registry, agent_key
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.registry import AgentEntry, AgentStatus
from agentcluster.core.stamps import StampSource
from agentcluster.errors import AgentExists
from agentcluster.testing.waiting import eventually
from agentcluster.transport.interface import BucketConfig
from agentcluster.transport.memory import MemoryTransport

AGENTS = BucketConfig(name="agents")


async def _registry(hub: MemoryTransport, node: str, incarnation: int = 1) -> Registry:
    conn = await hub.connect(node)
    kv = await conn.key_value(AGENTS)
    stamps = StampSource(node, incarnation)
    registry = Registry(kv, lambda: stamps)
    await registry.start()
    return registry


def _alive(*nodes: tuple[str, int]) -> dict[str, NodeRecord]:
    return {n: NodeRecord(n, inc) for n, inc in nodes}


@pytest.fixture
def hub() -> MemoryTransport:
    return MemoryTransport(seed="registry")


async def test_every_node_sees_registrations_through_its_cache(hub: MemoryTransport) -> None:
    r1, r2 = await _registry(hub, "n1"), await _registry(hub, "n2")
    nodes = _alive(("n1", 1), ("n2", 1))
    written, _rev = await r1.register(AgentEntry("inv-1", "n1", 1, capabilities=("inv",)), nodes)
    await r2.register(AgentEntry("inv.2/β", "n2", 1, capabilities=("inv", "pay")), nodes)
    assert written.stamp is not None
    await eventually(lambda: r1.find_by_capability("inv") == ("inv-1", "inv.2/β"), timeout=5)
    await eventually(lambda: r2.lookup("inv-1") == written, timeout=5)
    assert r2.agents_by_node() == {"n1": ["inv-1"], "n2": ["inv.2/β"]}
    fresh = await r2.lookup_fresh("inv.2/β")
    assert fresh is not None
    assert fresh.capabilities == ("inv", "pay")
    for r in (r1, r2):
        await r.stop()


async def test_concurrent_registrations_of_one_id_have_one_winner(hub: MemoryTransport) -> None:
    registries = [await _registry(hub, f"n{i}") for i in range(5)]
    nodes = _alive(*((f"n{i}", 1) for i in range(5)))
    results = await asyncio.gather(
        *(r.register(AgentEntry("solo", f"n{i}", 1), nodes) for i, r in enumerate(registries)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(e, AgentExists) for e in losers)
    holder = winners[0][0].node  # type: ignore[index]
    assert {e.node_id for e in losers} == {holder}  # type: ignore[union-attr]
    for r in registries:
        await r.stop()


async def test_an_entry_whose_node_is_gone_is_taken_over_with_a_new_incarnation(
    hub: MemoryTransport,
) -> None:
    r1, r2 = await _registry(hub, "n1"), await _registry(hub, "n2")
    await r1.register(AgentEntry("a", "n1", 1), _alive(("n1", 1), ("n2", 1)))
    with pytest.raises(AgentExists):
        await r2.register(AgentEntry("a", "n2", 1), _alive(("n1", 1), ("n2", 1)))
    dead = {"n1": NodeRecord("n1", 1, status=NodeStatus.DEAD), "n2": NodeRecord("n2", 1)}
    taken, _ = await r2.register(AgentEntry("a", "n2", 1), dead)
    assert (taken.node, taken.incarnation) == ("n2", 2)
    restarted = _alive(("n1", 2), ("n2", 1))  # n1 restarted: its old placement is gone
    again, _ = await r1.register(AgentEntry("b", "n1", 2), restarted)
    assert again.incarnation == 1
    for r in (r1, r2):
        await r.stop()


async def test_the_leader_marks_a_dead_nodes_entries_unavailable(hub: MemoryTransport) -> None:
    r1, r2 = await _registry(hub, "n1"), await _registry(hub, "n2")
    nodes = _alive(("n1", 1), ("n2", 1))
    spec = {"class": "shop:Inventory"}
    for agent_id in ("a", "b"):
        await r1.register(AgentEntry(agent_id, "n1", 1, spec=spec), nodes)
    await r2.register(AgentEntry("c", "n2", 1), nodes)
    await eventually(lambda: len(r2.index) == 3, timeout=5)
    marked = await r2.mark_unavailable("n1", "node_dead")
    assert sorted(marked) == ["a", "b"]
    await eventually(
        lambda: all(
            (e := r1.lookup(a)) is not None and e.status is AgentStatus.UNAVAILABLE
            for a in ("a", "b")
        ),
        timeout=5,
    )
    entry = r1.lookup("a")
    assert entry is not None
    assert (entry.reason, entry.spec) == ("node_dead", spec)
    c = r1.lookup("c")
    assert c is not None
    assert c.status is AgentStatus.RUNNING
    assert await r2.mark_unavailable("n1", "node_dead") == []  # already marked
    for r in (r1, r2):
        await r.stop()


async def test_unregister_only_at_the_revision_written(hub: MemoryTransport) -> None:
    r1 = await _registry(hub, "n1")
    nodes = _alive(("n1", 1))
    _, rev = await r1.register(AgentEntry("a", "n1", 1), nodes)
    assert not await r1.unregister("a", rev + 100)
    assert await r1.unregister("a", rev)
    await eventually(lambda: r1.lookup("a") is None, timeout=5)
    await r1.stop()


async def test_a_cache_that_fell_behind_is_rebuilt_complete(hub: MemoryTransport) -> None:
    conn = await hub.connect("n1")
    kv = await conn.key_value(AGENTS)
    stamps = StampSource("n1", 1)
    small = Registry(kv, lambda: stamps, pending_limit=2)
    await small.start()
    writer = await _registry(hub, "n2")
    nodes = _alive(("n1", 1), ("n2", 1))
    hub.faults.delay_watch(1.0)
    for i in range(20):
        await writer.register(AgentEntry(f"a{i}", "n2", 1), nodes)
    hub.faults.delay_watch(0)
    await eventually(lambda: small.rebuilds >= 1 and len(small.index) == 20, timeout=10)
    assert sorted(small.index.on_node("n2")) == sorted(f"a{i}" for i in range(20))
    for r in (small, writer):
        await r.stop()


def test_agent_keys_encode_any_id() -> None:
    assert agent_key("inv-1") == "inv-1"
    assert "." not in agent_key("a.b.c")
