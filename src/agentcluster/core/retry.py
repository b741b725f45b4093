"""Retry policy: how many times to try again and how long to wait before each retry.

Delays grow exponentially from ``base_delay`` by ``factor`` per retry and are capped at
``max_delay``; jitter then spreads them so that many callers that failed together do not
retry together. With ``jitter = j`` the delay before a retry is drawn uniformly from
``[d * (1 - j), d]`` where ``d`` is the capped exponential delay: ``0`` keeps ``d`` exactly,
``1`` is "full jitter" (anywhere from 0 to ``d``).

The policy is pure data: the caller owns the loop, the clock and the ``random.Random``
(seeded in tests and the simulator), and asks only ``should_retry(n)`` and ``delay(n)``
for the 1-based retry number ``n``. ``max_retries`` counts retries after the first
attempt, so ``RetryPolicy()`` runs once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

from agentcluster.errors import ConfigurationError

__all__ = ["NO_RETRY", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 0
    base_delay: float = 0.05
    factor: float = 2.0
    max_delay: float = 5.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            _invalid("max_retries", self.max_retries, "must be an int")
        if self.max_retries < 0:
            _invalid("max_retries", self.max_retries, "must be >= 0")
        for name in ("base_delay", "factor", "max_delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                _invalid(name, value, "must be a number")
            if not math.isfinite(value):
                _invalid(name, value, "must be finite")
            if value < 0:
                _invalid(name, value, "must be >= 0")
        if self.factor < 1:
            _invalid("factor", self.factor, "must be >= 1")
        if self.jitter > 1:
            _invalid("jitter", self.jitter, "must be within [0, 1]")
        if self.max_delay < self.base_delay:
            _invalid("max_delay", self.max_delay, f"must be >= base_delay ({self.base_delay!r})")

    def should_retry(self, retry: int) -> bool:
        """Whether the 1-based ``retry`` is allowed (``retry <= max_retries``)."""
        return retry <= self.max_retries

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before the 1-based ``retry``; draws from ``rng`` only when jittered."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        try:
            d = min(self.max_delay, self.base_delay * self.factor ** (retry - 1))
        except OverflowError:
            d = self.max_delay
        if self.jitter == 0 or d == 0:
            return d
        low = d * (1.0 - self.jitter)
        return min(d, low + (d - low) * rng.random())

    def delays(self, rng: random.Random) -> Iterator[float]:
        """Every delay of the policy in order, one per allowed retry."""
        for retry in range(1, self.max_retries + 1):
            yield self.delay(retry, rng)


def _invalid(field: str, value: object, problem: str) -> NoReturn:
    raise ConfigurationError(f"RetryPolicy.{field} {problem}, got {value!r}")


NO_RETRY = RetryPolicy()
"""Run once, never retry."""
