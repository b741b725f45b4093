import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.phi import (
    MAX_PHI,
    LocalHealth,
    PeerDetectors,
    PhiAccrualDetector,
    PhiSettings,
    PhiView,
    phi_of,
)
from agentcluster.errors import ConfigurationError


def akka_phi(elapsed: float, mean: float, std: float) -> float:
    """Akka's own branched form of the logistic approximation (the oracle)."""
    y = (elapsed - mean) / std
    e = math.exp(-y * (1.5976 + 0.070566 * y * y))
    if elapsed > mean:
        return -math.log10(e / (1.0 + e))
    return -math.log10(1.0 - 1.0 / (1.0 + e))


def crossing(detector: PhiAccrualDetector, awareness: int = 0) -> float:
    """Seconds of silence after the last heartbeat at which the detector starts suspecting."""
    last = detector.last_heartbeat
    assert last is not None
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if detector.suspected(last + mid, awareness=awareness):
            hi = mid
        else:
            lo = mid
    return hi


def steady(jitter: float = 0.0, beats: int = 300, seed: int = 0) -> PhiAccrualDetector:
    """A detector fed ``beats`` heartbeats 100 ms apart, each arrival off by ±``jitter``."""
    rng = random.Random(f"steady/{jitter}/{seed}")
    detector = PhiAccrualDetector()
    for i in range(beats):
        detector.heartbeat(i * 0.1 + rng.uniform(-jitter, jitter))
    return detector


# 100 ms heartbeats, std floored at 10 ms: phi 8 is reached at y = 5.225987 standard
# deviations past the mean (solving y * (1.5976 + 0.070566 * y**2) = 8 * ln 10).
CROSSING_Y = 5.225986644
CROSSING = 0.1 + 0.01 * CROSSING_Y  # 152.26 ms


def test_crossing_point_for_the_defaults_is_152_26_ms() -> None:
    assert akka_phi(CROSSING - 1e-9, 0.1, 0.01) < 8 <= akka_phi(CROSSING + 1e-9, 0.1, 0.01)
    detector = steady(jitter=0.0)
    assert detector.mean == pytest.approx(0.1)
    assert detector.std == 0.01
    assert crossing(detector) == pytest.approx(CROSSING, abs=1e-9)
    last = detector.last_heartbeat
    assert last is not None
    assert not detector.suspected(last + 0.1522)
    assert detector.suspected(last + 0.1523)


@pytest.mark.parametrize("seed", range(5))
def test_one_ms_jitter_suspects_between_152_and_153_ms(seed: int) -> None:
    detector = steady(jitter=0.001, seed=seed)
    assert detector.std == 0.01
    last = detector.last_heartbeat
    assert last is not None
    assert not detector.suspected(last + 0.120)
    assert detector.phi(last + 0.120) == pytest.approx(1.64, abs=0.02)
    assert 0.1520 < crossing(detector) < 0.1526
    assert detector.suspected(last + 0.153)


@pytest.mark.parametrize("seed", range(5))
def test_seven_ms_jitter_never_suspects_a_heartbeat_on_its_way(seed: int) -> None:
    rng = random.Random(f"jitter7/{seed}")
    detector = PhiAccrualDetector()
    worst = 0.0
    for i in range(2000):
        arrival = i * 0.1 + rng.uniform(-0.007, 0.007)
        if i > 0:
            worst = max(worst, detector.phi(arrival))
            assert not detector.suspected(arrival)
        detector.heartbeat(arrival)
    last = detector.last_heartbeat
    assert last is not None
    assert worst < 2.0
    assert detector.phi(last + 0.114) < 1.2
    assert 0.151 < crossing(detector) < 0.154


def test_observer_lag_does_not_count_against_the_peer() -> None:
    detector = steady()
    last = detector.last_heartbeat
    assert last is not None
    stalled_until = last + 0.35
    assert detector.suspected(stalled_until)
    assert not detector.suspected(stalled_until, lag=0.3)
    assert detector.phi(stalled_until, lag=0.3) == pytest.approx(detector.phi(last + 0.05))
    assert detector.phi(last + 0.01, lag=5.0) == detector.phi(last)
    assert detector.phi(stalled_until, lag=-1.0) == detector.phi(stalled_until)


@pytest.mark.parametrize(
    ("awareness", "threshold", "silence"),
    [(0, 8, 0.15226), (1, 16, 0.17120), (3, 32, 0.19402), (8, 72, 0.22727)],
)
def test_awareness_stretches_the_threshold(awareness: int, threshold: int, silence: float) -> None:
    detector = steady()
    assert crossing(detector, awareness) == pytest.approx(silence, abs=1e-5)
    last = detector.last_heartbeat
    assert last is not None
    assert detector.phi(last + crossing(detector, awareness)) == pytest.approx(threshold)


def test_negative_awareness_is_refused() -> None:
    with pytest.raises(ValueError, match="awareness"):
        steady(beats=3).suspected(1.0, awareness=-1)


def test_before_any_heartbeat_phi_is_zero() -> None:
    detector = PhiAccrualDetector()
    assert detector.phi(1e9) == 0.0
    assert not detector.suspected(1e9)
    assert detector.last_heartbeat is None
    assert detector.age(5.0) is None
    assert detector.samples == 0


def test_first_heartbeat_seeds_mean_and_a_quarter_std() -> None:
    detector = PhiAccrualDetector()
    detector.heartbeat(10.0)
    assert detector.samples == 2
    assert detector.mean == pytest.approx(0.1)
    assert detector.std == pytest.approx(0.025)
    assert crossing(detector) == pytest.approx(0.1 + 0.025 * CROSSING_Y, abs=1e-9)  # 230.6 ms
    assert detector.age(10.25) == pytest.approx(0.25)


def test_interval_ending_a_suspected_silence_is_not_learned() -> None:
    detector = steady(beats=50)
    samples, mean, std = detector.samples, detector.mean, detector.std
    last = detector.last_heartbeat
    assert last is not None
    detector.heartbeat(last + 2.0)
    assert (detector.samples, detector.mean, detector.std) == (samples, mean, std)
    assert detector.last_heartbeat == last + 2.0
    assert not detector.suspected(last + 2.1)


def test_heartbeat_older_than_the_last_is_ignored() -> None:
    detector = steady(beats=20)
    last = detector.last_heartbeat
    assert last is not None
    samples = detector.samples
    detector.heartbeat(last - 0.05)
    assert detector.last_heartbeat == last
    assert detector.samples == samples


def test_window_is_bounded_and_forgets_old_rhythm() -> None:
    detector = PhiAccrualDetector(window=50)
    t = 0.0
    for _ in range(1000):
        detector.heartbeat(t)
        t += 0.1
    assert detector.samples == 50
    for _ in range(49):
        detector.heartbeat(t)
        t += 0.05
    assert detector.samples == 50
    assert detector.mean == pytest.approx((48 * 0.05 + 2 * 0.1) / 50)
    for _ in range(10):
        detector.heartbeat(t)
        t += 0.05
    assert detector.mean == pytest.approx(0.05)


def test_acceptable_pause_shifts_the_mean() -> None:
    plain = steady()
    lenient = PhiAccrualDetector(acceptable_pause=0.5)
    for i in range(300):
        lenient.heartbeat(i * 0.1)
    assert crossing(lenient) == pytest.approx(crossing(plain) + 0.5, abs=1e-9)


@pytest.mark.parametrize(
    ("elapsed", "mean", "std"),
    [
        (1e6, 0.1, 0.01),
        (1e300, 0.1, 1e-300),
        (math.inf, 0.1, 0.01),
        (0.0, 1e6, 1e-9),
        (-1e300, 0.1, 1e-300),
        (0.1, 0.1, 1e-300),
    ],
)
def test_phi_is_finite_and_capped(elapsed: float, mean: float, std: float) -> None:
    value = phi_of(elapsed, mean, std)
    assert math.isfinite(value)
    assert 0.0 <= value <= MAX_PHI


def test_huge_gap_and_tiny_floor() -> None:
    detector = PhiAccrualDetector(min_std=1e-12)
    for i in range(300):
        detector.heartbeat(i * 0.125)
    assert detector.std == 1e-12
    last = detector.last_heartbeat
    assert last is not None
    assert detector.phi(last + 1e6) == MAX_PHI
    assert detector.phi(last + 0.125 + 1e-9) == MAX_PHI
    assert detector.phi(last) == 0.0
    assert detector.phi(last + 0.125) == pytest.approx(math.log10(2))


@given(
    st.floats(-1e308, 1e308, allow_nan=False),
    st.floats(0, 1e6, allow_nan=False),
    st.floats(1e-300, 1e6, allow_nan=False),
)
def test_phi_of_never_raises_nor_leaves_its_range(elapsed: float, mean: float, std: float) -> None:
    value = phi_of(elapsed, mean, std)
    assert 0.0 <= value <= MAX_PHI


@given(
    st.floats(-50, 50, allow_nan=False),
    st.floats(0, 5, allow_nan=False),
)
def test_phi_of_matches_akka_where_akka_is_computable(y: float, extra: float) -> None:
    ours = phi_of(0.1 + 0.01 * y, 0.1, 0.01)
    try:
        theirs = akka_phi(0.1 + 0.01 * y, 0.1, 0.01)
    except (OverflowError, ValueError, ZeroDivisionError):
        return
    if theirs < 300:  # beyond, exp(-z) is subnormal and the oracle itself loses precision
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    assert phi_of(0.1 + 0.01 * (y + extra), 0.1, 0.01) >= ours


intervals = st.lists(st.floats(0.0, 0.5, allow_nan=False), min_size=0, max_size=60)


def fed(gaps: list[float], **settings: float) -> PhiAccrualDetector:
    detector = PhiAccrualDetector(**settings)  # type: ignore[arg-type]
    t = 0.0
    detector.heartbeat(t)
    for gap in gaps:
        t += gap
        detector.heartbeat(t)
    return detector


@given(intervals, st.floats(0, 10), st.floats(0, 10), st.floats(0, 1))
def test_phi_is_monotone_in_silence_and_antitone_in_lag(
    gaps: list[float], a: float, b: float, lag: float
) -> None:
    detector = fed(gaps)
    last = detector.last_heartbeat
    assert last is not None
    early, late = sorted((a, b))
    assert detector.phi(last + early) <= detector.phi(last + late)
    assert detector.phi(last + late, lag=lag) <= detector.phi(last + late)
    if detector.suspected(last + early):
        assert detector.suspected(last + late)


@given(intervals, st.floats(0, 2), st.integers(0, 10))
def test_detector_agrees_with_a_naive_replay(
    gaps: list[float], silence: float, window: int
) -> None:
    window += 2
    detector = fed(gaps, window=window)
    history = [0.075, 0.125]
    t = 0.0
    for gap in gaps:
        kept = history[-window:]
        mean = statistics.fmean(kept)
        std = max(0.01, statistics.pstdev(kept))
        if phi_of(gap, mean, std) < 8.0:
            history.append(gap)
        t += gap
    kept = history[-window:]
    assert detector.samples == len(kept)
    assert detector.mean == pytest.approx(statistics.fmean(kept), rel=1e-9, abs=1e-12)
    std = max(0.01, statistics.pstdev(kept))
    assert detector.std == pytest.approx(std, rel=1e-6, abs=1e-12)
    expected = phi_of(silence, statistics.fmean(kept), std)
    assert detector.phi(t + silence) == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": -1}, "threshold"),
        ({"threshold": MAX_PHI}, "threshold"),
        ({"threshold": math.nan}, "threshold"),
        ({"min_std": 0}, "min_std"),
        ({"min_std": math.inf}, "min_std"),
        ({"window": 1}, "window"),
        ({"window": 10.0}, "window"),
        ({"window": True}, "window"),
        ({"first_interval": 0}, "first_interval"),
        ({"first_interval": "0.1"}, "first_interval"),
        ({"acceptable_pause": -0.1}, "acceptable_pause"),
    ],
)
def test_settings_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"PhiSettings\.{field}\b"):
        PhiSettings(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=rf"PhiSettings\.{field}\b"):
        PhiAccrualDetector(**kwargs)  # type: ignore[arg-type]


def test_peer_detectors() -> None:
    peers = PeerDetectors()
    assert peers.settings == PhiSettings()
    assert peers.phi("ghost", 5.0) == 0.0
    assert not peers.suspected("ghost", 5.0)
    for i in range(100):
        peers.heartbeat("n2", i * 0.1)
        peers.heartbeat("n1", i * 0.1)
        if i < 90:
            peers.heartbeat("n3", i * 0.1)
    now = 9.9 + 0.05
    assert peers.peers() == ["n1", "n2", "n3"]
    assert "n3" in peers
    assert len(peers) == 3
    assert peers.suspects(now) == frozenset({"n3"})
    assert peers.suspects(now, lag=1.1) == frozenset()
    assert peers.suspected("n3", now)
    assert not peers.suspected("n3", now, awareness=1000)
    view = peers.view(now)
    assert [v.peer for v in view] == ["n1", "n2", "n3"]
    assert view[2] == PhiView("n3", MAX_PHI, True, view[2].last_heartbeat_age)
    assert view[2].last_heartbeat_age == pytest.approx(1.05)
    assert view[0].phi == peers.phi("n1", now)
    assert not view[0].suspected
    peers.forget("n3")
    peers.forget("n3")
    assert "n3" not in peers
    assert peers.suspects(now) == frozenset()
    assert peers.phi("n3", now) == 0.0


def test_peer_detectors_use_their_settings() -> None:
    peers = PeerDetectors(PhiSettings(threshold=1.0))
    for i in range(10):
        peers.heartbeat("n1", i * 0.1)
    assert peers.suspected("n1", 0.9 + 0.13)
    assert not PeerDetectors().suspected("n1", 0.9 + 0.13)


@pytest.mark.parametrize(
    ("steps", "score"),
    [
        ([], 0),
        ([("lag", 0.5)], 1),
        ([("lag", 0.1)], 0),
        ([("lag", 0.35)], 0),
        ([("lag", 0.5), ("lag", 0.5), ("healthy", None)], 1),
        ([("healthy", None), ("healthy", None)], 0),
        ([("lag", 1.0)] * 20, 8),
        ([("lag", 1.0)] * 20 + [("healthy", None)] * 3, 5),
    ],
)
def test_local_health_score(steps: list[tuple[str, float | None]], score: int) -> None:
    health = LocalHealth()
    for kind, lag in steps:
        if kind == "lag":
            assert lag is not None
            health.note_lag(lag, 0.35)
        else:
            health.note_healthy()
    assert health.score == score
    assert health.stretch() == 1 + score


def test_local_health_limits() -> None:
    health = LocalHealth(max_score=2)
    assert [health.note_lag(1, 0.1) for _ in range(3)] == [1, 2, 2]
    assert [health.note_healthy() for _ in range(3)] == [1, 0, 0]
    with pytest.raises(ConfigurationError, match=r"LocalHealth\.max_score"):
        LocalHealth(max_score=-1)


def test_stretched_threshold_tolerates_a_lagging_observer() -> None:
    detector = steady()
    health = LocalHealth()
    last = detector.last_heartbeat
    assert last is not None
    assert detector.suspected(last + 0.18, awareness=health.score)
    health.note_lag(0.5, 0.35)
    health.note_lag(0.5, 0.35)
    assert not detector.suspected(last + 0.18, awareness=health.score)
