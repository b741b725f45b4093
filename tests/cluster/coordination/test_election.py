"""Group elections on ``Cluster.local`` in virtual time: one leader per term, takeover when
the leader's node dies or is cut off, resignation, and strictly increasing terms."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import pytest

from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.coordination.election import Election, elect
from agentcluster.core.coordination import Leader
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.membership import NodeStatus
from agentcluster.errors import ConfigurationError, CoordinationError, UsageError
from agentcluster.testing.waiting import eventually
from tests.cluster.coordination.conftest import now

DETECTION = LeaseTiming().death_after


class Seen:
    """Every leader each member was told of, through ``on_change``."""

    def __init__(self) -> None:
        self.changes: dict[str, list[Leader | None]] = defaultdict(list)

    def hook(self, member: str) -> Callable[[Leader | None], None]:
        return self.changes[member].append

    def leaders_by_term(self) -> dict[int, set[str]]:
        terms: dict[int, set[str]] = defaultdict(set)
        for seen in self.changes.values():
            for leader in seen:
                if leader is not None:
                    terms[leader.term].add(leader.member)
        return terms


async def join_all(cluster: Cluster, seen: Seen, group: str = "workers") -> dict[str, Election]:
    """Member ``m<i>`` on node ``n<i>``, for every node."""
    elections = {}
    for node_id in cluster.nodes:
        member = f"m{node_id[1:]}"
        elections[member] = await elect(
            cluster.node(node_id), group, member, on_change=seen.hook(member)
        )
    return elections


def agreed(elections: dict[str, Election]) -> Leader | None:
    """The leader every member names, if they agree on one."""
    views = {e.leader for e in elections.values()}
    return views.pop() if len(views) == 1 else None


async def test_members_agree_and_a_follower_takes_over_when_the_leaders_node_dies(
    cluster: Cluster,
) -> None:
    seen = Seen()
    elections = await join_all(cluster, seen)
    first = await eventually(lambda: agreed(elections), 2)
    assert first.term == 1
    leaders = [m for m, e in elections.items() if e.is_leader]
    assert leaders == [first.member]
    victim = first.node
    killed_at = now()
    await cluster.kill_node(victim)
    survivors = {m: e for m, e in elections.items() if m != first.member}
    second = await eventually(
        lambda: (lead := agreed(survivors)) is not None and lead.member != first.member and lead,
        5,
    )
    waited = now() - killed_at
    assert cluster.members()[victim].status is NodeStatus.DEAD
    assert DETECTION - 0.3 <= waited <= DETECTION + 0.3, waited
    assert second.term > first.term
    assert second.node != victim
    assert [m for m, e in survivors.items() if e.is_leader] == [second.member]
    assert all(e.term == second.term for e in survivors.values())
    # Every member was told; no term ever had two leaders.
    for member in survivors:
        assert seen.changes[member][0] == first
        assert seen.changes[member][-1] == second
    assert all(len(names) == 1 for names in seen.leaders_by_term().values())
    for election in survivors.values():
        await election.close()


async def test_resigning_hands_over_at_once_with_a_higher_term(cluster: Cluster) -> None:
    seen = Seen()
    elections = await join_all(cluster, seen)
    first = await eventually(lambda: agreed(elections), 2)
    resigned_at = now()
    await elections[first.member].resign()
    assert elections[first.member].closed
    assert not elections[first.member].is_leader
    rest = {m: e for m, e in elections.items() if m != first.member}
    second = await eventually(lambda: agreed(rest), 2)
    assert now() - resigned_at < 0.1  # long before any death detection
    assert second.term == first.term + 1
    await elections[first.member].resign()  # idempotent
    for election in rest.values():
        await election.close()


async def test_terms_strictly_increase_with_one_leader_each(cluster: Cluster) -> None:
    seen = Seen()
    elections = await join_all(cluster, seen)
    terms = []
    for _ in range(5):
        leader = await eventually(lambda: agreed(elections), 2)
        terms.append(leader.term)
        await elections[leader.member].resign()
        node = cluster.node(leader.node)
        elections[leader.member] = await elect(
            node, "workers", leader.member, on_change=seen.hook(leader.member)
        )
        await eventually(lambda t=leader.term: (a := agreed(elections)) and a.term > t, 2)
    assert terms == sorted(terms)
    assert len(set(terms)) == len(terms)
    assert all(len(names) == 1 for names in seen.leaders_by_term().values())
    for election in elections.values():
        await election.close()


async def test_a_cut_off_leader_stops_leading_before_it_is_replaced(cluster: Cluster) -> None:
    assert cluster.hub is not None
    elections = await join_all(cluster, Seen())
    first = await eventually(lambda: agreed(elections), 2)
    old = elections[first.member]
    rest = {m: e for m, e in elections.items() if m != first.member}
    cluster.hub.faults.cut_off([first.node])
    # Its own lease lapses (F) before the others may declare it dead (F + m).
    await eventually(lambda: not old.is_leader, 2)
    assert all(not e.is_leader for e in rest.values())
    second = await eventually(
        lambda: (lead := agreed(rest)) is not None and lead.member != first.member and lead, 5
    )
    assert not old.is_leader
    assert second.term > first.term
    cluster.hub.faults.reconnect_store([first.node])
    # Back in the store, it rejoined under a new incarnation and follows the new leader.
    await eventually(lambda: agreed(elections) == second, 5)
    assert [m for m, e in elections.items() if e.is_leader] == [second.member]
    for election in elections.values():
        await election.close()


async def test_a_campaign_whose_reply_was_lost_wins_once(cluster: Cluster) -> None:
    assert cluster.hub is not None
    faults = cluster.hub.faults
    faults.ambiguous_writes(1, apply_after=0.0)
    alone = await elect(cluster.node("n1"), "solo", "m1")
    assert [r.kind for r in faults.records if "election.solo" in r.detail] == ["ambiguous_applied"]
    assert alone.is_leader
    assert alone.terms_won == [1]
    assert await alone.wait_leader(1) == Leader("m1", "n1", cluster.node("n1").incarnation, 1)
    await alone.close()


async def test_misuse_is_refused(cluster: Cluster) -> None:
    n1 = cluster.node("n1")
    first = await elect(n1, "g", "m1")
    with pytest.raises(UsageError, match="already campaigns"):
        await elect(n1, "g", "m1")
    with pytest.raises(ConfigurationError):
        await elect(n1, "", "m1")
    other = await elect(cluster.node("n2"), "g", "m1")  # the same id elsewhere: it follows
    assert not other.is_leader
    await first.close()
    await other.close()
    assert other.leader is None
    with pytest.raises(CoordinationError, match="closed"):
        await other.wait_leader(0.1)
    again = await elect(n1, "g", "m1")  # closed handles free their place
    await again.close()
