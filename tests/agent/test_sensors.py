"""Sensors: interval, bus and resource sensors live, die and restart with their agent."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from agentcluster import (
    Action,
    Agent,
    BusSensor,
    IntervalSensor,
    LocalNode,
    ResourceSensor,
    Signal,
)
from agentcluster.errors import ConfigurationError, InvalidRoute
from tests.agent.conftest import eventually, stays

INTERVAL = 0.02


def sensor_tasks(agent_id: str) -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith(f"sensor:{agent_id}:") and not t.done()
    ]


class Count(Action):
    class Params(BaseModel):
        model_config = ConfigDict(extra="allow")

    async def run(self, params: Any, ctx: Any) -> Any:
        return None, ctx.set(count=ctx.state.count + 1, last=params.model_dump())


class Ping(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        return "pong"


class Ticking(Agent):
    class State(BaseModel):
        count: int = 0
        last: dict[str, Any] = {}

    sensors = (IntervalSensor(INTERVAL, "tick.now"),)
    routes = {"tick.now": Count, "tick.ping": Ping}


def count(node: LocalNode, agent_id: str) -> int:
    return node.state(agent_id).count  # type: ignore[attr-defined,no-any-return]


async def test_interval_sensor_emits_into_the_agent_and_stops_with_it() -> None:
    async with LocalNode() as node:
        await node.start_agent(Ticking, "t")
        assert len(sensor_tasks("t")) == 1
        await eventually(lambda: count(node, "t") >= 3)
        server = node.server("t")
        await node.stop_agent("t")
        assert sensor_tasks("t") == []
        await stays(lambda: server.agent.state.count, 3 * INTERVAL)  # type: ignore[attr-defined]


async def test_each_agent_gets_its_own_sensor() -> None:
    async with LocalNode() as node:
        await node.start_agent(Ticking, "a")
        await node.start_agent(Ticking, "b")
        assert len(sensor_tasks("a")) == len(sensor_tasks("b")) == 1
        await eventually(lambda: count(node, "a") >= 2 and count(node, "b") >= 2)
        await node.stop_agent("a")
        assert sensor_tasks("a") == []
        before = count(node, "b")
        await eventually(lambda: count(node, "b") > before)
    template = Ticking._compiled.sensors[0]
    assert isinstance(template, IntervalSensor)
    assert template._task is None


async def test_sense_result_is_the_signal_data_and_none_emits_nothing() -> None:
    readings = iter(range(1000))
    calls: list[int] = []
    received: list[int] = []

    def sense() -> Any:
        n = next(readings)
        calls.append(n)
        return {"n": n} if n % 2 == 0 else None

    class Record(Action):
        class Params(BaseModel):
            n: int

        async def run(self, params: Any, ctx: Any) -> Any:
            received.append(params.n)

    class Sensing(Agent):
        sensors = (IntervalSensor(INTERVAL, "tick.now", sense=sense),)
        routes = {"tick.now": Record}

    async with LocalNode() as node:
        await node.start_agent(Sensing, "s")
        await eventually(lambda: len(received) >= 3)
        assert node.dead_letters.list() == []
    assert received == list(range(0, 2 * len(received), 2))
    assert len(calls) >= 2 * len(received) - 1


async def test_a_failing_sense_is_logged_and_the_sensor_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def sense() -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("sensor glitch")
        return {"ok": True}

    class Glitchy(Ticking):
        sensors = (IntervalSensor(INTERVAL, "tick.now", sense=sense),)

    async with LocalNode() as node:
        await node.start_agent(Glitchy, "g")
        await eventually(lambda: count(node, "g") >= 1)
    assert "sensor glitch" in caplog.text


async def test_async_sense_is_awaited() -> None:
    async def sense() -> Any:
        await asyncio.sleep(0)
        return {"async": True}

    class AsyncSensing(Ticking):
        sensors = (IntervalSensor(INTERVAL, "tick.now", sense=sense),)

    async with LocalNode() as node:
        await node.start_agent(AsyncSensing, "a")
        await eventually(lambda: count(node, "a") >= 1)
        assert node.state("a").last == {"async": True}  # type: ignore[attr-defined]


@pytest.mark.parametrize("interval", [0, -1.0])
def test_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ConfigurationError):
        IntervalSensor(interval)


async def test_bus_sensor_forwards_matching_publications_only() -> None:
    class Listener(Agent):
        class State(BaseModel):
            count: int = 0
            last: dict[str, Any] = {}

        sensors = (BusSensor("orders.*"),)
        routes = {"orders.*": Count, "payments.*": Count, "tick.ping": Ping}

    async with LocalNode() as node:
        await node.start_agent(Listener, "l")
        assert len(node.bus.subscriptions()) == 1
        node.publish(Signal("orders.created", {"order": 1}))
        node.publish(Signal("payments.done", {"payment": 1}))
        node.publish(Signal("orders.created.late", {"order": 2}))
        node.publish(Signal("orders.shipped", {"order": 3}))
        await eventually(lambda: count(node, "l") >= 2)
        assert await node.call("l", Signal("tick.ping")) == "pong"  # the mailbox is drained
        assert count(node, "l") == 2
        assert node.state("l").last == {"order": 3}  # type: ignore[attr-defined]
        server = node.server("l")
        await node.stop_agent("l")
        assert node.bus.subscriptions() == []
        node.publish(Signal("orders.created", {"order": 4}))
        assert server.mailbox_depth == 0
        assert server.agent.state.count == 2  # type: ignore[attr-defined]


async def test_bus_sensor_addresses_forwarded_signals_to_its_agent() -> None:
    seen: list[Signal] = []

    class Record(Action):
        class Params(BaseModel):
            model_config = ConfigDict(extra="allow")

        async def run(self, params: Any, ctx: Any) -> Any:
            seen.append(ctx.signal)

    class Listener(Agent):
        sensors = (BusSensor("orders.**"),)
        routes = {"orders.**": Record}

    async with LocalNode() as node:
        await node.start_agent(Listener, "l")
        original = Signal("orders.created", {"order": 1})
        node.publish(original)
        await eventually(lambda: seen)
    assert seen[0].target == "l"
    assert seen[0].id == original.id
    assert original.target is None


def test_bus_sensor_pattern_is_validated() -> None:
    with pytest.raises(InvalidRoute):
        BusSensor("orders..created")


async def test_resource_sensor_reports_process_and_loop_figures() -> None:
    readings: list[dict[str, float]] = []

    class Reading(Action):
        class Params(BaseModel):
            model_config = ConfigDict(extra="forbid")
            cpu_percent: float
            rss_bytes: float
            loop_lag_ms: float
            mailbox_depth: float

        async def run(self, params: Any, ctx: Any) -> Any:
            readings.append(params.model_dump())

    class Watched(Agent):
        sensors = (ResourceSensor(INTERVAL),)
        routes = {"agentcluster.sensor.resources": Reading}

    async with LocalNode() as node:
        await node.start_agent(Watched, "w")
        await eventually(lambda: len(readings) >= 2)
        assert node.dead_letters.list() == []
    first = readings[0]
    assert set(first) == {"cpu_percent", "rss_bytes", "loop_lag_ms", "mailbox_depth"}
    assert first["cpu_percent"] >= 0
    assert first["rss_bytes"] > 1_000_000
    assert first["loop_lag_ms"] >= 0
    assert first["mailbox_depth"] >= 0


class Restartable(Agent):
    class State(BaseModel):
        count: int = 0
        last: dict[str, Any] = {}

    class Crash(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            raise RuntimeError("crash on purpose")

    sensors = (IntervalSensor(INTERVAL, "tick.now"),)
    routes = {"tick.now": Count, "tick.crash": Crash}
    mounts: ClassVar[list[str]] = []

    def mount(self, ctx: Any) -> None:
        self.mounts.append(self.id)


async def test_sensors_restart_with_the_agent() -> None:
    Restartable.mounts.clear()
    async with LocalNode() as node:
        await node.start_agent(Restartable, "r")
        await eventually(lambda: count(node, "r") >= 1)
        [before] = sensor_tasks("r")
        await node.server("r").restart()
        assert Restartable.mounts == ["r", "r"]
        [after] = sensor_tasks("r")
        assert after is not before
        assert before.done()
        ticks = count(node, "r")
        await eventually(lambda: count(node, "r") > ticks)


async def test_sensors_restart_after_a_crash() -> None:
    class Fragile(Restartable):
        crash_on = (RuntimeError,)

    Restartable.mounts.clear()
    async with LocalNode() as node:
        await node.start_agent(Fragile, "f")
        [before] = sensor_tasks("f")
        await node.cast("f", Signal("tick.crash"))
        await eventually(lambda: len(Restartable.mounts) == 2)
        [after] = sensor_tasks("f")
        assert after is not before
        assert before.done()
        ticks = count(node, "f")
        await eventually(lambda: count(node, "f") > ticks)
