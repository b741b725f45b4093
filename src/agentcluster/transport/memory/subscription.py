"""A subscription: a bounded pending queue drained by one task, one message at a time.

``push`` is what the router calls for every message routed here. It never blocks and
never creates a task: it appends to the pending deque, or — when the deque is at
``pending_limit`` — drops the message, counts it in ``dropped`` and reports
``SLOW_CONSUMER`` to the connection's listeners (once per episode: again only after the
queue ran empty). The subscription's own task runs the handler for each message in
arrival order; when the queue is empty it parks on a future that the next ``push``
resolves, so a burst costs one wake-up, not one per message. A handler that raises is
logged and the next message runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from agentcluster.transport.interface import ConnectionEvent, Handler, Message

if TYPE_CHECKING:
    from agentcluster.transport.memory.connection import MemoryConnection

__all__ = ["MemorySubscription"]

log = logging.getLogger(__name__)

_STOP_WAIT = 1.0
"""Seconds ``unsubscribe`` waits for a cancelled handler to finish."""


class MemorySubscription:
    __slots__ = (
        "_closed",
        "_conn",
        "_dropped",
        "_handler",
        "_limit",
        "_pending",
        "_queue",
        "_slow",
        "_subject",
        "_task",
        "_waiter",
        "conn_name",
        "wildcard",
    )

    def __init__(
        self,
        conn: MemoryConnection,
        subject: str,
        queue: str | None,
        handler: Handler,
        pending_limit: int,
    ) -> None:
        self._conn = conn
        self.conn_name = conn.name
        self._subject = subject
        self.wildcard = "*" in subject or ">" in subject
        self._queue = queue
        self._handler = handler
        self._limit = pending_limit
        self._pending: deque[Message] = deque()
        self._dropped = 0
        self._slow = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"memory-sub:{conn.name}:{subject}"
        )

    @property
    def subject(self) -> str:
        return self._subject

    @property
    def queue(self) -> str | None:
        return self._queue

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def task(self) -> asyncio.Task[None]:
        return self._task

    def push(self, msg: Message) -> None:
        pending = self._pending
        if len(pending) >= self._limit:
            self._dropped += 1
            if not self._slow:
                self._slow = True
                self._conn.emit(ConnectionEvent.SLOW_CONSUMER)
            return
        pending.append(msg)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _run(self) -> None:
        pending = self._pending
        handler = self._handler
        loop = asyncio.get_running_loop()
        while not self._closed:
            while pending:
                msg = pending.popleft()
                try:
                    await handler(msg)
                except Exception:
                    log.exception("handler for %r on %r raised", self._subject, self.conn_name)
                if self._closed:
                    return
            self._slow = False
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiter = waiter
            await waiter

    async def unsubscribe(self) -> None:
        if self._closed:
            return
        self.stop()
        task = self._task
        if task is not asyncio.current_task() and not task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_WAIT):
                    await asyncio.wait([task])

    def stop(self) -> None:
        """Stop at once without waiting: unroute, discard pending, cancel the task."""
        if self._closed:
            return
        self._closed = True
        self._conn.forget_subscription(self)
        self._pending.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._task is not asyncio.current_task():
            self._task.cancel()
