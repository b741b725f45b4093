"""The cluster leader: one ``leader`` key, changed only by compare-and-set, with a term.

The leader is whichever node holds the key naming it and its current incarnation. Every
node applies the same rule to the key and its view of membership: follow a leader that is
alive under the incarnation the key names; otherwise campaign, by compare-and-set on the
key's revision (or ``create`` when there is none) with the term + 1. The store picks one
winner per revision, so there is never more than one leader per term, and a leader that
dies is replaced as soon as the death rule has marked it (within the detection time).

The membership view must be a complete one (the node's cache after its initial load): an
unknown holder counts as gone. A holder is only seen ``dead`` or ``left`` once that was
committed by compare-and-set, so a stale view can delay a campaign but never start one
against a leader whose record says it is alive. A leader learns it was replaced from the
key itself (its watch), and every leader-only duty is itself a compare-and-set, so a
leader that has not yet noticed cannot undo its successor's work.

Leader-only duties are written to continue from the registry as they find it, so a new
leader needs nothing from the old one. Clients (role ``client``) never campaign.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import orjson

from agentcluster.core.fields import RecordFields, decode_object
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.stamps import WriteStamp

__all__ = ["LeaderAction", "LeaderRecord", "leader_action"]


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    node: str
    incarnation: int
    term: int
    stamp: WriteStamp | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "node": self.node,
                "incarnation": self.incarnation,
                "term": self.term,
                "stamp": None if self.stamp is None else self.stamp.to_json(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaderRecord:
        raw = decode_object("leader", data)
        get = RecordFields("leader", raw)
        stamp = raw.get("stamp")
        return cls(
            node=get.text("node"),
            incarnation=get.integer("incarnation"),
            term=get.integer("term"),
            stamp=None if stamp is None else WriteStamp.from_json(stamp),
        )

    def successor(self, node: str, incarnation: int, stamp: WriteStamp) -> LeaderRecord:
        return LeaderRecord(node, incarnation, self.term + 1, stamp)


class LeaderAction(StrEnum):
    LEAD = "lead"
    """The key names this node and its incarnation: run the leader-only duties."""
    FOLLOW = "follow"
    """Another live node leads."""
    CAMPAIGN = "campaign"
    """Nobody live leads: write the key by compare-and-set (term + 1)."""


def leader_action(
    record: LeaderRecord | None,
    node: str,
    incarnation: int,
    nodes: Mapping[str, NodeRecord],
) -> LeaderAction:
    """What ``node`` (at ``incarnation``) should do about the current leader ``record``."""
    if record is None:
        return LeaderAction.CAMPAIGN
    if record.node == node:
        if record.incarnation == incarnation:
            return LeaderAction.LEAD
        return LeaderAction.CAMPAIGN  # an earlier incarnation of this node led
    holder = nodes.get(record.node)
    if (
        holder is not None
        and holder.status is NodeStatus.ALIVE
        and holder.incarnation == record.incarnation
    ):
        return LeaderAction.FOLLOW
    return LeaderAction.CAMPAIGN
