import hashlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcluster.core.snapshots import (
    DEFAULT_MAX_STALENESS,
    Inline,
    ObjectPointer,
    Outbox,
    OutboxEntry,
    OutboxFull,
    SnapshotEnvelope,
    SnapshotScheduler,
    WriteAgainAt,
    WriteLanded,
    WriteLost,
    decode_stored,
    resolve_snapshot_write,
    retry_delay,
    storage_plan,
)
from agentcluster.errors import (
    AgentClusterError,
    ConfigurationError,
    CorruptRecord,
    UsageError,
)

S = DEFAULT_MAX_STALENESS

# --- scheduler: table tests ---------------------------------------------------------


def test_fresh_scheduler_has_nothing_to_write() -> None:
    s = SnapshotScheduler()
    assert (s.latest_version, s.committed_version, s.in_flight) == (0, 0, None)
    assert not s.due(100.0)
    assert s.next_deadline() is None


def test_first_change_is_due_after_max_staleness() -> None:
    s = SnapshotScheduler(0.05)
    assert s.changed(10.0) == 1
    assert s.next_deadline() == pytest.approx(10.05)
    assert not s.due(10.049)
    assert s.due(10.05)


def test_changes_coalesce_on_the_oldest() -> None:
    s = SnapshotScheduler(0.05)
    s.changed(10.0)
    s.changed(10.02)
    s.changed(10.04)
    assert s.next_deadline() == pytest.approx(10.05)
    assert s.write_started(10.05) == 3
    s.write_committed(3, 10.06)
    assert s.committed_version == 3
    assert s.next_deadline() is None
    assert all(s.covers(v) for v in (1, 2, 3))
    assert not s.covers(4)


def test_zero_staleness_writes_after_every_change() -> None:
    s = SnapshotScheduler(0)
    s.changed(1.0)
    assert s.due(1.0)


def test_the_default_is_group_commit() -> None:
    """A lone change is written at once; changes made during a write share the next one,
    which is due as soon as that write commits."""
    s = SnapshotScheduler()
    s.changed(1.0)
    assert s.due(1.0)
    assert s.write_started(1.0) == 1
    for at in (1.0001, 1.0002, 1.0003):
        s.changed(at)
        assert not s.due(at)
    s.write_committed(1, 1.0004)
    assert s.due(1.0004)
    assert s.write_started(1.0004) == 4


@pytest.mark.parametrize("bad", [-0.01, float("inf"), float("nan"), True, "0.05"])
def test_invalid_staleness_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        SnapshotScheduler(bad)


def test_change_during_a_write_is_covered_by_the_next_write() -> None:
    s = SnapshotScheduler(0.05)
    s.changed(0.0)
    v = s.write_started(0.05)
    s.changed(0.06)
    assert not s.due(1.0)
    assert s.next_deadline() is None
    s.write_committed(v, 0.08)
    assert s.committed_version == 1
    assert s.latest_version == 2
    assert not s.covers(2)
    assert s.oldest_uncommitted_at == 0.06
    assert s.next_deadline() == pytest.approx(0.11)
    assert s.write_started(0.11) == 2


def test_stalled_write_makes_the_next_due_at_once_on_commit() -> None:
    s = SnapshotScheduler(0.05)
    s.changed(0.0)
    v = s.write_started(0.05)
    s.changed(0.06)
    s.write_committed(v, 1.0)
    assert s.due(1.0)


def test_at_most_one_write_in_flight() -> None:
    s = SnapshotScheduler(0)
    s.changed(0.0)
    s.write_started(0.0)
    s.changed(0.0)
    assert not s.due(5.0)
    with pytest.raises(UsageError):
        s.write_started(5.0)


@pytest.mark.parametrize("outcome", ["write_committed", "write_failed"])
def test_outcome_of_a_write_not_in_flight_is_refused(outcome: str) -> None:
    s = SnapshotScheduler(0)
    s.changed(0.0)
    with pytest.raises(UsageError):
        getattr(s, outcome)(1, 0.0)
    v = s.write_started(0.0)
    with pytest.raises(UsageError):
        getattr(s, outcome)(v + 1, 0.0)


def test_failed_write_keeps_the_change_and_backs_off() -> None:
    s = SnapshotScheduler(0.05)
    s.changed(0.0)
    v = s.write_started(0.05)
    s.write_failed(v, 0.06)
    assert s.committed_version == 0
    assert not s.covers(1)
    assert s.failures == 1
    assert s.oldest_uncommitted_at == 0.0
    assert s.next_deadline() == pytest.approx(0.07)
    assert not s.due(0.069)
    assert s.due(0.07)
    v = s.write_started(0.07)
    s.write_failed(v, 0.08)
    assert s.next_deadline() == pytest.approx(0.10)
    v = s.write_started(0.10)
    s.write_committed(v, 0.11)
    assert s.failures == 0
    assert s.covers(1)
    s.changed(0.2)
    assert s.next_deadline() == pytest.approx(0.25)


def test_failed_write_retries_the_latest_version() -> None:
    s = SnapshotScheduler(0)
    s.changed(0.0)
    v = s.write_started(0.0)
    s.changed(0.001)
    s.write_failed(v, 0.002)
    assert s.oldest_uncommitted_at == 0.0
    assert s.write_started(0.02) == 2


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(1, 0.01), (2, 0.02), (3, 0.04), (7, 0.64), (8, 1.0), (9, 1.0), (10_000, 1.0)],
)
def test_retry_delay_doubles_up_to_a_second(failures: int, delay: float) -> None:
    assert retry_delay(failures) == pytest.approx(delay)


def test_time_going_back_is_taken_as_the_latest_seen() -> None:
    s = SnapshotScheduler(0.05)
    s.changed(10.0)
    s.changed(9.0)
    assert s.oldest_uncommitted_at == 10.0
    assert s.due(10.05)
    assert s.due(1.0)


def test_forced_write_with_nothing_uncommitted() -> None:
    s = SnapshotScheduler(0.05, version=7)
    assert s.committed_version == 7
    assert s.covers(7)
    assert s.write_started(0.0) == 7
    s.changed(0.01)
    s.write_committed(7, 0.02)
    assert s.oldest_uncommitted_at == 0.01
    assert s.next_deadline() == pytest.approx(0.06)


# --- scheduler: property test against a naive oracle --------------------------------

scheduler_ops = st.lists(
    st.one_of(
        st.just(("change",)),
        st.tuples(st.just("step"), st.sampled_from([0.0, 0.001, 0.005, 0.01, 0.03, 0.2])),
        st.just(("start",)),
        st.just(("force",)),
        st.just(("commit",)),
        st.just(("fail",)),
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(ops=scheduler_ops, staleness=st.sampled_from([0.0, 0.01, 0.05]))
def test_scheduler_matches_oracle(ops: list[tuple[Any, ...]], staleness: float) -> None:
    s = SnapshotScheduler(staleness)
    now = 0.0
    changes: dict[int, float] = {}
    committed = 0
    in_flight: int | None = None
    failures = 0
    retry_at = float("-inf")
    settled_at = float("-inf")
    was_due = False
    last_step = 0.0

    def oracle_deadline() -> float | None:
        pending = [t for v, t in changes.items() if v > committed]
        if not pending or in_flight is not None:
            return None
        return max(min(pending) + staleness, retry_at)

    for op in ops:
        if op[0] == "change":
            v = s.changed(now)
            assert v == max(changes, default=0) + 1
            changes[v] = now
        elif op[0] == "step":
            last_step = op[1]
            now += op[1]
        elif op[0] == "start" and s.due(now):
            assert in_flight is None
            in_flight = s.write_started(now)
            assert in_flight == len(changes)
        elif op[0] == "force":
            if in_flight is None:
                in_flight = s.write_started(now)
            else:
                with pytest.raises(UsageError):
                    s.write_started(now)
        elif op[0] == "commit" and in_flight is not None:
            s.write_committed(in_flight, now)
            committed, in_flight, failures = max(committed, in_flight), None, 0
            retry_at, settled_at = float("-inf"), now
        elif op[0] == "fail" and in_flight is not None:
            s.write_failed(in_flight, now)
            in_flight, failures = None, failures + 1
            retry_at = now + min(1.0, 0.01 * 2 ** (failures - 1))
            settled_at = now

        assert s.in_flight == in_flight
        assert s.committed_version == committed
        assert s.latest_version == len(changes)
        expected = oracle_deadline()
        assert s.next_deadline() == (None if expected is None else pytest.approx(expected))
        due = s.due(now)
        assert due == (expected is not None and now >= expected - 1e-12)
        if due and not was_due:
            oldest = min(t for v, t in changes.items() if v > committed)
            became_due = max(oldest + staleness, retry_at, settled_at)
            assert now - became_due <= last_step + 1e-9
            if retry_at == float("-inf") and settled_at <= oldest + staleness:
                assert now - oldest <= staleness + last_step + 1e-9
        was_due = due

    # With every write succeeding from here on, every change ends up covered.
    if in_flight is not None:
        s.write_committed(in_flight, now)
    for _ in range(3):
        deadline = s.next_deadline()
        if deadline is None:
            break
        now = max(now, deadline)
        assert s.due(now)
        s.write_committed(s.write_started(now), now)
    assert s.next_deadline() is None
    assert all(s.covers(v) for v in changes)


# --- outbox: table tests ------------------------------------------------------------


def test_outbox_releases_only_committed_entries_in_order() -> None:
    box = Outbox().add("a", 1, {"n": 1}).add("b", 1, None).add("c", 2, [3])
    assert [e.entry_id for e in box.releasable(0)] == []
    assert [e.entry_id for e in box.releasable(1)] == ["a", "b"]
    assert [e.entry_id for e in box.releasable(5)] == ["a", "b", "c"]


def test_released_entries_leave_the_ledger_and_the_next_snapshot() -> None:
    box = Outbox().add("a", 1, 1).add("b", 2, 2)
    box2 = box.released(["a", "unknown"])
    assert [e.entry_id for e in box2.for_snapshot()] == ["b"]
    assert box2.releasable(2) == (OutboxEntry("b", 2, 2),)
    assert box2.released(["a"]) == box2
    assert len(box) == 2, "the ledger is immutable"


def test_restored_entries_are_released_again_with_the_same_ids() -> None:
    stored = Outbox().add("a", 4, "x").add("b", 9, "y").for_snapshot()
    box = Outbox.restored(stored, version=0)
    assert [(e.entry_id, e.payload) for e in box.releasable(0)] == [("a", "x"), ("b", "y")]


def test_outbox_is_bounded() -> None:
    box = Outbox(max_entries=2).add("a", 1, None).add("b", 1, None)
    with pytest.raises(OutboxFull) as info:
        box.add("c", 1, None)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AgentClusterError)
    assert info.value.retryable
    assert info.value.limit == 2
    box.released(["a"]).add("c", 1, None)


def test_default_bound_is_ten_thousand() -> None:
    assert Outbox().max_entries == 10_000


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_invalid_outbox_bound_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        Outbox(max_entries=bad)


def test_outbox_refuses_duplicate_ids_and_going_back_in_version() -> None:
    box = Outbox().add("a", 2, None)
    with pytest.raises(UsageError):
        box.add("a", 3, None)
    with pytest.raises(UsageError):
        box.add("b", 1, None)


# --- outbox: property test ----------------------------------------------------------

outbox_ops = st.lists(
    st.one_of(
        st.tuples(st.just("action"), st.integers(0, 3)),
        st.just(("step",)),
        st.just(("start",)),
        st.just(("commit",)),
        st.just(("fail",)),
        st.just(("release",)),
        st.just(("crash",)),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(ops=outbox_ops)
def test_outbox_releases_only_committed_and_each_once_per_incarnation(
    ops: list[tuple[Any, ...]],
) -> None:
    counter = 0
    sched = SnapshotScheduler(0.01)
    box = Outbox()
    now = 0.0
    ledger: list[str] = []  # oracle: ids added and not released, this incarnation
    in_flight_ids: list[str] | None = None
    committed_ids: list[str] = []  # the outbox of the last committed snapshot
    released_here: list[str] = []
    restored_ids: list[str] = []

    def release_all() -> None:
        nonlocal box
        ready = box.releasable(sched.committed_version)
        for entry in ready:
            assert sched.covers(entry.version)
        ids = [e.entry_id for e in ready]
        released_here.extend(ids)
        for i in ids:
            ledger.remove(i)
        box = box.released(ids)

    for op in ops:
        if op[0] == "action":
            version = sched.changed(now)
            for _ in range(op[1]):
                counter += 1
                box = box.add(f"e{counter}", version, counter)
                ledger.append(f"e{counter}")
        elif op[0] == "step":
            now += 0.01
        elif op[0] == "start" and sched.in_flight is None:
            sched.write_started(now)
            in_flight_ids = [e.entry_id for e in box.for_snapshot()]
            assert in_flight_ids == ledger
        elif op[0] == "commit" and sched.in_flight is not None:
            sched.write_committed(sched.in_flight, now)
            assert in_flight_ids is not None
            committed_ids = in_flight_ids
        elif op[0] == "fail" and sched.in_flight is not None:
            sched.write_failed(sched.in_flight, now)
        elif op[0] == "release":
            release_all()
        elif op[0] == "crash":
            assert len(released_here) == len(set(released_here))
            box = Outbox.restored([OutboxEntry(i, 0, None) for i in committed_ids], version=0)
            sched = SnapshotScheduler(0.01)
            ledger = list(committed_ids)
            restored_ids = list(committed_ids)
            released_here = []
            in_flight_ids = None
        assert [e.entry_id for e in box.for_snapshot()] == ledger

    release_all()
    assert len(released_here) == len(set(released_here))
    assert released_here[: len(restored_ids)] == restored_ids


# --- envelope -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)

envelopes = st.builds(
    SnapshotEnvelope,
    schema_version=st.integers(0, 50),
    state=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    schedules=st.lists(json_values, max_size=3),
    outbox=st.lists(
        st.builds(OutboxEntry, st.text(min_size=1, max_size=8), st.integers(0, 99), json_values),
        max_size=3,
    ),
    inbox=st.none() | st.dictionaries(st.text(max_size=5), st.integers(0, 99), max_size=3),
    agent_incarnation=st.integers(0, 2**40),
)


@given(envelope=envelopes)
def test_envelope_round_trips(envelope: SnapshotEnvelope) -> None:
    data = envelope.to_bytes()
    assert SnapshotEnvelope.from_bytes(data) == envelope
    assert decode_stored(data) == envelope


GOOD = {
    "schema_version": 1,
    "agent_incarnation": 2,
    "state": {},
    "schedules": [],
    "outbox": [],
    "inbox": None,
}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1, 2]",
        orjson.dumps({**GOOD, "schema_version": "1"}),
        orjson.dumps({**GOOD, "schema_version": True}),
        orjson.dumps({k: v for k, v in GOOD.items() if k != "state"}),
        orjson.dumps({k: v for k, v in GOOD.items() if k != "agent_incarnation"}),
        orjson.dumps({**GOOD, "state": [1]}),
        orjson.dumps({**GOOD, "schedules": {}}),
        orjson.dumps({**GOOD, "outbox": {}}),
        orjson.dumps({**GOOD, "outbox": [1]}),
        orjson.dumps({**GOOD, "outbox": [{"id": 1, "version": 1, "payload": None}]}),
        orjson.dumps({**GOOD, "outbox": [{"id": "a", "version": 1}]}),
        orjson.dumps({**GOOD, "inbox": [1]}),
    ],
)
def test_malformed_snapshot_is_a_corrupt_record(data: bytes) -> None:
    with pytest.raises(CorruptRecord):
        SnapshotEnvelope.from_bytes(data)


def test_unencodable_state_is_a_usage_error() -> None:
    envelope = SnapshotEnvelope(1, {"x": object()}, [], [], None, 1)
    with pytest.raises(UsageError):
        envelope.to_bytes()


# --- storage plan -------------------------------------------------------------------


@given(size=st.integers(0, 300), limit=st.integers(1, 300))
def test_storage_plan_threshold_is_exact(size: int, limit: int) -> None:
    encoded = b"x" * size
    plan = storage_plan(encoded, limit)
    if size <= limit:
        assert plan == Inline(encoded)
    else:
        assert plan == ObjectPointer(hashlib.sha256(encoded).hexdigest(), size)


@pytest.mark.parametrize(("size", "inline"), [(99, True), (100, True), (101, False)])
def test_storage_plan_boundary(size: int, inline: bool) -> None:
    assert isinstance(storage_plan(b"a" * size, 100), Inline) is inline


def test_storage_plan_refuses_a_nonpositive_limit() -> None:
    with pytest.raises(ConfigurationError):
        storage_plan(b"", 0)


def test_pointer_round_trips_and_verifies_its_object() -> None:
    obj = SnapshotEnvelope(1, {"big": "y" * 500}, [], [], None, 3).to_bytes()
    plan = storage_plan(obj, 100)
    assert isinstance(plan, ObjectPointer)
    encoded = plan.to_bytes()
    assert ObjectPointer.from_bytes(encoded) == plan
    assert decode_stored(encoded) == plan
    assert plan.verify(obj) == obj
    with pytest.raises(CorruptRecord):
        plan.verify(obj[:-1] + b" ")
    with pytest.raises(CorruptRecord):
        plan.verify(obj + b" ")


@pytest.mark.parametrize(
    "raw",
    [
        {"object": {"sha256": "ab", "size": 1}},
        {"object": {"sha256": "G" * 64, "size": 1}},
        {"object": {"sha256": "a" * 64, "size": -1}},
        {"object": {"sha256": "a" * 64}},
        {"object": "a" * 64},
    ],
)
def test_malformed_pointer_is_a_corrupt_record(raw: dict[str, Any]) -> None:
    with pytest.raises(CorruptRecord):
        decode_stored(orjson.dumps(raw))


# --- migration ----------------------------------------------------------------------


# --- the outcome of a write ---------------------------------------------------------

MINE, EARLIER, OTHER = b"mine", b"earlier", b"other"


@pytest.mark.parametrize(
    ("found", "expected", "ours", "timed_out", "outcome"),
    [
        # timed out: our value landed; the key untouched means not yet; anything else lost
        ((MINE, 8), 7, [MINE], True, WriteLanded(8)),
        ((b"before", 7), 7, [MINE], True, WriteAgainAt(7)),
        (None, None, [MINE], True, WriteAgainAt(None)),
        ((EARLIER, 9), 7, [EARLIER, MINE], True, WriteAgainAt(9)),
        ((OTHER, 9), 7, [MINE], True, WriteLost()),
        (None, 7, [MINE], True, WriteLost()),
        # lost its compare-and-set: only an earlier write of ours (or this one, repeated
        # after a timeout) is not another writer
        ((EARLIER, 9), 7, [EARLIER], False, WriteAgainAt(9)),
        ((MINE, 9), 7, [MINE], False, WriteLanded(9)),
        ((MINE, 9), 7, [], False, WriteLost()),
        ((OTHER, 9), 7, [EARLIER], False, WriteLost()),
        (None, 7, [EARLIER], False, WriteLost()),
    ],
)
def test_a_write_of_unclear_outcome_is_resolved_from_the_key(
    found: tuple[bytes, int] | None,
    expected: int | None,
    ours: list[bytes],
    timed_out: bool,
    outcome: object,
) -> None:
    assert resolve_snapshot_write(found, MINE, expected, ours, timed_out=timed_out) == outcome
