"""The one place that reads real time.

Every component takes a ``Clock`` so that the same code runs in production, under a fake
clock in tests and on a virtual-time loop in the simulator. Three readings:

- ``monotonic()`` — seconds for timeouts and deadlines; never jumps, only meaningful as
  differences within one process;
- ``wall()`` — seconds since the epoch, for timestamps people read and for id layout;
- ``lease_now()`` — a clock that keeps counting while the process is suspended
  (``CLOCK_BOOTTIME``), so that a frozen process notices its lease lapsed when it wakes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "LoopClock", "ManualClock", "SystemClock"]

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def lease_now(self) -> float: ...


class SystemClock:
    """Real time: the defaults in production."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def lease_now(self) -> float:
        return time.clock_gettime(_BOOTTIME)


class LoopClock(SystemClock):
    """Monotonic time read from an event loop, so a virtual-time loop drives it."""

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def monotonic(self) -> float:
        return self._loop.time()


class ManualClock:
    """A clock that moves only when told to; for tests of pure and timed logic."""

    __slots__ = ("_boot", "_mono", "_wall")

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._mono = start
        self._boot = start
        self._wall = wall_start

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def lease_now(self) -> float:
        return self._boot

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self._mono += seconds
        self._boot += seconds
        self._wall += seconds

    def suspend(self, seconds: float) -> None:
        """Model a process frozen for ``seconds``: only the boot-time clock moves on."""
        self._boot += seconds
        self._wall += seconds
