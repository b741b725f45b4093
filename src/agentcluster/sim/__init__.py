"""Deterministic simulation: a virtual-time event loop, its clock, and the errors it raises.

``run(main(), seed="...")`` runs a coroutine on a ``VirtualEventLoop``, where sleeps and
timeouts cost no real time, real I/O is refused, and a deadlock or a ``sleep(0)`` livelock
is an error instead of a hang; ``new_virtual_loop`` is the factory for pytest-asyncio's
``pytest_asyncio_loop_factories`` and ``asyncio.Runner``. ``VirtualClock`` is the
``agentcluster.clock.Clock`` for code running on such a loop.
"""

from agentcluster.sim.virtual_loop import (
    DEFAULT_EPOCH,
    DEFAULT_LIVELOCK_ITERATIONS,
    Deadlock,
    Livelock,
    VirtualClock,
    VirtualEventLoop,
    VirtualLoopError,
    VirtualTimeViolation,
    describe_task,
    new_virtual_loop,
    run,
)

__all__ = [
    "DEFAULT_EPOCH",
    "DEFAULT_LIVELOCK_ITERATIONS",
    "Deadlock",
    "Livelock",
    "VirtualClock",
    "VirtualEventLoop",
    "VirtualLoopError",
    "VirtualTimeViolation",
    "describe_task",
    "new_virtual_loop",
    "run",
]
