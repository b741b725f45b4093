"""``core.health``: baselines against a naive oracle, anomalies, trends, quarantine, windows."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcluster.core.health import (
    DEFAULT_INTERVALS,
    DEFAULT_RULES,
    Alert,
    Baseline,
    CheckLevel,
    EscalationReason,
    HealthBook,
    HealthPolicy,
    MetricRule,
    Quarantine,
    QuarantineState,
    Severity,
    Transition,
    judge,
    operator_quarantine,
    operator_release,
    predict,
    quarantine_step,
    sample_agents,
    worst,
    z_score,
)
from agentcluster.core.node_view import Health
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import ConfigurationError, CorruptRecord

H, D, U = Health.HEALTHY, Health.DEGRADED, Health.UNHEALTHY
Q, P, R = QuarantineState.QUARANTINED, QuarantineState.PROBATION, QuarantineState.RELEASED

values = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


# --- baselines ------------------------------------------------------------------------------


def naive(xs: Sequence[float], steps: Sequence[float]) -> tuple[float, float]:
    """The weighted mean and variance written out: sample i weighs its own step times what
    every later step left of it (the obvious definition the incremental form must match)."""
    weights = []
    for i, step in enumerate(steps):
        weight = step
        for later in steps[i + 1 :]:
            weight *= 1.0 - later
        weights.append(weight)
    mean = sum(w * x for w, x in zip(weights, xs, strict=True))
    variance = sum(w * (x - mean) ** 2 for w, x in zip(weights, xs, strict=True))
    return mean, variance


@given(
    xs=st.lists(values, min_size=1, max_size=40),
    alpha=st.floats(min_value=0.01, max_value=1.0),
    weights=st.lists(st.sampled_from([1.0, 0.25, 0.0]), min_size=40, max_size=40),
)
@settings(max_examples=200)
def test_the_incremental_baseline_matches_the_weighted_oracle(
    xs: list[float], alpha: float, weights: list[float]
) -> None:
    baseline = Baseline()
    steps = []
    for n, (x, weight) in enumerate(zip(xs, weights, strict=False), start=1):
        baseline = baseline.updated(x, alpha, weight)
        steps.append(max(alpha, 1.0 / n) * weight)
    assert baseline.samples == len(xs)
    # The baseline starts at mean 0: to the oracle, a zero sample that weighs everything.
    mean, variance = naive([0.0, *xs], [1.0, *steps])
    scale = 1.0 + max(abs(x) for x in xs)
    assert math.isclose(baseline.mean, mean, rel_tol=1e-9, abs_tol=1e-9 * scale)
    assert math.isclose(baseline.variance, variance, rel_tol=1e-7, abs_tol=1e-7 * scale**2)


@given(xs=st.lists(values, min_size=1, max_size=10))
def test_the_warm_up_is_a_plain_running_mean_and_population_variance(xs: list[float]) -> None:
    baseline = Baseline()
    for x in xs:
        baseline = baseline.updated(x, alpha=0.1)  # 1/n >= 0.1 for the first ten
    mean = sum(xs) / len(xs)
    variance = sum((x - mean) ** 2 for x in xs) / len(xs)
    scale = 1.0 + max(abs(x) for x in xs)
    assert math.isclose(baseline.mean, mean, rel_tol=1e-9, abs_tol=1e-9 * scale)
    assert math.isclose(baseline.variance, variance, rel_tol=1e-7, abs_tol=1e-7 * scale**2)


def test_a_first_sample_is_the_mean_with_no_spread() -> None:
    first = Baseline().updated(42.0, alpha=0.1)
    assert (first.mean, first.variance, first.samples) == (42.0, 0.0, 1)


# --- anomalies ------------------------------------------------------------------------------


def test_the_seed_thresholds_are_the_defaults() -> None:
    cpu, memory = DEFAULT_RULES["cpu_percent"], DEFAULT_RULES["memory_mb"]
    assert (cpu.warning_z, cpu.critical_z, cpu.alpha) == (2.5, 3.5, 2 / 21)
    assert (memory.warning_z, memory.critical_z, memory.alpha) == (2.0, 3.5, 2 / 16)
    other = HealthPolicy().rule("anything_else")
    assert (other.warning_z, other.critical_z) == (2.5, 3.5)
    assert DEFAULT_INTERVALS[CheckLevel.BASIC] == 30.0
    assert DEFAULT_INTERVALS[CheckLevel.COMPREHENSIVE] == 300.0
    assert DEFAULT_INTERVALS[CheckLevel.PREDICTIVE] == 600.0
    assert HealthPolicy().min_history == 10


@pytest.mark.parametrize(
    ("rule", "z", "expected"),
    [
        (DEFAULT_RULES["cpu_percent"], 2.49, None),
        (DEFAULT_RULES["cpu_percent"], 2.5, Severity.WARNING),
        (DEFAULT_RULES["cpu_percent"], 3.49, Severity.WARNING),
        (DEFAULT_RULES["cpu_percent"], 3.5, Severity.CRITICAL),
        (DEFAULT_RULES["cpu_percent"], -9.0, None),
        (DEFAULT_RULES["memory_mb"], 1.99, None),
        (DEFAULT_RULES["memory_mb"], 2.0, Severity.WARNING),
        (MetricRule(direction="low"), -3.0, Severity.WARNING),
        (MetricRule(direction="low"), 9.0, None),
        (MetricRule(direction="both"), -4.0, Severity.CRITICAL),
        (MetricRule(direction="both"), 4.0, Severity.CRITICAL),
    ],
)
def test_severity_by_z_score(rule: MetricRule, z: float, expected: Severity | None) -> None:
    assert judge(z, rule) is expected


def test_the_standard_deviation_floor_keeps_a_flat_metric_quiet() -> None:
    rule = MetricRule(min_std=1.0, min_std_ratio=0.0)
    flat = Baseline()
    for _ in range(50):
        flat = flat.updated(10.0, rule.alpha)
    assert flat.std == 0.0
    assert z_score(flat, 10.3, rule) == pytest.approx(0.3)
    assert judge(z_score(flat, 10.3, rule), rule) is None
    relative = MetricRule(min_std=0.001, min_std_ratio=0.05)
    big = Baseline()
    for _ in range(50):
        big = big.updated(1000.0, relative.alpha)
    assert z_score(big, 1100.0, relative) == pytest.approx(2.0)  # floored at 50


def steady(book: HealthBook, node: str, count: int, *, start: float = 0.0) -> float:
    """Feed ``count`` calm vitals (cpu 10 +/- 1); returns the next time."""
    now = start
    for i in range(count):
        cpu = 10.0 + (1.0 if i % 2 else -1.0)
        result = book.comprehensive(node, {"cpu_percent": cpu}, now=now, at=1e9 + now)
        assert result.alerts == ()
        now += 1.0
    return now


def test_no_alert_before_the_minimum_samples_then_a_critical_one() -> None:
    book = HealthBook(HealthPolicy(min_samples=10))
    now = steady(book, "n1", 3)
    early = book.comprehensive("n1", {"cpu_percent": 95.0}, now=now, at=1e9)
    assert early.alerts == ()
    assert early.verdict is H
    book = HealthBook(HealthPolicy(min_samples=10))
    now = steady(book, "n1", 10)
    late = book.comprehensive("n1", {"cpu_percent": 95.0}, now=now, at=1e9 + now)
    [alert] = late.alerts
    assert late.verdict is U
    assert alert.severity is Severity.CRITICAL
    assert (alert.node, alert.metric, alert.value, alert.level) == (
        "n1",
        "cpu_percent",
        95.0,
        CheckLevel.COMPREHENSIVE,
    )
    assert alert.baseline == pytest.approx(10.0, abs=1.0)
    assert alert.z is not None
    assert alert.z > 3.5
    assert alert.at == 1e9 + now
    assert "cpu_percent" in alert.message


def test_a_warning_degrades_and_a_falling_cpu_is_no_anomaly() -> None:
    book = HealthBook(HealthPolicy(min_samples=10))
    now = steady(book, "n1", 10)
    std = book.baselines("n1")["cpu_percent"].std
    mean = book.baselines("n1")["cpu_percent"].mean
    warn = book.comprehensive("n1", {"cpu_percent": mean + 3.0 * max(std, 2.0)}, now=now, at=0)
    assert [a.severity for a in warn.alerts] == [Severity.WARNING]
    assert warn.verdict is D
    low = book.comprehensive("n1", {"cpu_percent": 0.0}, now=now + 1, at=0)
    assert low.alerts == ()


def test_an_anomaly_moves_the_baseline_slowly() -> None:
    policy = HealthPolicy(min_samples=10, anomaly_weight=0.25)
    book = HealthBook(policy)
    now = steady(book, "n1", 10)
    before = book.baselines("n1")["cpu_percent"].mean
    book.comprehensive("n1", {"cpu_percent": 95.0}, now=now, at=0)
    after = book.baselines("n1")["cpu_percent"].mean
    alpha = DEFAULT_RULES["cpu_percent"].alpha
    assert after - before == pytest.approx(alpha * 0.25 * (95.0 - before))


def test_no_vitals_in_time_is_a_warning() -> None:
    book = HealthBook()
    result = book.comprehensive("n2", None, now=0, at=5)
    [alert] = result.alerts
    assert (alert.metric, alert.severity, result.verdict) == ("vitals", Severity.WARNING, D)


@pytest.mark.parametrize(
    ("answered", "asked", "verdict", "severity"),
    [(3, 3, H, None), (2, 3, D, Severity.WARNING), (1, 3, U, Severity.CRITICAL), (0, 0, H, None)],
)
def test_deep_checks_judge_the_share_that_answered(
    answered: int, asked: int, verdict: Health, severity: Severity | None
) -> None:
    result = HealthBook().deep("n1", answered=answered, asked=asked, now=0, at=0)
    assert result.verdict is verdict
    assert [a.severity for a in result.alerts] == ([] if severity is None else [severity])


def test_a_suspected_node_is_degraded_at_the_basic_level() -> None:
    book = HealthBook()
    assert book.basic("n1", suspected=False, now=0, at=0).verdict is H
    suspected = book.basic("n1", suspected=True, now=0, at=0)
    assert suspected.verdict is D
    assert suspected.alerts[0].metric == "heartbeat"


# --- trends ---------------------------------------------------------------------------------


def test_a_linear_memory_trend_predicts_the_time_to_exhaustion() -> None:
    policy = HealthPolicy()
    points = [(100.0 + 10 * i, 500.0 + 20.0 * i) for i in range(20)]  # 2 MiB/s
    prediction = predict("memory_mb", points, 2000.0, policy)
    assert prediction is not None
    assert prediction.slope == pytest.approx(2.0)
    assert prediction.r2 == pytest.approx(1.0)
    assert prediction.samples == 20
    assert prediction.confident
    assert prediction.seconds_left == pytest.approx((2000.0 - 880.0) / 2.0)


def test_no_prediction_with_too_little_history() -> None:
    points = [(float(i), 100.0 + i) for i in range(9)]
    assert predict("memory_mb", points, 1000.0, HealthPolicy(min_history=10)) is None


def test_noise_gives_a_prediction_without_confidence() -> None:
    rng = random.Random("noise")
    points = [(float(i), 500.0 + rng.uniform(-50, 50)) for i in range(30)]
    prediction = predict("memory_mb", points, 1000.0, HealthPolicy())
    assert prediction is not None
    assert prediction.r2 < 0.6
    assert not prediction.confident


def test_flat_and_exhausted_trends() -> None:
    flat = predict("m", [(float(i), 5.0) for i in range(10)], 10.0, HealthPolicy())
    assert flat is not None
    assert (flat.slope, flat.seconds_left, flat.confident) == (0.0, None, False)
    full = predict("m", [(float(i), 10.0 + i) for i in range(10)], 10.0, HealthPolicy())
    assert full is not None
    assert full.seconds_left == 0.0


def test_the_book_alerts_on_a_confident_near_exhaustion() -> None:
    policy = HealthPolicy(exhaustion_warning=3600, exhaustion_critical=600)
    book = HealthBook(policy)
    for i in range(12):
        book.comprehensive("n1", {"memory_mb": 1000.0 + 10.0 * i}, now=float(i), at=0)
    assert book.predictive("n1", {}, now=12, at=0) is None  # no declared limit
    far = book.predictive("n1", {"memory_mb": 1_000_000.0}, now=12, at=0)
    assert far is not None
    assert (far.verdict, far.alerts) == (H, ())
    warning = book.predictive("n1", {"memory_mb": 1110.0 + 10 * 1000}, now=12, at=0)
    assert warning is not None
    assert [a.severity for a in warning.alerts] == [Severity.WARNING]
    critical = book.predictive("n1", {"memory_mb": 1110.0 + 10 * 300}, now=12, at=0)
    assert critical is not None
    assert critical.verdict is U
    assert critical.alerts[0].level is CheckLevel.PREDICTIVE
    assert book.predictions("n1")["memory_mb"].seconds_left == pytest.approx(300.0)


# --- quarantine -----------------------------------------------------------------------------

POLICY = HealthPolicy(quarantine_after=2, release_after=3)
EVIDENCE = (
    Alert("n3", CheckLevel.COMPREHENSIVE, "cpu_percent", Severity.CRITICAL, "hot", 7, 95, 10, 9.0),
)


def step(record: Quarantine | None, verdict: Health, run: int = 1, at: float = 100.0) -> object:
    return quarantine_step(
        record, "n3", verdict, unhealthy_windows=run, evidence=EVIDENCE, at=at, policy=POLICY
    )


def test_quarantine_needs_consecutive_unhealthy_windows_and_keeps_its_evidence() -> None:
    first = quarantine_step(
        None, "n3", U, unhealthy_windows=1, evidence=EVIDENCE, at=100, policy=POLICY
    )
    assert (first.record, first.changed) == (None, False)
    degraded = quarantine_step(
        None, "n3", D, unhealthy_windows=5, evidence=EVIDENCE, at=100, policy=POLICY
    )
    assert degraded.record is None
    second = quarantine_step(
        None, "n3", U, unhealthy_windows=2, evidence=EVIDENCE, at=100, policy=POLICY
    )
    assert second.changed
    assert second.transition is Transition.QUARANTINED
    record = second.record
    assert record is not None
    assert (record.state, record.since, record.evidence, record.count) == (Q, 100, EVIDENCE, 1)
    assert "hot" in record.reason
    assert record.active


def test_probation_release_relapse_and_a_second_quarantine() -> None:
    def go(record: Quarantine | None, verdict: Health, run: int = 1) -> Quarantine | None:
        return quarantine_step(
            record, "n3", verdict, unhealthy_windows=run, evidence=EVIDENCE, at=1, policy=POLICY
        ).record

    quarantined = go(None, U, run=2)
    assert quarantined is not None
    assert go(quarantined, U) is quarantined
    assert go(quarantined, D) is quarantined
    probation = go(quarantined, H)
    assert probation is not None
    assert (probation.state, probation.healthy_windows) == (P, 1)
    relapse = quarantine_step(
        probation, "n3", U, unhealthy_windows=1, evidence=EVIDENCE, at=2, policy=POLICY
    )
    assert relapse.transition is Transition.RELAPSED
    assert relapse.record is not None
    assert (relapse.record.state, relapse.record.relapses) == (Q, 1)
    two = go(go(quarantined, H), H)
    assert two is not None
    assert (two.state, two.healthy_windows) == (P, 2)
    reset = go(two, D)
    assert reset is not None
    assert (reset.state, reset.healthy_windows) == (P, 0)
    released = go(two, H)
    assert released is not None
    assert (released.state, released.active) == (R, False)
    again = quarantine_step(
        released, "n3", U, unhealthy_windows=2, evidence=EVIDENCE, at=9, policy=POLICY
    )
    assert again.record is not None
    assert (again.record.state, again.record.count, again.record.since) == (Q, 2, 9)


@given(st.lists(st.sampled_from([H, D, U]), max_size=60))
def test_quarantine_is_never_permanent(verdicts: list[Health]) -> None:
    record: Quarantine | None = None
    run = 0
    for verdict in [*verdicts, *[H] * POLICY.release_after]:
        run = run + 1 if verdict is U else 0
        result = quarantine_step(
            record, "n3", verdict, unhealthy_windows=run, evidence=(), at=0, policy=POLICY
        )
        record = result.record
        if result.transition is Transition.QUARANTINED:
            run = 0
    assert record is None or not record.active


def test_an_operator_quarantine_holds_until_the_operator_releases() -> None:
    record = operator_quarantine(None, "n2", "disk swap", at=50, drain=True)
    assert (record.state, record.operator, record.hold, record.drain) == (Q, True, True, True)
    assert record.evidence[0].metric == "operator"
    for verdict in (H, H, H, H, U, H):
        held = quarantine_step(
            record, "n2", verdict, unhealthy_windows=0, evidence=(), at=60, policy=POLICY
        )
        assert (held.record, held.changed) == (record, False)
    released = operator_release(record, "done", at=70)
    assert released is not None
    assert (released.state, released.hold, released.changed_at) == (R, False, 70)
    assert operator_release(released, "again", at=80) is None
    assert operator_release(None, "nothing", at=80) is None
    soft = operator_quarantine(None, "n2", "watch it", at=50, hold=False)
    on_probation = quarantine_step(
        soft, "n2", H, unhealthy_windows=0, evidence=(), at=60, policy=POLICY
    )
    assert on_probation.transition is Transition.PROBATION


def test_only_a_quarantine_with_drain_drains_and_probation_stops_it() -> None:
    draining = operator_quarantine(None, "n2", "disk swap", at=50, hold=False, drain=True)
    assert draining.draining
    assert not operator_quarantine(None, "n2", "watch it", at=50, drain=False).draining
    probation = quarantine_step(
        draining, "n2", H, unhealthy_windows=0, evidence=(), at=60, policy=POLICY
    ).record
    assert probation is not None
    assert probation.state is QuarantineState.PROBATION
    assert probation.drain
    assert not probation.draining
    released = operator_release(draining, "done", at=70)
    assert released is not None
    assert not released.draining


def test_records_round_trip_and_refuse_corruption() -> None:
    record = operator_quarantine(None, "n.1/x", "because", at=1.5)
    written = replace(record, evidence=(*record.evidence, *EVIDENCE), stamp=WriteStamp("n1", 2, 3))
    stamped = Quarantine.from_bytes(written.to_bytes())
    assert stamped == written
    assert stamped.node == "n.1/x"
    assert stamped.evidence[1] == EVIDENCE[0]
    assert stamped.evidence[0].level is None
    assert stamped.stamp == WriteStamp("n1", 2, 3)
    with pytest.raises(CorruptRecord):
        Quarantine.from_bytes(b'{"node": "n1", "state": "lost", "since": 1, "changed_at": 1}')
    with pytest.raises(CorruptRecord):
        Quarantine.from_bytes(b"[]")


# --- windows ----------------------------------------------------------------------------------


def hot_window(book: HealthBook, now: float, record: Quarantine | None) -> object:
    book.comprehensive("n3", {"cpu_percent": 95.0}, now=now, at=1000 + now)
    return book.window("n3", record, now=now, at=1000 + now)


def test_windows_quarantine_escalate_release_and_relapse() -> None:
    policy = HealthPolicy(min_samples=5, quarantine_after=2, release_after=2)
    book = HealthBook(policy)
    now = steady(book, "n3", 5)
    calm = book.window("n3", None, now=now, at=0)
    assert (calm.verdict, calm.step.changed, calm.escalations) == (H, False, ())
    book.comprehensive("n3", {"cpu_percent": 95.0}, now=now, at=1000)
    first = book.window("n3", None, now=now, at=1000)
    assert first.verdict is U
    assert first.unhealthy_windows == 1
    assert not first.step.changed
    assert [e.reason for e in first.escalations] == [EscalationReason.CRITICAL_ALERT]
    book.comprehensive("n3", {"cpu_percent": 95.0}, now=now + 1, at=1001)
    second = book.window("n3", None, now=now + 1, at=1001)
    assert second.step.transition is Transition.QUARANTINED
    record = second.step.record
    assert record is not None
    assert len(record.evidence) == 2
    assert all(a.metric == "cpu_percent" for a in record.evidence)
    assert [e.reason for e in second.escalations] == [
        EscalationReason.CRITICAL_ALERT,
        EscalationReason.QUARANTINED,
    ]
    assert [a.metric for a in second.alerts][-1] == "quarantine"
    # calm again: a healthy window starts probation, a relapse goes back
    book.comprehensive("n3", {"cpu_percent": 10.0}, now=now + 2, at=1002)
    probation = book.window("n3", record, now=now + 2, at=1002)
    assert probation.step.transition is Transition.PROBATION
    assert probation.step.record is not None
    book.comprehensive("n3", {"cpu_percent": 95.0}, now=now + 3, at=1003)
    relapse = book.window("n3", probation.step.record, now=now + 3, at=1003)
    assert relapse.step.transition is Transition.RELAPSED
    assert EscalationReason.RELAPSED in [e.reason for e in relapse.escalations]
    record = relapse.step.record
    for i in range(4, 7):
        book.comprehensive("n3", {"cpu_percent": 10.0}, now=now + i, at=1000 + i)
        record = book.window("n3", record, now=now + i, at=1000 + i).step.record
    assert record is not None
    assert record.state is R


def test_a_level_verdict_expires_after_its_ttl() -> None:
    policy = HealthPolicy(intervals={CheckLevel.DEEP: 10.0}, verdict_ttl=2.0)
    book = HealthBook(policy)
    book.deep("n1", answered=0, asked=2, now=0, at=0)
    assert book.window("n1", None, now=20, at=0).verdict is U
    assert book.window("n1", None, now=20.5, at=0).verdict is H
    assert worst([]) is H
    assert worst([H, D, U, H]) is U


def run_scenario(seed: str) -> list[object]:
    rng = random.Random(seed)
    book = HealthBook(HealthPolicy(min_samples=5))
    record: Quarantine | None = None
    seen: list[object] = []
    for t in range(60):
        cpu = rng.gauss(10, 1) if t < 30 or t > 40 else rng.gauss(90, 1)
        book.comprehensive("n1", {"cpu_percent": cpu, "memory_mb": 500 + t}, now=t, at=t)
        decision = book.window("n1", record, now=t, at=t)
        record = decision.step.record
        seen.append(
            (
                decision.verdict,
                [a.to_json() for a in decision.alerts],
                None if record is None else record.to_json(),
            )
        )
    seen.append(sample_agents([f"a{i}" for i in range(20)], 4, rng))
    return seen


def test_the_same_inputs_decide_the_same_way() -> None:
    first, again = run_scenario("s"), run_scenario("s")
    assert first == again
    assert any(entry[2] is not None for entry in first[:-1])  # the scenario quarantines


# --- schedule, bounds, sampling, configuration ------------------------------------------------


def test_checks_are_due_one_interval_after_the_start_and_each_run() -> None:
    book = HealthBook(
        HealthPolicy(intervals={CheckLevel.BASIC: 1.0, CheckLevel.COMPREHENSIVE: 5.0}), now=100
    )
    assert book.due(100.5) == ()
    assert book.next_deadline() == 101.0
    assert book.due(101.0) == (CheckLevel.BASIC,)
    book.ran(CheckLevel.BASIC, 101.0)
    assert book.due(105.0) == (CheckLevel.BASIC, CheckLevel.COMPREHENSIVE)
    assert CheckLevel.DEEP not in book.due(1e9)


def test_nodes_metrics_and_trends_are_bounded() -> None:
    book = HealthBook(HealthPolicy(max_nodes=2, max_metrics=2, history=12, min_history=10))
    for node in ("a", "b", "c"):
        book.basic(node, suspected=False, now=0, at=0)
    assert book.nodes() == ["b", "c"]
    assert book.forgotten == 1
    book.comprehensive("b", {"m1": 1.0, "m2": 2.0, "m3": 3.0}, now=0, at=0)
    assert list(book.baselines("b")) == ["m1", "m2"]
    trends = HealthBook(HealthPolicy(history=12, min_history=10))
    for t in range(30):
        trends.comprehensive("b", {"memory_mb": float(t)}, now=t, at=0)
    assert [v for _, v in trends.trend("b", "memory_mb")] == [float(t) for t in range(18, 30)]


def test_sampling_is_seeded_and_ignores_listing_order() -> None:
    names = [f"system.n1.r{i}" for i in range(10)]
    one = sample_agents(names, 3, random.Random("x"))
    two = sample_agents(list(reversed(names)), 3, random.Random("x"))
    assert one == two
    assert len(one) == 3
    assert sample_agents(names[:2], 3, random.Random("x")) == sorted(names[:2])


@pytest.mark.parametrize(
    "bad",
    [
        {"min_samples": 0},
        {"anomaly_weight": 2.0},
        {"min_history": 40, "history": 30},
        {"exhaustion_critical": 7200.0},
        {"intervals": {CheckLevel.BASIC: 0.0}},
        {"release_after": 0},
    ],
)
def test_a_bad_policy_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        HealthPolicy(**bad)  # type: ignore[arg-type]


def test_a_bad_rule_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        MetricRule(warning_z=4.0, critical_z=3.0)
    with pytest.raises(ConfigurationError):
        MetricRule(alpha=0.0)
