"""Node records: the ``nodes`` bucket's values and the only transitions they may make.

Each node owns its record and rewrites it on every lease renewal (the ``renewals``
counter moves, so the revision moves). The only write another node may make is the single
``alive -> dead`` compare-and-set of the death rule (``core.lease``). A node starts by
moving its own record to incarnation + 1, whatever the old record said, so a restarted
process under the same id supersedes the old one: the old process, when it reads a
higher incarnation, knows it must exit. Suspicion is never written; it stays local to
each observer (``core.phi``).

Records are JSON (orjson) with the fields below; a value that does not parse raises
``CorruptRecord`` naming the field, never a half-read record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import orjson

from agentcluster.core.fields import RecordFields, decode_object
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import CorruptRecord

__all__ = ["NodeRecord", "NodeStatus", "joined", "renewed"]


class NodeStatus(StrEnum):
    ALIVE = "alive"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What the cluster knows about one node; ``renewals`` counts lease renewals."""

    id: str
    incarnation: int
    status: NodeStatus = NodeStatus.ALIVE
    labels: Mapping[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    capacity: Mapping[str, float] = field(default_factory=dict)
    agent_count: int = 0
    load: float = 0.0
    started_at: float = 0.0
    version: str = ""
    renewals: int = 0
    stamp: WriteStamp | None = None

    @property
    def zone(self) -> str | None:
        return self.labels.get("zone")

    @property
    def region(self) -> str | None:
        return self.labels.get("region")

    def declared_dead(self, stamp: WriteStamp) -> NodeRecord:
        """The observer's one write: ``alive -> dead`` (anything else is refused)."""
        if self.status is not NodeStatus.ALIVE:
            raise ValueError(f"node {self.id!r} is {self.status}, not alive")
        return replace(self, status=NodeStatus.DEAD, stamp=stamp)

    def leaving(self, stamp: WriteStamp) -> NodeRecord:
        """The owner's graceful leave."""
        return replace(self, status=NodeStatus.LEFT, stamp=stamp)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "incarnation": self.incarnation,
                "status": self.status.value,
                "labels": dict(self.labels),
                "capabilities": list(self.capabilities),
                "capacity": dict(self.capacity),
                "agent_count": self.agent_count,
                "load": self.load,
                "started_at": self.started_at,
                "version": self.version,
                "renewals": self.renewals,
                "stamp": None if self.stamp is None else self.stamp.to_json(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeRecord:
        raw = decode_object("node", data)
        get = RecordFields("node", raw)
        status = get.text("status")
        try:
            node_status = NodeStatus(status)
        except ValueError:
            raise CorruptRecord("node", f"unknown status {status!r}") from None
        stamp = raw.get("stamp")
        return cls(
            id=get.text("id"),
            incarnation=get.integer("incarnation"),
            status=node_status,
            labels=get.text_map("labels"),
            capabilities=get.text_tuple("capabilities"),
            capacity=get.number_map("capacity"),
            agent_count=get.integer("agent_count", 0),
            load=get.number("load", 0.0),
            started_at=get.number("started_at", 0.0),
            version=get.text("version", ""),
            renewals=get.integer("renewals", 0),
            stamp=None if stamp is None else WriteStamp.from_json(stamp),
        )


def joined(
    previous: NodeRecord | None,
    node_id: str,
    *,
    stamp: WriteStamp,
    started_at: float,
    labels: Mapping[str, str] | None = None,
    capabilities: tuple[str, ...] = (),
    capacity: Mapping[str, float] | None = None,
    version: str = "",
) -> NodeRecord:
    """The record a starting node writes: ``previous`` incarnation + 1, alive, fresh vitals.

    ``stamp`` must already carry the new incarnation (``incarnation_after(previous)``).
    """
    incarnation = incarnation_after(previous)
    if stamp.incarnation != incarnation or stamp.node != node_id:
        raise ValueError(f"stamp {stamp} does not belong to {node_id!r} #{incarnation}")
    return NodeRecord(
        id=node_id,
        incarnation=incarnation,
        status=NodeStatus.ALIVE,
        labels=dict(labels or {}),
        capabilities=tuple(capabilities),
        capacity=dict(capacity or {}),
        started_at=started_at,
        version=version,
        stamp=stamp,
    )


def incarnation_after(previous: NodeRecord | None) -> int:
    return 1 if previous is None else previous.incarnation + 1


def renewed(record: NodeRecord, stamp: WriteStamp, *, agent_count: int, load: float) -> NodeRecord:
    """The owner's renewal: the counter moves (so the revision moves), vitals refresh."""
    return replace(
        record, renewals=record.renewals + 1, agent_count=agent_count, load=load, stamp=stamp
    )
