"""Telemetry the runtime emits, and a failing handler that must never break it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, LocalNode, Signal
from agentcluster.errors import AgentNotFound
from agentcluster.telemetry import HANDLER_FAILED, EventRecorder, Telemetry
from tests.agent.conftest import eventually


class Boom(Exception):
    pass


class Add(Action):
    class Params(BaseModel):
        n: int = 1

    async def run(self, params, ctx):
        total = ctx.state.total + params.n
        return total, ctx.set(total=total)


class Explode(Action):
    async def run(self, params, ctx):
        raise Boom("kaboom")


class Counter(Agent):
    class State(BaseModel):
        total: int = 0

    crash_on = (Boom,)
    routes = {"counter.add": Add, "counter.explode": Explode}


def recorded() -> tuple[Telemetry, EventRecorder]:
    t = Telemetry()
    recorder = EventRecorder()
    t.attach("agentcluster", recorder)
    return t, recorder


def names(recorder: EventRecorder, prefix: str = "agentcluster") -> list[str]:
    return [".".join(r.event[1:]) for r in recorder.events(prefix)]


async def test_agent_lifecycle_and_action_events():
    t, recorder = recorded()
    async with LocalNode("n1", telemetry=t) as node:
        await node.start_agent(Counter, "c")
        assert await node.call("c", Signal("counter.add", {"n": 2})) == 2
        await node.stop_agent("c")
    assert names(recorder) == ["agent.started", "action.completed", "agent.stopped"]
    started, completed, stopped = recorder.events()
    assert started.metadata == {"agent_id": "c", "agent": "Counter", "node_id": "n1"}
    assert completed.measurements["attempts"] == 1
    assert completed.metadata == {"agent_id": "c", "action": "add", "node_id": "n1"}
    assert stopped.metadata == {"agent_id": "c", "reason": "shutdown", "node_id": "n1"}


async def test_crash_and_restart_events():
    t, recorder = recorded()
    async with LocalNode(telemetry=t) as node:
        await node.start_agent(Counter, "c")
        recorder.clear()
        await node.cast("c", Signal("counter.explode"))
        await eventually(lambda: node.restarts == 1)
        assert names(recorder, "agentcluster.agent") == ["agent.crashed", "agent.restarted"]
        crashed, restarted = recorder.events("agentcluster.agent")
        assert crashed.metadata["agent_id"] == "c"
        assert crashed.metadata["error_type"] == "Boom"
        assert crashed.metadata["error"] == "kaboom"
        assert restarted.metadata["agent_id"] == "c"


async def test_dead_letters_are_emitted_with_their_reason():
    t, recorder = recorded()
    async with LocalNode(telemetry=t) as node:
        await node.start_agent(Counter, "c")
        ghost = Signal("counter.add")
        with pytest.raises(AgentNotFound):
            await node.cast("ghost", ghost)
        unrouted = Signal("counter.reset")
        await node.cast("c", unrouted)
        await eventually(lambda: len(recorder.events("agentcluster.signal.dead_lettered")) == 2)
        first, second = recorder.events("agentcluster.signal.dead_lettered")
        assert first.measurements == {"count": 1}
        assert {k: first.metadata[k] for k in ("reason", "agent_id", "signal_id")} == {
            "reason": "unknown",
            "agent_id": "ghost",
            "signal_id": ghost.id,
        }
        assert first.metadata["error"]["type"] == "AgentNotFound"
        assert (second.metadata["reason"], second.metadata["signal_type"]) == (
            "no_route",
            "counter.reset",
        )


async def test_a_failing_telemetry_handler_is_detached_and_the_runtime_carries_on():
    t, recorder = recorded()
    calls: list[tuple[str, ...]] = []

    def broken(event, measurements, metadata):
        calls.append(event)
        raise RuntimeError("exporter bug")

    handler_id = t.attach("agentcluster.action", broken)
    async with LocalNode(telemetry=t) as node:
        await node.start_agent(Counter, "c")
        assert await node.call("c", Signal("counter.add", {"n": 5})) == 5
        assert node.state("c").total == 5
        assert handler_id not in [hid for hid, _ in t.handlers()]
        failed = recorder.events(HANDLER_FAILED)
        assert [e.metadata["handler_id"] for e in failed] == [handler_id]
        assert await node.call("c", Signal("counter.add", {"n": 1})) == 6
        assert len(calls) == 1, "a detached handler is not called again"
        assert len(recorder.events("agentcluster.action.completed")) == 2


@pytest.mark.parametrize(
    "prefix", ["agentcluster.agent.crashed", "agentcluster.signal.dead_lettered"]
)
async def test_a_handler_failing_on_crash_or_dead_letter_events_breaks_nothing(prefix):
    t, recorder = recorded()

    def broken(event, measurements, metadata):
        raise RuntimeError("exporter bug")

    t.attach(prefix, broken)
    async with LocalNode(telemetry=t) as node:
        await node.start_agent(Counter, "c")
        await node.cast("c", Signal("counter.explode"))
        await eventually(lambda: node.restarts == 1)
        with pytest.raises(AgentNotFound):
            await node.cast("ghost", Signal("counter.add"))
        assert node.dead_letters.by_reason["unknown"] == 1
        assert await node.call("c", Signal("counter.add")) == 1
        assert len(recorder.events(HANDLER_FAILED)) == 1
