"""Cutting items into balanced chunks, choosing holders for chunks and retries, joining."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.chunking import (
    balanced_bounds,
    chunk_count,
    join_results,
    next_holder,
    split,
)
from agentcluster.errors import ConfigurationError


@pytest.mark.parametrize(
    ("total", "holders", "chunk_size", "count"),
    [
        (0, 3, None, 0),
        (10, 3, None, 3),
        (2, 3, None, 2),  # fewer items than holders: no empty chunk
        (10, 3, 4, 3),
        (10, 3, 1, 10),
        (10, 3, 10, 1),
        (10, 3, 100, 1),
        (9, 3, 2, 5),
    ],
)
def test_chunk_count(total: int, holders: int, chunk_size: int | None, count: int) -> None:
    assert chunk_count(total, holders, chunk_size) == count


@pytest.mark.parametrize(
    ("total", "holders", "chunk_size"),
    [(-1, 3, None), (10, 0, None), (10, 3, 0), (10, 3, True), (True, 3, None)],
)
def test_chunk_count_refuses_bad_sizes(total: Any, holders: Any, chunk_size: Any) -> None:
    with pytest.raises(ConfigurationError):
        chunk_count(total, holders, chunk_size)


def test_split_is_balanced_larger_first_and_in_order() -> None:
    assert split(list(range(10)), holders=3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split("abcde", holders=2, chunk_size=2) == [["a", "b"], ["c", "d"], ["e"]]
    assert split(list(range(7)), holders=2, chunk_size=3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split([], holders=3) == []


def test_balanced_bounds_refuses_empty_chunks() -> None:
    with pytest.raises(ConfigurationError):
        balanced_bounds(2, 3)
    with pytest.raises(ConfigurationError):
        balanced_bounds(2, 0)
    assert balanced_bounds(0, 0) == []


@given(
    items=st.lists(st.integers(), max_size=200),
    holders=st.integers(min_value=1, max_value=20),
    chunk_size=st.one_of(st.none(), st.integers(min_value=1, max_value=50)),
)
def test_split_properties(items: list[int], holders: int, chunk_size: int | None) -> None:
    chunks = split(items, holders=holders, chunk_size=chunk_size)
    assert [x for chunk in chunks for x in chunk] == items
    assert all(chunks)
    sizes = [len(chunk) for chunk in chunks]
    if sizes:
        assert max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)
    if chunk_size is None:
        assert len(chunks) == min(holders, len(items))
    else:
        assert all(size <= chunk_size for size in sizes)
        assert len(chunks) == -(-len(items) // chunk_size)


HOLDERS = ("a", "b", "c")


@pytest.mark.parametrize(
    ("chunk", "tried", "kw", "expected"),
    [
        (0, (), {}, "a"),
        (1, (), {}, "b"),
        (4, (), {}, "b"),  # the chunk's place in the rotation
        (0, ("a",), {}, "b"),
        (2, ("c",), {}, "a"),
        (0, ("a", "b"), {}, "c"),
        (0, ("a", "b", "c"), {"attempts": 5}, None),  # every holder tried
        (0, ("a", "b"), {"attempts": 2}, None),  # out of attempts
        (0, ("a",), {"avoid": {"b"}}, "c"),
        (0, ("a",), {"avoid": {"b", "c"}}, "b"),  # avoid steers, never empties
        (0, (), {"busy": {"a": 2, "b": 1}}, "c"),
        (0, (), {"busy": {"a": 1}, "avoid": {"b"}}, "c"),
        (0, (), {"busy": {"c": 1}, "avoid": {"b"}}, "a"),
        (0, ("gone",), {}, "a"),  # a tried holder that has left the list still counts
    ],
)
def test_next_holder(
    chunk: int, tried: tuple[str, ...], kw: dict[str, Any], expected: str | None
) -> None:
    kw.setdefault("attempts", 3)
    assert next_holder(chunk, HOLDERS, tried, **kw) == expected


def test_next_holder_with_no_holders_left() -> None:
    assert next_holder(0, (), (), attempts=3) is None
    with pytest.raises(ConfigurationError):
        next_holder(0, HOLDERS, (), attempts=0)


def test_first_tries_spread_one_chunk_per_holder() -> None:
    busy: dict[str, int] = {}
    for chunk in range(6):
        holder = next_holder(chunk, HOLDERS, (), attempts=3, busy=busy)
        assert holder is not None
        busy[holder] = busy.get(holder, 0) + 1
    assert busy == {"a": 2, "b": 2, "c": 2}


@given(
    holders=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True),
    tried=st.lists(st.sampled_from("abcdefghxyz"), max_size=6, unique=True),
    avoid=st.sets(st.sampled_from("abcdefgh")),
    busy=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(min_value=0, max_value=5)),
    chunk=st.integers(min_value=0, max_value=100),
    attempts=st.integers(min_value=1, max_value=8),
)
def test_next_holder_properties(
    holders: list[str],
    tried: list[str],
    avoid: set[str],
    busy: dict[str, int],
    chunk: int,
    attempts: int,
) -> None:
    chosen = next_holder(chunk, holders, tried, attempts=attempts, avoid=avoid, busy=busy)
    untried = [h for h in holders if h not in tried]
    if len(tried) >= attempts or not untried:
        assert chosen is None
        return
    assert chosen in untried
    preferred = [h for h in untried if h not in avoid] or untried
    assert chosen in preferred
    assert busy.get(chosen, 0) == min(busy.get(h, 0) for h in preferred)


@pytest.mark.parametrize(
    ("results", "joined"),
    [
        ([[1, 2], [3], []], [1, 2, 3]),
        ([], []),
        ([3, 4], [3, 4]),
        ([[1], {"n": 2}], [[1], {"n": 2}]),  # not all lists: kept as they are
        ([None], [None]),
    ],
)
def test_join_results(results: list[Any], joined: Any) -> None:
    assert join_results(results) == joined
