"""Key-value watches and key listings: a server-filtered, ordered push consumer.

nats-py's ``KeyWatcher`` queues at most 256 entries and its ``keys(filters=…)`` matches
substrings on the client, so this module runs its own consumer instead:

1. subscribe an inbox (its message limit at least ``pending_limit``, and never below what
   one socket read can hand over at once), then create an ephemeral push consumer on
   ``$KV.<bucket>.<prefix>.>`` (``>`` for every key) delivering the last message per subject
   first, with flow control and idle heartbeats, in memory, one replica. The server filters
   by whole tokens, exactly ``names.key_matches_prefix``.
2. The snapshot is complete when ``num_pending`` messages (from the create reply) arrived, or
   when a message says nothing is pending after it. Until then entries fold into a map
   (a delete removes its key), so ``initial`` is the bucket's state at one moment, in
   revision order. ``start`` waits for it, failing with ``RequestTimeout`` if no message
   arrives for ``timeout`` seconds (a large bucket may take longer in total).
3. Then every message is a live ``Entry`` in a bounded queue.

Nothing is ever silently missed: the watch is *lost* (iteration raises ``WatchLost``) when
nats-py drops a message (slow consumer), when its queue of unread entries is full, when a
consumer sequence is skipped (messages pushed while disconnected), when a heartbeat says the
server delivered more than arrived, when heartbeats stop for three intervals (the consumer
is gone, e.g. its server died), or when the server reports the consumer deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from agentcluster.errors import (
    AgentClusterError,
    ConfigurationError,
    ConnectionClosed,
    RequestTimeout,
    WatchLost,
)
from agentcluster.transport.interface import Entry, Operation
from agentcluster.transport.nats.wire import API, KV_OPERATION, STATUS, ack_metadata, nanos

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from agentcluster.transport.nats.connection import NatsConnection

__all__ = ["NatsWatcher"]

_log = logging.getLogger("agentcluster.transport.nats")

_DELETE_MARKERS = ("DEL", "PURGE")
_MISSED_HEARTBEATS = 3
_MIN_SUB_PENDING = 65536
"""Floor of the nats-py subscription's message limit. Our callback empties it at once into
the snapshot or the watcher's queue (bounded by ``pending_limit``), but one socket read can
hand it hundreds of small messages before the callback runs."""
_INACTIVE_THRESHOLD = 30.0
"""Seconds the server keeps the consumer without interest (survives a short reconnect)."""


class NatsWatcher:
    """Changes under a prefix of one bucket; see the module docstring."""

    def __init__(
        self,
        conn: NatsConnection,
        bucket: str,
        prefix: str,
        pending_limit: int,
        keys_only: bool,
    ) -> None:
        self._conn = conn
        self._bucket = bucket
        self._stream = f"KV_{bucket}"
        self._key_start = len(f"$KV.{bucket}.")
        self._filter = f"$KV.{bucket}.{prefix}.>" if prefix else f"$KV.{bucket}.>"
        self._prefix = prefix
        self._pending_limit = pending_limit
        self._keys_only = keys_only
        self._loop = asyncio.get_running_loop()
        self._sub: Any = None
        self._consumer: str | None = None
        # snapshot phase
        self._loading = True
        self._snapshot: dict[str, Entry] = {}
        self._received = 0
        self._expected: int | None = None
        self._loaded: asyncio.Future[None] = self._loop.create_future()
        self._initial: list[Entry] = []
        # live phase
        self._queue: deque[Entry] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._cseq = 0
        self._lost: str | None = None
        self._error: AgentClusterError | None = None
        self._stopped = False
        self._heard = self._loop.time()
        self._heartbeat = conn.config.watch_heartbeat
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def start(
        cls,
        conn: NatsConnection,
        bucket: str,
        prefix: str,
        *,
        pending_limit: int,
        keys_only: bool,
        timeout: float,
    ) -> NatsWatcher:
        if not isinstance(pending_limit, int) or pending_limit < 1:
            raise ConfigurationError(f"watch: pending_limit {pending_limit!r} must be >= 1")
        watcher = cls(conn, bucket, prefix, pending_limit, keys_only)
        try:
            await watcher._open(timeout)
        except BaseException:
            try:
                await watcher.stop()
            except Exception as exc:  # the original error matters more
                _log.debug("stopping a watch that failed to start: %r", exc)
            raise
        return watcher

    async def _open(self, timeout: float) -> None:
        conn = self._conn
        what = f"watch {self._prefix or '>'!r} in bucket {self._bucket!r}"
        inbox = conn._new_inbox()
        self._sub = await conn._subscribe_owned(
            inbox, self._on_message, self, max(self._pending_limit, _MIN_SUB_PENDING), what
        )
        conn._watchers.add(self)
        config: dict[str, Any] = {
            "deliver_subject": inbox,
            "deliver_policy": "last_per_subject",
            "ack_policy": "none",
            "max_deliver": 1,
            "filter_subject": self._filter,
            "flow_control": True,
            "idle_heartbeat": nanos(self._heartbeat),
            "inactive_threshold": nanos(max(_INACTIVE_THRESHOLD, 6 * self._heartbeat)),
            "mem_storage": True,
            "num_replicas": 1,
        }
        if self._keys_only:
            config["headers_only"] = True
        reply = await conn._api(
            f"{API}.CONSUMER.CREATE.{self._stream}",
            {"stream_name": self._stream, "config": config},
            timeout,
            what,
        )
        self._consumer = str(reply["name"])
        self._expected = int(reply.get("num_pending", 0))
        self._heard = self._loop.time()
        self._arm(self._heartbeat * _MISSED_HEARTBEATS)
        if self._received >= self._expected:
            self._finish_loading()
        seen = -1
        while not self._loaded.done():
            if self._lost is not None or self._stopped:
                break
            if self._received == seen:
                raise RequestTimeout(
                    f"{what}: the snapshot stalled at {self._received} of "
                    f"{self._expected} entries for {timeout}s"
                )
            seen = self._received
            await asyncio.wait({self._loaded}, timeout=timeout)
        if self._lost is not None:
            raise WatchLost(f"{what}: {self._lost}")
        if self._stopped:
            raise ConnectionClosed(f"{what}: the connection closed while loading")

    # --- Watcher ----------------------------------------------------------------------

    @property
    def initial(self) -> list[Entry]:
        return self._initial

    def __aiter__(self) -> NatsWatcher:
        return self

    async def __anext__(self) -> Entry:
        entry = await self._take(None)
        if entry is None:
            raise StopAsyncIteration
        return entry

    async def next(self, timeout: float) -> Entry | None:
        return await self._take(self._loop.time() + timeout)

    async def _take(self, deadline: float | None) -> Entry | None:
        """The next update; ``None`` once stopped or at ``deadline``. Updates that arrived
        before a loss are delivered first, then ``WatchLost`` once, then nothing."""
        while True:
            if self._error is not None:
                raise self._error
            if self._stopped:
                return None
            if self._queue:
                return self._queue.popleft()
            if self._lost is not None:
                try:
                    await self.stop()
                except Exception as exc:  # the loss is what the reader must hear about
                    _log.debug("stopping a lost watch: %r", exc)
                raise WatchLost(
                    f"watch on bucket {self._bucket!r} lost updates: {self._lost}; rebuild"
                )
            waiter = self._waiter
            if waiter is None or waiter.done():
                waiter = self._waiter = self._loop.create_future()
            if deadline is None:
                await waiter
                continue
            left = deadline - self._loop.time()
            if left <= 0:
                return None
            await asyncio.wait({waiter}, timeout=left)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._halt()
        conn = self._conn
        conn._watchers.discard(self)
        if self._sub is not None and not conn.is_closed:
            await conn._unsubscribe(self._sub, "stop watch")
            if self._consumer is not None:
                # Fire and forget: the reply is not awaited (the consumer would expire anyway).
                await conn._send(f"{API}.CONSUMER.DELETE.{self._stream}.{self._consumer}", b"")

    # --- delivery (runs in the nats-py subscription task) ------------------------------

    async def _on_message(self, msg: Msg) -> None:
        self._heard = self._loop.time()
        headers = msg.headers
        if headers is not None and STATUS in headers:
            await self._on_control(msg, headers)
            return
        if self._lost is not None or self._stopped:
            return
        _delivered, sseq, cseq, pending = ack_metadata(msg.reply)
        if cseq != self._cseq + 1:
            self._lose(f"consumer sequence jumped from {self._cseq} to {cseq}")
            return
        self._cseq = cseq
        key = msg.subject[self._key_start :]
        if headers is not None and headers.get(KV_OPERATION) in _DELETE_MARKERS:
            entry = Entry(self._bucket, key, b"", sseq, Operation.DELETE)
        else:
            entry = Entry(self._bucket, key, b"" if self._keys_only else msg.data, sseq)
        if self._loading:
            self._received += 1
            if entry.operation is Operation.DELETE:
                self._snapshot.pop(key, None)
            else:
                self._snapshot[key] = entry
            if pending == 0 or (self._expected is not None and self._received >= self._expected):
                self._finish_loading()
            return
        if len(self._queue) >= self._pending_limit:
            self._lose(f"more than {self._pending_limit} unread updates")
            return
        self._queue.append(entry)
        self._wake()

    async def _on_control(self, msg: Msg, headers: dict[str, str]) -> None:
        if headers.get(STATUS) != "100":
            if not self._stopped:
                self._lose(f"the server ended the consumer ({headers.get('Description', '?')})")
            return
        if msg.reply:  # flow control: answer once everything before it is processed
            await self._conn._send(msg.reply, b"")
            return
        stalled = headers.get("Nats-Consumer-Stalled")
        if stalled:
            await self._conn._send(stalled, b"")
        last = headers.get("Nats-Last-Consumer")
        if last is not None and int(last) != self._cseq and not self._stopped:
            self._lose(f"the server delivered up to {last}, {self._cseq} arrived")

    def _message_dropped(self) -> None:
        self._lose("nats-py dropped messages (slow consumer)")

    # --- state ------------------------------------------------------------------------

    def _finish_loading(self) -> None:
        if not self._loading:
            return
        self._loading = False
        self._initial = sorted(self._snapshot.values(), key=lambda e: e.revision)
        self._snapshot = {}
        if not self._loaded.done():
            self._loaded.set_result(None)

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
            _log.warning("watch on bucket %r lost: %s", self._bucket, reason)
        if not self._loaded.done():
            self._loaded.set_result(None)
        self._wake()

    def _fail(self, error: AgentClusterError) -> None:
        """Make every further read raise ``error`` (the connection was lost for good)."""
        self._error = error
        self._halt()

    def _halt(self) -> None:
        """Stop delivering (no I/O): on ``stop`` and when the connection closes."""
        self._stopped = True
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._loaded.done():
            self._loaded.set_result(None)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _arm(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._check_heartbeat)

    def _check_heartbeat(self) -> None:
        self._timer = None
        if self._stopped or self._lost is not None:
            return
        limit = self._heartbeat * _MISSED_HEARTBEATS
        silent = self._loop.time() - self._heard
        if silent >= limit:
            self._lose(f"no heartbeat for {silent:.1f}s")
            return
        self._arm(limit - silent)

    def __repr__(self) -> str:
        return f"NatsWatcher({self._bucket!r}, {self._prefix!r})"
