"""The in-process substrate: what a NATS server (with JetStream) is to the NATS backend.

A ``MemoryTransport`` holds the message router, the store (key-value buckets, streams,
object stores) and the fault switchboard, and outlives the connections it hands out:
``connect(name)`` gives each logical node its own ``MemoryConnection``, and closing or
killing that connection leaves the store — and the durable consumers' pending work — to
the others, as a NATS server would. Everything runs on the one event loop the
connections are used from; there are no threads.
"""

from __future__ import annotations

from collections.abc import Iterable

from agentcluster.errors import ConfigurationError
from agentcluster.transport.memory.connection import MemoryConnection
from agentcluster.transport.memory.faults import Faults
from agentcluster.transport.memory.router import Router
from agentcluster.transport.memory.store import Store

__all__ = ["MemoryTransport"]

DEFAULT_MAX_PAYLOAD = 1024 * 1024


class MemoryTransport:
    """The shared substrate; ``faults`` injects failures, seeded by ``seed``."""

    __slots__ = ("_connections", "_next_id", "faults", "max_payload", "router", "seed", "store")

    def __init__(self, seed: str = "agentcluster", max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if isinstance(max_payload, bool) or not isinstance(max_payload, int) or max_payload < 1:
            raise ConfigurationError(f"max_payload must be an int >= 1, not {max_payload!r}")
        self.seed = seed
        self.max_payload = max_payload
        self.router = Router()
        self.store = Store()
        self.faults = Faults(self, seed)
        self._connections: dict[int, MemoryConnection] = {}
        self._next_id = 0

    async def connect(self, name: str) -> MemoryConnection:
        """A new connection for the node (or client) ``name``; names need not be unique."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a connection needs a non-empty name, not {name!r}")
        self._next_id += 1
        conn = MemoryConnection(self, name, self._next_id)
        self._connections[self._next_id] = conn
        return conn

    @property
    def connections(self) -> list[MemoryConnection]:
        """The open connections, oldest first."""
        return list(self._connections.values())

    def connections_named(self, name: str) -> list[MemoryConnection]:
        return [c for c in self._connections.values() if c.name == name]

    def forget(self, conn: MemoryConnection) -> None:
        """Called by a connection as it closes."""
        self._connections.pop(conn.conn_id, None)

    def catch_up_watchers(self, released: Iterable[str]) -> None:
        """Let the watchers of connections back from a store cut-off catch up."""
        back = set(released)
        for bucket in tuple(self.store.buckets.values()):
            for watcher in tuple(bucket.watchers):
                if watcher.conn_name in back:
                    watcher.catch_up(bucket)

    async def close(self) -> None:
        """Close every open connection (the store stays as it is)."""
        for conn in self.connections:
            await conn.close()
