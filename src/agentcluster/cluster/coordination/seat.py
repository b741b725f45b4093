"""What every coordination primitive needs of its node (``Seat``), the timing they share,
and a watch of one key that also wakes on membership and lease changes (``KeyFollower``).

``locks``, ``barrier`` and ``election`` keep one record each in the ``coordination``
bucket; they read, ask ``core.coordination``, and write by stamped compare-and-set through
their ``Seat``, and wait on a ``KeyFollower`` instead of polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentcluster.cluster.buckets import BucketWatch, node_key
from agentcluster.cluster.lease_renewer import LeaseRenewer
from agentcluster.cluster.membership import Membership
from agentcluster.core.membership import NodeRecord
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import (
    ConnectionClosed,
    CorruptRecord,
    NoResponders,
    RequestTimeout,
    UsageError,
)
from agentcluster.transport.interface import Entry, KeyValue

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = [
    "BACKOFF",
    "IO_TIMEOUT",
    "POLL",
    "RELEASE_WITHIN",
    "WRITE_ATTEMPTS",
    "KeyFollower",
    "Seat",
]

_log = logging.getLogger("agentcluster.cluster.coordination.seat")

IO_TIMEOUT = 1.0
"""Seconds one read or write of a coordination key may take before it counts as timed out."""
WRITE_ATTEMPTS = 3
"""Writes (and read-backs) ``stamped_update`` makes before an outcome counts as unknown."""
POLL = 0.5
"""A waiter re-reads its key at least this often, whatever the watch says."""
BACKOFF = 0.05
"""Pause after the store refused a write or a read (a leader election), before retrying."""
RELEASE_WITHIN = 10.0
"""How long ``release`` retries a store that does not answer before raising."""
_WATCH_PENDING = 4096
"""Entries a key follower's watcher may hold unread before it counts as fallen behind."""


@dataclass(frozen=True, slots=True)
class Seat:
    """A started node's parts that coordination uses: the ``coordination`` bucket, the
    ``nodes`` bucket (for a fresh read of a holder the cache does not know), membership,
    and the lease renewer (None on a client: it reads, never writes)."""

    node: ClusterNode
    kv: KeyValue
    nodes: KeyValue
    membership: Membership
    renewer: LeaseRenewer | None

    @classmethod
    def of(cls, node: ClusterNode, *, writes: str | None = None) -> Seat:
        """The seat of a started node; ``writes`` names what the caller wants to write, and
        a client asked to write is refused with ``UsageError``."""
        liveness = node.liveness
        if node.stopped or liveness is None or liveness.buckets is None:
            raise ConnectionClosed(f"node {node.node_id!r} is not started")
        renewer = liveness.renewer
        if writes is not None and renewer is None:
            raise UsageError(
                f"{node.node_id!r} is a client: it cannot {writes} (a client has no node "
                "record, so nothing could tell when it died); join as a node"
            )
        buckets = liveness.buckets
        return cls(node, buckets.coordination, buckets.nodes, liveness.membership, renewer)

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def writer(self) -> LeaseRenewer:
        if self.renewer is None:
            raise UsageError(f"{self.node_id!r} is a client: it writes no coordination keys")
        return self.renewer

    @property
    def incarnation(self) -> int:
        return 0 if self.renewer is None else self.renewer.incarnation

    def valid(self) -> bool:
        """The node's fence: it may take a lock or a leadership now."""
        return self.renewer is not None and not self.node.stopped and self.renewer.valid()

    def stamp(self) -> WriteStamp:
        return self.writer.stamps.next()

    def fence_reason(self, incarnation: int) -> str | None:
        """Why a holding taken under ``incarnation`` can no longer be vouched for here."""
        renewer = self.renewer
        if self.node.stopped or renewer is None:
            return f"node {self.node_id!r} is stopped"
        if renewer.superseded is not None:
            return f"node {self.node_id!r} was superseded by a restart under its id"
        if renewer.incarnation != incarnation:
            return (
                f"node {self.node_id!r} rejoined as incarnation {renewer.incarnation}; "
                f"what it held under incarnation {incarnation} is over"
            )
        if not renewer.valid():
            return f"node {self.node_id!r}'s lease lapsed, so it may be declared dead"
        return None

    async def members_for(self, holder: str) -> tuple[dict[str, NodeRecord], bool]:
        """The membership view for a decision about ``holder``'s node, and whether it is
        complete. A holder the cache does not know is read from the ``nodes`` bucket first
        (it may have joined after the cache's last update), so "unknown" means gone."""
        members = self.membership.members()
        if not holder or holder in members:
            return members, self.membership.complete
        entry = await self.nodes.get(node_key(holder), timeout=IO_TIMEOUT)
        if entry is not None:
            try:
                members[holder] = NodeRecord.from_bytes(entry.value)
            except CorruptRecord as exc:
                _log.error("unreadable node record of %r: %s", holder, exc)
                return members, False
        return members, True

    def listen(self, wake: Callable[[], None]) -> list[Callable[[], None]]:
        """Call ``wake`` on every membership change and every change of the own lease;
        returns the removers."""

        def on_record(node: str, record: NodeRecord | None, revision: int) -> None:
            wake()

        removers = [self.membership.add_listener(on_record)]
        if self.renewer is not None:
            removers.append(self.renewer.add_listener(wake))
        return removers


class KeyFollower:
    """The latest entry of one coordination key, from a watch of its kind's prefix.

    ``changed`` is set on every new revision of the key and, unless ``wake_on_membership``
    is False, every membership change and every change of the node's lease: whatever can
    change a decision about the key. The watch is a ``buckets.BucketWatch`` (a watcher that
    fell behind is replaced by a fresh one whose snapshot catches up), without its
    completeness check of the whole prefix: only this one key matters, and ``refresh``
    reads it directly, which a waiter does whenever the watch stayed quiet for a ``poll``,
    so a watch that lags without saying so costs a poll, never a missed change.
    """

    def __init__(
        self, seat: Seat, key: str, *, poll: float = POLL, wake_on_membership: bool = True
    ) -> None:
        self._seat = seat
        self._wake_on_membership = wake_on_membership
        self.key = key
        self.revision = 0
        """The latest revision of the key seen (0: none)."""
        self.entry: Entry | None = None
        """The key's latest value, None while it is absent or deleted."""
        self.changed = asyncio.Event()
        self._removers: list[Callable[[], None]] = []
        self._watch = BucketWatch(
            seat.kv,
            on_reset=self._reset,
            on_entry=self.feed,
            prefix=key.split(".", 1)[0],
            pending_limit=_WATCH_PENDING,
            poll=poll,
            name=f"coordination-watch[{seat.node_id}:{key}]",
            check_complete=False,
        )

    async def start(self) -> None:
        if self._wake_on_membership:
            self._removers = self._seat.listen(self.changed.set)
        try:
            await self._watch.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for remove in self._removers:
            remove()
        self._removers = []
        await self._watch.stop()

    def feed(self, entry: Entry) -> None:
        if entry.key != self.key or entry.revision <= self.revision:
            return
        self.revision = entry.revision
        self.entry = None if entry.deleted else entry
        self.changed.set()

    def _reset(self, initial: list[Entry]) -> None:
        for entry in initial:
            if entry.key == self.key:
                self.feed(entry)
                return
        if self.entry is not None:  # a fresh snapshot without the key: deleted meanwhile
            self.entry = None
            self.changed.set()

    async def wait(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) for ``changed``; True if it was set. Clears it."""
        if not self.changed.is_set():
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    await self.changed.wait()
            except TimeoutError:
                return False
        self.changed.clear()
        return True

    async def refresh(self) -> None:
        """Read the key itself; a store that does not answer leaves the view as it was."""
        try:
            entry = await self._seat.kv.get(self.key, timeout=IO_TIMEOUT)
        except (RequestTimeout, NoResponders):
            return
        if entry is not None:
            self.feed(entry)


# --- locks ------------------------------------------------------------------------------
