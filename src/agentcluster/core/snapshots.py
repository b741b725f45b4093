"""Snapshots of persistent (critical and durable) agents: when to write, what to release,
and how a snapshot is stored and upgraded.

Theory of operation:

- **Versions.** Every action that changes an agent's state calls ``changed(now)``, which
  numbers the change: the scheduler's ``latest_version``. A snapshot holds everything up to
  the version it was taken at; ``committed_version`` is the highest version whose snapshot
  the store acknowledged, and ``covers(v)`` says whether change ``v`` is durable.
- **Coalescing** is group commit. ``SnapshotScheduler`` writes after each action, and at
  most one write is in flight: the changes made while it is in flight are all covered by
  the next write, which starts as soon as it commits. An idle agent's change is written at
  once (a lone action's reply waits one write), and a busy agent writes once per store
  round trip however many actions it runs. ``max_staleness`` (default 0) delays each write
  until the oldest uncommitted change is that old, so that more changes share it: fewer
  writes under load, at the price of that much latency on every reply. The store sees at
  most one write per agent per ``max(max_staleness, one write's duration)``, and a change
  waits at most ``max_staleness`` plus one write's duration for its write to start.
- **Failures.** A failed write leaves its changes uncommitted; the next write (of the then
  latest version) waits a backoff of 10 ms doubling up to 1 s, reset by a commit. A fenced
  write (compare-and-set lost to a newer owner) is not a failure to retry: the shell stops
  the agent.
- **Outbox.** Replies and signals an action emits go into ``Outbox`` with their final ids
  and the version of the change that emitted them. They leave the agent only once a
  committed snapshot covers that version (``releasable``), so nothing outside sees an
  effect that a failover could undo. A released entry is dropped from the ledger, so the
  next snapshot no longer stores it and it is never released twice by one incarnation. A
  restore brings back the entries of the restored snapshot — the ones not released when it
  was taken — and releases them again with the same ids; receivers drop duplicates.
- **Envelope.** ``SnapshotEnvelope`` is what is stored: schema version, state, schedules,
  unreleased outbox, inbox position (durable agents) and agent incarnation, as one JSON
  object. ``storage_plan`` keeps it inline in key-value up to the key-value limit
  (inclusive); above it the bytes go to the object store under their sha256 and an
  ``ObjectPointer`` is written to key-value *after* the object, so a pointer never names a
  missing object. ``decode_stored`` tells the two apart when reading.
- **Migration** is the agent class's own (``Agent.migrate``, called by ``Agent.restore``
  on the envelope's ``state``, the agent's snapshot): a snapshot newer than the code, or a
  migration that raises, is ``RestoreFailed`` and the agent is marked failed, never
  silently reset to a fresh state.

Nothing here reads a clock or does I/O; times are monotonic seconds passed in, and a time
earlier than one already seen is taken as the latest one seen.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from agentcluster.core.fields import RecordFields, decode_object
from agentcluster.errors import (
    AgentError,
    ConfigurationError,
    CorruptRecord,
    UsageError,
)

__all__ = [
    "DEFAULT_MAX_OUTBOX",
    "DEFAULT_MAX_STALENESS",
    "RETRY_INITIAL",
    "RETRY_MAX",
    "Inline",
    "ObjectPointer",
    "Outbox",
    "OutboxEntry",
    "OutboxFull",
    "SnapshotEnvelope",
    "SnapshotScheduler",
    "WriteAgainAt",
    "WriteLanded",
    "WriteLost",
    "decode_stored",
    "resolve_snapshot_write",
    "retry_delay",
    "storage_plan",
]

DEFAULT_MAX_STALENESS = 0.0
"""Seconds the oldest uncommitted change waits before its snapshot write may start: 0 is
group commit (at once when no write is in flight)."""
RETRY_INITIAL = 0.01
"""Wait before retrying after the first failed write; doubles on each further failure."""
RETRY_MAX = 1.0
"""The cap of the retry wait."""
DEFAULT_MAX_OUTBOX = 10_000
"""Unreleased outbox entries an agent may hold."""


class OutboxFull(AgentError, ValueError):
    """An action emitted more than the outbox holds: ``limit`` entries are still waiting
    for a snapshot to commit. Retryable once snapshots commit again. Defined here rather
    than as ``MailboxFull``, which tells a *sender* that a receiver's mailbox is full."""

    reason = "outbox_full"
    default_retryable = True

    def __init__(self, limit: int, *, agent_id: str | None = None) -> None:
        super().__init__(
            f"outbox holds {limit} unreleased entries; no more until a snapshot commits",
            agent_id=agent_id,
        )
        self.limit = limit


# --- coalescing ---------------------------------------------------------------------


class SnapshotScheduler:
    """When to write a persistent agent's snapshot. The shell calls ``changed`` after each
    state-changing action, starts a write when ``due`` (or at ``next_deadline()``), and
    reports its outcome with ``write_committed`` or ``write_failed``."""

    __slots__ = (
        "_committed",
        "_failures",
        "_in_flight",
        "_latest",
        "_now",
        "_oldest",
        "_oldest_after_flight",
        "_retry_at",
        "max_staleness",
    )

    def __init__(self, max_staleness: float = DEFAULT_MAX_STALENESS, *, version: int = 0) -> None:
        """``version`` is the version of the state the agent starts from, taken as committed
        (a restored snapshot, or the fencing snapshot of an activation)."""
        if (
            isinstance(max_staleness, bool)
            or not isinstance(max_staleness, int | float)
            or not math.isfinite(max_staleness)
            or max_staleness < 0
        ):
            raise ConfigurationError(
                f"max_staleness must be a finite number >= 0, got {max_staleness!r}"
            )
        self.max_staleness = float(max_staleness)
        self._latest = version
        self._committed = version
        self._in_flight: int | None = None
        # When the oldest change above ``_committed`` / above ``_in_flight`` was made.
        self._oldest: float | None = None
        self._oldest_after_flight: float | None = None
        self._failures = 0
        self._retry_at: float | None = None
        self._now = -math.inf

    def __repr__(self) -> str:
        return (
            f"SnapshotScheduler(committed={self._committed}, latest={self._latest}, "
            f"in_flight={self._in_flight})"
        )

    @property
    def latest_version(self) -> int:
        return self._latest

    @property
    def committed_version(self) -> int:
        return self._committed

    @property
    def in_flight(self) -> int | None:
        """The version being written, or None."""
        return self._in_flight

    @property
    def failures(self) -> int:
        """Writes failed in a row since the last commit."""
        return self._failures

    @property
    def oldest_uncommitted_at(self) -> float | None:
        """When the oldest change not yet committed was made; None if all are committed."""
        return self._oldest

    def covers(self, version: int) -> bool:
        """Whether a committed snapshot includes change ``version``."""
        return version <= self._committed

    def changed(self, now: float) -> int:
        """An action changed the state; returns the change's version."""
        now = self._advance(now)
        self._latest += 1
        if self._oldest is None:
            self._oldest = now
        if self._in_flight is not None and self._oldest_after_flight is None:
            self._oldest_after_flight = now
        return self._latest

    def due(self, now: float) -> bool:
        """Whether to start a write now: something is uncommitted, no write is in flight,
        no retry wait is running, and the oldest change is ``max_staleness`` old."""
        deadline = self.next_deadline()
        return deadline is not None and self._advance(now) >= deadline

    def next_deadline(self) -> float | None:
        """When a write becomes due; None while nothing is uncommitted or a write is in
        flight (its outcome moves the scheduler). A time already past means due now."""
        if self._oldest is None or self._in_flight is not None:
            return None
        deadline = self._oldest + self.max_staleness
        if self._retry_at is not None:
            deadline = max(deadline, self._retry_at)
        return deadline

    def write_started(self, now: float) -> int:
        """The shell begins writing the snapshot of the current state; returns its version.

        Normally called when ``due``; a shell may also force a write (a graceful leave's
        final snapshot) at any time no write is in flight.
        """
        self._advance(now)
        if self._in_flight is not None:
            raise UsageError(f"snapshot write of version {self._in_flight} is still in flight")
        self._in_flight = self._latest
        self._oldest_after_flight = None
        return self._latest

    def write_committed(self, version: int, now: float) -> None:
        """The store acknowledged the snapshot of ``version``."""
        self._settle(version, now)
        self._committed = max(self._committed, version)
        self._oldest = self._oldest_after_flight
        self._oldest_after_flight = None
        self._failures = 0
        self._retry_at = None

    def write_failed(self, version: int, now: float) -> None:
        """The snapshot write of ``version`` failed; its changes stay uncommitted and the
        next write waits the backoff."""
        now = self._settle(version, now)
        self._oldest_after_flight = None
        self._failures += 1
        self._retry_at = now + retry_delay(self._failures)

    def _settle(self, version: int, now: float) -> float:
        now = self._advance(now)
        if self._in_flight != version:
            raise UsageError(
                f"snapshot write of version {version} is not in flight "
                f"(in flight: {self._in_flight})"
            )
        self._in_flight = None
        return now

    def _advance(self, now: float) -> float:
        if now > self._now:
            self._now = now
        return self._now


def retry_delay(failures: int) -> float:
    """The wait before the next write after ``failures`` failed writes in a row (>= 1)."""
    return min(RETRY_MAX, RETRY_INITIAL * 2.0 ** min(max(failures, 1) - 1, 64))


# --- outbox -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A reply or signal emitted by the action that made change ``version``, under its final
    id. ``payload`` is JSON (the encoded reply or signal, as the shell chooses)."""

    entry_id: str
    version: int
    payload: Any

    def to_json(self) -> dict[str, Any]:
        return {"id": self.entry_id, "version": self.version, "payload": self.payload}

    @classmethod
    def from_json(cls, raw: Any) -> OutboxEntry:
        if not isinstance(raw, dict):
            raise CorruptRecord("snapshot", f"outbox entry should be an object, not {raw!r}")
        get = RecordFields("snapshot outbox entry", raw)
        if "payload" not in raw:
            raise CorruptRecord("snapshot outbox entry", "field 'payload' is missing")
        return cls(get.text("id"), get.integer("version"), raw["payload"])


@dataclass(frozen=True, slots=True)
class Outbox:
    """The unreleased replies and signals of one agent, oldest first. Immutable: every
    operation returns a new ledger. Adding copies the ledger, which stays short because
    entries leave it within a snapshot's commit."""

    entries: tuple[OutboxEntry, ...] = ()
    max_entries: int = DEFAULT_MAX_OUTBOX

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_entries, bool)
            or not isinstance(self.max_entries, int)
            or self.max_entries < 1
        ):
            raise ConfigurationError(f"max_entries must be an int >= 1, got {self.max_entries!r}")

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry_id: str, version: int, payload: Any) -> Outbox:
        """Append an entry of change ``version``. Versions never decrease along the ledger;
        an id already held is refused. Past ``max_entries`` raises ``OutboxFull``."""
        if len(self.entries) >= self.max_entries:
            raise OutboxFull(self.max_entries)
        if self.entries and version < self.entries[-1].version:
            raise UsageError(
                f"outbox entry {entry_id!r} of version {version} added after version "
                f"{self.entries[-1].version}"
            )
        if any(entry.entry_id == entry_id for entry in self.entries):
            raise UsageError(f"outbox already holds an entry with id {entry_id!r}")
        return replace(self, entries=(*self.entries, OutboxEntry(entry_id, version, payload)))

    def releasable(self, committed_version: int) -> tuple[OutboxEntry, ...]:
        """The entries a committed snapshot of ``committed_version`` covers, in order."""
        return tuple(entry for entry in self.entries if entry.version <= committed_version)

    def released(self, ids: Iterable[str]) -> Outbox:
        """Drop the entries the shell has released; ids the ledger does not hold are
        ignored, so releasing is idempotent."""
        gone = set(ids)
        return replace(
            self, entries=tuple(entry for entry in self.entries if entry.entry_id not in gone)
        )

    def for_snapshot(self) -> list[OutboxEntry]:
        """The entries a snapshot taken now stores: every one not yet released."""
        return list(self.entries)

    @classmethod
    def restored(
        cls,
        entries: Iterable[OutboxEntry],
        *,
        version: int = 0,
        max_entries: int = DEFAULT_MAX_OUTBOX,
    ) -> Outbox:
        """The ledger after a restore: every stored entry unreleased again, with its id.

        They come from a committed snapshot, so each takes ``version``, the committed
        version the restored agent's ``SnapshotScheduler`` starts at. A restore never
        refuses entries it finds, even past ``max_entries``.
        """
        return cls(
            tuple(OutboxEntry(e.entry_id, version, e.payload) for e in entries),
            max(max_entries, 1),
        )


# --- envelope and storage -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotEnvelope:
    """One stored snapshot. Its lists and dicts are JSON and must not be mutated."""

    schema_version: int
    state: dict[str, Any]
    schedules: list[Any]
    outbox: list[OutboxEntry]
    inbox: dict[str, Any] | None
    """The durable inbox position; None for a critical agent."""
    agent_incarnation: int

    def to_bytes(self) -> bytes:
        try:
            return orjson.dumps(
                {
                    "schema_version": self.schema_version,
                    "agent_incarnation": self.agent_incarnation,
                    "state": self.state,
                    "schedules": self.schedules,
                    "outbox": [entry.to_json() for entry in self.outbox],
                    "inbox": self.inbox,
                }
            )
        except orjson.JSONEncodeError as exc:
            raise UsageError(f"snapshot is not JSON: {exc}") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> SnapshotEnvelope:
        """Decode a snapshot; anything malformed is ``CorruptRecord``."""
        return cls._from_raw(decode_object("snapshot", data))

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> SnapshotEnvelope:
        get = RecordFields("snapshot", raw)
        if "state" not in raw:
            raise CorruptRecord("snapshot", "field 'state' is missing")
        schedules = raw.get("schedules", [])
        if not isinstance(schedules, list):
            raise CorruptRecord(
                "snapshot", f"field 'schedules' should be a list, not {schedules!r}"
            )
        outbox = raw.get("outbox", [])
        if not isinstance(outbox, list):
            raise CorruptRecord("snapshot", f"field 'outbox' should be a list, not {outbox!r}")
        inbox = raw.get("inbox")
        if inbox is not None and not isinstance(inbox, dict):
            raise CorruptRecord("snapshot", f"field 'inbox' should be an object, not {inbox!r}")
        return cls(
            schema_version=get.integer("schema_version"),
            state=get.mapping("state"),
            schedules=schedules,
            outbox=[OutboxEntry.from_json(entry) for entry in outbox],
            inbox=inbox,
            agent_incarnation=get.integer("agent_incarnation"),
        )


@dataclass(frozen=True, slots=True)
class Inline:
    """Store the snapshot bytes in key-value as they are."""

    value: bytes


@dataclass(frozen=True, slots=True)
class ObjectPointer:
    """The snapshot is in the object store under ``content_hash`` (sha256, hex) and is
    ``size`` bytes. The shell puts the object first and writes this pointer to key-value
    after it; a reader fetches the object and checks it with ``verify``."""

    content_hash: str
    size: int

    def to_bytes(self) -> bytes:
        return orjson.dumps({"object": {"sha256": self.content_hash, "size": self.size}})

    @classmethod
    def from_bytes(cls, data: bytes) -> ObjectPointer:
        return cls._from_raw(decode_object("snapshot pointer", data))

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> ObjectPointer:
        target = RecordFields("snapshot pointer", raw).mapping("object")
        get = RecordFields("snapshot pointer", target)
        digest = get.text("sha256")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise CorruptRecord("snapshot pointer", f"sha256 {digest!r} is not 64 hex digits")
        size = get.integer("size")
        if size < 0:
            raise CorruptRecord("snapshot pointer", f"size {size} is negative")
        return cls(digest, size)

    def verify(self, data: bytes) -> bytes:
        """Return the fetched object if it is the one pointed to, else ``CorruptRecord``."""
        if len(data) != self.size or hashlib.sha256(data).hexdigest() != self.content_hash:
            raise CorruptRecord("snapshot object", f"content does not match {self.content_hash}")
        return data


def storage_plan(encoded: bytes, kv_limit: int) -> Inline | ObjectPointer:
    """Where to store an encoded snapshot: inline when it is at most ``kv_limit`` bytes,
    else in the object store behind a pointer."""
    if kv_limit < 1:
        raise ConfigurationError(f"kv_limit must be >= 1, got {kv_limit!r}")
    if len(encoded) <= kv_limit:
        return Inline(encoded)
    return ObjectPointer(hashlib.sha256(encoded).hexdigest(), len(encoded))


def decode_stored(data: bytes) -> SnapshotEnvelope | ObjectPointer:
    """Decode a snapshot key's value: the snapshot itself, or a pointer to its object."""
    raw = decode_object("snapshot", data)
    if "object" in raw:
        return ObjectPointer._from_raw(raw)
    return SnapshotEnvelope._from_raw(raw)


# --- the outcome of a write -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteLanded:
    """The key holds this write, at ``revision``."""

    revision: int


@dataclass(frozen=True, slots=True)
class WriteAgainAt:
    """Repeat the write by compare-and-set at ``revision`` (None: create the key)."""

    revision: int | None


@dataclass(frozen=True, slots=True)
class WriteLost:
    """Another writer holds the key: the writing instance is fenced."""


def resolve_snapshot_write(
    found: tuple[bytes, int] | None,
    value: bytes,
    expected: int | None,
    ours: Collection[bytes],
    *,
    timed_out: bool,
) -> WriteLanded | WriteAgainAt | WriteLost:
    """What a snapshot write whose outcome is not plain does next, from the key as read
    (``found``: value and revision, None when absent).

    The write either timed out (``timed_out``: it may land later) or lost its
    compare-and-set at ``expected``. ``ours`` are the values of this instance's earlier
    writes of unknown outcome (this one included once it timed out). Our value at the key
    means it landed; the key still at ``expected`` after a timeout means it did not (yet),
    and the same write is repeated there — never taken for a newer writer, which would stop
    an agent nobody replaced; an earlier write of ours that landed late is written over at
    its revision. Anything else is another writer's value: lost.
    """
    if found is not None and found[0] == value and (timed_out or value in ours):
        return WriteLanded(found[1])
    if timed_out and (None if found is None else found[1]) == expected:
        return WriteAgainAt(expected)
    if found is not None and found[0] in ours:
        return WriteAgainAt(found[1])
    return WriteLost()
