"""Phi-accrual failure detection (Hayashi et al.), one detector per peer.

Peers send a heartbeat every 100 ms; the shell calls ``heartbeat(now)`` with each arrival
time. A detector keeps a bounded window of inter-arrival intervals and models them as a
normal distribution. Its output is not a verdict but a suspicion level: ``phi`` is
``-log10`` of the probability that the next heartbeat arrives later than the time already
waited, so phi 1 means a 10 % chance that the peer is merely late, phi 8 one in 10⁸.
``suspected`` compares phi with ``threshold``. Phi drives routing, circuit breakers and
``topology()``; it never declares a node dead — the lease alone does (``core.lease``).

What a caller must know:

- ``min_std`` floors the standard deviation: an idle machine delivers heartbeats with
  sub-millisecond jitter, and a std that small would make a few milliseconds of delay look
  fatal. With 100 ms heartbeats and the 10 ms floor, phi crosses 8 at 152.26 ms of silence.
- The tail is Akka's logistic approximation of the normal CDF,
  ``P(later) ≈ 1 / (1 + exp(y · (1.5976 + 0.070566 · y²)))`` for ``y = (t - mean) / std``.
  Unlike ``erfc`` it has no underflow to hand-patch with an asymptotic series (the exact
  tail underflows near y ≈ 38), so ``phi = softplus(z) / ln 10`` is one formula, strictly
  increasing in the elapsed time, finite for every input; thresholds are tuned against it
  in Akka, which uses the same default of 8. Phi is capped at ``MAX_PHI``.
- ``lag`` is the observer's own event-loop lag: time the observer itself was not running
  does not count against the peer, so it is subtracted from the silence (floored at 0).
- ``awareness`` is the observer's Lifeguard-style local health score (``LocalHealth``): a
  node that sees itself lagging trusts its own timing less and multiplies the threshold by
  ``1 + awareness``. At the maximum score of 8 (threshold 72) 100 ms heartbeats are
  suspected after about 227 ms instead of 152 ms.
- The first heartbeat seeds the window with two intervals ``first_interval ± first_interval/4``
  (mean ``first_interval``, std a quarter of it), as Akka does, so a peer heard once is
  judged by the expected rhythm until real intervals replace the seeds. Before any
  heartbeat phi is 0: no evidence, no suspicion.
- An interval that ends a silence already suspected at the moment the heartbeat arrives is
  not recorded (Akka does the same): a partition or a stall must not teach the detector that
  long gaps are normal.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NoReturn

from agentcluster.errors import ConfigurationError

__all__ = [
    "MAX_PHI",
    "LocalHealth",
    "PeerDetectors",
    "PhiAccrualDetector",
    "PhiSettings",
    "PhiView",
    "phi_of",
]

MAX_PHI = 1000.0
"""Phi never exceeds this; far above any threshold a detector accepts."""

_MAX_Y = 100.0
_LN10 = math.log(10.0)


@dataclass(frozen=True, slots=True)
class PhiSettings:
    """The configuration of a detector; validated on creation."""

    threshold: float = 8.0
    min_std: float = 0.010
    window: int = 200
    first_interval: float = 0.1
    acceptable_pause: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int):
            _invalid("window", self.window, "must be an int")
        if self.window < 2:
            _invalid("window", self.window, "must be >= 2")
        for name in ("threshold", "min_std", "first_interval", "acceptable_pause"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                _invalid(name, value, "must be a number")
            if not math.isfinite(value):
                _invalid(name, value, "must be finite")
        for name in ("threshold", "min_std", "first_interval"):
            if getattr(self, name) <= 0:
                _invalid(name, getattr(self, name), "must be > 0")
        if self.acceptable_pause < 0:
            _invalid("acceptable_pause", self.acceptable_pause, "must be >= 0")
        if self.threshold >= MAX_PHI:
            _invalid("threshold", self.threshold, f"must be < {MAX_PHI}")


def _invalid(field: str, value: object, problem: str) -> NoReturn:
    raise ConfigurationError(f"PhiSettings.{field} {problem}, got {value!r}")


def phi_of(elapsed: float, mean: float, std: float) -> float:
    """Phi for ``elapsed`` seconds of silence against intervals of ``mean`` and ``std`` (> 0)."""
    y = max(-_MAX_Y, min(_MAX_Y, (elapsed - mean) / std))
    z = y * (1.5976 + 0.070566 * y * y)
    softplus = z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))
    return min(MAX_PHI, softplus / _LN10)


class PhiAccrualDetector:
    """Suspicion of one peer from the arrival times of its heartbeats."""

    __slots__ = ("_intervals", "_last", "_mean", "_std", "settings")

    def __init__(
        self,
        threshold: float = 8.0,
        min_std: float = 0.010,
        window: int = 200,
        first_interval: float = 0.1,
        acceptable_pause: float = 0.0,
    ) -> None:
        self.settings = PhiSettings(threshold, min_std, window, first_interval, acceptable_pause)
        self._intervals: deque[float] = deque(maxlen=window)
        self._last: float | None = None
        self._mean = first_interval
        self._std = max(min_std, first_interval / 4)

    @classmethod
    def from_settings(cls, settings: PhiSettings) -> PhiAccrualDetector:
        return cls(
            settings.threshold,
            settings.min_std,
            settings.window,
            settings.first_interval,
            settings.acceptable_pause,
        )

    @property
    def last_heartbeat(self) -> float | None:
        return self._last

    @property
    def mean(self) -> float:
        """Mean inter-arrival interval in the window (``first_interval`` before any)."""
        return self._mean

    @property
    def std(self) -> float:
        """Standard deviation of the intervals, floored at ``min_std``."""
        return self._std

    @property
    def samples(self) -> int:
        """Intervals in the window (the two seeds included); at most ``window``."""
        return len(self._intervals)

    def heartbeat(self, now: float) -> None:
        """Record a heartbeat that arrived at ``now``; an arrival before the last is ignored."""
        last = self._last
        if last is None:
            first = self.settings.first_interval
            self._intervals.extend((first - first / 4, first + first / 4))
            self._update_stats()
        elif now < last:
            return
        elif not self.suspected(now):
            self._intervals.append(now - last)
            self._update_stats()
        self._last = now

    def _update_stats(self) -> None:
        intervals = self._intervals
        n = len(intervals)
        mean = sum(intervals) / n
        variance = sum((x - mean) ** 2 for x in intervals) / n
        self._mean = mean
        self._std = max(self.settings.min_std, math.sqrt(variance))

    def phi(self, now: float, lag: float = 0.0) -> float:
        """Suspicion at ``now``, discounting ``lag`` seconds the observer itself stalled."""
        if self._last is None:
            return 0.0
        elapsed = max(0.0, now - self._last - max(0.0, lag))
        return phi_of(elapsed, self._mean + self.settings.acceptable_pause, self._std)

    def suspected(self, now: float, lag: float = 0.0, awareness: int = 0) -> bool:
        """Whether phi reaches ``threshold * (1 + awareness)``."""
        if awareness < 0:
            raise ValueError(f"awareness must be >= 0, got {awareness!r}")
        return self.phi(now, lag) >= self.settings.threshold * (1 + awareness)

    def age(self, now: float) -> float | None:
        """Seconds since the last heartbeat, or None before the first."""
        return None if self._last is None else now - self._last


@dataclass(frozen=True, slots=True)
class PhiView:
    """One peer as ``topology()`` shows it."""

    peer: str
    phi: float
    suspected: bool
    last_heartbeat_age: float | None


class PeerDetectors:
    """A detector per peer id, created by the peer's first heartbeat.

    A peer never heard from (or forgotten) has phi 0 and is not suspected: whether such a
    member is usable is the membership's question, not the detector's.
    """

    __slots__ = ("_detectors", "settings")

    def __init__(self, settings: PhiSettings | None = None) -> None:
        self.settings = PhiSettings() if settings is None else settings
        self._detectors: dict[str, PhiAccrualDetector] = {}

    def __contains__(self, peer: object) -> bool:
        return peer in self._detectors

    def __len__(self) -> int:
        return len(self._detectors)

    def peers(self) -> list[str]:
        return sorted(self._detectors)

    def heartbeat(self, peer: str, now: float) -> None:
        detector = self._detectors.get(peer)
        if detector is None:
            detector = self._detectors[peer] = PhiAccrualDetector.from_settings(self.settings)
        detector.heartbeat(now)

    def forget(self, peer: str) -> None:
        """Drop the peer's history (it left, or restarted under a new incarnation)."""
        self._detectors.pop(peer, None)

    def phi(self, peer: str, now: float, lag: float = 0.0) -> float:
        detector = self._detectors.get(peer)
        return 0.0 if detector is None else detector.phi(now, lag)

    def suspected(self, peer: str, now: float, lag: float = 0.0, awareness: int = 0) -> bool:
        detector = self._detectors.get(peer)
        return detector is not None and detector.suspected(now, lag, awareness)

    def suspects(self, now: float, lag: float = 0.0, awareness: int = 0) -> frozenset[str]:
        return frozenset(
            peer
            for peer, detector in self._detectors.items()
            if detector.suspected(now, lag, awareness)
        )

    def view(self, now: float, lag: float = 0.0, awareness: int = 0) -> tuple[PhiView, ...]:
        """Every known peer, sorted by id."""
        return tuple(
            PhiView(
                peer=peer,
                phi=(detector := self._detectors[peer]).phi(now, lag),
                suspected=detector.suspected(now, lag, awareness),
                last_heartbeat_age=detector.age(now),
            )
            for peer in sorted(self._detectors)
        )


class LocalHealth:
    """Lifeguard's awareness score: how much a node distrusts its own timing.

    The node shell raises the score when it catches itself lagging (``note_lag`` with the
    lag it measured and the limit it holds itself to, e.g. the heartbeat interval or
    ``F / 2``) and lowers it after each healthy stretch (``note_healthy``, e.g. once per
    lease renewal acknowledged in time). ``stretch()`` multiplies the suspicion threshold.
    """

    __slots__ = ("_score", "max_score")

    def __init__(self, max_score: int = 8) -> None:
        if isinstance(max_score, bool) or not isinstance(max_score, int) or max_score < 0:
            raise ConfigurationError(
                f"LocalHealth.max_score must be an int >= 0, got {max_score!r}"
            )
        self.max_score = max_score
        self._score = 0

    @property
    def score(self) -> int:
        return self._score

    def note_lag(self, lag: float, limit: float) -> int:
        """Raise the score by one when ``lag`` exceeds ``limit``; returns the score."""
        if lag > limit:
            self._score = min(self.max_score, self._score + 1)
        return self._score

    def note_healthy(self) -> int:
        """Lower the score by one; returns the score."""
        self._score = max(0, self._score - 1)
        return self._score

    def stretch(self) -> int:
        """The factor applied to the suspicion threshold: ``1 + score``."""
        return 1 + self._score
