"""Requests to a capability through ``Cluster``: strategies, circuit breakers per node and
per agent, sticky sessions, load shedding and the load balancer system agent."""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from typing import Any

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, Capability, Signal
from agentcluster.cluster.balancing import BREAKER_CHANGED, REQUEST_SHED, BalancerConfig
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.load_balancer import LOAD_BALANCER
from agentcluster.cluster.system_base import system_agent_id
from agentcluster.core.circuit_breaker import BreakerConfig
from agentcluster.errors import ActionFailed, ConfigurationError, NoAvailableNode, Overloaded
from agentcluster.sim import VirtualClock
from agentcluster.telemetry import EventRecorder, attach, detach
from agentcluster.testing.waiting import eventually


class Answer(Action):
    """Answer with the agent's id, failing while the agent is set to fail."""

    async def run(self, params: Any, ctx: Any) -> Any:
        if ctx.state.failing:
            raise RuntimeError(f"{ctx.agent_id} is broken")
        return {"by": ctx.agent_id}


class Slow(Action):
    """Take a while to answer."""

    class Params(BaseModel):
        seconds: float

    async def run(self, params: Slow.Params, ctx: Any) -> Any:
        await asyncio.sleep(params.seconds)
        return {"by": ctx.agent_id}


class Heal(Action):
    """Stop failing."""

    async def run(self, params: Any, ctx: Any) -> Any:
        return None, ctx.set(failing=False)


class Service(Agent):
    class State(BaseModel):
        failing: bool = False

    routes = {"svc.ask": Answer, "svc.slow": Slow, "svc.heal": Heal}
    capabilities = ["svc"]


def _local(**options: Any) -> Any:
    clock = VirtualClock(asyncio.get_running_loop())
    return Cluster.local(nodes=3, clock=clock, **options)


async def _start_three(cluster: Cluster, failing_on: str | None = None) -> None:
    for node in ("n1", "n2", "n3"):
        await cluster.start_agent(
            Service, f"svc-{node}", node=node, state={"failing": node == failing_on}
        )


async def test_round_robin_spreads_requests_over_every_holder() -> None:
    async with _local() as cluster:
        await _start_three(cluster)
        answered = Tally(
            [(await cluster.call(Capability("svc"), Signal("svc.ask")))["by"] for _ in range(30)]
        )
        assert answered == {"svc-n1": 10, "svc-n2": 10, "svc-n3": 10}


async def test_a_failing_nodes_breaker_opens_and_requests_go_elsewhere() -> None:
    recorder = EventRecorder()
    config = BalancerConfig(breaker=BreakerConfig(failure_threshold=3, cool_down=5.0))
    handler = attach(BREAKER_CHANGED, recorder)
    async with _local(balancing=config) as cluster:
        try:
            await _start_three(cluster, failing_on="n3")
            failures = 0
            answered: Tally[str] = Tally()
            for _ in range(30):
                try:
                    answered[(await cluster.call(Capability("svc"), Signal("svc.ask")))["by"]] += 1
                except ActionFailed:
                    failures += 1
            assert failures == 3  # the threshold, then n3 is passed over
            assert sum(answered.values()) == 27
            assert set(answered) == {"svc-n1", "svc-n2"}
            assert min(answered.values()) >= 13
            balancer = cluster.node("n1").outbound.balancer  # type: ignore[union-attr]
            assert balancer.breakers()["nodes"] == {"n3": "open"}
            opened = [e for e in recorder.events() if e.event[-1] == "open"]
            assert {e.metadata["key"] for e in opened} == {"n3", "svc-n3"}
            assert {e.metadata["kind"] for e in opened} == {"node", "agent"}

            # after the cool-down a trial goes to n3 again; it is healed now, so it closes
            await cluster.call("svc-n3", Signal("svc.heal"))  # by id: not balanced
            await asyncio.sleep(5.0)
            seen = {
                (await cluster.call(Capability("svc"), Signal("svc.ask")))["by"] for _ in range(9)
            }
            assert "svc-n3" in seen
            assert balancer.breakers()["nodes"] == {}
            closed = [e for e in recorder.events() if e.event[-1] == "closed"]
            assert {e.metadata["key"] for e in closed} >= {"n3"}
        finally:
            detach(handler)


async def test_all_breakers_open_is_a_typed_refusal_and_dead_lettered() -> None:
    config = BalancerConfig(breaker=BreakerConfig(failure_threshold=1, cool_down=60.0))
    async with _local(balancing=config) as cluster:
        await cluster.start_agent(Service, "only", node="n2", state={"failing": True})
        with pytest.raises(ActionFailed):
            await cluster.call(Capability("svc"), Signal("svc.ask"))
        with pytest.raises(NoAvailableNode) as refused:
            await cluster.call(Capability("svc"), Signal("svc.ask"))
        assert refused.value.reason == "all_breakers_open"
        letters = cluster.node("n1").local.dead_letters.list(reason="all_breakers_open")
        assert len(letters) == 1


async def test_every_holder_saturated_sheds_at_once_with_overloaded() -> None:
    recorder = EventRecorder()
    config = BalancerConfig(max_in_flight=2)
    handler = attach(REQUEST_SHED, recorder)
    async with _local(balancing=config) as cluster:
        try:
            await cluster.start_agent(Service, "a", node="n2")
            await cluster.start_agent(Service, "b", node="n3")
            slow = [
                asyncio.create_task(
                    cluster.call(Capability("svc"), Signal("svc.slow", {"seconds": 1.0}))
                )
                for _ in range(4)
            ]
            await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(Overloaded):
                await cluster.call(Capability("svc"), Signal("svc.ask"))
            assert loop.time() - began < 0.01  # refused at once, not queued
            assert len(recorder.events()) == 1
            assert {r["by"] for r in await asyncio.gather(*slow)} == {"a", "b"}
            # the slots are free again
            assert (await cluster.call(Capability("svc"), Signal("svc.ask")))["by"] in {"a", "b"}
            balancer = cluster.node("n1").outbound.balancer  # type: ignore[union-attr]
            assert balancer.shed == 1
            assert [d.outcome for d in balancer.history() if d.agent_id is None] == [
                "all_saturated"
            ]
        finally:
            detach(handler)


async def test_sticky_sessions_keep_a_key_on_one_holder_until_it_goes() -> None:
    async with _local() as cluster:
        await _start_three(cluster)
        sessions = {f"user-{i}": set[str]() for i in range(12)}
        for _ in range(3):
            for key, seen in sessions.items():
                reply = await cluster.call(Capability("svc", key=key), Signal("svc.ask"))
                seen.add(reply["by"])
        assert all(len(seen) == 1 for seen in sessions.values())
        owners = {key: next(iter(seen)) for key, seen in sessions.items()}
        assert len(set(owners.values())) > 1  # the keys spread
        await cluster.stop_agent("svc-n2")
        await eventually(lambda: "svc-n2" not in cluster.find_by_capability("svc"), timeout=5)
        for key, owner in owners.items():
            reply = await cluster.call(Capability("svc", key=key), Signal("svc.ask"))
            if owner != "svc-n2":
                assert reply["by"] == owner  # only the departed holder's keys move


@pytest.mark.parametrize(
    "strategy",
    [
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "random",
        "power_of_two_choices",
        "latency_aware",
        "zone",
        "sticky",
        "adaptive",
    ],
)
async def test_every_request_strategy_serves_through_the_cluster(strategy: str) -> None:
    labels = {"n1": {"zone": "a"}, "n2": {"zone": "a"}, "n3": {"zone": "b"}}
    async with _local(balancing=BalancerConfig(strategy=strategy), labels=labels) as cluster:
        await _start_three(cluster)
        answered = Tally(
            [(await cluster.call(Capability("svc"), Signal("svc.ask")))["by"] for _ in range(12)]
        )
        assert sum(answered.values()) == 12
        assert set(answered) <= {"svc-n1", "svc-n2", "svc-n3"}
        if strategy == "zone":
            assert set(answered) <= {"svc-n1", "svc-n2"}  # n1 sends: zone "a" first


async def test_the_load_balancer_agent_shows_and_steers() -> None:
    config = BalancerConfig(surge_strategy="least_connections", max_in_flight=100)
    async with _local(balancing=config) as cluster:
        await _start_three(cluster)
        for _ in range(6):
            await cluster.call(Capability("svc"), Signal("svc.ask"))
        agent = system_agent_id("n1", LOAD_BALANCER)
        status = await cluster.call(agent, Signal("cluster.load_balancer.status"))
        assert status["strategy"] == "round_robin"
        assert status["routed"] >= 6
        assert set(status["nodes"]) == {"n1", "n2", "n3"}
        table = await cluster.call(agent, Signal("cluster.load_balancer.routing_table"))
        assert set(table["svc"]["holders"]) == {"svc-n1", "svc-n2", "svc-n3"}
        assert table["svc"]["holders"]["svc-n2"]["samples"] == 2
        history = await cluster.call(agent, Signal("cluster.load_balancer.history", {"limit": 3}))
        assert len(history) == 3
        assert all(d["capability"] == "svc" and d["outcome"] == "routed" for d in history)

        tightened = await cluster.call(
            agent, Signal("cluster.load_balancer.traffic_surge_detected", {"factor": 0.5})
        )
        assert tightened["max_in_flight"] == 50
        assert tightened["shed_load"] == pytest.approx(0.475)
        assert tightened["strategy"] == "least_connections"  # configured to switch
        table = await cluster.call(agent, Signal("cluster.load_balancer.routing_table"))
        assert table == {}  # lanes rebuilt on the next request
        await cluster.call(Capability("svc"), Signal("svc.ask"))
        table = await cluster.call(agent, Signal("cluster.load_balancer.routing_table"))
        assert table["svc"]["strategy"] == "least_connections"
        normal = await cluster.call(agent, Signal("cluster.load_balancer.traffic_normal"))
        assert normal["strategy"] == "round_robin"
        assert normal["max_in_flight"] == 100


async def test_a_surge_without_a_surge_strategy_keeps_the_strategy() -> None:
    async with _local() as cluster:
        agent = system_agent_id("n2", LOAD_BALANCER)
        tightened = await cluster.call(
            agent, Signal("cluster.load_balancer.traffic_surge_detected")
        )
        assert tightened["strategy"] == "round_robin"
        assert tightened["max_in_flight"] == 512
        with pytest.raises(ConfigurationError, match="unknown request strategy"):
            await cluster.call(
                agent, Signal("cluster.load_balancer.set_strategy", {"strategy": "fastest"})
            )


def test_bad_balancer_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown request strategy"):
        BalancerConfig(strategy="fastest")
    with pytest.raises(ConfigurationError, match="shed_load"):
        BalancerConfig(shed_load=0)
