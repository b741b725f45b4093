"""A vote among a group of agents on one proposal, with a quorum over the whole group.

Theory of operation. ``vote`` gives the vote an id and a deadline (``timeout`` from now)
and calls every member at once with a signal of ``signal_type`` whose data is
``{"proposal": proposal, "vote_id": id}``. A member's action answers with its vote:
``True`` / ``"yes"`` / ``{"vote": True}`` (or ``"yes"``) for yes, the ``False`` / ``"no"``
forms for no (``core.consensus.parse_ballot``); any other answer is an ``invalid`` vote.
A member that gives no vote is classified by the delivery error:

- ``unavailable`` — not registered, marked unavailable (its node died), or stopped;
- ``timed_out`` — no answer by the deadline (a node killed before it was declared dead
  looks like this);
- ``error`` — its action failed, or delivery failed in another way.

``core.consensus.tally`` then decides: the quorum counts yes votes over the whole group,
so a silent member weighs like a ``no``. The outcome is signalled with ``result_type`` and
data ``{"vote_id", "proposal", "accepted", "yes", "no", "quorum", "votes"}`` to every
member that answered (a cast: at most once, and a receiver that cannot take it
dead-letters it). A member that did not answer is not assumed to be listening: its result
signal is dead-lettered on this node with the reason its vote failed, so it is recorded in
the node's dead letters (and the durable ``DEADLETTERS`` stream), not sent into the void.

The votes are bounded by ``timeout``; the result casts return at once (only a full mailbox
of a member on this very node makes one wait, up to the result signal's own deadline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentcluster.cluster.coordination.scatter import check_timeout, gather_all, routing_of
from agentcluster.cluster.outbound import ClusterOutbound
from agentcluster.core import codec
from agentcluster.core.consensus import Ballot, Quorum, parse_ballot, quorum_size, tally
from agentcluster.core.ids import new_id
from agentcluster.core.signal import Signal
from agentcluster.errors import (
    AgentClusterError,
    AgentNotFound,
    AgentStopped,
    CallTimeout,
    ConfigurationError,
    DeliveryError,
    NodeUnavailable,
)

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = ["VoteResult", "vote"]

VOTE_DECIDED = ("agentcluster", "coordination", "vote", "decided")

_ANSWERED = frozenset({Ballot.YES, Ballot.NO, Ballot.INVALID, Ballot.ERROR})
"""Ballots of members that answered something, so the result is cast to them."""


@dataclass(frozen=True, slots=True)
class VoteResult:
    """The outcome of one vote.

    ``votes`` maps every member to ``"yes"``, ``"no"``, ``"invalid"``, ``"unavailable"``,
    ``"timed_out"`` or ``"error"``; ``reasons`` says, for each member whose vote is not
    yes or no, what it answered or what went wrong. ``quorum`` is the number of yes votes
    that was needed. ``notified`` are the members the result was cast to; ``undelivered``
    those whose result signal was dead-lettered instead.
    """

    vote_id: str
    accepted: bool
    votes: Mapping[str, str]
    yes: int
    no: int
    quorum: int
    reasons: Mapping[str, str]
    notified: tuple[str, ...]
    undelivered: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Answer:
    ballot: Ballot
    reason: str | None = None
    error: AgentClusterError | None = None


def _classify(error: AgentClusterError) -> Ballot:
    if isinstance(error, AgentNotFound | AgentStopped | NodeUnavailable):
        return Ballot.UNAVAILABLE
    if isinstance(error, CallTimeout):
        return Ballot.TIMED_OUT
    return Ballot.ERROR


async def vote(
    node: ClusterNode,
    group: Sequence[str],
    proposal: Any,
    *,
    quorum: Quorum = "majority",
    timeout: float,
    signal_type: str = "consensus.vote_request",
    result_type: str = "consensus.result",
) -> VoteResult:
    """Ask every member of ``group`` to vote on ``proposal`` (see the module docstring).

    Raises ``ConfigurationError`` for an empty group, a member named twice, a quorum the
    group cannot meet or a bad timeout, and ``InvalidSignal`` when the proposal cannot be
    encoded — before any member is asked. Member failures never raise: they are votes.
    """
    outbound, _registry = routing_of(node)
    members = list(group)
    if len(set(members)) != len(members):
        raise ConfigurationError(f"a vote's group names a member more than once: {members}")
    quorum_size(quorum, len(members))  # an impossible quorum is refused before anyone is asked
    budget = check_timeout("timeout", timeout)
    clock = node.local.clock
    vote_id = new_id()
    request = {"proposal": proposal, "vote_id": vote_id}
    started = clock.monotonic()
    codec.encode(Signal(signal_type, request), started)
    deadline = started + budget

    async def ask(member: str) -> _Answer:
        signal = Signal(signal_type, request, correlationid=vote_id, deadline=deadline)
        try:
            answer = await outbound.call(
                member, signal, timeout=max(deadline - clock.monotonic(), 0.0)
            )
        except AgentClusterError as error:
            return _Answer(_classify(error), f"{type(error).__name__}: {error}", error)
        ballot = parse_ballot(answer)
        if ballot is Ballot.INVALID:
            return _Answer(ballot, f"answered {answer!r}, which is not a yes or no vote")
        return _Answer(ballot)

    answers = dict(zip(members, await gather_all(ask(m) for m in members), strict=True))
    counted = tally(members, {m: a.ballot for m, a in answers.items()}, quorum)
    votes = {m: answers[m].ballot.value for m in members}
    outcome = {
        "vote_id": vote_id,
        "proposal": proposal,
        "accepted": counted.accepted,
        "yes": counted.yes,
        "no": counted.no,
        "quorum": counted.quorum,
        "votes": votes,
    }
    result_deadline = clock.monotonic() + budget

    def result() -> Signal:
        return Signal(result_type, outcome, correlationid=vote_id, deadline=result_deadline)

    notified = [m for m in members if answers[m].ballot in _ANSWERED]
    undelivered = [m for m in members if answers[m].ballot not in _ANSWERED]
    for member in undelivered:
        error = answers[member].error
        assert error is not None  # only a delivery error leaves a member unanswered
        node.local.dead_letter(result(), error, member)
    await gather_all(_tell(node, outbound, m, result()) for m in notified)
    node.local.telemetry.emit(
        VOTE_DECIDED,
        {
            "yes": counted.yes,
            "no": counted.no,
            "quorum": counted.quorum,
            "members": counted.members,
            "duration": clock.monotonic() - started,
        },
        {"vote_id": vote_id, "accepted": counted.accepted, "votes": votes},
    )
    return VoteResult(
        vote_id=vote_id,
        accepted=counted.accepted,
        votes=votes,
        yes=counted.yes,
        no=counted.no,
        quorum=counted.quorum,
        reasons={m: a.reason for m, a in answers.items() if a.reason is not None},
        notified=tuple(notified),
        undelivered=tuple(undelivered),
    )


async def _tell(node: ClusterNode, outbound: ClusterOutbound, member: str, signal: Signal) -> None:
    """Cast the result to one member. A ``DeliveryError`` was dead-lettered where it
    arose; any other refusal (this node's router stopping, say) is dead-lettered here."""
    try:
        await outbound.cast(member, signal)
    except DeliveryError:
        pass
    except AgentClusterError as error:
        node.local.dead_letter(signal, error, member)
