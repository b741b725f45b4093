"""The virtual-time loop: exact timers, instant sleeps, refused real I/O, deadlock and livelock
reported as errors, and identical replays for one seed.

Async tests run on the virtual loop through ``conftest.py``; tests about what happens to a
whole run (a deadlock, a livelock, a replay) call ``sim.run`` from a sync test.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from agentcluster.clock import Clock
from agentcluster.sim import (
    DEFAULT_EPOCH,
    Deadlock,
    Livelock,
    VirtualClock,
    VirtualEventLoop,
    VirtualTimeViolation,
    new_virtual_loop,
    run,
)

pytestmark = pytest.mark.sim

Trace = list[tuple[float, str]]


def virtual_loop() -> VirtualEventLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualEventLoop)
    return loop


# --- time --------------------------------------------------------------------------------


async def test_an_hour_of_sleep_takes_no_real_time() -> None:
    loop = virtual_loop()
    began_real = time.perf_counter()
    began = loop.time()
    await asyncio.sleep(3600)
    assert loop.time() - began == 3600.0
    assert time.perf_counter() - began_real < 0.5


async def test_timers_fire_in_order_at_exact_times() -> None:
    loop = virtual_loop()
    base = loop.time()
    fired: Trace = []
    done = loop.create_future()

    def note(name: str) -> None:
        fired.append((loop.time() - base, name))

    loop.call_at(base + 2.5, note, "at-2.5")
    loop.call_later(0.25, note, "later-0.25")
    loop.call_later(2.5, note, "later-2.5")  # a tie: asyncio's heap order, not FIFO
    loop.call_at(base + 0.125, note, "at-0.125")
    cancelled = loop.call_later(1.0, note, "cancelled")
    loop.call_later(7200.0, note, "later-7200")
    loop.call_later(200_000.0, done.set_result, None)  # past asyncio's one-day select cap
    cancelled.cancel()
    await done
    assert fired[:2] == [(0.125, "at-0.125"), (0.25, "later-0.25")]
    assert sorted(fired[2:4]) == [(2.5, "at-2.5"), (2.5, "later-2.5")]
    assert fired[4:] == [(7200.0, "later-7200")]
    assert loop.time() - base == 200_000.0


async def test_sleeping_tasks_wake_at_their_exact_times() -> None:
    loop = virtual_loop()
    woke: Trace = []

    async def sleeper(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        woke.append((loop.time(), name))

    async with asyncio.TaskGroup() as tg:
        for name, seconds in [("c", 3.0), ("a", 0.5), ("b", 1.75), ("a2", 0.5)]:
            tg.create_task(sleeper(name, seconds))
    assert woke == [(0.5, "a"), (0.5, "a2"), (1.75, "b"), (3.0, "c")]


async def test_timeouts_expire_at_exact_virtual_times() -> None:
    loop = virtual_loop()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), timeout=1.5)
    assert loop.time() == 1.5

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(30.0):
            await asyncio.sleep(3600)
    assert loop.time() == 31.5

    queue: asyncio.Queue[int] = asyncio.Queue()
    loop.call_later(2.0, queue.put_nowait, 7)
    assert await asyncio.wait_for(queue.get(), timeout=5.0) == 7
    assert loop.time() == 33.5

    # A timeout that is never reached leaves the clock where the work finished.
    async with asyncio.timeout(1e6):
        await asyncio.sleep(0.25)
    assert loop.time() == 33.75


async def test_futures_events_and_task_groups_work_unchanged() -> None:
    loop = virtual_loop()
    event = asyncio.Event()
    fut: asyncio.Future[str] = loop.create_future()
    loop.call_later(4.0, event.set)
    loop.call_later(6.0, fut.set_result, "done")

    async def wait_event() -> float:
        await event.wait()
        return loop.time()

    async with asyncio.TaskGroup() as tg:
        at_event = tg.create_task(wait_event())
        at_future = tg.create_task(asyncio.wait_for(fut, None))
    assert at_event.result() == 4.0
    assert at_future.result() == "done"
    assert loop.time() == 6.0

    async def fails() -> None:
        await asyncio.sleep(1)
        raise ValueError("boom")

    async def group() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fails())
            tg.create_task(asyncio.sleep(100))

    with pytest.raises(ExceptionGroup):
        await group()
    assert loop.time() == 7.0  # the sibling was cancelled at once


def test_start_sets_the_initial_time() -> None:
    async def main() -> float:
        t = asyncio.get_running_loop().time()
        await asyncio.sleep(1)
        return t

    assert run(main(), start=1000.0) == 1000.0


def test_run_returns_the_result_and_closes_the_loop() -> None:
    seen: list[VirtualEventLoop] = []

    async def main() -> int:
        seen.append(virtual_loop())
        asyncio.get_running_loop().create_task(asyncio.sleep(10))  # left over: cancelled
        return 42

    assert run(main()) == 42
    assert seen[0].is_closed()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="start"):
        VirtualEventLoop(start=float("nan"))
    with pytest.raises(ValueError, match="livelock_iterations"):
        VirtualEventLoop(livelock_iterations=0)
    with pytest.raises(TypeError, match="seed"):
        VirtualEventLoop(seed=12)  # type: ignore[arg-type]


# --- clock ------------------------------------------------------------------------------


async def test_virtual_clock_reads_loop_time() -> None:
    loop = virtual_loop()
    clock: Clock = VirtualClock(loop)
    await asyncio.sleep(12.5)
    assert clock.monotonic() == 12.5
    assert clock.lease_now() == 12.5
    assert clock.wall() == DEFAULT_EPOCH + 12.5
    assert VirtualClock(loop, epoch=0.0).wall() == 12.5


# --- deadlock ---------------------------------------------------------------------------


def test_deadlock_is_raised_and_names_the_stuck_task() -> None:
    async def wait_forever(fut: asyncio.Future[None]) -> None:
        await fut

    async def main() -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(wait_forever(fut), name="stuck-waiter")
        await asyncio.sleep(2.0)
        await task

    began = time.perf_counter()
    with pytest.raises(Deadlock) as caught:
        run(main(), seed="deadlock")
    assert time.perf_counter() - began < 1.0
    err = caught.value
    assert err.at == 2.0
    assert err.seed == "deadlock"
    stuck = [line for line in err.tasks if line.startswith("stuck-waiter:")]
    assert len(stuck) == 1
    assert "wait_forever()" in stuck[0]
    assert "waiting for <Future pending" in stuck[0]
    assert "stuck-waiter" in str(err)
    assert any("main()" in line for line in err.tasks)


def test_deadlock_leaves_the_loop_usable() -> None:
    loop = new_virtual_loop(seed="reuse")
    try:
        never: asyncio.Future[None] = loop.create_future()
        with pytest.raises(Deadlock):
            loop.run_until_complete(never)
        loop.call_later(1.0, never.set_result, None)
        loop.run_until_complete(never)
        assert loop.time() == 1.0
    finally:
        loop.close()


def test_sleeping_forever_is_a_deadlock() -> None:
    async def main() -> None:
        await asyncio.sleep(1.0)
        await asyncio.sleep(math.inf)

    with pytest.raises(Deadlock) as caught:
        run(main())
    assert caught.value.at == 1.0


def test_a_pending_timer_is_not_a_deadlock() -> None:
    async def main() -> float:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(never, timeout=1e6)
        return asyncio.get_running_loop().time()

    assert run(main()) == 1e6


# --- livelock ---------------------------------------------------------------------------


def test_livelock_is_raised_when_tasks_spin_without_time() -> None:
    async def ping(box: list[int]) -> None:
        while True:
            box[0] += 1
            await asyncio.sleep(0)

    async def main() -> None:
        box = [0]
        async with asyncio.TaskGroup() as tg:
            tg.create_task(ping(box), name="pinger")
            tg.create_task(ping(box), name="ponger")

    began = time.perf_counter()
    with pytest.raises(Livelock) as caught:
        run(main(), seed="spin", livelock_iterations=5_000)
    assert time.perf_counter() - began < 1.0
    assert caught.value.iterations == 5_000
    assert caught.value.at == 0.0
    assert any(line.startswith("pinger:") for line in caught.value.tasks)


def test_livelock_default_limit_is_reported_quickly() -> None:
    async def main() -> None:
        spins = 0
        while True:
            spins += 1
            await asyncio.sleep(0)

    began = time.perf_counter()
    with pytest.raises(Livelock, match="100000 iterations"):
        run(main())
    assert time.perf_counter() - began < 5.0


def test_bursts_between_time_steps_are_no_livelock() -> None:
    async def main() -> float:
        for _ in range(10):
            for _ in range(800):
                await asyncio.sleep(0)
            await asyncio.sleep(0.001)
        return asyncio.get_running_loop().time()

    assert run(main(), livelock_iterations=1_000) == pytest.approx(0.01)
    with pytest.raises(Livelock):
        run(main(), livelock_iterations=500)
    assert run(main(), livelock_iterations=None) == pytest.approx(0.01)


# --- refused real I/O ----------------------------------------------------------------------


def _open_connection() -> Coroutine[Any, Any, object]:
    return asyncio.open_connection("127.0.0.1", 1)


def _start_server() -> Coroutine[Any, Any, object]:
    return asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)


def _to_thread() -> Coroutine[Any, Any, object]:
    return asyncio.to_thread(sum, [1, 2])


async def _run_in_executor() -> object:
    return await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2])


def _subprocess() -> Coroutine[Any, Any, object]:
    return asyncio.create_subprocess_exec("true")


def _subprocess_shell() -> Coroutine[Any, Any, object]:
    return asyncio.create_subprocess_shell("true")


def _getaddrinfo() -> Coroutine[Any, Any, object]:
    return asyncio.get_running_loop().getaddrinfo("localhost", 80)


async def _datagram() -> object:
    return await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )


async def _sock_connect() -> object:
    with socket.socket() as sock:
        sock.setblocking(False)
        return await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", 1))


async def _add_reader() -> object:
    a, b = socket.socketpair()
    with a, b:
        asyncio.get_running_loop().add_reader(a, print)
    return None


@pytest.mark.parametrize(
    ("call", "operation"),
    [
        (_open_connection, "create_connection"),
        (_start_server, "create_server"),
        (_to_thread, "run_in_executor"),
        (_run_in_executor, "run_in_executor"),
        (_subprocess, "subprocess_exec"),
        (_subprocess_shell, "subprocess_shell"),
        (_getaddrinfo, "getaddrinfo"),
        (_datagram, "create_datagram_endpoint"),
        (_sock_connect, "sock_connect"),
        (_add_reader, "add_reader"),
    ],
)
async def test_real_io_is_refused(
    call: Callable[[], Coroutine[Any, Any, object]], operation: str
) -> None:
    with pytest.raises(VirtualTimeViolation, match="refused on a virtual-time loop") as caught:
        await call()
    assert caught.value.operation.startswith(operation)
    assert isinstance(caught.value, RuntimeError)


def test_threads_run_when_allowed_and_take_no_virtual_time() -> None:
    async def main() -> tuple[int, float, list[float]]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        loop.call_later(0.5, lambda: fired.append(loop.time()))
        result = await asyncio.to_thread(lambda: time.sleep(0.02) or 3)
        return result, loop.time(), fired

    result, at, fired = run(main(), allow_threads=True)
    assert (result, at, fired) == (3, 0.0, [])


# --- determinism ----------------------------------------------------------------------------


async def _heartbeats(seed: str, *, nodes: int = 5, seconds: float = 60.0) -> Trace:
    """``nodes`` nodes each send a heartbeat to every other every 100 ms (plus seeded
    jitter of up to 5 ms) through per-node queues; each node records what it receives."""
    loop = asyncio.get_running_loop()
    names = [f"n{i}" for i in range(nodes)]
    inboxes: dict[str, asyncio.Queue[tuple[str, int]]] = {n: asyncio.Queue() for n in names}
    trace: Trace = []
    end = loop.time() + seconds

    async def sender(me: str) -> None:
        rng = random.Random(f"{seed}/jitter/{me}")
        seq = 0
        while loop.time() < end:
            await asyncio.sleep(0.1 + rng.uniform(0.0, 0.005))
            seq += 1
            for peer in names:
                if peer != me:
                    inboxes[peer].put_nowait((me, seq))

    async def receiver(me: str) -> None:
        inbox = inboxes[me]
        while True:
            sender_name, seq = await inbox.get()
            trace.append((loop.time(), f"{me}<-{sender_name}#{seq}"))
            inbox.task_done()

    receivers = [asyncio.create_task(receiver(n)) for n in names]
    async with asyncio.TaskGroup() as tg:
        for n in names:
            tg.create_task(sender(n))
    for inbox in inboxes.values():
        await inbox.join()
    for task in receivers:
        task.cancel()
    await asyncio.gather(*receivers, return_exceptions=True)
    return trace


def test_sixty_seconds_of_five_node_heartbeats_run_fast_and_replay_exactly() -> None:
    began = time.perf_counter()
    first = run(_heartbeats("alpha"), seed="alpha")
    elapsed = time.perf_counter() - began
    assert elapsed < 1.0, f"60 s of heartbeats took {elapsed:.3f} s of real time"
    assert len(first) > 5 * 4 * 550
    assert 60.0 <= first[-1][0] < 60.2
    assert run(_heartbeats("alpha"), seed="alpha") == first
    assert run(_heartbeats("beta"), seed="beta") != first


def test_shuffled_runs_replay_per_seed_and_differ_across_seeds() -> None:
    def trace(seed: str) -> Trace:
        # Same jitter for every run, so only the shuffle can tell the runs apart.
        return run(_heartbeats("fixed", seconds=5.0), seed=seed, shuffle=True)

    first = trace("s1")
    assert trace("s1") == first
    assert trace("s2") != first
    assert sorted(trace("s2")) == sorted(first)  # same events, another interleaving


def test_shuffle_reorders_ready_callbacks_deterministically() -> None:
    def order(seed: str | None, shuffle: bool) -> list[int]:
        async def main() -> list[int]:
            loop = asyncio.get_running_loop()
            seen: list[int] = []
            for i in range(20):
                loop.call_soon(seen.append, i)
            await asyncio.sleep(0.001)
            return seen

        return run(main(), seed=seed, shuffle=shuffle)

    assert order("x", shuffle=False) == list(range(20))
    shuffled = order("x", shuffle=True)
    assert shuffled != list(range(20))
    assert sorted(shuffled) == list(range(20))
    assert order("x", shuffle=True) == shuffled
    assert order("y", shuffle=True) != shuffled


def test_an_unseeded_loop_picks_a_seed_to_replay_with() -> None:
    a, b = VirtualEventLoop(shuffle=True), VirtualEventLoop(shuffle=True)
    try:
        assert a.seed != b.seed
        assert a.shuffle
        replay = VirtualEventLoop(seed=a.seed)
        try:
            assert replay.rng("faults").random() == a.rng("faults").random()
            assert a.rng("faults").random() != a.rng("ids").random()
        finally:
            replay.close()
    finally:
        a.close()
        b.close()
