"""The demos: the 3-node cluster story (the default) and the single-node order pipeline."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest
from typer.testing import CliRunner

from agentcluster.cli.main import app
from agentcluster.examples import cluster_demo, orders
from agentcluster.examples.cluster_demo import (
    DETECTION_LIMIT,
    Attempt,
    ClusterDemoReport,
    Declaration,
    Request,
    judge,
    run_cluster_demo,
)
from agentcluster.examples.orders import (
    DemoReport,
    GatewayCrashed,
    Invariant,
    PaymentGateway,
    run_demo,
)
from agentcluster.examples.placement_demo import judge as placement_judge
from agentcluster.examples.placement_demo import run_placement_demo
from agentcluster.sim import VirtualClock, new_virtual_loop

# --- the cluster story, run for real ----------------------------------------------------


async def test_cluster_demo_kills_the_leader_and_the_survivors_carry_on() -> None:
    report = await run_cluster_demo()

    assert report.ok, report.violations
    assert report.leader_before is not None
    killed = report.killed
    assert killed == report.leader_before[0]
    survivors = report.survivors
    assert len(survivors) == 2
    assert sorted(len(agents) for agents in report.placement.values()) == [2, 2, 2]
    # Declared dead once, by a survivor, within the limit; the others stayed alive.
    assert [(d.node, d.observer in survivors) for d in report.declared] == [(killed, True)]
    assert report.statuses_after == {n: ("dead" if n == killed else "alive") for n in report.nodes}
    assert report.detection is not None
    assert 0 < report.detection < DETECTION_LIMIT
    # Suspected (phi) by every survivor before the lease rule declared it dead.
    assert sorted(report.suspected) == survivors
    assert all(0 < at < report.detection for at in report.suspected.values())
    # A survivor took over the lead under a new term.
    assert report.leader_after is not None
    assert report.leader_after[0] in survivors
    assert report.leader_after[1] > report.leader_before[1]
    # The killed node's agents: marked after the declaration, then refused at once.
    assert report.unavailable_seen is not None
    assert report.unavailable_seen >= report.detection
    after_kill = [a for a in report.by_id if a.after_kill]
    refused = sorted((a.agent, a.kind) for a in after_kill if a.node == killed)
    assert refused == sorted((a, k) for a in report.killed_agents for k in ("call", "send"))
    assert all(a.outcome == "unavailable" for a in after_kill if a.node == killed)
    # Everything on the survivors answered, by id and by capability, before and after.
    assert all(a.outcome == "answered" for a in report.attempts if a.node != killed)
    served_after = [r for r in report.requests if r.after_kill]
    assert served_after
    assert all(r.served and r.served_by in survivors for r in served_after)
    assert report.phases()[2].requests >= 400
    # Each survivor's own count equals what the clients saw answered.
    answered = dict.fromkeys(report.served, 0)
    for attempt in report.attempts:
        if attempt.outcome == "answered" and attempt.agent in answered:
            answered[attempt.agent] += 1
    assert report.served == answered
    assert report.elapsed < 15


def test_cluster_demo_killing_a_follower_keeps_the_leader() -> None:
    loop = new_virtual_loop(seed="cluster-demo")
    try:
        report = loop.run_until_complete(run_cluster_demo(kill="n3", clock=VirtualClock(loop)))
    finally:
        loop.close()

    assert report.ok, report.violations
    assert report.killed == "n3"
    assert report.leader_before == report.leader_after
    assert report.leader_after is not None
    assert report.leader_after[0] != "n3"
    assert report.detection is not None
    assert 0.7 <= report.detection <= 1.1  # F + m after n3's last renewal, in virtual time
    assert report.killed_agents == report.placement["n3"]
    assert report.timeline()[0] == (0.0, "n3 killed", "")


# --- the invariants, on measurements made up to break them ------------------------------

_KINDS: tuple[Literal["call", "send"], ...] = ("call", "send")


def _answered(
    agent: str, node: str, kind: Literal["call", "send"] = "call", *, after_kill: bool
) -> Attempt:
    return Attempt(
        kind,
        agent,
        node,
        "answered",
        0.5 if after_kill else -0.5,
        0.001,
        node if kind == "call" else None,
        after_kill=after_kill,
    )


def _healthy() -> ClusterDemoReport:
    """A run where everything went right: n1 (the leader) killed, q1 lived there."""
    placement = {"n1": ["q1"], "n2": ["q2"], "n3": ["q3"]}
    by_id = [
        _answered(agent, node, kind, after_kill=False)
        for node, (agent,) in placement.items()
        for kind in _KINDS
    ]
    by_id += [
        Attempt("call", "q1", "n1", "unavailable", 1.5, 0.0001, after_kill=True),
        Attempt("send", "q1", "n1", "unavailable", 1.5, 0.0001, after_kill=True),
    ]
    by_id += [
        _answered(agent, node, kind, after_kill=True)
        for node, agent in (("n2", "q2"), ("n3", "q3"))
        for kind in _KINDS
    ]
    before = [
        Request(-0.5, 0.001, (_answered(a, n, after_kill=False),)) for n, (a,) in placement.items()
    ]
    window = [
        Request(
            0.1,
            0.301,
            (
                Attempt("call", "q1", "n1", "timeout", 0.1, 0.3, after_kill=True),
                dataclasses.replace(_answered("q2", "n2", after_kill=True), at=0.4),
            ),
            after_kill=True,
        )
    ]
    after = [
        Request(1.2, 0.001, (_answered(a, n, after_kill=True),), after_kill=True)
        for n, a in (("n2", "q2"), ("n3", "q3"))
    ]
    report = ClusterDemoReport(
        seed=7,
        nodes=("n1", "n2", "n3"),
        placement=placement,
        killed="n1",
        statuses_before={"n1": "alive", "n2": "alive", "n3": "alive"},
        leader_before=("n1", 1),
        leader_after=("n2", 2),
        entry_before="n1",
        entry_after="n2",
        suspected={"n2": 0.16, "n3": 0.16},
        dead_seen={"n2": 1.0, "n3": 1.0},
        declared=[Declaration("n1", "n2", 0.99, 1.0)],
        leader_seen=1.0,
        unavailable_seen=1.01,
        statuses_after={"n1": "dead", "n2": "alive", "n3": "alive"},
        rates_seen={"q1": 1, "q2": 1, "q3": 1},
        by_id=by_id,
        requests=[*before, *window, *after],
        # by id: 2 before and 2 after the kill; by capability: before, window, after.
        served={"q2": 7, "q3": 6},
        clients=1,
        attempt_timeout=0.3,
        elapsed=2.0,
    )
    return dataclasses.replace(report, invariants=judge(report))


def _broken(report: ClusterDemoReport) -> list[str]:
    return [i.name for i in judge(report) if not i.held]


def test_judge_holds_on_a_healthy_run() -> None:
    report = _healthy()

    assert report.ok, report.violations
    assert report.detection == pytest.approx(0.99)
    assert [p.requests for p in report.phases()] == [3, 1, 2]
    assert report.summary().endswith("invariants hold")


def _failed_on(agent: str, node: str) -> Callable[[ClusterDemoReport], ClusterDemoReport]:
    def change(r: ClusterDemoReport) -> ClusterDemoReport:
        lost = Attempt("call", agent, node, "timeout", 1.3, 0.3, after_kill=True)
        served = _answered("q3", "n3", after_kill=True)
        request = Request(1.3, 0.301, (lost, served), after_kill=True)
        return dataclasses.replace(
            r, requests=[*r.requests, request], served={**r.served, "q3": r.served["q3"] + 1}
        )

    return change


@pytest.mark.parametrize(
    ("change", "broken"),
    [
        pytest.param(
            lambda r: dataclasses.replace(
                r,
                declared=[*r.declared, Declaration("n3", "n2", 1.5, 1.0)],
                statuses_after={**r.statuses_after, "n3": "dead"},
            ),
            "only n1 was declared dead",
            id="a survivor declared dead",
        ),
        pytest.param(
            lambda r: dataclasses.replace(
                r, declared=[Declaration("n1", "n2", 3.2, 1.0)], dead_seen={"n2": 3.2, "n3": 3.2}
            ),
            "declared dead within 3 s",
            id="detection slower than 3 s",
        ),
        pytest.param(
            lambda r: dataclasses.replace(
                r, declared=[], dead_seen={}, statuses_after={**r.statuses_after, "n1": "alive"}
            ),
            "declared dead within 3 s",
            id="never declared dead",
        ),
        pytest.param(
            _failed_on("q2", "n2"),
            "no call or send to an agent on a surviving node failed",
            id="a surviving capability holder failed",
        ),
        pytest.param(
            lambda r: dataclasses.replace(
                r,
                by_id=[
                    dataclasses.replace(a, outcome="timeout")
                    if a.after_kill and a.agent == "q1"
                    else a
                    for a in r.by_id
                ],
            ),
            "agents are unavailable",
            id="a dead node's agent timed out instead of being refused",
        ),
        pytest.param(
            lambda r: dataclasses.replace(r, leader_after=("n1", 1)),
            "a surviving node leads",
            id="the dead leader still leads",
        ),
        pytest.param(
            lambda r: dataclasses.replace(r, served={**r.served, "q2": r.served["q2"] + 1}),
            "exactly once",
            id="a survivor ran a signal twice",
        ),
        pytest.param(
            lambda r: dataclasses.replace(r, rates_seen={**r.rates_seen, "q3": 0}),
            "the cast to all holders",
            id="the cast missed a holder",
        ),
    ],
)
def test_judge_breaks(
    change: Callable[[ClusterDemoReport], ClusterDemoReport], broken: str
) -> None:
    names = _broken(change(_healthy()))

    assert len(names) >= 1
    assert any(broken in name for name in names), names


def test_a_failure_on_the_killed_node_breaks_nothing() -> None:
    assert _broken(_failed_on("q1", "n1")(_healthy())) == []


# --- the command line -------------------------------------------------------------------


def test_cli_demo_prints_the_cluster_story(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, str]] = []

    async def fake(seed: int, kill: str) -> ClusterDemoReport:
        calls.append((seed, kill))
        return _healthy()

    monkeypatch.setattr(cluster_demo, "run_cluster_demo", fake)
    result = CliRunner().invoke(app, ["demo"])

    assert result.exit_code == 0, result.output
    assert calls == [(7, "leader")]
    for title in (
        "Nodes",
        "Traffic with every node up",
        "Killing n1 (the leader)",
        'Capability("quotes") requests',
        "Each agent by id after the kill",
        "Invariants",
    ):
        assert title in result.output
    assert "n1 declared dead" in result.output
    assert "failover" in result.output
    [summary] = [
        line for line in result.output.splitlines() if line.startswith("3 nodes, killed n1")
    ]
    assert summary.startswith("3 nodes, killed n1 (the leader): declared dead after 0.99 s")
    assert "invariants hold" in summary
    assert "Failover of the killed node's agents" in result.output
    assert "Invariants (act 3)" in result.output


def test_cli_demo_exits_1_when_an_invariant_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(seed: int, kill: str) -> ClusterDemoReport:
        report = _healthy()
        slow = dataclasses.replace(
            report, declared=[Declaration("n1", "n2", 3.4, 1.0)], dead_seen={"n2": 3.4}
        )
        return dataclasses.replace(slow, invariants=judge(slow))

    monkeypatch.setattr(cluster_demo, "run_cluster_demo", broken)
    result = CliRunner().invoke(app, ["demo", "--kill", "n1"])

    assert result.exit_code == 1, result.output
    assert "BROKEN" in result.output
    assert "declared dead 3.400 s after the kill" in result.output
    assert "invariant(s) broken" in result.output


@pytest.mark.parametrize(
    "args", [["demo", "--orders", "50"], ["demo", "--kill", "n9"]], ids=["orders", "kill"]
)
def test_cli_demo_refuses_options_that_do_not_apply(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)

    assert result.exit_code == 2, result.output


def test_console_script_runs_the_cluster_demo() -> None:
    script = Path(sys.executable).with_name("agentcluster")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "agentcluster.cli.main"]
    proc = subprocess.run(
        [*command, "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(the leader): what the survivors saw" in proc.stdout
    assert "refused, " in proc.stdout
    assert "invariants hold" in proc.stdout


# --- the single-node order pipeline -----------------------------------------------------


async def test_run_demo_keeps_every_invariant() -> None:
    report = await run_demo(orders=300)

    assert report.ok, report.violations
    assert report.crashes > 0
    assert report.restarts == report.crashes
    assert report.recovered_payments == report.crashes
    assert report.placed == report.submitted - report.malformed
    assert report.confirmed + report.rejected_total == report.placed
    assert report.charged_cents == report.revenue_cents
    assert all(left >= 0 for left in report.stock_left.values())
    # Each crashed capture is dead-lettered with reason "crashed" (and then re-run from the
    # restored payment intent); malformed orders are dead-lettered as "validation".
    assert report.dead_letters == {"validation": report.malformed, "crashed": report.crashes}
    assert set(report.rejected) <= {"out_of_stock", "card_declined", "fraud_suspected"}
    assert report.signals > report.placed


async def test_run_demo_depends_only_on_the_seed() -> None:
    def outcome(report: DemoReport) -> dict[str, object]:
        data = dataclasses.asdict(report)
        del data["elapsed"]
        return data

    first, second = await run_demo(orders=200, seed=3), await run_demo(orders=200, seed=3)
    other = await run_demo(orders=200, seed=4)

    assert outcome(first) == outcome(second)
    assert outcome(first) != outcome(other)


def test_gateway_crashes_only_on_the_chosen_requests() -> None:
    gateway = PaymentGateway({2})
    assert gateway.capture("a", "tok_visa", 100)
    with pytest.raises(GatewayCrashed):
        gateway.capture("b", "tok_visa", 200)
    assert gateway.capture("b", "tok_visa", 200)
    assert not gateway.capture("c", "tok_chargeDeclined", 300)
    assert gateway.charged_cents == 300
    assert gateway.crashes == 1


def test_cli_single_node_demo_prints_tables_and_summary() -> None:
    result = CliRunner().invoke(app, ["demo", "--single-node", "--orders", "200", "--seed", "7"])

    assert result.exit_code == 0, result.output
    for title in ("Pipeline", "Orders", "Inventory", "Supervision", "Dead letters"):
        assert title in result.output
    summary = [line for line in result.output.splitlines() if line.startswith("200 orders (")]
    assert len(summary) == 1, result.output
    assert "0 lost" in summary[0]
    assert "invariants hold" in summary[0]


def test_cli_single_node_demo_exits_1_when_an_invariant_breaks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = orders.run_demo

    async def broken(orders: int, seed: int) -> DemoReport:
        report = await real(orders=orders, seed=seed)
        bad = Invariant("stock never negative", False, "negative stock: {'kb-mech': -1}")
        return dataclasses.replace(report, invariants=[*report.invariants, bad])

    monkeypatch.setattr(orders, "run_demo", broken)
    result = CliRunner().invoke(app, ["demo", "--single-node", "--orders", "50"])

    assert result.exit_code == 1, result.output
    assert "BROKEN" in result.output
    assert "1 invariant(s) broken" in result.output


def test_cli_version() -> None:
    result = CliRunner().invoke(app, ["version"])

    assert result.exit_code == 0
    assert result.output.startswith("agentcluster ")


async def test_placement_demo_places_by_resources_and_zone_and_opens_a_breaker() -> None:
    report = await run_placement_demo()
    assert [i.name for i in placement_judge(report) if not i.held] == []
    assert report.placed["trainer-1"] == report.placed["trainer-2"] == "n1"
    assert report.refused_reason == "no_capacity"
    assert report.node_breakers == {"n3": "open"}
    assert report.resources["nodes"]["n1"]["reserved"]["gpu"] == 2.0
    # a broken measurement must break an invariant
    broken = replace(report, reduced={**report.reduced, "agents": 0})
    assert not broken.ok
