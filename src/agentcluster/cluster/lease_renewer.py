"""The lease renewer: a node component, on its own connection, that keeps the node's lease.

Theory of operation (DESIGN.md, "Liveness, leases and fencing"; the decisions are
``core.lease``'s, this module only waits, writes and reads):

- ``join`` reads the node's record and writes ``joined(previous)`` — incarnation + 1 — by
  compare-and-set (create when absent). That write is the first renewal.
- Every ``r`` a renewal: ``renewed(record)`` (the counter moves, vitals refresh) by
  compare-and-set at the revision of our last write, through ``stamped_update`` with
  timeout ``r`` per attempt; the next renewal starts ``r`` after this one started, at once
  if it took longer. ``OwnLease`` is told of each renewal sent and of each definite answer;
  a renewal whose outcome stayed unknown keeps its token, and a later read that finds its
  stamp settles it.
- A timer at the lease's end checks ``OwnLease.should_pause``: the node's ``on_pause`` runs
  once per lapse. A renewal that commits while paused is the confirmation that the record
  is still alive at our incarnation (``resume_decision`` on the record just written says
  RESUME): ``on_resume``.
- A renewal that loses its compare-and-set means someone else wrote our record — an
  observer declared us dead, a restart under our id took over, or a write of ours whose
  reply was lost landed. The record is read and ``resume_decision`` applied: RESUME adopts
  the revision (the next renewal confirms), SUPERSEDED calls ``on_superseded`` with
  ``NodeSuperseded`` and never writes again, REJOIN writes the record at
  ``next_incarnation`` by compare-and-set at the revision read and calls ``on_rejoin``.

Nothing here looks at the connection's connected state: only committed writes count. The
lease is measured on ``clock.lease_now()``. Hooks run synchronously (on the renewer's task
or a loop timer) and must not block: a node schedules its agent work as tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from agentcluster.clock import Clock, LoopClock
from agentcluster.cluster.buckets import node_key, stamped_update, stop_task
from agentcluster.cluster.membership import JoinSpec, Vitals, VitalsSource, node_stamp
from agentcluster.core.lease import (
    LeaseTiming,
    OwnLease,
    ResumeDecision,
    next_incarnation,
    resume_decision,
)
from agentcluster.core.membership import NodeRecord, renewed
from agentcluster.core.membership import incarnation_after as _incarnation_after
from agentcluster.core.stamps import StampSource, WriteStamp
from agentcluster.errors import (
    ConnectionClosed,
    CorruptRecord,
    KeyExists,
    NodeSuperseded,
    NoResponders,
    RequestTimeout,
    RevisionMismatch,
    UsageError,
)
from agentcluster.telemetry.events import Telemetry
from agentcluster.telemetry.events import telemetry as default_telemetry
from agentcluster.transport.interface import DEFAULT_TIMEOUT, KeyValue

__all__ = [
    "LEASE_PAUSED",
    "LEASE_REJOINED",
    "LEASE_RESUMED",
    "LEASE_SUPERSEDED",
    "LeaseRenewer",
]

_log = logging.getLogger("agentcluster.cluster.lease")

LEASE_PAUSED = ("agentcluster", "cluster", "lease", "paused")
LEASE_RESUMED = ("agentcluster", "cluster", "lease", "resumed")
LEASE_REJOINED = ("agentcluster", "cluster", "lease", "rejoined")
LEASE_SUPERSEDED = ("agentcluster", "cluster", "lease", "superseded")

_MIN_WAIT = 1e-6
_PENDING_LIMIT = 32
"""Unsettled renewal stamps kept; older ones can no longer extend the lease anyway."""


@dataclass(frozen=True, slots=True)
class _Joining:
    """A (re)join write under way, or whose outcome is still unknown."""

    stamp: WriteStamp
    stamps: StampSource
    record: NodeRecord
    token: int
    rejoin: bool


class LeaseRenewer:
    """Keeps one node's lease; see the module docstring.

    ``kv`` is the ``nodes`` bucket on the node's lease connection (not the one its agents
    use). ``write_attempts`` bounds each stamped write (each attempt waits at most r).
    """

    def __init__(
        self,
        kv: KeyValue,
        spec: JoinSpec,
        *,
        timing: LeaseTiming | None = None,
        clock: Clock | None = None,
        vitals: VitalsSource | None = None,
        on_pause: Callable[[], None] | None = None,
        on_resume: Callable[[], None] | None = None,
        on_superseded: Callable[[NodeSuperseded], None] | None = None,
        on_rejoin: Callable[[int], None] | None = None,
        telemetry: Telemetry | None = None,
        write_attempts: int = 3,
        read_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._kv = kv
        self.spec = spec
        self.lease = OwnLease(timing)
        self._clock = clock
        self._vitals: VitalsSource = Vitals if vitals is None else vitals
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._on_superseded = on_superseded
        self._on_rejoin = on_rejoin
        self._telemetry = default_telemetry if telemetry is None else telemetry
        self._attempts = write_attempts
        self._read_timeout = read_timeout
        self._key = node_key(spec.node_id)
        self._stamps: StampSource | None = None
        self._record: NodeRecord | None = None
        self._revision: int | None = None
        self._joining: _Joining | None = None
        self._pending: dict[WriteStamp, int] = {}
        self._paused = False
        self._superseded: NodeSuperseded | None = None
        self._left = False
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self.renewals = 0
        """Renewals committed (the join and rejoins included)."""
        self.failures = 0
        """Renewals that failed or whose outcome stayed unknown."""
        self.conflicts = 0
        """Renewals that found the record written by someone else."""

    # --- state ------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.spec.node_id

    @property
    def timing(self) -> LeaseTiming:
        return self.lease.timing

    @property
    def incarnation(self) -> int:
        """The incarnation this process holds (0 before it joined)."""
        return 0 if self._record is None else self._record.incarnation

    @property
    def stamps(self) -> StampSource:
        """The stamps of the current incarnation, for every write this node makes."""
        if self._stamps is None:
            raise UsageError(f"node {self.node_id!r} has not joined")
        return self._stamps

    @property
    def record(self) -> NodeRecord | None:
        """The record as this node last wrote (or read and adopted) it."""
        return self._record

    @property
    def revision(self) -> int | None:
        return self._revision

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def superseded(self) -> NodeSuperseded | None:
        return self._superseded

    @property
    def left(self) -> bool:
        return self._left

    def now(self) -> float:
        """The lease clock (``clock.lease_now()``)."""
        return self._get_clock().lease_now()

    def valid(self) -> bool:
        """The fence: this process may commit now (lease valid, not superseded, not left)."""
        return self._superseded is None and not self._left and self.lease.valid(self.now())

    def add_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` when the lease becomes valid or invalid, or the incarnation
        changes; returns its remover."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _get_clock(self) -> Clock:
        if self._clock is None:
            self._clock = LoopClock(asyncio.get_running_loop())
        return self._clock

    # --- lifecycle ----------------------------------------------------------------------

    async def join(self) -> NodeRecord:
        """Write our record at incarnation + 1; the lease is valid from this write.

        Raises the store's error (``RequestTimeout``, ``NoResponders``, ``CorruptRecord``
        for an unreadable record, which is never overwritten blindly) when no join
        committed within ``write_attempts`` tries.
        """
        if self._record is not None:
            raise UsageError(f"node {self.node_id!r} already joined")
        error: Exception = RequestTimeout(f"join of {self.node_id!r} did not commit")
        for _ in range(self._attempts):
            entry = await self._kv.get(self._key, timeout=self._read_timeout)
            previous = None if entry is None else NodeRecord.from_bytes(entry.value)
            joining = self._joining
            if previous is not None and joining is not None and previous.stamp == joining.stamp:
                assert entry is not None
                self._joined(entry.revision)
                return previous
            try:
                if await self._write_joined(
                    None if entry is None else entry.revision,
                    _incarnation_after(previous),
                    rejoin=False,
                ):
                    assert self._record is not None
                    return self._record
            except (NoResponders, RequestTimeout) as exc:
                error = exc
                await asyncio.sleep(self.timing.renewal_timeout)
        raise error

    async def start(self) -> None:
        """Start renewing (after ``join``)."""
        if self._record is None:
            raise UsageError(f"node {self.node_id!r} must join before renewing")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"lease-renewer[{self.node_id}]")

    async def stop(self) -> None:
        """Stop renewing and checking, writing nothing (an abrupt stop, as in a crash)."""
        self._cancel_timer()
        task, self._task = self._task, None
        await stop_task(task)

    async def leave(self) -> bool:
        """Stop renewing and write ``left`` by compare-and-set; True when it committed.

        A renewal of ours that landed late moves the revision: the record is read again
        and, while it is still alive at our incarnation, the leave is retried there.
        """
        await self.stop()
        for _ in range(self._attempts):
            record, revision = self._record, self._revision
            if self._superseded is not None or record is None or revision is None or self._left:
                return False
            stamp = self.stamps.next()
            left = record.leaving(stamp)
            try:
                rev = await stamped_update(
                    self._kv,
                    self._key,
                    left.to_bytes(),
                    stamp,
                    revision,
                    stamp_of=node_stamp,
                    timeout=self.timing.renewal_timeout,
                    attempts=self._attempts,
                )
            except (RevisionMismatch, KeyExists):
                if not await self._reread_alive():
                    return False
                continue
            except (NoResponders, RequestTimeout) as exc:
                _log.warning("node %r: leave did not commit: %s", self.node_id, exc)
                return False
            self._record, self._revision, self._left = left, rev, True
            self._cancel_timer()
            self._notify()
            return True
        return False

    async def _reread_alive(self) -> bool:
        """Read our record; adopt it and say True if it is still alive at our incarnation."""
        try:
            entry = await self._kv.get(self._key, timeout=self.timing.renewal_timeout)
            record = None if entry is None else NodeRecord.from_bytes(entry.value)
        except (RequestTimeout, NoResponders, CorruptRecord):
            return False
        if entry is None or record is None:
            return False
        if resume_decision(record.status, record.incarnation, self.incarnation) is not (
            ResumeDecision.RESUME
        ):
            return False
        self._record, self._revision = record, entry.revision
        return True

    # --- renewing -----------------------------------------------------------------------

    async def _run(self) -> None:
        r = self.timing.renew_interval
        while self._superseded is None:
            started = self.now()
            try:
                await self._renew_once()
            except ConnectionClosed:
                _log.warning("node %r: lease connection closed; renewals stop", self.node_id)
                return
            except Exception:
                self.failures += 1
                _log.exception("node %r: renewal failed unexpectedly", self.node_id)
            if self._superseded is not None:
                return
            delay = started + r - self.now()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _renew_once(self) -> None:
        record, revision = self._record, self._revision
        if record is None or revision is None:
            return
        vitals = self._vitals()
        token = self.lease.renewal_started(self.now())
        stamp = self.stamps.next()
        new = renewed(record, stamp, agent_count=vitals.agent_count, load=vitals.load)
        self._remember(stamp, token)
        try:
            rev = await stamped_update(
                self._kv,
                self._key,
                new.to_bytes(),
                stamp,
                revision,
                stamp_of=node_stamp,
                timeout=self.timing.renewal_timeout,
                attempts=self._attempts,
            )
        except (RevisionMismatch, KeyExists):
            self._pending.pop(stamp, None)
            self.lease.renewal_failed(token)
            self.conflicts += 1
            await self._reconcile()
            return
        except NoResponders:
            self._pending.pop(stamp, None)
            self.lease.renewal_failed(token)
            self.failures += 1
            return
        except RequestTimeout:
            self.failures += 1
            return
        self._pending.pop(stamp, None)
        self._committed(token, new, rev)

    def _remember(self, stamp: WriteStamp, token: int) -> None:
        self._pending[stamp] = token
        while len(self._pending) > _PENDING_LIMIT:
            del self._pending[next(iter(self._pending))]

    def _committed(self, token: int, record: NodeRecord, revision: int) -> None:
        now = self.now()
        was_valid = self.lease.valid(now)
        self.lease.renewal_succeeded(token, now)
        self._record, self._revision = record, revision
        self.renewals += 1
        self._arm_timer()
        if self._paused and self.lease.valid(now):
            decision = resume_decision(record.status, record.incarnation, self.incarnation)
            if decision is ResumeDecision.RESUME:
                self._paused = False
                self._emit(LEASE_RESUMED, {"count": 1})
                self._call(self._on_resume)
        if was_valid != self.lease.valid(now):
            self._notify()

    async def _reconcile(self) -> None:
        """Our record moved under someone else's write: read it and apply the decision."""
        for _ in range(self._attempts):
            try:
                entry = await self._kv.get(self._key, timeout=self.timing.renewal_timeout)
            except (RequestTimeout, NoResponders):
                return
            try:
                record = None if entry is None else NodeRecord.from_bytes(entry.value)
            except CorruptRecord as exc:
                _log.error("node %r: own record unreadable: %s", self.node_id, exc)
                return
            joining = self._joining
            if record is not None and joining is not None and record.stamp == joining.stamp:
                assert entry is not None
                self._joined(entry.revision)
                return
            if record is not None and record.stamp is not None:
                token = self._pending.pop(record.stamp, None)
                if token is not None:
                    self.lease.renewal_succeeded(token, self.now())
            if record is None:
                decision = ResumeDecision.REJOIN
            else:
                decision = resume_decision(record.status, record.incarnation, self.incarnation)
            if decision is ResumeDecision.RESUME:
                assert entry is not None
                self._record, self._revision = record, entry.revision
                return
            if decision is ResumeDecision.SUPERSEDED:
                assert record is not None
                self._supersede(record.incarnation)
                return
            found = 0 if record is None else record.incarnation
            try:
                if await self._write_joined(
                    None if entry is None else entry.revision,
                    next_incarnation(self.incarnation, found),
                    rejoin=True,
                ):
                    return
            except (NoResponders, RequestTimeout):
                return

    async def _write_joined(self, revision: int | None, incarnation: int, *, rejoin: bool) -> bool:
        """Write our record at ``incarnation`` over ``revision``; False if that lost."""
        stamps = StampSource(self.node_id, incarnation)
        stamp = stamps.next()
        base = None if incarnation == 1 else NodeRecord(self.node_id, incarnation - 1)
        record = self.spec.joined(base, stamp, self._get_clock().wall())
        token = self.lease.renewal_started(self.now())
        self._joining = _Joining(stamp, stamps, record, token, rejoin)
        try:
            rev = await stamped_update(
                self._kv,
                self._key,
                record.to_bytes(),
                stamp,
                revision,
                stamp_of=node_stamp,
                timeout=self.timing.renewal_timeout,
                attempts=self._attempts,
            )
        except (RevisionMismatch, KeyExists):
            self.lease.renewal_failed(token)
            self._joining = None
            return False
        except NoResponders:
            self.lease.renewal_failed(token)
            self._joining = None
            raise
        self._joined(rev)
        return True

    def _joined(self, revision: int) -> None:
        joining = self._joining
        assert joining is not None
        self._joining = None
        old = self.incarnation
        self._stamps = joining.stamps
        self._pending.clear()
        was_paused = self._paused
        self._paused = False
        self._committed(joining.token, joining.record, revision)
        if joining.rejoin:
            self._emit(
                LEASE_REJOINED,
                {"count": 1},
                {"previous_incarnation": old, "paused": was_paused},
            )
            self._call(self._on_rejoin, joining.record.incarnation)
        self._notify()

    def _supersede(self, found: int) -> None:
        error = NodeSuperseded(self.node_id, self.incarnation, found)
        self._superseded = error
        self._cancel_timer()
        self._emit(LEASE_SUPERSEDED, {"count": 1}, {"found_incarnation": found})
        self._call(self._on_superseded, error)
        self._notify()

    # --- the pause timer ----------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm_timer(self) -> None:
        self._cancel_timer()
        if self._superseded is not None:
            return
        delay = max(self.lease.valid_until - self.now(), _MIN_WAIT)
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_lapse)

    def _check_lapse(self) -> None:
        self._timer = None
        if self._superseded is not None or self._left:
            return
        now = self.now()
        if not self.lease.should_pause(now):
            self._arm_timer()
            return
        if not self._paused:
            self._paused = True
            self._emit(LEASE_PAUSED, {"count": 1, "valid_until": self.lease.valid_until})
            self._call(self._on_pause)
            self._notify()

    # --- plumbing -----------------------------------------------------------------------

    def _notify(self) -> None:
        for listener in tuple(self._listeners):
            try:
                listener()
            except Exception:
                _log.exception("lease listener %r failed", listener)

    def _emit(
        self,
        event: tuple[str, ...],
        measurements: dict[str, float],
        metadata: dict[str, object] | None = None,
    ) -> None:
        meta: dict[str, object] = {"node_id": self.node_id, "incarnation": self.incarnation}
        if metadata:
            meta.update(metadata)
        self._telemetry.emit(event, measurements, meta)

    def _call(self, hook: Callable[..., None] | None, *args: object) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            _log.exception("node %r: lease hook %r failed", self.node_id, hook)
