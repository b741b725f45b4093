import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from agentcluster.core.circuit_breaker import (
    BreakerBoard,
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    TransitionReason,
    admit_trial,
)
from agentcluster.errors import ConfigurationError

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
R = TransitionReason


def run(breaker: CircuitBreaker, script: list[tuple[float, str]]) -> list[Any]:
    """Apply ``(time, op)`` steps; returns what each step returned."""
    results: list[Any] = []
    for now, op in script:
        if op == "allow":
            results.append(breaker.allow(now))
        elif op == "ok":
            results.append(breaker.record_success(now))
        elif op == "fail":
            results.append(breaker.record_failure(now))
        elif op == "release":
            results.append(breaker.release(now))
        elif op == "state":
            results.append(breaker.state(now))
        else:
            raise AssertionError(op)
    return results


def moves(breaker: CircuitBreaker) -> list[tuple[BreakerState, BreakerState, float, str]]:
    return [(t.old, t.new, t.at, t.reason) for t in breaker.drain_transitions()]


# --- configuration ---------------------------------------------------------------------


def test_enum_values() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]
    assert [r.value for r in TransitionReason] == [
        "consecutive_failures",
        "error_rate",
        "cool_down_passed",
        "trial_succeeded",
        "trial_failed",
        "evicted",
    ]


def test_config_defaults() -> None:
    config = BreakerConfig()
    assert config.failure_threshold == 5
    assert config.error_rate_threshold == 0.5
    assert config.window == 10.0
    assert config.min_requests == 20
    assert config.buckets == 10
    assert config.bucket_width == 1.0
    assert config.cool_down == 5.0
    assert config.max_cool_down == 60.0
    assert config.backoff == 2.0
    assert config.half_open_trials == 1
    assert config.successes_to_close == 2
    assert config.slow_call is None


BAD_CONFIGS = [
    ("failure_threshold", 0),
    ("failure_threshold", 1.0),
    ("failure_threshold", True),
    ("min_requests", 0),
    ("buckets", 0),
    ("buckets", "10"),
    ("half_open_trials", 0),
    ("successes_to_close", 0),
    ("error_rate_threshold", 0.0),
    ("error_rate_threshold", 1.01),
    ("error_rate_threshold", math.nan),
    ("window", 0.0),
    ("window", -1.0),
    ("window", math.inf),
    ("window", None),
    ("cool_down", 0),
    ("cool_down", False),
    ("max_cool_down", 4.0),
    ("backoff", 0.5),
    ("backoff", math.inf),
    ("slow_call", 0.0),
    ("slow_call", "1"),
]


@pytest.mark.parametrize(("field", "value"), BAD_CONFIGS)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"^BreakerConfig\.{field} "):
        BreakerConfig(**{field: value})


def test_config_accepts_edge_values() -> None:
    config = BreakerConfig(
        error_rate_threshold=1,
        max_cool_down=5.0,
        backoff=1,
        slow_call=0.25,
        failure_threshold=1,
        min_requests=1,
        buckets=1,
    )
    assert config.max_cool_down == config.cool_down


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_board_rejects_bad_max_breakers(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"BreakerBoard\.max_breakers"):
        BreakerBoard(max_breakers=value)


# --- every transition, as a table ------------------------------------------------------

QUICK = BreakerConfig(
    failure_threshold=3,
    min_requests=100,
    cool_down=1.0,
    max_cool_down=3.0,
    backoff=2.0,
    half_open_trials=1,
    successes_to_close=1,
)
RATE = BreakerConfig(
    failure_threshold=100, error_rate_threshold=0.5, window=10.0, min_requests=10, cool_down=1.0
)

# (name, config, script, states after each step, transitions)
TABLE: list[
    tuple[
        str,
        BreakerConfig,
        list[tuple[float, str]],
        list[BreakerState],
        list[tuple[BreakerState, BreakerState, float, str]],
    ]
] = [
    (
        "consecutive failures open",
        QUICK,
        [(0, "fail"), (1, "fail"), (2, "fail")],
        [CLOSED, CLOSED, OPEN],
        [(CLOSED, OPEN, 2, R.CONSECUTIVE_FAILURES)],
    ),
    (
        "a success resets the consecutive count",
        QUICK,
        [(0, "fail"), (0, "fail"), (0, "ok"), (0, "fail"), (0, "fail"), (0, "fail")],
        [CLOSED, CLOSED, CLOSED, CLOSED, CLOSED, OPEN],
        [(CLOSED, OPEN, 0, R.CONSECUTIVE_FAILURES)],
    ),
    (
        "error rate below min_requests does not open",
        RATE,
        [(0, "ok")] * 4 + [(0, "fail")] * 5,
        [CLOSED] * 9,
        [],
    ),
    (
        "error rate opens once min_requests is reached",
        RATE,
        [(0, "ok")] * 4 + [(0, "fail")] * 6,
        [CLOSED] * 9 + [OPEN],
        [(CLOSED, OPEN, 0, R.ERROR_RATE)],
    ),
    (
        "error rate exactly at the threshold opens",
        RATE,
        [(0, "ok"), (0, "fail")] * 5,
        [CLOSED] * 9 + [OPEN],
        [(CLOSED, OPEN, 0, R.ERROR_RATE)],
    ),
    (
        "error rate just below the threshold stays closed",
        RATE,
        [(0, "ok")] * 6 + [(0, "fail")] * 4 + [(0, "ok")] + [(0, "fail")],
        [CLOSED] * 12,
        [],
    ),
    (
        "a success never opens, whatever the rate",
        RATE,
        [(0, "fail")] * 9 + [(0, "ok")],
        [CLOSED] * 10,
        [],
    ),
    (
        "the window forgets old outcomes",
        RATE,
        [(0, "fail")] * 9 + [(10.0, "fail")],
        [CLOSED] * 10,
        [],
    ),
    (
        "outcomes in the last bucket of the window still count",
        RATE,
        [(0, "fail")] * 9 + [(9.999, "fail")],
        [CLOSED] * 9 + [OPEN],
        [(CLOSED, OPEN, 9.999, R.ERROR_RATE)],
    ),
    (
        "open refuses until the cool-down passes, at the boundary exactly",
        QUICK,
        [(0, "fail")] * 3 + [(0.5, "allow"), (0.999, "allow"), (1.0, "state")],
        [CLOSED, CLOSED, OPEN, OPEN, OPEN, HALF],
        [(CLOSED, OPEN, 0, R.CONSECUTIVE_FAILURES), (OPEN, HALF, 1.0, R.COOL_DOWN_PASSED)],
    ),
    (
        "outcomes while open are stale and ignored",
        QUICK,
        [(0, "fail")] * 3 + [(0.5, "fail"), (0.6, "ok"), (1.0, "state")],
        [CLOSED, CLOSED, OPEN, OPEN, OPEN, HALF],
        [(CLOSED, OPEN, 0, R.CONSECUTIVE_FAILURES), (OPEN, HALF, 1.0, R.COOL_DOWN_PASSED)],
    ),
    (
        "a trial success closes",
        QUICK,
        [(0, "fail")] * 3 + [(1, "allow"), (1.5, "ok")],
        [CLOSED, CLOSED, OPEN, HALF, CLOSED],
        [
            (CLOSED, OPEN, 0, R.CONSECUTIVE_FAILURES),
            (OPEN, HALF, 1, R.COOL_DOWN_PASSED),
            (HALF, CLOSED, 1.5, R.TRIAL_SUCCEEDED),
        ],
    ),
    (
        "a trial failure reopens at once with a doubled cool-down",
        QUICK,
        [(0, "fail")] * 3 + [(1, "allow"), (1.5, "fail"), (3.499, "state"), (3.5, "state")],
        [CLOSED, CLOSED, OPEN, HALF, OPEN, OPEN, HALF],
        [
            (CLOSED, OPEN, 0, R.CONSECUTIVE_FAILURES),
            (OPEN, HALF, 1, R.COOL_DOWN_PASSED),
            (HALF, OPEN, 1.5, R.TRIAL_FAILED),
            (OPEN, HALF, 3.5, R.COOL_DOWN_PASSED),
        ],
    ),
    (
        "a stale outcome in half-open without a trial is ignored",
        QUICK,
        [(0, "fail")] * 3 + [(1, "fail"), (1, "ok")],
        [CLOSED, CLOSED, OPEN, HALF, HALF],
        [(CLOSED, OPEN, 0, R.CONSECUTIVE_FAILURES), (OPEN, HALF, 1, R.COOL_DOWN_PASSED)],
    ),
    (
        "a released trial frees its slot without an outcome",
        QUICK,
        [(0, "fail")] * 3 + [(1, "allow"), (1, "release"), (1, "allow"), (1, "ok")],
        [CLOSED, CLOSED, OPEN, HALF, HALF, HALF, CLOSED],
        [
            (CLOSED, OPEN, 0, R.CONSECUTIVE_FAILURES),
            (OPEN, HALF, 1, R.COOL_DOWN_PASSED),
            (HALF, CLOSED, 1, R.TRIAL_SUCCEEDED),
        ],
    ),
]


@pytest.mark.parametrize(
    ("config", "script", "states", "transitions"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_transition_table(
    config: BreakerConfig,
    script: list[tuple[float, str]],
    states: list[BreakerState],
    transitions: list[tuple[BreakerState, BreakerState, float, str]],
) -> None:
    breaker = CircuitBreaker("n1", config)
    seen = []
    for now, op in script:
        run(breaker, [(now, op)])
        seen.append(breaker.state(now))
    assert seen == states
    assert moves(breaker) == transitions
    assert breaker.drain_transitions() == []


def test_transitions_carry_the_key_and_are_frozen() -> None:
    breaker = CircuitBreaker("node-7", QUICK)
    run(breaker, [(0, "fail")] * 3)
    [transition] = breaker.drain_transitions()
    assert transition == BreakerTransition("node-7", CLOSED, OPEN, 0, R.CONSECUTIVE_FAILURES)
    with pytest.raises(AttributeError):
        transition.at = 1.0  # type: ignore[misc]


def test_record_returns_the_state_after() -> None:
    breaker = CircuitBreaker("n", QUICK)
    assert run(breaker, [(0, "fail")] * 3) == [CLOSED, CLOSED, OPEN]


def test_open_refuses_and_reports_its_deadline() -> None:
    breaker = CircuitBreaker("n", QUICK)
    assert breaker.next_deadline() is None
    run(breaker, [(10, "fail")] * 3)
    assert breaker.next_deadline() == 11.0
    assert not breaker.allow(10.5)
    assert breaker.next_deadline() == 11.0
    assert breaker.allow(11.0)
    assert breaker.next_deadline() is None


def test_half_open_admits_only_half_open_trials_at_a_time() -> None:
    config = BreakerConfig(failure_threshold=1, cool_down=1.0, half_open_trials=2)
    breaker = CircuitBreaker("n", config)
    breaker.record_failure(0)
    assert [breaker.allow(1) for _ in range(4)] == [True, True, False, False]
    assert breaker.trials_in_flight == 2
    breaker.release(1)
    assert breaker.allow(1)
    assert not breaker.allow(1)
    assert breaker.record_success(1.1) is HALF
    assert breaker.trials_in_flight == 1
    assert breaker.allow(1.2)
    assert not breaker.allow(1.2)


def test_closing_takes_successes_to_close_trials_in_a_row() -> None:
    config = BreakerConfig(failure_threshold=1, cool_down=1.0, successes_to_close=3)
    breaker = CircuitBreaker("n", config)
    breaker.record_failure(0)
    for now in (1.0, 1.1):
        assert breaker.allow(now)
        assert breaker.record_success(now) is HALF
    assert breaker.allow(1.2)
    assert breaker.record_success(1.2) is CLOSED


def test_a_trial_failure_after_some_successes_reopens() -> None:
    config = BreakerConfig(failure_threshold=1, cool_down=1.0)
    breaker = CircuitBreaker("n", config)
    breaker.record_failure(0)
    assert breaker.allow(1)
    assert breaker.record_success(1) is HALF
    assert breaker.allow(1)
    assert breaker.record_failure(1) is OPEN
    assert breaker.cool_down == 2.0


def test_cool_down_grows_with_each_reopening_up_to_the_cap_and_resets_on_close() -> None:
    config = BreakerConfig(
        failure_threshold=1, cool_down=1.0, backoff=2.0, max_cool_down=5.0, successes_to_close=1
    )
    breaker = CircuitBreaker("n", config)
    now = 0.0
    breaker.record_failure(now)
    cool_downs = [breaker.cool_down]
    for _ in range(5):
        deadline = breaker.next_deadline()
        assert deadline is not None
        assert breaker.state(deadline - 1e-9) is OPEN
        now = deadline
        assert breaker.allow(now)
        breaker.record_failure(now)
        cool_downs.append(breaker.cool_down)
    assert cool_downs == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert breaker.openings == 6
    now += 5.0
    assert breaker.allow(now)
    assert breaker.record_success(now) is CLOSED
    assert breaker.cool_down == 1.0
    assert breaker.openings == 0
    breaker.record_failure(now)
    assert breaker.next_deadline() == now + 1.0


def test_fixed_cool_down_with_backoff_one() -> None:
    config = BreakerConfig(failure_threshold=1, cool_down=2.0, backoff=1.0)
    breaker = CircuitBreaker("n", config)
    breaker.record_failure(0)
    for _ in range(3):
        deadline = breaker.next_deadline()
        assert deadline is not None
        assert breaker.allow(deadline)
        breaker.record_failure(deadline)
        assert breaker.cool_down == 2.0


def test_the_cool_down_transition_is_dated_when_it_took_effect() -> None:
    breaker = CircuitBreaker("n", QUICK)
    run(breaker, [(0, "fail")] * 3)
    moves(breaker)
    assert breaker.state(100.0) is HALF
    assert moves(breaker) == [(OPEN, HALF, 1.0, R.COOL_DOWN_PASSED)]


def test_closing_empties_the_window() -> None:
    config = BreakerConfig(
        failure_threshold=50, min_requests=4, cool_down=1.0, successes_to_close=1
    )
    breaker = CircuitBreaker("n", config)
    run(breaker, [(0, "fail")] * 4)
    assert breaker.state(0) is OPEN
    assert breaker.allow(1)
    assert breaker.record_success(1) is CLOSED
    assert breaker.window_counts(1) == (0, 0)
    assert breaker.record_failure(1) is CLOSED
    assert breaker.window_counts(1) == (1, 1)


def test_window_counts_slide_bucket_by_bucket() -> None:
    config = BreakerConfig(failure_threshold=1000, window=10.0, buckets=5, min_requests=1000)
    breaker = CircuitBreaker("n", config)
    for t in range(10):
        breaker.record_success(float(t))
        breaker.record_failure(t + 0.5)
    assert breaker.window_counts(9.9) == (20, 10)
    # Buckets are 2 s wide: at t=10 the bucket [0, 2) leaves the window.
    assert breaker.window_counts(10.0) == (16, 8)
    assert breaker.window_counts(13.9) == (12, 6)
    assert breaker.window_counts(100.0) == (0, 0)


def test_memory_does_not_grow_with_the_number_of_outcomes() -> None:
    config = BreakerConfig(failure_threshold=10**9, min_requests=10**9)
    breaker = CircuitBreaker("n", config)
    for i in range(20_000):
        breaker.record_success(i / 1000)
        breaker.record_failure(i / 1000)
    assert breaker.window_counts(19.999) == (20_000, 10_000)
    held = [getattr(breaker, name) for name in type(breaker).__slots__]
    assert max(len(x) for x in held if isinstance(x, list)) == config.buckets


def test_slow_success_counts_as_a_failure() -> None:
    config = BreakerConfig(failure_threshold=2, slow_call=0.5, cool_down=1.0)
    breaker = CircuitBreaker("n", config)
    assert breaker.record_success(0, latency=0.5) is CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.record_success(0, latency=0.6) is CLOSED
    assert breaker.record_success(0, latency=0.7) is OPEN
    assert breaker.allow(1)
    assert breaker.record_success(1, latency=2.0) is OPEN
    assert moves(breaker)[-1] == (HALF, OPEN, 1, R.TRIAL_FAILED)


def test_latency_is_ignored_without_slow_call() -> None:
    breaker = CircuitBreaker("n", QUICK)
    for _ in range(5):
        assert breaker.record_success(0, latency=1e6) is CLOSED


def test_a_time_earlier_than_one_seen_counts_as_the_latest() -> None:
    breaker = CircuitBreaker("n", QUICK)
    run(breaker, [(10, "fail")] * 3)
    assert breaker.state(5) is OPEN
    assert breaker.next_deadline() == 11.0
    assert breaker.state(11) is HALF
    assert breaker.allow(3)
    assert breaker.record_success(2) is CLOSED
    assert moves(breaker)[-1] == (HALF, CLOSED, 11, R.TRIAL_SUCCEEDED)


def test_failures_while_open_do_not_extend_the_cool_down() -> None:
    breaker = CircuitBreaker("n", QUICK)
    run(breaker, [(0, "fail")] * 3)
    run(breaker, [(0.9, "fail")] * 10)
    assert breaker.next_deadline() == 1.0


# --- the board -------------------------------------------------------------------------


def test_board_unknown_keys_are_closed_and_not_created() -> None:
    board = BreakerBoard(QUICK)
    assert board.allow("x", 0)
    assert board.state("x", 0) is CLOSED
    board.release("x", 0)
    assert len(board) == 0
    assert "x" not in board
    assert board.states(0) == {}
    assert board.next_deadline() is None


def test_board_tracks_breakers_by_key() -> None:
    board = BreakerBoard(QUICK)
    for _ in range(3):
        board.record("a", 0, ok=False)
    board.record("b", 0, ok=True)
    for _ in range(3):
        board.record("c", 0.5, ok=False)
    assert board.keys() == ["a", "b", "c"]
    assert "b" in board
    assert board.states(0.5) == {"a": OPEN, "c": OPEN}
    assert board.open_keys(0.5) == {"a", "c"}
    assert not board.allow("a", 0.5)
    assert board.allow("b", 0.5)
    assert board.next_deadline() == 1.0
    assert board.states(1.0) == {"a": HALF, "c": OPEN}
    assert board.open_keys(1.0) == {"c"}
    assert board.allow("a", 1.0)
    assert not board.allow("a", 1.0)
    assert board.record("a", 1.1, ok=True) is CLOSED
    assert board.states(1.1) == {"c": OPEN}
    assert board.next_deadline() == 1.5
    assert [(t.key, t.old, t.new, t.at, t.reason) for t in board.drain_transitions()] == [
        ("a", CLOSED, OPEN, 0, R.CONSECUTIVE_FAILURES),
        ("c", CLOSED, OPEN, 0.5, R.CONSECUTIVE_FAILURES),
        ("a", OPEN, HALF, 1.0, R.COOL_DOWN_PASSED),
        ("a", HALF, CLOSED, 1.1, R.TRIAL_SUCCEEDED),
    ]
    assert board.drain_transitions() == []


def test_board_release_frees_a_trial() -> None:
    board = BreakerBoard(QUICK)
    for _ in range(3):
        board.record("a", 0, ok=False)
    assert board.allow("a", 1)
    assert not board.allow("a", 1)
    board.release("a", 1)
    assert board.allow("a", 1)


def test_board_evicts_least_recently_used_closed_breakers_first() -> None:
    board = BreakerBoard(QUICK, max_breakers=3)
    for _ in range(3):
        board.record("open", 0, ok=False)
    board.record("old", 0, ok=True)
    board.record("new", 0, ok=True)
    board.allow("old", 0)  # now "new" is the least recently used closed breaker
    board.record("x", 0, ok=True)
    assert board.keys() == ["old", "open", "x"]
    board.record("y", 0, ok=True)
    assert board.keys() == ["open", "x", "y"]
    assert board.states(0) == {"open": OPEN}


def test_board_evicts_a_tripped_breaker_only_when_none_is_closed_and_says_so() -> None:
    board = BreakerBoard(QUICK, max_breakers=2)
    for key in ("a", "b"):
        for _ in range(3):
            board.record(key, 0, ok=False)
    board.drain_transitions()
    board.allow("a", 0.5)  # "b" is now the least recently used
    assert board.record("c", 2.0, ok=True) is CLOSED
    assert board.keys() == ["a", "c"]
    assert board.drain_transitions() == [
        BreakerTransition("b", OPEN, HALF, 1.0, R.COOL_DOWN_PASSED),
        BreakerTransition("b", HALF, CLOSED, 2.0, R.EVICTED),
    ]


def test_board_forget_drops_the_breaker_silently() -> None:
    board = BreakerBoard(QUICK)
    for _ in range(3):
        board.record("a", 0, ok=False)
    board.drain_transitions()
    board.forget("a")
    board.forget("never")
    assert "a" not in board
    assert board.allow("a", 0)
    assert board.drain_transitions() == []


# --- property tests against a naive oracle ---------------------------------------------


@dataclass
class NaiveBreaker:
    """Keeps every outcome since the last close with its time; recomputes everything."""

    key: str
    config: BreakerConfig
    mode: BreakerState = CLOSED
    now: float = -math.inf
    opened_at: float = -math.inf
    openings: int = 0
    trials: int = 0
    successes: int = 0

    def __post_init__(self) -> None:
        self.outcomes: list[tuple[float, bool]] = []  # (time, failed)
        self.log: list[BreakerTransition] = []

    def cool(self) -> float:
        c = self.config
        return min(c.max_cool_down, c.cool_down * c.backoff ** (self.openings - 1))

    def move(self, new: BreakerState, at: float, reason: TransitionReason) -> None:
        self.log.append(BreakerTransition(self.key, self.mode, new, at, reason))
        self.mode = new

    def tick(self, now: float) -> None:
        self.now = max(self.now, now)
        if self.mode is OPEN and self.now >= self.opened_at + self.cool():
            self.move(HALF, self.opened_at + self.cool(), R.COOL_DOWN_PASSED)
            self.trials = self.successes = 0

    def window(self) -> list[bool]:
        width = self.config.window / self.config.buckets
        current = math.floor(self.now / width)
        return [
            failed
            for t, failed in self.outcomes
            if math.floor(t / width) > current - self.config.buckets
        ]

    def consecutive(self) -> int:
        streak = 0
        for _, failed in reversed(self.outcomes):
            if not failed:
                break
            streak += 1
        return streak

    def open(self, reason: TransitionReason) -> None:
        self.move(OPEN, self.now, reason)
        self.opened_at = self.now
        self.openings += 1
        self.trials = self.successes = 0

    def state(self, now: float) -> BreakerState:
        self.tick(now)
        return self.mode

    def allow(self, now: float) -> bool:
        self.tick(now)
        if self.mode is CLOSED:
            return True
        if self.mode is HALF and self.trials < self.config.half_open_trials:
            self.trials += 1
            return True
        return False

    def release(self, now: float) -> None:
        self.tick(now)
        if self.mode is HALF and self.trials:
            self.trials -= 1

    def record(self, now: float, ok: bool, latency: float | None = None) -> BreakerState:
        slow = self.config.slow_call
        if ok and latency is not None and slow is not None and latency > slow:
            ok = False
        self.tick(now)
        c = self.config
        if self.mode is CLOSED:
            self.outcomes.append((self.now, not ok))
            window = self.window()
            if not ok and self.consecutive() >= c.failure_threshold:
                self.open(R.CONSECUTIVE_FAILURES)
            elif (
                not ok
                and len(window) >= c.min_requests
                and sum(window) / len(window) >= c.error_rate_threshold
            ):
                self.open(R.ERROR_RATE)
        elif self.mode is HALF and self.trials:
            self.trials -= 1
            if not ok:
                self.open(R.TRIAL_FAILED)
            else:
                self.successes += 1
                if self.successes >= c.successes_to_close:
                    self.move(CLOSED, self.now, R.TRIAL_SUCCEEDED)
                    self.outcomes = []
                    self.openings = self.trials = self.successes = 0
        return self.mode

    def deadline(self) -> float | None:
        return self.opened_at + self.cool() if self.mode is OPEN else None

    def drain(self) -> list[BreakerTransition]:
        drained, self.log = self.log, []
        return drained


# Cool-downs and backoffs whose products are exact in binary floating point, so the
# oracle's ``cool_down * backoff ** k`` equals the breaker's repeated multiplication.
configs = st.builds(
    BreakerConfig,
    failure_threshold=st.integers(1, 4),
    error_rate_threshold=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    window=st.sampled_from([1.0, 2.0, 5.0, 10.0]),
    min_requests=st.integers(1, 6),
    buckets=st.sampled_from([1, 2, 3, 5, 10]),
    cool_down=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    max_cool_down=st.sampled_from([3.0, 8.0, 24.0]),
    backoff=st.sampled_from([1.0, 1.5, 2.0]),
    half_open_trials=st.integers(1, 3),
    successes_to_close=st.integers(1, 3),
    slow_call=st.sampled_from([None, 0.5]),
)
steps = st.sampled_from([0.0, 0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 3.0, 7.0])
OPS = ["allow", "allow", "allow", "ok", "ok", "fail", "fail", "slow", "release", "state"]


def check_chain(
    transitions: list[BreakerTransition], before: dict[str, BreakerState]
) -> dict[str, BreakerState]:
    """Each transition starts where the key's last one ended and changes something."""
    states = dict(before)
    for t in transitions:
        event(f"{t.old} -> {t.new} ({t.reason})")
        assert t.old is states.get(t.key, CLOSED)
        assert t.new is not t.old
        states[t.key] = t.new
    return states


@given(configs, st.lists(st.tuples(steps, st.sampled_from(OPS)), min_size=10, max_size=120))
def test_breaker_agrees_with_the_naive_oracle(
    config: BreakerConfig, script: list[tuple[float, str]]
) -> None:
    breaker = CircuitBreaker("k", config)
    oracle = NaiveBreaker("k", config)
    now = 0.0
    last = {"k": CLOSED}
    for step, op in script:
        now += step
        if op == "allow":
            assert breaker.allow(now) == oracle.allow(now)
        elif op == "ok":
            assert breaker.record_success(now) is oracle.record(now, ok=True)
        elif op == "fail":
            assert breaker.record_failure(now) is oracle.record(now, ok=False)
        elif op == "slow":
            got = breaker.record_success(now, latency=1.0)
            assert got is oracle.record(now, ok=True, latency=1.0)
        elif op == "release":
            breaker.release(now)
            oracle.release(now)
        else:
            assert breaker.state(now) is oracle.state(now)
        transitions = breaker.drain_transitions()
        assert transitions == oracle.drain()
        last = check_chain(transitions, last)
        assert breaker.next_deadline() == oracle.deadline()
        assert breaker.trials_in_flight == oracle.trials
        assert breaker.consecutive_failures == (
            oracle.consecutive() if oracle.mode is CLOSED else 0
        )
        # Observing the state neither changes it unseen nor reports a change twice.
        assert breaker.state(now) is last["k"] is oracle.state(now)
        assert breaker.drain_transitions() == oracle.drain() == []
        if oracle.mode is CLOSED:
            window = oracle.window()
            assert breaker.window_counts(now) == (len(window), sum(window))


class NaiveBoard:
    """Every breaker in one list ordered by last use; eviction scans it."""

    def __init__(self, config: BreakerConfig, max_breakers: int) -> None:
        self.config = config
        self.max_breakers = max_breakers
        self.breakers: OrderedDict[str, NaiveBreaker] = OrderedDict()
        self.log: list[BreakerTransition] = []

    def use(self, key: str) -> NaiveBreaker | None:
        if key in self.breakers:
            self.breakers.move_to_end(key)
        return self.breakers.get(key)

    def collect(self, breaker: NaiveBreaker) -> None:
        self.log.extend(breaker.drain())

    def allow(self, key: str, now: float) -> bool:
        breaker = self.use(key)
        if breaker is None:
            return True
        allowed = breaker.allow(now)
        self.collect(breaker)
        return allowed

    def record(self, key: str, now: float, ok: bool) -> BreakerState:
        breaker = self.use(key)
        if breaker is None:
            if len(self.breakers) >= self.max_breakers:
                self.evict(now)
            breaker = self.breakers[key] = NaiveBreaker(key, self.config)
        state = breaker.record(now, ok)
        self.collect(breaker)
        return state

    def evict(self, now: float) -> None:
        closed = [k for k, b in self.breakers.items() if b.mode is CLOSED]
        victim = closed[0] if closed else next(iter(self.breakers))
        breaker = self.breakers.pop(victim)
        if breaker.mode is not CLOSED:
            old = breaker.state(now)
            self.collect(breaker)
            self.log.append(BreakerTransition(victim, old, CLOSED, breaker.now, R.EVICTED))

    def release(self, key: str, now: float) -> None:
        breaker = self.use(key)
        if breaker is not None:
            breaker.release(now)
            self.collect(breaker)

    def state(self, key: str, now: float) -> BreakerState:
        breaker = self.use(key)
        if breaker is None:
            return CLOSED
        state = breaker.state(now)
        self.collect(breaker)
        return state

    def states(self, now: float) -> dict[str, BreakerState]:
        found = {}
        for key in sorted(self.breakers):
            state = self.breakers[key].state(now)
            self.collect(self.breakers[key])
            if state is not CLOSED:
                found[key] = state
        return found


KEYS = ["a", "b", "c", "d", "e"]
BOARD_OPS = ["allow", "allow", "allow", "ok", "ok", "fail", "fail", "release", "state", "states"]


@given(
    configs,
    st.integers(1, 4),
    st.lists(
        st.tuples(steps, st.sampled_from(KEYS), st.sampled_from([*BOARD_OPS, "forget"])),
        min_size=10,
        max_size=120,
    ),
)
def test_board_agrees_with_the_naive_oracle(
    config: BreakerConfig, max_breakers: int, script: list[tuple[float, str, str]]
) -> None:
    board = BreakerBoard(config, max_breakers=max_breakers)
    oracle = NaiveBoard(config, max_breakers)
    now = 0.0
    last: dict[str, BreakerState] = {}
    for step, key, op in script:
        now += step
        full_before = len(board) == max_breakers and key not in board
        if full_before and op in ("ok", "fail"):
            tripped = board.states(now)
            assert tripped == oracle.states(now)
            had_closed = len(tripped) < len(board)
        if op == "allow":
            assert board.allow(key, now) == oracle.allow(key, now)
        elif op in ("ok", "fail"):
            assert board.record(key, now, ok=op == "ok") is oracle.record(key, now, op == "ok")
        elif op == "release":
            board.release(key, now)
            oracle.release(key, now)
        elif op == "state":
            assert board.state(key, now) is oracle.state(key, now)
        elif op == "states":
            assert board.states(now) == oracle.states(now)
            assert board.open_keys(now) == {k for k, s in oracle.states(now).items() if s is OPEN}
        else:
            board.forget(key)
            oracle.breakers.pop(key, None)
            last.pop(key, None)
        transitions = board.drain_transitions()
        assert transitions == oracle.log
        oracle.log = []
        last = check_chain(transitions, last)
        assert len(board) <= max_breakers
        assert board.keys() == sorted(oracle.breakers)
        evicted = [t for t in transitions if t.reason is R.EVICTED]
        if evicted:
            assert full_before
            assert not had_closed, "a tripped breaker was evicted while a closed one was kept"
        deadlines = [d for b in oracle.breakers.values() if (d := b.deadline()) is not None]
        assert board.next_deadline() == min(deadlines, default=None)
    final = board.states(now)
    last = check_chain(board.drain_transitions(), last)
    assert final == {k: s for k, s in last.items() if k in board and s is not CLOSED}


def test_admit_trial_takes_a_slot_on_both_boards_or_on_neither() -> None:
    config = BreakerConfig(failure_threshold=1, cool_down=1.0, half_open_trials=1)
    nodes, agents = BreakerBoard(config), BreakerBoard(config)
    nodes.record("n1", 0.0, ok=False)
    agents.record("a1", 0.0, ok=False)
    assert not admit_trial(nodes, agents, "n1", "a1", 0.5)  # both open
    assert admit_trial(nodes, agents, "n1", "a1", 1.0)  # both half-open: one trial each
    assert not admit_trial(nodes, agents, "n1", "a1", 1.0)  # the node's slot is taken
    nodes.release("n1", 1.0)
    assert not admit_trial(nodes, agents, "n1", "a1", 1.0)  # the agent's slot is taken
    assert nodes.allow("n1", 1.0)  # and the node's slot was handed back
