"""Scatter-gather decisions: how a list of items is cut into chunks, which holder of a
capability takes each chunk (and each retry of it), and how the chunk results are joined.

Theory of operation. A coordinator has ``total`` items and the holders of a capability.

- **Cutting.** With no ``chunk_size`` there is one chunk per holder (fewer when there are
  fewer items than holders, never an empty chunk), so every holder gets a share of the
  work in one round. With a ``chunk_size`` there are ``ceil(total / chunk_size)`` chunks —
  more chunks than holders when the items are many, so a slow or failing holder holds up a
  smaller share. Either way the chunks are contiguous, in item order, and *balanced*: their
  sizes differ by at most one, the larger ones first, and none exceeds ``chunk_size``.
- **Choosing a holder.** ``next_holder`` serves both the first try of a chunk and every
  retry: among the current holders it takes one that has not been tried for this chunk,
  preferring, in order, holders not to ``avoid`` (they failed another chunk, or their node
  is suspected), then the least ``busy`` (chunks in flight), then the chunk's own place in
  a rotation (chunk ``i`` starts looking at holder ``i mod n``), so first tries spread one
  chunk per holder and retries of different chunks go to different holders. ``avoid``
  steers, it never empties the choice. After ``attempts`` tries, or when every holder has
  been tried, there is no next holder: the chunk has failed.
- **Joining.** ``join_results`` is the default reduce: the chunk results concatenated when
  each is a list (a map over items gives back one list in item order), else the list of
  chunk results as they are.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

from agentcluster.errors import ConfigurationError

__all__ = ["balanced_bounds", "chunk_count", "join_results", "next_holder", "split"]

T = TypeVar("T")


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, not {value!r}")
    return value


def chunk_count(total: int, holders: int, chunk_size: int | None) -> int:
    """How many chunks ``total`` items are cut into for ``holders`` holders (>= 1)."""
    _count("total", total, 0)
    _count("holders", holders, 1)
    if total == 0:
        return 0
    if chunk_size is None:
        return min(holders, total)
    return math.ceil(total / _count("chunk_size", chunk_size, 1))


def balanced_bounds(total: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous ``(start, stop)`` ranges covering ``0..total`` in order, sizes
    differing by at most one, the larger first; ``count`` must be in ``1..total`` (or 0
    when ``total`` is 0), since an empty chunk would cost a call for nothing."""
    _count("total", total, 0)
    _count("count", count, 0)
    if (count == 0) != (total == 0) or count > total:
        raise ConfigurationError(f"cannot cut {total} items into {count} non-empty chunks")
    if count == 0:
        return []
    size, larger = divmod(total, count)
    bounds: list[tuple[int, int]] = []
    start = 0
    for index in range(count):
        stop = start + size + (1 if index < larger else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def split(items: Sequence[T], *, holders: int, chunk_size: int | None = None) -> list[list[T]]:
    """``items`` cut into balanced chunks for ``holders`` holders (see the module docstring)."""
    count = chunk_count(len(items), holders, chunk_size)
    return [list(items[start:stop]) for start, stop in balanced_bounds(len(items), count)]


def next_holder(
    chunk: int,
    holders: Sequence[str],
    tried: Collection[str],
    *,
    attempts: int,
    avoid: Collection[str] = (),
    busy: Mapping[str, int] | None = None,
) -> str | None:
    """The holder to try ``chunk`` on next, or None when it has failed for good: ``tried``
    has reached ``attempts`` or holds every current holder.

    ``holders`` is the current list (it may have lost or gained holders since the chunk's
    last try); ``tried`` may name holders no longer in it.
    """
    _count("chunk", chunk, 0)
    _count("attempts", attempts, 1)
    if len(tried) >= attempts or not holders:
        return None
    count = len(holders)
    start = chunk % count
    rotation = [holders[(start + offset) % count] for offset in range(count)]
    candidates = [h for h in dict.fromkeys(rotation) if h not in tried]
    if not candidates:
        return None
    load = busy or {}
    _place, chosen = min(
        enumerate(candidates),
        key=lambda pair: (pair[1] in avoid, load.get(pair[1], 0), pair[0]),
    )
    return chosen


def join_results(results: Sequence[Any]) -> Any:
    """The default reduce: one list when every chunk result is a list, else the results."""
    if all(isinstance(result, list) for result in results):
        return [value for result in results for value in result]
    return list(results)
