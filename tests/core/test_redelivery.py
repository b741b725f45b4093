"""The sender's rule after a refused delivery, table-driven."""

from __future__ import annotations

import random

import pytest

from agentcluster.core.redelivery import Next, Step, after_refusal
from agentcluster.core.retry import RetryPolicy

POLICY = RetryPolicy(max_retries=3, base_delay=0.1, factor=2.0, max_delay=1.0, jitter=0.0)


def step(**kw: object) -> Step:
    args: dict[str, object] = {
        "moved": False,
        "retryable": True,
        "ack_lost": False,
        "moves": 0,
        "max_moves": 2,
        "retry": 1,
        "policy": POLICY,
        "rng": random.Random("t"),
        "time_left": 10.0,
    }
    args.update(kw)
    return after_refusal(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"moved": True}, Step(Next.FOLLOW_MOVE)),
        ({"moved": True, "moves": 2}, Step(Next.RETRY, 0.1)),  # move limit: back off instead
        ({"retryable": False}, Step(Next.GIVE_UP)),
        ({"retry": 4}, Step(Next.EXHAUSTED)),
        ({"ack_lost": True}, Step(Next.RETRY)),
        ({"retry": 3}, Step(Next.RETRY, 0.4)),
        ({"retry": 3, "time_left": 0.25}, Step(Next.RETRY, 0.25)),
        ({"time_left": -1.0}, Step(Next.RETRY, 0.0)),
    ],
)
def test_next_step(kw: dict[str, object], expected: Step) -> None:
    assert step(**kw) == expected
