"""Health decisions: baselines, anomalies, trends, alerts, verdicts and quarantine.

Theory of operation. The health monitor's shell gathers observations of each node at four
*check levels* and hands them to a ``HealthBook``; the book answers with values (alerts,
verdicts, quarantine steps, escalations) and the shell carries them out. Nothing here
waits, sends or reads a clock: ``now`` is the caller's monotonic seconds (for durations and
schedules) and ``at`` its wall-clock seconds (for stamps a reader on another node can
make sense of).

- **basic**: is the node suspected by the observer's failure detector? A suspected node is
  ``DEGRADED`` (the lease, not this module, decides death).
- **comprehensive**: its vitals (cpu, memory, loop lag, mailbox load, error rate). Each
  metric of each node has a *baseline*: an exponentially weighted mean and variance (West /
  Finch's incremental form) with weight ``alpha``; the first samples use ``max(alpha, 1/n)``
  so the baseline starts as a plain running mean instead of trusting sample one. A value is
  judged only once ``min_samples`` were seen: its z-score against the baseline *before*
  the value is added, with the standard deviation floored at ``max(min_std, min_std_ratio *
  |mean|)`` so a flat metric does not turn noise into anomalies. ``warning_z`` /
  ``critical_z`` give the severity; ``direction`` says which side counts (a cpu that drops
  is not an anomaly). A value judged anomalous still moves the baseline, at ``alpha *
  anomaly_weight``, so a lasting change of level is learnt slowly rather than never.
  No answer within the timeout is a warning and a ``DEGRADED`` verdict.
- **deep**: the share of a node's sampled agents that answered a ping: below 1 is a warning
  (``DEGRADED``), below ``deep_unhealthy`` critical (``UNHEALTHY``).
- **predictive**: a least-squares line through the last ``history`` samples of each trend
  metric (memory) gives the time until it reaches its limit, with r² and the sample count
  as its confidence; only with ``min_history`` samples, and only a confident prediction
  (r² >= ``min_r2``) raises an alert.

Severities map onto verdicts the same way at every level: critical -> ``UNHEALTHY``,
warning -> ``DEGRADED``, none -> ``HEALTHY``. Each level's latest verdict holds for
``verdict_ttl`` of its intervals; a *window* is one check round, and a node's window
verdict is the worst level verdict still in force.

Quarantine is a small machine per node, stored by the shell as one record::

    (no record / released) --quarantine_after UNHEALTHY windows--> quarantined
    quarantined --HEALTHY window--> probation
    probation --release_after HEALTHY windows in a row--> released
    probation --UNHEALTHY window--> quarantined          (a relapse)

A ``DEGRADED`` window in probation restarts the count. Nothing is permanent: every record
can be released, and an operator's quarantine (``hold``) waits for the operator's release
instead of counting windows. Each record keeps the evidence that caused it (the alerts,
bounded). Quarantined and probationary nodes are excluded from placement and requests;
With ``drain`` in the record, the quarantined node hands its persistent agents off
(``core.drain`` plans where, ``cluster.drain`` carries it out).

Escalations are values: a critical alert, a quarantine and a relapse each produce one,
and the shell hands them to the user's hooks. Every table here is bounded: nodes tracked
(least recently seen forgotten first), metrics per node, samples per trend, evidence per
record.

Thresholds from the seed (``initialize_anomaly_models``): cpu 2.5 standard deviations over
a window of 20 samples, memory 2.0 over 15 (a window of N samples is ``alpha = 2 / (N +
1)``); those are the *warning* levels. The seed names no critical level: 3.5 is used, and
2.5 / 3.5 for every metric it does not name. Check intervals are the seed's (basic 30 s,
comprehensive 300 s, predictive 600 s; deep, unnamed, 600 s), and predictions need 10
samples as the seed's ``perform_predictive_health_analysis`` does.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal

import orjson

from agentcluster.core.fields import RecordFields, decode_object
from agentcluster.core.node_view import Health
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import ConfigurationError, CorruptRecord

__all__ = [
    "DEFAULT_INTERVALS",
    "DEFAULT_RULES",
    "Alert",
    "Baseline",
    "CheckLevel",
    "Escalation",
    "EscalationReason",
    "HealthBook",
    "HealthPolicy",
    "LevelResult",
    "MetricRule",
    "Prediction",
    "Quarantine",
    "QuarantineState",
    "QuarantineStep",
    "Severity",
    "Transition",
    "WindowDecision",
    "judge",
    "operator_quarantine",
    "operator_release",
    "predict",
    "quarantine_step",
    "sample_agents",
    "worst",
    "z_score",
]


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class CheckLevel(StrEnum):
    BASIC = "basic"
    COMPREHENSIVE = "comprehensive"
    DEEP = "deep"
    PREDICTIVE = "predictive"


class QuarantineState(StrEnum):
    """A record's state; a node with no record (or a released one) is healthy."""

    QUARANTINED = "quarantined"
    PROBATION = "probation"
    RELEASED = "released"


class Transition(StrEnum):
    QUARANTINED = "quarantined"
    PROBATION = "probation"
    RELAPSED = "relapsed"
    RELEASED = "released"


class EscalationReason(StrEnum):
    CRITICAL_ALERT = "critical_alert"
    QUARANTINED = "quarantined"
    RELAPSED = "relapsed"


_HEALTH_RANK = {Health.HEALTHY: 0, Health.DEGRADED: 1, Health.UNHEALTHY: 2}


def worst(verdicts: Iterable[Health]) -> Health:
    """The worst of ``verdicts`` (``HEALTHY`` when there are none)."""
    found = Health.HEALTHY
    for verdict in verdicts:
        if _HEALTH_RANK[verdict] > _HEALTH_RANK[found]:
            found = verdict
    return found


def _verdict_of(severity: Severity | None) -> Health:
    if severity is Severity.CRITICAL:
        return Health.UNHEALTHY
    if severity is Severity.WARNING:
        return Health.DEGRADED
    return Health.HEALTHY


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- configuration ----------------------------------------------------------------------

Direction = Literal["high", "low", "both"]


@dataclass(frozen=True, slots=True)
class MetricRule:
    """How one metric is judged (module docstring)."""

    warning_z: float = 2.5
    critical_z: float = 3.5
    alpha: float = 2 / 21
    min_std: float = 1.0
    min_std_ratio: float = 0.05
    direction: Direction = "high"

    def __post_init__(self) -> None:
        if not (_finite(self.warning_z) and 0 < self.warning_z <= self.critical_z):
            raise ConfigurationError(
                f"need 0 < warning_z <= critical_z, got {self.warning_z!r}, {self.critical_z!r}"
            )
        if not (_finite(self.alpha) and 0 < self.alpha <= 1):
            raise ConfigurationError(f"alpha must be within (0, 1], got {self.alpha!r}")
        if not (_finite(self.min_std) and self.min_std > 0):
            raise ConfigurationError(f"min_std must be > 0, got {self.min_std!r}")
        if not (_finite(self.min_std_ratio) and self.min_std_ratio >= 0):
            raise ConfigurationError(f"min_std_ratio must be >= 0, got {self.min_std_ratio!r}")
        if self.direction not in ("high", "low", "both"):
            raise ConfigurationError(f"direction is high, low or both, not {self.direction!r}")


DEFAULT_RULES: Mapping[str, MetricRule] = MappingProxyType(
    {
        # The seed's cpu model: 2.5 standard deviations, a window of 20 samples.
        "cpu_percent": MetricRule(warning_z=2.5, alpha=2 / 21, min_std=2.0),
        # The seed's memory model: 2.0 standard deviations, a window of 15 samples.
        "memory_mb": MetricRule(warning_z=2.0, alpha=2 / 16, min_std=8.0),
        "loop_lag_ms": MetricRule(min_std=5.0),
        "mailbox_load": MetricRule(min_std=0.02),
        "error_rate": MetricRule(min_std=0.1),
    }
)
"""Per metric of the vitals; any other metric is judged by ``HealthPolicy.default_rule``."""

DEFAULT_INTERVALS: Mapping[CheckLevel, float] = MappingProxyType(
    {
        CheckLevel.BASIC: 30.0,
        CheckLevel.COMPREHENSIVE: 300.0,
        CheckLevel.DEEP: 600.0,
        CheckLevel.PREDICTIVE: 600.0,
    }
)
"""Seconds between checks of each level; a level left out is not run."""


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Everything the book decides with (module docstring). ``trends`` maps a metric whose
    exhaustion is predicted to the capacity resource that is its limit."""

    rules: Mapping[str, MetricRule] = field(default_factory=lambda: DEFAULT_RULES)
    default_rule: MetricRule = field(default_factory=MetricRule)
    min_samples: int = 10
    anomaly_weight: float = 0.25
    intervals: Mapping[CheckLevel, float] = field(default_factory=lambda: DEFAULT_INTERVALS)
    verdict_ttl: float = 2.0
    deep_unhealthy: float = 0.5
    trends: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({"memory_mb": "memory_mb"})
    )
    history: int = 30
    min_history: int = 10
    min_r2: float = 0.6
    exhaustion_warning: float = 3600.0
    exhaustion_critical: float = 600.0
    quarantine_after: int = 2
    release_after: int = 3
    drain: bool = False
    max_evidence: int = 16
    max_nodes: int = 1024
    max_metrics: int = 32

    def __post_init__(self) -> None:
        for name in ("min_samples", "quarantine_after", "release_after", "max_evidence"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("max_nodes", "max_metrics"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.history, int) and 2 <= self.min_history <= self.history):
            raise ConfigurationError(
                f"need 2 <= min_history <= history, got {self.min_history!r}, {self.history!r}"
            )
        if not (_finite(self.anomaly_weight) and 0 <= self.anomaly_weight <= 1):
            raise ConfigurationError(
                f"anomaly_weight must be within [0, 1], got {self.anomaly_weight!r}"
            )
        if not (_finite(self.deep_unhealthy) and 0 <= self.deep_unhealthy <= 1):
            raise ConfigurationError(
                f"deep_unhealthy must be within [0, 1], got {self.deep_unhealthy!r}"
            )
        if not (_finite(self.min_r2) and 0 <= self.min_r2 <= 1):
            raise ConfigurationError(f"min_r2 must be within [0, 1], got {self.min_r2!r}")
        if not (
            _finite(self.exhaustion_critical)
            and _finite(self.exhaustion_warning)
            and 0 < self.exhaustion_critical <= self.exhaustion_warning
        ):
            raise ConfigurationError("need 0 < exhaustion_critical <= exhaustion_warning")
        if not (_finite(self.verdict_ttl) and self.verdict_ttl >= 1):
            raise ConfigurationError(f"verdict_ttl must be >= 1, got {self.verdict_ttl!r}")
        for level, seconds in self.intervals.items():
            if not isinstance(level, CheckLevel) or not (_finite(seconds) and seconds > 0):
                raise ConfigurationError(
                    f"intervals map a CheckLevel to seconds > 0, got {level!r}: {seconds!r}"
                )

    def rule(self, metric: str) -> MetricRule:
        return self.rules.get(metric, self.default_rule)


# --- baselines and anomalies ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Baseline:
    """An exponentially weighted mean and variance of one metric, and how many samples."""

    mean: float = 0.0
    variance: float = 0.0
    samples: int = 0

    @property
    def std(self) -> float:
        return math.sqrt(max(self.variance, 0.0))

    def updated(self, value: float, alpha: float, weight: float = 1.0) -> Baseline:
        """The baseline with ``value`` added at ``max(alpha, 1/n) * weight``."""
        n = self.samples + 1
        step = max(alpha, 1.0 / n) * weight
        diff = value - self.mean
        increment = step * diff
        return Baseline(
            mean=self.mean + increment,
            variance=(1.0 - step) * (self.variance + diff * increment),
            samples=n,
        )

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "samples": self.samples}


def z_score(baseline: Baseline, value: float, rule: MetricRule) -> float:
    """How many (floored) standard deviations ``value`` lies from the baseline's mean."""
    floor = max(rule.min_std, rule.min_std_ratio * abs(baseline.mean))
    return (value - baseline.mean) / max(baseline.std, floor)


def judge(z: float, rule: MetricRule) -> Severity | None:
    """The severity of a z-score under ``rule`` (None: not an anomaly)."""
    if rule.direction == "high":
        deviation = z
    elif rule.direction == "low":
        deviation = -z
    else:
        deviation = abs(z)
    if deviation >= rule.critical_z:
        return Severity.CRITICAL
    if deviation >= rule.warning_z:
        return Severity.WARNING
    return None


# --- trends -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prediction:
    """A least-squares trend of one metric towards its limit.

    ``seconds_left`` is None when the trend does not rise (never reached), 0 when the
    limit is already reached; ``confident`` when r² >= ``min_r2``.
    """

    metric: str
    slope: float
    """Units per second."""
    r2: float
    samples: int
    limit: float
    value: float
    seconds_left: float | None
    confident: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "slope": self.slope,
            "r2": self.r2,
            "samples": self.samples,
            "limit": self.limit,
            "value": self.value,
            "seconds_left": self.seconds_left,
            "confident": self.confident,
        }


def predict(
    metric: str, points: Sequence[tuple[float, float]], limit: float, policy: HealthPolicy
) -> Prediction | None:
    """The trend of ``points`` (``(now, value)``, oldest first) towards ``limit``; None with
    fewer than ``min_history`` points."""
    n = len(points)
    if n < policy.min_history:
        return None
    t_mean = sum(t for t, _ in points) / n
    v_mean = sum(v for _, v in points) / n
    s_tt = sum((t - t_mean) ** 2 for t, _ in points)
    s_tv = sum((t - t_mean) * (v - v_mean) for t, v in points)
    s_vv = sum((v - v_mean) ** 2 for _, v in points)
    slope = s_tv / s_tt if s_tt > 0 else 0.0
    r2 = (s_tv * s_tv) / (s_tt * s_vv) if s_tt > 0 and s_vv > 0 else 0.0
    r2 = min(max(r2, 0.0), 1.0)
    t_last, value = points[-1]
    fitted = v_mean + slope * (t_last - t_mean)
    if value >= limit:
        seconds_left: float | None = 0.0
    elif slope > 0:
        seconds_left = max((limit - fitted) / slope, 0.0)
    else:
        seconds_left = None
    return Prediction(metric, slope, r2, n, limit, value, seconds_left, r2 >= policy.min_r2)


# --- alerts, quarantine records, escalations --------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """One finding about one node. ``baseline`` (the mean) and ``z`` are None for findings
    that are not z-scores; ``seconds_left`` (until the limit) and ``confidence`` (r²) are
    set for predictions only; ``at`` is wall-clock seconds."""

    node: str
    level: CheckLevel | None
    """None for what no check found: an operator's word, a quarantine transition."""
    metric: str
    severity: Severity
    message: str
    at: float
    value: float | None = None
    baseline: float | None = None
    z: float | None = None
    seconds_left: float | None = None
    confidence: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "level": None if self.level is None else self.level.value,
            "metric": self.metric,
            "value": self.value,
            "baseline": self.baseline,
            "z": self.z,
            "seconds_left": self.seconds_left,
            "confidence": self.confidence,
            "severity": self.severity.value,
            "message": self.message,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Alert:
        if not isinstance(raw, dict):
            raise CorruptRecord("alert", f"not an object: {raw!r}")
        get = RecordFields("alert", raw)
        try:
            level = None if raw.get("level") is None else CheckLevel(get.text("level"))
            severity = Severity(get.text("severity"))
        except ValueError as exc:
            raise CorruptRecord("alert", str(exc)) from None
        return cls(
            node=get.text("node"),
            level=level,
            metric=get.text("metric"),
            value=_optional_number(get, raw, "value"),
            baseline=_optional_number(get, raw, "baseline"),
            z=_optional_number(get, raw, "z"),
            seconds_left=_optional_number(get, raw, "seconds_left"),
            confidence=_optional_number(get, raw, "confidence"),
            severity=severity,
            message=get.text("message", ""),
            at=get.number("at"),
        )


def _optional_number(get: RecordFields, raw: dict[str, Any], name: str) -> float | None:
    return None if raw.get(name) is None else get.number(name)


@dataclass(frozen=True, slots=True)
class Quarantine:
    """One node's quarantine record (module docstring). ``since`` and ``changed_at`` are
    wall-clock seconds; ``count`` is how many times the node was quarantined."""

    node: str
    state: QuarantineState
    reason: str
    since: float
    changed_at: float
    evidence: tuple[Alert, ...] = ()
    healthy_windows: int = 0
    relapses: int = 0
    count: int = 1
    operator: bool = False
    hold: bool = False
    drain: bool = False
    stamp: WriteStamp | None = None

    @property
    def active(self) -> bool:
        """Excludes the node from placement and requests."""
        return self.state is not QuarantineState.RELEASED

    @property
    def draining(self) -> bool:
        """The node's persistent agents are to move off it: quarantined (not on probation,
        which trusts the node again) with ``drain``."""
        return self.drain and self.state is QuarantineState.QUARANTINED

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since,
            "changed_at": self.changed_at,
            "evidence": [a.to_json() for a in self.evidence],
            "healthy_windows": self.healthy_windows,
            "relapses": self.relapses,
            "count": self.count,
            "operator": self.operator,
            "hold": self.hold,
            "drain": self.drain,
            "stamp": None if self.stamp is None else self.stamp.to_json(),
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> Quarantine:
        raw = decode_object("quarantine", data)
        get = RecordFields("quarantine", raw)
        try:
            state = QuarantineState(get.text("state"))
        except ValueError as exc:
            raise CorruptRecord("quarantine", str(exc)) from None
        evidence = raw.get("evidence", [])
        if not isinstance(evidence, list):
            raise CorruptRecord("quarantine", f"evidence should be a list, not {evidence!r}")
        stamp = raw.get("stamp")
        flags = {}
        for name in ("operator", "hold", "drain"):
            value = raw.get(name, False)
            if not isinstance(value, bool):
                raise CorruptRecord("quarantine", f"field {name!r} should be a boolean")
            flags[name] = value
        return cls(
            node=get.text("node"),
            state=state,
            reason=get.text("reason", ""),
            since=get.number("since"),
            changed_at=get.number("changed_at"),
            evidence=tuple(Alert.from_json(a) for a in evidence),
            healthy_windows=get.integer("healthy_windows", 0),
            relapses=get.integer("relapses", 0),
            count=get.integer("count", 1),
            stamp=None if stamp is None else WriteStamp.from_json(stamp),
            **flags,
        )


@dataclass(frozen=True, slots=True)
class QuarantineStep:
    """The record after one window; ``changed`` says whether it must be written."""

    record: Quarantine | None
    changed: bool
    transition: Transition | None = None


def _evidence(alerts: Iterable[Alert], limit: int) -> tuple[Alert, ...]:
    return tuple(alerts)[-limit:]


def quarantine_step(
    record: Quarantine | None,
    node: str,
    verdict: Health,
    *,
    unhealthy_windows: int,
    evidence: Sequence[Alert],
    at: float,
    policy: HealthPolicy,
) -> QuarantineStep:
    """One window of the quarantine machine (module docstring).

    ``unhealthy_windows`` counts the node's ``UNHEALTHY`` windows in a row, this one
    included; ``evidence`` is what they found.
    """
    keep = QuarantineStep(record, False)
    if record is None or record.state is QuarantineState.RELEASED:
        if verdict is not Health.UNHEALTHY or unhealthy_windows < policy.quarantine_after:
            return keep
        fresh = Quarantine(
            node=node,
            state=QuarantineState.QUARANTINED,
            reason=_reason(evidence, unhealthy_windows),
            since=at,
            changed_at=at,
            evidence=_evidence(evidence, policy.max_evidence),
            relapses=0 if record is None else record.relapses,
            count=1 if record is None else record.count + 1,
            drain=policy.drain,
        )
        return QuarantineStep(fresh, True, Transition.QUARANTINED)
    if record.hold:
        return keep
    if record.state is QuarantineState.QUARANTINED:
        if verdict is not Health.HEALTHY:
            return keep
        if policy.release_after <= 1:
            return _released(record, at)
        probation = replace(
            record, state=QuarantineState.PROBATION, healthy_windows=1, changed_at=at
        )
        return QuarantineStep(probation, True, Transition.PROBATION)
    # probation
    if verdict is Health.UNHEALTHY:
        relapsed = replace(
            record,
            state=QuarantineState.QUARANTINED,
            reason=_reason(evidence, 1, relapse=True),
            healthy_windows=0,
            relapses=record.relapses + 1,
            evidence=_evidence((*record.evidence, *evidence), policy.max_evidence),
            changed_at=at,
        )
        return QuarantineStep(relapsed, True, Transition.RELAPSED)
    if verdict is Health.DEGRADED:
        if record.healthy_windows == 0:
            return keep
        return QuarantineStep(replace(record, healthy_windows=0, changed_at=at), True)
    healthy = record.healthy_windows + 1
    if healthy >= policy.release_after:
        return _released(record, at)
    return QuarantineStep(replace(record, healthy_windows=healthy, changed_at=at), True)


def _released(record: Quarantine, at: float) -> QuarantineStep:
    released = replace(
        record,
        state=QuarantineState.RELEASED,
        healthy_windows=0,
        hold=False,
        changed_at=at,
    )
    return QuarantineStep(released, True, Transition.RELEASED)


def _reason(evidence: Sequence[Alert], windows: int, *, relapse: bool = False) -> str:
    worst_first = sorted(evidence, key=lambda a: -a.severity.rank)
    cause = worst_first[0].message if worst_first else "unhealthy"
    if relapse:
        return f"relapsed during probation: {cause}"
    return f"unhealthy for {windows} check windows: {cause}"


def operator_quarantine(
    record: Quarantine | None,
    node: str,
    reason: str,
    *,
    at: float,
    hold: bool = True,
    drain: bool = False,
    max_evidence: int = 16,
) -> Quarantine:
    """An operator's quarantine of ``node``; with ``hold`` it lasts until released (and a
    quarantine already in force keeps its history and evidence)."""
    message = f"quarantined by an operator: {reason}"
    evidence = Alert(node, None, "operator", Severity.WARNING, message, at)
    if record is not None and record.active:
        since, earlier, count = record.since, record.evidence, record.count
    else:
        since, earlier, count = at, (), 1 if record is None else record.count + 1
    return Quarantine(
        node=node,
        state=QuarantineState.QUARANTINED,
        reason=reason,
        since=since,
        changed_at=at,
        evidence=_evidence((*earlier, evidence), max_evidence),
        relapses=0 if record is None else record.relapses,
        count=count,
        operator=True,
        hold=hold,
        drain=drain,
    )


def operator_release(record: Quarantine | None, reason: str, *, at: float) -> Quarantine | None:
    """The record after an operator's release (None when there is nothing to release)."""
    if record is None or not record.active:
        return None
    return replace(
        record,
        state=QuarantineState.RELEASED,
        reason=f"released by an operator: {reason}",
        healthy_windows=0,
        hold=False,
        changed_at=at,
    )


@dataclass(frozen=True, slots=True)
class Escalation:
    """Something the user's escalation hooks should hear about."""

    node: str
    reason: EscalationReason
    at: float
    alerts: tuple[Alert, ...] = ()
    quarantine: Quarantine | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "reason": self.reason.value,
            "at": self.at,
            "alerts": [a.to_json() for a in self.alerts],
            "quarantine": None if self.quarantine is None else self.quarantine.to_json(),
        }


# --- the book ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LevelResult:
    """One level's verdict on one node, and the alerts behind it."""

    node: str
    level: CheckLevel
    verdict: Health
    alerts: tuple[Alert, ...] = ()


@dataclass(frozen=True, slots=True)
class WindowDecision:
    """What one check window decided about one node."""

    node: str
    verdict: Health
    levels: Mapping[CheckLevel, Health]
    step: QuarantineStep
    alerts: tuple[Alert, ...]
    """The window's findings, and an alert per quarantine transition."""
    escalations: tuple[Escalation, ...]
    unhealthy_windows: int
    evidence: tuple[Alert, ...]


class _NodeHealth:
    __slots__ = ("baselines", "evidence", "levels", "pending", "predictions", "run", "trends")

    def __init__(self) -> None:
        self.baselines: dict[str, Baseline] = {}
        self.trends: dict[str, deque[tuple[float, float]]] = {}
        self.levels: dict[CheckLevel, tuple[Health, float]] = {}
        self.pending: list[Alert] = []
        self.predictions: dict[str, Prediction] = {}
        self.run = 0
        self.evidence: list[Alert] = []


class HealthBook:
    """The health monitor's memory and decisions for every node it checks (module docstring).

    ``now`` is the caller's monotonic clock, ``at`` its wall clock; checks are first due
    one interval after ``now`` at construction.
    """

    def __init__(self, policy: HealthPolicy | None = None, *, now: float = 0.0) -> None:
        self.policy = policy or HealthPolicy()
        self._nodes: OrderedDict[str, _NodeHealth] = OrderedDict()
        self._next = {level: now + seconds for level, seconds in self.policy.intervals.items()}
        self.forgotten = 0
        """Nodes dropped because ``max_nodes`` were tracked."""

    # --- schedule -----------------------------------------------------------------------

    def due(self, now: float) -> tuple[CheckLevel, ...]:
        """The levels whose check is due at ``now``, in level order."""
        return tuple(level for level in CheckLevel if self._next.get(level, math.inf) <= now)

    def ran(self, level: CheckLevel, now: float) -> None:
        """``level`` was checked at ``now``: the next one is due an interval later."""
        seconds = self.policy.intervals.get(level)
        if seconds is not None:
            self._next[level] = now + seconds

    def next_deadline(self) -> float | None:
        return min(self._next.values(), default=None)

    # --- nodes --------------------------------------------------------------------------

    def nodes(self) -> list[str]:
        return sorted(self._nodes)

    def forget(self, node: str) -> None:
        self._nodes.pop(node, None)

    def _node(self, node: str) -> _NodeHealth:
        held = self._nodes.get(node)
        if held is None:
            held = self._nodes[node] = _NodeHealth()
            while len(self._nodes) > self.policy.max_nodes:
                self._nodes.popitem(last=False)
                self.forgotten += 1
        else:
            self._nodes.move_to_end(node)
        return held

    def _record(self, node: str, level: CheckLevel, alerts: list[Alert], now: float) -> LevelResult:
        held = self._node(node)
        verdict = _verdict_of(max((a.severity for a in alerts), key=_rank, default=None))
        held.levels[level] = (verdict, now)
        held.pending = (held.pending + alerts)[-self.policy.max_evidence :]
        return LevelResult(node, level, verdict, tuple(alerts))

    # --- observations -------------------------------------------------------------------

    def basic(self, node: str, *, suspected: bool, now: float, at: float) -> LevelResult:
        """The failure detector's view of ``node``: suspected is a warning."""
        message = f"{node} is suspected by the failure detector"
        alerts = [Alert(node, CheckLevel.BASIC, "heartbeat", Severity.WARNING, message, at)]
        return self._record(node, CheckLevel.BASIC, alerts if suspected else [], now)

    def comprehensive(
        self, node: str, vitals: Mapping[str, float] | None, *, now: float, at: float
    ) -> LevelResult:
        """Judge each metric of ``vitals`` against its baseline, then learn it; None means
        the node gave no vitals in time."""
        if vitals is None:
            message = f"{node} gave no vitals in time"
            alert = Alert(node, CheckLevel.COMPREHENSIVE, "vitals", Severity.WARNING, message, at)
            return self._record(node, CheckLevel.COMPREHENSIVE, [alert], now)
        held = self._node(node)
        policy = self.policy
        alerts: list[Alert] = []
        for metric in sorted(vitals):
            value = vitals[metric]
            if not _finite(value):
                continue
            baseline = held.baselines.get(metric)
            if baseline is None:
                if len(held.baselines) >= policy.max_metrics:
                    continue
                baseline = Baseline()
            rule = policy.rule(metric)
            severity = None
            if baseline.samples >= policy.min_samples:
                z = z_score(baseline, value, rule)
                severity = judge(z, rule)
                if severity is not None:
                    message = (
                        f"{metric} of {node} is {value:.6g}, {z:+.1f} standard deviations "
                        f"from its baseline {baseline.mean:.4g}"
                    )
                    level = CheckLevel.COMPREHENSIVE
                    alerts.append(
                        Alert(node, level, metric, severity, message, at, value, baseline.mean, z)
                    )
            weight = 1.0 if severity is None else policy.anomaly_weight
            held.baselines[metric] = baseline.updated(float(value), rule.alpha, weight)
            if metric in policy.trends:
                points = held.trends.get(metric)
                if points is None:
                    points = held.trends[metric] = deque(maxlen=policy.history)
                points.append((now, float(value)))
        return self._record(node, CheckLevel.COMPREHENSIVE, alerts, now)

    def deep(self, node: str, *, answered: int, asked: int, now: float, at: float) -> LevelResult:
        """``answered`` of the ``asked`` sampled agents answered a ping."""
        if asked <= 0:
            return self._record(node, CheckLevel.DEEP, [], now)
        share = answered / asked
        severity = None
        if share < self.policy.deep_unhealthy:
            severity = Severity.CRITICAL
        elif share < 1.0:
            severity = Severity.WARNING
        alerts = []
        if severity is not None:
            message = f"{answered} of {asked} sampled agents on {node} answered a ping"
            alerts.append(
                Alert(node, CheckLevel.DEEP, "agents_answered", severity, message, at, share)
            )
        return self._record(node, CheckLevel.DEEP, alerts, now)

    def predictive(
        self, node: str, capacity: Mapping[str, float], *, now: float, at: float
    ) -> LevelResult | None:
        """Predict each trend metric's exhaustion of its capacity; None when no metric has
        both a limit and enough history."""
        held = self._node(node)
        policy = self.policy
        alerts: list[Alert] = []
        predicted = False
        for metric, resource in sorted(policy.trends.items()):
            limit = capacity.get(resource)
            points = held.trends.get(metric)
            if limit is None or not _finite(limit) or limit <= 0 or points is None:
                continue
            prediction = predict(metric, tuple(points), float(limit), policy)
            if prediction is None:
                continue
            predicted = True
            held.predictions[metric] = prediction
            left = prediction.seconds_left
            if not prediction.confident or left is None or left > policy.exhaustion_warning:
                continue
            severity = Severity.CRITICAL if left <= policy.exhaustion_critical else Severity.WARNING
            message = (
                f"{metric} of {node} reaches its limit {limit:g} in about {left:.0f} s "
                f"(r2 {prediction.r2:.2f} over {prediction.samples} samples)"
            )
            level = CheckLevel.PREDICTIVE
            alerts.append(
                Alert(
                    node,
                    level,
                    metric,
                    severity,
                    message,
                    at,
                    prediction.value,
                    seconds_left=left,
                    confidence=prediction.r2,
                )
            )
        if not predicted:
            return None
        return self._record(node, CheckLevel.PREDICTIVE, alerts, now)

    # --- windows ------------------------------------------------------------------------

    def window(
        self, node: str, record: Quarantine | None, *, now: float, at: float
    ) -> WindowDecision:
        """Close one check window of ``node``: its verdict, the quarantine step from
        ``record`` (what the store holds now) and what to escalate."""
        held = self._node(node)
        policy = self.policy
        levels = {
            level: verdict
            for level, (verdict, seen) in sorted(held.levels.items())
            if now - seen <= policy.verdict_ttl * policy.intervals.get(level, math.inf)
        }
        verdict = worst(levels.values())
        found, held.pending = held.pending, []
        serious = [a for a in found if a.severity is not Severity.INFO]
        if verdict is Health.UNHEALTHY:
            held.run += 1
            held.evidence = (held.evidence + serious)[-policy.max_evidence :]
        else:
            held.run = 0
            held.evidence = []
        evidence = tuple(held.evidence) if held.run else tuple(serious)
        step = quarantine_step(
            record,
            node,
            verdict,
            unhealthy_windows=held.run,
            evidence=evidence,
            at=at,
            policy=policy,
        )
        run = held.run
        if step.transition is Transition.QUARANTINED:
            held.run = 0
            held.evidence = []
        escalations: list[Escalation] = []
        critical = tuple(a for a in found if a.severity is Severity.CRITICAL)
        if critical:
            escalations.append(
                Escalation(node, EscalationReason.CRITICAL_ALERT, at, critical, step.record)
            )
        alerts = list(found)
        if step.transition is not None and step.record is not None:
            alerts.append(_transition_alert(step.transition, step.record, at))
            if step.transition is Transition.QUARANTINED:
                escalations.append(
                    Escalation(node, EscalationReason.QUARANTINED, at, evidence, step.record)
                )
            elif step.transition is Transition.RELAPSED:
                escalations.append(
                    Escalation(node, EscalationReason.RELAPSED, at, evidence, step.record)
                )
        return WindowDecision(
            node,
            verdict,
            MappingProxyType(levels),
            step,
            tuple(alerts),
            tuple(escalations),
            run,
            evidence,
        )

    # --- reading ------------------------------------------------------------------------

    def baselines(self, node: str) -> dict[str, Baseline]:
        held = self._nodes.get(node)
        return {} if held is None else dict(sorted(held.baselines.items()))

    def predictions(self, node: str) -> dict[str, Prediction]:
        held = self._nodes.get(node)
        return {} if held is None else dict(sorted(held.predictions.items()))

    def verdicts(self, node: str, now: float) -> dict[CheckLevel, Health]:
        """The latest verdict of each level still in force."""
        held = self._nodes.get(node)
        if held is None:
            return {}
        policy = self.policy
        return {
            level: verdict
            for level, (verdict, seen) in sorted(held.levels.items())
            if now - seen <= policy.verdict_ttl * policy.intervals.get(level, math.inf)
        }

    def trend(self, node: str, metric: str) -> list[tuple[float, float]]:
        held = self._nodes.get(node)
        points = None if held is None else held.trends.get(metric)
        return [] if points is None else list(points)


def _rank(severity: Severity) -> int:
    return severity.rank


def _transition_alert(transition: Transition, record: Quarantine, at: float) -> Alert:
    severity = (
        Severity.WARNING
        if transition in (Transition.QUARANTINED, Transition.RELAPSED)
        else Severity.INFO
    )
    messages = {
        Transition.QUARANTINED: f"{record.node} quarantined: {record.reason}",
        Transition.RELAPSED: f"{record.node} relapsed during probation",
        Transition.PROBATION: f"{record.node} on probation",
        Transition.RELEASED: f"{record.node} released from quarantine",
    }
    return Alert(record.node, None, "quarantine", severity, messages[transition], at)


def sample_agents(candidates: Iterable[str], k: int, rng: random.Random) -> list[str]:
    """At most ``k`` of ``candidates``, drawn by ``rng`` from their sorted order (so the
    same seed draws the same agents whatever order they were listed in)."""
    ordered = sorted(set(candidates))
    if k >= len(ordered):
        return ordered
    return sorted(rng.sample(ordered, k))
