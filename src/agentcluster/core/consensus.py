"""Voting among a group of agents: what an answer means, how many yes votes a quorum needs,
and whether the proposal is accepted.

Theory of operation. A coordinator asks every member of a group for a vote on one proposal
and classifies each member's outcome as a ``Ballot``: ``yes`` or ``no`` when the member
answered with a recognised vote (``parse_ballot``), ``invalid`` when it answered with
anything else, and ``unavailable``, ``timed_out`` or ``error`` when no answer came (the
shell decides which from the delivery error). Only ``yes`` counts towards the quorum.

The quorum is a number of yes votes over the **whole group**, not over those who answered,
so a member that is down or silent counts against the proposal exactly as a ``no`` does:

- ``"majority"`` — more than half: ``n // 2 + 1``;
- ``"all"`` — every member: ``n``;
- an ``int`` ``k`` — at least ``k`` (``1 <= k <= n``);
- a ``float`` ``f`` in ``(0, 1]`` — at least ``ceil(f * n)``, at least 1, with ``f`` read as
  the decimal it was written as (``0.1 * 10`` needs 1, not 2).

``tally`` needs a ballot for every member; it is a pure function of the group, the
ballots and the rule, so the shell's only job is to collect ballots within its deadline.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any, Literal, TypeAlias

from agentcluster.errors import ConfigurationError

__all__ = ["Ballot", "Quorum", "Tally", "parse_ballot", "quorum_size", "tally"]

Quorum: TypeAlias = Literal["majority", "all"] | int | float
"""How many yes votes accept a proposal (see the module docstring)."""

_FLOAT_PRECISION = 1_000_000
"""A float quorum is read as the nearest fraction with at most this denominator, so the
binary rounding of ``0.1`` does not push ``ceil(0.1 * 10)`` up to 2."""


class Ballot(StrEnum):
    """One member's outcome in a vote."""

    YES = "yes"
    NO = "no"
    INVALID = "invalid"
    """The member answered, but not with a vote ``parse_ballot`` recognises."""
    UNAVAILABLE = "unavailable"
    """The member is not registered, or its node is gone."""
    TIMED_OUT = "timed_out"
    """The member did not answer before the vote's deadline."""
    ERROR = "error"
    """The member's action failed, or the delivery failed in another way."""


_WORDS = {"yes": Ballot.YES, "no": Ballot.NO}


def parse_ballot(answer: Any) -> Ballot:
    """The ballot an answer stands for: ``True`` / ``"yes"`` / ``{"vote": True}`` /
    ``{"vote": "yes"}`` are yes, their ``False`` / ``"no"`` counterparts are no (words are
    matched without regard to case or surrounding spaces); anything else — ``1``, ``None``,
    ``"maybe"``, a dict without ``vote`` or with a nested one — is ``INVALID``, so a member
    answering the wrong question is named rather than counted either way."""
    if isinstance(answer, Mapping):
        if set(answer) != {"vote"}:
            return Ballot.INVALID
        answer = answer["vote"]
        if isinstance(answer, Mapping):
            return Ballot.INVALID
    if isinstance(answer, bool):
        return Ballot.YES if answer else Ballot.NO
    if isinstance(answer, str):
        return _WORDS.get(answer.strip().lower(), Ballot.INVALID)
    return Ballot.INVALID


def quorum_size(rule: Quorum, members: int) -> int:
    """The yes votes needed to accept among ``members`` (>= 1) under ``rule``.

    Raises ``ConfigurationError`` for a rule that is not one of the four forms, or that no
    group of this size could ever meet (an ``int`` above ``members``, a fraction above 1).
    """
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ConfigurationError(f"a vote needs at least one member, not {members!r}")
    if rule == "majority":
        return members // 2 + 1
    if rule == "all":
        return members
    if isinstance(rule, bool):
        raise ConfigurationError(f"quorum must be 'majority', 'all', an int or a float: {rule!r}")
    if isinstance(rule, int):
        if not 1 <= rule <= members:
            raise ConfigurationError(
                f"quorum {rule} cannot be met by a group of {members}: give 1..{members}"
            )
        return rule
    if isinstance(rule, float):
        if not (math.isfinite(rule) and 0.0 < rule <= 1.0):
            raise ConfigurationError(f"a fractional quorum must be in (0, 1], not {rule!r}")
        share = Fraction(rule).limit_denominator(_FLOAT_PRECISION)
        return max(1, math.ceil(share * members))
    raise ConfigurationError(f"quorum must be 'majority', 'all', an int or a float: {rule!r}")


@dataclass(frozen=True, slots=True)
class Tally:
    """The counted vote: ``accepted`` when ``yes >= quorum``; ``counts`` has every ballot
    kind (zero included), so a report can show why a proposal fell short."""

    accepted: bool
    yes: int
    no: int
    quorum: int
    members: int
    counts: Mapping[Ballot, int]


def tally(group: Sequence[str], ballots: Mapping[str, Ballot], rule: Quorum) -> Tally:
    """Count the ballots of ``group`` under ``rule``.

    ``group`` must name each member once and ``ballots`` must hold exactly one ballot per
    member (a ``ConfigurationError`` otherwise): an absent member is for the caller to
    classify — down, silent or failed — not for the tally to guess.
    """
    members = list(group)
    twice = sorted(m for m, n in Counter(members).items() if n > 1)
    if twice:
        raise ConfigurationError(f"a vote's group names members more than once: {twice}")
    needed = quorum_size(rule, len(members))
    missing = [m for m in members if m not in ballots]
    extra = sorted(set(ballots) - set(members))
    if missing or extra:
        raise ConfigurationError(
            f"ballots must match the group: missing {missing}, not members {extra}"
        )
    counted = Counter(Ballot(ballots[m]) for m in members)
    counts = {kind: counted.get(kind, 0) for kind in Ballot}
    yes = counts[Ballot.YES]
    return Tally(
        accepted=yes >= needed,
        yes=yes,
        no=counts[Ballot.NO],
        quorum=needed,
        members=len(members),
        counts=counts,
    )
