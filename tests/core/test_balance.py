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
