import dataclasses
import itertools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.retry import NO_RETRY, RetryPolicy
from agentcluster.errors import ConfigurationError


def naive_delay(policy: RetryPolicy, retry: int) -> float:
    """The un-jittered delay by repeated multiplication, capped at every step."""
    d = policy.base_delay
    for _ in range(retry - 1):
        d = min(policy.max_delay, d * policy.factor)
    return min(policy.max_delay, d)


policies = st.builds(
    lambda max_retries, base, factor, extra, jitter: RetryPolicy(
        max_retries=max_retries,
        base_delay=base,
        factor=factor,
        max_delay=base + extra,
        jitter=jitter,
    ),
    st.integers(0, 30),
    st.floats(0, 10),
    st.floats(1, 10),
    st.floats(0, 100),
    st.floats(0, 1),
)


def test_defaults_run_once() -> None:
    assert RetryPolicy() == NO_RETRY
    assert NO_RETRY.max_retries == 0
    assert not NO_RETRY.should_retry(1)
    assert list(NO_RETRY.delays(random.Random(0))) == []


def test_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        NO_RETRY.max_retries = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("retry", "allowed"), [(1, True), (2, True), (3, True), (4, False), (100, False)]
)
def test_should_retry(retry: int, allowed: bool) -> None:
    assert RetryPolicy(max_retries=3).should_retry(retry) is allowed


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            RetryPolicy(max_retries=6, base_delay=0.1, factor=2, max_delay=1, jitter=0),
            [0.1, 0.2, 0.4, 0.8, 1.0, 1.0],
        ),
        (
            RetryPolicy(max_retries=4, base_delay=0.5, factor=1, max_delay=0.5, jitter=0),
            [0.5, 0.5, 0.5, 0.5],
        ),
        (
            RetryPolicy(max_retries=4, base_delay=1, factor=3, max_delay=10, jitter=0),
            [1, 3, 9, 10],
        ),
        (RetryPolicy(max_retries=3, base_delay=0, max_delay=0), [0, 0, 0]),
    ],
)
def test_unjittered_delays_grow_then_cap(policy: RetryPolicy, expected: list[float]) -> None:
    assert list(policy.delays(random.Random(0))) == pytest.approx(expected)


def test_huge_retry_number_is_capped_not_overflowing() -> None:
    policy = RetryPolicy(max_retries=10_000, base_delay=1, factor=10, max_delay=30, jitter=0)
    assert policy.delay(5_000, random.Random(0)) == 30


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy().delay(0, random.Random(0))


def test_no_jitter_draws_nothing() -> None:
    rng = random.Random(7)
    state = rng.getstate()
    RetryPolicy(max_retries=3, jitter=0).delay(2, rng)
    assert rng.getstate() == state


def test_full_jitter_spans_zero_to_delay() -> None:
    policy = RetryPolicy(max_retries=1, base_delay=1, max_delay=1, jitter=1)
    rng = random.Random(1)
    samples = [policy.delay(1, rng) for _ in range(2000)]
    assert min(samples) >= 0
    assert max(samples) <= 1
    assert min(samples) < 0.05
    assert max(samples) > 0.95


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"base_delay": -0.1}, "base_delay"),
        ({"base_delay": math.nan}, "base_delay"),
        ({"base_delay": "1"}, "base_delay"),
        ({"factor": 0.5}, "factor"),
        ({"factor": -2}, "factor"),
        ({"max_delay": -1}, "max_delay"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"base_delay": 2, "max_delay": 1}, "max_delay"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"RetryPolicy\.{field}\b"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@given(policies, st.integers(1, 200), st.integers(0, 2**32))
def test_delay_within_jitter_band_of_exponential(
    policy: RetryPolicy, retry: int, seed: int
) -> None:
    d = naive_delay(policy, retry)
    got = policy.delay(retry, random.Random(seed))
    tolerance = 1e-9 * max(1.0, d)
    assert d * (1 - policy.jitter) - tolerance <= got <= d + tolerance
    assert 0 <= got <= policy.max_delay


@given(policies, st.integers(0, 2**32))
def test_delays_are_reproducible_for_a_seed(policy: RetryPolicy, seed: int) -> None:
    first = list(policy.delays(random.Random(seed)))
    assert first == list(policy.delays(random.Random(seed)))
    assert len(first) == policy.max_retries


@given(policies)
def test_unjittered_delays_are_exponential_until_capped(policy: RetryPolicy) -> None:
    policy = dataclasses.replace(policy, jitter=0)
    delays = list(policy.delays(random.Random(0)))
    for previous, current in itertools.pairwise(delays):
        if current < policy.max_delay:
            assert current == pytest.approx(previous * policy.factor)
        else:
            assert current == policy.max_delay
            assert previous * policy.factor >= policy.max_delay * (1 - 1e-9)
    assert delays == sorted(delays)
