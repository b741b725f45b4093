"""Draining a quarantined node: its persistent agents handed off, while it is alive.

Theory of operation. A quarantine record with ``drain`` set asks that the node's agents
move. Every node runs a ``Drainer`` that follows its *own* record (the ``QuarantineBook``
every node keeps): while the record says ``quarantined`` with ``drain``, it plans a pass in
``core.drain`` (targets by each agent's placement; quarantined nodes are never chosen)
and hands each planned agent off, a few at a time:

1. reserve the agent's resources on the target (as a failover does);
2. refuse new signals for it (``keeper.running`` off: senders get a retryable
   ``starting`` and keep retrying);
3. wait, bounded, until its mailbox is empty and nothing runs (what was accepted is
   applied here, so nothing a sender was told is lost);
4. commit a last snapshot (replies and emitted signals it covers are released);
5. move the registry entry by compare-and-set to ``{target, node incarnation, agent
   incarnation + 1, status: starting}``; the target activates it by the one activation
   path, from that snapshot;
6. stop the local instance (fenced: the entry names a newer incarnation).

A hand-off that cannot finish — the mailbox does not empty in time, the snapshot does not
commit, the entry moved meanwhile — resumes the agent where it is (step 2 undone) and
releases the reservation; the next pass tries again. A write whose outcome is unknown is
read back: if the entry moved, the hand-off completed. Plain agents stay (they live and die
with their node), and so do system agents, which every node runs for itself.

The drain ends when the record is released, put on probation, or has no ``drain``:
nothing is moved back (placement spreads new agents there again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from agentcluster.cluster.buckets import stop_task
from agentcluster.cluster.moves import release_move, reserve_move
from agentcluster.cluster.placement import Placer
from agentcluster.cluster.quarantine import quarantine_book
from agentcluster.core.drain import DrainPlan, plan_drain
from agentcluster.core.failover import MoveTo
from agentcluster.core.registry import AgentStatus
from agentcluster.errors import AgentClusterError, AgentFenced, RevisionMismatch

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = ["AGENT_DRAINED", "DrainConfig", "Drainer"]

_log = logging.getLogger("agentcluster.cluster.drain")

AGENT_DRAINED = ("agentcluster", "health", "drained")
"""Telemetry: one agent handed off a quarantined node (``agent_id``, ``node_id``, ``to``)."""


@dataclass(frozen=True, slots=True)
class DrainConfig:
    interval: float = 1.0
    """Seconds between looks at this node's quarantine record."""
    settle_timeout: float = 5.0
    """Seconds a hand-off waits for the agent's mailbox to empty."""
    snapshot_timeout: float = 5.0
    """Seconds a hand-off waits for the last snapshot to commit."""
    concurrency: int = 8
    """Hand-offs at once."""


class Drainer:
    """Runs on every node; moves its agents only while its own quarantine asks for it."""

    def __init__(self, node: ClusterNode, config: DrainConfig | None = None) -> None:
        self._node = node
        self.config = config or DrainConfig()
        self._placer = Placer(node, seed=f"{node.node_id}/drain")
        self._rng = random.Random(f"{node.node_id}/drain")
        self._task: asyncio.Task[None] | None = None
        self.moved = 0
        self.stayed: dict[str, str] = {}
        """The agents the last pass left here, with why (``plain``, ``no_capacity``...)."""
        self.abandoned = 0
        """Hand-offs given up (resumed here) for the next pass to try again."""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"drain:{self._node.node_id}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)

    def wanted(self) -> bool:
        """This node's quarantine record asks for a drain now."""
        book = quarantine_book(self._node.local.services)
        record = None if book is None else book.record(self._node.node_id)
        return record is not None and record.draining

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval)
            node = self._node
            if node.stopped or node.liveness is None or not node.liveness.valid():
                continue
            if not self.wanted():
                continue
            try:
                await self.run_pass()
            except AgentClusterError as error:
                _log.warning("drain pass on %r failed: %s", node.node_id, error)

    def plan(self) -> DrainPlan:
        node = self._node
        registry = node._registry()
        entries = []
        for agent_id in registry.user_agents(node.node_id):
            entry = registry.lookup(agent_id)
            revision = registry.revision_of(agent_id)
            if entry is not None and revision is not None:
                entries.append((entry, revision))
        leader = None if node.liveness is None else node.liveness.leader()
        return plan_drain(
            node.node_id,
            entries,
            node.members(),
            self._placer.views(),
            rng=self._rng,
            leader=None if leader is None else leader[0],
        )

    async def run_pass(self) -> int:
        """Plan and carry out one pass; returns the agents handed off."""
        plan = self.plan()
        self.stayed = {stay.agent_id: stay.reason for stay in plan.stays}
        gate = asyncio.Semaphore(self.config.concurrency)

        async def one(move: MoveTo) -> bool:
            async with gate:
                return await self.hand_off(move)

        done = await asyncio.gather(*(one(move) for move in plan.moves))
        return sum(done)

    async def hand_off(self, move: MoveTo) -> bool:
        """Move one agent (module docstring); False when it stays here for now."""
        node = self._node
        keeper = node.keepers.get(move.agent_id)
        server = None if keeper is None else keeper.server
        if keeper is None or server is None or not keeper.running:
            return False
        if move.resources and not await reserve_move(self._node, move):
            return False
        keeper.running = False
        moved = False
        try:
            moved = await self._hand_off(move, keeper, server)
        finally:
            if not moved:
                self.abandoned += 1
                if keeper.fenced is None and node.keepers.get(move.agent_id) is keeper:
                    keeper.running = True
                if move.resources:
                    await release_move(self._node, move)
        return moved

    async def _hand_off(self, move: MoveTo, keeper: Any, server: Any) -> bool:
        node = self._node
        config = self.config
        clock = node.local.clock
        deadline = clock.monotonic() + config.settle_timeout
        while not server.settled:
            if clock.monotonic() >= deadline or keeper.fenced is not None:
                _log.info("drain: %r did not settle in time; it stays for now", move.agent_id)
                return False
            await asyncio.sleep(0.01)
        await keeper.final_snapshot(config.snapshot_timeout)
        scheduler = keeper.scheduler
        if keeper.fenced is not None or scheduler.committed_version < scheduler.latest_version:
            _log.info("drain: the last snapshot of %r did not commit", move.agent_id)
            return False
        registry = node._registry()
        entry = registry.lookup(move.agent_id)
        if entry is None or registry.revision_of(move.agent_id) != move.revision:
            return False
        changed = replace(
            entry,
            node=move.node,
            node_incarnation=move.node_incarnation,
            incarnation=move.agent_incarnation,
            status=AgentStatus.STARTING,
            reason=None,
            stamp=node._stamp(),
        )
        try:
            await registry.write_at(changed, move.revision)
        except RevisionMismatch:
            return False
        except AgentClusterError as error:
            found = await self._read_back(move)
            if found is None or found.incarnation < move.agent_incarnation:
                _log.info("drain: moving %r not written: %s", move.agent_id, error)
                return False
        keeper._fence(AgentFenced(move.agent_id, keeper.incarnation, move.agent_incarnation))
        self.moved += 1
        telemetry = node.local.telemetry
        if telemetry.enabled:
            telemetry.emit(
                AGENT_DRAINED,
                {"count": 1},
                {"agent_id": move.agent_id, "node_id": node.node_id, "to": move.node},
            )
        _log.info("drain: %r handed off %r to %r", node.node_id, move.agent_id, move.node)
        return True

    async def _read_back(self, move: MoveTo) -> Any:
        with contextlib.suppress(AgentClusterError):
            found = await self._node._registry().read(move.agent_id)
            return None if found is None else found[0]
        return None
