"""The reservation that goes with moving an agent to another node (a failover or a drain).

A move reserves the agent's resources on its target under the new agent incarnation
before the registry entry is rewritten, so two moves never overcommit a node; a move that
is then not written gives its reservation back. Both are best effort beyond that: a
reservation left behind is collected by the resource manager.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from agentcluster.core.failover import MoveTo
from agentcluster.core.reservations import Reservation
from agentcluster.errors import AgentClusterError, NoAvailableNode

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = ["release_move", "reserve_move"]

_log = logging.getLogger("agentcluster.cluster.moves")


async def reserve_move(node: ClusterNode, move: MoveTo) -> bool:
    """Reserve ``move``'s resources on its target; False when it has no room (or the store
    did not answer)."""
    reservations = node.reservations
    record = node.members().get(move.node)
    if reservations is None or record is None:
        return False
    try:
        await reservations.reserve(
            move.node,
            record.capacity,
            Reservation(move.agent_id, move.agent_incarnation, dict(move.resources)),
        )
    except NoAvailableNode:
        return False
    except AgentClusterError as error:
        _log.info("reservation for %r on %r failed: %s", move.agent_id, move.node, error)
        return False
    return True


async def release_move(node: ClusterNode, move: MoveTo) -> None:
    """Give back the reservation of a move that was not written."""
    reservations = node.reservations
    if reservations is None:
        return
    with contextlib.suppress(AgentClusterError):
        await reservations.release(move.node, [(move.agent_id, move.agent_incarnation)])
