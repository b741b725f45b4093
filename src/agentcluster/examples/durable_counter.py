"""A counter agent for the fault-tolerance demo, tests and benchmark.

``count.add`` adds ``n`` to the total and, when the state names a ``forward`` agent, emits
one ``count.add`` to it per input: with both counters durable, the two totals equal the
number of distinct sends exactly, whatever node dies in between — the emitted signal is
released from the outbox only after the snapshot holding the addition commits, and is
released again (with the same id) by the agent's next owner if its node died before the
send was acknowledged. ``count.get`` answers the total; ``applied`` in the state counts
the signals applied.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agentcluster.agent.action import Action
from agentcluster.agent.agent import Agent
from agentcluster.agent.context import Context
from agentcluster.agent.directives import Directive

__all__ = ["Add", "Counter", "Get"]


class Add(Action):
    """Add ``n`` to the total; forward one signal when the state says where."""

    name = "add"

    class Params(BaseModel):
        n: int = Field(default=1, ge=0)

    async def run(self, params: Add.Params, ctx: Context) -> Any:
        total = ctx.state.total + params.n
        changes: list[Directive] = [ctx.set(total=total, applied=ctx.state.applied + 1)]
        if ctx.state.forward:
            changes.append(ctx.emit("count.add", {"n": params.n}, target=ctx.state.forward))
        return {"total": total}, changes


class Get(Action):
    name = "get"

    async def run(self, params: Any, ctx: Context) -> Any:
        return ctx.state.total


class Counter(Agent):
    """See the module docstring."""

    class State(BaseModel):
        total: int = 0
        applied: int = 0
        forward: str | None = None

    actions = [Add, Get]
    routes = {"count.add": Add, "count.get": Get}
