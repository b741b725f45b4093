"""Key-value buckets: the shared bucket data and each connection's handle on it.

A ``BucketData`` keeps the last entry of every key — delete markers included, since
compare-and-set runs against a delete's revision too — and one revision counter for the
whole bucket: every put, create, update and delete takes the next revision, starting at
1, exactly like the JetStream stream sequence behind a NATS bucket. Each write moves its
key to the end of the entries dict, so the dict iterates in revision order and the
initial snapshot of a watch and a watcher's catch-up need no sort.

``history`` above 1 is accepted and ignored: only the last entry of a key is kept
(nothing in the interface reads older revisions). ``max_bytes`` bounds the sum of the
present values; a write past it is refused with ``SubstrateError`` (code 10047, "maximum
bytes exceeded", as JetStream answers). ``max_value_size`` and the transport's
``max_payload`` bound single values with ``PayloadTooLarge``.

``MemoryKeyValue`` looks its bucket up by name on every call (a deleted bucket answers
``SubstrateError`` code 10059, "not found"), validates, and sends writes through
``gate.write`` and reads through ``gate.view``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentcluster.errors import (
    ConfigurationError,
    KeyExists,
    PayloadTooLarge,
    RevisionMismatch,
    SubstrateError,
)
from agentcluster.transport import names
from agentcluster.transport.interface import BucketConfig, Entry, Operation
from agentcluster.transport.memory import gate
from agentcluster.transport.memory.watch import MemoryWatcher

if TYPE_CHECKING:
    from agentcluster.transport.memory.connection import MemoryConnection

__all__ = ["BucketData", "MemoryKeyValue"]

_EMPTY = b""


class BucketData:
    __slots__ = ("config", "entries", "revision", "size", "watchers")

    def __init__(self, config: BucketConfig) -> None:
        self.config = config
        self.entries: dict[str, Entry] = {}
        self.revision = 0
        self.size = 0
        self.watchers: dict[MemoryWatcher, None] = {}

    def snapshot(self) -> BucketData:
        copy = BucketData(self.config)
        copy.entries = dict(self.entries)
        copy.revision = self.revision
        copy.size = self.size
        return copy

    # --- reads --------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None or entry.operation is Operation.DELETE:
            return None
        return entry

    def keys(self, prefix: str) -> list[str]:
        return sorted(
            key
            for key, entry in self.entries.items()
            if entry.operation is Operation.PUT and names.key_matches_prefix(key, prefix)
        )

    def present(self, prefix: str) -> list[Entry]:
        """Present entries under ``prefix`` in revision order."""
        return [
            e
            for e in self.entries.values()
            if e.operation is Operation.PUT and names.key_matches_prefix(e.key, prefix)
        ]

    def since(self, prefix: str, revision: int) -> list[Entry]:
        """The last entry (puts and deletes) of each key under ``prefix`` written after
        ``revision``, in revision order."""
        return [
            e
            for e in self.entries.values()
            if e.revision > revision and names.key_matches_prefix(e.key, prefix)
        ]

    # --- writes -------------------------------------------------------------------

    def put(self, key: str, value: bytes) -> int:
        return self._write(key, value, Operation.PUT)

    def create(self, key: str, value: bytes) -> int:
        if self.get(key) is not None:
            raise KeyExists(self.config.name, key)
        return self._write(key, value, Operation.PUT)

    def update(self, key: str, value: bytes, revision: int) -> int:
        self._expect(key, revision)
        return self._write(key, value, Operation.PUT)

    def delete(self, key: str, revision: int | None) -> int:
        if revision is not None:
            self._expect(key, revision)
        return self._write(key, _EMPTY, Operation.DELETE)

    def _expect(self, key: str, revision: int) -> None:
        entry = self.entries.get(key)
        last = 0 if entry is None else entry.revision
        if last != revision:
            raise RevisionMismatch(self.config.name, key, revision)

    def _write(self, key: str, value: bytes, op: Operation) -> int:
        old = self.entries.pop(key, None)
        old_size = len(old.value) if old is not None else 0
        size = self.size - old_size + len(value)
        limit = self.config.max_bytes
        if 0 <= limit < size and len(value) > old_size:
            if old is not None:
                self.entries[key] = old
            raise SubstrateError(f"bucket {self.config.name!r}: maximum bytes exceeded", code=10047)
        self.revision += 1
        entry = Entry(self.config.name, key, bytes(value), self.revision, op)
        self.entries[key] = entry
        self.size = size
        if self.watchers:
            for watcher in tuple(self.watchers):
                watcher.offer(entry)
        return self.revision


def _not_found(name: str) -> SubstrateError:
    return SubstrateError(f"key-value bucket {name!r} not found", code=10059)


class MemoryKeyValue:
    __slots__ = ("_conn", "_name")

    def __init__(self, conn: MemoryConnection, name: str) -> None:
        self._conn = conn
        self._name = name

    @property
    def bucket(self) -> str:
        return self._name

    def _live(self) -> BucketData:
        data = self._conn.hub.store.buckets.get(self._name)
        if data is None:
            raise _not_found(self._name)
        return data

    def _read(self) -> BucketData:
        live = self._live()
        store = gate.view(self._conn)
        if store is self._conn.hub.store:
            return live
        return store.buckets.get(self._name) or BucketData(live.config)

    def _check_value(self, value: bytes) -> None:
        size = len(value)
        limit = self._conn.max_payload
        own = self._live().config.max_value_size
        if 0 <= own < limit:
            limit = own
        if size > limit:
            raise PayloadTooLarge(size, limit, what="value")

    def _what(self, op: str, key: str) -> str:
        return f"{op} {self._name}/{key}"

    async def get(self, key: str, *, timeout: float | None = None) -> Entry | None:
        self._conn.ensure_open()
        names.validate_key(key)
        await gate.before_read(self._conn, timeout, self._what("get", key))
        return self._read().get(key)

    async def put(self, key: str, value: bytes, *, timeout: float | None = None) -> int:
        self._conn.ensure_open()
        names.validate_key(key)
        self._check_value(value)
        return await gate.write(
            self._conn, timeout, lambda: self._live().put(key, value), self._what("put", key)
        )

    async def create(self, key: str, value: bytes, *, timeout: float | None = None) -> int:
        self._conn.ensure_open()
        names.validate_key(key)
        self._check_value(value)
        return await gate.write(
            self._conn, timeout, lambda: self._live().create(key, value), self._what("create", key)
        )

    async def update(
        self, key: str, value: bytes, revision: int, *, timeout: float | None = None
    ) -> int:
        self._conn.ensure_open()
        names.validate_key(key)
        self._check_value(value)
        return await gate.write(
            self._conn,
            timeout,
            lambda: self._live().update(key, value, revision),
            self._what("update", key),
        )

    async def delete(
        self, key: str, *, revision: int | None = None, timeout: float | None = None
    ) -> None:
        self._conn.ensure_open()
        names.validate_key(key)
        self._live()
        await gate.write(
            self._conn,
            timeout,
            lambda: self._live().delete(key, revision),
            self._what("delete", key),
        )

    async def keys(self, prefix: str = "", *, timeout: float | None = None) -> list[str]:
        self._conn.ensure_open()
        names.validate_prefix(prefix)
        await gate.before_read(self._conn, timeout, f"keys {self._name}/{prefix}")
        return self._read().keys(prefix)

    async def watch(self, prefix: str = "", *, pending_limit: int = 65536) -> MemoryWatcher:
        conn = self._conn
        conn.ensure_open()
        names.validate_prefix(prefix)
        if (
            isinstance(pending_limit, bool)
            or not isinstance(pending_limit, int)
            or pending_limit < 1
        ):
            raise ConfigurationError(f"pending_limit must be an int >= 1, not {pending_limit!r}")
        live = self._live()
        seen = self._read()
        watcher = MemoryWatcher(conn, prefix, seen.present(prefix), seen.revision, pending_limit)
        live.watchers[watcher] = None
        watcher.attach(live.watchers)
        conn.register_watcher(watcher)
        return watcher
