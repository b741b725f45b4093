"""Small agents for trying a cluster out by hand, for the multi-process tests and for the
cluster benchmark: they say which node answered, count what they receive, and misbehave on
request (an action that blocks its event loop, as careless user code does).

Start them on node processes with ``agentcluster node --agents
agentcluster.examples.workers:Echo``; every node can import them because they ship with the
package.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from agentcluster.agent.action import Action
from agentcluster.agent.agent import Agent

__all__ = ["Counter", "Echo"]


class Ping(Action):
    """Answers with the data it got and where it ran."""

    name = "ping"

    class Params(BaseModel):
        model_config = {"extra": "allow"}

    async def run(self, params: BaseModel, ctx: Any) -> dict[str, Any]:
        return {"node": ctx.node.node_id, "agent": ctx.agent_id, "data": params.model_dump()}


class BlockLoop(Action):
    """Blocks the node's event loop for ``seconds``: the liveness tests' careless action."""

    name = "block_loop"

    class Params(BaseModel):
        seconds: float = Field(ge=0, le=5)

    async def run(self, params: Any, ctx: Any) -> dict[str, Any]:
        time.sleep(params.seconds)  # noqa: ASYNC251 - blocking on purpose: the lease must survive it
        return {"node": ctx.node.node_id, "blocked": params.seconds}


class Relay(Action):
    """Calls agent ``to`` with a signal of ``type`` and returns its answer: an agent's own
    ``ctx.call``, which reaches agents on any node."""

    name = "relay"

    class Params(BaseModel):
        to: str
        type: str
        data: dict[str, Any] = Field(default_factory=dict)

    async def run(self, params: Any, ctx: Any) -> dict[str, Any]:
        answer = await ctx.call(params.to, params.type, params.data, timeout=5.0)
        return {"via": ctx.node.node_id, "answer": answer}


class Echo(Agent):
    """Answers ``echo.ping`` with where it ran; ``echo.relay`` calls another agent;
    ``echo.block`` blocks its loop."""

    capabilities = ["echo"]
    routes = {"echo.ping": Ping, "echo.relay": Relay, "echo.block": BlockLoop}


class Add(Action):
    name = "add"

    class Params(BaseModel):
        n: int = 1

    async def run(self, params: Any, ctx: Any) -> tuple[int, Any]:
        total = ctx.state.total + params.n
        return total, ctx.set(total=total, received=ctx.state.received + 1)


class Read(Action):
    name = "read"

    async def run(self, params: Any, ctx: Any) -> dict[str, Any]:
        return {"node": ctx.node.node_id, "total": ctx.state.total, "received": ctx.state.received}


class Counter(Agent):
    """Counts: ``counter.add`` (cast it for throughput), ``counter.read`` to see the sum."""

    capabilities = ["counter"]

    class State(BaseModel):
        total: int = 0
        received: int = 0

    routes = {"counter.add": Add, "counter.read": Read}
