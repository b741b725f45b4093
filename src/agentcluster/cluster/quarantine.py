"""Quarantine records in the ``coordination`` bucket, cached from a watch, changed by CAS.

Each quarantined node has one key, ``quarantine.<encoded node id>``, holding a
``core.health.Quarantine`` (DESIGN.md, "Cluster state": only a node writes its own
``nodes`` record, so quarantine lives in other keys). The leader's health monitor writes
the automatic steps, any node's monitor an operator's quarantine or release, always by
compare-and-set at the revision read and stamped (``buckets.stamped_update``), behind the
writer's fence. A record stays (a released one with its evidence) until its node's
membership record is gone, so the keys are bounded by the nodes the cluster knows.

Every node follows the keys through a watch, so placement and request balancing ask
``holds(node)`` — a dictionary access — and exclude quarantined and probationary nodes.
The book is lent to the node's agents and components as
``LocalNode.services["quarantine"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agentcluster.cluster.buckets import BucketWatch, WatchedCache, stamped_update
from agentcluster.core.health import Quarantine
from agentcluster.core.stamps import StampSource, WriteStamp
from agentcluster.errors import CorruptRecord, KeyExists, RevisionMismatch
from agentcluster.transport.interface import Entry, KeyValue
from agentcluster.transport.names import decode_token, encode_token

__all__ = [
    "QUARANTINE_PREFIX",
    "QUARANTINE_SERVICE",
    "QuarantineBook",
    "quarantine_book",
    "quarantine_key",
]

_log = logging.getLogger("agentcluster.cluster.quarantine")

QUARANTINE_PREFIX = "quarantine"
QUARANTINE_SERVICE = "quarantine"
"""The ``LocalNode.services`` key of a node's ``QuarantineBook``."""

_ATTEMPTS = 16
"""Compare-and-set rounds one change may lose to other writers before giving up."""


def quarantine_key(node_id: str) -> str:
    return f"{QUARANTINE_PREFIX}.{encode_token(node_id)}"


def _node_of(key: str) -> str:
    return decode_token(key[len(QUARANTINE_PREFIX) + 1 :])


def _stamp_of(data: bytes) -> WriteStamp | None:
    return Quarantine.from_bytes(data).stamp


def quarantine_book(services: dict[str, Any]) -> QuarantineBook | None:
    """The book a node lends its components, if its system agents started one."""
    book = services.get(QUARANTINE_SERVICE)
    return book if isinstance(book, QuarantineBook) else None


class QuarantineBook(WatchedCache):
    """One process's view of, and writes to, the quarantine keys."""

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
        self._held: dict[str, tuple[Quarantine, int]] = {}
        self._watch = BucketWatch(
            kv,
            on_reset=self._reset,
            on_entry=self._apply,
            prefix=QUARANTINE_PREFIX,
            poll=poll,
            name="quarantine",
        )
        self.changes = 0
        """Counts cache changes, so a reader knows when to look again."""

    # --- the cache ------------------------------------------------------------------

    def holds(self, node_id: str) -> bool:
        """Whether ``node_id`` is quarantined or on probation (excluded from placement and
        requests)."""
        held = self._held.get(node_id)
        return held is not None and held[0].active

    def quarantined(self) -> list[str]:
        return sorted(n for n, (record, _) in self._held.items() if record.active)

    def record(self, node_id: str) -> Quarantine | None:
        held = self._held.get(node_id)
        return None if held is None else held[0]

    def revision(self, node_id: str) -> int | None:
        held = self._held.get(node_id)
        return None if held is None else held[1]

    def records(self) -> dict[str, Quarantine]:
        return {node: record for node, (record, _) in sorted(self._held.items())}

    def _reset(self, initial: list[Entry]) -> None:
        self._held.clear()
        for entry in initial:
            self._apply(entry)
        self.changes += 1

    def _apply(self, entry: Entry) -> None:
        node_id = _node_of(entry.key)
        held = self._held.get(node_id)
        if held is not None and entry.revision <= held[1]:
            return
        if entry.deleted:
            self._held.pop(node_id, None)
        else:
            try:
                self._held[node_id] = (Quarantine.from_bytes(entry.value), entry.revision)
            except CorruptRecord as exc:
                _log.error("quarantine record of %r is unreadable: %s", node_id, exc)
                return
        self.changes += 1

    # --- writes ---------------------------------------------------------------------

    async def write(self, record: Quarantine, revision: int | None) -> Quarantine:
        """Write ``record`` (stamped here) over ``revision`` (None: the key is absent).
        Raises ``RevisionMismatch`` / ``KeyExists`` when another write got there first."""
        stamp = self._stamps().next()
        stamped = replace(record, stamp=stamp)
        written = await stamped_update(
            self._kv,
            quarantine_key(record.node),
            stamped.to_bytes(),
            stamp,
            revision,
            stamp_of=_stamp_of,
            timeout=self._timeout,
        )
        self._remember(stamped, written)
        return stamped

    async def change(
        self, node_id: str, change: Callable[[Quarantine | None], Quarantine | None]
    ) -> Quarantine | None:
        """Apply ``change`` to the freshly read record until the compare-and-set holds
        (``change`` returning None: nothing to write). Returns the record in force."""
        for _ in range(_ATTEMPTS):
            entry = await self._kv.get(quarantine_key(node_id), timeout=self._timeout)
            current = None if entry is None else Quarantine.from_bytes(entry.value)
            if entry is not None:
                self._apply(entry)
            changed = change(current)
            if changed is None:
                return current
            try:
                return await self.write(changed, None if entry is None else entry.revision)
            except (RevisionMismatch, KeyExists):
                continue
        raise RevisionMismatch(self._kv.bucket, quarantine_key(node_id), 0)

    async def forget(self, node_id: str, revision: int) -> None:
        """Delete the record of a node the membership no longer knows, at the revision
        seen."""
        await self._kv.delete(quarantine_key(node_id), revision=revision, timeout=self._timeout)

    def _remember(self, record: Quarantine, revision: int) -> None:
        held = self._held.get(record.node)
        if held is None or held[1] < revision:
            self._held[record.node] = (record, revision)
            self.changes += 1
