"""A durable agent's inbox position: compaction, replay decisions, the gap bound, the record
format, and properties against a plain set-and-dict oracle."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.inbox_position import (
    MAX_GAP,
    DeadLetter,
    InboxGapTooLarge,
    InboxPosition,
    Run,
    Skip,
    replay_plan,
)
from agentcluster.errors import CorruptRecord


def position(floor: int = 0, applied: set[int] | None = None, **attempts: int) -> InboxPosition:
    return InboxPosition(
        floor,
        frozenset(applied or ()),
        {int(name.removeprefix("s")): count for name, count in attempts.items()},
    )


# --- rules, one table each ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "seq", "floor", "applied"),
    [
        (position(), 1, 1, set()),
        (position(), 3, 0, {3}),
        (position(0, {2, 3, 5}), 1, 3, {5}),
        (position(0, {2, 3, 5, 6}), 4, 0, {2, 3, 4, 5, 6}),
        (position(4, {6}), 5, 6, set()),
        (position(4, {6}), 9, 4, {6, 9}),
        (position(4), 2, 4, set()),
        (position(4, {6}), 6, 4, {6}),
    ],
    ids=[
        "first",
        "above-a-gap",
        "fills-the-gap",
        "joins-two-runs-above-a-gap",
        "next-after-floor",
        "another-gap",
        "below-floor-again",
        "applied-again",
    ],
)
def test_marking_applied_compacts_the_floor(
    start: InboxPosition, seq: int, floor: int, applied: set[int]
) -> None:
    marked = start.mark_applied(seq)
    assert (marked.floor, set(marked.applied)) == (floor, applied)
    assert marked.is_applied(seq)


def test_marking_applied_drops_the_attempts_of_every_done_sequence() -> None:
    start = position(0, {3}, s1=2, s2=1, s4=3)
    assert start.mark_applied(4).attempts == {1: 2, 2: 1}
    done = start.mark_applied(2).mark_applied(1)
    assert done.floor == 3
    assert done.attempts == {4: 3}


def test_marking_applied_again_returns_the_same_value() -> None:
    start = position(2, {5})
    assert start.mark_applied(1) is start
    assert start.mark_applied(5) is start


@pytest.mark.parametrize(
    ("start", "seq", "expected"),
    [
        (position(), 1, {1: 1}),
        (position(s1=1), 1, {1: 2}),
        (position(0, {2}, s1=1), 3, {1: 1, 3: 1}),
        (position(3), 2, {}),
        (position(3, {5}), 5, {}),
    ],
    ids=["first", "again", "another", "below-floor", "applied"],
)
def test_an_attempt_is_counted_only_for_sequences_not_done(
    start: InboxPosition, seq: int, expected: dict[int, int]
) -> None:
    assert start.attempt(seq).attempts == expected


@pytest.mark.parametrize(
    ("start", "seq", "max_attempts", "decision"),
    [
        (position(), 1, 3, Run(1, 1)),
        (position(s1=2), 1, 3, Run(1, 3)),
        (position(s1=3), 1, 3, DeadLetter(1, 3)),
        (position(s1=5), 1, 3, DeadLetter(1, 5)),
        (position(s1=1), 1, 1, DeadLetter(1, 1)),
        (position(4), 4, 3, Skip(4)),
        (position(4, {7}, s6=9), 7, 3, Skip(7)),
    ],
    ids=["fresh", "under-limit", "at-limit", "over-limit", "limit-one", "below-floor", "applied"],
)
def test_replay_decisions(
    start: InboxPosition, seq: int, max_attempts: int, decision: object
) -> None:
    assert start.replay_decision(seq, max_attempts) == decision


def test_advancing_the_floor_counts_every_sequence_up_to_it_as_done() -> None:
    start = position(2, {6, 7, 10}, s4=1, s9=2)
    advanced = start.advance_floor_to(5)
    assert (advanced.floor, set(advanced.applied), dict(advanced.attempts)) == (7, {10}, {9: 2})
    assert start.advance_floor_to(1) is start
    assert start.advance_floor_to(2) is start
    assert position().advance_floor_to(0) == position()


def test_purge_below_is_the_first_sequence_not_known_done() -> None:
    assert position().purge_below() == 1
    assert position(41, {43}).purge_below() == 42
    assert position(0, {1, 2}).purge_below() == 3


def test_construction_normalises() -> None:
    built = InboxPosition(1, frozenset({1, 2, 3, 5}), {2: 1, 4: 2, 5: 1})
    assert built == InboxPosition(3, frozenset({5}), {4: 2})
    assert built.attempts == {4: 2}


@pytest.mark.parametrize(
    ("floor", "applied", "attempts"),
    [
        (-1, frozenset(), {}),
        (0, frozenset({0}), {}),
        (0, frozenset(), {0: 1}),
        (0, frozenset(), {3: 0}),
        (True, frozenset(), {}),
    ],
)
def test_construction_refuses_invalid_values(
    floor: Any, applied: frozenset[int], attempts: dict[int, int]
) -> None:
    with pytest.raises(ValueError):
        InboxPosition(floor, applied, attempts)


@pytest.mark.parametrize("bad", [0, -3, True])
def test_methods_refuse_invalid_sequences(bad: Any) -> None:
    with pytest.raises(ValueError):
        position().mark_applied(bad)
    with pytest.raises(ValueError):
        position().attempt(bad)
    with pytest.raises(ValueError):
        position().replay_decision(bad, 3)


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        position().replay_decision(1, 0)
    with pytest.raises(ValueError):
        replay_plan(position(), [1], 0)


def test_the_value_is_immutable() -> None:
    value = position(s2=1)
    with pytest.raises(AttributeError):
        value.floor = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        value.attempts[2] = 5  # type: ignore[index]


# --- the gap bound ------------------------------------------------------------------------


def test_too_many_applied_above_a_stuck_sequence_is_refused() -> None:
    full = InboxPosition(0, frozenset(range(2, 5)))
    with pytest.raises(InboxGapTooLarge) as caught:
        full.mark_applied(9, max_gap=3)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.floor, error.first_pending, error.waiting, error.max_gap) == (0, 1, 4, 3)
    assert "sequence 1 is stuck" in str(error)
    # nothing changed, and settling the stuck sequence always succeeds
    assert full.applied == frozenset({2, 3, 4})
    settled = full.mark_applied(1, max_gap=3)
    assert (settled.floor, settled.applied) == (4, frozenset())
    assert full.advance_floor_to(1).floor == 4


def test_the_gap_bound_allows_exactly_max_gap() -> None:
    value = InboxPosition(0, frozenset(range(2, MAX_GAP + 1)))
    assert len(value.mark_applied(MAX_GAP + 5).applied) == MAX_GAP
    with pytest.raises(InboxGapTooLarge):
        value.mark_applied(MAX_GAP + 5).mark_applied(MAX_GAP + 6)


# --- the record ---------------------------------------------------------------------------


def test_the_record_is_compact_and_sorted() -> None:
    value = position(3, {9, 5, 7}, s8=2, s6=1)
    assert value.to_json() == {"floor": 3, "applied": [5, 7, 9], "attempts": [[6, 1], [8, 2]]}
    assert InboxPosition.from_json(orjson.loads(orjson.dumps(value.to_json()))) == value


def test_a_record_without_applied_or_attempts_reads_as_empty() -> None:
    assert InboxPosition.from_json({"floor": 7}) == position(7)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ([1, 2], "expected an object"),
        ({}, "'floor' is missing"),
        ({"floor": -1}, "'floor' should be"),
        ({"floor": "3"}, "'floor' should be"),
        ({"floor": False}, "'floor' should be"),
        ({"floor": 0, "applied": {"3": 1}}, "'applied' should be"),
        ({"floor": 0, "applied": [2, "3"]}, "'applied' should be"),
        ({"floor": 0, "applied": [0]}, "'applied' should be"),
        ({"floor": 0, "applied": [True]}, "'applied' should be"),
        ({"floor": 0, "attempts": {"3": 1}}, "'attempts' should be"),
        ({"floor": 0, "attempts": [[3]]}, "an attempt should be"),
        ({"floor": 0, "attempts": [[3, 1, 1]]}, "an attempt should be"),
        ({"floor": 0, "attempts": [[3, 0]]}, "an attempt should be"),
        ({"floor": 0, "attempts": [[0, 1]]}, "an attempt should be"),
        ({"floor": 0, "attempts": [[3, 1.5]]}, "an attempt should be"),
        ({"floor": 0, "attempts": [(3, 1)]}, "an attempt should be"),
        ({"floor": 0, "attempts": [[3, 1], [3, 2]]}, "two attempt counts"),
    ],
)
def test_malformed_records_are_corrupt(raw: Any, problem: str) -> None:
    with pytest.raises(CorruptRecord) as caught:
        InboxPosition.from_json(raw)
    assert caught.value.kind == "inbox position"
    assert problem in caught.value.problem


# --- replay plans -------------------------------------------------------------------------


def test_a_replay_plan_decides_in_order_and_commits_the_first_run_attempt() -> None:
    start = position(2, {5, 9}, s4=1, s7=3)
    plan = replay_plan(start, [3, 4, 5, 7, 8, 9, 11], max_attempts=3)
    assert plan.decisions == (
        Run(3, 1),
        Run(4, 2),
        Skip(5),
        DeadLetter(7, 3),
        Run(8, 1),
        Skip(9),
        Run(11, 1),
    )
    assert plan.position.attempts == {3: 1, 4: 1, 7: 3}
    assert (plan.position.floor, plan.position.applied) == (2, frozenset({5, 9}))
    # each later run is recorded as it starts; recording one again changes nothing
    assert plan.position.started(Run(3, 1)) is plan.position
    assert plan.position.started(Run(4, 2)).attempts == {3: 1, 4: 2, 7: 3}


def test_started_records_a_run_once_and_never_for_a_done_sequence() -> None:
    start = position(2, {5}, s4=1)
    assert start.started(Run(4, 2)).attempts == {4: 2}
    assert start.started(Run(4, 1)) is start
    assert start.started(Run(6, 1)).attempts == {4: 1, 6: 1}
    assert start.started(Run(5, 1)) is start
    assert start.started(Run(1, 1)) is start


def test_a_crash_charges_only_the_signal_that_was_running() -> None:
    """Counting every run's attempt up front would dead-letter the signals behind a poison
    one along with it; each is charged only when it starts."""
    plan = replay_plan(position(), [1, 2, 3], max_attempts=1)
    assert plan.decisions == (Run(1, 1), Run(2, 1), Run(3, 1))
    after_crash = replay_plan(plan.position, [1, 2, 3], max_attempts=1)
    assert after_crash.decisions == (DeadLetter(1, 1), Run(2, 1), Run(3, 1))


def test_a_replay_plan_moves_the_floor_over_the_absent_and_done_prefix() -> None:
    start = position(10, {14, 20})
    plan = replay_plan(start, [14, 17, 20], max_attempts=2)
    assert plan.decisions == (Skip(14), Run(17, 1), Skip(20))
    # 11..13 and 15..16 are absent from the subject, 14 is done: all may be purged
    assert (plan.position.floor, plan.position.applied) == (16, frozenset({20}))
    assert plan.position.purge_below() == 17


def test_a_replay_with_nothing_left_to_run_moves_the_floor_past_everything_found() -> None:
    plan = replay_plan(position(10, {14, 20}), [14, 20], max_attempts=2)
    assert plan.decisions == (Skip(14), Skip(20))
    assert plan.position == position(20)
    assert replay_plan(position(10, {14}), [], max_attempts=2).position == position(10, {14})


def test_a_replay_plan_needs_strictly_ascending_sequences() -> None:
    with pytest.raises(ValueError, match="strictly ascending"):
        replay_plan(position(), [3, 2], max_attempts=2)
    with pytest.raises(ValueError, match="strictly ascending"):
        replay_plan(position(), [3, 3], max_attempts=2)


# --- properties against an oracle ---------------------------------------------------------

HIGHEST = 24
sequences = st.integers(min_value=1, max_value=HIGHEST)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("attempt"), sequences),
        st.tuples(st.just("mark"), sequences),
        st.tuples(st.just("advance"), st.integers(min_value=0, max_value=HIGHEST)),
    ),
    max_size=60,
)


class Oracle:
    """Every done sequence in a plain set; attempts in a plain dict."""

    def __init__(self) -> None:
        self.done: set[int] = set()
        self.attempts: dict[int, int] = {}

    def apply(self, op: str, seq: int) -> None:
        if op == "attempt":
            if seq not in self.done:
                self.attempts[seq] = self.attempts.get(seq, 0) + 1
        elif op == "mark":
            self.done.add(seq)
            self.attempts.pop(seq, None)
        else:
            for each in range(1, seq + 1):
                self.done.add(each)
                self.attempts.pop(each, None)

    def floor(self) -> int:
        floor = 0
        while floor + 1 in self.done:
            floor += 1
        return floor


def apply(value: InboxPosition, op: str, seq: int) -> InboxPosition:
    if op == "attempt":
        return value.attempt(seq)
    if op == "mark":
        return value.mark_applied(seq)
    return value.advance_floor_to(seq)


def round_trip(value: InboxPosition) -> InboxPosition:
    return InboxPosition.from_json(orjson.loads(orjson.dumps(value.to_json())))


@given(operations)
def test_the_position_agrees_with_the_oracle_after_any_operations(
    ops: list[tuple[str, int]],
) -> None:
    value = InboxPosition()
    oracle = Oracle()
    for op, seq in ops:
        value = apply(value, op, seq)
        oracle.apply(op, seq)
        assert value.floor == oracle.floor()
        assert all(value.is_applied(s) == (s in oracle.done) for s in range(1, HIGHEST + 3))
        assert value.applied == frozenset(s for s in oracle.done if s > value.floor)
        assert value.floor + 1 not in value.applied
        assert dict(value.attempts) == oracle.attempts
        assert not any(value.is_applied(s) for s in value.attempts)
        assert round_trip(value) == value
        assert round_trip(value).to_json() == value.to_json()


@given(st.lists(sequences, unique=True), st.permutations(range(1, HIGHEST + 1)))
def test_marking_in_any_order_ends_at_the_same_position(
    some: list[int], everything: list[int]
) -> None:
    """Order is not strict after a restart: any order of the same marks agrees."""
    forward = InboxPosition()
    for seq in sorted(some):
        forward = forward.mark_applied(seq)
    shuffled = InboxPosition()
    for seq in reversed(some):
        shuffled = shuffled.mark_applied(seq)
    assert forward == shuffled
    whole = InboxPosition()
    for seq in everything:
        whole = whole.mark_applied(seq)
    assert whole == InboxPosition(HIGHEST)


@given(st.lists(sequences, unique=True, min_size=1), st.integers(min_value=1, max_value=6))
def test_the_gap_bound_refuses_exactly_when_too_many_wait(marks: list[int], max_gap: int) -> None:
    value = InboxPosition()
    for seq in marks:
        waiting = len(value.applied | {seq}) if seq > value.floor + 1 else 0
        if waiting > max_gap:
            with pytest.raises(InboxGapTooLarge) as caught:
                value.mark_applied(seq, max_gap=max_gap)
            assert caught.value.first_pending == value.floor + 1
            continue
        value = value.mark_applied(seq, max_gap=max_gap)
        assert len(value.applied) <= max_gap


@given(
    st.lists(sequences, unique=True, min_size=1).map(sorted),
    st.data(),
    st.integers(min_value=1, max_value=4),
)
def test_a_poison_signal_runs_max_attempts_times_then_is_dead_lettered(
    found: list[int], data: st.DataObject, max_attempts: int
) -> None:
    """Each restore commits its plan, applies runs in order until the poison signal kills the
    process, and the next restore reads the committed snapshot back."""
    poison = data.draw(st.sampled_from(found))
    snapshot = InboxPosition().to_json()
    poison_runs = 0
    dead_lettered = 0
    for _restart in range(max_attempts + 3):
        committed = InboxPosition.from_json(snapshot)
        plan = replay_plan(committed, found, max_attempts)
        value = plan.position
        snapshot = value.to_json()
        for decision in plan.decisions:
            if isinstance(decision, Skip):
                continue
            if isinstance(decision, DeadLetter):
                assert decision.seq == poison
                assert decision.attempts == max_attempts
                dead_lettered += 1
            else:
                value = value.started(decision)
                snapshot = value.to_json()  # committed before it runs
                if decision.seq == poison:
                    poison_runs += 1
                    assert decision.attempt == poison_runs
                    break  # the process dies; only the committed snapshot survives
                assert decision.attempt == 1  # innocent signals are never charged twice
            value = value.mark_applied(decision.seq)
            snapshot = value.to_json()
    assert poison_runs == max_attempts
    assert dead_lettered == 1
    final = InboxPosition.from_json(snapshot)
    assert final == InboxPosition(found[-1])
    assert all(isinstance(d, Skip) for d in replay_plan(final, found, max_attempts).decisions)


@given(operations, st.lists(sequences, unique=True).map(sorted), st.integers(1, 4))
def test_a_replay_plan_agrees_with_deciding_each_sequence_alone(
    ops: list[tuple[str, int]], found: list[int], max_attempts: int
) -> None:
    value = InboxPosition()
    for op, seq in ops:
        value = apply(value, op, seq)
    plan = replay_plan(value, found, max_attempts)
    assert plan.decisions == tuple(value.replay_decision(s, max_attempts) for s in found)
    runs = [d for d in plan.decisions if isinstance(d, Run)]
    for seq in found:
        if runs and seq == runs[0].seq:
            assert plan.position.attempts[seq] == value.attempts.get(seq, 0) + 1
        elif not value.is_applied(seq):
            assert plan.position.attempts.get(seq) == value.attempts.get(seq)
    # the plan only marks as done what the walk showed to be absent or already done
    open_seqs = [s for s in found if not value.is_applied(s)]
    for seq in range(1, HIGHEST + 1):
        if plan.position.is_applied(seq) and not value.is_applied(seq):
            assert seq not in found
            assert not open_seqs or seq < open_seqs[0]
