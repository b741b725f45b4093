"""The leader's failover duty: carry out ``core.failover.plan_failover`` against the registry.

Why a loop and not a reaction: failover is reconciliation. Whatever woke it — a node
declared dead or left, this node's election, an entry that changed, a timer — the pass
reads the registry cache as it is now, plans in ``core/`` and writes each decision by
compare-and-set at the revision it was planned from. A decision that loses simply waits
for the next pass, so a leader that dies half-way strands nothing: the next leader's first
pass continues from the registry as it finds it.

Writes are pipelined: up to ``concurrency`` decisions are in flight at once, because a
node with a thousand critical agents must come back in about a second, not a thousand
round trips. A move to a node reserves the agent's resources there first (one
compare-and-set on that node's reservations key), so a failover never overcommits a node;
a move whose reservation is refused waits for the next pass.

After each pass with decisions, ``("agentcluster", "failover", "completed")`` is emitted
with the counts and the pass's duration; a decision that marks an agent ``failed`` (too many
failovers, an invalid spec) raises ``("agentcluster", "failover", "alert")`` with severity
``critical``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from agentcluster.cluster.buckets import stop_task
from agentcluster.cluster.moves import release_move, reserve_move
from agentcluster.cluster.placement import Placer
from agentcluster.core.failover import (
    ACTIVATION_TIMEOUT,
    FAILOVER_WINDOW,
    MAX_FAILOVERS,
    Decision,
    MarkFailed,
    MarkUnavailable,
    MoveTo,
    StartingSince,
    plan_failover,
)
from agentcluster.core.registry import AgentStatus
from agentcluster.errors import AgentClusterError, RevisionMismatch

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = ["FailoverConfig", "FailoverManager"]

_log = logging.getLogger("agentcluster.cluster.failover")


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    activation_timeout: float = ACTIVATION_TIMEOUT
    max_failovers: int = MAX_FAILOVERS
    failover_window: float = FAILOVER_WINDOW
    interval: float = 1.0
    """Seconds between passes when nothing wakes the loop (capacity may have appeared)."""
    concurrency: int = 64
    """Decisions written at once."""
    batch: int = 256
    """Decisions planned per pass; a pass that leaves some plans the next one at once."""


class FailoverManager:
    """Runs on every node; acts only while its node leads (see the module docstring)."""

    def __init__(
        self,
        node: ClusterNode,
        config: FailoverConfig | None = None,
        *,
        suspended: Callable[[], bool] | None = None,
    ) -> None:
        self._node = node
        self.config = config or FailoverConfig()
        self._suspended = suspended
        self._placer = Placer(node, seed=f"{node.node_id}/failover")
        self._rng = random.Random(f"{node.node_id}/failover")
        self._starting: dict[str, StartingSince] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0
        self.moved = 0
        self.marked_unavailable = 0
        self.marked_failed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"failover:{self._node.node_id}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)

    def kick(self) -> None:
        """Something changed: plan again soon."""
        self._wake.set()

    async def _loop(self) -> None:
        clock = self._node.local.clock
        deadline: float | None = None
        while True:
            timeout = self.config.interval
            if deadline is not None:
                timeout = max(1e-3, min(timeout, deadline - clock.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            deadline = None
            if not self._leading():
                self._starting.clear()
                continue
            try:
                deadline, again = await self.run_pass()
            except AgentClusterError as error:
                _log.warning("failover pass on %r failed: %s", self._node.node_id, error)
                continue
            if again:
                self._wake.set()

    def _leading(self) -> bool:
        node = self._node
        liveness = node.liveness
        if liveness is None or not liveness.is_leader or not liveness.valid():
            return False
        registry = node.registry
        return registry is not None and registry.complete

    async def run_pass(self) -> tuple[float | None, bool]:
        """One reconciliation pass; returns when to look again and whether to at once."""
        node = self._node
        registry = node._registry()
        clock = node.local.clock
        started = clock.monotonic()
        entries = []
        for entry in registry.index:
            revision = registry.revision_of(entry.id)
            if revision is not None:
                entries.append((entry, revision))
        members = node.members()
        leader = None if node.liveness is None else node.liveness.leader()
        # The failover history is in the entries (wall-clock times written with each move),
        # so any leader counts on, and a move never written never counts.
        history = {entry.id: entry.failovers for entry, _ in entries if entry.failovers}
        plan = plan_failover(
            entries,
            members,
            self._placer.views(),
            now=started,
            rng=self._rng,
            starting=self._starting,
            history=history,
            history_now=clock.wall(),
            leader=None if leader is None else leader[0],
            max_failovers=self.config.max_failovers,
            failover_window=self.config.failover_window,
            activation_timeout=self.config.activation_timeout,
            limit=self.config.batch,
        )
        self._starting = plan.starting
        if not plan.decisions:
            return plan.next_deadline, False
        moves = [d for d in plan.decisions if isinstance(d, MoveTo)]
        if moves and self._suspended is not None and self._suspended():
            _log.warning(
                "failover of %d agents suspended: fewer nodes than min_nodes are alive",
                len(moves),
            )
            decisions: tuple[Decision, ...] = tuple(
                d for d in plan.decisions if not isinstance(d, MoveTo)
            )
        else:
            decisions = plan.decisions
        gate = asyncio.Semaphore(self.config.concurrency)

        async def run(decision: Decision) -> str | None:
            async with gate:
                return await self._carry_out(decision)

        outcomes = await asyncio.gather(*(run(d) for d in decisions))
        counts = {"moved": 0, "unavailable": 0, "failed": 0, "lost": 0}
        for outcome in outcomes:
            counts[outcome or "lost"] += 1
        self.passes += 1
        self.moved += counts["moved"]
        self.marked_unavailable += counts["unavailable"]
        self.marked_failed += counts["failed"]
        duration = clock.monotonic() - started
        node.local.telemetry.emit(
            ("agentcluster", "failover", "completed"),
            {**counts, "duration": duration},
            {"node_id": node.node_id},
        )
        if counts["moved"] or counts["failed"]:
            _log.info(
                "failover pass on %r: %d moved, %d unavailable, %d failed, %d lost in %.3f s",
                node.node_id,
                counts["moved"],
                counts["unavailable"],
                counts["failed"],
                counts["lost"],
                duration,
            )
        return plan.next_deadline, plan.remaining > 0

    async def _carry_out(self, decision: Decision) -> str | None:
        node = self._node
        registry = node._registry()
        entry = registry.lookup(decision.agent_id)
        if entry is None:
            return None
        stamp = node._stamp()
        outcome: str
        if isinstance(decision, MoveTo):
            if decision.resources and not await reserve_move(self._node, decision):
                return None
            changed = replace(
                entry,
                node=decision.node,
                node_incarnation=decision.node_incarnation,
                incarnation=decision.agent_incarnation,
                status=AgentStatus.STARTING,
                reason=None,
                stamp=stamp,
                failovers=decision.failovers,
            )
            outcome = "moved"
        elif isinstance(decision, MarkUnavailable):
            reason = decision.reason
            changed = replace(entry, status=AgentStatus.UNAVAILABLE, reason=reason, stamp=stamp)
            outcome = "unavailable"
        else:
            assert isinstance(decision, MarkFailed)
            changed = replace(entry, status=AgentStatus.FAILED, reason=decision.reason, stamp=stamp)
            outcome = "failed"
        try:
            await registry.write_at(changed, decision.revision)
        except RevisionMismatch:
            if isinstance(decision, MoveTo) and decision.resources:
                await release_move(self._node, decision)
            return None
        except AgentClusterError as error:
            _log.info("failover decision for %r not written: %s", decision.agent_id, error)
            return None
        if isinstance(decision, MarkFailed) and decision.alert:
            self._alert(decision)
        return outcome

    def _alert(self, decision: MarkFailed) -> None:
        node = self._node
        _log.error(
            "CRITICAL: agent %r marked failed (%s): it will not be started again until an "
            "operator acts",
            decision.agent_id,
            decision.reason,
        )
        node.local.telemetry.emit(
            ("agentcluster", "failover", "alert"),
            {"count": 1},
            {
                "severity": "critical",
                "agent_id": decision.agent_id,
                "reason": decision.reason,
                "node_id": node.node_id,
            },
        )

    def status(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "moved": self.moved,
            "unavailable": self.marked_unavailable,
            "failed": self.marked_failed,
            "starting": sorted(self._starting),
        }
