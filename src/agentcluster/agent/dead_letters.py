"""Dead letters: every signal that could not be delivered or run, with its reason.

Nothing is dropped silently. The store is bounded (it is memory); when it is full the
oldest entry makes room and is counted in ``evicted``, and every dead letter is also
emitted as telemetry (``agentcluster.signal.dead_lettered``) so that a handler can ship
it somewhere durable. A cluster node also sets ``sink``, which ships each letter to the
bounded durable stream ``DEADLETTERS`` (``cluster.dead_letters``), so they outlive it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentcluster.core.signal import Signal
from agentcluster.errors import ConfigurationError
from agentcluster.telemetry import Telemetry

__all__ = ["DeadLetter", "DeadLetterStore"]

_EVENT = ("agentcluster", "signal", "dead_lettered")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    signal: Signal
    reason: str
    agent_id: str | None
    node_id: str | None
    at: float
    error: dict[str, Any] | None = field(default=None)


class DeadLetterStore:
    __slots__ = ("_entries", "_telemetry", "by_reason", "evicted", "limit", "sink", "total")

    def __init__(self, telemetry: Telemetry, limit: int = 10_000) -> None:
        if limit < 1:
            raise ConfigurationError(f"dead letter limit must be at least 1, got {limit!r}")
        self.limit = limit
        self._entries: deque[DeadLetter] = deque(maxlen=limit)
        self._telemetry = telemetry
        self.total = 0
        self.evicted = 0
        self.by_reason: Counter[str] = Counter()
        # Called with every letter, synchronously; must not block (a cluster node queues
        # it for its durable stream).
        self.sink: Callable[[DeadLetter], None] | None = None

    def add(self, letter: DeadLetter) -> None:
        if len(self._entries) == self.limit:
            self.evicted += 1
        self._entries.append(letter)
        self.total += 1
        self.by_reason[letter.reason] += 1
        if self.sink is not None:
            self.sink(letter)
        if self._telemetry.enabled:
            self._telemetry.emit(
                _EVENT,
                {"count": 1},
                {
                    "reason": letter.reason,
                    "agent_id": letter.agent_id,
                    "node_id": letter.node_id,
                    "signal_id": letter.signal.id,
                    "signal_type": letter.signal.type,
                    "error": letter.error,
                },
            )

    def list(self, reason: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        """Kept dead letters, oldest first; only ``reason``'s, and only the last ``limit``."""
        if limit is not None and limit < 0:
            raise ConfigurationError(f"limit must be >= 0, got {limit!r}")
        entries = [e for e in self._entries if reason is None or e.reason == reason]
        if limit is None:
            return entries
        return entries[max(0, len(entries) - limit) :]

    def __len__(self) -> int:
        return len(self._entries)
