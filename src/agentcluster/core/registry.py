"""The agent registry's entries, the rules for changing them, and the local index over them.

The ``agents`` bucket maps an agent id to an ``AgentEntry``: where it runs (node and that
node's incarnation), its own incarnation, mode, capabilities, metadata, the restart spec
(JSON: an import path and parameters) and a status. Registration is unique: a ``create``.
An entry may be taken over by compare-and-set only when it no longer names a live
placement — its node is dead, left, unknown, or alive under a newer incarnation than the
entry names (the process that registered it is gone). Entries of a dead or left node are
marked ``unavailable`` by compare-and-set, keeping their spec for failover.

``RegistryIndex`` is each node's cache of the bucket, fed by a watch: ``lookup`` and
``find_by_capability`` are dictionary reads. It is a hint: no safety decision rests on
it, only on a successful compare-and-set.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import orjson

from agentcluster.core.fields import RecordFields, decode_object
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import CorruptRecord

__all__ = ["AgentEntry", "AgentMode", "AgentStatus", "RegistryIndex", "may_take_over"]


class AgentStatus(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    MOVING = "moving"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"


class AgentMode(StrEnum):
    PLAIN = "plain"
    CRITICAL = "critical"
    DURABLE = "durable"


@dataclass(frozen=True, slots=True)
class AgentEntry:
    id: str
    node: str
    node_incarnation: int
    incarnation: int = 1
    mode: AgentMode = AgentMode.PLAIN
    capabilities: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    spec: Mapping[str, Any] | None = None
    status: AgentStatus = AgentStatus.RUNNING
    reason: str | None = None
    stamp: WriteStamp | None = None
    failovers: tuple[float, ...] = ()
    """Wall-clock times of the agent's recent failovers, written with each move, so that
    whichever node leads counts the failover limit from the registry (clock skew between
    nodes only shifts a ten-minute window by seconds)."""

    def unavailable(self, reason: str, stamp: WriteStamp) -> AgentEntry:
        """Its node is gone: kept (with its spec) for failover, refused meanwhile."""
        return replace(self, status=AgentStatus.UNAVAILABLE, reason=reason, stamp=stamp)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "node": self.node,
                "node_incarnation": self.node_incarnation,
                "incarnation": self.incarnation,
                "mode": self.mode.value,
                "capabilities": list(self.capabilities),
                "metadata": dict(self.metadata),
                "spec": None if self.spec is None else dict(self.spec),
                "status": self.status.value,
                "reason": self.reason,
                "stamp": None if self.stamp is None else self.stamp.to_json(),
                "failovers": list(self.failovers),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AgentEntry:
        raw = decode_object("agent", data)
        get = RecordFields("agent", raw)
        try:
            mode = AgentMode(get.text("mode", "plain"))
            status = AgentStatus(get.text("status"))
        except ValueError as exc:
            raise CorruptRecord("agent", str(exc)) from None
        spec = raw.get("spec")
        if spec is not None and not isinstance(spec, dict):
            raise CorruptRecord("agent", f"field 'spec' should be an object, not {spec!r}")
        stamp = raw.get("stamp")
        failovers = raw.get("failovers") or []
        if not isinstance(failovers, list) or not all(
            isinstance(t, int | float) and not isinstance(t, bool) for t in failovers
        ):
            raise CorruptRecord("agent", f"field 'failovers' should be numbers, not {failovers!r}")
        return cls(
            id=get.text("id"),
            node=get.text("node"),
            node_incarnation=get.integer("node_incarnation"),
            incarnation=get.integer("incarnation", 1),
            mode=mode,
            capabilities=get.text_tuple("capabilities"),
            metadata=get.mapping("metadata"),
            spec=spec,
            status=status,
            reason=get.optional_text("reason"),
            stamp=None if stamp is None else WriteStamp.from_json(stamp),
            failovers=tuple(float(t) for t in failovers),
        )


_REACHABLE = frozenset({AgentStatus.RUNNING, AgentStatus.STARTING, AgentStatus.MOVING})
"""Statuses under which an entry counts as a holder of its capabilities."""


def may_take_over(entry: AgentEntry, nodes: Mapping[str, NodeRecord]) -> bool:
    """Whether ``entry`` no longer names a live placement, so a compare-and-set may replace it."""
    node = nodes.get(entry.node)
    if node is None or node.status is not NodeStatus.ALIVE:
        return True
    return node.incarnation > entry.node_incarnation


class RegistryIndex:
    """The node-local cache of the registry: by id, by capability, by node.

    Capability holders keep registration order (the first registered is listed first),
    so strategies that pick among them are deterministic for a given history.
    """

    __slots__ = ("_by_capability", "_by_id", "_by_node", "_holders")

    def __init__(self) -> None:
        self._by_id: dict[str, AgentEntry] = {}
        self._by_capability: dict[str, dict[str, None]] = {}
        self._by_node: dict[str, dict[str, None]] = {}
        # find_by_capability's answers, rebuilt lazily after a holder of that capability
        # changes, so the query stays a dictionary access however many holders there are.
        self._holders: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[AgentEntry]:
        return iter(self._by_id.values())

    def apply(self, entry: AgentEntry) -> None:
        """Insert or replace the entry for ``entry.id``."""
        old = self._by_id.get(entry.id)
        if old is not None:
            self._unindex(old)
        self._by_id[entry.id] = entry
        if entry.status in _REACHABLE:
            for cap in entry.capabilities:
                self._by_capability.setdefault(cap, {})[entry.id] = None
                self._holders.pop(cap, None)
        self._by_node.setdefault(entry.node, {})[entry.id] = None

    def remove(self, agent_id: str) -> AgentEntry | None:
        old = self._by_id.pop(agent_id, None)
        if old is not None:
            self._unindex(old)
        return old

    def clear(self) -> None:
        self._by_id.clear()
        self._by_capability.clear()
        self._by_node.clear()
        self._holders.clear()

    def lookup(self, agent_id: str) -> AgentEntry | None:
        return self._by_id.get(agent_id)

    def find_by_capability(self, capability: str) -> tuple[str, ...]:
        """The agents holding ``capability`` that can take signals (running, starting or
        moving; not unavailable or failed), in registration order."""
        cached = self._holders.get(capability)
        if cached is None:
            holders = self._by_capability.get(capability)
            cached = self._holders[capability] = tuple(holders) if holders else ()
        return cached

    def on_node(self, node: str) -> tuple[str, ...]:
        ids = self._by_node.get(node)
        return tuple(ids) if ids else ()

    def by_node(self) -> dict[str, list[str]]:
        return {node: list(ids) for node, ids in self._by_node.items()}

    def _unindex(self, entry: AgentEntry) -> None:
        for cap in entry.capabilities:
            holders = self._by_capability.get(cap)
            if holders is not None and entry.id in holders:
                del holders[entry.id]
                self._holders.pop(cap, None)
                if not holders:
                    del self._by_capability[cap]
        ids = self._by_node.get(entry.node)
        if ids is not None:
            ids.pop(entry.id, None)
            if not ids:
                del self._by_node[entry.node]
