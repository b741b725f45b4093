"""The lease, the single death rule, and what a node does when the store answers again.

Theory of operation (DESIGN.md, "Liveness, leases and fencing"):

- Every node renews its lease by a compare-and-set on its own ``nodes`` record every
  ``renew_interval`` (r); each renewal times out after r and the next starts at once. Only
  a committed write proves the node is on the live side of the store's quorum, so only an
  acknowledged renewal extends the lease, and it counts from the renewal's *send* time: the
  lease of a renewal sent at ``s`` ends at ``s + F`` however late its acknowledgement came.
  A node whose lease is not valid pauses its agents (``OwnLease.should_pause``).
- An observer may move peer X to ``dead`` only when X's record has stayed at revision R for
  at least ``F + m`` on the observer's own clock, while the observer's own lease stayed valid
  throughout, and then only by a compare-and-set expecting R (``DeathWatch``). A window
  starts when the observer first sees R — it cannot vouch for time it was not watching — and
  no earlier than the moment its own lease last became valid, so a store that stalls for
  everyone (a NATS leader election) kills nobody. ``m`` is what separates "X paused itself"
  (after F) from "X is declared dead" (after F + m): a cut-off node has stopped committing
  before anyone takes its agents over.
- After a pause, ``resume_decision`` says whether the node resumes, rejoins under a new
  incarnation, or was superseded and must exit.

Every time is a monotonic reading passed in by the shell; one ``OwnLease`` and the
``DeathWatch`` built on it must be fed from the same clock. The fence check uses the clock
that keeps counting through suspension (``clock.lease_now()``), so the shell feeds the lease
from that clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from agentcluster.core.membership import NodeStatus
from agentcluster.errors import ConfigurationError

__all__ = [
    "MIN_FENCING_BASE",
    "MIN_MARGIN",
    "DeathCandidate",
    "DeathWatch",
    "LeaseTiming",
    "NodeStatus",
    "OwnLease",
    "ResumeDecision",
    "next_incarnation",
    "resume_decision",
]

MIN_MARGIN = 0.2
"""The smallest margin ``m`` accepted, in seconds."""
MIN_FENCING_BASE = 0.3
"""``F`` must be at least this plus two renewal intervals, in seconds."""
_TOLERANCE = 1e-9


class ResumeDecision(StrEnum):
    RESUME = "resume"
    """The record is alive at our incarnation: resume the paused agents."""
    SUPERSEDED = "superseded"
    """A restart under our id took over: stop everything, never write the record, exit."""
    REJOIN = "rejoin"
    """Our incarnation is over: stop its agents, rejoin at ``next_incarnation``."""


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """``renew_interval`` r, ``fencing_timeout`` F and ``margin`` m, in seconds."""

    renew_interval: float = 0.2
    fencing_timeout: float = 0.7
    margin: float = 0.3

    def __post_init__(self) -> None:
        for name in ("renew_interval", "fencing_timeout", "margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"LeaseTiming.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ConfigurationError(
                    f"LeaseTiming.{name} must be a finite number > 0, got {value!r}"
                )
        if self.margin < MIN_MARGIN - _TOLERANCE:
            raise ConfigurationError(
                f"LeaseTiming.margin must be >= {MIN_MARGIN}, got {self.margin!r}"
            )
        least = MIN_FENCING_BASE + 2 * self.renew_interval
        if self.fencing_timeout < least - _TOLERANCE:
            raise ConfigurationError(
                f"LeaseTiming.fencing_timeout must be >= {MIN_FENCING_BASE} + 2 * renew_interval "
                f"({least:g}), got {self.fencing_timeout!r}"
            )

    @property
    def death_after(self) -> float:
        """``F + m``: how long a record must stay still before its node may be declared dead."""
        return self.fencing_timeout + self.margin

    @property
    def renewal_timeout(self) -> float:
        """How long one renewal (or any liveness write) may take: ``r``."""
        return self.renew_interval


class OwnLease:
    """The node's own lease, from the renewals the shell starts and settles.

    The shell calls ``renewal_started(now)`` just before sending a renewal and settles the
    returned token with ``renewal_succeeded(token, now)`` or ``renewal_failed(token)``. A
    write that timed out is ambiguous: leave its token open until the write stamp settles it
    (the next renewal starts at ``next_renewal_at`` regardless). Tokens whose renewal can no
    longer make the lease valid are dropped, and settling them later is a no-op. ``lapses``
    counts how often the lease became valid again after it had lapsed.
    """

    __slots__ = (
        "_lapses",
        "_last_start",
        "_next_token",
        "_sent",
        "_valid_since",
        "_valid_until",
        "timing",
    )

    def __init__(self, timing: LeaseTiming | None = None) -> None:
        self.timing = LeaseTiming() if timing is None else timing
        self._next_token = 0
        self._sent: dict[int, float] = {}
        self._last_start: float | None = None
        self._valid_until = -math.inf
        self._valid_since: float | None = None
        self._lapses = 0

    @property
    def valid_until(self) -> float:
        """The send time of the newest acknowledged renewal plus F (``-inf`` before any)."""
        return self._valid_until

    @property
    def lapses(self) -> int:
        return self._lapses

    @property
    def renewal_timeout(self) -> float:
        return self.timing.renew_interval

    @property
    def next_renewal_at(self) -> float | None:
        """When the next renewal starts (and the current one times out); None: start now."""
        return None if self._last_start is None else self._last_start + self.timing.renew_interval

    @property
    def outstanding(self) -> int:
        """Renewals started and not yet settled that could still extend the lease."""
        return len(self._sent)

    def renewal_started(self, now: float) -> int:
        """Note a renewal sent at ``now``; returns its token."""
        horizon = now - self.timing.fencing_timeout
        for token in [t for t, sent in self._sent.items() if sent <= horizon]:
            del self._sent[token]
        token = self._next_token
        self._next_token += 1
        self._sent[token] = now
        self._last_start = now
        return token

    def renewal_succeeded(self, token: int, now: float) -> None:
        """The renewal ``token`` committed; its ack is handled at ``now``."""
        self._check_token(token)
        sent = self._sent.pop(token, None)
        if sent is None:
            return
        until = max(self._valid_until, sent + self.timing.fencing_timeout)
        if until > now and self._valid_until <= now:
            if self._valid_since is not None:
                self._lapses += 1
            self._valid_since = now
        self._valid_until = until

    def renewal_failed(self, token: int) -> None:
        """The renewal ``token`` definitely did not commit."""
        self._check_token(token)
        self._sent.pop(token, None)

    def _check_token(self, token: int) -> None:
        if not 0 <= token < self._next_token:
            raise ValueError(f"renewal token {token!r} was never issued")

    def valid(self, now: float) -> bool:
        """``now < valid_until``: the node may commit."""
        return now < self._valid_until

    def should_pause(self, now: float) -> bool:
        """No renewal acknowledged within F of its sending: pause every agent."""
        return not self.valid(now)

    def valid_since(self, now: float) -> float | None:
        """When the lease last became valid, if it is valid at ``now``; else None."""
        return self._valid_since if self.valid(now) else None

    def next_deadline(self, now: float) -> float:
        """When the shell must next wake: the next renewal, or the lapse if sooner."""
        renewal = self.next_renewal_at
        deadline = now if renewal is None else renewal
        if self.valid(now):
            deadline = min(deadline, self._valid_until)
        return deadline


def resume_decision(
    record_status: NodeStatus, record_incarnation: int, own_incarnation: int
) -> ResumeDecision:
    """What a node does when its record can be read again after a pause.

    Feed it the record from a fresh read (or the failed renewal's answer); a RESUME is
    confirmed only by the next renewal committing. A record at a *lower* incarnation than our
    own contradicts our committed join: either the read was stale or the store lost an
    acknowledged write. REJOIN is safe in both cases — stopping our agents never breaks the
    invariant, and the rejoin is itself a compare-and-set at the revision read, so a stale
    read makes it fail and the node reads again — while RESUME would trust a record that
    denies our own write and SUPERSEDED would exit a process nothing replaced. ``left`` at our
    incarnation rejoins too: our agents were failed over as for ``dead`` (a node that is
    leaving on purpose exits instead).
    """
    status = NodeStatus(record_status)
    if record_incarnation > own_incarnation:
        return ResumeDecision.SUPERSEDED
    if record_incarnation == own_incarnation and status == NodeStatus.ALIVE:
        return ResumeDecision.RESUME
    return ResumeDecision.REJOIN


def next_incarnation(own_incarnation: int, record_incarnation: int) -> int:
    """The incarnation a rejoin writes: above both ours and the record's."""
    return max(own_incarnation, record_incarnation) + 1


@dataclass(frozen=True, slots=True)
class DeathCandidate:
    """Peer ``peer`` may be moved ``alive → dead`` by a compare-and-set expecting ``revision``."""

    peer: str
    revision: int


@dataclass(slots=True)
class _Window:
    revision: int
    seen_at: float
    reported_at: float | None = None


class DeathWatch:
    """The observer side of the death rule, over the observer's own ``OwnLease``.

    The shell feeds every revision of every watched peer's record as it sees it (watch or
    read) with ``observe`` before asking ``due``, and ``forget``s peers whose record says
    ``dead`` or ``left`` (the observer does not watch itself). A lower revision than the one
    held is a stale read and is ignored. ``due`` reports each candidate at most once per
    ``renewal_timeout`` — the time the compare-and-set may take — so a write that failed
    without an answer is retried, while a lost one brings a new revision that restarts the
    window. After a won compare-and-set the shell calls ``declared``.
    """

    __slots__ = ("_windows", "lease")

    def __init__(self, lease: OwnLease) -> None:
        self.lease = lease
        self._windows: dict[str, _Window] = {}

    def __contains__(self, peer: object) -> bool:
        return peer in self._windows

    def peers(self) -> list[str]:
        return sorted(self._windows)

    def observe(self, peer: str, revision: int, now: float) -> None:
        window = self._windows.get(peer)
        if window is None or revision > window.revision:
            self._windows[peer] = _Window(revision, now)

    def forget(self, peer: str) -> None:
        self._windows.pop(peer, None)

    def declared(self, peer: str) -> None:
        """The compare-and-set moving ``peer`` to dead won."""
        self.forget(peer)

    def _due_at(self, window: _Window, valid_since: float) -> float:
        return max(window.seen_at, valid_since) + self.lease.timing.death_after

    def still_for(self, peer: str, now: float) -> float | None:
        """How long ``peer``'s window has run at ``now`` (0 while our lease is not valid)."""
        window = self._windows.get(peer)
        if window is None:
            return None
        valid_since = self.lease.valid_since(now)
        return 0.0 if valid_since is None else max(0.0, now - max(window.seen_at, valid_since))

    def due(self, now: float) -> list[DeathCandidate]:
        """The peers to declare dead now, sorted by id; each is reported once per r."""
        valid_since = self.lease.valid_since(now)
        if valid_since is None:
            return []
        retry = self.lease.timing.renewal_timeout
        found = []
        for peer in sorted(self._windows):
            window = self._windows[peer]
            if now < self._due_at(window, valid_since):
                continue
            if window.reported_at is not None and now < window.reported_at + retry:
                continue
            window.reported_at = now
            found.append(DeathCandidate(peer, window.revision))
        return found

    def next_deadline(self, now: float) -> float | None:
        """When ``due`` may next report someone; None while our lease is not valid or no
        peer is watched (an acknowledged renewal or a new observation changes the answer)."""
        valid_since = self.lease.valid_since(now)
        if valid_since is None or not self._windows:
            return None
        retry = self.lease.timing.renewal_timeout
        return min(
            max(
                self._due_at(window, valid_since),
                -math.inf if window.reported_at is None else window.reported_at + retry,
            )
            for window in self._windows.values()
        )
