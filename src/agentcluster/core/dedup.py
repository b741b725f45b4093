"""The receiver's memory of accepted signal ids, which makes ``send`` at-least-once safe.

A sender retries a ``send`` with the same id until it is acknowledged or its deadline
passes, so the receiver must drop a copy of anything it already accepted. It remembers
each accepted id until that signal's deadline (after which no copy can be in flight: the
sender has given up). The memory is bounded; when it is full of ids whose deadlines have
not passed, it refuses the new signal (the shell answers a retryable ``Overloaded``)
rather than forget an id early, which could let a duplicate through.

Expiry is lazy and amortised: entries sit in a heap ordered by deadline and are dropped
when ``accept`` or ``expire`` runs past them.
"""

from __future__ import annotations

import heapq
from enum import StrEnum

from agentcluster.errors import ConfigurationError

__all__ = ["AcceptedIds", "Admission"]


class Admission(StrEnum):
    ACCEPTED = "accepted"
    """New: deliver it and remember it."""
    DUPLICATE = "duplicate"
    """Seen before its deadline: acknowledge again, do not deliver."""
    FULL = "full"
    """The memory is full of live ids: refuse, retryable."""


class AcceptedIds:
    """Ids accepted and not yet past their deadline, at most ``capacity`` of them."""

    __slots__ = ("_capacity", "_deadlines", "_heap")

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ConfigurationError(f"capacity must be >= 1, not {capacity!r}")
        self._capacity = capacity
        self._deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, signal_id: object) -> bool:
        return signal_id in self._deadlines

    def accept(self, signal_id: str, deadline: float, now: float) -> Admission:
        """Admit ``signal_id`` (deadline in the same monotonic seconds as ``now``)."""
        known = self._deadlines.get(signal_id)
        if known is not None and known > now:
            if deadline > known:
                self._deadlines[signal_id] = deadline
                heapq.heappush(self._heap, (deadline, signal_id))
            return Admission.DUPLICATE
        if len(self._deadlines) >= self._capacity:
            self.expire(now)
            if len(self._deadlines) >= self._capacity:
                return Admission.FULL
        self._deadlines[signal_id] = deadline
        heapq.heappush(self._heap, (deadline, signal_id))
        if len(self._heap) > 2 * self._capacity:
            self._compact()
        return Admission.ACCEPTED

    def expire(self, now: float) -> int:
        """Forget ids whose deadline is at or before ``now``; returns how many."""
        heap = self._heap
        deadlines = self._deadlines
        dropped = 0
        while heap and heap[0][0] <= now:
            deadline, signal_id = heapq.heappop(heap)
            if deadlines.get(signal_id) == deadline:
                del deadlines[signal_id]
                dropped += 1
        return dropped

    def next_deadline(self) -> float | None:
        """When the oldest remembered id may be forgotten (for the shell's timer)."""
        return self._heap[0][0] if self._heap else None

    def _compact(self) -> None:
        """Drop heap entries superseded by a later deadline for the same id."""
        self._heap = [(d, i) for i, d in self._deadlines.items()]
        heapq.heapify(self._heap)
