"""Votes among agents spread over a three-node memory cluster, in virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent
from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.coordination.vote import vote
from agentcluster.errors import ConfigurationError, InvalidSignal
from agentcluster.sim import VirtualClock
from agentcluster.testing.waiting import eventually


class CastVote(Action):
    """Answer a vote request with the answer this voter was started with."""

    class Params(BaseModel):
        proposal: Any
        vote_id: str

    async def run(self, params: CastVote.Params, ctx: Any) -> Any:
        if ctx.state.delay:
            await asyncio.sleep(ctx.state.delay)
        if ctx.state.fail:
            raise RuntimeError("cannot decide")
        return ctx.state.answer, ctx.set(asked=[*ctx.state.asked, params.proposal])


class LearnResult(Action):
    """Remember the outcome of a vote."""

    class Params(BaseModel):
        vote_id: str
        accepted: bool
        votes: dict[str, str]

    async def run(self, params: LearnResult.Params, ctx: Any) -> Any:
        return None, ctx.set(results=[*ctx.state.results, (params.vote_id, params.accepted)])


class Voter(Agent):
    class State(BaseModel):
        answer: Any = True
        delay: float = 0.0
        fail: bool = False
        asked: list[Any] = []
        results: list[tuple[str, bool]] = []

    routes = {"consensus.vote_request": CastVote, "consensus.result": LearnResult}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with Cluster.local(nodes=3, clock=VirtualClock(asyncio.get_running_loop())) as c:
        yield c


async def start_voters(cluster: Cluster, answers: dict[str, Any], **state: Any) -> None:
    """One voter per answer, placed on n1, n2, n3 in turn."""
    for index, (voter, answer) in enumerate(answers.items()):
        await cluster.start_agent(
            Voter, voter, node=f"n{index % 3 + 1}", state={"answer": answer, **state}
        )


def voter_state(cluster: Cluster, voter: str) -> Any:
    entry = cluster.lookup(voter)
    assert entry is not None
    return cluster.node(entry.node).local.state(voter)


async def test_a_majority_of_yes_accepts_and_every_member_learns_it(cluster: Cluster) -> None:
    answers = {"v1": True, "v2": "yes", "v3": {"vote": "yes"}, "v4": False, "v5": "no"}
    await start_voters(cluster, answers)
    result = await vote(cluster.node("n1"), list(answers), {"raise": 3}, timeout=2.0)
    assert result.accepted
    assert (result.yes, result.no, result.quorum) == (3, 2, 3)
    assert result.votes == {"v1": "yes", "v2": "yes", "v3": "yes", "v4": "no", "v5": "no"}
    assert result.reasons == {}
    assert result.notified == ("v1", "v2", "v3", "v4", "v5")
    assert result.undelivered == ()
    for voter in answers:
        await eventually(lambda v=voter: voter_state(cluster, v).results, timeout=2)
        assert voter_state(cluster, voter).results == [(result.vote_id, True)]
        assert voter_state(cluster, voter).asked == [{"raise": 3}]


async def test_missing_failing_and_invalid_votes_count_against(cluster: Cluster) -> None:
    await start_voters(cluster, {"v1": True, "v2": True, "v3": "maybe"})
    await cluster.start_agent(Voter, "broken", node="n2", state={"fail": True})
    group = ["v1", "v2", "v3", "broken", "ghost"]
    result = await vote(cluster.node("n1"), group, "p", timeout=2.0)
    assert not result.accepted
    assert (result.yes, result.no, result.quorum) == (2, 0, 3)
    assert result.votes == {
        "v1": "yes",
        "v2": "yes",
        "v3": "invalid",
        "broken": "error",
        "ghost": "unavailable",
    }
    assert "'maybe'" in result.reasons["v3"]
    assert "cannot decide" in result.reasons["broken"]
    assert "AgentNotFound" in result.reasons["ghost"]
    assert result.notified == ("v1", "v2", "v3", "broken")
    assert result.undelivered == ("ghost",)
    for voter in result.notified:
        await eventually(lambda v=voter: voter_state(cluster, v).results, timeout=2)
        assert voter_state(cluster, voter).results == [(result.vote_id, False)]
    letters = cluster.node("n1").local.dead_letters.list()
    assert [
        (d.signal.type, d.agent_id) for d in letters if d.signal.type == "consensus.result"
    ] == [("consensus.result", "ghost")]


@pytest.mark.parametrize(
    ("quorum", "accepted", "needed"),
    [
        ("majority", True, 3),
        ("all", False, 5),
        (2, True, 2),
        (4, False, 4),
        (0.6, True, 3),
        (0.61, False, 4),
        (1.0, False, 5),
    ],
)
async def test_quorum_rules(cluster: Cluster, quorum: Any, accepted: bool, needed: int) -> None:
    answers = {"v1": True, "v2": True, "v3": True, "v4": False, "v5": "no"}
    await start_voters(cluster, answers)
    result = await vote(cluster.node("n1"), list(answers), "p", quorum=quorum, timeout=2.0)
    assert (result.accepted, result.quorum, result.yes) == (accepted, needed, 3)


async def test_a_bad_vote_is_refused_before_anyone_is_asked(cluster: Cluster) -> None:
    await start_voters(cluster, {"v1": True, "v2": True})
    node = cluster.node("n1")
    with pytest.raises(ConfigurationError):
        await vote(node, ["v1", "v2"], "p", quorum=3, timeout=1.0)
    with pytest.raises(ConfigurationError):
        await vote(node, [], "p", timeout=1.0)
    with pytest.raises(ConfigurationError):
        await vote(node, ["v1", "v1"], "p", timeout=1.0)
    with pytest.raises(ConfigurationError):
        await vote(node, ["v1"], "p", timeout=0)
    with pytest.raises(InvalidSignal):
        await vote(node, ["v1"], object(), timeout=1.0)
    assert voter_state(cluster, "v1").asked == []


async def test_a_member_whose_node_dies_mid_vote_is_counted_and_the_rest_learn(
    cluster: Cluster,
) -> None:
    loop = asyncio.get_running_loop()
    await cluster.start_agent(Voter, "v1", node="n1")
    await cluster.start_agent(Voter, "v2", node="n2")
    await cluster.start_agent(Voter, "slow", node="n3", state={"delay": 0.5})
    started = loop.time()
    running = asyncio.create_task(vote(cluster.node("n1"), ["v1", "v2", "slow"], "p", timeout=2.0))
    await asyncio.sleep(0.1)
    await cluster.kill_node("n3")
    result = await running
    assert loop.time() - started <= 2.0 + 0.01
    assert result.accepted
    assert result.votes["slow"] in ("timed_out", "unavailable")
    assert result.votes["v1"] == result.votes["v2"] == "yes"
    assert result.undelivered == ("slow",)
    for voter in ("v1", "v2"):
        await eventually(lambda v=voter: voter_state(cluster, v).results, timeout=2)
        assert voter_state(cluster, voter).results == [(result.vote_id, True)]
    letters = cluster.node("n1").local.dead_letters.list()
    assert any(d.signal.type == "consensus.result" and d.agent_id == "slow" for d in letters)
