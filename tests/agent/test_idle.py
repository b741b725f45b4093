"""Idle agents give their task back; overrunning threads are counted and alerted."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import BaseModel

from agentcluster import Action, ActionTimeout, Agent, LocalNode, Signal
from agentcluster.errors import ConfigurationError
from agentcluster.telemetry import EventRecorder, Telemetry
from tests.agent.conftest import eventually


class Bump(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        return ctx.state.n + 1, ctx.set(n=ctx.state.n + 1)


class Counter(Agent):
    class State(BaseModel):
        n: int = 0

    routes = {"count.bump": Bump}


async def test_a_quiet_agent_hibernates_and_wakes_on_the_next_signal() -> None:
    async with LocalNode(hibernate_after=0.05) as node:
        await node.start_agent(Counter, "c")
        server = node.server("c")
        assert await node.call("c", Signal("count.bump")) == 1
        assert server._task is not None
        await eventually(lambda: server._task is None, timeout=2.0)
        assert server.status == "idle"
        assert await node.call("c", Signal("count.bump")) == 2  # a new task serves it
        assert node.state("c").n == 2  # type: ignore[attr-defined]


def test_hibernate_after_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="hibernate_after"):
        LocalNode(hibernate_after=0)


async def test_a_thread_running_past_twice_its_timeout_is_counted_and_alerted() -> None:
    release = threading.Event()

    class Stuck(Action):
        timeout = 0.05

        def run(self, params: Any, ctx: Any) -> Any:
            release.wait(5.0)  # ignores ctx.cancelled on purpose
            return "late"

    class Worker(Agent):
        routes = {"work.stuck": Stuck, "count.bump": Bump}

        class State(BaseModel):
            n: int = 0

    telemetry = Telemetry()
    recorder = EventRecorder()
    telemetry.attach(("agentcluster", "action", "thread_overrun"), recorder)
    async with LocalNode(telemetry=telemetry) as node:
        await node.start_agent(Worker, "w")
        with pytest.raises(ActionTimeout):
            await node.call("w", Signal("work.stuck"), timeout=2.0)
        await eventually(lambda: node.overrun_threads == 1, timeout=2.0)
        events = recorder.events()
        assert len(events) == 1
        assert events[0].metadata["agent_id"] == "w"
        release.set()
        # The agent takes its next signal once the thread has returned.
        assert await node.call("w", Signal("count.bump"), timeout=2.0) == 1
