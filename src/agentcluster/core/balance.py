"""Choosing one holder of a capability for ``Capability(name, "one")`` targets.

Round robin per capability name over the holders as the caller lists them (registration
order), so consecutive signals spread evenly and a given history picks the same agents.
The other request strategies of the seeds (least connections, latency aware, …) join
this module with the placement issue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["RoundRobin"]

T = TypeVar("T")


class RoundRobin:
    """One turn counter per key (a capability name)."""

    __slots__ = ("_turns",)

    def __init__(self) -> None:
        self._turns: dict[str, int] = {}

    def pick(self, key: str, holders: Sequence[T]) -> T:
        """The next holder for ``key``; ``holders`` must not be empty."""
        if not holders:
            raise ValueError(f"no holders to pick from for {key!r}")
        turn = self._turns.get(key, 0)
        self._turns[key] = turn + 1
        return holders[turn % len(holders)]

    def pick_heard(self, key: str, holders: Sequence[T], suspected: Callable[[T], bool]) -> T:
        """The next holder for ``key`` that is not ``suspected``, passing over suspected
        ones; when every holder is suspected, the plain next turn (suspicion steers the
        choice, it never empties it). Either way the turn moves past the holder chosen."""
        if not holders:
            raise ValueError(f"no holders to pick from for {key!r}")
        turn = self._turns.get(key, 0)
        count = len(holders)
        for offset in range(count):
            holder = holders[(turn + offset) % count]
            if not suspected(holder):
                self._turns[key] = turn + offset + 1
                return holder
        self._turns[key] = turn + 1
        return holders[turn % count]
