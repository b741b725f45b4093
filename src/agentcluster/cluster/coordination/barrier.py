"""A barrier across the cluster: every participant waits until all have arrived.

Theory of operation (the rules are ``core.coordination``'s). ``barrier.<id>`` holds one
round: its generation, its participants, and who has arrived (each with its arrival's
stamp). A participant reads the key, adds itself by compare-and-set at the revision read
(stamped: a timed-out write is read back, and a later read that finds the stamp means it
arrived), and, unless its arrival completed the round, watches the key until the round is
complete. The last arrival's write completes it; every waiter's watch delivers that write,
so all are released by one write, within a watch delivery of each other.

**Reusing an id.** Rounds are generations. The first arrival after a complete round opens
the next one, so the same id serves round after round (a loop of ``barrier`` calls); a
waiter of round g is released by round g completing *or* by any later round existing,
which a slow waiter may see first. A round that timed out stays open: a participant that
calls again finds itself recorded and waits again, and the round completes when the
missing ones arrive. One id used at the same time by two different sets of participants is
refused with ``UsageError``. A completed round's record stays in the bucket (one small key
per id).

A participant whose node dies mid-way never arrives: the others raise ``BarrierTimeout``
naming it. A client (``role="client"``) cannot take part (its writes cannot be stamped
uniquely).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agentcluster.cluster.buckets import stamped_update
from agentcluster.cluster.coordination.seat import (
    BACKOFF,
    IO_TIMEOUT,
    POLL,
    WRITE_ATTEMPTS,
    KeyFollower,
    Seat,
)
from agentcluster.core.coordination import (
    ArrivalKind,
    BarrierRecord,
    arrive,
    barrier_missing,
    barrier_released,
    find_arrival,
    participant_set,
)
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import (
    BarrierTimeout,
    ConfigurationError,
    KeyExists,
    NoResponders,
    RequestTimeout,
    RevisionMismatch,
)
from agentcluster.transport.interface import Entry
from agentcluster.transport.names import encode_token

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = ["barrier", "barrier_key"]

_log = logging.getLogger("agentcluster.cluster.coordination.barrier")


def barrier_key(barrier_id: str) -> str:
    """The ``coordination`` key of barrier ``barrier_id`` (any non-empty string)."""
    return f"barrier.{encode_token(barrier_id)}"


def _barrier_stamp(value: bytes) -> WriteStamp | None:
    return BarrierRecord.from_bytes(value).stamp


def _now() -> float:
    return asyncio.get_running_loop().time()


_Read = tuple[int, BarrierRecord | None]


def _decode(entry: Entry | None) -> _Read:
    if entry is None or entry.deleted:
        return 0, None
    return entry.revision, BarrierRecord.from_bytes(entry.value)


async def barrier(
    node: ClusterNode,
    barrier_id: str,
    participants: Sequence[str],
    *,
    participant: str,
    timeout: float,
) -> None:
    """Arrive at ``barrier_id`` as ``participant`` and wait until every one of
    ``participants`` has arrived, at most ``timeout`` seconds.

    Raises ``BarrierTimeout`` naming the participants still missing (this one too, if its
    own arrival could not be written in time); ``UsageError`` for a participant list that
    is empty, has duplicates or lacks ``participant``, or that differs from the list of a
    round still open under the same id; ``ConfigurationError`` for a bad timeout.
    """
    if not isinstance(barrier_id, str) or not barrier_id:
        raise ConfigurationError("a barrier id must be a non-empty string")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(f"barrier {barrier_id!r}: timeout must be a number")
    if not math.isfinite(timeout) or timeout < 0:
        raise ConfigurationError(f"barrier {barrier_id!r}: timeout must be finite and >= 0")
    group = participant_set(participants, participant)
    seat = Seat.of(node, writes="take part in a barrier")
    key = barrier_key(barrier_id)
    deadline = _now() + timeout
    generation, state = await _arrive(seat, key, barrier_id, group, participant, deadline, timeout)
    if barrier_released(state[1], generation):
        return
    follower = KeyFollower(seat, key, wake_on_membership=False)
    await follower.start()
    try:
        while True:
            if follower.revision >= state[0]:
                state = _decode(follower.entry)
            if barrier_released(state[1], generation):
                return
            remaining = deadline - _now()
            if remaining <= 0:
                missing = barrier_missing(state[1], generation, group)
                raise BarrierTimeout(barrier_id, missing, timeout)
            if not await follower.wait(min(remaining, POLL)):
                await follower.refresh()
    finally:
        await follower.stop()


async def _arrive(
    seat: Seat,
    key: str,
    barrier_id: str,
    group: tuple[str, ...],
    participant: str,
    deadline: float,
    timeout: float,
) -> tuple[int, _Read]:
    """Record ``participant`` in the open round; the generation it waits for and the key
    as last known."""
    pending: set[WriteStamp] = set()
    state: _Read | None = None
    record: BarrierRecord | None = None
    tried = False
    while True:
        if tried and _now() >= deadline:
            raise BarrierTimeout(barrier_id, _unarrived(record, group, participant), timeout)
        if state is None:
            try:
                state = _decode(await seat.kv.get(key, timeout=IO_TIMEOUT))
            except (RequestTimeout, NoResponders):
                await _pause(deadline, barrier_id, _unarrived(record, group, participant), timeout)
                continue
        revision, record = state
        found = find_arrival(record, pending)
        if found is not None:
            return found, state
        tried = True
        stamp = seat.stamp()
        arrival = arrive(record, group, participant, stamp)
        if arrival.kind is ArrivalKind.RECORDED or arrival.record is None:
            return arrival.generation, state
        try:
            written = await stamped_update(
                seat.kv,
                key,
                arrival.record.to_bytes(),
                stamp,
                None if record is None else revision,
                stamp_of=_barrier_stamp,
                timeout=IO_TIMEOUT,
                attempts=WRITE_ATTEMPTS,
            )
        except (RevisionMismatch, KeyExists):
            state = None
        except NoResponders:
            state = None
            await _pause(deadline, barrier_id, _unarrived(record, group, participant), timeout)
        except RequestTimeout:
            _log.info(
                "barrier %r: arrival of %r still unknown; reading back", barrier_id, participant
            )
            pending.add(stamp)
            state = None
        else:
            return arrival.generation, (written, arrival.record)


def _unarrived(
    record: BarrierRecord | None, group: tuple[str, ...], participant: str
) -> tuple[str, ...]:
    """Who is missing while ``participant``'s own arrival is not yet written: the open
    round's missing ones (everyone, if no round of this group is open), and itself."""
    if record is None or record.complete or record.participants != group:
        return group
    missing = set(record.missing) | {participant}
    return tuple(p for p in group if p in missing)


async def _pause(
    deadline: float, barrier_id: str, missing: tuple[str, ...], timeout: float
) -> None:
    remaining = deadline - _now()
    if remaining <= 0:
        raise BarrierTimeout(barrier_id, missing, timeout)
    await asyncio.sleep(min(BACKOFF, remaining))
