"""The cluster's key-value buckets, the stamped write, and a watch that never silently lags.

Layout (DESIGN.md, "Cluster state"), one bucket per kind of fact, history 1:

- ``nodes``  — key ``<encoded node id>``: a ``core.membership.NodeRecord``;
- ``agents`` — key ``<encoded agent id>``: the registry (``cluster.registry``);
- ``leader`` — key ``current``: a ``core.leader.LeaderRecord``;
- ``state``  — the snapshots of persistent agents (later);
- ``reservations`` — key ``<encoded node id>``: the resources reserved on that node, as
  (agent, agent incarnation) -> resources (``cluster.resources``);
- ``coordination`` — locks (``lock.<name>``), barriers (``barrier.<id>``) and group
  elections (``election.<group>``), names encoded into one token.

``stamped_update`` is how every liveness write is made definite. A write whose reply
timed out may still have been applied, so the key is read back: our own stamp there means
it landed (``core.stamps.resolve_timed_out_write``); otherwise the same stamped value is
written again by compare-and-set — but only while the key is still at the revision the
write expected. The core's rule says "at the revision just read"; repeating at a revision
*another writer* produced would overwrite that writer (a renewal repeated over an
observer's ``alive -> dead`` would bring a dead node back), so a key that moved under
someone else's stamp is the definite answer "lost" (``RevisionMismatch`` / ``KeyExists``).
If our first write landed and was overwritten since, that is reported as lost too: the
caller reads the key and decides, which is what it does for any lost compare-and-set.

``BucketWatch`` follows a watch: ``on_reset`` gets the whole present content (the initial
snapshot, and again after every rebuild), ``on_entry`` each later change. A watcher that
fell behind (``WatchLost``) is replaced by a fresh one, and every load is checked against
the bucket's own key listing — keys the snapshot missed are read and fed in — so
``complete`` is true only while the cache is known to hold everything. A callback that
raises also costs a rebuild (after ``poll``), never a silently stale cache.

``stop_task`` is how every shell here stops its background task: cancel, wait a bounded
time, log what the task died of, and let a cancellation of the caller propagate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentcluster.cluster.retrying import retry_for
from agentcluster.core.stamps import Resolution, WriteStamp, resolve_timed_out_write
from agentcluster.errors import (
    ConnectionClosed,
    CorruptRecord,
    KeyExists,
    NoResponders,
    RequestTimeout,
    RevisionMismatch,
    TransportError,
    WatchLost,
)
from agentcluster.transport.interface import (
    BucketConfig,
    Connection,
    Entry,
    KeyValue,
    Storage,
    Watcher,
)
from agentcluster.transport.names import decode_token, encode_token

__all__ = [
    "AGENTS",
    "COORDINATION",
    "LEADER",
    "LEADER_KEY",
    "NODES",
    "RESERVATIONS",
    "STATE",
    "BucketWatch",
    "Buckets",
    "StampOf",
    "bucket_configs",
    "ensure_buckets",
    "node_id_of",
    "node_key",
    "stamped_update",
    "stop_task",
]

_log = logging.getLogger("agentcluster.cluster.buckets")

NODES = "nodes"
AGENTS = "agents"
LEADER = "leader"
STATE = "state"
RESERVATIONS = "reservations"
COORDINATION = "coordination"
LEADER_KEY = "current"
"""The one key of the ``leader`` bucket."""

_MIN_WAIT = 1e-6
"""The shortest timer armed: a zero-length one could spin a virtual-time loop."""

StampOf = Callable[[bytes], WriteStamp | None]
"""Reads the write stamp out of a stored value (``None``: unstamped or unreadable)."""


def node_key(node_id: str) -> str:
    """The ``nodes`` key of a node id (any string, encoded into one token)."""
    return encode_token(node_id)


def node_id_of(key: str) -> str:
    return decode_token(key)


def bucket_configs(replicas: int = 1, storage: Storage = "file") -> tuple[BucketConfig, ...]:
    """The configs of every cluster bucket, in ``Buckets`` order."""
    return tuple(
        BucketConfig(name=name, replicas=replicas, storage=storage, history=1)
        for name in (NODES, AGENTS, LEADER, STATE, RESERVATIONS, COORDINATION)
    )


@dataclass(frozen=True, slots=True)
class Buckets:
    """Handles on the cluster buckets through one connection."""

    nodes: KeyValue
    agents: KeyValue
    leader: KeyValue
    state: KeyValue
    reservations: KeyValue
    coordination: KeyValue


async def ensure_buckets(
    conn: Connection, replicas: int = 1, storage: Storage = "file", *, ready_within: float = 30.0
) -> Buckets:
    """Create the cluster buckets if missing (bind them if present); idempotent.

    Returns once every bucket answers a read: a replicated bucket just created (or one
    whose stream is electing a leader) times out or has no responders for a while, and a
    node must not start its lease against a store that cannot answer yet. Retryable
    errors are retried with a growing pause for up to ``ready_within`` seconds; the last
    one is raised after that.
    """

    def not_ready(error: Exception) -> bool:
        return isinstance(error, NoResponders | RequestTimeout)

    # Creating is idempotent (an existing bucket is bound), so a create that timed out —
    # several nodes creating replicated buckets at once on a busy cluster — is repeated.
    handles = [
        await retry_for(
            functools.partial(conn.key_value, config), retry_on=not_ready, within=ready_within
        )
        for config in bucket_configs(replicas, storage)
    ]
    for kv in handles:
        await retry_for(
            functools.partial(kv.get, _PROBE_KEY, timeout=2.0),
            retry_on=not_ready,
            within=ready_within,
        )
    return Buckets(*handles)


_PROBE_KEY = "ready-probe"
"""A key nobody writes: reading it shows that a bucket's stream answers."""


def _found_stamp(entry: Entry | None, stamp_of: StampOf) -> WriteStamp | None:
    if entry is None:
        return None
    try:
        return stamp_of(entry.value)
    except CorruptRecord:
        return None


def _unchanged(entry: Entry | None, revision: int | None) -> bool:
    """Whether the key is still where the write expected it."""
    if entry is None:
        return revision is None or revision == 0
    return revision is not None and entry.revision == revision


def _lost(kv: KeyValue, key: str, revision: int | None) -> TransportError:
    if revision is None:
        return KeyExists(kv.bucket, key)
    return RevisionMismatch(kv.bucket, key, revision)


async def stamped_update(
    kv: KeyValue,
    key: str,
    value: bytes,
    stamp: WriteStamp,
    revision: int | None,
    *,
    stamp_of: StampOf,
    timeout: float,
    attempts: int = 3,
) -> int:
    """Write ``value`` (which carries ``stamp``) by compare-and-set; returns the revision.

    ``revision`` None creates the key. Each write and read-back waits at most ``timeout``;
    after at most ``attempts`` writes the outcome is given up as unknown. Raises:

    - ``RevisionMismatch`` / ``KeyExists`` — definitely not (or no longer) ours: read the
      key and decide;
    - ``NoResponders`` — the first write failed fast: nothing was applied;
    - ``RequestTimeout`` — still unknown after ``attempts``: a later read may find ``stamp``;
    - ``ConnectionClosed`` and any other transport error as they come.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts!r}")
    ambiguous = False
    for _ in range(attempts):
        try:
            if revision is None:
                return await kv.create(key, value, timeout=timeout)
            return await kv.update(key, value, revision, timeout=timeout)
        except (RevisionMismatch, KeyExists):
            if not ambiguous:
                raise
            # An earlier attempt may have been applied meanwhile: read and see.
        except NoResponders:
            if not ambiguous:
                raise
            await asyncio.sleep(timeout)
        except RequestTimeout:
            ambiguous = True
        try:
            entry = await kv.get(key, timeout=timeout)
        except RequestTimeout:
            continue
        except NoResponders:
            await asyncio.sleep(timeout)
            continue
        if resolve_timed_out_write(_found_stamp(entry, stamp_of), stamp) is Resolution.LANDED:
            assert entry is not None
            return entry.revision
        if not _unchanged(entry, revision):
            raise _lost(kv, key, revision)
    raise RequestTimeout(
        f"write of {kv.bucket}/{key} stamped {stamp.to_json()} still unknown "
        f"after {attempts} attempts"
    )


async def stop_task(task: asyncio.Task[Any] | None, timeout: float = 1.0) -> None:
    """Cancel ``task`` and wait (at most ``timeout``) for it to end.

    A cancellation of the caller itself propagates; the task's own error is logged, not
    raised (stopping is not the place to surface it).
    """
    if task is None or task.done():
        if task is not None and not task.cancelled() and task.exception() is not None:
            _log.error("task %s had failed", task.get_name(), exc_info=task.exception())
        return
    task.cancel()
    await asyncio.wait([task], timeout=timeout)
    if not task.done():
        _log.error("task %s did not stop within %ss", task.get_name(), timeout)
    elif not task.cancelled() and task.exception() is not None:
        _log.error("task %s failed", task.get_name(), exc_info=task.exception())


class BucketWatch:
    """Follows a watch of ``kv`` under ``prefix`` into two callbacks (module docstring).

    ``poll`` bounds each wait for the next change and paces retries of a failed load.
    ``check_complete=False`` skips the check against the key listing, for a follower of one
    key that reads that key directly instead (``coordination.seat.KeyFollower``).
    Callbacks run on the watch's task and must not block; an entry at or below a revision
    already held must be ignored by them (a completeness check may feed a key the watch
    then delivers too).
    """

    def __init__(
        self,
        kv: KeyValue,
        *,
        on_reset: Callable[[list[Entry]], None],
        on_entry: Callable[[Entry], None],
        prefix: str = "",
        pending_limit: int = 65536,
        poll: float = 1.0,
        name: str = "watch",
        check_complete: bool = True,
    ) -> None:
        self._kv = kv
        self._check_complete = check_complete
        self._on_reset = on_reset
        self._on_entry = on_entry
        self._prefix = prefix
        self._pending_limit = pending_limit
        self._poll = poll
        self._name = name
        self._watcher: Watcher | None = None
        self._present: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._loaded = False
        self._verified = False
        self._live = False
        self.rebuilds = 0
        """How many times a watcher that fell behind was replaced."""

    @property
    def loaded(self) -> bool:
        """An initial snapshot has been delivered to ``on_reset``."""
        return self._loaded

    @property
    def complete(self) -> bool:
        """Loaded, checked against the key listing, and still following."""
        return self._loaded and self._verified and self._live

    async def start(self) -> None:
        """Take the initial snapshot (bounded by the store's own timeouts), then follow."""
        watcher = await self._kv.watch(self._prefix, pending_limit=self._pending_limit)
        self._reset(watcher)
        self._task = asyncio.create_task(self._follow(watcher), name=f"{self._name}-follow")

    async def stop(self) -> None:
        self._live = False
        task, self._task = self._task, None
        await stop_task(task)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(ConnectionClosed):
                await watcher.stop()

    def _reset(self, watcher: Watcher) -> None:
        self._watcher = watcher
        self._live = True
        self._verified = not self._check_complete
        initial = watcher.initial
        self._present = {entry.key for entry in initial}
        self._on_reset(initial)
        self._loaded = True

    def _entry(self, entry: Entry) -> None:
        if entry.deleted:
            self._present.discard(entry.key)
        else:
            self._present.add(entry.key)
        self._on_entry(entry)

    async def _verify(self) -> None:
        """Check the load against the key listing; read in whatever it missed."""
        try:
            keys = await self._kv.keys(self._prefix, timeout=self._poll)
            missing = sorted(set(keys) - self._present)
            if missing:
                # Created since the snapshot (and queued in the watch), or dropped from it.
                _log.info(
                    "%s: %d listed keys not loaded yet; reading them", self._name, len(missing)
                )
            for key in missing:
                entry = await self._kv.get(key, timeout=self._poll)
                if entry is not None:
                    self._entry(entry)
        except (RequestTimeout, NoResponders) as exc:
            _log.debug("%s: completeness check deferred: %s", self._name, exc)
            return
        self._verified = True

    async def _follow(self, watcher: Watcher) -> None:
        while True:
            if not self._verified:
                try:
                    await self._verify()
                except ConnectionClosed:
                    self._live = False
                    return
            try:
                async with asyncio.timeout(self._poll):
                    entry = await anext(watcher)
            except TimeoutError:
                continue
            except (StopAsyncIteration, ConnectionClosed):
                self._live = False
                return
            except WatchLost:
                _log.warning("%s fell behind; rebuilding from a fresh watch", self._name)
            else:
                try:
                    self._entry(entry)
                    continue
                except Exception:
                    _log.exception(
                        "%s: applying revision %d failed; rebuilding", self._name, entry.revision
                    )
                    with contextlib.suppress(ConnectionClosed):
                        await watcher.stop()
                    await asyncio.sleep(self._poll)
            fresh = await self._rewatch()
            if fresh is None:
                return
            self.rebuilds += 1
            watcher = fresh
            self._reset(watcher)

    async def _rewatch(self) -> Watcher | None:
        """A fresh watcher; retried every ``poll`` while the store refuses one."""
        self._live = False
        while True:
            try:
                return await self._kv.watch(self._prefix, pending_limit=self._pending_limit)
            except ConnectionClosed:
                return None
            except TransportError as exc:
                _log.warning("%s: new watch failed (%s); retrying", self._name, exc)
                await asyncio.sleep(self._poll)


class WatchedCache:
    """Base of a cache that follows a bucket through ``self._watch`` (a ``BucketWatch``):
    its lifecycle and the health a caller checks before trusting it."""

    _watch: BucketWatch

    async def start(self) -> None:
        """Load the cache from a watch, then follow it in the background."""
        await self._watch.start()

    async def stop(self) -> None:
        await self._watch.stop()

    @property
    def loaded(self) -> bool:
        return self._watch.loaded

    @property
    def complete(self) -> bool:
        """Loaded, checked against the bucket's key listing, and still following."""
        return self._watch.complete

    @property
    def rebuilds(self) -> int:
        return self._watch.rebuilds
