"""An order-keeping delay line: items come out no earlier than asked and never overtake.

Delay faults must not reorder what one sender sends (NATS runs over TCP, so a slow link
delays a stream of messages but keeps its order). Each item is due at
``max(now + delay, due time of the item before it)``; one loop timer, set for the head of
the line, releases every item that is due. While the line holds anything, even an
undelayed item queues behind it. The line is bounded: ``push`` refuses an item when full.
``wait_empty`` lets ``flush`` wait until everything pushed has come out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["DelayLine"]

T = TypeVar("T")


class DelayLine(Generic[T]):
    __slots__ = ("_deliver", "_empty_waiters", "_items", "_last_due", "_limit", "_timer", "_when")

    def __init__(self, deliver: Callable[[T], None], limit: int) -> None:
        self._deliver = deliver
        self._limit = limit
        self._items: deque[tuple[float, T]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._when = 0.0
        self._last_due = 0.0
        self._empty_waiters: list[asyncio.Future[None]] = []

    @property
    def busy(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T, delay: float) -> bool:
        """Deliver ``item`` after ``delay`` seconds, behind everything already in the line.

        Delivers at once (synchronously) when the line is empty and ``delay <= 0``.
        Returns ``False`` (and drops the item) when the line is full.
        """
        if not self._items and delay <= 0:
            self._deliver(item)
            return True
        if len(self._items) >= self._limit:
            return False
        loop = asyncio.get_running_loop()
        due = max(loop.time() + delay, self._last_due)
        self._last_due = due
        self._items.append((due, item))
        if self._timer is None:
            self._arm(loop)
        return True

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._when = self._items[0][0]
        self._timer = loop.call_at(self._when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        cutoff = max(loop.time(), self._when)
        items = self._items
        while items and items[0][0] <= cutoff:
            self._deliver(items.popleft()[1])
        if items:
            self._arm(loop)
        else:
            self._wake_empty()

    def _wake_empty(self) -> None:
        waiters, self._empty_waiters = self._empty_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until the line is empty; ``False`` if ``timeout`` passed first."""
        if not self._items:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._empty_waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            return not self._items
        finally:
            if fut in self._empty_waiters:
                self._empty_waiters.remove(fut)
        return True

    def clear(self) -> None:
        """Forget everything still in the line (it is lost) and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._items.clear()
        self._last_due = 0.0
        self._wake_empty()
