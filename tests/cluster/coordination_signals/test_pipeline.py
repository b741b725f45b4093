"""Pipelines across agents on a three-node memory cluster, in virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, Capability
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.coordination.pipeline import pipeline
from agentcluster.errors import (
    ActionFailed,
    AgentNotFound,
    AgentUnavailable,
    CallTimeout,
    ConfigurationError,
    StageFailed,
)
from agentcluster.sim import VirtualClock


class Process(Action):
    """Append this stage's tag to the input list."""

    class Params(BaseModel):
        input: list[str]
        stage: int

    async def run(self, params: Process.Params, ctx: Any) -> Any:
        if ctx.state.delay:
            await asyncio.sleep(ctx.state.delay)
        if ctx.state.fail:
            raise ValueError(f"stage {params.stage} refuses")
        return [*params.input, f"{ctx.state.tag}@{params.stage}"], ctx.set(runs=ctx.state.runs + 1)


class Worker(Agent):
    class State(BaseModel):
        tag: str = ""
        delay: float = 0.0
        fail: bool = False
        runs: int = 0

    routes = {"pipeline.process": Process}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with Cluster.local(nodes=3, clock=VirtualClock(asyncio.get_running_loop())) as c:
        yield c


async def start_worker(cluster: Cluster, agent_id: str, node: str, **state: Any) -> None:
    await cluster.start_agent(Worker, agent_id, node=node, state={"tag": agent_id, **state})


def runs(cluster: Cluster, agent_id: str) -> int:
    entry = cluster.lookup(agent_id)
    assert entry is not None
    return cluster.node(entry.node).local.state(agent_id).runs  # type: ignore[attr-defined, no-any-return]


async def test_stages_on_three_nodes_run_in_order(cluster: Cluster) -> None:
    for index, node in enumerate(("n3", "n2", "n1")):
        await start_worker(cluster, f"s{index}", node)
    out = await pipeline(cluster.node("n1"), ["s0", "s1", "s2"], ["in"], timeout=2.0)
    assert out == ["in", "s0@0", "s1@1", "s2@2"]


async def test_a_capability_stage_goes_to_one_holder(cluster: Cluster) -> None:
    await start_worker(cluster, "first", "n2")
    await cluster.start_agent(
        Worker, "upper", node="n3", state={"tag": "upper"}, capabilities=["upper"]
    )
    out = await pipeline(
        cluster.node("n1"), ["first", Capability("upper"), "first"], [], timeout=2.0
    )
    assert out == ["first@0", "upper@1", "first@2"]
    with pytest.raises(StageFailed) as info:
        await pipeline(cluster.node("n1"), ["first", Capability("nobody")], [], timeout=2.0)
    assert (info.value.stage, info.value.target) == (1, "capability:nobody")
    assert isinstance(info.value.cause, AgentNotFound)


async def test_a_failing_stage_is_named_and_stops_the_pipeline(cluster: Cluster) -> None:
    await start_worker(cluster, "s0", "n1")
    await start_worker(cluster, "s1", "n2", fail=True)
    await start_worker(cluster, "s2", "n3")
    with pytest.raises(StageFailed) as info:
        await pipeline(cluster.node("n1"), ["s0", "s1", "s2"], [], timeout=2.0)
    assert (info.value.stage, info.value.target) == (1, "s1")
    assert isinstance(info.value.cause, ActionFailed)
    assert "stage 1 refuses" in str(info.value)
    assert (runs(cluster, "s0"), runs(cluster, "s2")) == (1, 0)
    with pytest.raises(StageFailed) as missing:
        await pipeline(cluster.node("n1"), ["s0", "nowhere"], [], timeout=2.0)
    assert (missing.value.stage, missing.value.target) == (1, "nowhere")


async def test_a_stage_whose_node_is_killed_midway_is_named(cluster: Cluster) -> None:
    loop = asyncio.get_running_loop()
    await start_worker(cluster, "s0", "n1")
    await start_worker(cluster, "s1", "n3", delay=0.5)
    await start_worker(cluster, "s2", "n2")
    started = loop.time()
    running = asyncio.create_task(pipeline(cluster.node("n1"), ["s0", "s1", "s2"], [], timeout=2.0))
    await asyncio.sleep(0.1)
    await cluster.kill_node("n3")
    with pytest.raises(StageFailed) as info:
        await running
    assert loop.time() - started <= 2.0 + 0.1
    assert (info.value.stage, info.value.target) == (1, "s1")
    assert isinstance(info.value.cause, CallTimeout | AgentUnavailable)
    assert runs(cluster, "s2") == 0


async def test_total_timeout_bounds_the_whole_run(cluster: Cluster) -> None:
    loop = asyncio.get_running_loop()
    for index in range(3):
        await start_worker(cluster, f"s{index}", f"n{index + 1}", delay=0.4)
    started = loop.time()
    with pytest.raises(StageFailed) as info:
        await pipeline(cluster.node("n1"), ["s0", "s1", "s2"], [], timeout=1.0, total_timeout=1.0)
    assert loop.time() - started <= 1.0 + 0.01
    assert info.value.stage == 2
    assert isinstance(info.value.cause, CallTimeout)


async def test_malformed_pipelines_are_refused(cluster: Cluster) -> None:
    node = cluster.node("n1")
    with pytest.raises(ConfigurationError):
        await pipeline(node, [], 1, timeout=1.0)
    with pytest.raises(ConfigurationError):
        await pipeline(node, [Capability("x", "all")], 1, timeout=1.0)
    with pytest.raises(ConfigurationError):
        await pipeline(node, ["a"], 1, timeout=1.0, total_timeout=-1)
