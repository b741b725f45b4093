"""Round robin per key, for a lone ``LocalNode``'s ``Capability(name, "one")`` targets.

Over the holders as the caller lists them (registration order), so consecutive signals
spread evenly and a given history picks the same agents. A cluster node balances with the
strategies of ``core.request_balance`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
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
