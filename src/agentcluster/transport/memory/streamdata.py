"""The stored side of a durable stream: messages by sequence, limits, de-duplication.

Messages sit in a dict by stream sequence (inserted in order, never re-inserted), each
subject keeps a sorted list of its sequences (for ``next_message``, ``purge`` and
per-subject limits, by bisection), and ``first`` tracks the lowest stored sequence so
that trimming from the front stays amortised O(1). Time-based work — ``max_age``
expiry and forgetting ``msg_id``s older than the duplicate window — happens lazily, at
the next operation, against the loop time the caller passes in.

Limits follow JetStream: a subject at ``max_msgs_per_subject`` refuses a new message
with ``SubjectFull`` under ``discard="new"`` and drops its oldest under ``"old"``;
``max_msgs`` and ``max_bytes`` drop the oldest messages of the stream under ``"old"`` and
refuse with ``SubstrateError`` under ``"new"`` (codes 10077 and 10047). Sizes count the
payload bytes. Limits of zero or below mean no limit.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agentcluster.errors import SubjectFull, SubstrateError
from agentcluster.transport import names
from agentcluster.transport.interface import PubAck, StoredMessage, StreamConfig, StreamState

if TYPE_CHECKING:
    from agentcluster.transport.memory.consumer import ConsumerState

__all__ = ["StreamData"]


class StreamData:
    __slots__ = (
        "by_subject",
        "config",
        "consumers",
        "dedup",
        "dedup_order",
        "first",
        "last_seq",
        "messages",
        "size",
        "stamps",
    )

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.messages: dict[int, StoredMessage] = {}
        self.stamps: dict[int, float] = {}
        self.by_subject: dict[str, list[int]] = {}
        self.first = 1
        self.last_seq = 0
        self.size = 0
        self.dedup: dict[str, tuple[int, float]] = {}
        self.dedup_order: deque[tuple[float, str]] = deque()
        self.consumers: dict[str, ConsumerState] = {}

    def snapshot(self) -> StreamData:
        copy = StreamData(self.config)
        copy.messages = dict(self.messages)
        copy.stamps = dict(self.stamps)
        copy.by_subject = {s: list(seqs) for s, seqs in self.by_subject.items()}
        copy.first = self.first
        copy.last_seq = self.last_seq
        copy.size = self.size
        return copy

    def covers(self, subject: str) -> bool:
        return any(names.subject_matches(p, subject) for p in self.config.subjects)

    def wake_consumers(self) -> None:
        for consumer in self.consumers.values():
            consumer.wake()

    # --- reads --------------------------------------------------------------------

    def state(self) -> StreamState:
        if not self.messages:
            first = self.last_seq + 1 if self.last_seq else 0
            return StreamState(0, first, self.last_seq)
        return StreamState(len(self.messages), self.first, self.last_seq)

    def next_message(self, subject: str, from_seq: int) -> StoredMessage | None:
        if "*" in subject or ">" in subject:
            for seq in range(max(from_seq, self.first), self.last_seq + 1):
                msg = self.messages.get(seq)
                if msg is not None and names.subject_matches(subject, msg.subject):
                    return msg
            return None
        seqs = self.by_subject.get(subject)
        if not seqs:
            return None
        i = bisect_left(seqs, from_seq)
        return self.messages[seqs[i]] if i < len(seqs) else None

    # --- time ---------------------------------------------------------------------

    def expire(self, now: float) -> None:
        max_age = self.config.max_age
        if max_age > 0 and self.messages:
            horizon = now - max_age
            while self.messages and self.stamps[self.first] <= horizon:
                self._remove(self.first)
        horizon = now - self.config.duplicate_window
        order = self.dedup_order
        while order and order[0][0] <= horizon:
            _, msg_id = order.popleft()
            if msg_id in self.dedup and self.dedup[msg_id][1] <= horizon:
                del self.dedup[msg_id]

    # --- writes -------------------------------------------------------------------

    def publish(
        self,
        subject: str,
        data: bytes,
        msg_id: str | None,
        headers: Mapping[str, str] | None,
        now: float,
    ) -> PubAck:
        name = self.config.name
        self.expire(now)
        if msg_id is not None and msg_id in self.dedup:
            return PubAck(name, self.dedup[msg_id][0], duplicate=True)
        self._make_room(subject, len(data))
        self.last_seq += 1
        seq = self.last_seq
        if not self.messages:
            self.first = seq
        self.messages[seq] = StoredMessage(name, subject, seq, bytes(data), headers)
        self.stamps[seq] = now
        self.by_subject.setdefault(subject, []).append(seq)
        self.size += len(data)
        if msg_id is not None and self.config.duplicate_window > 0:
            self.dedup[msg_id] = (seq, now)
            self.dedup_order.append((now, msg_id))
        self.wake_consumers()
        return PubAck(name, seq)

    def _make_room(self, subject: str, size: int) -> None:
        cfg = self.config
        discard_new = cfg.discard == "new"
        per_subject = cfg.max_msgs_per_subject
        seqs = self.by_subject.get(subject)
        if per_subject > 0 and seqs and len(seqs) >= per_subject:
            if discard_new:
                raise SubjectFull(cfg.name, subject)
            while seqs and len(seqs) >= per_subject:
                self._remove(seqs[0])
        if cfg.max_msgs > 0 and len(self.messages) >= cfg.max_msgs:
            if discard_new:
                raise SubstrateError(f"stream {cfg.name!r}: maximum messages exceeded", code=10077)
            while len(self.messages) >= cfg.max_msgs:
                self._remove(self.first)
        if cfg.max_bytes > 0 and self.size + size > cfg.max_bytes:
            if discard_new:
                raise SubstrateError(f"stream {cfg.name!r}: maximum bytes exceeded", code=10047)
            while self.messages and self.size + size > cfg.max_bytes:
                self._remove(self.first)

    def enforce_limits(self) -> None:
        """Trim to the (possibly just updated) limits, oldest first."""
        cfg = self.config
        if cfg.max_msgs_per_subject > 0:
            for seqs in list(self.by_subject.values()):
                while len(seqs) > cfg.max_msgs_per_subject:
                    self._remove(seqs[0])
        while cfg.max_msgs > 0 and len(self.messages) > cfg.max_msgs:
            self._remove(self.first)
        while cfg.max_bytes > 0 and self.size > cfg.max_bytes:
            self._remove(self.first)

    def purge(self, subject: str, below_seq: int) -> None:
        if "*" in subject or ">" in subject:
            subjects = [s for s in self.by_subject if names.subject_matches(subject, s)]
        else:
            subjects = [subject] if subject in self.by_subject else []
        for subj in subjects:
            seqs = self.by_subject[subj]
            for seq in seqs[: bisect_left(seqs, below_seq)]:
                self._remove(seq)

    def _remove(self, seq: int) -> None:
        msg = self.messages.pop(seq)
        del self.stamps[seq]
        self.size -= len(msg.data)
        seqs = self.by_subject[msg.subject]
        i = bisect_left(seqs, seq)
        del seqs[i]
        if not seqs:
            del self.by_subject[msg.subject]
        if seq == self.first:
            last = self.last_seq
            first = seq + 1
            while first <= last and first not in self.messages:
                first += 1
            self.first = first
