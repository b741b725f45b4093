"""Vote answers, quorum sizes and the tally, table-driven and against a naive oracle."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from agentcluster.core.consensus import Ballot, Quorum, parse_ballot, quorum_size, tally
from agentcluster.errors import ConfigurationError


@pytest.mark.parametrize(
    ("answer", "ballot"),
    [
        (True, Ballot.YES),
        (False, Ballot.NO),
        ("yes", Ballot.YES),
        (" No ", Ballot.NO),
        ("YES", Ballot.YES),
        ({"vote": True}, Ballot.YES),
        ({"vote": "no"}, Ballot.NO),
        ({"vote": False}, Ballot.NO),
        (1, Ballot.INVALID),
        (0, Ballot.INVALID),
        (None, Ballot.INVALID),
        ("maybe", Ballot.INVALID),
        ("", Ballot.INVALID),
        ({}, Ballot.INVALID),
        ({"vote": "yes", "why": "cheap"}, Ballot.INVALID),
        ({"vote": {"vote": True}}, Ballot.INVALID),
        ({"ballot": True}, Ballot.INVALID),
        (["yes"], Ballot.INVALID),
    ],
)
def test_parse_ballot(answer: Any, ballot: Ballot) -> None:
    assert parse_ballot(answer) is ballot


@pytest.mark.parametrize(
    ("rule", "members", "needed"),
    [
        ("majority", 1, 1),
        ("majority", 2, 2),
        ("majority", 3, 2),
        ("majority", 4, 3),
        ("majority", 5, 3),
        ("all", 1, 1),
        ("all", 5, 5),
        (1, 5, 1),
        (5, 5, 5),
        (0.5, 4, 2),
        (0.5, 5, 3),
        (0.1, 10, 1),  # read as 1/10, not as the binary double just above it
        (0.7, 10, 7),
        (1.0, 3, 3),
        (0.01, 3, 1),  # never zero: at least one yes
    ],
)
def test_quorum_size(rule: Quorum, members: int, needed: int) -> None:
    assert quorum_size(rule, members) == needed


@pytest.mark.parametrize(
    ("rule", "members"),
    [
        (0, 3),
        (4, 3),
        (-1, 3),
        (0.0, 3),
        (1.5, 3),
        (float("nan"), 3),
        (True, 3),
        ("most", 3),
        (None, 3),
        ("majority", 0),
    ],
)
def test_impossible_or_malformed_quorums_are_refused(rule: Any, members: int) -> None:
    with pytest.raises(ConfigurationError):
        quorum_size(rule, members)


def test_tally_counts_over_the_whole_group() -> None:
    group = ["a", "b", "c", "d", "e"]
    ballots = {
        "a": Ballot.YES,
        "b": Ballot.YES,
        "c": Ballot.UNAVAILABLE,
        "d": Ballot.TIMED_OUT,
        "e": Ballot.NO,
    }
    counted = tally(group, ballots, "majority")
    assert (counted.accepted, counted.yes, counted.no, counted.quorum) == (False, 2, 1, 3)
    assert counted.counts[Ballot.UNAVAILABLE] == 1
    assert counted.counts[Ballot.INVALID] == 0
    assert tally(group, {**ballots, "c": Ballot.YES}, "majority").accepted
    assert tally(group, ballots, 2).accepted
    assert not tally(group, dict.fromkeys("abcd", Ballot.YES) | {"e": Ballot.ERROR}, "all").accepted


@pytest.mark.parametrize(
    ("group", "ballots"),
    [
        (["a", "b"], {"a": Ballot.YES}),
        (["a"], {"a": Ballot.YES, "z": Ballot.NO}),
        (["a", "a"], {"a": Ballot.YES}),
    ],
)
def test_tally_refuses_ballots_that_do_not_match_the_group(
    group: list[str], ballots: dict[str, Ballot]
) -> None:
    with pytest.raises(ConfigurationError):
        tally(group, ballots, "majority")


def _oracle_needed(rule: Quorum, n: int) -> int:
    """The smallest yes count that meets the rule, found by counting up."""
    for k in range(1, n + 1):
        if rule == "majority" and 2 * k > n:
            return k
        if rule == "all" and k == n:
            return k
        if isinstance(rule, int) and not isinstance(rule, bool) and k >= rule:
            return k
        if isinstance(rule, float) and k * 1000 >= round(rule * 1000) * n:
            return k
    raise AssertionError("unreachable for a valid rule")


rules = st.one_of(
    st.sampled_from(["majority", "all"]),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=1000).map(lambda t: t / 1000),
)


@given(
    rule=rules,
    ballots=st.lists(st.sampled_from(list(Ballot)), min_size=1, max_size=12),
)
def test_tally_agrees_with_a_naive_count(rule: Quorum, ballots: list[Ballot]) -> None:
    group = [f"m{i}" for i in range(len(ballots))]
    if isinstance(rule, int) and rule > len(group):
        with pytest.raises(ConfigurationError):
            tally(group, dict(zip(group, ballots, strict=True)), rule)
        return
    counted = tally(group, dict(zip(group, ballots, strict=True)), rule)
    yes = sum(1 for b in ballots if b is Ballot.YES)
    needed = _oracle_needed(rule, len(group))
    assert counted.quorum == needed
    assert counted.yes == yes
    assert counted.no == sum(1 for b in ballots if b is Ballot.NO)
    assert counted.accepted == (yes >= needed)
    assert sum(counted.counts.values()) == len(group)


@given(
    rule=rules,
    ballots=st.lists(st.sampled_from(list(Ballot)), min_size=1, max_size=12),
    turned=st.integers(min_value=0, max_value=11),
)
def test_one_more_yes_never_rejects_an_accepted_proposal(
    rule: Quorum, ballots: list[Ballot], turned: int
) -> None:
    assume(not (isinstance(rule, int) and rule > len(ballots)))
    group = [f"m{i}" for i in range(len(ballots))]
    before = tally(group, dict(zip(group, ballots, strict=True)), rule)
    more = list(ballots)
    more[turned % len(more)] = Ballot.YES
    after = tally(group, dict(zip(group, more, strict=True)), rule)
    assert after.yes >= before.yes
    assert not before.accepted or after.accepted
