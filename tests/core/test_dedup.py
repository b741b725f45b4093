"""The receiver's memory of accepted ids, against a naive dictionary oracle."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.dedup import AcceptedIds, Admission
from agentcluster.errors import ConfigurationError


def test_a_copy_before_the_deadline_is_a_duplicate_and_after_it_is_new() -> None:
    ids = AcceptedIds(10)
    assert ids.accept("a", deadline=5.0, now=0.0) is Admission.ACCEPTED
    assert ids.accept("a", deadline=5.0, now=4.9) is Admission.DUPLICATE
    assert ids.accept("a", deadline=9.0, now=5.0) is Admission.ACCEPTED


def test_full_memory_refuses_rather_than_forget_early() -> None:
    ids = AcceptedIds(2)
    assert ids.accept("a", 10.0, 0.0) is Admission.ACCEPTED
    assert ids.accept("b", 20.0, 0.0) is Admission.ACCEPTED
    assert ids.accept("c", 30.0, 1.0) is Admission.FULL
    assert ids.accept("a", 10.0, 1.0) is Admission.DUPLICATE
    assert ids.accept("c", 30.0, 10.0) is Admission.ACCEPTED  # "a" expired at 10
    assert "a" not in ids
    assert len(ids) == 2
    assert ids.next_deadline() == 20.0


def test_capacity_is_validated() -> None:
    with pytest.raises(ConfigurationError):
        AcceptedIds(0)


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.integers(0, 20), st.integers(0, 3)),
        max_size=80,
    ),
    st.integers(1, 6),
)
def test_agrees_with_a_naive_oracle(ops: list[tuple[str, int, int]], capacity: int) -> None:
    ids = AcceptedIds(capacity)
    truth: dict[str, float] = {}
    now = 0.0
    for signal_id, ttl, step in ops:
        now += step
        deadline = now + ttl
        truth = {k: d for k, d in truth.items() if d > now}
        if signal_id in truth:
            expected = Admission.DUPLICATE
            truth[signal_id] = max(truth[signal_id], deadline)
        elif len(truth) >= capacity:
            expected = Admission.FULL
        else:
            expected = Admission.ACCEPTED
            truth[signal_id] = deadline
        assert ids.accept(signal_id, deadline, now) is expected
    assert len(ids) <= capacity
