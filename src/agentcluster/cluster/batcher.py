"""The outbound batcher's bookkeeping: one bounded queue of envelopes per destination subject.

The router adds encoded envelopes here and, when a queue goes from idle to busy, schedules
one flush for that subject on the event loop (no timer): by the time the flush runs, every
envelope added meanwhile — a whole burst — is waiting, and ``take`` hands them back cut
into batches of at most ``max_count`` envelopes and ``max_bytes`` bytes, in the order they
were added. A lone envelope therefore leaves on the next loop iteration, and a burst
leaves together.

Bounds: a queue holds at most ``max_queued`` envelopes and ``max_queued_bytes`` bytes of
signals; ``add`` refuses more (the router answers ``Overloaded``). Control envelopes
(acknowledgements, call results, cancels) are admitted past the bound up to twice it, since
refusing them only makes the peer retry; beyond that they are refused too.

Pure: no asyncio, no clock; the router owns the scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentcluster.cluster.wire import cut_batches
from agentcluster.errors import ConfigurationError

__all__ = ["Batcher"]


@dataclass(slots=True)
class _Queue:
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class Batcher:
    __slots__ = ("_queues", "max_bytes", "max_count", "max_queued", "max_queued_bytes")

    def __init__(
        self, *, max_count: int, max_bytes: int, max_queued: int, max_queued_bytes: int
    ) -> None:
        for name, value in (
            ("max_count", max_count),
            ("max_bytes", max_bytes),
            ("max_queued", max_queued),
            ("max_queued_bytes", max_queued_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, not {value!r}")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self._queues: dict[str, _Queue] = {}

    def add(self, subject: str, part: bytes, *, control: bool = False) -> bool:
        """Queue ``part`` for ``subject``; ``False`` (nothing queued) when the queue is full."""
        queue = self._queues.get(subject)
        if queue is None:
            queue = self._queues[subject] = _Queue()
        factor = 2 if control else 1
        if (
            len(queue.parts) >= self.max_queued * factor
            or queue.size + len(part) > self.max_queued_bytes * factor
        ):
            return False
        queue.parts.append(part)
        queue.size += len(part)
        return True

    def take(self, subject: str) -> list[bytes]:
        """Everything queued for ``subject`` as batches (JSON arrays), oldest first."""
        queue = self._queues.pop(subject, None)
        if queue is None or not queue.parts:
            return []
        return cut_batches(queue.parts, self.max_count, self.max_bytes)

    def queued(self, subject: str) -> int:
        queue = self._queues.get(subject)
        return len(queue.parts) if queue is not None else 0

    def subjects(self) -> list[str]:
        return list(self._queues)

    def clear(self) -> int:
        """Drop everything queued; returns how many envelopes were dropped."""
        dropped = sum(len(q.parts) for q in self._queues.values())
        self._queues.clear()
        return dropped
