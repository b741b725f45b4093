"""The loop watchdog names the action that blocks the event loop, while it blocks.

These run on a real loop with a real thread: the blocking action really blocks (a
``time.sleep`` inside an async action, the mistake the watchdog is for)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agentcluster import Action, Agent, LocalNode, Signal
from agentcluster.agent.loop_watchdog import LoopWatchdog, blocking_frame
from tests.agent.conftest import eventually, stays


class Crunch(Action):
    """Computes synchronously inside an async action: the loop stops for 0.6 s."""

    async def run(self, params: Any, ctx: Any) -> Any:
        time.sleep(0.6)  # noqa: ASYNC251 - the blocking call under test
        return "done"


class Patient(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.05)
        return "done"


class Worker(Agent):
    routes = {"work.crunch": Crunch, "work.wait": Patient}


async def test_a_blocking_action_is_named_with_its_agent() -> None:
    found: list[tuple[float, str | None, str]] = []
    async with LocalNode() as node:
        await node.start_agent(Worker, "w1")
        watchdog = LoopWatchdog(
            asyncio.get_running_loop(),
            threshold=0.2,
            interval=0.02,
            report=lambda *args: found.append(args),
        )
        watchdog.start()
        try:
            # Awaiting is not blocking: no action is named.
            for _ in range(3):
                assert await node.call("w1", Signal("work.wait"), timeout=5) == "done"
            await stays(lambda: [f for f in found if f[1] is not None], 0.2)
            assert await node.call("w1", Signal("work.crunch"), timeout=5) == "done"
            await eventually(lambda: any(f[1] is not None for f in found), timeout=2)
        finally:
            watchdog.stop()
    named = [f for f in found if f[1] is not None]
    assert len(named) == 1  # one stall, one report, however long it lasted
    seconds, agent_id, action = named[0]
    assert (agent_id, action) == ("w1", Crunch.name)
    assert 0.2 < seconds < 0.6


def test_without_an_action_on_the_stack_the_code_location_is_named() -> None:
    import sys

    agent_id, where = blocking_frame(sys._getframe())
    assert agent_id is None
    assert where.startswith("test_without_an_action_on_the_stack_the_code_location_is_named (")
    assert blocking_frame(None) == (None, "unknown")
