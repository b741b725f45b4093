"""The drain planner: where the agents of a quarantined node go when its quarantine asks
for a drain.

Theory of operation. A quarantine keeps new placements off a node; with ``drain`` its
persistent agents are moved off too, while the node is still alive. The node itself
carries the moves out (it owns the mailboxes: a move is a hand-off, not a failover), and
this module only decides them, from the registry entries running on the node:

- a *plain* entry stays (``Stay(plain)``): it lives and dies with its node;
- a *critical* or *durable* entry ``running`` on the node at its current incarnation is
  moved: ``MoveTo`` a node chosen by its spec's placement strategy among the live nodes
  (quarantined ones are excluded by the strategies themselves, this node included), at
  agent incarnation + 1; with no node able to take it, it stays (``Stay(no_capacity)``,
  with the placement's reason) and the next pass tries again;
- every other entry (starting, moving, failed, of an older incarnation) is not this
  planner's: failover reconciles those.

Each move adds its resources to its target before the next choice, as in
``core.failover``, so one pass never promises the same free slot twice; the shell's
reservation compare-and-set stays the real guard. At most ``limit`` moves per pass, in
agent-id order.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agentcluster.core.failover import (
    INVALID_SPEC,
    MOVABLE,
    NO_CAPACITY,
    MoveTo,
    PlanPlacer,
    move_to,
    placement_of,
)
from agentcluster.core.membership import NodeRecord
from agentcluster.core.node_view import NodeView
from agentcluster.core.registry import AgentEntry, AgentMode, AgentStatus
from agentcluster.errors import ConfigurationError, NoAvailableNode

__all__ = ["DRAIN_LIMIT", "DrainPlan", "Stay", "plan_drain"]

DRAIN_LIMIT = 64
"""Moves planned per pass."""

PLAIN = "plain"


@dataclass(frozen=True, slots=True)
class Stay:
    """The agent stays on the drained node: ``reason`` is ``plain``, ``no_capacity``
    (``detail``: the placement's reason) or ``invalid_spec``."""

    agent_id: str
    reason: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class DrainPlan:
    moves: tuple[MoveTo, ...]
    stays: tuple[Stay, ...]
    remaining: int = 0
    """Movable entries not examined because the limit was reached."""


def plan_drain(
    node_id: str,
    entries: Iterable[tuple[AgentEntry, int]],
    nodes: Mapping[str, NodeRecord],
    views: Iterable[NodeView],
    *,
    rng: random.Random,
    leader: str | None = None,
    limit: int = DRAIN_LIMIT,
) -> DrainPlan:
    """Plan the moves off ``node_id`` of its running entries (``(entry, revision)`` from
    the registry cache; entries of other nodes are ignored)."""
    if limit < 1:
        raise ConfigurationError(f"limit must be >= 1, not {limit!r}")
    record = nodes.get(node_id)
    here = record.incarnation if record is not None else None
    placer = PlanPlacer(nodes, views, rng, leader)
    moves: list[MoveTo] = []
    stays: list[Stay] = []
    candidates = [
        (entry, revision)
        for entry, revision in sorted(entries, key=lambda pair: pair[0].id)
        if entry.node == node_id
        and entry.node_incarnation == here
        and entry.status is AgentStatus.RUNNING
    ]
    examined = 0
    for entry, revision in candidates:
        if entry.mode is AgentMode.PLAIN:
            stays.append(Stay(entry.id, PLAIN))
            continue
        if entry.mode not in MOVABLE:
            continue
        if len(moves) >= limit:
            break
        examined += 1
        try:
            placement = placement_of(entry.spec)
        except ConfigurationError:
            stays.append(Stay(entry.id, INVALID_SPEC))
            continue
        try:
            target = placer.choose(entry.id, placement, exclude=node_id)
        except NoAvailableNode as refused:
            stays.append(Stay(entry.id, NO_CAPACITY, refused.reason))
            continue
        if target == node_id:
            stays.append(Stay(entry.id, NO_CAPACITY, "only_this_node"))
            continue
        placer.reserve(target, placement.resources)
        moves.append(move_to(entry, revision, target, nodes, placement))
    movable = sum(1 for entry, _ in candidates if entry.mode in MOVABLE)
    return DrainPlan(tuple(moves), tuple(stays), remaining=movable - examined)
