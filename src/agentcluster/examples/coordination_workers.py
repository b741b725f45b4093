"""Agents that take a distributed lock and campaign in a group election, for the
multi-process tests and for trying coordination out by hand.

Start them on node processes with ``agentcluster node --agents
agentcluster.examples.coordination_workers:LockWorker --agents
agentcluster.examples.coordination_workers:ElectionMember``; they reach their node through
``ctx.node.services["cluster"]``.

- ``LockWorker`` (capability ``lock-worker``): ``lock.acquire {name, timeout}`` takes the
  lock for this agent and answers with its node and fencing token (an action failing with
  ``LockTimeout`` otherwise); ``lock.release {name}``; ``lock.check {name, token?}`` says
  whether a token (default: this agent's own) still holds the lock, and why not.
- ``ElectionMember`` (capability ``election-member``): campaigns in group ``workers`` from
  the moment it starts, as its agent id; ``election.status`` answers with the leader it
  sees and the term, and whether it leads.

A lock handle or an election is a live object, not agent state: it is kept per process,
keyed by agent id, and an election is closed when its agent stops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from agentcluster.agent.action import Action
from agentcluster.agent.agent import Agent
from agentcluster.cluster.coordination.election import Election, elect
from agentcluster.cluster.coordination.locks import LockHandle, acquire_lock, check_token
from agentcluster.errors import LockLost, UsageError

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = ["GROUP", "ElectionMember", "LockWorker"]

GROUP = "workers"
"""The election group every ``ElectionMember`` campaigns in."""

_locks: dict[tuple[str, str], LockHandle] = {}
"""(agent id, lock name) -> the holding that agent took in this process."""
_elections: dict[str, Election] = {}
"""agent id -> its place in the election, in this process."""


def _node(ctx: Any) -> ClusterNode:
    node: ClusterNode | None = ctx.node.services.get("cluster")
    if node is None:
        raise UsageError("coordination workers need a cluster node (services['cluster'])")
    return node


class Acquire(Action):
    """Take lock ``name`` for this agent, waiting at most ``timeout`` seconds."""

    name = "acquire"

    class Params(BaseModel):
        name: str = Field(min_length=1)
        timeout: float = Field(ge=0, le=60)

    async def run(self, params: Any, ctx: Any) -> dict[str, Any]:
        lock = await acquire_lock(
            _node(ctx), params.name, owner=ctx.agent_id, timeout=params.timeout
        )
        _locks[(ctx.agent_id, params.name)] = lock
        return {"node": lock.node_id, "owner": lock.owner, "token": lock.token}


class Release(Action):
    """Release lock ``name`` if this agent holds it; ``LockLost`` if it was taken over."""

    name = "release"

    class Params(BaseModel):
        name: str = Field(min_length=1)

    async def run(self, params: Any, ctx: Any) -> dict[str, Any]:
        lock = _locks.pop((ctx.agent_id, params.name), None)
        if lock is None:
            return {"released": False}
        await lock.release()
        return {"released": True, "token": lock.token}


class Check(Action):
    """Whether ``token`` (default: this agent's own holding) still holds lock ``name``."""

    name = "check"

    class Params(BaseModel):
        name: str = Field(min_length=1)
        token: int | None = None

    async def run(self, params: Any, ctx: Any) -> dict[str, Any]:
        try:
            if params.token is None:
                lock = _locks.get((ctx.agent_id, params.name))
                if lock is None:
                    return {"held": False, "reason": "this agent holds no such lock"}
                await lock.check()
                return {"held": True, "token": lock.token, "owner": lock.owner}
            holder = await check_token(_node(ctx), params.name, params.token)
        except LockLost as exc:
            return {"held": False, "reason": str(exc)}
        return {"held": True, "token": holder.token, "owner": holder.owner}


class LockWorker(Agent):
    """Takes, checks and releases locks on request (module docstring)."""

    capabilities = ["lock-worker"]
    routes = {"lock.acquire": Acquire, "lock.release": Release, "lock.check": Check}
    action_timeout = 60.0


class Status(Action):
    """The leader this member sees, the term, and whether it leads."""

    name = "status"

    async def run(self, params: Any, ctx: Any) -> dict[str, Any]:
        election = _elections.get(ctx.agent_id)
        leader = None if election is None else election.leader
        return {
            "member": ctx.agent_id,
            "node": ctx.node.node_id,
            "leader": None if leader is None else leader.member,
            "leader_node": None if leader is None else leader.node,
            "term": None if leader is None else leader.term,
            "is_leader": election is not None and election.is_leader,
        }


class ElectionMember(Agent):
    """Campaigns in group ``workers`` while it runs (module docstring)."""

    capabilities = ["election-member"]
    routes = {"election.status": Status}

    async def mount(self, ctx: Any) -> None:
        previous = _elections.pop(self.id, None)
        if previous is not None:
            await previous.close()
        _elections[self.id] = await elect(_node(ctx), GROUP, self.id)

    async def shutdown(self, reason: str) -> None:
        election = _elections.pop(self.id, None)
        if election is not None:
            await election.close()
