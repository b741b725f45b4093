"""Partitions from suspicions, against a brute-force oracle."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.topology import partitions


def test_everyone_hears_everyone_is_one_partition() -> None:
    assert partitions(["n2", "n1", "n3"], {}) == [("n1", "n2", "n3")]


def test_a_split_shows_both_sides_largest_first() -> None:
    suspects = {"n1": ["n3"], "n2": ["n3"], "n3": ["n1", "n2"]}
    assert partitions(["n1", "n2", "n3"], suspects) == [("n1", "n2"), ("n3",)]


def test_one_sided_suspicion_cuts_the_edge() -> None:
    assert partitions(["a", "b"], {"a": ["b"]}) == [("a",), ("b",)]


def test_a_node_heard_through_another_stays_in_the_partition() -> None:
    # a and c doubt each other but both hear b: one partition (connected through b).
    assert partitions(["a", "b", "c"], {"a": ["c"], "c": ["a"]}) == [("a", "b", "c")]


names = st.sampled_from(["a", "b", "c", "d", "e"])


@given(st.sets(names, min_size=1), st.dictionaries(names, st.sets(names)))
def test_matches_a_brute_force_oracle(nodes: set[str], suspects: dict[str, set[str]]) -> None:
    def linked(x: str, y: str) -> bool:
        return y not in suspects.get(x, set()) and x not in suspects.get(y, set())

    def reachable(x: str, y: str) -> bool:
        others = sorted(nodes - {x, y})
        for length in range(len(others) + 1):
            for path in itertools.permutations(others, length):
                hops = [x, *path, y]
                if all(linked(p, q) for p, q in itertools.pairwise(hops)):
                    return True
        return False

    result = partitions(nodes, suspects)
    assert sorted(n for c in result for n in c) == sorted(nodes)
    where = {n: i for i, c in enumerate(result) for n in c}
    for x, y in itertools.combinations(sorted(nodes), 2):
        assert (where[x] == where[y]) == reachable(x, y)
