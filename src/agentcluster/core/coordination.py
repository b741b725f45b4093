"""Coordination decisions: locks with fencing tokens, barriers and group elections.

Theory of operation. Each primitive is one key of the ``coordination`` bucket, changed only
by compare-and-set, with a write stamp in every value. The shells (``cluster.coordination``)
read the key and the membership cache, ask the functions here what to do, and write;
nothing here waits, sends or reads a clock.

- **Lock** (``lock.<name>``): a ``LockRecord`` that is ``held`` (owner, node, node
  incarnation) or ``free``. The fencing token of a holding is the revision of the write
  that took it: revisions of a bucket only grow, so tokens strictly increase across holders.
  A free or absent key is taken at once; a held one only when its holder is gone
  (``holder_gone``), by compare-and-set at the revision read, so two takers cannot both
  win. Releasing writes a ``free`` record at the holder's token (a key that moved meanwhile
  was taken over: the release fails, the caller learns it lost the lock).
- **Barrier** (``barrier.<id>``): a ``BarrierRecord`` of one round (its ``generation``):
  the participants and who has arrived, each with the stamp of its arrival. A participant
  arrives by adding itself; the round is complete when everyone has. The next arrival
  after a complete round opens the next generation, keeping the completed round's arrival
  stamps (``previous``), so a waiter is released by its own round completing or by any
  later round existing. An incomplete round stays open: a participant that timed out and
  arrives again finds itself recorded and waits again.
- **Election** (``election.<group>``): an ``ElectionRecord`` naming the leader member, its
  node and node incarnation, and the term. A member campaigns when the key is absent or
  vacant (its leader resigned) or its leader is gone, writing term + 1 by compare-and-set;
  the store picks one winner per revision, so a term has at most one leader.

**Who is gone.** A holder (of a lock or a leadership) is gone when the membership view shows
its node ``dead`` or ``left`` at the incarnation it held under, or shows a newer incarnation
of that node (the process that held it was replaced), or — in a complete view — does not
know the node at all. A view whose record of the node is *older* than the holder's
incarnation is behind, and decides nothing. Dead and left are written by compare-and-set
only (``core.lease``), so a stale view can delay a takeover but never start one against a
live holder.

**Writes whose outcome is unknown.** A write that timed out may land later, but only while
the key is still at the revision it was conditioned on (a create: while the key is absent).
``settle_pending`` tells from the key as now read whether one of them landed, and which
can still land, so a shell can adopt its own write or clear one that landed after it gave up.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from agentcluster.core.fields import RecordFields, decode_object
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import CorruptRecord, UsageError

__all__ = [
    "Arrival",
    "ArrivalKind",
    "BarrierRecord",
    "ElectionAction",
    "ElectionRecord",
    "Leader",
    "LockAction",
    "LockHolder",
    "LockRecord",
    "LockState",
    "PendingWrites",
    "arrive",
    "barrier_missing",
    "barrier_released",
    "campaign_record",
    "election_action",
    "find_arrival",
    "holder_gone",
    "leader_of",
    "live_holder",
    "lock_action",
    "lock_lost_reason",
    "participant_set",
    "settle_pending",
]


def holder_gone(
    node: str, incarnation: int, members: Mapping[str, NodeRecord], *, view_complete: bool = True
) -> bool:
    """Whether the holding of ``node`` at ``incarnation`` is over (module docstring)."""
    record = members.get(node)
    if record is None:
        return view_complete
    if record.incarnation != incarnation:
        return record.incarnation > incarnation
    return record.status is not NodeStatus.ALIVE


def _describe(node: str, incarnation: int, members: Mapping[str, NodeRecord]) -> str:
    record = members.get(node)
    if record is None:
        return f"node {node!r} is gone from membership"
    if record.incarnation > incarnation:
        return f"node {node!r} restarted (incarnation {record.incarnation} > {incarnation})"
    return f"node {node!r} is {record.status.value}"


def _stamp_json(stamp: WriteStamp | None) -> Any:
    return None if stamp is None else stamp.to_json()


def _stamp(raw: Any) -> WriteStamp:
    return WriteStamp.from_json(raw)


# --- writes whose outcome is unknown --------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingWrites:
    """What a read of the key says about writes that timed out.

    ``landed`` is the stamp of the one that landed (the key holds it now), if any;
    ``open`` maps each stamp that may still land to the revision it was conditioned on.
    """

    landed: WriteStamp | None
    open: Mapping[WriteStamp, int]


def settle_pending(
    pending: Mapping[WriteStamp, int], revision: int, stamp: WriteStamp | None
) -> PendingWrites:
    """Settle writes that timed out against the key as read now.

    ``pending`` maps each write's stamp to the revision it was conditioned on (0 for a
    create). ``revision`` is the key's revision now (0 when absent) and ``stamp`` the
    stamp of its value. A conditioned write can land only while the key is at the revision
    it expects, so every other one is settled as lost.
    """
    if stamp is not None and stamp in pending:
        return PendingWrites(stamp, {})
    return PendingWrites(None, {s: r for s, r in pending.items() if r == revision})


# --- locks ----------------------------------------------------------------------------


class LockState(StrEnum):
    HELD = "held"
    FREE = "free"


@dataclass(frozen=True, slots=True)
class LockRecord:
    """The value of ``lock.<name>``.

    ``previous`` is the token this write ended: for a ``held`` record, the token of the
    dead holder it took over (0 when the lock was free); for a ``free`` record, the token
    released. The record's own token is the revision it was written at, so it is not stored.
    """

    state: LockState
    stamp: WriteStamp
    owner: str = ""
    node: str = ""
    incarnation: int = 0
    previous: int = 0

    @classmethod
    def held(cls, owner: str, stamp: WriteStamp, *, previous: int = 0) -> LockRecord:
        """A holding by ``owner`` on the stamp's node and incarnation."""
        return cls(LockState.HELD, stamp, owner, stamp.node, stamp.incarnation, previous)

    @classmethod
    def free(cls, stamp: WriteStamp, *, released: int) -> LockRecord:
        return cls(LockState.FREE, stamp, previous=released)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "state": self.state.value,
                "owner": self.owner,
                "node": self.node,
                "incarnation": self.incarnation,
                "previous": self.previous,
                "stamp": self.stamp.to_json(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LockRecord:
        raw = decode_object("lock", data)
        get = RecordFields("lock", raw)
        state = get.text("state")
        try:
            lock_state = LockState(state)
        except ValueError:
            raise CorruptRecord("lock", f"unknown state {state!r}") from None
        if "stamp" not in raw:
            raise CorruptRecord("lock", "field 'stamp' is missing")
        return cls(
            state=lock_state,
            stamp=_stamp(raw["stamp"]),
            owner=get.text("owner", ""),
            node=get.text("node", ""),
            incarnation=get.integer("incarnation", 0),
            previous=get.integer("previous", 0),
        )


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a lock, under which fencing token."""

    owner: str
    node: str
    incarnation: int
    token: int


class LockAction(StrEnum):
    ACQUIRE = "acquire"
    """The key is absent or free: create it, or compare-and-set at the revision read."""
    TAKE_OVER = "take_over"
    """The holder is gone: compare-and-set at the revision read."""
    WAIT = "wait"
    """A live holder has it: wait for a change of the key or of membership."""


def lock_action(
    record: LockRecord | None,
    members: Mapping[str, NodeRecord],
    *,
    view_complete: bool = True,
) -> LockAction:
    """What an acquirer does about the lock's current ``record`` (None: absent). Whether
    the record is the acquirer's own earlier write is ``settle_pending``'s to say."""
    if record is None or record.state is LockState.FREE:
        return LockAction.ACQUIRE
    if holder_gone(record.node, record.incarnation, members, view_complete=view_complete):
        return LockAction.TAKE_OVER
    return LockAction.WAIT


def live_holder(
    record: LockRecord | None,
    revision: int,
    members: Mapping[str, NodeRecord],
    *,
    view_complete: bool = True,
) -> LockHolder | None:
    """The live holder of the lock, or None when it is free or its holder is gone."""
    if record is None or record.state is LockState.FREE:
        return None
    if holder_gone(record.node, record.incarnation, members, view_complete=view_complete):
        return None
    return LockHolder(record.owner, record.node, record.incarnation, revision)


def lock_lost_reason(
    record: LockRecord | None,
    revision: int,
    token: int,
    members: Mapping[str, NodeRecord],
    *,
    view_complete: bool = True,
) -> str | None:
    """Why ``token`` no longer holds the lock, or None while it does.

    ``record`` and ``revision`` are the key as read (None: absent). A token holds while the
    key is still at that revision, held, by a holder that is not gone.
    """
    if record is None:
        return "the lock's key is gone"
    if revision != token:
        if record.state is LockState.FREE:
            if record.previous == token:
                return "it was released"
            return f"the lock moved on (free since token {record.previous})"
        if record.previous == token:
            return (
                f"taken over by {record.owner!r} on {record.node!r} under token {revision} "
                "after its holder's node was declared gone"
            )
        return f"now held by {record.owner!r} on {record.node!r} under token {revision}"
    if record.state is LockState.FREE:
        return "it was released"
    if holder_gone(record.node, record.incarnation, members, view_complete=view_complete):
        return f"its holder's {_describe(record.node, record.incarnation, members)}"
    return None


# --- barriers -------------------------------------------------------------------------


def participant_set(participants: Iterable[str], participant: str) -> tuple[str, ...]:
    """The sorted participants of a barrier; ``UsageError`` for an empty list, a
    duplicate or empty name, or a ``participant`` that is not among them."""
    names = list(participants)
    if not names:
        raise UsageError("a barrier needs at least one participant")
    if any(not isinstance(n, str) or not n for n in names):
        raise UsageError(f"barrier participants must be non-empty strings, got {names!r}")
    ordered = tuple(sorted(names))
    duplicates = sorted({n for n in ordered if ordered.count(n) > 1})
    if duplicates:
        raise UsageError(f"barrier participants are listed twice: {', '.join(duplicates)}")
    if participant not in ordered:
        raise UsageError(f"{participant!r} is not a participant of the barrier {list(ordered)}")
    return ordered


@dataclass(frozen=True, slots=True)
class BarrierRecord:
    """One round of a barrier: ``arrived`` maps each participant that arrived to the stamp
    of its arrival; ``previous`` holds the arrival stamps of the completed round before."""

    generation: int
    participants: tuple[str, ...]
    arrived: Mapping[str, WriteStamp] = field(default_factory=dict)
    previous: tuple[WriteStamp, ...] = ()
    stamp: WriteStamp | None = None

    @property
    def complete(self) -> bool:
        return all(p in self.arrived for p in self.participants)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(p for p in self.participants if p not in self.arrived)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "generation": self.generation,
                "participants": list(self.participants),
                "arrived": {p: s.to_json() for p, s in sorted(self.arrived.items())},
                "previous": [s.to_json() for s in self.previous],
                "stamp": _stamp_json(self.stamp),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> BarrierRecord:
        raw = decode_object("barrier", data)
        get = RecordFields("barrier", raw)
        arrived = get.mapping("arrived")
        previous = raw.get("previous", [])
        if not isinstance(previous, list):
            raise CorruptRecord("barrier", f"field 'previous' should be a list, not {previous!r}")
        stamp = raw.get("stamp")
        return cls(
            generation=get.integer("generation"),
            participants=get.text_tuple("participants"),
            arrived={p: _stamp(s) for p, s in arrived.items()},
            previous=tuple(_stamp(s) for s in previous),
            stamp=None if stamp is None else _stamp(stamp),
        )


class ArrivalKind(StrEnum):
    OPEN = "open"
    """Start a round: the key is absent, or its round is complete (next generation)."""
    JOIN = "join"
    """Add this participant to the open round."""
    RECORDED = "recorded"
    """This participant is already in the open round (it arrived before and timed out, or
    its write's reply was lost): nothing to write, wait again."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """What an arriving participant writes (``record``, None for ``RECORDED``) and the
    generation it then waits for."""

    kind: ArrivalKind
    generation: int
    record: BarrierRecord | None


def arrive(
    record: BarrierRecord | None,
    participants: tuple[str, ...],
    participant: str,
    stamp: WriteStamp,
) -> Arrival:
    """How ``participant`` (of the sorted ``participants``) arrives at the round in ``record``.

    ``UsageError`` when the open round was started for other participants: one barrier id
    used by two different groups at once.
    """
    if record is None or record.complete:
        generation = 1 if record is None else record.generation + 1
        previous = () if record is None else tuple(s for _, s in sorted(record.arrived.items()))
        opened = BarrierRecord(generation, participants, {participant: stamp}, previous, stamp)
        return Arrival(ArrivalKind.OPEN, generation, opened)
    if record.participants != participants:
        raise UsageError(
            f"barrier round {record.generation} is open for participants "
            f"{list(record.participants)}, not {list(participants)}"
        )
    if participant in record.arrived:
        return Arrival(ArrivalKind.RECORDED, record.generation, None)
    joined = BarrierRecord(
        record.generation,
        record.participants,
        {**record.arrived, participant: stamp},
        record.previous,
        stamp,
    )
    return Arrival(ArrivalKind.JOIN, record.generation, joined)


def find_arrival(record: BarrierRecord | None, stamps: Collection[WriteStamp]) -> int | None:
    """The generation that one of our arrival writes (``stamps``) landed in, if the key
    still shows it: the open round, or the completed round before it."""
    if record is None or not stamps:
        return None
    if any(s in stamps for s in record.arrived.values()):
        return record.generation
    if any(s in stamps for s in record.previous):
        return record.generation - 1
    return None


def barrier_released(record: BarrierRecord | None, generation: int) -> bool:
    """Whether a waiter of round ``generation`` may go: that round is complete, or a later
    one exists (which opens only after it completed)."""
    if record is None:
        return False
    return record.generation > generation or (record.generation == generation and record.complete)


def barrier_missing(
    record: BarrierRecord | None, generation: int, participants: Sequence[str]
) -> tuple[str, ...]:
    """Who has not arrived at round ``generation``: nobody once it is released, everyone
    when the key shows no such round."""
    if barrier_released(record, generation):
        return ()
    if record is None or record.generation != generation:
        return tuple(participants)
    return record.missing


# --- elections ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ElectionRecord:
    """The value of ``election.<group>``; ``leader`` is empty when the post is vacant (its
    leader resigned). The term never goes back, so a vacant record keeps it."""

    term: int
    stamp: WriteStamp
    leader: str = ""
    node: str = ""
    incarnation: int = 0

    @property
    def vacant(self) -> bool:
        return not self.leader

    def vacated(self, stamp: WriteStamp) -> ElectionRecord:
        return ElectionRecord(self.term, stamp)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "term": self.term,
                "leader": self.leader,
                "node": self.node,
                "incarnation": self.incarnation,
                "stamp": self.stamp.to_json(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ElectionRecord:
        raw = decode_object("election", data)
        get = RecordFields("election", raw)
        if "stamp" not in raw:
            raise CorruptRecord("election", "field 'stamp' is missing")
        return cls(
            term=get.integer("term"),
            stamp=_stamp(raw["stamp"]),
            leader=get.text("leader", ""),
            node=get.text("node", ""),
            incarnation=get.integer("incarnation", 0),
        )


@dataclass(frozen=True, slots=True)
class Leader:
    """A group's leader as a member sees it; ``term`` is its fencing token."""

    member: str
    node: str
    incarnation: int
    term: int


class ElectionAction(StrEnum):
    LEAD = "lead"
    """The key names this member on this node at this incarnation."""
    FOLLOW = "follow"
    """Another live member leads (or the view cannot tell yet)."""
    CAMPAIGN = "campaign"
    """Nobody live leads: write term + 1 by compare-and-set."""


def election_action(
    record: ElectionRecord | None,
    member: str,
    node: str,
    incarnation: int,
    members: Mapping[str, NodeRecord],
    *,
    view_complete: bool = True,
) -> ElectionAction:
    """What ``member`` (on ``node`` at ``incarnation``) does about the group's ``record``."""
    if record is None or record.vacant:
        return ElectionAction.CAMPAIGN
    if record.node == node:
        if record.incarnation == incarnation:
            return ElectionAction.LEAD if record.leader == member else ElectionAction.FOLLOW
        if record.incarnation < incarnation:
            return ElectionAction.CAMPAIGN  # an earlier incarnation of this node led
    if holder_gone(record.node, record.incarnation, members, view_complete=view_complete):
        return ElectionAction.CAMPAIGN
    return ElectionAction.FOLLOW


def campaign_record(
    record: ElectionRecord | None, member: str, stamp: WriteStamp
) -> ElectionRecord:
    """The record a campaign writes: ``member`` on the stamp's node, term + 1."""
    term = 1 if record is None else record.term + 1
    return ElectionRecord(term, stamp, member, stamp.node, stamp.incarnation)


def leader_of(
    record: ElectionRecord | None,
    members: Mapping[str, NodeRecord],
    *,
    view_complete: bool = True,
) -> Leader | None:
    """The group's live leader, or None when the post is vacant or its holder is gone."""
    if record is None or record.vacant:
        return None
    if holder_gone(record.node, record.incarnation, members, view_complete=view_complete):
        return None
    return Leader(record.leader, record.node, record.incarnation, record.term)
