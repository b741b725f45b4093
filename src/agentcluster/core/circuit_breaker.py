"""Circuit breakers: closed, open, half-open — a pure state machine per node or agent.

Theory of operation:

- **Closed** lets every request through and watches outcomes. It opens on
  ``failure_threshold`` consecutive failures (a success resets the run), or when, at the
  moment a failure is recorded, the sliding window holds at least ``min_requests`` outcomes
  and the share of failures among them is ``>= error_rate_threshold``. When both hold, the
  reason given is ``consecutive_failures``.
- **Open** refuses everything for a cool-down, then becomes **half-open** by itself at
  ``opened_at + cool_down`` exactly (``next_deadline()`` says when). The first opening after
  a close waits ``cool_down``; every reopening from half-open multiplies the wait by
  ``backoff``, capped at ``max_cool_down`` — a node that keeps failing its trials is probed
  less and less often. Closing resets the wait to ``cool_down``.
- **Half-open** admits at most ``half_open_trials`` requests at a time (``allow`` counts
  each one as a trial in flight; ``release`` hands back a trial that ended without an
  outcome). ``successes_to_close`` trial successes in a row close the breaker; a single
  trial failure reopens it at once. The default of 2 successes means one lucky request is
  not taken as recovery.
- Outcomes that are not trials are stale — the request was admitted before the breaker
  opened — and are ignored: any outcome recorded while open, or while half-open with no
  trial in flight. While a trial is in flight the breaker cannot tell a stale outcome from
  the trial's own, and counts it as the trial's.
- ``slow_call``, when set, turns a success slower than that many seconds into a failure.

The error-rate window is ``buckets`` buckets of ``window / buckets`` seconds each, aligned
on multiples of that width: an outcome at ``t`` falls in bucket ``floor(t / width)``, and the
window at ``now`` is the current bucket and the ``buckets - 1`` before it, so it spans
between ``window - width`` and ``window`` seconds. Memory is two counters per bucket,
whatever the request rate. Closing empties the window: a closed breaker starts afresh.

Every state change is recorded as a ``BreakerTransition`` that the shell drains
(``drain_transitions()``) and emits as telemetry; nothing is emitted twice. A change that
happens by itself (the end of a cool-down) is dated at the moment it took effect, even when
a later call notices it. Times are monotonic seconds passed in by the caller; a time earlier
than one already seen is taken as the latest one seen.

``BreakerBoard`` keeps one breaker per key (a node id or an agent id) for the request
router, created by the first recorded outcome and bounded in number.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

from agentcluster.errors import ConfigurationError

__all__ = [
    "BreakerBoard",
    "BreakerConfig",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "TransitionReason",
    "admit_trial",
]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class TransitionReason(StrEnum):
    CONSECUTIVE_FAILURES = "consecutive_failures"
    """Closed → open: ``failure_threshold`` failures in a row."""
    ERROR_RATE = "error_rate"
    """Closed → open: the window's failure share reached ``error_rate_threshold``."""
    COOL_DOWN_PASSED = "cool_down_passed"
    """Open → half-open: the cool-down ended."""
    TRIAL_SUCCEEDED = "trial_succeeded"
    """Half-open → closed: ``successes_to_close`` trials succeeded in a row."""
    TRIAL_FAILED = "trial_failed"
    """Half-open → open: a trial failed; the cool-down grows."""
    EVICTED = "evicted"
    """Open or half-open → closed: a full ``BreakerBoard`` dropped the breaker."""


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """Breaker ``key`` went from ``old`` to ``new`` at ``at`` because of ``reason``."""

    key: str
    old: BreakerState
    new: BreakerState
    at: float
    reason: TransitionReason


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How a breaker trips and recovers; validated on creation. Times are in seconds."""

    failure_threshold: int = 5
    """Consecutive failures that open a closed breaker."""
    error_rate_threshold: float = 0.5
    """Failure share in the window, within (0, 1], that opens a closed breaker."""
    window: float = 10.0
    """Length of the sliding error-rate window."""
    min_requests: int = 20
    """Outcomes the window must hold before the error rate can open the breaker."""
    buckets: int = 10
    """Buckets the window is divided into: its resolution and its memory."""
    cool_down: float = 5.0
    """Open → half-open after this long, on the first opening after a close."""
    max_cool_down: float = 60.0
    """The cap of the cool-down as reopenings multiply it by ``backoff``."""
    backoff: float = 2.0
    """Factor applied to the cool-down on each reopening from half-open; 1 keeps it fixed."""
    half_open_trials: int = 1
    """Trial requests that may be in flight at once in half-open."""
    successes_to_close: int = 2
    """Consecutive trial successes that close a half-open breaker."""
    slow_call: float | None = None
    """A success with a latency above this counts as a failure; None ignores latency."""

    def __post_init__(self) -> None:
        for name in (
            "failure_threshold",
            "min_requests",
            "buckets",
            "half_open_trials",
            "successes_to_close",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                _invalid(name, value, "must be an int")
            if value < 1:
                _invalid(name, value, "must be >= 1")
        for name in (
            "error_rate_threshold",
            "window",
            "cool_down",
            "max_cool_down",
            "backoff",
            "slow_call",
        ):
            value = getattr(self, name)
            if value is None and name == "slow_call":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                _invalid(name, value, "must be a number")
            if not math.isfinite(value) or value <= 0:
                _invalid(name, value, "must be a finite number > 0")
        if self.error_rate_threshold > 1:
            _invalid("error_rate_threshold", self.error_rate_threshold, "must be <= 1")
        if self.backoff < 1:
            _invalid("backoff", self.backoff, "must be >= 1")
        if self.max_cool_down < self.cool_down:
            _invalid(
                "max_cool_down", self.max_cool_down, f"must be >= cool_down ({self.cool_down!r})"
            )

    @property
    def bucket_width(self) -> float:
        return self.window / self.buckets


def _invalid(field: str, value: object, problem: str) -> NoReturn:
    raise ConfigurationError(f"BreakerConfig.{field} {problem}, got {value!r}")


class CircuitBreaker:
    """One breaker. Call ``allow`` before a request and exactly one of ``record_success``,
    ``record_failure`` or ``release`` after it. Transitions accumulate until
    ``drain_transitions()`` takes them."""

    __slots__ = (
        "_bucket_failures",
        "_bucket_ids",
        "_bucket_totals",
        "_consecutive",
        "_cool",
        "_in_flight",
        "_now",
        "_opened_at",
        "_openings",
        "_state",
        "_successes",
        "_transitions",
        "config",
        "key",
    )

    def __init__(self, key: str = "", config: BreakerConfig | None = None) -> None:
        self.key = key
        self.config = BreakerConfig() if config is None else config
        n = self.config.buckets
        self._bucket_ids: list[int | None] = [None] * n
        self._bucket_totals = [0] * n
        self._bucket_failures = [0] * n
        self._state = BreakerState.CLOSED
        self._now = -math.inf
        self._consecutive = 0
        self._opened_at = -math.inf
        self._openings = 0
        self._cool = self.config.cool_down
        self._in_flight = 0
        self._successes = 0
        self._transitions: list[BreakerTransition] = []

    def __repr__(self) -> str:
        return f"CircuitBreaker(key={self.key!r}, state={self._state.value})"

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row while closed (0 in the other states)."""
        return self._consecutive

    @property
    def openings(self) -> int:
        """Openings since the breaker last closed: 1 after tripping, +1 per failed trial."""
        return self._openings

    @property
    def cool_down(self) -> float:
        """The cool-down of the current (or, while closed, the next) opening."""
        return self._cool

    @property
    def trials_in_flight(self) -> int:
        return self._in_flight

    def state(self, now: float) -> BreakerState:
        """The state at ``now``; an open breaker whose cool-down ended becomes half-open."""
        self._advance(now)
        return self._state

    def next_deadline(self) -> float | None:
        """When the breaker next changes state by itself: the end of the cool-down while
        open, else None (only outcomes move it)."""
        return self._opened_at + self._cool if self._state is BreakerState.OPEN else None

    def allow(self, now: float) -> bool:
        """Whether a request may go now. In half-open a True counts a trial in flight, which
        the caller must settle with ``record_*`` or ``release``."""
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN or self._in_flight >= self.config.half_open_trials:
            return False
        self._in_flight += 1
        return True

    def record_success(self, now: float, latency: float | None = None) -> BreakerState:
        """A request admitted earlier succeeded after ``latency`` seconds; returns the state."""
        slow = self.config.slow_call
        if latency is not None and slow is not None and latency > slow:
            return self.record_failure(now)
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            self._consecutive = 0
            self._count(ok=True)
        elif self._state is BreakerState.HALF_OPEN and self._in_flight > 0:
            self._in_flight -= 1
            self._successes += 1
            if self._successes >= self.config.successes_to_close:
                self._close(TransitionReason.TRIAL_SUCCEEDED)
        return self._state

    def record_failure(self, now: float) -> BreakerState:
        """A request admitted earlier failed; returns the state."""
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            self._consecutive += 1
            self._count(ok=False)
            total, failures = self._window_counts(self._bucket(self._now))
            if self._consecutive >= self.config.failure_threshold:
                self._open(TransitionReason.CONSECUTIVE_FAILURES, self.config.cool_down)
            elif (
                total >= self.config.min_requests
                and failures / total >= self.config.error_rate_threshold
            ):
                self._open(TransitionReason.ERROR_RATE, self.config.cool_down)
        elif self._state is BreakerState.HALF_OPEN and self._in_flight > 0:
            grown = min(self.config.max_cool_down, self._cool * self.config.backoff)
            self._open(TransitionReason.TRIAL_FAILED, grown)
        return self._state

    def release(self, now: float) -> None:
        """A request admitted earlier ended without an outcome (cancelled); frees its trial."""
        self._advance(now)
        if self._state is BreakerState.HALF_OPEN and self._in_flight > 0:
            self._in_flight -= 1

    def window_counts(self, now: float) -> tuple[int, int]:
        """``(outcomes, failures)`` in the window at ``now`` (empty unless closed)."""
        self._advance(now)
        return self._window_counts(self._bucket(self._now))

    def drain_transitions(self) -> list[BreakerTransition]:
        """The transitions since the last drain, oldest first."""
        drained, self._transitions = self._transitions, []
        return drained

    def _advance(self, now: float) -> None:
        if now > self._now:
            self._now = now
        if self._state is BreakerState.OPEN:
            until = self._opened_at + self._cool
            if self._now >= until:
                self._move(BreakerState.HALF_OPEN, until, TransitionReason.COOL_DOWN_PASSED)
                self._in_flight = 0
                self._successes = 0

    def _bucket(self, now: float) -> int:
        return math.floor(now / self.config.bucket_width)

    def _count(self, *, ok: bool) -> None:
        current = self._bucket(self._now)
        slot = current % self.config.buckets
        if self._bucket_ids[slot] != current:
            self._bucket_ids[slot] = current
            self._bucket_totals[slot] = 0
            self._bucket_failures[slot] = 0
        self._bucket_totals[slot] += 1
        if not ok:
            self._bucket_failures[slot] += 1

    def _window_counts(self, current: int) -> tuple[int, int]:
        oldest = current - self.config.buckets
        total = failures = 0
        for slot, bucket in enumerate(self._bucket_ids):
            if bucket is not None and bucket > oldest:
                total += self._bucket_totals[slot]
                failures += self._bucket_failures[slot]
        return total, failures

    def _open(self, reason: TransitionReason, cool: float) -> None:
        self._move(BreakerState.OPEN, self._now, reason)
        self._opened_at = self._now
        self._cool = cool
        self._openings += 1
        self._consecutive = 0
        self._in_flight = 0
        self._successes = 0

    def _close(self, reason: TransitionReason) -> None:
        self._move(BreakerState.CLOSED, self._now, reason)
        self._reset()

    def _reset(self) -> None:
        n = self.config.buckets
        self._bucket_ids = [None] * n
        self._bucket_totals = [0] * n
        self._bucket_failures = [0] * n
        self._consecutive = 0
        self._openings = 0
        self._cool = self.config.cool_down
        self._in_flight = 0
        self._successes = 0

    def _move(self, new: BreakerState, at: float, reason: TransitionReason) -> None:
        self._transitions.append(BreakerTransition(self.key, self._state, new, at, reason))
        self._state = new


class BreakerBoard:
    """A breaker per key, all with one config, created by the key's first recorded outcome.

    A key without a breaker is closed: ``allow`` says yes without creating one. At most
    ``max_breakers`` are kept. Making room evicts the least recently used closed breaker;
    only when every breaker is open or half-open does it evict the least recently used of
    those, and reports that as a transition to closed (reason ``evicted``) — the board no
    longer remembers the fault. ``allow``, ``record``, ``release`` and ``state`` count as
    uses; ``states``, ``open_keys`` and ``next_deadline`` do not.
    """

    __slots__ = ("_closed", "_transitions", "_tripped", "config", "max_breakers")

    def __init__(self, config: BreakerConfig | None = None, max_breakers: int = 10_000) -> None:
        if isinstance(max_breakers, bool) or not isinstance(max_breakers, int) or max_breakers < 1:
            raise ConfigurationError(
                f"BreakerBoard.max_breakers must be an int >= 1, got {max_breakers!r}"
            )
        self.config = BreakerConfig() if config is None else config
        self.max_breakers = max_breakers
        # Closed and not-closed breakers, each least recently used first. Only an outcome
        # moves a breaker across that line, and outcomes pass through ``_settle``.
        self._closed: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._tripped: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._transitions: list[BreakerTransition] = []

    def __contains__(self, key: object) -> bool:
        return key in self._closed or key in self._tripped

    def __len__(self) -> int:
        return len(self._closed) + len(self._tripped)

    def keys(self) -> list[str]:
        """The keys with a breaker, sorted."""
        return sorted([*self._closed, *self._tripped])

    def allow(self, key: str, now: float) -> bool:
        """Whether a request to ``key`` may go now (see ``CircuitBreaker.allow``)."""
        breaker = self._get(key)
        if breaker is None:
            return True
        allowed = breaker.allow(now)
        self._settle(breaker)
        return allowed

    def record(self, key: str, now: float, ok: bool, latency: float | None = None) -> BreakerState:
        """The outcome of a request to ``key``; returns the key's state."""
        breaker = self._get(key)
        if breaker is None:
            if len(self) >= self.max_breakers:
                self._evict(now)
            breaker = self._closed[key] = CircuitBreaker(key, self.config)
        state = breaker.record_success(now, latency) if ok else breaker.record_failure(now)
        self._settle(breaker)
        return state

    def release(self, key: str, now: float) -> None:
        """A request to ``key`` ended without an outcome (see ``CircuitBreaker.release``)."""
        breaker = self._get(key)
        if breaker is not None:
            breaker.release(now)
            self._settle(breaker)

    def state(self, key: str, now: float) -> BreakerState:
        breaker = self._get(key)
        if breaker is None:
            return BreakerState.CLOSED
        state = breaker.state(now)
        self._settle(breaker)
        return state

    def states(self, now: float) -> dict[str, BreakerState]:
        """Every key that is not closed, sorted by key; absent keys are closed."""
        found = {}
        for key in sorted(self._tripped):
            breaker = self._tripped[key]
            found[key] = breaker.state(now)
            self._transitions.extend(breaker.drain_transitions())
        return found

    def open_keys(self, now: float) -> frozenset[str]:
        """The keys whose breaker refuses everything at ``now`` (open, not half-open)."""
        return frozenset(k for k, s in self.states(now).items() if s is BreakerState.OPEN)

    def next_deadline(self) -> float | None:
        """The earliest end of a cool-down among open breakers, or None."""
        deadlines = [
            d for breaker in self._tripped.values() if (d := breaker.next_deadline()) is not None
        ]
        return min(deadlines, default=None)

    def forget(self, key: str) -> None:
        """Drop ``key``'s breaker (the node left, the agent stopped); no transition is
        reported."""
        self._closed.pop(key, None)
        self._tripped.pop(key, None)

    def drain_transitions(self) -> list[BreakerTransition]:
        """The transitions of every breaker since the last drain, oldest first."""
        drained, self._transitions = self._transitions, []
        return drained

    def _get(self, key: str) -> CircuitBreaker | None:
        breaker = self._closed.get(key)
        if breaker is not None:
            self._closed.move_to_end(key)
            return breaker
        breaker = self._tripped.get(key)
        if breaker is not None:
            self._tripped.move_to_end(key)
        return breaker

    def _settle(self, breaker: CircuitBreaker) -> None:
        """Collect the breaker's transitions and file it under its state, most recent last."""
        self._transitions.extend(breaker.drain_transitions())
        key = breaker.key
        closed = breaker._state is BreakerState.CLOSED
        source, target = (self._tripped, self._closed) if closed else (self._closed, self._tripped)
        if key in source:
            del source[key]
            target[key] = breaker

    def _evict(self, now: float) -> None:
        if self._closed:
            self._closed.popitem(last=False)
            return
        key, breaker = self._tripped.popitem(last=False)
        old = breaker.state(now)
        self._transitions.extend(breaker.drain_transitions())
        self._transitions.append(
            BreakerTransition(key, old, BreakerState.CLOSED, breaker._now, TransitionReason.EVICTED)
        )


def admit_trial(
    node_board: BreakerBoard, agent_board: BreakerBoard, node: str, agent: str, now: float
) -> bool:
    """Whether a request to ``agent`` on ``node`` may go now, taking a half-open trial slot
    on either board that needs one. When the node admits and the agent refuses, the node's
    slot is handed back, so a refused request holds no trial anywhere."""
    if not node_board.allow(node, now):
        return False
    if not agent_board.allow(agent, now):
        node_board.release(node, now)
        return False
    return True
