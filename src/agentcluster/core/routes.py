"""Routes: which targets a signal type goes to.

A route maps a pattern of dot-separated segments to a target. A segment is an exact word,
``*`` (exactly one segment) or ``**`` (any number of segments, none included), so
``order.*.created``, ``order.**`` and ``**.failed`` are patterns; ``order.**`` also matches
``order``. Every route whose pattern matches is returned, ordered by priority (highest
first), then specificity (more exact segments, then fewer ``**``, then fewer ``*``), then
insertion order.

Theory of operation:

- The patterns form a trie over segments, so one match walks only the branches the type's
  segments select (an exact child, the ``*`` child and the ``**`` child of each node it
  reaches) and its cost does not grow with the number of routes.
- A ``**`` edge leads to a node that loops on itself: a walk state is (node, index), and
  at a ``**`` node the walk may both swallow one more type segment (stay, index + 1) and
  go on to the node's children at the current index; the ``**`` edge itself is taken
  without consuming anything. Every state is visited at most once per match, so patterns
  such as ``**.**.**`` cost at most nodes x (segments + 1) states instead of exponential
  time, and a route is never reported twice.
- Agents see the same few signal types over and over, so results are kept in a bounded
  least-recently-used cache keyed by the type and cleared whenever the routes change.

Types are not validated while matching: a type is split on ``.`` and an empty segment
simply matches no exact word (only ``*`` or ``**``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from agentcluster.errors import ConfigurationError, InvalidRoute

__all__ = ["CacheInfo", "Route", "Router", "naive_match", "validate_pattern"]

T = TypeVar("T")

STAR = "*"
GLOBSTAR = "**"
_WORD = re.compile(r"[-_=/A-Za-z0-9]+")

# (-priority, -exact segments, globstars, stars, seq): sorting ascending gives match order.
_SortKey = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Route(Generic[T]):
    """One pattern -> target mapping; ``seq`` is its insertion order within a router."""

    pattern: str
    target: T
    priority: int
    seq: int


class CacheInfo(NamedTuple):
    """Match-cache statistics, like ``functools.lru_cache``'s."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


def validate_pattern(pattern: str) -> tuple[str, ...]:
    """Return the pattern's segments, or raise ``InvalidRoute`` naming the bad segment."""
    if not isinstance(pattern, str):
        raise InvalidRoute(f"route pattern must be a str, not {type(pattern).__name__}")
    if not pattern:
        raise InvalidRoute("route pattern '' is empty")
    segments = tuple(pattern.split("."))
    for position, segment in enumerate(segments):
        if segment in (STAR, GLOBSTAR) or _WORD.fullmatch(segment):
            continue
        what = "is empty" if not segment else f"{segment!r} is not a word, '*' or '**'"
        raise InvalidRoute(f"route pattern {pattern!r}: segment {position + 1} {what}")
    return segments


def naive_match(pattern: str, signal_type: str) -> bool:
    """The obvious recursive matcher; slow, and the oracle the trie is tested against."""
    return _naive(validate_pattern(pattern), tuple(signal_type.split(".")))


def _naive(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == GLOBSTAR:
        return any(_naive(rest, parts[skip:]) for skip in range(len(parts) + 1))
    if not parts:
        return False
    return (head == STAR or head == parts[0]) and _naive(rest, parts[1:])


def _sort_key(segments: tuple[str, ...], priority: int, seq: int) -> _SortKey:
    stars = segments.count(STAR)
    globstars = segments.count(GLOBSTAR)
    exact = len(segments) - stars - globstars
    return (-priority, -exact, globstars, stars, seq)


class _Node(Generic[T]):
    __slots__ = ("entries", "exact", "globstar", "is_globstar", "star")

    def __init__(self, *, is_globstar: bool = False) -> None:
        self.entries: list[tuple[_SortKey, Route[T]]] = []
        self.exact: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.globstar: _Node[T] | None = None
        self.is_globstar = is_globstar

    def child(self, segment: str) -> _Node[T] | None:
        if segment == GLOBSTAR:
            return self.globstar
        if segment == STAR:
            return self.star
        return self.exact.get(segment)

    def ensure_child(self, segment: str) -> _Node[T]:
        found = self.child(segment)
        if found is not None:
            return found
        made: _Node[T] = _Node(is_globstar=segment == GLOBSTAR)
        if segment == GLOBSTAR:
            self.globstar = made
        elif segment == STAR:
            self.star = made
        else:
            self.exact[segment] = made
        return made

    def drop_child(self, segment: str) -> None:
        if segment == GLOBSTAR:
            self.globstar = None
        elif segment == STAR:
            self.star = None
        else:
            del self.exact[segment]

    def is_empty(self) -> bool:
        return not (self.entries or self.exact or self.star or self.globstar)


class Router(Generic[T]):
    """Signal-type patterns to targets; see the module docstring for order and cost.

    Not thread-safe. For copy-on-write sharing, change a ``copy()`` and swap it in.
    """

    def __init__(
        self,
        routes: Iterable[tuple[str, T] | tuple[str, T, int]] = (),
        *,
        cache_size: int = 1024,
    ) -> None:
        if cache_size < 0:
            raise ConfigurationError(f"cache_size must be >= 0, got {cache_size}")
        self._root: _Node[T] = _Node()
        self._routes: dict[int, Route[T]] = {}
        self._pattern_counts: dict[str, int] = {}
        self._next_seq = 0
        self._cache_size = cache_size
        self._cache: dict[str, tuple[tuple[Route[T], ...], tuple[T, ...]]] = {}
        self._hits = 0
        self._misses = 0
        for spec in routes:
            if len(spec) == 2:
                self.add(spec[0], spec[1])
            else:
                self.add(spec[0], spec[1], spec[2])

    def add(self, pattern: str, target: T, priority: int = 0) -> Route[T]:
        """Add a route; several targets (or one target twice) may share a pattern."""
        segments = validate_pattern(pattern)
        route = Route(pattern, target, priority, self._next_seq)
        self._next_seq += 1
        self._insert(segments, route)
        self._cache.clear()
        return route

    def remove(self, pattern: str, target: T | None = None) -> int:
        """Remove the pattern's routes to ``target`` (compared with ==), or all of them.

        Returns how many routes were removed; an unknown pattern removes none.
        """
        segments = validate_pattern(pattern)
        path: list[tuple[_Node[T], str]] = []
        node = self._root
        for segment in segments:
            found = node.child(segment)
            if found is None:
                return 0
            path.append((node, segment))
            node = found
        kept: list[tuple[_SortKey, Route[T]]] = []
        removed = 0
        for entry in node.entries:
            route = entry[1]
            if target is None or route.target == target:
                del self._routes[route.seq]
                removed += 1
            else:
                kept.append(entry)
        if not removed:
            return 0
        node.entries = kept
        left = self._pattern_counts[pattern] - removed
        if left:
            self._pattern_counts[pattern] = left
        else:
            del self._pattern_counts[pattern]
        for parent, segment in reversed(path):
            if not node.is_empty():
                break
            parent.drop_child(segment)
            node = parent
        self._cache.clear()
        return removed

    def match(self, signal_type: str) -> tuple[T, ...]:
        """Every target whose pattern matches, in route order."""
        return self._lookup(signal_type)[1]

    def match_routes(self, signal_type: str) -> tuple[Route[T], ...]:
        """Every route whose pattern matches, in route order."""
        return self._lookup(signal_type)[0]

    def routes(self) -> list[Route[T]]:
        """All routes in insertion order."""
        return list(self._routes.values())

    def copy(self) -> Router[T]:
        """An independent router with the same routes (same ``seq`` numbers) and cache."""
        clone: Router[T] = Router(cache_size=self._cache_size)
        for route in self._routes.values():
            clone._insert(validate_pattern(route.pattern), route)
        clone._next_seq = self._next_seq
        clone._cache = dict(self._cache)
        return clone

    def cache_info(self) -> CacheInfo:
        """Hits, misses, capacity and current size of the match cache."""
        return CacheInfo(self._hits, self._misses, self._cache_size, len(self._cache))

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, pattern: object) -> bool:
        return pattern in self._pattern_counts

    def __repr__(self) -> str:
        return f"<Router routes={len(self._routes)} patterns={len(self._pattern_counts)}>"

    def _insert(self, segments: tuple[str, ...], route: Route[T]) -> None:
        node = self._root
        for segment in segments:
            node = node.ensure_child(segment)
        node.entries.append((_sort_key(segments, route.priority, route.seq), route))
        self._routes[route.seq] = route
        self._pattern_counts[route.pattern] = self._pattern_counts.get(route.pattern, 0) + 1

    def _lookup(self, signal_type: str) -> tuple[tuple[Route[T], ...], tuple[T, ...]]:
        cache = self._cache
        cached = cache.pop(signal_type, None)
        if cached is not None:
            self._hits += 1
            cache[signal_type] = cached
            return cached
        self._misses += 1
        routes = self._walk(signal_type.split("."))
        result = (routes, tuple(route.target for route in routes))
        if self._cache_size:
            if len(cache) >= self._cache_size:
                del cache[next(iter(cache))]
            cache[signal_type] = result
        return result

    def _walk(self, parts: list[str]) -> tuple[Route[T], ...]:
        end = len(parts)
        found: list[tuple[_SortKey, Route[T]]] = []
        seen: set[tuple[_Node[T], int]] = set()
        pending: list[tuple[_Node[T], int]] = [(self._root, 0)]
        while pending:
            state = pending.pop()
            if state in seen:
                continue
            seen.add(state)
            node, index = state
            if node.globstar is not None:
                pending.append((node.globstar, index))
            if index == end:
                found.extend(node.entries)
                continue
            if node.is_globstar:
                pending.append((node, index + 1))
            exact = node.exact.get(parts[index])
            if exact is not None:
                pending.append((exact, index + 1))
            if node.star is not None:
                pending.append((node.star, index + 1))
        found.sort(key=_entry_key)
        return tuple(route for _, route in found)


def _entry_key(entry: tuple[_SortKey, Route[T]]) -> _SortKey:
    return entry[0]
