"""Membership: what a node says about itself, and its cache of everyone's ``nodes`` record.

A node joins by moving its own record to incarnation + 1 (``core.membership.joined``); the
lease renewer (``cluster.lease_renewer``) makes that write and every later one of its own
record, since only the owner writes it. ``JoinSpec`` holds what the record says about the
node (labels such as zone and region, capabilities, capacity, version).

``Membership`` keeps every record of the ``nodes`` bucket from a ``BucketWatch``: the initial
snapshot, then each change; a watch that fell behind is rebuilt, and the load is checked
against the bucket's key listing, so ``complete`` is true only while nothing can be missing
(``core.leader`` decides on complete views only). From the changes it sees it fires
``on_node_up(record)`` when a node becomes alive (or comes back under a new incarnation)
and ``on_node_down(record, reason)`` when one stops being alive — ``dead``, ``left``,
``restarted`` (alive again under a newer incarnation, the old one is over) or ``deleted`` —
and emits ``("agentcluster", "cluster", "node_connected" | "node_disconnected")``.
Listeners (``add_listener``) see every record revision, which is what the death watch and
the leadership need. A client watches too; it just has no record of its own.

Reads are hints: no safety decision rests on this cache, only on compare-and-sets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agentcluster.cluster.buckets import BucketWatch, WatchedCache, node_id_of
from agentcluster.core.membership import NodeRecord, NodeStatus, joined
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import CorruptRecord
from agentcluster.telemetry.events import Telemetry
from agentcluster.telemetry.events import telemetry as default_telemetry
from agentcluster.transport.interface import Entry, KeyValue

__all__ = [
    "NODE_CONNECTED",
    "NODE_DISCONNECTED",
    "JoinSpec",
    "Member",
    "Membership",
    "NodeDown",
    "NodeUp",
    "RecordListener",
    "Vitals",
    "VitalsSource",
    "node_stamp",
]

_log = logging.getLogger("agentcluster.cluster.membership")

NODE_CONNECTED = ("agentcluster", "cluster", "node_connected")
NODE_DISCONNECTED = ("agentcluster", "cluster", "node_disconnected")

NodeUp = Callable[[NodeRecord], None]
NodeDown = Callable[[NodeRecord, str], None]
RecordListener = Callable[[str, NodeRecord | None, int], None]
"""``(node id, record or None when deleted, revision)`` for every change applied."""


@dataclass(frozen=True, slots=True)
class Vitals:
    """What a node reports about its load, in its record and its heartbeats."""

    agent_count: int = 0
    load: float = 0.0


VitalsSource = Callable[[], Vitals]


@dataclass(frozen=True, slots=True)
class JoinSpec:
    """What a node's record says about it, apart from status, incarnation and lease."""

    node_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    capacity: Mapping[str, float] = field(default_factory=dict)
    version: str = ""

    def joined(
        self, previous: NodeRecord | None, stamp: WriteStamp, started_at: float
    ) -> NodeRecord:
        """The record a (re)joining node writes over ``previous`` (incarnation + 1)."""
        return joined(
            previous,
            self.node_id,
            stamp=stamp,
            started_at=started_at,
            labels=self.labels,
            capabilities=self.capabilities,
            capacity=self.capacity,
            version=self.version,
        )


def node_stamp(value: bytes) -> WriteStamp | None:
    """The write stamp of a stored node record."""
    return NodeRecord.from_bytes(value).stamp


@dataclass(frozen=True, slots=True)
class Member:
    record: NodeRecord
    revision: int


class Membership(WatchedCache):
    """A node's (or client's) cache of the ``nodes`` bucket; see the module docstring.

    ``observer`` names who watches, for telemetry. Hooks and listeners run synchronously
    on the watch task: they must not block (schedule work as a task instead). A hook that
    raises is logged and does not stop the watch.
    """

    def __init__(
        self,
        kv: KeyValue,
        *,
        observer: str,
        on_node_up: NodeUp | None = None,
        on_node_down: NodeDown | None = None,
        telemetry: Telemetry | None = None,
        pending_limit: int = 65536,
        poll: float = 1.0,
    ) -> None:
        self.observer = observer
        self._on_node_up = on_node_up
        self._on_node_down = on_node_down
        self._telemetry = default_telemetry if telemetry is None else telemetry
        self._members: dict[str, Member] = {}
        self._view = MappingProxyType(self._members)
        self._listeners: list[RecordListener] = []
        self.corrupt = 0
        """Values that could not be read as node records (logged, left out)."""
        self._watch = BucketWatch(
            kv,
            on_reset=self._reset,
            on_entry=self._entry,
            pending_limit=pending_limit,
            poll=poll,
            name=f"nodes-watch[{observer}]",
        )

    # --- reading ------------------------------------------------------------------------

    @property
    def records(self) -> Mapping[str, Member]:
        """A live read-only view: node id -> ``Member`` (record and revision)."""
        return self._view

    def members(self) -> dict[str, NodeRecord]:
        """Every record, whatever its status."""
        return {node: m.record for node, m in self._members.items()}

    def alive(self) -> dict[str, NodeRecord]:
        return {
            node: m.record
            for node, m in self._members.items()
            if m.record.status is NodeStatus.ALIVE
        }

    def get(self, node_id: str) -> NodeRecord | None:
        member = self._members.get(node_id)
        return None if member is None else member.record

    def member(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    def add_listener(self, listener: RecordListener) -> Callable[[], None]:
        """Call ``listener`` for every change applied from now on; returns its remover."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    # --- applying the watch -------------------------------------------------------------

    def _decode(self, entry: Entry) -> NodeRecord | None:
        try:
            return NodeRecord.from_bytes(entry.value)
        except CorruptRecord as exc:
            self.corrupt += 1
            _log.error(
                "unreadable node record %r at revision %d: %s", entry.key, entry.revision, exc
            )
            return None

    def _reset(self, entries: list[Entry]) -> None:
        seen = set()
        for entry in entries:
            seen.add(node_id_of(entry.key))
            self._entry(entry)
        for node in sorted(set(self._members) - seen):
            self._apply(node, None, self._members[node].revision)

    def _entry(self, entry: Entry) -> None:
        node = node_id_of(entry.key)
        held = self._members.get(node)
        if held is not None and entry.revision <= held.revision:
            return
        if entry.deleted:
            if held is not None:
                self._apply(node, None, entry.revision)
            return
        record = self._decode(entry)
        if record is not None:
            self._apply(node, record, entry.revision)

    def _apply(self, node: str, record: NodeRecord | None, revision: int) -> None:
        held = self._members.get(node)
        old = None if held is None else held.record
        if record is None:
            self._members.pop(node, None)
        else:
            self._members[node] = Member(record, revision)
        self._transition(old, record)
        for listener in tuple(self._listeners):
            try:
                listener(node, record, revision)
            except Exception:
                _log.exception("membership listener %r failed", listener)

    def _transition(self, old: NodeRecord | None, new: NodeRecord | None) -> None:
        was_alive = old is not None and old.status is NodeStatus.ALIVE
        is_alive = new is not None and new.status is NodeStatus.ALIVE
        if was_alive:
            assert old is not None
            if new is None:
                self._down(old, "deleted")
            elif not is_alive:
                self._down(new, new.status.value)
            elif new.incarnation != old.incarnation:
                self._down(old, "restarted")
                self._up(new)
        elif is_alive:
            assert new is not None
            self._up(new)

    def _up(self, record: NodeRecord) -> None:
        self._telemetry.emit(
            NODE_CONNECTED,
            {"incarnation": record.incarnation},
            {
                "node_id": record.id,
                "incarnation": record.incarnation,
                "observer": self.observer,
                "zone": record.zone,
                "region": record.region,
                "capabilities": record.capabilities,
            },
        )
        if self._on_node_up is not None:
            try:
                self._on_node_up(record)
            except Exception:
                _log.exception("on_node_up hook failed for %r", record.id)

    def _down(self, record: NodeRecord, reason: str) -> None:
        self._telemetry.emit(
            NODE_DISCONNECTED,
            {"incarnation": record.incarnation},
            {
                "node_id": record.id,
                "incarnation": record.incarnation,
                "observer": self.observer,
                "reason": reason,
            },
        )
        if self._on_node_down is not None:
            try:
                self._on_node_down(record, reason)
            except Exception:
                _log.exception("on_node_down hook failed for %r", record.id)
