"""Write stamps: how a writer finds out whether a write whose reply timed out landed.

A store write that raised a timeout may still have been applied (measured on
nats-server: the reply was lost, not the write). Every value the cluster writes therefore
carries a stamp ``(node, node incarnation, nonce)`` that no other write carries. After a
timeout the writer reads the key: finding its own stamp means the write landed; finding
the key still at the revision the write expected means it did not, and the same stamped
write is repeated by compare-and-set at that revision. A key that moved under another
writer's stamp means the write lost: the caller re-reads and decides, as for any lost
compare-and-set. (Repeating "at the revision just read" would overwrite that other writer:
a renewal repeated over an observer's ``alive -> dead`` would bring a dead node back.)
The nonce is a counter: unique within one node incarnation, and an
incarnation is never reused, so a stamp is unique across the cluster's life.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agentcluster.errors import CorruptRecord

__all__ = ["Resolution", "StampSource", "WriteStamp", "resolve_timed_out_write"]


@dataclass(frozen=True, slots=True)
class WriteStamp:
    node: str
    incarnation: int
    nonce: int

    def to_json(self) -> list[Any]:
        return [self.node, self.incarnation, self.nonce]

    @classmethod
    def from_json(cls, raw: Any) -> WriteStamp:
        if (
            not isinstance(raw, list)
            or len(raw) != 3
            or not isinstance(raw[0], str)
            or not isinstance(raw[1], int)
            or not isinstance(raw[2], int)
        ):
            raise CorruptRecord("stamp", f"expected [node, incarnation, nonce], got {raw!r}")
        return cls(raw[0], raw[1], raw[2])


class StampSource:
    """Hands out the stamps of one node incarnation."""

    __slots__ = ("_next", "incarnation", "node")

    def __init__(self, node: str, incarnation: int) -> None:
        self.node = node
        self.incarnation = incarnation
        self._next = 1

    def next(self) -> WriteStamp:
        stamp = WriteStamp(self.node, self.incarnation, self._next)
        self._next += 1
        return stamp


class Resolution(StrEnum):
    LANDED = "landed"
    """The key holds this write's stamp: it was applied."""
    REPEAT = "repeat"
    """Our stamp is not there. If the key is still at the expected revision, repeat the
    write there; if it moved, the write lost (see the module docstring)."""


def resolve_timed_out_write(found: WriteStamp | None, mine: WriteStamp) -> Resolution:
    """Decide from the stamp now in the key whether a timed-out write landed."""
    return Resolution.LANDED if found == mine else Resolution.REPEAT
