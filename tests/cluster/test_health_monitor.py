"""The health monitor on ``Cluster.local``: synthetic vitals drive an anomaly, an alert, a
quarantine that placement and request balancing honour, probation and release; an
operator's quarantine and release. All in virtual time (``tests/cluster/conftest.py``)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentcluster import Action, Agent, Capability, Signal
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.health_monitor import (
    ALERT_SIGNAL,
    HEALTH_ALERT,
    HEALTH_MONITOR,
    HEALTH_QUARANTINE,
    HealthMonitorConfig,
    configure_health_monitor,
    health_service,
)
from agentcluster.cluster.quarantine import QuarantineBook, quarantine_book
from agentcluster.cluster.system_base import system_agent_id
from agentcluster.core.health import CheckLevel, Escalation, HealthPolicy
from agentcluster.core.signal import Signal as SignalType
from agentcluster.errors import ConfigurationError, UsageError
from agentcluster.sim import VirtualClock
from agentcluster.telemetry import EventRecorder, attach, detach
from agentcluster.testing.waiting import eventually, stays

POLICY = HealthPolicy(
    intervals={CheckLevel.BASIC: 1.0, CheckLevel.COMPREHENSIVE: 1.0, CheckLevel.DEEP: 1.0},
    min_samples=5,
    quarantine_after=2,
    release_after=3,
)


class Answer(Action):
    """Say who answered."""

    async def run(self, params: Any, ctx: Any) -> Any:
        return {"by": ctx.agent_id}


class Service(Agent):
    routes = {"svc.ask": Answer}
    capabilities = ["svc"]


class Worker(Agent):
    capabilities = ["work"]


@dataclass
class Vitals:
    """Synthetic vitals: cpu per node (10 unless set) with a +/-1 wobble, the rest flat."""

    cpu: dict[str, float] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)

    def __call__(self, node_id: str) -> dict[str, float]:
        self.calls[node_id] += 1
        wobble = 1.0 if self.calls[node_id] % 2 else -1.0
        return {
            "cpu_percent": self.cpu.get(node_id, 10.0) + wobble,
            "memory_mb": 512.0,
            "loop_lag_ms": 1.0,
            "mailbox_load": 0.0,
            "error_rate": 0.0,
        }


@dataclass
class World:
    cluster: Cluster
    vitals: Vitals
    escalations: list[Escalation]
    leader: str
    victim: str

    def books(self) -> list[QuarantineBook]:
        found = [quarantine_book(self.cluster.node(n).local.services) for n in self.cluster.nodes]
        assert all(b is not None for b in found)
        return [b for b in found if b is not None]

    def everywhere(self, node: str, held: bool) -> bool:
        return all(b.holds(node) is held for b in self.books())

    async def status(self, on: str | None = None) -> Any:
        target = system_agent_id(on or self.leader, HEALTH_MONITOR)
        return await self.cluster.call(target, Signal("cluster.health_monitor.status"), timeout=5)


@asynccontextmanager
async def monitored(**options: Any) -> AsyncIterator[World]:
    clock = VirtualClock(asyncio.get_running_loop())
    async with Cluster.local(nodes=3, clock=clock) as cluster:
        await eventually(lambda: cluster.leader() is not None, timeout=5)
        leader = cluster.leader()
        assert leader is not None
        vitals = Vitals()
        escalations: list[Escalation] = []
        config = HealthMonitorConfig(
            policy=POLICY,
            vitals=vitals,
            escalate=escalations.append,
            vitals_timeout=0.5,
            ping_timeout=0.5,
            poll=0.5,
            **options,
        )
        for node_id in cluster.nodes:
            configure_health_monitor(cluster.node(node_id), config)
        victim = max(n for n in cluster.nodes if n != leader[0])
        yield World(cluster, vitals, escalations, leader[0], victim)


def baseline_samples(world: World, node: str) -> int:
    book = health_service(world.cluster.node(world.leader).local.services).book
    found = book.baselines(node).get("cpu_percent")
    return 0 if found is None else found.samples


async def test_an_anomaly_alerts_quarantines_is_avoided_and_is_released() -> None:
    alerts = EventRecorder()
    transitions = EventRecorder()
    handlers = [attach(HEALTH_ALERT, alerts), attach(HEALTH_QUARANTINE, transitions)]
    try:
        async with monitored() as world:
            cluster, victim = world.cluster, world.victim
            heard: list[SignalType] = []
            cluster.node(world.leader).local.bus.subscribe(ALERT_SIGNAL, heard.append)
            for node_id in cluster.nodes:
                await cluster.start_agent(Service, f"svc-{node_id}", node=node_id)
            await eventually(lambda: baseline_samples(world, victim) >= 5, timeout=15)
            assert not alerts.events()
            assert world.everywhere(victim, False)

            world.vitals.cpu[victim] = 95.0
            await eventually(lambda: world.everywhere(victim, True), timeout=10)

            # the alert, as telemetry and as a signal on the leader's bus
            hot = [e.metadata for e in alerts.events() if e.metadata["metric"] == "cpu_percent"]
            assert hot
            assert {(a["node"], a["severity"], a["level"]) for a in hot} == {
                (victim, "critical", "comprehensive")
            }
            assert hot[0]["observer"] == world.leader
            assert hot[0]["z"] > 3.5
            assert any(
                s.type == ALERT_SIGNAL and s.data["node"] == victim and s.data["z"] for s in heard
            )
            # the escalation hook heard the critical alerts and the quarantine
            reasons = [(e.node, e.reason.value) for e in world.escalations]
            assert (victim, "critical_alert") in reasons
            assert (victim, "quarantined") in reasons

            # the status reports the quarantine with its evidence
            status = await world.status(on=victim)
            record = status["quarantines"][victim]
            assert record["state"] == "quarantined"
            assert not record["operator"]
            assert {(a["metric"], a["severity"]) for a in record["evidence"]} == {
                ("cpu_percent", "critical")
            }
            assert status["quarantined"] == [victim]
            leader_status = await world.status()
            assert leader_status["leader"] is True
            assert leader_status["baselines"][victim]["cpu_percent"]["samples"] >= 5
            assert leader_status["verdicts"][victim]["comprehensive"] == "unhealthy"
            assert leader_status["verdicts"][world.leader]["deep"] == "healthy"

            # placement and request balancing go elsewhere
            for strategy in ("round_robin", "least_loaded", "random", "power_of_two_choices"):
                picks = {cluster.select_node(strategy=strategy) for _ in range(9)}
                assert victim not in picks, strategy
            placed = [await cluster.start_agent(Worker, f"w{i}") for i in range(6)]
            assert all(entry.node != victim for entry in placed)
            await eventually(
                lambda: cluster.node("n1").outbound.balancer.quarantined is not None,  # type: ignore[union-attr]
                timeout=1,
            )
            answered = Counter(
                [
                    (await cluster.call(Capability("svc"), Signal("svc.ask"), timeout=5))["by"]
                    for _ in range(12)
                ]
            )
            assert f"svc-{victim}" not in answered
            assert sum(answered.values()) == 12

            # healthy again: probation, then release after three healthy windows
            world.vitals.cpu[victim] = 10.0
            await eventually(lambda: world.everywhere(victim, False), timeout=15)
            moves = [
                e.metadata["transition"]
                for e in transitions.events()
                if e.metadata["node"] == victim
            ]
            assert moves == ["quarantined", "probation", "released"]
            released = quarantine_book(cluster.node(world.leader).local.services)
            assert released is not None
            final = released.record(victim)
            assert final is not None
            assert (final.state.value, final.count, final.relapses) == ("released", 1, 0)
            picks = {cluster.select_node(strategy="round_robin") for _ in range(9)}
            assert victim in picks
    finally:
        for handler in handlers:
            detach(handler)


_HANG = asyncio.Event()


class Hang(Action):
    """Wait for ``_HANG``: the agent's mailbox is stuck behind this action meanwhile."""

    async def run(self, params: Any, ctx: Any) -> Any:
        await _HANG.wait()
        return None


class Hanging(Agent):
    routes = {"hang.now": Hang}


async def test_deep_pings_user_agents_and_hung_ones_degrade_their_node() -> None:
    """``deep`` pings a node's agents, user agents included (every agent answers the
    runtime's ping from its mailbox): when the victim's user agents hang, the share that
    answered drops below 1 there and nowhere else."""
    _HANG.clear()
    async with monitored(deep_sample=100) as world:
        cluster = world.cluster
        for i in range(3):
            await cluster.start_agent(Hanging, f"h{i}", node=world.victim)
            await cluster.cast(f"h{i}", Signal("hang.now"))

        async def check() -> Any:
            return await cluster.call(
                system_agent_id(world.leader, HEALTH_MONITOR),
                Signal("cluster.health_monitor.check"),
                timeout=5,
            )

        try:
            result = await check()
            expected = dict.fromkeys(cluster.nodes, "healthy")
            assert result["verdicts"] == {**expected, world.victim: "degraded"}
            status = await world.status()
            assert status["verdicts"][world.victim]["deep"] == "degraded"
            assert status["verdicts"][world.leader]["deep"] == "healthy"
        finally:
            _HANG.set()
        result = await check()
        assert result["verdicts"] == dict.fromkeys(cluster.nodes, "healthy")


async def test_check_now_runs_every_level_on_the_leader_only() -> None:
    async with monitored() as world:
        cluster = world.cluster
        result = await cluster.call(
            system_agent_id(world.leader, HEALTH_MONITOR),
            Signal("cluster.health_monitor.check"),
            timeout=5,
        )
        assert result["checked"] is True
        assert result["levels"] == ["basic", "comprehensive", "deep"]
        assert result["verdicts"] == dict.fromkeys(cluster.nodes, "healthy")
        assert all(world.vitals.calls[n] >= 1 for n in cluster.nodes)
        follower = world.victim
        refused = await cluster.call(
            system_agent_id(follower, HEALTH_MONITOR),
            Signal("cluster.health_monitor.check"),
            timeout=5,
        )
        assert refused == {
            "checked": False,
            "leader": False,
            "leader_monitor": system_agent_id(world.leader, HEALTH_MONITOR),
        }
        vitals = await cluster.call(
            system_agent_id(follower, HEALTH_MONITOR),
            Signal("cluster.health_monitor.vitals"),
            timeout=5,
        )
        assert vitals["node"] == follower
        assert set(vitals["metrics"]) == {
            "cpu_percent",
            "memory_mb",
            "loop_lag_ms",
            "mailbox_load",
            "error_rate",
        }


async def test_an_operator_quarantine_holds_until_released() -> None:
    async with monitored() as world:
        cluster, target = world.cluster, world.victim
        follower_monitor = system_agent_id(target, HEALTH_MONITOR)  # any monitor may write
        record = await cluster.call(
            follower_monitor,
            Signal(
                "cluster.health_monitor.quarantine",
                {"node": target, "reason": "disk swap", "drain": True},
            ),
            timeout=5,
        )
        assert (record["state"], record["operator"], record["hold"], record["drain"]) == (
            "quarantined",
            True,
            True,
            True,
        )
        assert record["evidence"][-1]["message"] == "quarantined by an operator: disk swap"
        await eventually(lambda: world.everywhere(target, True), timeout=5)
        assert (target, "quarantined") in [(e.node, e.reason.value) for e in world.escalations]
        # healthy windows pass, and the operator's quarantine stays
        await eventually(lambda: baseline_samples(world, target) >= 3, timeout=10)
        await stays(lambda: world.everywhere(target, True), duration=5)
        with pytest.raises(UsageError):
            await cluster.call(
                follower_monitor,
                Signal("cluster.health_monitor.quarantine", {"node": "n9", "reason": "x"}),
                timeout=5,
            )

        released = await cluster.call(
            system_agent_id(world.leader, HEALTH_MONITOR),
            Signal("cluster.health_monitor.release", {"node": target, "reason": "swapped"}),
            timeout=5,
        )
        assert released["released"] is True
        assert released["record"]["state"] == "released"
        await eventually(lambda: world.everywhere(target, False), timeout=5)
        again = await cluster.call(
            system_agent_id(world.leader, HEALTH_MONITOR),
            Signal("cluster.health_monitor.release", {"node": target}),
            timeout=5,
        )
        assert again["released"] is False
        status = await world.status()
        assert status["quarantines"][target]["state"] == "released"
        assert status["quarantined"] == []


async def test_a_failing_async_escalation_hook_is_counted_not_raised() -> None:
    called: list[str] = []

    async def broken(escalation: Escalation) -> None:
        called.append(escalation.node)
        await asyncio.sleep(0)
        raise RuntimeError(f"pager down for {escalation.node}")

    async with monitored() as world:
        cluster = world.cluster
        config = HealthMonitorConfig(policy=POLICY, vitals=world.vitals, escalate=broken)
        for node_id in cluster.nodes:
            configure_health_monitor(cluster.node(node_id), config)
        monitor = system_agent_id(world.leader, HEALTH_MONITOR)
        record = await cluster.call(
            monitor,
            Signal("cluster.health_monitor.quarantine", {"node": world.victim}),
            timeout=5,
        )
        assert record["state"] == "quarantined"
        assert called == [world.victim]
        state = cluster.node(world.leader).local.state(monitor)
        assert state.hook_failures == 1  # type: ignore[attr-defined]
        assert state.escalations == 1  # type: ignore[attr-defined]


async def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        HealthMonitorConfig(vitals_timeout=0)
    with pytest.raises(ConfigurationError):
        HealthMonitorConfig(deep_sample=0)
