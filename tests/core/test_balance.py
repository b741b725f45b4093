"""Round robin over a capability's holders."""

from __future__ import annotations

import pytest

from agentcluster.core.balance import RoundRobin


def test_turns_are_kept_per_key_and_follow_the_holder_list() -> None:
    rr = RoundRobin()
    assert [rr.pick("a", ["x", "y", "z"]) for _ in range(4)] == ["x", "y", "z", "x"]
    assert rr.pick("b", ["p", "q"]) == "p"
    assert rr.pick("a", ["x", "y"]) == "x"  # the fifth turn over a shrunk list: 4 % 2


def test_no_holders_is_an_error() -> None:
    with pytest.raises(ValueError):
        RoundRobin().pick("a", [])


def test_pick_heard_passes_over_suspected_holders_in_turn() -> None:
    rr = RoundRobin()
    holders = ["a", "b", "c"]
    picks = [rr.pick_heard("cap", holders, lambda h: h == "b") for _ in range(4)]
    assert picks == ["a", "c", "a", "c"]


def test_pick_heard_falls_back_to_the_plain_turn_when_all_are_suspected() -> None:
    rr = RoundRobin()
    assert [rr.pick_heard("cap", ["a", "b"], lambda h: True) for _ in range(3)] == ["a", "b", "a"]
    assert RoundRobin().pick_heard("cap", ["only"], lambda h: True) == "only"
