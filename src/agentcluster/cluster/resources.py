"""The ``reservations`` bucket: each node's reserved resources, cached, and changed by CAS.

Every node (and client) follows the bucket through a watch, so a placement decision reads
what each node has reserved from memory (``reserved``). The writes are made by the node
that will host the agent: ``reserve`` reads its key, lets ``core.reservations`` check the
capacity and add the entry, and writes by compare-and-set at the revision read — on a
conflict it reads again, so concurrent placements onto one node never overcommit it.
``release`` removes entries the same way; ``collect`` is the leader's duty of removing the
entries ``core.reservations.plan_collection`` found unmatched for their grace period.
Every value carries a write stamp, so a write whose reply timed out is resolved by
reading it back (``buckets.stamped_update``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from agentcluster.cluster.buckets import (
    BucketWatch,
    WatchedCache,
    node_id_of,
    node_key,
    stamped_update,
)
from agentcluster.core.reservations import NodeReservations, Reservation, ReservationKey
from agentcluster.core.stamps import StampSource, WriteStamp
from agentcluster.errors import CorruptRecord, KeyExists, NoAvailableNode, RevisionMismatch
from agentcluster.transport.interface import Entry, KeyValue

__all__ = ["Reservations"]

_log = logging.getLogger("agentcluster.cluster.resources")

_ATTEMPTS = 64
"""Compare-and-set rounds one change may lose to other writers before giving up."""


def _stamp_of(data: bytes) -> WriteStamp | None:
    return NodeReservations.from_bytes(data).stamp


class Reservations(WatchedCache):
    """One process's view of, and writes to, the ``reservations`` bucket."""

    def __init__(
        self,
        kv: KeyValue,
        stamps: Callable[[], StampSource],
        *,
        timeout: float = 2.0,
        poll: float = 1.0,
    ) -> None:
        self._kv = kv
        self._stamps = stamps
        self._timeout = timeout
        self._held: dict[str, tuple[NodeReservations, int]] = {}
        self._watch = BucketWatch(
            kv, on_reset=self._reset, on_entry=self._apply, poll=poll, name="reservations"
        )
        self.changes = 0
        """Counts cache changes, so a strategy knows when to precompute again."""

    # --- the cache ------------------------------------------------------------------

    def of(self, node_id: str) -> NodeReservations:
        held = self._held.get(node_id)
        return NodeReservations(node_id) if held is None else held[0]

    def reserved(self, node_id: str) -> dict[str, float]:
        held = self._held.get(node_id)
        return {} if held is None else held[0].reserved()

    def all(self) -> dict[str, NodeReservations]:
        return {node_id: value for node_id, (value, _) in self._held.items()}

    def _reset(self, initial: list[Entry]) -> None:
        self._held.clear()
        for entry in initial:
            self._apply(entry)
        self.changes += 1

    def _apply(self, entry: Entry) -> None:
        node_id = node_id_of(entry.key)
        held = self._held.get(node_id)
        if held is not None and entry.revision <= held[1]:
            return
        if entry.deleted:
            self._held.pop(node_id, None)
        else:
            try:
                self._held[node_id] = (NodeReservations.from_bytes(entry.value), entry.revision)
            except CorruptRecord as exc:
                _log.error("reservations of %r are unreadable: %s", node_id, exc)
                return
        self.changes += 1

    # --- writes ---------------------------------------------------------------------

    async def _read(self, node_id: str) -> tuple[NodeReservations, int | None]:
        entry = await self._kv.get(node_key(node_id), timeout=self._timeout)
        if entry is None:
            return NodeReservations(node_id), None
        value = NodeReservations.from_bytes(entry.value)
        self._apply(entry)
        return value, entry.revision

    async def _change(
        self,
        node_id: str,
        change: Callable[[NodeReservations, WriteStamp], NodeReservations | None],
    ) -> NodeReservations:
        """Apply ``change`` to the key by compare-and-set until it holds (``None``: nothing
        to write). ``change`` may raise to refuse (``NoAvailableNode``).

        The first round starts from the watched cache, saving a read when it is current
        (the compare-and-set checks it); only a write is ever based on it. A refusal or a
        "nothing to write" is decided on a fresh read, since a stale cache may still hold
        entries released meanwhile.
        """
        cached: tuple[NodeReservations, int | None] | None = None
        if self.complete:
            cached = self._held.get(node_id) or (NodeReservations(node_id), None)
        revision: int | None = None
        for _ in range(_ATTEMPTS):
            fresh = cached is None
            if cached is None:
                current, revision = await self._read(node_id)
            else:
                (current, revision), cached = cached, None
            stamp = self._stamps().next()
            try:
                changed = change(current, stamp)
            except NoAvailableNode:
                if fresh:
                    raise
                continue
            if changed is None:
                if fresh:
                    return current
                continue
            try:
                written = await stamped_update(
                    self._kv,
                    node_key(node_id),
                    changed.to_bytes(),
                    stamp,
                    revision,
                    stamp_of=_stamp_of,
                    timeout=self._timeout,
                )
            except (RevisionMismatch, KeyExists):
                continue
            self._held[node_id] = (changed, written)
            self.changes += 1
            return changed
        # Every round lost to another writer: give up, retryable, naming the key.
        raise RevisionMismatch(self._kv.bucket, node_key(node_id), revision or 0)

    async def reserve(
        self, node_id: str, capacity: Mapping[str, float], reservation: Reservation
    ) -> NodeReservations:
        """Add ``reservation`` to ``node_id``'s key if it fits ``capacity``; raises
        ``NoAvailableNode(reason="no_capacity")`` when it does not."""

        def add(current: NodeReservations, stamp: WriteStamp) -> NodeReservations | None:
            if current.holds(reservation.key):
                return None
            return current.with_reservation(reservation, capacity, stamp)

        return await self._change(node_id, add)

    async def replace(
        self,
        node_id: str,
        capacity: Mapping[str, float],
        old: ReservationKey,
        new: Reservation,
    ) -> NodeReservations:
        """Move a reservation to a new key (the registration came out at another agent
        incarnation) in one write."""

        def move(current: NodeReservations, stamp: WriteStamp) -> NodeReservations | None:
            if current.holds(new.key) and not current.holds(old):
                return None
            return current.without([old], stamp).with_reservation(new, capacity, stamp)

        return await self._change(node_id, move)

    async def release(self, node_id: str, keys: Iterable[ReservationKey]) -> bool:
        """Remove the entries ``keys`` from ``node_id``'s key; False if none was there."""
        wanted = tuple(keys)
        removed = False

        def drop(current: NodeReservations, stamp: WriteStamp) -> NodeReservations | None:
            nonlocal removed
            present = [k for k in wanted if current.holds(k)]
            if not present:
                return None
            removed = True
            return current.without(present, stamp)

        await self._change(node_id, drop)
        return removed
