"""A key-value watcher: the initial snapshot, then every later change, in revision order.

The bucket calls ``offer`` for every write; the watcher keeps what lies under its prefix
and is newer than the last revision it took (``_last``), into a bounded deque read by
``__anext__`` / ``next``. While a ``delay_watch`` fault is on (or delayed entries are
still under way) entries pass through an order-keeping ``DelayLine`` first. While its
connection is cut off from the store the watcher takes nothing; ``catch_up`` then takes,
from the live bucket, the last entry of every key written after ``_last`` — in revision
order, as a NATS watcher sees a history-1 bucket after a reconnect.

Ends: ``stop`` (or a graceful ``close`` of the connection, or deleting the bucket) ends
iteration at once — ``StopAsyncIteration``, and ``next`` returns ``None``. A full queue
marks the watcher lost: it yields what it had, raises ``WatchLost`` once, then ends. A
connection killed by the ``kill`` fault makes it raise ``ConnectionClosed`` from then on.
Iterating waits as long as it takes for the next change (that is what iteration means);
``next(timeout)`` is the bounded way to wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from agentcluster.errors import TransportError, WatchLost
from agentcluster.transport import names
from agentcluster.transport.interface import Entry
from agentcluster.transport.memory.delayline import DelayLine

if TYPE_CHECKING:
    from agentcluster.transport.memory.connection import MemoryConnection
    from agentcluster.transport.memory.kv import BucketData

__all__ = ["MemoryWatcher"]


class MemoryWatcher:
    __slots__ = (
        "_conn",
        "_error",
        "_initial",
        "_last",
        "_limit",
        "_line",
        "_lost",
        "_prefix",
        "_queue",
        "_registry",
        "_stopped",
        "_waiter",
    )

    def __init__(
        self,
        conn: MemoryConnection,
        prefix: str,
        initial: list[Entry],
        revision: int,
        pending_limit: int,
    ) -> None:
        self._conn = conn
        self._prefix = prefix
        self._initial = initial
        self._last = revision
        self._limit = pending_limit
        self._queue: deque[Entry] = deque()
        self._line: DelayLine[Entry] = DelayLine(self._enqueue, pending_limit)
        self._registry: dict[MemoryWatcher, None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._stopped = False
        self._error: TransportError | None = None

    @property
    def initial(self) -> list[Entry]:
        return list(self._initial)

    @property
    def conn_name(self) -> str:
        return self._conn.name

    def attach(self, registry: dict[MemoryWatcher, None]) -> None:
        """Remember the bucket's watcher registry, to leave it when the watcher ends."""
        self._registry = registry

    # --- taking updates -----------------------------------------------------------

    def offer(self, entry: Entry) -> None:
        if self._registry is None:
            return
        if entry.revision <= self._last or not names.key_matches_prefix(entry.key, self._prefix):
            return
        faults = self._conn.hub.faults
        if faults.store_active and faults.is_cut(self._conn.name):
            return
        self._last = entry.revision
        self._accept(entry)

    def catch_up(self, bucket: BucketData) -> None:
        """Take every change missed while cut off (called when the cut ends)."""
        for entry in bucket.since(self._prefix, self._last):
            if self._registry is None:
                return
            self._last = entry.revision
            self._accept(entry)

    def _accept(self, entry: Entry) -> None:
        delay = self._conn.hub.faults.watch_delay
        if delay <= 0 and not self._line.busy:
            self._enqueue(entry)
        elif not self._line.push(entry, delay):
            self._overflow()

    def _enqueue(self, entry: Entry) -> None:
        if self._registry is None:
            return
        if len(self._queue) >= self._limit:
            self._overflow()
            return
        self._queue.append(entry)
        self._wake()

    def _overflow(self) -> None:
        self._lost = True
        self._detach()
        self._wake()

    def _detach(self) -> None:
        if self._registry is not None:
            self._registry.pop(self, None)
            self._registry = None
        self._line.clear()
        self._conn.forget_watcher(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- ending -------------------------------------------------------------------

    async def stop(self) -> None:
        self.end()

    def end(self) -> None:
        """Stop at once: iteration ends, queued updates are discarded."""
        self._stopped = True
        self._queue.clear()
        self._detach()
        self._wake()

    def fail(self, error: TransportError) -> None:
        """Make every further read raise ``error`` (the connection was killed)."""
        self._error = error
        self._queue.clear()
        self._detach()
        self._wake()

    # --- reading ------------------------------------------------------------------

    def __aiter__(self) -> MemoryWatcher:
        return self

    async def __anext__(self) -> Entry:
        entry = await self._take(None)
        if entry is None:
            raise StopAsyncIteration
        return entry

    async def next(self, timeout: float) -> Entry | None:
        return await self._take(asyncio.get_running_loop().time() + timeout)

    async def _take(self, deadline: float | None) -> Entry | None:
        while True:
            if self._error is not None:
                raise self._error
            if self._stopped:
                return None
            if self._queue:
                return self._queue.popleft()
            if self._lost:
                self._stopped = True
                raise WatchLost("watcher fell behind and dropped updates; rebuild from a new watch")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                return None
            finally:
                if self._waiter is waiter:
                    self._waiter = None
