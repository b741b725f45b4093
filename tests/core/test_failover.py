"""The failover planner: table tests, and properties against a naive oracle."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcluster.core.circuit_breaker import BreakerState
from agentcluster.core.failover import (
    Decision,
    FailoverPlan,
    MarkFailed,
    MarkUnavailable,
    MoveTo,
    StartingSince,
    plan_failover,
)
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.node_view import Health, NodeView
from agentcluster.core.placement import PLACEMENT_STRATEGIES
from agentcluster.core.registry import AgentEntry, AgentMode, AgentStatus
from agentcluster.errors import ConfigurationError

ALIVE, DEAD, LEFT = NodeStatus.ALIVE, NodeStatus.DEAD, NodeStatus.LEFT
PLAIN, CRITICAL, DURABLE = AgentMode.PLAIN, AgentMode.CRITICAL, AgentMode.DURABLE
NOW = 1000.0
SLACK = 1e-9


def node(node_id: str, status: NodeStatus = ALIVE, incarnation: int = 1) -> NodeRecord:
    return NodeRecord(id=node_id, incarnation=incarnation, status=status)


def view(node_id: str, cpu: float = 4.0, reserved: float = 0.0, **fields: Any) -> NodeView:
    return NodeView(id=node_id, capacity={"cpu": cpu}, reserved={"cpu": reserved}, **fields)


def agent(
    agent_id: str,
    on: str = "dead",
    *,
    mode: AgentMode = CRITICAL,
    status: AgentStatus = AgentStatus.RUNNING,
    reason: str | None = None,
    cpu: float = 0.0,
    node_incarnation: int = 1,
    incarnation: int = 1,
    placement: Mapping[str, Any] | None = None,
) -> AgentEntry:
    spec: dict[str, Any] = {"class": "m:C"}
    if cpu:
        spec["resources"] = {"cpu": cpu}
    if placement is not None:
        spec["placement"] = dict(placement)
    return AgentEntry(
        id=agent_id,
        node=on,
        node_incarnation=node_incarnation,
        incarnation=incarnation,
        mode=mode,
        spec=spec,
        status=status,
        reason=reason,
    )


NODES = {"dead": node("dead", DEAD), "gone": node("gone", LEFT), "a": node("a"), "b": node("b")}
VIEWS = (view("a", load=0.5), view("b", load=0.1))


def plan(
    entries: Sequence[AgentEntry],
    nodes: Mapping[str, NodeRecord] = NODES,
    views: Sequence[NodeView] = VIEWS,
    **options: Any,
) -> FailoverPlan:
    options.setdefault("now", NOW)
    options.setdefault("rng", random.Random("failover"))
    return plan_failover([(e, 10 + i) for i, e in enumerate(entries)], nodes, views, **options)


# --- table tests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "reason"),
    [
        ({"x": node("x", DEAD)}, "node_dead"),
        ({"x": node("x", LEFT)}, "node_left"),
        ({"x": node("x", ALIVE, incarnation=2)}, "node_restarted"),
        ({}, "node_dead"),
    ],
)
def test_plain_entries_of_a_gone_node_become_unavailable(
    nodes: dict[str, NodeRecord], reason: str
) -> None:
    result = plan([agent("p", "x", mode=PLAIN)], {**nodes, "a": node("a")}, [view("a")])
    assert result.decisions == (MarkUnavailable("p", 10, reason),)


def test_plain_entries_already_unavailable_are_left() -> None:
    entry = agent("p", mode=PLAIN, status=AgentStatus.UNAVAILABLE, reason="node_dead")
    assert plan([entry]).decisions == ()


@pytest.mark.parametrize("mode", [CRITICAL, DURABLE])
@pytest.mark.parametrize("on", ["dead", "gone"])
def test_persistent_entries_move_to_the_least_loaded_live_node(mode: AgentMode, on: str) -> None:
    nodes = {**NODES, "b": node("b", incarnation=7)}
    result = plan([agent("c", on, mode=mode, incarnation=4, cpu=1)], nodes)
    assert result.decisions == (MoveTo("c", 10, "b", 7, 5, {"cpu": 1.0}),)
    assert result.history == {"c": (NOW,)}


def test_an_entry_under_an_older_incarnation_of_a_live_node_moves() -> None:
    nodes = {"a": node("a", incarnation=3)}
    result = plan([agent("c", "a", node_incarnation=2)], nodes, [view("a")])
    assert result.decisions == (MoveTo("c", 10, "a", 3, 2, {}),)


def test_live_and_failed_entries_are_left_alone() -> None:
    entries = [
        agent("r", "a"),
        agent("m", "a", status=AgentStatus.MOVING),
        agent("u", "a", status=AgentStatus.UNAVAILABLE, reason="draining"),
        agent("s", "a", status=AgentStatus.STARTING),
        agent("f", "dead", status=AgentStatus.FAILED, reason="restore_failed"),
        agent("p", "a", mode=PLAIN, status=AgentStatus.STARTING),
        agent("newer", "a", node_incarnation=2),
    ]
    result = plan(entries)
    assert result.decisions == ()
    assert result.starting == {"s": StartingSince(13, NOW)}


def test_two_moves_never_share_the_last_slot() -> None:
    views = [view("a", cpu=2, reserved=1), view("b", cpu=1, reserved=1, load=0.0)]
    result = plan([agent("x", cpu=1), agent("y", cpu=1)], views=views)
    assert result.decisions == (
        MoveTo("x", 10, "a", 1, 2, {"cpu": 1.0}),
        MarkUnavailable("y", 11, "no_capacity", detail="no_capacity"),
    )


def test_agent_count_spreads_moves_without_resources() -> None:
    views = [view("a"), view("b")]
    result = plan([agent("x"), agent("y"), agent("z")], views=views)
    assert [d.node for d in result.decisions if isinstance(d, MoveTo)] == ["a", "b", "a"]


def test_no_node_at_all_waits_as_no_capacity_with_the_placement_reason() -> None:
    result = plan([agent("c")], {"dead": node("dead", DEAD)}, [])
    assert result.decisions == (MarkUnavailable("c", 10, "no_capacity", detail="no_nodes"),)


def test_waiting_for_capacity_is_planned_again_when_it_appears() -> None:
    waiting = agent("c", status=AgentStatus.UNAVAILABLE, reason="no_capacity", cpu=2)
    full = [view("a", cpu=2, reserved=1)]
    assert plan([waiting], views=full).decisions == ()
    freed = [view("a", cpu=2, reserved=0)]
    assert plan([waiting], views=freed).decisions == (MoveTo("c", 10, "a", 1, 2, {"cpu": 2.0}),)


def test_unavailable_for_a_dead_node_is_moved() -> None:
    entry = agent("c", status=AgentStatus.UNAVAILABLE, reason="node_dead")
    assert plan([entry]).decisions == (MoveTo("c", 10, "b", 1, 2, {}),)


def test_dead_quarantined_unhealthy_and_open_nodes_are_never_targets() -> None:
    nodes = {**NODES, "c": node("c"), "d": node("d"), "e": node("e")}
    views = [
        view("dead", load=0.0),
        view("gone", load=0.0),
        view("a", load=0.0, quarantined=True),
        view("b", load=0.0, health=Health.UNHEALTHY),
        view("c", load=0.0, breaker=BreakerState.OPEN),
        view("d", load=0.9),
        view("ghost", load=0.0),
    ]
    result = plan([agent("x")], nodes, views)
    assert result.decisions == (MoveTo("x", 10, "d", 1, 2, {}),)


def test_the_spec_placement_is_followed() -> None:
    nodes = {**NODES, "c": node("c")}
    views = [
        view("a", labels={"zone": "z1"}),
        view("b", labels={"zone": "z2"}),
        view("c", capabilities=frozenset({"gpu"}), load=0.9),
    ]
    zoned = agent("z", placement={"strategy": "zone", "zone": "z2"})
    gpu = agent("g", placement={"requires": ["gpu"]})
    led = agent("l", placement={"strategy": "leader_only"})
    result = plan([gpu, led, zoned], nodes, views, leader="a")
    assert [d.node for d in result.decisions if isinstance(d, MoveTo)] == ["c", "a", "b"]


@pytest.mark.parametrize(
    "spec",
    [
        {"placement": {"strategy": "nowhere"}},
        {"placement": {"requires": "gpu"}},
        {"placement": {"zone": 3}},
        {"placement": 5},
        {"resources": {"cpu": -1}},
        {"resources": {"cpu": "two"}},
    ],
)
def test_a_spec_that_does_not_parse_marks_failed(spec: dict[str, Any]) -> None:
    entry = replace(agent("c"), spec=spec)
    assert plan([entry]).decisions == (MarkFailed("c", 10, "invalid_spec"),)


def test_a_strategy_name_alone_is_a_placement() -> None:
    entry = replace(agent("c"), spec={"placement": "round_robin"})
    assert plan([entry]).decisions == (MoveTo("c", 10, "a", 1, 2, {}),)


# --- the failover limit --------------------------------------------------------------


def test_the_fourth_failover_within_the_window_marks_failed() -> None:
    history = {"c": (NOW - 599.0, NOW - 300.0, NOW - 1.0)}
    result = plan([agent("c")], history=history)
    assert result.decisions == (MarkFailed("c", 10, "failover_limit", alert=True),)
    assert result.history == history


def test_the_third_failover_is_still_a_move() -> None:
    result = plan([agent("c")], history={"c": (NOW - 10.0, NOW - 1.0)})
    assert isinstance(result.decisions[0], MoveTo)
    assert result.history == {"c": (NOW - 10.0, NOW - 1.0, NOW)}


def test_failovers_older_than_the_window_do_not_count() -> None:
    history = {"c": (NOW - 600.0, NOW - 300.0, NOW - 1.0), "old": (NOW - 700.0,)}
    result = plan([agent("c")], history=history)
    assert isinstance(result.decisions[0], MoveTo)
    assert result.history == {"c": (NOW - 300.0, NOW - 1.0, NOW)}


def test_the_history_may_run_on_its_own_clock_and_rides_with_the_move() -> None:
    """The shell keeps the history in the registry in wall-clock seconds: ``history_now``
    is the present on that clock, and each move carries the history to write with it."""
    wall = 1_700_000_000.0
    history = {"c": (wall - 700.0, wall - 300.0, wall - 1.0)}
    result = plan([agent("c")], history=history, history_now=wall)
    move = result.decisions[0]
    assert isinstance(move, MoveTo)
    assert move.failovers == (wall - 300.0, wall - 1.0, wall)
    assert result.history == {"c": move.failovers}
    limited = plan([agent("c")], history={"c": move.failovers}, history_now=wall + 1.0)
    assert limited.decisions == (MarkFailed("c", 10, "failover_limit", alert=True),)


def test_four_failovers_in_a_row_through_the_planner() -> None:
    history: Mapping[str, Sequence[float]] = {}
    kinds = []
    for step in range(4):
        result = plan([agent("c", incarnation=step + 1)], history=history, now=NOW + step)
        kinds.append(type(result.decisions[0]))
        history = result.history
    assert kinds == [MoveTo, MoveTo, MoveTo, MarkFailed]


# --- the activation timeout ----------------------------------------------------------


def test_a_stuck_start_is_planned_again_exactly_at_the_timeout() -> None:
    stuck = agent("s", "a", status=AgentStatus.STARTING, incarnation=2)
    first = plan([stuck])
    assert first.decisions == ()
    assert first.starting == {"s": StartingSince(10, NOW)}
    assert first.next_deadline == NOW + 10.0
    early = plan([stuck], starting=first.starting, now=NOW + 9.999)
    assert early.decisions == ()
    assert early.starting == first.starting
    due = plan([stuck], starting=first.starting, now=NOW + 10.0)
    assert due.decisions == (MoveTo("s", 10, "b", 1, 3, {}),)
    assert due.history == {"s": (NOW + 10.0,)}
    assert due.next_deadline is None


def test_a_new_revision_restarts_the_count() -> None:
    stuck = agent("s", "a", status=AgentStatus.STARTING)
    first = plan([stuck])
    later = plan_failover(
        [(stuck, 99)], NODES, VIEWS, now=NOW + 10.0, rng=random.Random(0), starting=first.starting
    )
    assert later.decisions == ()
    assert later.starting == {"s": StartingSince(99, NOW + 10.0)}


def test_the_stuck_node_is_avoided_while_another_can_take_it() -> None:
    stuck = agent("s", "b", status=AgentStatus.STARTING)
    timed = {"s": StartingSince(10, NOW - 10.0)}
    assert plan([stuck], starting=timed).decisions == (MoveTo("s", 10, "a", 1, 2, {}),)
    alone = plan([stuck], {"b": node("b")}, [view("b")], starting=timed)
    assert alone.decisions == (MoveTo("s", 10, "b", 1, 2, {}),)


def test_entries_that_stop_starting_leave_the_table() -> None:
    timed = {"s": StartingSince(10, NOW - 5.0), "gone": StartingSince(1, NOW)}
    result = plan([agent("s", "a")], starting=timed)
    assert result.starting == {}


# --- the bound, and arguments --------------------------------------------------------


def test_the_limit_bounds_one_call_and_the_rest_follows() -> None:
    entries = [agent(f"p{i}", mode=PLAIN) for i in range(5)]
    first = plan(entries, limit=2)
    assert [d.agent_id for d in first.decisions] == ["p0", "p1"]
    assert first.remaining == 3
    applied = [
        replace(e, status=AgentStatus.UNAVAILABLE, reason="node_dead") if i < 2 else e
        for i, e in enumerate(entries)
    ]
    second = plan(applied, limit=2)
    assert [d.agent_id for d in second.decisions] == ["p2", "p3"]
    assert second.remaining == 1


def test_waiting_entries_that_still_do_not_fit_do_not_use_the_limit() -> None:
    waiting = [
        agent(f"w{i}", status=AgentStatus.UNAVAILABLE, reason="no_capacity", cpu=9)
        for i in range(3)
    ]
    result = plan([*waiting, agent("z", mode=PLAIN)], limit=1)
    assert result.decisions == (MarkUnavailable("z", 13, "node_dead"),)
    assert result.remaining == 0


@pytest.mark.parametrize(
    "options",
    [
        {"max_failovers": -1},
        {"failover_window": 0.0},
        {"activation_timeout": -1.0},
        {"limit": 0},
    ],
)
def test_bad_settings_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        plan([], **options)


# --- the naive oracle ----------------------------------------------------------------


@dataclass
class Oracle:
    """The documented rules one at a time, with least loaded placement by hand."""

    nodes: Mapping[str, NodeRecord]
    views: dict[str, NodeView]
    now: float
    starting: Mapping[str, StartingSince]
    history: Mapping[str, Sequence[float]]
    limit: int

    def gone(self, entry: AgentEntry) -> bool:
        record = self.nodes.get(entry.node)
        return (
            record is None or record.status != ALIVE or record.incarnation > entry.node_incarnation
        )

    def eligible(self, node_id: str, cpu: float, requires: frozenset[str]) -> bool:
        v = self.views[node_id]
        return (
            self.nodes[node_id].status == ALIVE
            and not v.quarantined
            and v.health != Health.UNHEALTHY
            and v.breaker != BreakerState.OPEN
            and requires <= v.capabilities
            and (cpu <= 0 or v.capacity.get("cpu", 0.0) - v.reserved.get("cpu", 0.0) + SLACK >= cpu)
        )

    def least_loaded(self, cpu: float, requires: frozenset[str], avoid: str | None) -> str | None:
        ids = [i for i in self.views if i in self.nodes and self.eligible(i, cpu, requires)]
        others = [i for i in ids if i != avoid]
        pool = others or ids
        if not pool:
            return None
        return min(pool, key=lambda i: (self.views[i].load, self.views[i].agent_count, i))

    def run(self, entries: Sequence[tuple[AgentEntry, int]]) -> tuple[list[Decision], int]:
        decisions: list[Decision] = []
        todo: list[tuple[AgentEntry, int, str | None]] = []
        for entry, revision in sorted(entries, key=lambda pair: pair[0].id):
            persistent = entry.mode != PLAIN
            if entry.status == AgentStatus.FAILED:
                continue
            if self.gone(entry):
                if persistent or entry.status != AgentStatus.UNAVAILABLE:
                    todo.append((entry, revision, None))
            elif persistent and entry.status == AgentStatus.UNAVAILABLE:
                if entry.reason == "no_capacity":
                    todo.append((entry, revision, None))
            elif persistent and entry.status == AgentStatus.STARTING:
                seen = self.starting.get(entry.id)
                since = seen.first_seen if seen and seen.revision == revision else self.now
                if self.now - since >= 10.0:
                    todo.append((entry, revision, entry.node))
        done = 0
        for entry, revision, avoid in todo:
            if len(decisions) == self.limit:
                break
            done += 1
            if entry.mode == PLAIN:
                record = self.nodes.get(entry.node)
                reason = (
                    "node_left"
                    if record is not None and record.status == LEFT
                    else "node_restarted"
                    if record is not None and record.status == ALIVE
                    else "node_dead"
                )
                decisions.append(MarkUnavailable(entry.id, revision, reason))
                continue
            recent = [t for t in self.history.get(entry.id, ()) if self.now - t < 600.0]
            if len(recent) >= 3:
                decisions.append(MarkFailed(entry.id, revision, "failover_limit"))
                continue
            spec = entry.spec or {}
            cpu = float(spec.get("resources", {}).get("cpu", 0.0))
            requires = frozenset(spec.get("placement", {}).get("requires", ()))
            target = self.least_loaded(cpu, requires, avoid)
            if target is None:
                if not (entry.status == AgentStatus.UNAVAILABLE and entry.reason == "no_capacity"):
                    decisions.append(MarkUnavailable(entry.id, revision, "no_capacity", detail="?"))
                continue
            v = self.views[target]
            self.views[target] = replace(
                v,
                reserved={"cpu": v.reserved.get("cpu", 0.0) + cpu} if cpu else v.reserved,
                agent_count=v.agent_count + 1,
            )
            resources = {"cpu": cpu} if cpu else {}
            decisions.append(
                MoveTo(
                    entry.id,
                    revision,
                    target,
                    self.nodes[target].incarnation,
                    entry.incarnation + 1,
                    resources,
                )
            )
        return decisions, len(todo) - done


NODE_IDS = ("n0", "n1", "n2", "n3", "n4")


@st.composite
def clusters(draw: st.DrawFn) -> dict[str, Any]:
    nodes = {
        i: node(i, draw(st.sampled_from([ALIVE, ALIVE, DEAD, LEFT])), draw(st.integers(1, 3)))
        for i in NODE_IDS
        if draw(st.booleans()) or i == "n0"
    }
    views = [
        NodeView(
            id=i,
            capacity={"cpu": draw(st.sampled_from([0.0, 1.0, 2.0, 4.0]))},
            reserved={"cpu": draw(st.sampled_from([0.0, 1.0, 2.0]))},
            capabilities=frozenset(draw(st.sets(st.sampled_from(["gpu", "ssd"])))),
            load=draw(st.sampled_from([0.0, 0.3, 0.7])),
            agent_count=draw(st.integers(0, 3)),
            quarantined=draw(st.integers(0, 3)) == 0,
            health=draw(st.sampled_from([*Health, Health.HEALTHY, Health.HEALTHY])),
            breaker=draw(st.sampled_from([*BreakerState, BreakerState.CLOSED])),
        )
        for i in NODE_IDS
        if draw(st.integers(0, 4)) > 0
    ]
    entries = []
    starting: dict[str, StartingSince] = {}
    history: dict[str, tuple[float, ...]] = {}
    for k in range(draw(st.integers(0, 12))):
        agent_id = f"a{k:02d}"
        cpu = draw(st.sampled_from([0.0, 0.0, 1.0, 2.0]))
        spec: dict[str, Any] = {"class": "m:C"}
        if cpu:
            spec["resources"] = {"cpu": cpu}
        if draw(st.integers(0, 3)) == 0:
            spec["placement"] = {"requires": [draw(st.sampled_from(["gpu", "ssd"]))]}
        status = draw(st.sampled_from(list(AgentStatus)))
        entry = AgentEntry(
            id=agent_id,
            node=draw(st.sampled_from([*NODE_IDS, "unknown"])),
            node_incarnation=draw(st.integers(1, 3)),
            incarnation=draw(st.integers(1, 5)),
            mode=draw(st.sampled_from(list(AgentMode))),
            spec=spec,
            status=status,
            reason=draw(st.sampled_from([None, "no_capacity", "node_dead"])),
        )
        revision = draw(st.integers(1, 3))
        entries.append((entry, revision))
        if draw(st.booleans()):
            starting[agent_id] = StartingSince(
                draw(st.integers(1, 3)), NOW - draw(st.sampled_from([0.0, 5.0, 10.0, 30.0]))
            )
        history[agent_id] = tuple(
            NOW - draw(st.sampled_from([1.0, 100.0, 599.0, 600.0, 900.0]))
            for _ in range(draw(st.integers(0, 4)))
        )
    return {
        "nodes": nodes,
        "views": views,
        "entries": entries,
        "starting": starting,
        "history": history,
        "limit": draw(st.integers(1, 14)),
    }


def _without_detail(decisions: Sequence[Decision]) -> list[Decision]:
    return [
        replace(d, detail="?") if isinstance(d, MarkUnavailable) and d.detail else d
        for d in decisions
    ]


@settings(max_examples=400, deadline=None)
@given(clusters())
def test_least_loaded_plans_match_the_oracle(cluster: dict[str, Any]) -> None:
    result = plan_failover(
        cluster["entries"],
        cluster["nodes"],
        cluster["views"],
        now=NOW,
        rng=random.Random("oracle"),
        starting=cluster["starting"],
        history=cluster["history"],
        limit=cluster["limit"],
    )
    oracle = Oracle(
        cluster["nodes"],
        {v.id: v for v in cluster["views"]},
        NOW,
        cluster["starting"],
        cluster["history"],
        cluster["limit"],
    )
    decisions, remaining = oracle.run(cluster["entries"])
    assert _without_detail(result.decisions) == decisions
    assert result.remaining == remaining


def _check_invariants(cluster: dict[str, Any], result: FailoverPlan) -> None:
    """What must hold whatever the strategy: replayed decision by decision."""
    nodes: Mapping[str, NodeRecord] = cluster["nodes"]
    by_id = {e.id: (e, r) for e, r in cluster["entries"]}
    free = {v.id: v.free("cpu") for v in cluster["views"]}
    views = {v.id: v for v in cluster["views"]}
    assert len(result.decisions) <= cluster["limit"]
    assert [d.agent_id for d in result.decisions] == sorted({d.agent_id for d in result.decisions})
    for decision in result.decisions:
        entry, revision = by_id[decision.agent_id]
        assert decision.revision == revision
        assert entry.status != AgentStatus.FAILED
        record = nodes.get(entry.node)
        live_current = (
            record is not None
            and record.status == ALIVE
            and record.incarnation <= entry.node_incarnation
        )
        if live_current:
            assert entry.mode != PLAIN
            assert entry.status == AgentStatus.STARTING or (
                entry.status == AgentStatus.UNAVAILABLE and entry.reason == "no_capacity"
            )
        if isinstance(decision, MoveTo):
            assert entry.mode != PLAIN
            target = nodes[decision.node]
            v = views[decision.node]
            assert target.status == ALIVE
            assert decision.node_incarnation == target.incarnation
            assert decision.agent_incarnation == entry.incarnation + 1
            assert not v.quarantined
            assert v.health != Health.UNHEALTHY
            assert v.breaker != BreakerState.OPEN
            cpu = decision.resources.get("cpu", 0.0)
            assert cpu <= free[decision.node] + SLACK or cpu == 0
            free[decision.node] -= cpu
            assert NOW in result.history[decision.agent_id]
    for times in result.history.values():
        assert all(NOW - t < 600.0 for t in times)


@settings(max_examples=300, deadline=None)
@given(clusters(), st.sampled_from(PLACEMENT_STRATEGIES), st.integers(0, 2**32))
def test_every_strategy_keeps_the_invariants_and_is_deterministic(
    cluster: dict[str, Any], strategy: str, seed: int
) -> None:
    entries = [
        (replace(e, spec={**(e.spec or {}), "placement": {"strategy": strategy}}), r)
        for e, r in cluster["entries"]
    ]
    cluster = {**cluster, "entries": entries}

    def once() -> FailoverPlan:
        return plan_failover(
            entries,
            cluster["nodes"],
            cluster["views"],
            now=NOW,
            rng=random.Random(seed),
            starting=cluster["starting"],
            history=cluster["history"],
            limit=cluster["limit"],
            leader="n0",
        )

    result = once()
    _check_invariants(cluster, result)
    assert once() == result
    assert (
        plan_failover(
            list(reversed(entries)),
            cluster["nodes"],
            list(reversed(cluster["views"])),
            now=NOW,
            rng=random.Random(seed),
            starting=cluster["starting"],
            history=cluster["history"],
            limit=cluster["limit"],
            leader="n0",
        )
        == result
    )
