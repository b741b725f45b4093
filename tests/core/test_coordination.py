"""Coordination decisions: who may take a lock or a leadership, barrier rounds, late writes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.coordination import (
    ArrivalKind,
    BarrierRecord,
    ElectionAction,
    ElectionRecord,
    Leader,
    LockAction,
    LockHolder,
    LockRecord,
    LockState,
    arrive,
    barrier_missing,
    barrier_released,
    campaign_record,
    election_action,
    find_arrival,
    holder_gone,
    leader_of,
    live_holder,
    lock_action,
    lock_lost_reason,
    participant_set,
    settle_pending,
)
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.stamps import StampSource, WriteStamp
from agentcluster.errors import CorruptRecord, UsageError

ALIVE, DEAD, LEFT = NodeStatus.ALIVE, NodeStatus.DEAD, NodeStatus.LEFT


def view(**nodes: tuple[int, NodeStatus]) -> dict[str, NodeRecord]:
    """A membership view: node id -> (incarnation, status)."""
    return {n: NodeRecord(n, inc, status) for n, (inc, status) in nodes.items()}


def stamp(node: str = "n1", incarnation: int = 1, nonce: int = 1) -> WriteStamp:
    return WriteStamp(node, incarnation, nonce)


# --- who is gone -----------------------------------------------------------------------

GONE_TABLE = [
    # (view of n2, holder incarnation, complete view, gone?)
    ((2, ALIVE), 2, True, False),  # the holder's own process, alive
    ((2, DEAD), 2, True, True),  # declared dead under the incarnation it held
    ((2, LEFT), 2, True, True),  # left gracefully
    ((3, ALIVE), 2, True, True),  # restarted: the process that held it is gone
    ((3, DEAD), 2, True, True),
    ((1, DEAD), 2, True, False),  # the view is behind the holder: decide nothing
    ((1, ALIVE), 2, True, False),
    (None, 2, True, True),  # unknown to a complete view
    (None, 2, False, False),  # unknown to an incomplete view: maybe not loaded yet
    ((2, DEAD), 2, False, True),  # a dead record is a fact even in a partial view
]


@pytest.mark.parametrize(("seen", "incarnation", "complete", "gone"), GONE_TABLE)
def test_holder_gone(
    seen: tuple[int, NodeStatus] | None, incarnation: int, complete: bool, gone: bool
) -> None:
    members = {} if seen is None else view(n2=seen)
    assert holder_gone("n2", incarnation, members, view_complete=complete) is gone


# --- locks -------------------------------------------------------------------------------


def held(
    owner: str = "o2", node: str = "n2", incarnation: int = 2, previous: int = 0
) -> LockRecord:
    return LockRecord.held(owner, stamp(node, incarnation, 7), previous=previous)


LOCK_TABLE = [
    (None, view(n2=(2, ALIVE)), LockAction.ACQUIRE),
    (LockRecord.free(stamp(), released=4), view(n2=(2, ALIVE)), LockAction.ACQUIRE),
    (held(), view(n2=(2, ALIVE)), LockAction.WAIT),
    (held(), view(n2=(2, DEAD)), LockAction.TAKE_OVER),
    (held(), view(n2=(2, LEFT)), LockAction.TAKE_OVER),
    (held(), view(n2=(3, ALIVE)), LockAction.TAKE_OVER),
    (held(), view(n2=(1, DEAD)), LockAction.WAIT),
    (held(), view(), LockAction.TAKE_OVER),
]


@pytest.mark.parametrize(("record", "members", "action"), LOCK_TABLE)
def test_lock_action(
    record: LockRecord | None, members: dict[str, NodeRecord], action: LockAction
) -> None:
    assert lock_action(record, members) is action


def test_an_unknown_holder_in_an_incomplete_view_is_waited_for() -> None:
    assert lock_action(held(), {}, view_complete=False) is LockAction.WAIT


def test_a_held_record_names_the_stamps_node_and_incarnation() -> None:
    record = LockRecord.held("worker-1", stamp("n3", 5, 9), previous=12)
    assert (record.state, record.owner, record.node, record.incarnation) == (
        LockState.HELD,
        "worker-1",
        "n3",
        5,
    )
    assert record.previous == 12


LOST_TABLE = [
    # (record, revision read, token, view, reason contains / None)
    (held(), 10, 10, view(n2=(2, ALIVE)), None),
    (held(), 10, 10, view(n2=(2, DEAD)), "node 'n2' is dead"),
    (held(), 10, 10, view(n2=(3, ALIVE)), "restarted"),
    (held(), 10, 10, view(), "gone from membership"),
    (held(previous=10), 12, 10, view(n2=(2, ALIVE)), "taken over by 'o2' on 'n2' under token 12"),
    (held(), 12, 10, view(n2=(2, ALIVE)), "now held by 'o2'"),
    (LockRecord.free(stamp(), released=10), 11, 10, view(), "released"),
    (LockRecord.free(stamp(), released=11), 13, 10, view(), "moved on"),
    (None, 0, 10, view(), "gone"),
]


@pytest.mark.parametrize(("record", "revision", "token", "members", "reason"), LOST_TABLE)
def test_lock_lost_reason(
    record: LockRecord | None,
    revision: int,
    token: int,
    members: dict[str, NodeRecord],
    reason: str | None,
) -> None:
    found = lock_lost_reason(record, revision, token, members)
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert reason in found


def test_live_holder() -> None:
    assert live_holder(held(), 10, view(n2=(2, ALIVE))) == LockHolder("o2", "n2", 2, 10)
    assert live_holder(held(), 10, view(n2=(2, DEAD))) is None
    assert live_holder(LockRecord.free(stamp(), released=3), 4, view()) is None
    assert live_holder(None, 0, view()) is None


@pytest.mark.parametrize(
    "record",
    [held(previous=3), LockRecord.free(stamp("n9", 4, 2), released=8)],
)
def test_lock_records_round_trip(record: LockRecord) -> None:
    assert LockRecord.from_bytes(record.to_bytes()) == record


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b"nope",
        b'{"state": "held"}',
        b'{"state": "taken", "stamp": ["n1", 1, 1]}',
        b'{"state": "held", "stamp": ["n1", 1]}',
        b'{"state": "held", "stamp": ["n1", 1, 1], "incarnation": "2"}',
    ],
)
def test_corrupt_lock_records_are_refused(raw: bytes) -> None:
    with pytest.raises(CorruptRecord):
        LockRecord.from_bytes(raw)


# --- writes whose outcome is unknown ------------------------------------------------------


def test_a_pending_write_found_in_the_key_landed() -> None:
    a, b = stamp(nonce=1), stamp(nonce=2)
    settled = settle_pending({a: 0, b: 5}, 6, b)
    assert settled.landed == b
    assert settled.open == {}


def test_pending_writes_survive_only_while_the_key_is_where_they_expect() -> None:
    a, b, c = stamp(nonce=1), stamp(nonce=2), stamp(nonce=3)
    pending = {a: 0, b: 5, c: 6}
    assert settle_pending(pending, 6, stamp("n2")).open == {c: 6}
    assert settle_pending(pending, 0, None).open == {a: 0}
    assert settle_pending(pending, 9, stamp("n2")).open == {}


@given(
    st.dictionaries(st.integers(1, 20), st.integers(0, 8), max_size=6),
    st.integers(0, 8),
    st.one_of(st.none(), st.integers(1, 25)),
)
def test_settle_pending_matches_the_obvious_rule(
    pending_nonces: dict[int, int], revision: int, found_nonce: int | None
) -> None:
    pending = {stamp(nonce=n): r for n, r in pending_nonces.items()}
    found = None if found_nonce is None else stamp(nonce=found_nonce)
    settled = settle_pending(pending, revision, found)
    if found in pending:
        assert (settled.landed, dict(settled.open)) == (found, {})
    else:
        assert settled.landed is None
        # A write can still land only at the revision it was conditioned on.
        assert dict(settled.open) == {s: r for s, r in pending.items() if r == revision}


# --- barriers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("participants", "participant", "problem"),
    [
        ([], "a", "at least one"),
        (["a", "a", "b"], "a", "twice"),
        (["a", ""], "a", "non-empty"),
        (["a", "b"], "c", "not a participant"),
    ],
)
def test_bad_participant_lists_are_refused(
    participants: list[str], participant: str, problem: str
) -> None:
    with pytest.raises(UsageError, match=problem):
        participant_set(participants, participant)


def test_participants_are_kept_sorted() -> None:
    assert participant_set(["c", "a", "b"], "b") == ("a", "b", "c")


def test_a_round_opens_fills_and_the_next_arrival_opens_the_next_generation() -> None:
    group = ("a", "b")
    sa, sb, sa2 = stamp("n1", 1, 1), stamp("n2", 1, 1), stamp("n1", 1, 2)
    first = arrive(None, group, "a", sa)
    assert (first.kind, first.generation) == (ArrivalKind.OPEN, 1)
    assert first.record is not None
    assert first.record.missing == ("b",)
    assert not barrier_released(first.record, 1)
    assert barrier_missing(first.record, 1, group) == ("b",)
    again = arrive(first.record, group, "a", sa2)
    assert (again.kind, again.generation, again.record) == (ArrivalKind.RECORDED, 1, None)
    second = arrive(first.record, group, "b", sb)
    assert second.kind is ArrivalKind.JOIN
    assert second.record is not None
    assert second.record.complete
    assert barrier_released(second.record, 1)
    assert barrier_missing(second.record, 1, group) == ()
    nxt = arrive(second.record, group, "a", sa2)
    assert (nxt.kind, nxt.generation) == (ArrivalKind.OPEN, 2)
    assert nxt.record is not None
    assert nxt.record.previous == (sa, sb)
    # A slow waiter of round 1 that only sees round 2 goes too.
    assert barrier_released(nxt.record, 1)
    assert not barrier_released(nxt.record, 2)


def test_an_open_round_of_other_participants_is_refused_a_complete_one_is_not() -> None:
    open_round = BarrierRecord(3, ("a", "b"), {"a": stamp()})
    with pytest.raises(UsageError, match="open for participants"):
        arrive(open_round, ("a", "c"), "c", stamp("n2"))
    done = BarrierRecord(3, ("a", "b"), {"a": stamp(), "b": stamp("n2")})
    nxt = arrive(done, ("a", "c"), "c", stamp("n3"))
    assert (nxt.kind, nxt.generation) == (ArrivalKind.OPEN, 4)


def test_an_arrival_whose_reply_was_lost_is_found_in_its_round_or_the_one_before() -> None:
    mine, other, later = stamp("n1", 1, 5), stamp("n2", 1, 1), stamp("n2", 1, 2)
    in_open = BarrierRecord(4, ("a", "b"), {"a": mine})
    assert find_arrival(in_open, {mine}) == 4
    moved_on = BarrierRecord(5, ("a", "b"), {"b": later}, previous=(mine, other))
    assert find_arrival(moved_on, {mine}) == 4
    assert find_arrival(moved_on, {stamp("n1", 1, 6)}) is None
    assert find_arrival(None, {mine}) is None
    assert find_arrival(in_open, set()) is None


def test_barrier_missing_without_a_round() -> None:
    assert barrier_missing(None, 1, ("a", "b")) == ("a", "b")


def test_barrier_records_round_trip() -> None:
    record = BarrierRecord(
        2, ("a", "b"), {"a": stamp(), "b": stamp("n2")}, (stamp("n3"),), stamp("n2")
    )
    assert BarrierRecord.from_bytes(record.to_bytes()) == record
    with pytest.raises(CorruptRecord):
        BarrierRecord.from_bytes(b'{"generation": 1, "participants": ["a"], "previous": 3}')
    with pytest.raises(CorruptRecord):
        BarrierRecord.from_bytes(b'{"generation": 1, "participants": ["a"], "arrived": {"a": 1}}')


@given(st.integers(1, 4), st.integers(1, 5), st.randoms(use_true_random=False))
def test_rounds_release_every_waiter_exactly_when_its_round_is_complete(
    size: int, rounds: int, rng: random.Random
) -> None:
    """Arrivals in a random order, round after round, each against the record as last
    written (a store with one writer at a time): the rule agrees with a naive count."""
    group = tuple(f"p{i}" for i in range(size))
    sources = {p: StampSource(p, 1) for p in group}
    record: BarrierRecord | None = None
    for round_no in range(1, rounds + 1):
        order = list(group)
        rng.shuffle(order)
        waiting: list[str] = []
        for participant in order:
            arrival = arrive(record, group, participant, sources[participant].next())
            assert arrival.generation == round_no
            assert arrival.record is not None
            record = arrival.record
            waiting.append(participant)
            done = len(waiting) == size
            assert barrier_released(record, round_no) is done
            assert set(barrier_missing(record, round_no, group)) == set(group) - set(waiting)
        assert record is not None
        assert record.complete
        assert record.generation == round_no


# --- elections ---------------------------------------------------------------------------


def leading(
    member: str = "m2", node: str = "n2", incarnation: int = 2, term: int = 4
) -> ElectionRecord:
    return ElectionRecord(term, stamp(node, incarnation, 3), member, node, incarnation)


ELECTION_TABLE = [
    # (record, me: (member, node, incarnation), view, action)
    (None, ("m1", "n1", 1), view(n1=(1, ALIVE)), ElectionAction.CAMPAIGN),
    (leading(), ("m1", "n1", 1), view(n2=(2, ALIVE)), ElectionAction.FOLLOW),
    (leading(), ("m2", "n2", 2), view(n2=(2, ALIVE)), ElectionAction.LEAD),
    (leading(), ("m3", "n2", 2), view(n2=(2, ALIVE)), ElectionAction.FOLLOW),  # same node
    (leading(), ("m1", "n1", 1), view(n2=(2, DEAD)), ElectionAction.CAMPAIGN),
    (leading(), ("m1", "n1", 1), view(n2=(2, LEFT)), ElectionAction.CAMPAIGN),
    (leading(), ("m1", "n1", 1), view(n2=(3, ALIVE)), ElectionAction.CAMPAIGN),
    (leading(), ("m1", "n1", 1), view(n2=(1, DEAD)), ElectionAction.FOLLOW),  # view behind
    (leading(), ("m2", "n2", 3), view(n2=(2, ALIVE)), ElectionAction.CAMPAIGN),  # we restarted
    (leading().vacated(stamp()), ("m1", "n1", 1), view(), ElectionAction.CAMPAIGN),
    (leading(), ("m1", "n1", 1), view(), ElectionAction.CAMPAIGN),
]


@pytest.mark.parametrize(("record", "me", "members", "action"), ELECTION_TABLE)
def test_election_action(
    record: ElectionRecord | None,
    me: tuple[str, str, int],
    members: dict[str, NodeRecord],
    action: ElectionAction,
) -> None:
    assert election_action(record, *me, members) is action


def test_an_incomplete_view_never_campaigns_over_an_unknown_leader() -> None:
    assert election_action(leading(), "m1", "n1", 1, {}, view_complete=False) is (
        ElectionAction.FOLLOW
    )


def test_terms_strictly_increase_through_campaigns_and_resignations() -> None:
    record: ElectionRecord | None = None
    terms = []
    for i in range(5):
        record = campaign_record(record, f"m{i}", stamp(f"n{i}", 1, i))
        terms.append(record.term)
        if i % 2:
            record = record.vacated(stamp(f"n{i}", 1, 100 + i))
            assert record.vacant
            assert record.term == terms[-1]
    assert terms == [1, 2, 3, 4, 5]


def test_leader_of() -> None:
    assert leader_of(leading(), view(n2=(2, ALIVE))) == Leader("m2", "n2", 2, 4)
    assert leader_of(leading(), view(n2=(2, DEAD))) is None
    assert leader_of(leading().vacated(stamp()), view(n2=(2, ALIVE))) is None
    assert leader_of(None, view()) is None


def test_election_records_round_trip() -> None:
    for record in (leading(), leading().vacated(stamp("n5", 2, 8))):
        assert ElectionRecord.from_bytes(record.to_bytes()) == record
    with pytest.raises(CorruptRecord):
        ElectionRecord.from_bytes(b'{"term": 1}')
    with pytest.raises(CorruptRecord):
        ElectionRecord.from_bytes(b'{"term": "1", "stamp": ["n1", 1, 1]}')
