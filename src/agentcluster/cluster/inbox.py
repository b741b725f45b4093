"""The shared durable inbox stream ``INBOX``: one subject per durable agent.

Why this layout (DESIGN.md, "Agents: modes, state and timers"): one stream keeps the
server's load independent of the number of agents; ``discard="new"`` with a per-subject
message limit refuses a write to a full inbox (a retryable ``SubjectFull`` the sender
backs off on) instead of silently deleting the oldest — acknowledged — signal, as the
default ``discard="old"`` would; and there is no ``max_age``, because a signal is done
only when a committed snapshot covers it, however long that takes.

The owner stores each accepted signal with ``Nats-Msg-Id`` = the signal's id, so a
sender's retry within the duplicate window (120 s) is answered with the original sequence
instead of being stored twice; that is why a ``send`` to a durable agent may not have a
deadline longer than the window. Activation walks a subject with direct "next message
for subject" reads (no consumer state on the server), and the subject is purged below the
floor of each committed snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from agentcluster.core import codec
from agentcluster.core.signal import Signal
from agentcluster.transport.interface import Connection, Storage, Stream, StreamConfig
from agentcluster.transport.names import encode_token

__all__ = [
    "DUPLICATE_WINDOW",
    "INBOX_STREAM",
    "MAX_PER_SUBJECT",
    "DurableInbox",
    "inbox_config",
    "inbox_subject",
]

INBOX_STREAM = "INBOX"
DUPLICATE_WINDOW = 120.0
"""Seconds within which a repeated signal id is recognised; bounds a durable send's deadline."""
MAX_PER_SUBJECT = 100_000
"""Signals one durable agent's inbox may hold unapplied before sends are refused."""
_PREFIX = "inbox"


def inbox_subject(agent_id: str) -> str:
    return f"{_PREFIX}.{encode_token(agent_id)}"


def inbox_config(
    replicas: int = 1, storage: Storage = "file", max_per_subject: int = MAX_PER_SUBJECT
) -> StreamConfig:
    return StreamConfig(
        INBOX_STREAM,
        (f"{_PREFIX}.>",),
        replicas=replicas,
        storage=storage,
        discard="new",
        max_msgs_per_subject=max_per_subject,
        max_age=0.0,
        duplicate_window=DUPLICATE_WINDOW,
    )


class DurableInbox:
    """Stores, walks and purges durable agents' inbox subjects."""

    def __init__(self, stream: Stream, *, timeout: float = 2.0) -> None:
        self._stream = stream
        self._timeout = timeout

    @classmethod
    async def open(
        cls, conn: Connection, *, replicas: int = 1, storage: Storage = "file"
    ) -> DurableInbox:
        return cls(await conn.stream(inbox_config(replicas, storage)))

    async def store(self, agent_id: str, signal: Signal, now: float) -> tuple[int, bool]:
        """Store ``signal``; returns its stream sequence and whether it was a duplicate
        (stored before under the same id: the original sequence)."""
        ack = await self._stream.publish(
            inbox_subject(agent_id),
            codec.encode(signal, now),
            msg_id=signal.id,
            timeout=self._timeout,
        )
        return ack.seq, ack.duplicate

    async def walk(
        self, agent_id: str, from_seq: int, now: float
    ) -> AsyncIterator[tuple[int, Signal | None, bytes]]:
        """Every message of the agent's subject from ``from_seq`` on, in order: (sequence,
        the signal or None when undecodable, the raw bytes)."""
        subject = inbox_subject(agent_id)
        seq = max(1, from_seq)
        while True:
            found = await self._stream.next_message(subject, seq, timeout=self._timeout)
            if found is None:
                return
            try:
                signal: Signal | None = codec.decode(found.data, now)
            except Exception:
                signal = None
            yield found.seq, signal, found.data
            seq = found.seq + 1

    async def purge(self, agent_id: str, below: int) -> None:
        if below > 1:
            await self._stream.purge(
                inbox_subject(agent_id), below_seq=below, timeout=self._timeout
            )
