"""Bounded polling for tests: wait on a condition with a deadline, never a fixed sleep.

Distributed tests cannot know when a message has crossed or a watch has caught up; they
can only watch for it within a deadline. Time is read from the running loop, so these
work the same on a virtual-time loop.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["eventually", "stays"]


async def eventually(cond: Callable[[], Any], timeout: float = 2.0, interval: float = 0.005) -> Any:
    """Poll ``cond`` (sync or async) until it is truthy; fail after ``timeout`` seconds.

    Returns the truthy value, so ``value = await eventually(lambda: box.get("x"))`` works.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {cond}")
        await asyncio.sleep(interval)


async def stays(read: Callable[[], Any], duration: float, interval: float = 0.005) -> Any:
    """Assert ``read()`` keeps the value it has now for ``duration`` seconds (loop clock).

    For checking that something has *stopped*: it can only be shown by watching for a
    bounded while, so the watch is measured on the loop clock and fails at the first change.
    """
    loop = asyncio.get_running_loop()
    first = read()
    end = loop.time() + duration
    while loop.time() < end:
        await asyncio.sleep(interval)
        now = read()
        assert now == first, f"value changed from {first!r} to {now!r}"
    return first
