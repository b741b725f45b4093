"""The drain planner: which agents leave a quarantined node, and where to."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from agentcluster.core.drain import DrainPlan, Stay, plan_drain
from agentcluster.core.failover import MoveTo
from agentcluster.core.membership import NodeRecord
from agentcluster.core.node_view import NodeView
from agentcluster.core.registry import AgentEntry, AgentMode, AgentStatus
from agentcluster.errors import ConfigurationError
from tests.core.test_failover import CRITICAL, DEAD, DURABLE, PLAIN, agent, node, view

NODES = {"q": node("q", incarnation=2), "a": node("a"), "b": node("b"), "dead": node("dead", DEAD)}
VIEWS = (view("q", quarantined=True), view("a", load=0.5), view("b", load=0.1))


def drain(
    entries: Sequence[AgentEntry],
    views: Sequence[NodeView] = VIEWS,
    nodes: dict[str, NodeRecord] = NODES,
    limit: int = 64,
) -> DrainPlan:
    return plan_drain(
        "q",
        [(entry, i + 1) for i, entry in enumerate(entries)],
        nodes,
        views,
        rng=random.Random("drain"),
        limit=limit,
    )


def on_q(agent_id: str, **fields: object) -> AgentEntry:
    return agent(agent_id, on="q", node_incarnation=2, **fields)  # type: ignore[arg-type]


def test_persistent_agents_move_plain_ones_stay() -> None:
    plan = drain([on_q("c", mode=CRITICAL), on_q("d", mode=DURABLE), on_q("p", mode=PLAIN)])
    assert [(m.agent_id, m.revision, m.agent_incarnation) for m in plan.moves] == [
        ("c", 1, 2),
        ("d", 2, 2),
    ]
    assert all(m.node in {"a", "b"} and m.node_incarnation == 1 for m in plan.moves)
    assert plan.stays == (Stay("p", "plain"),)
    assert plan.remaining == 0


def test_only_running_entries_of_this_node_at_its_incarnation_are_drained() -> None:
    plan = drain(
        [
            on_q("starting", status=AgentStatus.STARTING),
            on_q("failed", status=AgentStatus.FAILED),
            agent("old", on="q", node_incarnation=1),  # an earlier incarnation: failover's
            agent("elsewhere", on="a"),
            on_q("mine"),
        ]
    )
    assert [m.agent_id for m in plan.moves] == ["mine"]
    assert plan.stays == ()


def test_the_drained_node_and_other_quarantined_nodes_are_never_targets() -> None:
    views = (view("q", quarantined=True), view("a", quarantined=True), view("b", load=0.9))
    plan = drain([on_q(f"c{i}") for i in range(5)], views=views)
    assert {m.node for m in plan.moves} == {"b"}


def test_with_no_room_elsewhere_an_agent_stays_with_the_placement_reason() -> None:
    views = (view("q", quarantined=True), view("a", cpu=1.0, reserved=1.0))
    plan = drain([on_q("big", cpu=1.0)], views=views)
    assert plan.moves == ()
    assert plan.stays == (Stay("big", "no_capacity", "no_capacity"),)
    only_here = drain([on_q("c")], views=(view("q", quarantined=True),))
    assert only_here.moves == ()
    assert only_here.stays[0].reason == "no_capacity"


def test_one_pass_never_promises_the_same_slot_twice() -> None:
    views = (view("q", quarantined=True), view("a", cpu=2.0), view("b", cpu=1.0))
    plan = drain([on_q(f"c{i}", cpu=1.0) for i in range(4)], views=views)
    targets = [m.node for m in plan.moves]
    assert sorted(targets) == ["a", "a", "b"]
    assert [s.agent_id for s in plan.stays] == ["c3"]


def test_the_limit_bounds_a_pass_and_counts_the_rest() -> None:
    plan = drain([on_q(f"c{i}") for i in range(5)], limit=2)
    assert [m.agent_id for m in plan.moves] == ["c0", "c1"]
    assert plan.remaining == 3
    assert all(isinstance(m, MoveTo) for m in plan.moves)
    with pytest.raises(ConfigurationError):
        drain([], limit=0)


def test_an_unreadable_spec_stays() -> None:
    bad = on_q("bad", placement={"strategy": "nowhere"})
    assert drain([bad]).stays == (Stay("bad", "invalid_spec"),)
    assert drain([on_q("x", mode=AgentMode.CRITICAL)]).moves[0].agent_id == "x"
