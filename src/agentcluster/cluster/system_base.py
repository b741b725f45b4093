"""What every system agent shares: its id and capabilities, and the node it serves.

A system agent reaches the ``ClusterNode`` it runs on through
``LocalNode.services["cluster"]`` (``cluster_node``); its capabilities include ``system``,
which is how anything counting "user agents" tells them apart (``is_system_agent``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from agentcluster.agent.agent import Agent
from agentcluster.agent.context import Context
from agentcluster.errors import ConfigurationError

if TYPE_CHECKING:
    from agentcluster.cluster.liveness import NodeLiveness
    from agentcluster.cluster.node import ClusterNode

__all__ = [
    "CLUSTER_SERVICE",
    "SYSTEM_CAPABILITY",
    "SystemAgent",
    "cluster_node",
    "is_system_agent",
    "liveness_started",
    "system_agent_id",
]

CLUSTER_SERVICE = "cluster"
"""The ``LocalNode.services`` key under which a node lends itself to its system agents."""

SYSTEM_CAPABILITY = "system"
"""Every system agent holds it, and ``system.<name>`` for its role."""


def system_agent_id(node_id: str, name: str) -> str:
    """The id of the system agent ``name`` (e.g. ``failure_detector``) on ``node_id``."""
    return f"system.{node_id}.{name}"


def is_system_agent(capabilities: Iterable[str]) -> bool:
    """Whether an agent with these capabilities is a system agent (not a user's)."""
    return SYSTEM_CAPABILITY in capabilities


def cluster_node(ctx: Context) -> ClusterNode:
    node = ctx.node.services.get(CLUSTER_SERVICE)
    if node is None:
        raise ConfigurationError(
            f"system agent {ctx.agent_id!r} runs on a node that lends no "
            f"services[{CLUSTER_SERVICE!r}]; start it with start_system_agents",
            agent_id=ctx.agent_id,
        )
    return node  # type: ignore[no-any-return]


def liveness_started(liveness: NodeLiveness | None) -> bool:
    # The membership, heartbeats and leadership exist once liveness has started.
    return liveness is not None and liveness.buckets is not None


class SystemAgent(Agent):
    """Base of the system agents.

    ``runs_while_paused``: a node whose lease lapsed pauses its agents, but the failure
    detector is how an operator sees that lapse, so system agents keep running. They may:
    discovery and the detector only read, and every write the keeper makes is behind the
    fence (``liveness.valid()``). Takes effect once the agent server honours the flag.
    """

    runs_while_paused: ClassVar[bool] = True
