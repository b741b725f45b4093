"""Reservations: capacity checks, idempotent adds, the record format and stale collection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.reservations import (
    NodeReservations,
    Reservation,
    check_resources,
    plan_collection,
    resource_totals,
)
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import ConfigurationError, CorruptRecord, NoAvailableNode

STAMP = WriteStamp("n1", 1, 1)


def test_an_entry_is_added_only_while_it_fits() -> None:
    empty = NodeReservations("n1")
    capacity = {"cpu": 2.0, "gpu": 1.0}
    one = empty.with_reservation(Reservation("a", 1, {"cpu": 1.0, "gpu": 1.0}), capacity, STAMP)
    assert one.reserved() == {"cpu": 1.0, "gpu": 1.0}
    with pytest.raises(NoAvailableNode) as caught:
        one.with_reservation(Reservation("b", 1, {"gpu": 1.0}), capacity, STAMP)
    assert caught.value.reason == "no_capacity"
    assert "gpu short by 1" in str(caught.value)
    two = one.with_reservation(Reservation("b", 1, {"cpu": 1.0}), capacity, STAMP)
    assert two.reserved() == {"cpu": 2.0, "gpu": 1.0}


def test_an_undeclared_resource_has_no_capacity() -> None:
    with pytest.raises(NoAvailableNode, match="tpu short by 1"):
        NodeReservations("n1").with_reservation(
            Reservation("a", 1, {"tpu": 1.0}), {"cpu": 8.0}, STAMP
        )


def test_adding_the_same_agent_incarnation_again_changes_nothing() -> None:
    capacity = {"cpu": 1.0}
    once = NodeReservations("n1").with_reservation(
        Reservation("a", 1, {"cpu": 1.0}), capacity, STAMP
    )
    again = once.with_reservation(
        Reservation("a", 1, {"cpu": 1.0}), capacity, WriteStamp("n1", 1, 2)
    )
    assert again.reserved() == {"cpu": 1.0}
    # a newer incarnation is another entry, and it must fit on its own
    with pytest.raises(NoAvailableNode):
        once.with_reservation(Reservation("a", 2, {"cpu": 1.0}), capacity, STAMP)


def test_float_sums_do_not_refuse_an_exact_fit() -> None:
    capacity = {"cpu": 0.3}
    value = NodeReservations("n1")
    value = value.with_reservation(Reservation("a", 1, {"cpu": 0.1}), capacity, STAMP)
    value = value.with_reservation(Reservation("b", 1, {"cpu": 0.2}), capacity, STAMP)
    assert value.shortfall(capacity, {"cpu": 0.0001}) != {}


def test_round_trip_and_corrupt_values() -> None:
    value = NodeReservations("n1").with_reservation(
        Reservation("a", 3, {"memory_mb": 256.0}), {"memory_mb": 1024.0}, STAMP
    )
    back = NodeReservations.from_bytes(value.to_bytes())
    assert back == value
    with pytest.raises(CorruptRecord):
        NodeReservations.from_bytes(b'{"node": "n1", "entries": [{"agent": 1}]}')
    with pytest.raises(CorruptRecord):
        NodeReservations.from_bytes(b'{"node": "n1", "entries": {}}')


@pytest.mark.parametrize(
    "bad",
    [{"cpu": -1}, {"cpu": float("nan")}, {"cpu": "1"}, {"": 1}, {"cpu": True}, ["cpu"]],
)
def test_bad_resources_are_refused_with_the_name(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        check_resources(bad)  # type: ignore[arg-type]


def test_zero_amounts_are_dropped() -> None:
    assert check_resources({"cpu": 0, "gpu": 1}) == {"gpu": 1.0}


def test_collection_waits_for_the_grace_on_its_own_clock() -> None:
    value = NodeReservations("n1").with_reservation(
        Reservation("a", 1, {"cpu": 1.0}), {"cpu": 4.0}, STAMP
    )
    value = value.with_reservation(Reservation("b", 1, {"cpu": 1.0}), {"cpu": 4.0}, STAMP)
    live = {("n1", ("b", 1))}

    def matches(node: str, key: tuple[str, int]) -> bool:
        return (node, key) in live

    first = plan_collection({"n1": value}, matches, {}, now=100.0, grace=15.0)
    assert first.due == {}
    assert first.pending == {("n1", ("a", 1)): 100.0}
    later = plan_collection({"n1": value}, matches, first.pending, now=114.9, grace=15.0)
    assert later.due == {}
    due = plan_collection({"n1": value}, matches, later.pending, now=115.0, grace=15.0)
    assert due.due == {"n1": (("a", 1),)}
    # an entry that matches again is forgotten (it starts over if it is unmatched later)
    live.add(("n1", ("a", 1)))
    healed = plan_collection({"n1": value}, matches, later.pending, now=200.0, grace=15.0)
    assert healed.due == {}
    assert healed.pending == {}


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.floats(min_value=0.0, max_value=3.0)), max_size=30
    )
)
def test_never_reserves_beyond_capacity(requests: list[tuple[str, float]]) -> None:
    capacity = {"cpu": 4.0}
    value = NodeReservations("n1")
    for index, (agent, amount) in enumerate(requests):
        try:
            value = value.with_reservation(
                Reservation(agent, index, {"cpu": amount}), capacity, STAMP
            )
        except NoAvailableNode:
            continue
    assert value.reserved().get("cpu", 0.0) <= 4.0 + 1e-6


def test_totals_add_per_resource() -> None:
    assert resource_totals([{"cpu": 1.0}, {"cpu": 2.0, "gpu": 1.0}]) == {"cpu": 3.0, "gpu": 1.0}
