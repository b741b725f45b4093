"""A virtual-time event loop: asyncio whose clock jumps, for deterministic tests and the simulator.

Theory of operation. ``VirtualEventLoop`` is the standard selector event loop with two
changes. ``time()`` returns a number the loop keeps itself (``start``, 0.0 by default), and
the selector it runs on never blocks: each iteration polls the real file descriptors (in
practice only the loop's own wake-up pipe) with a zero timeout, and when nothing is ready
and asyncio asked to sleep until its next timer, virtual time jumps straight to that
timer's due time. So a timer fires exactly when it was due, ``loop.time()`` inside it reads
exactly its ``when``, and an hour of sleeping costs one iteration (timers due at the same
instant run in asyncio's heap order, as on any loop: deterministic, not FIFO). ``asyncio.sleep``,
``timeout``, ``wait_for``, ``call_later``/``call_at``, futures, events, queues and task
groups are the standard ones and work unchanged.

Three consequences, each made an error instead of a silent lie or a hang:

- **Real I/O is refused** (``VirtualTimeViolation``): sockets (``create_connection``,
  ``create_server``, ``create_datagram_endpoint``, unix sockets, ``sock_*``, ``sendfile``,
  ``start_tls``), pipes, ``add_reader``/``add_writer``, subprocesses, DNS
  (``getaddrinfo``/``getnameinfo``) and, unless ``allow_threads=True``, threads
  (``run_in_executor``, hence ``asyncio.to_thread``). Under jumping time a reply that takes
  a real millisecond arrives after every timeout has already fired. A permitted thread
  takes no virtual time: while one runs and nothing else is ready, the loop waits for it
  for real and virtual time stands still.
- **Total quiescence is a deadlock** (``Deadlock``): nothing ready, no timer scheduled (or
  only timers at infinity), no permitted thread running (and no foreign file descriptor
  registered) means nothing can ever run again; ``run_until_complete`` raises, naming
  every pending task and where it waits, instead of blocking forever.
- **Spinning without time is a livelock** (``Livelock``): more than
  ``livelock_iterations`` consecutive iterations with callbacks ready but virtual time not
  moving (tasks waking each other with ``sleep(0)``) raise, naming the pending tasks.

Determinism: the loop itself reads no real time and no unseeded randomness, so the same
program gives the same sequence of (``loop.time()``, event) on every run. With
``shuffle=True`` the ready callbacks of each iteration run in an order drawn from
``random.Random`` seeded with ``seed`` (as trio's scheduler can), which exposes code that
assumes asyncio's FIFO order; the same seed replays the same order. An unseeded loop picks
a random seed and shows it in ``seed`` and in its errors, so a failing run can be replayed.
``rng(name)`` hands out further generators derived from the seed for a scenario's own
choices (jitter, faults).

The rest of a deterministic program is the caller's: iterate sets in sorted order where the
order matters, seed random generators with strings, read time only through a ``Clock``
(``VirtualClock`` here: the loop's time, and a fixed epoch plus it for the wall clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import secrets
import selectors
import socket
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, TypeVarTuple

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

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

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_EPOCH = 1_700_000_000.0
"""The wall-clock reading (seconds since the Unix epoch) at virtual time 0."""

DEFAULT_LIVELOCK_ITERATIONS = 100_000
"""Consecutive iterations without virtual time moving before ``Livelock`` is raised."""

_STACK_DEPTH = 32


# --- errors ----------------------------------------------------------------------------


class VirtualLoopError(RuntimeError):
    """Root of the errors a virtual-time loop raises about the program it runs."""


class VirtualTimeViolation(VirtualLoopError):
    """The program asked for real I/O (a socket, a thread, a subprocess, DNS) on a
    virtual-time loop, where it would see false timeouts. ``operation`` names the call."""

    def __init__(self, operation: str, hint: str = "") -> None:
        self.operation = operation
        message = (
            f"{operation} refused on a virtual-time loop: real I/O under jumping time "
            "produces false timeouts"
        )
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class Deadlock(VirtualLoopError):
    """Nothing is ready, no timer is scheduled and nothing real is pending: the program can
    never make progress. ``tasks`` describes each pending task and where it waits."""

    def __init__(self, at: float, tasks: tuple[str, ...], seed: str) -> None:
        self.at = at
        self.tasks = tasks
        self.seed = seed
        listing = "\n  ".join(tasks) if tasks else "(no task is pending)"
        super().__init__(
            f"deadlock at virtual time {at!r} (seed {seed!r}): nothing is ready, no timer is "
            f"scheduled and no real I/O is pending. Pending tasks:\n  {listing}"
        )


class Livelock(VirtualLoopError):
    """``iterations`` loop iterations ran with virtual time stuck at ``at``: tasks keep
    waking each other (``sleep(0)`` loops) without anything waiting for time to pass."""

    def __init__(self, at: float, iterations: int, tasks: tuple[str, ...], seed: str) -> None:
        self.at = at
        self.iterations = iterations
        self.tasks = tasks
        self.seed = seed
        listing = "\n  ".join(tasks) if tasks else "(no task is pending)"
        super().__init__(
            f"livelock at virtual time {at!r} (seed {seed!r}): {iterations} iterations "
            f"without time moving. Pending tasks:\n  {listing}"
        )


# --- describing tasks --------------------------------------------------------------------


def _frame_of(obj: object) -> Any:
    for attr in ("cr_frame", "gi_frame", "ag_frame"):
        frame = getattr(obj, attr, None)
        if frame is not None:
            return frame
    return None


def _awaited_by(obj: object) -> object:
    for attr in ("cr_await", "gi_yieldfrom", "ag_await"):
        inner = getattr(obj, attr, None)
        if inner is not None:
            return inner
    return None


def describe_task(task: asyncio.Task[Any]) -> str:
    """One line: the task's name, its chain of awaits (``function at file:line``), innermost
    last, and the future it waits for."""
    steps: list[str] = []
    obj: object = task.get_coro()
    for _ in range(_STACK_DEPTH):
        frame = _frame_of(obj)
        if frame is None:
            break
        code = frame.f_code
        steps.append(f"{code.co_name}() at {os.path.basename(code.co_filename)}:{frame.f_lineno}")
        obj = _awaited_by(obj)
        if obj is None:
            break
    if not steps:
        steps.append(repr(task.get_coro()))
    line = f"{task.get_name()}: " + " -> ".join(steps)
    waiting = getattr(task, "_fut_waiter", None)
    if waiting is not None:
        line += f"; waiting for {waiting!r}"
    return line


def _describe_pending(loop: asyncio.AbstractEventLoop) -> tuple[str, ...]:
    return tuple(sorted(describe_task(t) for t in asyncio.all_tasks(loop)))


# --- the selector ------------------------------------------------------------------------


class _VirtualSelector(selectors.BaseSelector):
    """Keeps the real registrations in a real selector; ``select`` asks the loop."""

    def __init__(self, loop: VirtualEventLoop) -> None:
        self._loop = loop
        self._real = selectors.DefaultSelector()

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return self._loop._virtual_select(self._real, timeout)

    def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


# --- the loop ----------------------------------------------------------------------------


def _check_options(seed: object, start: object, livelock_iterations: object) -> None:
    if not (isinstance(start, int | float) and math.isfinite(start)):
        raise ValueError(f"start must be a finite number, not {start!r}")
    if livelock_iterations is not None and (
        isinstance(livelock_iterations, bool)
        or not isinstance(livelock_iterations, int)
        or livelock_iterations < 1
    ):
        raise ValueError(
            f"livelock_iterations must be an int >= 1 or None, not {livelock_iterations!r}"
        )
    if seed is not None and not isinstance(seed, str):
        raise TypeError(f"seed must be a string (hash-independent), not {seed!r}")


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time (module docstring).

    ``seed`` seeds the shuffling and ``rng``; ``start`` is the initial ``time()``;
    ``shuffle`` runs each iteration's ready callbacks in a seeded random order;
    ``allow_threads`` permits ``run_in_executor``/``to_thread`` (a thread takes no virtual
    time); ``livelock_iterations`` (``None`` to disable) bounds iterations without time
    moving.
    """

    # Internals of asyncio's BaseEventLoop/BaseSelectorEventLoop this class reads.
    _ready: deque[asyncio.Handle]
    _scheduled: list[asyncio.TimerHandle]
    _ssock: socket.socket | None

    def __init__(
        self,
        *,
        seed: str | None = None,
        start: float = 0.0,
        shuffle: bool = False,
        allow_threads: bool = False,
        livelock_iterations: int | None = DEFAULT_LIVELOCK_ITERATIONS,
    ) -> None:
        super().__init__(_VirtualSelector(self))
        try:
            _check_options(seed, start, livelock_iterations)
        except BaseException:
            self.close()
            raise
        self._time = float(start)
        self._seed = secrets.token_hex(8) if seed is None else seed
        self._shuffler = random.Random(f"{self._seed}/shuffle") if shuffle else None
        self._allow_threads = allow_threads
        self._threads = 0
        self._livelock_limit = livelock_iterations
        self._stalled = 0
        self._iterations = 0

    # --- what callers read ----------------------------------------------------------

    def time(self) -> float:
        return self._time

    @property
    def seed(self) -> str:
        """The seed in force (a random one when none was given): replay with it."""
        return self._seed

    @property
    def shuffle(self) -> bool:
        return self._shuffler is not None

    @property
    def iterations(self) -> int:
        """Loop iterations run so far."""
        return self._iterations

    def rng(self, name: str = "") -> random.Random:
        """A new generator seeded from the loop's seed and ``name``: the same name gives
        the same sequence on every run with the same seed."""
        return random.Random(f"{self._seed}/rng/{name}")

    # --- the selector's decision ----------------------------------------------------

    def _virtual_select(
        self, real: selectors.BaseSelector, timeout: float | None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        """Called once per iteration, in place of a blocking ``select(timeout)``."""
        self._iterations += 1
        if self._shuffler is not None and len(self._ready) > 1:
            self._shuffle_ready()
        events = real.select(0)
        if events:
            self._stalled = 0
            return events
        if timeout is not None and timeout <= 0:
            if not self._threads:
                self._count_stall()
            return []
        if self._threads:
            # A permitted thread is running: it takes no virtual time, so wait for it for
            # real (its completion writes to the wake-up pipe) and keep the clock still.
            return real.select(None)
        if timeout is None:
            if self._foreign_fds(real):
                return real.select(None)
            self._stalled = 0
            raise Deadlock(self._time, _describe_pending(self), self._seed)
        self._jump(timeout)
        return []

    def _jump(self, timeout: float) -> None:
        """Move virtual time to the next timer (asyncio caps ``timeout`` at a day; the timer
        heap knows the exact due time, so a timer reads exactly its ``when``)."""
        self._stalled = 0
        scheduled = self._scheduled
        target = scheduled[0].when() if scheduled else self._time + timeout
        if math.isinf(target):
            # Only timers at infinity (``sleep(math.inf)``) are left: nothing ever fires.
            raise Deadlock(self._time, _describe_pending(self), self._seed)
        if target > self._time:
            self._time = target

    def _count_stall(self) -> None:
        limit = self._livelock_limit
        if limit is None:
            return
        self._stalled += 1
        if self._stalled > limit:
            stalled, self._stalled = self._stalled - 1, 0
            raise Livelock(self._time, stalled, _describe_pending(self), self._seed)

    def _shuffle_ready(self) -> None:
        assert self._shuffler is not None
        ready = self._ready
        # popleft/extendleft are atomic, so a call_soon_threadsafe from a permitted thread
        # (an append on the right) is never lost.
        batch = [ready.popleft() for _ in range(len(ready))]
        self._shuffler.shuffle(batch)
        ready.extendleft(reversed(batch))

    def _foreign_fds(self, real: selectors.BaseSelector) -> bool:
        own = self._ssock.fileno() if self._ssock is not None else -1
        return any(key.fd != own for key in real.get_map().values())

    def run_forever(self) -> None:
        self._stalled = 0
        super().run_forever()

    # --- threads ---------------------------------------------------------------------

    def run_in_executor(
        self,
        executor: Executor | None,
        func: Callable[[*Ts], T],
        *args: *Ts,
    ) -> asyncio.Future[T]:
        if not self._allow_threads:
            raise VirtualTimeViolation(
                "run_in_executor / to_thread (a thread)",
                "run the work inline, or create the loop with allow_threads=True",
            )
        fut = super().run_in_executor(executor, func, *args)
        self._threads += 1
        fut.add_done_callback(self._thread_done)
        return fut

    def _thread_done(self, _fut: asyncio.Future[Any]) -> None:
        self._threads -= 1

    async def shutdown_default_executor(self, *args: Any, **kwargs: Any) -> None:
        # asyncio joins the default executor from a helper thread; count it as running.
        self._threads += 1
        try:
            await super().shutdown_default_executor(*args, **kwargs)
        finally:
            self._threads -= 1

    # --- refused real I/O ---------------------------------------------------------------

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("getaddrinfo (DNS)")

    async def getnameinfo(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("getnameinfo (DNS)")

    async def create_connection(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation(
            "create_connection (a socket)", "use the memory transport for in-process traffic"
        )

    async def create_server(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation(
            "create_server (a socket)", "use the memory transport for in-process traffic"
        )

    async def create_unix_connection(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("create_unix_connection (a socket)")

    async def create_unix_server(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("create_unix_server (a socket)")

    async def create_datagram_endpoint(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("create_datagram_endpoint (a socket)")

    async def connect_accepted_socket(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("connect_accepted_socket (a socket)")

    async def start_tls(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("start_tls (a socket)")

    async def sendfile(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("sendfile (a socket)")

    async def sock_sendfile(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("sock_sendfile (a socket)")

    async def sock_recv(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("sock_recv (a socket)")

    async def sock_recv_into(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("sock_recv_into (a socket)")

    async def sock_recvfrom(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("sock_recvfrom (a socket)")

    async def sock_recvfrom_into(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("sock_recvfrom_into (a socket)")

    async def sock_sendall(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("sock_sendall (a socket)")

    async def sock_sendto(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("sock_sendto (a socket)")

    async def sock_connect(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("sock_connect (a socket)")

    async def sock_accept(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("sock_accept (a socket)")

    async def connect_read_pipe(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("connect_read_pipe (a pipe)")

    async def connect_write_pipe(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("connect_write_pipe (a pipe)")

    async def subprocess_exec(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("subprocess_exec (a subprocess)")

    async def subprocess_shell(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise VirtualTimeViolation("subprocess_shell (a subprocess)")

    def add_reader(
        self, fd: FileDescriptorLike, callback: Callable[[*Ts], Any], *args: *Ts
    ) -> NoReturn:
        raise VirtualTimeViolation("add_reader (a real file descriptor)")

    def add_writer(
        self, fd: FileDescriptorLike, callback: Callable[[*Ts], Any], *args: *Ts
    ) -> NoReturn:
        raise VirtualTimeViolation("add_writer (a real file descriptor)")


# --- clocks, factories, running ----------------------------------------------------------


class VirtualClock:
    """The ``agentcluster.clock.Clock`` of a virtual-time loop: ``monotonic`` and
    ``lease_now`` read the loop's time, ``wall`` is ``epoch`` plus it, so timestamps and
    id layouts are the same on every run."""

    __slots__ = ("_epoch", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, epoch: float = DEFAULT_EPOCH) -> None:
        self._loop = loop
        self._epoch = epoch

    def monotonic(self) -> float:
        return self._loop.time()

    def wall(self) -> float:
        return self._epoch + self._loop.time()

    def lease_now(self) -> float:
        return self._loop.time()


def new_virtual_loop(
    *,
    seed: str | None = None,
    start: float = 0.0,
    shuffle: bool = False,
    allow_threads: bool = False,
    livelock_iterations: int | None = DEFAULT_LIVELOCK_ITERATIONS,
) -> VirtualEventLoop:
    """A new ``VirtualEventLoop``; callable with no arguments, as loop factories are
    (pytest-asyncio's ``pytest_asyncio_loop_factories``, ``asyncio.Runner``)."""
    return VirtualEventLoop(
        seed=seed,
        start=start,
        shuffle=shuffle,
        allow_threads=allow_threads,
        livelock_iterations=livelock_iterations,
    )


def run(
    main: Coroutine[Any, Any, T],
    *,
    seed: str | None = None,
    start: float = 0.0,
    shuffle: bool = False,
    allow_threads: bool = False,
    livelock_iterations: int | None = DEFAULT_LIVELOCK_ITERATIONS,
    debug: bool | None = None,
) -> T:
    """``asyncio.run`` on a new virtual-time loop: run ``main``, cancel what is left, close.

    A ``Deadlock`` or ``Livelock`` while cleaning up after an error is dropped in favour of
    that error.
    """
    loop = new_virtual_loop(
        seed=seed,
        start=start,
        shuffle=shuffle,
        allow_threads=allow_threads,
        livelock_iterations=livelock_iterations,
    )
    runner = asyncio.Runner(debug=debug, loop_factory=lambda: loop)
    try:
        result = runner.run(main)
    except BaseException:
        with contextlib.suppress(VirtualLoopError):
            runner.close()
        raise
    runner.close()
    return result
