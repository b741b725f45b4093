"""Dead letters in the durable stream: stored with their reason, readable after their node
is gone, bounded, and never lost silently when the store refuses."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, Signal
from agentcluster.agent.dead_letters import DeadLetter
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.dead_letters import DeadLetterShipper
from agentcluster.errors import AgentNotFound, AgentUnavailable
from agentcluster.sim import VirtualClock
from agentcluster.testing.waiting import eventually
from agentcluster.transport.interface import PubAck


class Hello(Action):
    async def run(self, params: BaseModel, ctx: object) -> str:
        return "hi"


class Greeter(Agent):
    routes = {"greet.hello": Hello}


async def test_dead_letters_are_stored_with_their_reason_and_outlive_their_node() -> None:
    clock = VirtualClock(asyncio.get_running_loop())
    async with Cluster.local(nodes=3, clock=clock) as cluster:
        await cluster.start_agent(Greeter, "g3", node="n3")
        lost = Signal("greet.hello", {"n": 1})
        with pytest.raises(AgentNotFound):
            await cluster.send("nobody", lost)
        await eventually(lambda: cluster.node("n1").dead_letters.shipped == 1, 5)
        await cluster.kill_node("n3")
        await eventually(lambda: cluster.lookup("g3").status.value == "unavailable", 5)
        refused = Signal("greet.hello", {"n": 2})
        with pytest.raises(AgentUnavailable):
            await cluster.call("g3", refused, timeout=2)
        await eventually(lambda: cluster.node("n1").dead_letters.shipped == 2, 5)
        await cluster.kill_node("n1")
        # n1 is gone: its letters are read back through n2.
        letters = await cluster.dead_letters("n1")
        assert [(d.reason, d.agent_id, d.signal["id"]) for d in letters] == [
            ("unknown", "nobody", lost.id),
            ("unavailable", "g3", refused.id),
        ]
        assert letters[0].node_id == "n1"
        assert letters[0].signal["type"] == "greet.hello"
        assert letters[0].error is not None
        assert letters[0].error["type"] == "AgentNotFound"
        assert await cluster.dead_letters("n2") == []


async def test_letters_the_store_refuses_are_counted_not_dropped_silently() -> None:
    clock = VirtualClock(asyncio.get_running_loop())
    async with Cluster.local(nodes=1, clock=clock) as cluster:
        node = cluster.node("n1")
        assert cluster.hub is not None
        shipper = node.dead_letters
        assert shipper is not None
        cluster.hub.faults.cut_off(["n1"])
        with pytest.raises(AgentNotFound):
            await cluster.cast("nobody", Signal("greet.hello"))
        assert len(node.local.dead_letters) == 1  # kept in memory at once
        await eventually(lambda: shipper.unshipped == 1, 60)
        assert shipper.shipped == 0


class _SwallowingStream:
    """A stream whose publish returns normally when cancelled, as Python 3.11's
    ``asyncio.wait_for`` (under nats-py's request) does when the reply arrives together
    with the cancellation."""

    name = "DEADLETTERS"

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def publish(self, subject: str, data: bytes, **_: Any) -> PubAck:
        self.entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.release.wait()
        return PubAck(self.name, 1)


class _Conn:
    def __init__(self, stream: _SwallowingStream) -> None:
        self._stream = stream

    async def stream(self, config: Any) -> _SwallowingStream:
        return self._stream


async def test_stop_returns_even_when_the_shipper_loses_its_cancellation() -> None:
    stream = _SwallowingStream()
    shipper = DeadLetterShipper(_Conn(stream), "n1", lambda: 0.0)  # type: ignore[arg-type]
    await shipper.start()
    shipper.offer(DeadLetter(Signal("greet.hello"), "timeout", "g1", "n1", 0.0))
    await stream.entered.wait()
    running = shipper._task
    assert running is not None
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(shipper.stop(timeout=0.01), 5)
    assert running.done()
    assert loop.time() - began < 1.0
    assert shipper.shipped == 1
