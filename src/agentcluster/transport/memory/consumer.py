"""Durable pull consumers: a shared position, a pending set, redelivery after ``ack_wait``.

A ``ConsumerState`` lives in its stream's data under its durable name, so every
connection that binds the name shares one position (``next_seq``) and one pending set:
delivered, not yet acknowledged sequences with their delivery count and the loop time
at which they become deliverable again. ``take`` hands out due redeliveries first
(lowest sequence first), then fresh messages, never letting the pending set grow past
``max_ack_pending``. A pending message whose count reached ``max_deliver`` is dropped
from the set when its deadline passes, and is not delivered again; one that left the
stream (purged, expired, trimmed) is dropped too.

Nothing runs on a timer: ``fetch`` computes the next redelivery deadline and waits for
it, for a publish or settlement that wakes the consumer, or for its own timeout,
whichever comes first. A connection that dies simply stops acking; its deliveries come
back after ``ack_wait``, to whichever fetch comes next, as on NATS. Settling an already
settled delivery does nothing; a settlement from a connection cut off from the store is
lost (so the message comes back after ``ack_wait``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agentcluster.errors import ConfigurationError, SubstrateError
from agentcluster.transport import names
from agentcluster.transport.interface import ConsumerConfig, Delivery, StoredMessage

if TYPE_CHECKING:
    from agentcluster.transport.memory.connection import MemoryConnection
    from agentcluster.transport.memory.streamdata import StreamData

__all__ = ["ConsumerState", "MemoryConsumer", "MemoryDelivery"]


class _Pending:
    __slots__ = ("count", "deadline")

    def __init__(self, count: int, deadline: float) -> None:
        self.count = count
        self.deadline = deadline


class ConsumerState:
    __slots__ = ("config", "next_seq", "pending", "waiters")

    def __init__(self, config: ConsumerConfig, start: int) -> None:
        self.config = config
        self.next_seq = start
        self.pending: dict[int, _Pending] = {}
        self.waiters: dict[asyncio.Future[None], None] = {}

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, {}
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def take(self, stream: StreamData, batch: int, now: float) -> list[tuple[StoredMessage, int]]:
        cfg = self.config
        out: list[tuple[StoredMessage, int]] = []
        pending = self.pending
        for seq in sorted(pending):
            if len(out) >= batch:
                return out
            entry = pending[seq]
            if entry.deadline > now:
                continue
            msg = stream.messages.get(seq)
            if msg is None or 0 < cfg.max_deliver <= entry.count:
                del pending[seq]
                continue
            entry.count += 1
            entry.deadline = now + cfg.ack_wait
            out.append((msg, entry.count))
        self.next_seq = max(self.next_seq, stream.first)
        limit = cfg.max_ack_pending
        wanted = cfg.filter_subject
        while len(out) < batch and self.next_seq <= stream.last_seq:
            if 0 < limit <= len(pending):
                break
            seq = self.next_seq
            self.next_seq += 1
            msg = stream.messages.get(seq)
            if msg is None or (
                wanted is not None and not names.subject_matches(wanted, msg.subject)
            ):
                continue
            pending[seq] = _Pending(1, now + cfg.ack_wait)
            out.append((msg, 1))
        return out

    def next_deadline(self) -> float | None:
        if not self.pending:
            return None
        return min(p.deadline for p in self.pending.values())

    def ack(self, seq: int) -> None:
        if self.pending.pop(seq, None) is not None:
            self.wake()

    def nak(self, seq: int, at: float) -> None:
        entry = self.pending.get(seq)
        if entry is not None:
            entry.deadline = at
            self.wake()

    def extend(self, seq: int, at: float) -> None:
        entry = self.pending.get(seq)
        if entry is not None:
            entry.deadline = at


def _consumer_gone(stream: str, durable: str) -> SubstrateError:
    return SubstrateError(f"consumer {durable!r} of stream {stream!r} not found", code=10014)


class MemoryConsumer:
    __slots__ = ("_conn", "_durable", "_stream")

    def __init__(self, conn: MemoryConnection, stream: str, durable: str) -> None:
        self._conn = conn
        self._stream = stream
        self._durable = durable

    @property
    def name(self) -> str:
        return self._durable

    def _lookup(self) -> tuple[StreamData, ConsumerState]:
        stream = self._conn.hub.store.streams.get(self._stream)
        state = stream.consumers.get(self._durable) if stream is not None else None
        if stream is None or state is None:
            raise _consumer_gone(self._stream, self._durable)
        return stream, state

    async def fetch(self, batch: int = 1, *, timeout: float) -> list[Delivery]:
        conn = self._conn
        conn.ensure_open()
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigurationError(f"batch must be an int >= 1, not {batch!r}")
        self._lookup()
        faults = conn.hub.faults
        if faults.store_active and faults.is_cut(conn.name):
            await conn.pause(timeout)
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            stream, state = self._lookup()
            now = loop.time()
            stream.expire(now)
            taken = state.take(stream, batch, now)
            if taken:
                return [MemoryDelivery(conn, self._stream, self._durable, m, n) for m, n in taken]
            wake_at = state.next_deadline()
            until = deadline if wake_at is None else min(deadline, wake_at)
            if now >= deadline:
                return []
            waiter: asyncio.Future[None] = loop.create_future()
            state.waiters[waiter] = None
            try:
                await conn.park(waiter, max(0.0, until - now))
            finally:
                state.waiters.pop(waiter, None)


class MemoryDelivery:
    __slots__ = ("_conn", "_durable", "_msg", "_num", "_settled", "_stream")

    def __init__(
        self, conn: MemoryConnection, stream: str, durable: str, msg: StoredMessage, num: int
    ) -> None:
        self._conn = conn
        self._stream = stream
        self._durable = durable
        self._msg = msg
        self._num = num
        self._settled = False

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def seq(self) -> int:
        return self._msg.seq

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def headers(self) -> Mapping[str, str] | None:
        return self._msg.headers

    @property
    def num_delivered(self) -> int:
        return self._num

    def _state(self, settle: bool) -> ConsumerState | None:
        conn = self._conn
        conn.ensure_open()
        if self._settled:
            return None
        if settle:
            self._settled = True
        faults = conn.hub.faults
        if faults.store_active and faults.is_cut(conn.name):
            return None
        stream = conn.hub.store.streams.get(self._stream)
        return stream.consumers.get(self._durable) if stream is not None else None

    async def ack(self) -> None:
        state = self._state(settle=True)
        if state is not None:
            state.ack(self.seq)

    async def nak(self, delay: float | None = None) -> None:
        state = self._state(settle=True)
        if state is not None:
            state.nak(self.seq, asyncio.get_running_loop().time() + (delay or 0.0))

    async def in_progress(self) -> None:
        state = self._state(settle=False)
        if state is not None:
            now = asyncio.get_running_loop().time()
            state.extend(self.seq, now + state.config.ack_wait)

    async def term(self) -> None:
        state = self._state(settle=True)
        if state is not None:
            state.ack(self.seq)
