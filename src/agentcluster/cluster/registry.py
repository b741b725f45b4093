"""The distributed registry's shell: the ``agents`` bucket, its watched cache, and its writes.

Each node keeps a ``RegistryIndex`` of the whole bucket, loaded from a watch's initial
snapshot and kept current by its updates (``buckets.BucketWatch``), so ``lookup`` and
``find_by_capability`` are dictionary reads. The cache is never silently incomplete: the
load is checked against the bucket's key listing, and a watcher that fell behind is
replaced by a fresh watch (``rebuilds`` counts them). It is a hint; every decision that
matters is a compare-and-set:

- ``register`` creates the entry; if one exists and ``core.registry.may_take_over`` says
  its placement is gone (node dead, left, unknown, or alive under a newer incarnation), it
  is replaced by compare-and-set at the revision read. Otherwise ``AgentExists``.
- ``unregister`` deletes an entry only at the revision this node last wrote for it.
- ``mark_unavailable`` (a leader duty) moves each entry of a dead or left node to
  ``unavailable`` by compare-and-set, keeping its spec for failover.

Every value written carries a write stamp of this node's incarnation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from agentcluster.cluster.buckets import BucketWatch, WatchedCache
from agentcluster.cluster.system_base import is_system_agent
from agentcluster.core.membership import NodeRecord
from agentcluster.core.registry import AgentEntry, AgentStatus, RegistryIndex, may_take_over
from agentcluster.core.stamps import StampSource
from agentcluster.errors import (
    AgentExists,
    CorruptRecord,
    KeyExists,
    RevisionMismatch,
)
from agentcluster.transport.interface import Entry, KeyValue
from agentcluster.transport.names import decode_token, encode_token

__all__ = ["Registry", "agent_key"]

_log = logging.getLogger("agentcluster.cluster.registry")

_TAKEOVER_ATTEMPTS = 5


def agent_key(agent_id: str) -> str:
    """The ``agents`` bucket key of an agent id (any string, encoded into one token)."""
    return encode_token(agent_id)


class Registry(WatchedCache):
    """One node's view of, and writes to, the ``agents`` bucket."""

    def __init__(
        self,
        kv: KeyValue,
        stamps: Callable[[], StampSource],
        *,
        pending_limit: int = 65536,
        poll: float = 1.0,
    ) -> None:
        self._kv = kv
        self._stamps = stamps
        self.index = RegistryIndex()
        self._revisions: dict[str, int] = {}
        self._watch = BucketWatch(
            kv,
            on_reset=self._reset,
            on_entry=self._apply,
            pending_limit=pending_limit,
            poll=poll,
            name="registry",
        )
        self.corrupt = 0
        self.listeners: list[Callable[[AgentEntry, int], None]] = []
        """Called with every entry the cache takes in (the node's reconciler)."""
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}

    # --- the cache ------------------------------------------------------------------

    def lookup(self, agent_id: str) -> AgentEntry | None:
        return self.index.lookup(agent_id)

    def find_by_capability(self, capability: str) -> tuple[str, ...]:
        return self.index.find_by_capability(capability)

    def agents_by_node(self) -> dict[str, list[str]]:
        return self.index.by_node()

    def user_agents(self, node_id: str) -> list[str]:
        """The ids of the agents on ``node_id`` that are not system agents."""
        found = []
        for agent_id in self.index.on_node(node_id):
            entry = self.index.lookup(agent_id)
            if entry is not None and not is_system_agent(entry.capabilities):
                found.append(agent_id)
        return found

    async def lookup_fresh(
        self, agent_id: str, *, timeout: float | None = None
    ) -> AgentEntry | None:
        """Read the bucket (may still be stale while the substrate itself is partitioned)."""
        entry = await self._kv.get(agent_key(agent_id), timeout=timeout)
        return None if entry is None else self._decode(entry)

    def _reset(self, initial: list[Entry]) -> None:
        self.index.clear()
        self._revisions.clear()
        for entry in initial:
            self._apply(entry)

    def _apply(self, entry: Entry) -> None:
        agent_id = decode_token(entry.key)
        held = self._revisions.get(agent_id)
        if held is not None and entry.revision <= held:
            return
        if entry.deleted:
            self.index.remove(agent_id)
            self._revisions.pop(agent_id, None)
            return
        decoded = self._decode(entry)
        if decoded is None:
            return
        self._hold(decoded, entry.revision)

    def _hold(self, decoded: AgentEntry, revision: int) -> None:
        held = self._revisions.get(decoded.id)
        if held is not None and revision < held:
            return
        self.index.apply(decoded)
        self._revisions[decoded.id] = revision
        for listener in self.listeners:
            try:
                listener(decoded, revision)
            except Exception:
                _log.exception("registry listener failed on %r", decoded.id)
        waiters = self._waiters.get(decoded.id)
        if waiters:
            still = [(r, f) for r, f in waiters if r > revision and not f.done()]
            for r, f in waiters:
                if r <= revision and not f.done():
                    f.set_result(None)
            if still:
                self._waiters[decoded.id] = still
            else:
                del self._waiters[decoded.id]

    async def wait_for(self, agent_id: str, revision: int, timeout: float) -> bool:
        """Wait until the cache holds ``agent_id`` at ``revision`` or later; False on timeout.

        So that a caller who just registered an agent through another node can address it
        at once through this one.
        """
        held = self._revisions.get(agent_id)
        if held is not None and held >= revision:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(agent_id, [])
        waiters.append((revision, future))
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        finally:
            remaining = [(r, f) for r, f in self._waiters.get(agent_id, []) if f is not future]
            if remaining:
                self._waiters[agent_id] = remaining
            else:
                self._waiters.pop(agent_id, None)
        return True

    def _decode(self, entry: Entry) -> AgentEntry | None:
        try:
            return AgentEntry.from_bytes(entry.value)
        except CorruptRecord as exc:
            self.corrupt += 1
            _log.error("registry entry %r is unreadable: %s", entry.key, exc)
            return None

    # --- writes ---------------------------------------------------------------------

    async def register(
        self,
        entry: AgentEntry,
        nodes: Mapping[str, NodeRecord],
        *,
        timeout: float | None = None,
    ) -> tuple[AgentEntry, int]:
        """Register ``entry`` uniquely; returns the entry written and its revision.

        Raises ``AgentExists`` (with the holder's node in the message) when the id names a
        live placement elsewhere. A taken-over entry gets the old incarnation + 1.
        """
        key = agent_key(entry.id)
        written = replace(entry, stamp=self._stamps().next())
        try:
            revision = await self._kv.create(key, written.to_bytes(), timeout=timeout)
        except KeyExists:
            pass
        else:
            self._hold(written, revision)
            return written, revision
        for _ in range(_TAKEOVER_ATTEMPTS):
            current = await self._kv.get(key, timeout=timeout)
            if current is None:
                try:
                    revision = await self._kv.create(key, written.to_bytes(), timeout=timeout)
                except KeyExists:
                    continue
                self._hold(written, revision)
                return written, revision
            existing = self._decode(current)
            if existing is not None and not may_take_over(existing, nodes):
                raise AgentExists(
                    f"agent {entry.id!r} is registered on node {existing.node!r}",
                    agent_id=entry.id,
                    node_id=existing.node,
                )
            incarnation = 1 if existing is None else existing.incarnation + 1
            written = replace(
                entry, incarnation=max(entry.incarnation, incarnation), stamp=self._stamps().next()
            )
            try:
                revision = await self._kv.update(
                    key, written.to_bytes(), current.revision, timeout=timeout
                )
            except RevisionMismatch:
                continue
            self._hold(written, revision)
            return written, revision
        raise AgentExists(
            f"agent {entry.id!r}: its entry kept changing during {_TAKEOVER_ATTEMPTS} takeovers",
            agent_id=entry.id,
            retryable=True,
        )

    async def unregister(
        self, agent_id: str, revision: int, *, timeout: float | None = None
    ) -> bool:
        """Delete the entry if it is still at ``revision`` (the one this node wrote)."""
        try:
            await self._kv.delete(agent_key(agent_id), revision=revision, timeout=timeout)
        except RevisionMismatch:
            return False
        return True

    async def mark_unavailable(
        self,
        node_id: str,
        reason: str,
        *,
        up_to_incarnation: int | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Leader duty: every entry placed on ``node_id`` (under an incarnation up to
        ``up_to_incarnation``, when given) becomes ``unavailable`` by CAS.

        Works from the cache and re-checks each entry by its revision, so entries that
        moved meanwhile — or were taken over by the node's next incarnation — are left
        alone; returns the ids marked.
        """
        marked: list[str] = []
        for agent_id in self.index.on_node(node_id):
            entry = self.index.lookup(agent_id)
            revision = self._revisions.get(agent_id)
            if entry is None or revision is None or entry.status is AgentStatus.UNAVAILABLE:
                continue
            if up_to_incarnation is not None and entry.node_incarnation > up_to_incarnation:
                continue
            changed = entry.unavailable(reason, self._stamps().next())
            try:
                await self._kv.update(
                    agent_key(agent_id), changed.to_bytes(), revision, timeout=timeout
                )
            except RevisionMismatch:
                continue
            marked.append(agent_id)
        return marked

    async def read(
        self, agent_id: str, *, timeout: float | None = None
    ) -> tuple[AgentEntry, int] | None:
        """The entry and its revision, read from the bucket (and taken into the cache)."""
        entry = await self._kv.get(agent_key(agent_id), timeout=timeout)
        if entry is None or entry.deleted:
            return None
        decoded = self._decode(entry)
        if decoded is None:
            return None
        self._hold(decoded, entry.revision)
        return decoded, entry.revision

    async def write_at(
        self, entry: AgentEntry, revision: int, *, timeout: float | None = None
    ) -> int:
        """Write ``entry`` by compare-and-set at ``revision`` (``RevisionMismatch`` if the
        key moved on); the entry should carry a fresh stamp."""
        written = await self._kv.update(
            agent_key(entry.id), entry.to_bytes(), revision, timeout=timeout
        )
        self._hold(entry, written)
        return written

    def revision_of(self, agent_id: str) -> int | None:
        """The revision of the cached entry (for compare-and-set by its owner)."""
        return self._revisions.get(agent_id)
