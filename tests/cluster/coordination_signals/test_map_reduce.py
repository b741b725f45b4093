"""Map-reduce over the holders of a capability on a three-node memory cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.coordination.scatter import gather_all, map_reduce, scatter_gather
from agentcluster.errors import ActionFailed, ChunkFailed, NoAvailableNode
from agentcluster.sim import VirtualClock
from agentcluster.telemetry import EventRecorder, telemetry

HOLDERS = ("m1", "m2", "m3")


class Square(Action):
    """Square each item of the chunk."""

    class Params(BaseModel):
        items: list[int]
        chunk: int

    async def run(self, params: Square.Params, ctx: Any) -> Any:
        if ctx.state.delay:
            await asyncio.sleep(ctx.state.delay)
        if ctx.state.fail:
            raise ValueError(f"chunk {params.chunk} is not for me")
        return [x * x for x in params.items], ctx.set(seen=[*ctx.state.seen, params.chunk])


class Mapper(Agent):
    class State(BaseModel):
        delay: float = 0.0
        fail: bool = False
        seen: list[int] = []

    routes = {"mapreduce.map": Square}
    capabilities = ["square"]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with Cluster.local(nodes=3, clock=VirtualClock(asyncio.get_running_loop())) as c:
        yield c


async def start_mappers(cluster: Cluster, **special: dict[str, Any]) -> None:
    """``m1``..``m3`` on ``n1``..``n3``; ``special`` gives some of them a state."""
    for index, holder in enumerate(HOLDERS):
        await cluster.start_agent(
            Mapper, holder, node=f"n{index + 1}", state=special.get(holder, {})
        )


def seen(cluster: Cluster, holder: str) -> list[int]:
    entry = cluster.lookup(holder)
    assert entry is not None
    return cluster.node(entry.node).local.state(holder).seen  # type: ignore[attr-defined, no-any-return]


SQUARES = [x * x for x in range(10)]


async def test_balanced_chunks_over_three_holders(cluster: Cluster) -> None:
    await start_mappers(cluster)
    node = cluster.node("n1")
    chunks = await scatter_gather(node, "square", range(10), timeout=2.0)
    assert chunks == [[0, 1, 4, 9], [16, 25, 36], [49, 64, 81]]
    assert sorted(len(seen(cluster, h)) for h in HOLDERS) == [1, 1, 1]
    assert await map_reduce(node, "square", list(range(10)), timeout=2.0) == SQUARES
    total = await map_reduce(
        node, "square", list(range(10)), reduce=lambda rs: sum(map(sum, rs)), timeout=2.0
    )
    assert total == sum(SQUARES)
    small = await scatter_gather(node, "square", list(range(10)), chunk_size=2, timeout=2.0)
    assert [len(c) for c in small] == [2, 2, 2, 2, 2]
    assert [x for c in small for x in c] == SQUARES
    assert await map_reduce(node, "square", [], timeout=2.0) == []


async def test_a_failing_holder_chunk_is_retried_elsewhere(cluster: Cluster) -> None:
    await start_mappers(cluster, m2={"fail": True})
    recorder = EventRecorder()
    handler = telemetry.attach("agentcluster.coordination.map_reduce", recorder)
    try:
        out = await map_reduce(cluster.node("n1"), "square", list(range(10)), timeout=2.0)
    finally:
        telemetry.detach(handler)
    assert out == SQUARES
    retried = [(r.event[-1], r.metadata["holder"]) for r in recorder.events()]
    assert retried == [("chunk_retried", "m2")]
    assert seen(cluster, "m2") == []
    assert sorted(seen(cluster, "m1") + seen(cluster, "m3")) == [0, 1, 2]


async def test_a_holder_whose_node_is_killed_midway_still_completes(cluster: Cluster) -> None:
    loop = asyncio.get_running_loop()
    await start_mappers(cluster, m3={"delay": 0.5})
    started = loop.time()
    running = asyncio.create_task(
        map_reduce(cluster.node("n1"), "square", list(range(10)), timeout=1.0)
    )
    await asyncio.sleep(0.1)
    await cluster.kill_node("n3")
    assert await running == SQUARES
    assert loop.time() - started <= 2 * 1.0 + 0.1
    assert sorted(seen(cluster, "m1") + seen(cluster, "m2")) == [0, 1, 2]


async def test_a_chunk_failing_on_every_holder_is_named(cluster: Cluster) -> None:
    await start_mappers(cluster, **{h: {"fail": True} for h in HOLDERS})
    with pytest.raises(ChunkFailed) as info:
        await map_reduce(cluster.node("n1"), "square", list(range(10)), timeout=2.0)
    assert info.value.chunk in (0, 1, 2)
    assert sorted(info.value.tried) == list(HOLDERS)
    assert isinstance(info.value.cause, ActionFailed)
    with pytest.raises(ChunkFailed) as once:
        await map_reduce(cluster.node("n1"), "square", [1], timeout=2.0, attempts=1)
    assert (once.value.chunk, len(once.value.tried)) == (0, 1)


async def test_no_holder_is_no_available_node(cluster: Cluster) -> None:
    with pytest.raises(NoAvailableNode) as info:
        await map_reduce(cluster.node("n1"), "square", [1, 2], timeout=1.0)
    assert info.value.reason == "no_capability"


async def test_gather_all_keeps_order_and_cancels_the_rest_on_a_failure() -> None:
    cancelled: list[str] = []

    async def slow(name: str) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return name

    async def fail() -> str:
        await asyncio.sleep(0.1)
        raise ValueError("broken")

    assert await gather_all([asyncio.sleep(0.2, "a"), asyncio.sleep(0.1, "b")]) == ["a", "b"]
    assert await gather_all([]) == []
    with pytest.raises(ValueError, match="broken"):
        await gather_all([slow("x"), fail(), slow("y")])
    assert sorted(cancelled) == ["x", "y"]
