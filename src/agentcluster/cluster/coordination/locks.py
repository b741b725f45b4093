"""A distributed lock with fencing tokens, on one key of the ``coordination`` bucket.

Theory of operation (the rules are ``core.coordination``'s; this module reads, asks, writes):

- ``acquire_lock`` reads ``lock.<name>``. Absent or ``free``: it writes a ``held`` record
  (owner, node, node incarnation, stamp) by create or by compare-and-set at the revision
  read. Held by a holder that is gone — its node declared ``dead`` or ``left``, or replaced
  by a newer incarnation, as the membership cache says — it takes it over the same way.
  Held by a live holder: it waits, woken by a watch of the key, by every membership change
  and by its own lease changing, re-reading every ``poll`` seconds regardless, until the
  deadline (``LockTimeout``, naming the holder). The store picks one winner per revision,
  so there are never two holders. A lock is not reentrant: a second acquire by the same
  owner waits like anyone else's.
- The **fencing token** is the revision of the write that took the lock. Revisions only
  grow, so a later holder always has a higher token; pass it to whatever the lock guards,
  and have that refuse lower tokens than it has seen.
- A lock has no TTL. It is free again when released, or as soon as its holder's node is
  declared dead (within the death-detection time, about 1 s after its last lease renewal):
  the next acquirer takes it over. No sweeper is needed; a dead holder's record stays until
  someone wants the lock. ``check`` fails for a dead holder's token from any node's view.
- ``release`` writes a ``free`` record at the holding's revision. If the key moved, the lock
  had been taken over (its node was declared dead meanwhile): ``LockLost``. The node
  remembers the revision of its ``free`` record, so its next acquire of that lock is one
  compare-and-set (a lock cycle costs two writes when uncontended). The key is never
  deleted: each lock name leaves one small record in the bucket.
- **Ambiguous writes.** Every write is stamped (``buckets.stamped_update`` reads back a
  timed-out write and finds its stamp). A write still unknown after that is remembered
  with the revision it was conditioned on: a later read that finds its stamp means the lock
  is ours (adopted, not taken twice); one that finds the key moved past that revision means
  it can never land. If the acquire gives up (deadline, cancellation) while such a write
  may still land, a background sweep watches the key for a bounded time and releases the
  lock if the write lands late — so the lock is not lost to a holder nobody knows.

A client (``role="client"``) has no node record, so a lock it held could never be seen to
die: it may read (``lock_holder``, ``check_token``) but not acquire.

``Seat`` and ``KeyFollower`` (``coordination.seat``) are shared with ``barrier`` and
``election``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from agentcluster.cluster.buckets import stamped_update
from agentcluster.cluster.coordination.seat import (
    BACKOFF,
    IO_TIMEOUT,
    POLL,
    RELEASE_WITHIN,
    WRITE_ATTEMPTS,
    KeyFollower,
    Seat,
)
from agentcluster.core.coordination import (
    LockAction,
    LockHolder,
    LockRecord,
    LockState,
    live_holder,
    lock_action,
    lock_lost_reason,
    settle_pending,
)
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import (
    ConfigurationError,
    ConnectionClosed,
    CoordinationError,
    KeyExists,
    LockLost,
    LockTimeout,
    NoResponders,
    RequestTimeout,
    RevisionMismatch,
    TransportError,
)
from agentcluster.telemetry.events import telemetry
from agentcluster.transport.interface import Entry, KeyValue
from agentcluster.transport.names import encode_token

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = [
    "LOCK_TAKEN_OVER",
    "LockHandle",
    "acquire_lock",
    "check_token",
    "lock_holder",
    "lock_key",
]

_log = logging.getLogger("agentcluster.cluster.coordination.locks")

LOCK_TAKEN_OVER = ("agentcluster", "coordination", "lock", "taken_over")

ORPHAN_WINDOW = 30.0
"""How long an acquire that gave up keeps watching for a write of its own landing late."""

_HINTS = 1024
"""Free-record revisions a node remembers (its most recent releases)."""


def lock_key(name: str) -> str:
    """The ``coordination`` key of lock ``name`` (any non-empty string)."""
    return f"lock.{encode_token(name)}"


def _now() -> float:
    return asyncio.get_running_loop().time()


# --- what a primitive needs of its node --------------------------------------------------


def _lock_stamp(value: bytes) -> WriteStamp | None:
    return LockRecord.from_bytes(value).stamp


_Read = tuple[int, LockRecord | None]
"""A lock key as read: its revision (0 when absent) and record (None when absent)."""


def _decode(entry: Entry | None) -> _Read:
    if entry is None or entry.deleted:
        return (0 if entry is None else entry.revision), None
    return entry.revision, LockRecord.from_bytes(entry.value)


async def _read(kv: KeyValue, key: str) -> _Read:
    return _decode(await kv.get(key, timeout=IO_TIMEOUT))


_free_records: weakref.WeakKeyDictionary[ClusterNode, dict[str, _Read]] = (
    weakref.WeakKeyDictionary()
)
"""Per node: lock key -> the free record this node last wrote there, and its revision."""


def _remember_free(node: ClusterNode, key: str, revision: int, record: LockRecord) -> None:
    hints = _free_records.setdefault(node, {})
    hints.pop(key, None)
    hints[key] = (revision, record)
    while len(hints) > _HINTS:
        del hints[next(iter(hints))]


def _validate(name: str, owner: str, timeout: float, ttl: None) -> None:
    if ttl is not None:
        raise ConfigurationError(
            f"lock {name!r}: locks take no ttl (got {ttl!r}); a lock is freed when its "
            "holder releases it or its holder's node is declared dead"
        )
    if not isinstance(owner, str) or not owner:
        raise ConfigurationError(f"lock {name!r}: owner must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise ConfigurationError("a lock name must be a non-empty string")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(f"lock {name!r}: timeout must be a number, got {timeout!r}")
    if not math.isfinite(timeout) or timeout < 0:
        raise ConfigurationError(f"lock {name!r}: timeout must be finite and >= 0")


class LockHandle:
    """One holding of a lock: its ``token`` (fencing token) and how to check and end it.

    Use it as ``async with await acquire_lock(...) as lock:``; leaving the block releases
    it. Leaving with an error releases it too, and a failed release is then logged, not
    raised over the block's own error.
    """

    __slots__ = ("_key", "_released", "_seat", "_stamp", "name", "owner", "token")

    def __init__(
        self, seat: Seat, key: str, name: str, owner: str, token: int, stamp: WriteStamp
    ) -> None:
        self._seat = seat
        self._key = key
        self._stamp = stamp
        self._released = False
        self.name = name
        self.owner = owner
        self.token = token
        """The fencing token: strictly greater than every earlier holder's."""

    @property
    def node_id(self) -> str:
        return self._stamp.node

    @property
    def incarnation(self) -> int:
        """The node incarnation the lock was taken under."""
        return self._stamp.incarnation

    @property
    def released(self) -> bool:
        """Released by this handle (or found lost by ``release``)."""
        return self._released

    def __repr__(self) -> str:
        return (
            f"LockHandle({self.name!r}, owner={self.owner!r}, token={self.token}, "
            f"node={self.node_id!r})"
        )

    async def __aenter__(self) -> LockHandle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.release()
            return
        try:
            await self.release()
        except (CoordinationError, TransportError) as release_error:
            _log.warning("lock %r: release after an error failed: %s", self.name, release_error)

    async def check(self) -> None:
        """Raise ``LockLost`` unless this holding still stands: the node's own fence first
        (stopped, superseded, rejoined under a new incarnation, lease lapsed), then the key
        as read now and the holder's node as the membership cache sees it."""
        if self._released:
            raise LockLost(self.name, self.token, "it was released")
        reason = self._seat.fence_reason(self.incarnation)
        if reason is None:
            revision, record = await _read(self._seat.kv, self._key)
            members, complete = await self._seat.members_for(self.node_id)
            reason = lock_lost_reason(record, revision, self.token, members, view_complete=complete)
        if reason is not None:
            raise LockLost(self.name, self.token, reason)

    async def release(self, *, timeout: float = RELEASE_WITHIN) -> None:
        """Free the lock (a ``free`` record at this holding's revision); idempotent.

        ``LockLost`` if it had been taken over meanwhile. A store that does not answer is
        retried for ``timeout`` seconds, then its error is raised; calling ``release``
        again resumes where it stopped.
        """
        if self._released:
            return
        seat = self._seat
        deadline = _now() + timeout
        pending: dict[WriteStamp, int] = {}
        while True:
            stamp = seat.stamp()
            free = LockRecord.free(stamp, released=self.token)
            try:
                revision = await stamped_update(
                    seat.kv,
                    self._key,
                    free.to_bytes(),
                    stamp,
                    self.token,
                    stamp_of=_lock_stamp,
                    timeout=IO_TIMEOUT,
                    attempts=WRITE_ATTEMPTS,
                )
            except RevisionMismatch:
                pass
            except (RequestTimeout, NoResponders) as exc:
                if isinstance(exc, RequestTimeout):
                    pending[stamp] = self.token
                if _now() >= deadline:
                    raise
                await asyncio.sleep(BACKOFF)
            else:
                self._released = True
                _remember_free(seat.node, self._key, revision, free)
                return
            try:
                revision, record = await _read(seat.kv, self._key)
            except (RequestTimeout, NoResponders):
                if _now() >= deadline:
                    raise
                continue
            settled = settle_pending(pending, revision, None if record is None else record.stamp)
            if settled.landed is not None:
                self._released = True
                assert record is not None
                _remember_free(seat.node, self._key, revision, record)
                return
            if revision != self.token:
                self._released = True
                members, complete = await seat.members_for(self.node_id)
                reason = lock_lost_reason(
                    record, revision, self.token, members, view_complete=complete
                )
                raise LockLost(self.name, self.token, reason or "the lock moved on")


async def acquire_lock(
    node: ClusterNode,
    name: str,
    *,
    owner: str,
    timeout: float,
    ttl: None = None,
) -> LockHandle:
    """Take lock ``name`` for ``owner`` through ``node``, waiting at most ``timeout`` seconds.

    ``timeout=0`` tries once. Raises ``LockTimeout`` (naming the holder) when a live holder
    kept it; ``ConfigurationError`` for a bad argument (``ttl`` must stay None: see the
    module docstring); ``UsageError`` on a client. A write in flight at the deadline is
    resolved before giving up, so the call may overrun by a few store round trips.
    """
    _validate(name, owner, timeout, ttl)
    seat = Seat.of(node, writes="hold a lock")
    return await _Acquire(seat, name, owner, timeout).run()


class _Acquire:
    """One ``acquire_lock`` call: the read-decide-write loop and its waiting."""

    def __init__(self, seat: Seat, name: str, owner: str, timeout: float) -> None:
        self.seat = seat
        self.name = name
        self.key = lock_key(name)
        self.owner = owner
        self.timeout = timeout
        self.deadline = _now() + timeout
        self.pending: dict[WriteStamp, int] = {}
        """Our writes whose outcome is unknown -> the revision each was conditioned on."""
        self.holder: str | None = None
        self.cause: BaseException | None = None

    async def run(self) -> LockHandle:
        follower: KeyFollower | None = None
        handle: LockHandle | None = None
        # The free record this node last wrote here, if any: the lock is then one
        # compare-and-set away, without a read (a stale guess just costs the read).
        state: _Read | None = _free_records.get(self.seat.node, {}).pop(self.key, None)
        guessed = state is not None
        try:
            while True:
                if state is None:
                    state = await self._read()
                    if state is None:
                        await self._pause()
                        continue
                outcome = await self._decide(state)
                if isinstance(outcome, LockHandle):
                    handle = outcome
                    return handle
                if guessed:
                    guessed, state = False, None
                    continue
                remaining = self.deadline - _now()
                if remaining <= 0:
                    raise LockTimeout(self.name, self.holder, self.timeout) from self.cause
                if outcome == "again":
                    state = None  # a write lost, or its outcome unknown: read again at once
                    continue
                if follower is None:
                    follower = KeyFollower(self.seat, self.key)
                    await follower.start()
                elif not await follower.wait(min(remaining, POLL)):
                    await follower.refresh()
                state = _decode(follower.entry) if follower.revision else None
        finally:
            if follower is not None:
                await follower.stop()
            if handle is None and self.pending:
                _sweep_later(self.seat, self.key, self.name, self.pending)

    async def _read(self) -> _Read | None:
        try:
            return await _read(self.seat.kv, self.key)
        except (RequestTimeout, NoResponders) as exc:
            self.cause = exc
            return None

    async def _pause(self) -> None:
        """After the store did not answer: give up at the deadline, else retry shortly."""
        remaining = self.deadline - _now()
        if remaining <= 0:
            raise LockTimeout(self.name, self.holder, self.timeout) from self.cause
        await asyncio.sleep(min(BACKOFF, remaining))

    async def _decide(self, state: _Read) -> LockHandle | Literal["again", "wait"]:
        """Act on the key as read: a handle if the lock is ours now, ``"again"`` after a
        write that lost or whose outcome is unknown, ``"wait"`` while a live holder has it
        (or this node's own lease is not valid)."""
        revision, record = state
        settled = settle_pending(self.pending, revision, None if record is None else record.stamp)
        self.pending = dict(settled.open)
        if settled.landed is not None:
            return self._handle(revision, settled.landed)
        if record is None or record.state is LockState.FREE:
            action = LockAction.ACQUIRE
        else:
            self.holder = record.owner
            members, complete = await self.seat.members_for(record.node)
            action = lock_action(record, members, view_complete=complete)
        if action is LockAction.WAIT or not self.seat.valid():
            return "wait"
        handle = await self._write(revision, record, action)
        return "again" if handle is None else handle

    async def _write(
        self, revision: int, record: LockRecord | None, action: LockAction
    ) -> LockHandle | None:
        stamp = self.seat.stamp()
        taken_over = action is LockAction.TAKE_OVER
        held = LockRecord.held(self.owner, stamp, previous=revision if taken_over else 0)
        try:
            token = await stamped_update(
                self.seat.kv,
                self.key,
                held.to_bytes(),
                stamp,
                None if record is None else revision,
                stamp_of=_lock_stamp,
                timeout=IO_TIMEOUT,
                attempts=WRITE_ATTEMPTS,
            )
        except (RevisionMismatch, KeyExists):
            return None
        except NoResponders as exc:
            self.cause = exc
            await self._pause()
            return None
        except RequestTimeout as exc:
            self.cause = exc
            self.pending[stamp] = 0 if record is None else revision
            return None
        except asyncio.CancelledError:
            self.pending[stamp] = 0 if record is None else revision  # it may still land
            raise
        if taken_over and record is not None:
            _log.info(
                "lock %r taken over by %r on %r (token %d) from %r on %r (token %d)",
                self.name,
                self.owner,
                stamp.node,
                token,
                record.owner,
                record.node,
                revision,
            )
            telemetry.emit(
                LOCK_TAKEN_OVER,
                {"token": token},
                {
                    "lock": self.name,
                    "owner": self.owner,
                    "node_id": stamp.node,
                    "from_owner": record.owner,
                    "from_node": record.node,
                    "from_token": revision,
                },
            )
        return self._handle(token, stamp)

    def _handle(self, token: int, stamp: WriteStamp) -> LockHandle:
        return LockHandle(self.seat, self.key, self.name, self.owner, token, stamp)


# --- late writes of an acquire that gave up -----------------------------------------------

_sweeps: set[asyncio.Task[None]] = set()


def _sweep_later(seat: Seat, key: str, name: str, pending: dict[WriteStamp, int]) -> None:
    task = asyncio.get_running_loop().create_task(
        _sweep(seat, key, name, dict(pending)), name=f"lock-sweep[{seat.node_id}:{name}]"
    )
    _sweeps.add(task)
    task.add_done_callback(_sweeps.discard)


async def _sweep(seat: Seat, key: str, name: str, pending: dict[WriteStamp, int]) -> None:
    """Watch for a write of an abandoned acquire landing late, and free the lock if it does;
    ends when no such write can land any more, or after ``ORPHAN_WINDOW``."""
    until = _now() + ORPHAN_WINDOW
    while pending and _now() < until:
        await asyncio.sleep(POLL)
        try:
            revision, record = await _read(seat.kv, key)
            settled = settle_pending(pending, revision, None if record is None else record.stamp)
            pending = dict(settled.open)
            if settled.landed is None:
                continue
            _log.warning(
                "lock %r: an acquire that gave up landed late (token %d); releasing it",
                name,
                revision,
            )
            stamp = seat.stamp()
            await stamped_update(
                seat.kv,
                key,
                LockRecord.free(stamp, released=revision).to_bytes(),
                stamp,
                revision,
                stamp_of=_lock_stamp,
                timeout=IO_TIMEOUT,
                attempts=WRITE_ATTEMPTS,
            )
            return
        except (RequestTimeout, NoResponders, RevisionMismatch, KeyExists) as exc:
            _log.debug("lock %r: sweep goes on after %s", name, exc)
        except ConnectionClosed:
            return
    if pending:
        _log.warning("lock %r: %d abandoned writes still unknown; giving up", name, len(pending))


# --- reading a lock from any node ----------------------------------------------------------


async def lock_holder(node: ClusterNode, name: str) -> LockHolder | None:
    """Who holds lock ``name`` now, read from the store; None when it is free or its
    holder's node is gone. A read is a hint: only a compare-and-set decides."""
    seat = Seat.of(node)
    revision, record = await _read(seat.kv, lock_key(name))
    if record is None or record.state is LockState.FREE:
        return None
    members, complete = await seat.members_for(record.node)
    return live_holder(record, revision, members, view_complete=complete)


async def check_token(node: ClusterNode, name: str, token: int) -> LockHolder:
    """The holder of lock ``name`` if ``token`` still holds it; ``LockLost`` otherwise (it
    was released, taken over, or its holder's node is gone). For whatever a lock guards:
    a resource that checks the token before acting refuses a holder that was replaced."""
    seat = Seat.of(node)
    revision, record = await _read(seat.kv, lock_key(name))
    members, complete = await seat.members_for("" if record is None else record.node)
    reason = lock_lost_reason(record, revision, token, members, view_complete=complete)
    if reason is not None:
        raise LockLost(name, token, reason)
    assert record is not None
    return LockHolder(record.owner, record.node, record.incarnation, revision)
