"""Locks and group elections across real node processes (``agentcluster node``) over a real
nats-server: ``kill -9`` of a lock holder hands the lock to a waiter with a higher fencing
token; ``kill -9`` of a group leader elects a survivor with a higher term."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentcluster import Signal
from agentcluster.cluster import Cluster
from agentcluster.cluster.coordination.locks import check_token
from agentcluster.errors import LockLost
from agentcluster.testing.nats_server import NatsServer
from agentcluster.testing.node_process import NodeProcess
from agentcluster.testing.waiting import eventually
from tests.multiprocess.conftest import Nodes, client

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.timeout(60)]

THREE = ("n1", "n2", "n3")
MODULE = "agentcluster.examples.coordination_workers"


async def start(nodes: Nodes, url: str, kind: str) -> dict[str, NodeProcess]:
    """One agent of ``kind`` per node (``<kind lowercased>-<node>``), started together."""
    procs = {n: nodes.spawn(url, n, agents=[f"{MODULE}:{kind}"]) for n in THREE}
    for proc in procs.values():
        proc.start(wait=None)
    for proc in procs.values():
        await asyncio.to_thread(proc.wait_event, "ready", 30.0)
    return procs


async def call(cluster: Cluster, agent: str, type_: str, **data: Any) -> Any:
    return await cluster.call(agent, Signal(type_, data), timeout=20)


async def test_kill_9_of_a_lock_holder_hands_the_lock_to_a_waiter(
    fresh_nats_server: NatsServer, nodes: Nodes
) -> None:
    url = fresh_nats_server.url
    procs = await start(nodes, url, "LockWorker")
    loop = asyncio.get_running_loop()
    async with client(url) as cluster:
        await eventually(lambda: len(cluster.find_by_capability("lock-worker")) == 3, 10)
        first = await call(cluster, "lockworker-n1", "lock.acquire", name="job", timeout=5)
        assert (first["node"], first["owner"]) == ("n1", "lockworker-n1")
        waiting = {
            n: asyncio.create_task(
                call(cluster, f"lockworker-{n}", "lock.acquire", name="job", timeout=15)
            )
            for n in ("n2", "n3")
        }
        killed_at = loop.time()
        procs["n1"].kill()
        done, _ = await asyncio.wait(
            waiting.values(), timeout=10, return_when=asyncio.FIRST_COMPLETED
        )
        waited = loop.time() - killed_at
        assert len(done) == 1, "exactly one waiter takes the lock over"
        winner = next(n for n, task in waiting.items() if task in done)
        loser = next(n for n in waiting if n != winner)
        taken = waiting[winner].result()
        assert taken["node"] == winner
        assert taken["token"] > first["token"]
        # Declared dead about 1 s after its last renewal, then a watch delivery and a write.
        assert waited < 4.0, waited
        assert cluster.members()["n1"].status.value == "dead"
        # The dead holder's token fails from every view; the new one holds. (The loser's
        # agent is busy waiting in its acquire, so the winner's is asked.)
        seen = await call(
            cluster, f"lockworker-{winner}", "lock.check", name="job", token=first["token"]
        )
        assert seen["held"] is False
        assert "taken over" in seen["reason"]
        with pytest.raises(LockLost):
            await check_token(cluster.node(cluster.nodes[0]), "job", first["token"])
        own = await call(cluster, f"lockworker-{winner}", "lock.check", name="job")
        assert own == {"held": True, "token": taken["token"], "owner": f"lockworker-{winner}"}
        # The other waiter is still waiting; it gets the lock once the winner lets go.
        assert not waiting[loser].done()
        released = await call(cluster, f"lockworker-{winner}", "lock.release", name="job")
        assert released == {"released": True, "token": taken["token"]}
        last = await asyncio.wait_for(waiting[loser], 10)
        assert last["node"] == loser
        assert last["token"] > taken["token"]


async def test_kill_9_of_the_group_leader_elects_a_survivor(
    fresh_nats_server: NatsServer, nodes: Nodes
) -> None:
    url = fresh_nats_server.url
    procs = await start(nodes, url, "ElectionMember")
    async with client(url) as cluster:
        await eventually(lambda: len(cluster.find_by_capability("election-member")) == 3, 10)

        async def statuses(members: tuple[str, ...]) -> dict[str, dict[str, Any]]:
            return {
                n: await call(cluster, f"electionmember-{n}", "election.status") for n in members
            }

        async def agreed(members: tuple[str, ...]) -> dict[str, Any] | None:
            seen = await statuses(members)
            views = {(s["leader"], s["leader_node"], s["term"]) for s in seen.values()}
            if len(views) != 1 or None in next(iter(views)):
                return None
            leaders = [n for n, s in seen.items() if s["is_leader"]]
            if len(leaders) != 1:
                return None
            return next(iter(seen.values())) | {"led_by": leaders[0]}

        first = await eventually(lambda: agreed(THREE), 10, 0.05)
        victim = first["leader_node"]
        assert first["led_by"] == victim
        assert first["leader"] == f"electionmember-{victim}"
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        procs[victim].kill()
        survivors = tuple(n for n in THREE if n != victim)
        second = await eventually(lambda: _moved_on(agreed(survivors), victim), 10, 0.05)
        waited = loop.time() - killed_at
        assert second["leader_node"] in survivors
        assert second["term"] > first["term"]
        assert waited < 4.0, waited
        assert cluster.members()[victim].status.value == "dead"


async def _moved_on(view: Any, victim: str) -> dict[str, Any] | None:
    found = await view
    if found is None or found["leader_node"] == victim:
        return None
    return found
