"""Pausing a node: no action starts while paused, queued signals run on resume."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from agentcluster import Action, Agent, LocalNode, Signal
from tests.agent.conftest import eventually, stays


class Add(Action):
    class Params(BaseModel):
        n: int = 1

    async def run(self, params, ctx):
        total = ctx.state.total + params.n
        return total, ctx.set(total=total)


class Counter(Agent):
    class State(BaseModel):
        total: int = 0

    routes = {"counter.add": Add}


async def test_paused_node_runs_no_action_until_resumed() -> None:
    async with LocalNode("n1") as node:
        await node.start_agent(Counter, "c")
        assert await node.call("c", Signal("counter.add", {"n": 1})) == 1
        node.pause()
        assert node.paused
        for _ in range(3):
            await node.cast("c", Signal("counter.add", {"n": 1}))
        call = asyncio.ensure_future(node.call("c", Signal("counter.add", {"n": 10}), timeout=5))
        await stays(lambda: node.state("c").total == 1, 0.1)
        assert not call.done()
        node.resume()
        assert await asyncio.wait_for(call, 5) == 14
        assert not node.paused


async def test_stopping_a_paused_node_does_not_hang() -> None:
    node = LocalNode("n1")
    await node.start_agent(Counter, "c")
    node.pause()
    await node.cast("c", Signal("counter.add", {"n": 1}))
    await asyncio.wait_for(node.stop(), 5)
    await eventually(lambda: node.lookup("c") is None or node.lookup("c").status != "running", 2)
