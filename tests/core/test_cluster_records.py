"""Node records, registry entries, the leader rule and write stamps: pure, table-driven."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.leader import LeaderAction, LeaderRecord, leader_action
from agentcluster.core.membership import NodeRecord, NodeStatus, joined, renewed
from agentcluster.core.registry import (
    AgentEntry,
    AgentMode,
    AgentStatus,
    RegistryIndex,
    may_take_over,
)
from agentcluster.core.stamps import Resolution, StampSource, WriteStamp, resolve_timed_out_write
from agentcluster.errors import CorruptRecord

# --- stamps ---------------------------------------------------------------------------


def test_stamps_of_one_incarnation_are_unique_and_carry_it() -> None:
    source = StampSource("n1", 3)
    stamps = [source.next() for _ in range(100)]
    assert len(set(stamps)) == 100
    assert {(s.node, s.incarnation) for s in stamps} == {("n1", 3)}
    assert StampSource("n1", 4).next() not in stamps


def test_a_timed_out_write_is_resolved_by_its_stamp() -> None:
    mine = WriteStamp("n1", 2, 7)
    assert resolve_timed_out_write(mine, mine) is Resolution.LANDED
    assert resolve_timed_out_write(WriteStamp("n1", 2, 6), mine) is Resolution.REPEAT
    assert resolve_timed_out_write(WriteStamp("n2", 2, 7), mine) is Resolution.REPEAT
    assert resolve_timed_out_write(None, mine) is Resolution.REPEAT


@pytest.mark.parametrize("raw", [None, [], ["n", 1], ["n", "1", 2], [1, 2, 3], "n:1:2"])
def test_malformed_stamps_are_refused(raw: object) -> None:
    with pytest.raises(CorruptRecord):
        WriteStamp.from_json(raw)


# --- node records ---------------------------------------------------------------------


def _node(node_id: str = "n1", incarnation: int = 1, **kw: object) -> NodeRecord:
    return NodeRecord(node_id, incarnation, **kw)  # type: ignore[arg-type]


def test_a_node_joins_at_incarnation_plus_one_whatever_the_old_record_said() -> None:
    first = joined(None, "n1", stamp=WriteStamp("n1", 1, 1), started_at=10.0)
    assert (first.incarnation, first.status) == (1, NodeStatus.ALIVE)
    dead = first.declared_dead(WriteStamp("n2", 1, 1))
    again = joined(dead, "n1", stamp=WriteStamp("n1", 2, 1), started_at=20.0, labels={"zone": "a"})
    assert (again.incarnation, again.status, again.zone) == (2, NodeStatus.ALIVE, "a")
    with pytest.raises(ValueError):
        joined(again, "n1", stamp=WriteStamp("n1", 2, 2), started_at=30.0)


def test_only_an_alive_node_can_be_declared_dead() -> None:
    record = _node()
    dead = record.declared_dead(WriteStamp("n2", 1, 1))
    assert dead.status is NodeStatus.DEAD
    with pytest.raises(ValueError):
        dead.declared_dead(WriteStamp("n3", 1, 1))
    with pytest.raises(ValueError):
        record.leaving(WriteStamp("n1", 1, 2)).declared_dead(WriteStamp("n2", 1, 2))


def test_a_renewal_always_changes_the_record() -> None:
    record = _node()
    once = renewed(record, WriteStamp("n1", 1, 2), agent_count=3, load=0.5)
    assert once.renewals == record.renewals + 1
    assert once.to_bytes() != record.to_bytes()
    assert (once.agent_count, once.load) == (3, 0.5)


_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


@given(
    st.builds(
        NodeRecord,
        id=_names,
        incarnation=st.integers(1, 2**40),
        status=st.sampled_from(NodeStatus),
        labels=st.dictionaries(_names, _names, max_size=3),
        capabilities=st.lists(_names, max_size=3).map(tuple),
        capacity=st.dictionaries(_names, st.floats(0, 1e6), max_size=3),
        agent_count=st.integers(0, 10**6),
        load=st.floats(0, 100),
        started_at=st.floats(0, 2e9),
        version=_names,
        renewals=st.integers(0, 2**40),
        stamp=st.none() | st.builds(WriteStamp, _names, st.integers(1, 99), st.integers(1, 99)),
    )
)
def test_node_records_round_trip(record: NodeRecord) -> None:
    assert NodeRecord.from_bytes(record.to_bytes()) == record


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"id": "n1", "status": "alive"}', "'incarnation' is missing"),
        (b'{"id": "n1", "incarnation": "1", "status": "alive"}', "'incarnation' should be"),
        (b'{"id": "n1", "incarnation": 1, "status": "zombie"}', "unknown status"),
        (b'{"id": "n1", "incarnation": 1, "status": "alive", "labels": {"a": 1}}', "'labels'"),
    ],
)
def test_corrupt_node_records_name_what_is_wrong(data: bytes, problem: str) -> None:
    with pytest.raises(CorruptRecord) as info:
        NodeRecord.from_bytes(data)
    assert problem in str(info.value)
    assert info.value.kind == "node"


# --- registry -------------------------------------------------------------------------


def _entry(
    agent_id: str, node: str = "n1", node_inc: int = 1, caps: tuple[str, ...] = ()
) -> AgentEntry:
    return AgentEntry(agent_id, node, node_inc, capabilities=caps)


def test_agent_entries_round_trip_with_their_spec() -> None:
    entry = AgentEntry(
        "inv-1",
        "n2",
        4,
        incarnation=3,
        mode=AgentMode.DURABLE,
        capabilities=("inventory",),
        metadata={"team": "ops"},
        spec={"class": "shop.agents:Inventory", "params": {"size": 3}},
        status=AgentStatus.STARTING,
        stamp=WriteStamp("n1", 2, 9),
        failovers=(1_700_000_000.5, 1_700_000_100.0),
    )
    assert AgentEntry.from_bytes(entry.to_bytes()) == entry
    # Entries written before failovers were recorded read as having none.
    old = b'{"id": "a", "node": "n1", "node_incarnation": 1, "status": "running"}'
    assert AgentEntry.from_bytes(old).failovers == ()
    with pytest.raises(CorruptRecord):
        AgentEntry.from_bytes(old[:-1] + b', "failovers": ["soon"]}')
    marked = entry.unavailable("node_dead", WriteStamp("n3", 1, 1))
    assert (marked.status, marked.reason, marked.spec) == (
        AgentStatus.UNAVAILABLE,
        "node_dead",
        entry.spec,
    )
    with pytest.raises(CorruptRecord):
        AgentEntry.from_bytes(b'{"id": "a", "node": "n1", "node_incarnation": 1, "status": "?"}')


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ({"n1": NodeRecord("n1", 1)}, False),
        ({"n1": NodeRecord("n1", 2)}, True),
        ({"n1": NodeRecord("n1", 1, status=NodeStatus.DEAD)}, True),
        ({"n1": NodeRecord("n1", 1, status=NodeStatus.LEFT)}, True),
        ({}, True),
    ],
)
def test_takeover_only_of_entries_without_a_live_placement(
    nodes: dict[str, NodeRecord], expected: bool
) -> None:
    assert may_take_over(_entry("a", "n1", 1), nodes) is expected


def test_index_answers_by_id_capability_and_node() -> None:
    index = RegistryIndex()
    index.apply(_entry("a", "n1", caps=("inv", "pay")))
    index.apply(_entry("b", "n2", caps=("inv",)))
    index.apply(_entry("c", "n2"))
    assert index.lookup("a") is not None
    assert index.lookup("zz") is None
    assert index.find_by_capability("inv") == ("a", "b")
    assert index.find_by_capability("nothing") == ()
    assert index.by_node() == {"n1": ["a"], "n2": ["b", "c"]}
    index.apply(_entry("a", "n3", caps=("pay",)))  # moved, lost a capability
    assert index.find_by_capability("inv") == ("b",)
    assert index.on_node("n1") == ()
    assert index.on_node("n3") == ("a",)
    index.remove("b")
    assert index.find_by_capability("inv") == ()
    assert len(index) == 2


@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcde"),
            st.none() | st.tuples(st.sampled_from(["n1", "n2"]), st.sets(st.sampled_from("xyz"))),
        ),
        max_size=40,
    )
)
def test_index_agrees_with_a_naive_scan(ops: list[tuple[str, object]]) -> None:
    index = RegistryIndex()
    truth: dict[str, AgentEntry] = {}
    for agent_id, change in ops:
        if change is None:
            index.remove(agent_id)
            truth.pop(agent_id, None)
        else:
            node, caps = change  # type: ignore[misc]
            entry = _entry(agent_id, node, caps=tuple(sorted(caps)))
            index.apply(entry)
            truth[agent_id] = entry
    for cap in "xyz":
        assert set(index.find_by_capability(cap)) == {
            a for a, e in truth.items() if cap in e.capabilities
        }
    for node in ("n1", "n2"):
        assert set(index.on_node(node)) == {a for a, e in truth.items() if e.node == node}
    assert {e.id for e in index} == set(truth)


# --- leader ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "me", "nodes", "expected"),
    [
        (None, ("n1", 1), {}, LeaderAction.CAMPAIGN),
        (LeaderRecord("n1", 1, 5), ("n1", 1), {}, LeaderAction.LEAD),
        (LeaderRecord("n1", 1, 5), ("n1", 2), {}, LeaderAction.CAMPAIGN),
        (LeaderRecord("n2", 1, 5), ("n1", 1), {"n2": NodeRecord("n2", 1)}, LeaderAction.FOLLOW),
        (
            LeaderRecord("n2", 1, 5),
            ("n1", 1),
            {"n2": NodeRecord("n2", 1, status=NodeStatus.DEAD)},
            LeaderAction.CAMPAIGN,
        ),
        (LeaderRecord("n2", 1, 5), ("n1", 1), {"n2": NodeRecord("n2", 2)}, LeaderAction.CAMPAIGN),
        (LeaderRecord("n2", 1, 5), ("n1", 1), {}, LeaderAction.CAMPAIGN),
    ],
)
def test_leader_rule(
    record: LeaderRecord | None,
    me: tuple[str, int],
    nodes: dict[str, NodeRecord],
    expected: LeaderAction,
) -> None:
    assert leader_action(record, me[0], me[1], nodes) is expected


def test_a_successor_takes_the_next_term() -> None:
    record = LeaderRecord("n1", 1, 5, WriteStamp("n1", 1, 1))
    nxt = record.successor("n2", 3, WriteStamp("n2", 3, 4))
    assert (nxt.node, nxt.incarnation, nxt.term) == ("n2", 3, 6)
    assert LeaderRecord.from_bytes(nxt.to_bytes()) == nxt
