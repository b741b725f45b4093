"""The ``state`` bucket: persistent agents' snapshots, read and written under a fence.

Why a module of its own: every snapshot write of a critical or durable agent is a
compare-and-set on the revision of that agent's own previous write (the activation's
fencing write starts the chain at the revision it read), so a zombie instance — one whose
agent was failed over while it was frozen or cut off — always loses its next write and
learns it is fenced (``AgentFenced``). Nothing else ever writes a state key.

A snapshot larger than the key-value limit goes to the ``snapshots`` object store under
its sha256, and a pointer is written to the key *after* the object is stored, so a pointer
never names a missing object (``core.snapshots.storage_plan``). The object a pointer
replaced is deleted once the new value committed (best effort: an object left behind by a
crash between the two writes is harmless and named by its own hash).

A write whose reply timed out may have landed: the key is read back. Our own value there
means it did; the key still at the revision the write expected means it did not (yet), and
the same compare-and-set is repeated — never answered "fenced", which would stop an agent
that nobody replaced. A write whose outcome stayed unknown is remembered: if it lands late,
the next write loses its compare-and-set to it, finds it at the key, and is repeated at its
revision. Only a value that is not ours means another writer: ``AgentFenced``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agentcluster.core.snapshots import (
    Inline,
    ObjectPointer,
    SnapshotEnvelope,
    WriteAgainAt,
    WriteLost,
    decode_stored,
    resolve_snapshot_write,
    storage_plan,
)
from agentcluster.errors import (
    AgentFenced,
    CorruptRecord,
    KeyExists,
    RequestTimeout,
    RestoreFailed,
    RevisionMismatch,
)
from agentcluster.transport.interface import KeyValue, ObjectStore
from agentcluster.transport.names import encode_token

__all__ = ["SNAPSHOT_OBJECTS", "StateStore", "Stored", "state_key"]

_log = logging.getLogger("agentcluster.cluster.state_store")

SNAPSHOT_OBJECTS = "snapshots"
"""The object store holding snapshots over the key-value limit."""

_READBACK_ATTEMPTS = 5

_UNRESOLVED_LIMIT = 16
"""Values of one agent's writes whose outcome stayed unknown, remembered until one commits."""


def state_key(agent_id: str) -> str:
    return encode_token(agent_id)


@dataclass(frozen=True, slots=True)
class Stored:
    """What the state key holds: the envelope (None when the key is absent) and the
    revision to compare-and-set against (None: create)."""

    envelope: SnapshotEnvelope | None
    revision: int | None
    pointer: ObjectPointer | None = None


class StateStore:
    """Reads and fenced writes of snapshots (see the module docstring)."""

    def __init__(
        self,
        kv: KeyValue,
        objects: ObjectStore | None,
        *,
        kv_limit: int,
        timeout: float = 2.0,
    ) -> None:
        self._kv = kv
        self._objects = objects
        self.kv_limit = kv_limit
        self._timeout = timeout
        self.objects_written = 0
        self._unresolved: dict[str, tuple[int, list[bytes]]] = {}
        """Per agent: the incarnation and the values of its writes of unknown outcome."""

    async def read(self, agent_id: str) -> Stored:
        """The stored snapshot; ``RestoreFailed`` when it cannot be decoded or its object
        is missing or does not match its hash (never read as "no snapshot")."""
        entry = await self._kv.get(state_key(agent_id), timeout=self._timeout)
        if entry is None or entry.deleted:
            return Stored(None, None if entry is None else entry.revision)
        try:
            decoded = decode_stored(entry.value)
            if isinstance(decoded, SnapshotEnvelope):
                return Stored(decoded, entry.revision)
            if self._objects is None:
                raise RestoreFailed(
                    f"snapshot of {agent_id!r} is in the object store, which is not open",
                    agent_id=agent_id,
                )
            data = await self._objects.get(decoded.content_hash, timeout=self._timeout)
            if data is None:
                raise RestoreFailed(
                    f"snapshot object {decoded.content_hash} of {agent_id!r} is missing",
                    agent_id=agent_id,
                )
            envelope = SnapshotEnvelope.from_bytes(decoded.verify(data))
            return Stored(envelope, entry.revision, decoded)
        except CorruptRecord as exc:
            raise RestoreFailed(
                f"snapshot of {agent_id!r} is unreadable: {exc}", agent_id=agent_id
            ) from exc

    async def write(
        self,
        agent_id: str,
        envelope: SnapshotEnvelope,
        revision: int | None,
        *,
        replaces: ObjectPointer | None = None,
    ) -> tuple[int, ObjectPointer | None]:
        """Write ``envelope`` by compare-and-set at ``revision`` (create when None);
        returns the new revision and the pointer written (None: inline).

        ``AgentFenced`` when the key moved on under another writer.
        """
        encoded = envelope.to_bytes()
        plan = storage_plan(encoded, self.kv_limit)
        value = encoded
        pointer: ObjectPointer | None = None
        if isinstance(plan, ObjectPointer):
            if self._objects is None:
                raise RestoreFailed(
                    f"snapshot of {agent_id!r} ({len(encoded)} bytes) is over the key-value "
                    f"limit ({self.kv_limit}) and no object store is open",
                    agent_id=agent_id,
                )
            if replaces is None or replaces.content_hash != plan.content_hash:
                await self._objects.put(plan.content_hash, encoded, timeout=self._timeout)
                self.objects_written += 1
            pointer = plan
            value = plan.to_bytes()
        else:
            assert isinstance(plan, Inline)
        written = await self._compare_and_set(agent_id, envelope, value, revision)
        if replaces is not None and (pointer is None or pointer != replaces):
            await self._drop_object(replaces)
        return written, pointer

    async def _compare_and_set(
        self, agent_id: str, envelope: SnapshotEnvelope, value: bytes, revision: int | None
    ) -> int:
        """Write ``value`` at ``revision`` until the outcome is definite (module docstring;
        the decisions are ``core.snapshots.resolve_snapshot_write``)."""
        key = state_key(agent_id)
        incarnation = envelope.agent_incarnation
        held = self._unresolved.get(agent_id)
        ours = held[1] if held is not None and held[0] == incarnation else []
        expected = revision
        for _ in range(_READBACK_ATTEMPTS):
            try:
                if expected is None:
                    written = await self._kv.create(key, value, timeout=self._timeout)
                else:
                    written = await self._kv.update(key, value, expected, timeout=self._timeout)
            except (RevisionMismatch, KeyExists):
                timed_out = False
            except RequestTimeout:
                timed_out = True
                if value not in ours:
                    ours.append(value)
                    del ours[:-_UNRESOLVED_LIMIT]
                    self._unresolved[agent_id] = (incarnation, ours)
            else:
                self._unresolved.pop(agent_id, None)
                return written
            try:
                entry = await self._kv.get(key, timeout=self._timeout)
            except RequestTimeout:
                if not timed_out:
                    raise
                continue
            found = None if entry is None else (entry.value, entry.revision)
            outcome = resolve_snapshot_write(found, value, expected, ours, timed_out=timed_out)
            if isinstance(outcome, WriteAgainAt):
                expected = outcome.revision
                continue
            self._unresolved.pop(agent_id, None)
            if isinstance(outcome, WriteLost):
                raise self._fenced(agent_id, envelope)
            return outcome.revision
        raise RequestTimeout(f"state of {agent_id!r}: the outcome of a write stayed unknown")

    def _fenced(self, agent_id: str, envelope: SnapshotEnvelope) -> AgentFenced:
        return AgentFenced(agent_id, envelope.agent_incarnation)

    async def _drop_object(self, pointer: ObjectPointer) -> None:
        if self._objects is None:
            return
        try:
            await self._objects.delete(pointer.content_hash, timeout=self._timeout)
        except Exception as exc:  # a leftover object is named by its hash and harmless
            _log.debug("snapshot object %s not deleted: %s", pointer.content_hash, exc)

    async def delete(self, agent_id: str) -> None:
        """Forget an agent's snapshot (it was stopped for good)."""
        stored = await self._kv.get(state_key(agent_id), timeout=self._timeout)
        if stored is None:
            return
        try:
            await self._kv.delete(state_key(agent_id), revision=stored.revision)
        except RevisionMismatch:
            return
        try:
            decoded = decode_stored(stored.value)
        except CorruptRecord:
            return
        if isinstance(decoded, ObjectPointer):
            await self._drop_object(decoded)
