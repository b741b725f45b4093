"""Retrying a call for a bounded while: the one loop the cluster's start-up waits use.

A bucket that is still electing its stream leader, or a DNS name whose records are not
published yet, answers later; a caller retries the errors it names, pausing as a
``RetryPolicy`` (``core.retry``) says, until ``within`` seconds have passed, and then raises
the last error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agentcluster.core.retry import RetryPolicy

__all__ = ["STARTUP_BACKOFF", "retry_for"]

T = TypeVar("T")

STARTUP_BACKOFF = RetryPolicy(max_retries=1_000, base_delay=0.05, max_delay=1.0, jitter=0.0)
"""Pauses of 50 ms doubling to 1 s; the ``within`` bound ends the loop, not the count."""

_UNUSED = random.Random(0)
"""``RetryPolicy.delay`` draws only when jittered; these policies are not."""


async def retry_for(
    call: Callable[[], Awaitable[T]],
    *,
    retry_on: Callable[[Exception], bool],
    within: float,
    policy: RetryPolicy = STARTUP_BACKOFF,
) -> T:
    """``await call()`` until it returns; errors for which ``retry_on`` is true are retried
    while ``within`` seconds last, any other error (or the last one) is raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    retry = 0
    while True:
        try:
            return await call()
        except Exception as error:
            retry += 1
            pause = policy.delay(retry, _UNUSED)
            if not retry_on(error) or loop.time() + pause >= deadline:
                raise
        await asyncio.sleep(pause)
