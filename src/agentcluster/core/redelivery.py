"""What a sender does when a delivery attempt was refused: the retry rule of ``send``/``call``.

One retry owner per hop (DESIGN, "Signals and delivery"): the sender. After a refusal it
follows a ``moved`` answer at once, to the node named (a bounded number of times in a row,
so two nodes that each point at the other cannot loop); gives up on a refusal that is not
retryable; and otherwise tries again with the same id — at once when only the
acknowledgement was missing, after the policy's backoff when the receiver said "not now"
(mailbox full, starting, overloaded). The deadline bounds everything: the shell stops at it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from agentcluster.core.retry import RetryPolicy

__all__ = ["Next", "Step", "after_refusal"]


class Next(StrEnum):
    FOLLOW_MOVE = "follow_move"
    """Resolve again (or take the node the refusal names) and send at once."""
    RETRY = "retry"
    """Send again with the same id after ``Step.delay`` seconds."""
    GIVE_UP = "give_up"
    """Not retryable: fail with the refusal's error."""
    EXHAUSTED = "exhausted"
    """The policy allows no more retries: fail as at the deadline."""


@dataclass(frozen=True, slots=True)
class Step:
    next: Next
    delay: float = 0.0


def after_refusal(
    *,
    moved: bool,
    retryable: bool,
    ack_lost: bool,
    moves: int,
    max_moves: int,
    retry: int,
    policy: RetryPolicy,
    rng: random.Random,
    time_left: float,
) -> Step:
    """The next step after a refusal; ``moves`` moves followed in a row so far, ``retry``
    the 1-based number of the retry this step would be."""
    if moved and moves < max_moves:
        return Step(Next.FOLLOW_MOVE)
    if not retryable:
        return Step(Next.GIVE_UP)
    if not policy.should_retry(retry):
        return Step(Next.EXHAUSTED)
    if ack_lost:
        return Step(Next.RETRY)
    return Step(Next.RETRY, max(0.0, min(policy.delay(retry, rng), time_left)))
