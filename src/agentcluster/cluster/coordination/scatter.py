"""Map-reduce and scatter-gather over the holders of a capability.

Theory of operation. ``scatter_gather`` reads the capability's holders from the node's
registry cache (``NoAvailableNode(reason="no_capability")`` when there are none), cuts the
items into balanced chunks (``core.chunking.split``: one chunk per holder, or chunks of at
most ``chunk_size`` items) and runs one task per chunk, all at once. Each task calls one
holder with a signal of ``signal_type`` whose data is ``{"items": [...], "chunk": i}``; the
holder's action answers with the chunk's result. The results come back in chunk order,
whatever order the holders answered in.

A chunk that fails — the action raised, no answer within ``timeout``, the holder or its
node gone — is tried again on another holder: ``core.chunking.next_holder`` picks one not
yet tried for this chunk from the *current* holders (re-read on every try, so holders of a
node declared dead drop out), passing over holders that failed another chunk of this run
or whose node this node suspects, and preferring the least busy. After ``attempts`` tries,
or when no untried holder is left, the chunk fails with ``ChunkFailed(chunk, tried,
cause)``; the other chunks are then cancelled (which cancels their remote actions) and the
error raised. A chunk the holder refuses as malformed (a ``UsageError``, such as invalid
params or a signal too large) fails at once: every holder would refuse it the same way.

``timeout`` bounds each try, so a run takes at most ``attempts * timeout``. A holder may
see a chunk after a try of it timed out, so map actions should be idempotent.

``map_reduce`` is ``scatter_gather`` followed by ``reduce`` on the list of chunk results;
the default (``core.chunking.join_results``) concatenates them when they are all lists.

This module also holds what the other coordination shells share: ``gather_all`` (run
awaitables together, all results in order, the first failure cancelling the rest),
``routing_of`` and ``check_timeout``.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from agentcluster.cluster.outbound import ClusterOutbound
from agentcluster.cluster.registry import Registry
from agentcluster.core.chunking import join_results, next_holder, split
from agentcluster.core.ids import new_id
from agentcluster.core.signal import Signal
from agentcluster.errors import (
    AgentClusterError,
    ChunkFailed,
    ConfigurationError,
    ConnectionClosed,
    NoAvailableNode,
    UsageError,
)

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = ["check_timeout", "gather_all", "map_reduce", "routing_of", "scatter_gather"]

T = TypeVar("T")

CHUNK_RETRIED = ("agentcluster", "coordination", "map_reduce", "chunk_retried")
CHUNK_FAILED = ("agentcluster", "coordination", "map_reduce", "chunk_failed")


def check_timeout(name: str, value: object) -> float:
    """``value`` as a positive, finite number of seconds; ``ConfigurationError`` otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def routing_of(node: ClusterNode) -> tuple[ClusterOutbound, Registry]:
    """The started node's outbound and registry; ``ConnectionClosed`` if it is not running."""
    outbound, registry = node.outbound, node.registry
    if outbound is None or registry is None or node.stopped:
        raise ConnectionClosed(f"node {node.node_id!r} is not running")
    return outbound, registry


async def gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Run ``awaitables`` together and return their results in order.

    Unlike ``asyncio.gather``, the first failure cancels the others and waits for them to
    finish before it is raised (the failure of the lowest index, when several finished
    together), so no call is left running behind the caller; unlike a ``TaskGroup``, the
    error comes out as itself, not wrapped in an ``ExceptionGroup``.
    """
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    if not tasks:
        return []
    done: set[asyncio.Task[T]] = set()
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        # Read every outcome, so no task's error is reported as never retrieved.
        failures = [None if task.cancelled() else task.exception() for task in tasks]
    for task, failure in zip(tasks, failures, strict=True):
        if task in done and failure is not None:
            raise failure
    return [task.result() for task in tasks]


class _Scatter:
    """One scatter-gather run: the holders' load and failures, shared by its chunks."""

    def __init__(
        self,
        node: ClusterNode,
        outbound: ClusterOutbound,
        registry: Registry,
        capability: str,
        signal_type: str,
        timeout: float,
        attempts: int,
    ) -> None:
        self._node = node
        self._outbound = outbound
        self._registry = registry
        self._capability = capability
        self._signal_type = signal_type
        self._timeout = timeout
        self._attempts = attempts
        self._run_id = new_id()
        self._busy: Counter[str] = Counter()
        self._failed: set[str] = set()

    def _avoid(self, holders: Sequence[str]) -> set[str]:
        """Holders that failed a chunk of this run, and those on nodes this node suspects."""
        avoid = set(self._failed)
        liveness = self._node.liveness
        if liveness is None:
            return avoid
        heartbeats = liveness.heartbeats
        for holder in holders:
            entry = self._registry.lookup(holder)
            if (
                entry is not None
                and entry.node != self._node.node_id
                and heartbeats.suspected(entry.node)
            ):
                avoid.add(holder)
        return avoid

    async def chunk(self, index: int, items: list[Any]) -> Any:
        tried: list[str] = []
        cause: AgentClusterError | None = None
        while True:
            holders = self._registry.find_by_capability(self._capability)
            holder = next_holder(
                index,
                holders,
                tried,
                attempts=self._attempts,
                avoid=self._avoid(holders),
                busy=self._busy,
            )
            if holder is None:
                raise self._chunk_failed(index, tried, cause)
            tried.append(holder)
            signal = Signal(
                self._signal_type,
                {"items": items, "chunk": index},
                correlationid=self._run_id,
            )
            self._busy[holder] += 1
            try:
                return await self._outbound.call(holder, signal, timeout=self._timeout)
            except UsageError as error:
                raise self._chunk_failed(index, tried, error) from error
            except AgentClusterError as error:
                cause = error
                self._failed.add(holder)
                self._node.local.telemetry.emit(
                    CHUNK_RETRIED,
                    {"tries": len(tried)},
                    {
                        "run_id": self._run_id,
                        "chunk": index,
                        "holder": holder,
                        "reason": error.reason,
                    },
                )
            finally:
                self._busy[holder] -= 1

    def _chunk_failed(
        self, index: int, tried: list[str], cause: AgentClusterError | None
    ) -> ChunkFailed:
        self._node.local.telemetry.emit(
            CHUNK_FAILED,
            {"tries": len(tried)},
            {"run_id": self._run_id, "chunk": index, "tried": tuple(tried)},
        )
        return ChunkFailed(index, tuple(tried), cause)


async def scatter_gather(
    node: ClusterNode,
    capability: str,
    items: Sequence[Any],
    *,
    signal_type: str = "mapreduce.map",
    chunk_size: int | None = None,
    timeout: float,
    attempts: int = 3,
) -> list[Any]:
    """Each chunk's result, in chunk order (see the module docstring).

    Raises ``NoAvailableNode(reason="no_capability")`` when no agent holds ``capability``
    (even for no items: asking a capability nobody holds is a mistake worth seeing), and
    ``ChunkFailed`` when a chunk failed on every holder tried.
    """
    outbound, registry = routing_of(node)
    per_try = check_timeout("timeout", timeout)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigurationError(f"attempts must be an int >= 1, not {attempts!r}")
    holders = registry.find_by_capability(capability)
    if not holders:
        raise NoAvailableNode(
            f"no agent holds capability {capability!r}",
            reason="no_capability",
            node_id=node.node_id,
        )
    chunks = split(items, holders=len(holders), chunk_size=chunk_size)
    run = _Scatter(node, outbound, registry, capability, signal_type, per_try, attempts)
    return await gather_all(run.chunk(index, chunk) for index, chunk in enumerate(chunks))


async def map_reduce(
    node: ClusterNode,
    capability: str,
    items: Sequence[Any],
    *,
    reduce: Callable[[list[Any]], Any] | None = None,
    signal_type: str = "mapreduce.map",
    chunk_size: int | None = None,
    timeout: float,
    attempts: int = 3,
) -> Any:
    """``reduce`` applied to ``scatter_gather``'s chunk results; by default the chunk
    results concatenated when they are all lists, else the list of them."""
    results = await scatter_gather(
        node,
        capability,
        items,
        signal_type=signal_type,
        chunk_size=chunk_size,
        timeout=timeout,
        attempts=attempts,
    )
    return (reduce or join_results)(results)
