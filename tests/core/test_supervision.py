import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.supervision import (
    ExitKind,
    RestartIntensity,
    RestartPlan,
    RestartType,
    Strategy,
    plan_restart,
    should_restart,
)
from agentcluster.errors import ConfigurationError

P, T, X = RestartType.PERMANENT, RestartType.TRANSIENT, RestartType.TEMPORARY
NORMAL, CRASH, SHUTDOWN = ExitKind.NORMAL, ExitKind.CRASH, ExitKind.SHUTDOWN

SHOULD_RESTART = {
    (P, NORMAL): True,
    (P, CRASH): True,
    (P, SHUTDOWN): False,
    (T, NORMAL): False,
    (T, CRASH): True,
    (T, SHUTDOWN): False,
    (X, NORMAL): False,
    (X, CRASH): False,
    (X, SHUTDOWN): False,
}


def test_enum_values() -> None:
    assert [s.value for s in Strategy] == ["one_for_one", "one_for_all", "rest_for_one"]
    assert [r.value for r in RestartType] == ["permanent", "transient", "temporary"]
    assert [e.value for e in ExitKind] == ["normal", "crash", "shutdown"]


@pytest.mark.parametrize(("restart", "exit"), list(SHOULD_RESTART))
def test_should_restart_table(restart: RestartType, exit: ExitKind) -> None:
    assert should_restart(restart, exit) is SHOULD_RESTART[restart, exit]


# The exited child is "b"; its siblings cover the other restart types, so the table also
# shows a TEMPORARY sibling dropped instead of restarted.
def family(exited_type: RestartType) -> list[tuple[str, RestartType]]:
    return [("a", P), ("b", exited_type), ("c", X), ("d", T)]


RESTARTED = {
    Strategy.ONE_FOR_ONE: RestartPlan(stop=(), start=("b",), remove=(), escalate=False),
    Strategy.ONE_FOR_ALL: RestartPlan(
        stop=("d", "c", "a"), start=("a", "b", "d"), remove=("c",), escalate=False
    ),
    Strategy.REST_FOR_ONE: RestartPlan(
        stop=("d", "c"), start=("b", "d"), remove=("c",), escalate=False
    ),
}
DROPPED = RestartPlan(stop=(), start=(), remove=("b",), escalate=False)


@pytest.mark.parametrize(
    ("strategy", "restart", "exit"), list(itertools.product(Strategy, RestartType, ExitKind))
)
def test_plan_table(strategy: Strategy, restart: RestartType, exit: ExitKind) -> None:
    intensity = RestartIntensity()
    plan = plan_restart(strategy, family(restart), "b", exit, intensity, now=0.0)
    restarts = SHOULD_RESTART[restart, exit]
    assert plan == (RESTARTED[strategy] if restarts else DROPPED)
    assert intensity.recent(0.0) == (1 if restarts else 0)


@pytest.mark.parametrize(
    ("strategy", "exited", "expected"),
    [
        (Strategy.REST_FOR_ONE, "a", RestartPlan(stop=("c", "b"), start=("a", "b", "c"))),
        (Strategy.REST_FOR_ONE, "c", RestartPlan(start=("c",))),
        (Strategy.ONE_FOR_ALL, "c", RestartPlan(stop=("b", "a"), start=("a", "b", "c"))),
        (Strategy.ONE_FOR_ONE, "a", RestartPlan(start=("a",))),
    ],
)
def test_plan_first_and_last_child(strategy: Strategy, exited: str, expected: RestartPlan) -> None:
    children = [("a", P), ("b", P), ("c", P)]
    assert plan_restart(strategy, children, exited, CRASH, RestartIntensity(), 0.0) == expected


@pytest.mark.parametrize("strategy", list(Strategy))
def test_exceeding_intensity_escalates(strategy: Strategy) -> None:
    intensity = RestartIntensity(max_restarts=1, period=10)
    children = [("a", P), ("b", T), ("c", X)]
    first = plan_restart(strategy, children, "b", CRASH, intensity, now=0.0)
    assert not first.escalate
    second = plan_restart(strategy, children, "b", CRASH, intensity, now=1.0)
    assert second == RestartPlan(stop=("c", "a"), start=(), remove=(), escalate=True)


def test_zero_intensity_escalates_on_first_restart() -> None:
    plan = plan_restart(
        Strategy.ONE_FOR_ONE, [("a", P)], "a", CRASH, RestartIntensity(max_restarts=0), 0.0
    )
    assert plan == RestartPlan(escalate=True)


def test_unknown_child_raises_key_error() -> None:
    with pytest.raises(KeyError, match="'zed' is not supervised"):
        plan_restart(Strategy.ONE_FOR_ONE, [("a", P)], "zed", CRASH, RestartIntensity(), 0.0)


def test_duplicate_child_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        plan_restart(
            Strategy.ONE_FOR_ONE, [("a", P), ("a", T)], "a", CRASH, RestartIntensity(), 0.0
        )


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        plan_restart("bogus", [("a", P)], "a", CRASH, RestartIntensity(), 0.0)  # type: ignore[arg-type]


def test_plain_strings_work_as_enum_values() -> None:
    plan = plan_restart(
        "rest_for_one",  # type: ignore[arg-type]
        [("a", "permanent"), ("b", "temporary")],  # type: ignore[list-item]
        "a",
        "crash",  # type: ignore[arg-type]
        RestartIntensity(),
        0.0,
    )
    assert plan == RestartPlan(stop=("b",), start=("a",), remove=("b",))


# --- restart intensity ----------------------------------------------------------------


def test_intensity_defaults_are_otp() -> None:
    intensity = RestartIntensity()
    assert (intensity.max_restarts, intensity.period) == (3, 5.0)


def test_exactly_max_restarts_in_period_is_fine_one_more_exceeds() -> None:
    intensity = RestartIntensity(max_restarts=3, period=5)
    assert [intensity.record(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert intensity.recent(2.0) == 3
    assert intensity.record(3.0) is False


def test_restarts_expire_after_the_period() -> None:
    intensity = RestartIntensity(max_restarts=3, period=5)
    for t in (0.0, 1.0, 2.0):
        assert intensity.record(t)
    # A restart exactly `period` old still counts (OTP keeps R >= Now - Period).
    assert intensity.recent(5.0) == 3
    assert intensity.record(5.5) is True
    assert intensity.recent(5.5) == 3
    assert intensity.recent(100.0) == 0
    assert intensity.record(100.0) is True


def test_restart_exactly_period_old_still_counts() -> None:
    intensity = RestartIntensity(max_restarts=1, period=5)
    assert intensity.record(0.0)
    assert intensity.record(5.0) is False
    fresh = RestartIntensity(max_restarts=1, period=5)
    assert fresh.record(0.0)
    assert fresh.record(5.001) is True


def test_intensity_keeps_a_bounded_history() -> None:
    intensity = RestartIntensity(max_restarts=2, period=1000)
    for i in range(10_000):
        intensity.record(float(i) / 100)
    assert intensity.recent(100.0) == 3


def test_reset_forgets_restarts() -> None:
    intensity = RestartIntensity(max_restarts=1, period=10)
    intensity.record(0.0)
    intensity.reset()
    assert intensity.recent(0.0) == 0
    assert intensity.record(1.0)
    assert "max_restarts=1" in repr(intensity)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_restarts": -1}, "max_restarts"),
        ({"max_restarts": 2.0}, "max_restarts"),
        ({"max_restarts": True}, "max_restarts"),
        ({"period": 0}, "period"),
        ({"period": -1.0}, "period"),
        ({"period": math.nan}, "period"),
        ({"period": math.inf}, "period"),
    ],
)
def test_intensity_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"RestartIntensity\.{field}\b"):
        RestartIntensity(**kwargs)  # type: ignore[arg-type]


@given(
    st.integers(0, 5),
    st.floats(0.1, 20),
    st.lists(st.floats(0, 10), max_size=60),
)
def test_intensity_matches_a_naive_oracle(
    max_restarts: int, period: float, gaps: list[float]
) -> None:
    intensity = RestartIntensity(max_restarts, period)
    history: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        history.append(now)
        in_window = sum(1 for t in history if now - t <= period)
        assert intensity.record(now) is (in_window <= max_restarts)
        assert intensity.recent(now) == min(in_window, max_restarts + 1)


# --- plans against a naive oracle -----------------------------------------------------


def oracle(
    strategy: Strategy,
    children: list[tuple[str, RestartType]],
    exited: str,
    exit: ExitKind,
    allowed: bool,
) -> RestartPlan:
    types = dict(children)
    order = [c for c, _ in children]
    if not SHOULD_RESTART[types[exited], exit]:
        return RestartPlan(remove=(exited,))
    if not allowed:
        return RestartPlan(stop=tuple(c for c in reversed(order) if c != exited), escalate=True)
    i = order.index(exited)
    if strategy is Strategy.ONE_FOR_ONE:
        affected = [exited]
    elif strategy is Strategy.ONE_FOR_ALL:
        affected = order
    else:
        affected = order[i:]
    stop, start, remove = [], [], []
    for c in reversed(affected):
        if c != exited:
            stop.append(c)
    for c in affected:
        if c == exited or types[c] is not X:
            start.append(c)
        else:
            remove.append(c)
    return RestartPlan(stop=tuple(stop), start=tuple(start), remove=tuple(remove))


plan_inputs = st.lists(
    st.tuples(st.text("abcdefgh", min_size=1, max_size=3), st.sampled_from(RestartType)),
    min_size=1,
    max_size=8,
    unique_by=lambda child: child[0],
).flatmap(
    lambda children: st.tuples(
        st.sampled_from(Strategy),
        st.just(children),
        st.sampled_from([c for c, _ in children]),
        st.sampled_from(ExitKind),
        st.integers(0, 3),
    )
)


@given(plan_inputs)
def test_plans_match_oracle_and_keep_start_order(
    inputs: tuple[Strategy, list[tuple[str, RestartType]], str, ExitKind, int],
) -> None:
    strategy, children, exited, exit, already = inputs
    intensity = RestartIntensity(max_restarts=2, period=10)
    for t in range(already):
        intensity.record(float(t))
    allowed = already < 2
    plan = plan_restart(strategy, children, exited, exit, intensity, now=float(already))
    assert plan == oracle(strategy, children, exited, exit, allowed)

    position = {c: i for i, (c, _) in enumerate(children)}
    assert set(plan.start) <= position.keys()
    assert set(plan.stop) <= position.keys()
    assert set(plan.remove) <= position.keys()
    starts = [position[c] for c in plan.start]
    assert starts == sorted(starts)
    stops = [position[c] for c in plan.stop]
    assert stops == sorted(stops, reverse=True)
    assert exited not in plan.stop
    assert not set(plan.start) & set(plan.remove)
    if not plan.escalate:
        assert set(plan.stop) <= set(plan.start) | set(plan.remove)
        assert (exited in plan.start) != (exited in plan.remove)
