"""The partition handler system agent: what its node lived through, and when failover waits.

``system.<node>.partition_handler`` records, in a bounded history (``history``, 1000
events by default), what partitions did to its node:

- ``paused`` — the lease lapsed (``LEASE_PAUSED``): when, the incarnation, the peers this
  node suspected and the nodes its membership still held alive at that moment;
- ``resumed`` / ``rejoined`` / ``superseded`` — how the pause ended (``LEASE_RESUMED``,
  ``LEASE_REJOINED``, ``LEASE_SUPERSEDED``), with when it began and how long it lasted (a
  rejoin names the new incarnation and the ``previous_incarnation``);
- ``node_lost`` — a peer this node's membership saw go ``dead`` or ``left``;
- ``partition_seen`` / ``partition_healed`` — the live nodes split into groups that do
  not hear each other, from every node's suspicions (``core.topology.partitions``, read
  every ``refresh_interval``), and joined again.

It decides nothing about liveness: the JetStream quorum is the only quorum, the lease says
who is alive, and this agent only writes down what the lease and the detectors reported.
Times are this node's wall clock (``*_at``) and durations its monotonic clock.

**Failover suspension.** With ``min_nodes`` set, automatic failover is suspended while
fewer than ``min_nodes`` nodes are alive in this node's membership cache (so the last few
nodes of a shrinking cluster are not buried under every failed-over agent), and always
while this node's own lease has lapsed. Code that fails agents over asks
``failover_suspended(node)`` (or ``node.local.services["partition_handler"]
.failover_suspended()``); a node that runs no partition handler never suspends.

The telemetry handlers are attached by the agent's sensor and detached when the agent
stops, so the recorder (``PartitionWatch``, ``LocalNode.services["partition_handler"]``)
hears events only while its agent runs.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from agentcluster.agent.action import Action, NoParams
from agentcluster.agent.context import Context
from agentcluster.agent.sensor import Sensor, SensorHost
from agentcluster.cluster.lease_renewer import (
    LEASE_PAUSED,
    LEASE_REJOINED,
    LEASE_RESUMED,
    LEASE_SUPERSEDED,
)
from agentcluster.cluster.membership import NODE_DISCONNECTED
from agentcluster.cluster.system_base import SYSTEM_CAPABILITY, SystemAgent, liveness_started
from agentcluster.core.membership import NodeStatus
from agentcluster.core.topology import partitions
from agentcluster.errors import ConfigurationError

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = [
    "PARTITION_HANDLER",
    "PARTITION_SERVICE",
    "PartitionHandlerAgent",
    "PartitionHandlerState",
    "PartitionWatch",
    "failover_suspended",
    "partition_watch",
]

_log = logging.getLogger("agentcluster.cluster.partition_handler")

PARTITION_HANDLER = "partition_handler"
PARTITION_SERVICE = "partition_handler"
"""The ``LocalNode.services`` key of a node's ``PartitionWatch``."""

_ENDINGS: dict[tuple[str, ...], str] = {
    LEASE_RESUMED: "resumed",
    LEASE_REJOINED: "rejoined",
    LEASE_SUPERSEDED: "superseded",
}


class PartitionWatch:
    """One node's partition history and its failover suspension (module docstring)."""

    def __init__(
        self, node: ClusterNode, *, min_nodes: int | None = None, history: int = 1000
    ) -> None:
        if history < 1:
            raise ConfigurationError(f"history must be >= 1, got {history!r}")
        self.node = node
        self.min_nodes = min_nodes
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.counts: dict[str, int] = {}
        self.pause: dict[str, Any] | None = None
        """The pause under way (its ``paused`` event), if any."""
        self._paused_mono: float | None = None
        self.groups: list[list[str]] = []
        """The partitions seen at the last refresh (one group: no split)."""

    @property
    def min_nodes(self) -> int | None:
        return self._min_nodes

    @min_nodes.setter
    def min_nodes(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigurationError(f"min_nodes must be an integer or None, got {value!r}")
        if value is not None and value < 1:
            raise ConfigurationError(f"min_nodes must be >= 1, got {value!r}")
        self._min_nodes = value

    # --- failover -------------------------------------------------------------------

    def alive(self) -> list[str]:
        return sorted(n for n, r in self.node.members().items() if r.status is NodeStatus.ALIVE)

    def suspension(self) -> list[str]:
        """Why failover is suspended now (empty: it is not)."""
        reasons = []
        liveness = self.node.liveness
        if liveness is not None and liveness.paused:
            reasons.append("lease_lapsed")
        if self._min_nodes is not None:
            alive = len(self.alive())
            if alive < self._min_nodes:
                reasons.append(f"alive_nodes {alive} < min_nodes {self._min_nodes}")
        return reasons

    def failover_suspended(self) -> bool:
        """Whether automatic failover must wait (module docstring)."""
        return bool(self.suspension())

    # --- recording ------------------------------------------------------------------

    def _record(self, kind: str, **details: Any) -> dict[str, Any]:
        clock = self.node.local.clock
        event = {"kind": kind, "at": clock.wall(), **details}
        self.history.append(event)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return event

    def _suspects(self) -> list[str]:
        liveness = self.node.liveness
        if not liveness_started(liveness) or liveness is None:
            return []
        return sorted(liveness.heartbeats.suspects())

    def on_event(
        self, event: tuple[str, ...], measurements: Mapping[str, float], meta: Mapping[str, Any]
    ) -> None:
        """A telemetry handler: lease events of this node, node losses it observed. Never
        raises (the bus would detach it)."""
        try:
            self._on_event(event, meta)
        except Exception:
            _log.exception("partition watch of %r could not record %s", self.node.node_id, event)

    def _on_event(self, event: tuple[str, ...], meta: Mapping[str, Any]) -> None:
        own = self.node.node_id
        if event == NODE_DISCONNECTED:
            if meta.get("observer") == own:
                self._record(
                    "node_lost",
                    node=meta.get("node_id"),
                    incarnation=meta.get("incarnation"),
                    reason=meta.get("reason"),
                )
            return
        if meta.get("node_id") != own:
            return
        clock = self.node.local.clock
        if event == LEASE_PAUSED:
            self._paused_mono = clock.monotonic()
            self.pause = self._record(
                "paused",
                incarnation=meta.get("incarnation"),
                suspected=self._suspects(),
                alive=self.alive(),
            )
            return
        ending = _ENDINGS.get(event)
        if ending is None:
            return
        began = self.pause
        duration = None if self._paused_mono is None else clock.monotonic() - self._paused_mono
        self.pause, self._paused_mono = None, None
        extra: dict[str, Any] = {}
        if ending == "superseded":
            extra["found_incarnation"] = meta.get("found_incarnation")
        elif ending == "rejoined":
            extra["previous_incarnation"] = meta.get("previous_incarnation")
        self._record(
            ending,
            incarnation=meta.get("incarnation"),
            paused_at=None if began is None else began["at"],
            duration=duration,
            suspected=self._suspects(),
            **extra,
        )

    def refresh(self) -> list[list[str]]:
        """Read the partitions now; record a split or a heal when they changed."""
        liveness = self.node.liveness
        if not liveness_started(liveness) or liveness is None:
            return self.groups
        alive = self.alive()
        views = liveness.topology()
        suspects: dict[str, list[str]] = {v.peer: list(v.suspects) for v in views}
        suspects[self.node.node_id] = [v.peer for v in views if v.suspected]
        groups = [list(g) for g in partitions(alive, suspects)]
        if groups != self.groups:
            if len(groups) > 1:
                self._record("partition_seen", groups=groups, suspected=self._suspects())
            elif len(self.groups) > 1:
                self._record("partition_healed", groups=groups)
        self.groups = groups
        return groups

    def status(self) -> dict[str, Any]:
        alive = self.alive()
        reasons = self.suspension()
        liveness = self.node.liveness
        return {
            "node_id": self.node.node_id,
            "paused": liveness is not None and liveness.paused,
            "pause": self.pause,
            "alive": alive,
            "min_nodes": self._min_nodes,
            "failover_suspended": bool(reasons),
            "suspension": reasons,
            "partitions": self.groups,
            "counts": dict(sorted(self.counts.items())),
            "history_size": len(self.history),
        }

    def events(self, limit: int, kind: str | None = None) -> list[dict[str, Any]]:
        found = [e for e in self.history if kind is None or e["kind"] == kind]
        return found[-limit:]


def partition_watch(node: ClusterNode) -> PartitionWatch | None:
    found = node.local.services.get(PARTITION_SERVICE)
    return found if isinstance(found, PartitionWatch) else None


def failover_suspended(node: ClusterNode) -> bool:
    """Whether automatic failover from ``node`` must wait now (False when the node runs no
    partition handler)."""
    watch = partition_watch(node)
    return watch is not None and watch.failover_suspended()


class _LeaseEvents(Sensor):
    """Attaches the watch to the node's telemetry while the agent runs."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._telemetry: Any = None

    def bind(self) -> Sensor:
        return _LeaseEvents()

    async def start(self, host: SensorHost) -> None:
        watch = host.node.services.get(PARTITION_SERVICE)
        if not isinstance(watch, PartitionWatch):
            raise ConfigurationError(f"{host.agent_id!r}: its node lends no partition watch")
        telemetry = self._telemetry = host.node.telemetry
        self._ids = [
            telemetry.attach(("agentcluster", "cluster", "lease"), watch.on_event),
            telemetry.attach(NODE_DISCONNECTED, watch.on_event),
        ]

    async def stop(self) -> None:
        ids, self._ids = self._ids, []
        for handler_id in ids:
            self._telemetry.detach(handler_id)


# --- the agent --------------------------------------------------------------------------


class PartitionHandlerState(BaseModel):
    node_id: str = ""
    refresh_interval: float = 1.0
    paused: bool = False
    failover_suspended: bool = False
    partitions: list[list[str]] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    refreshed_at: float | None = None


def _watch(ctx: Context) -> PartitionWatch:
    found = ctx.node.services.get(PARTITION_SERVICE)
    if not isinstance(found, PartitionWatch):
        raise ConfigurationError(f"{ctx.agent_id!r}: its node lends no partition watch")
    return found


def _refresh(ctx: Context) -> dict[str, Any]:
    watch = _watch(ctx)
    groups = watch.refresh()
    status = watch.status()
    return {
        "node_id": status["node_id"],
        "paused": status["paused"],
        "failover_suspended": status["failover_suspended"],
        "partitions": groups,
        "counts": status["counts"],
        "refreshed_at": ctx.node.clock.monotonic(),
    }


class PartitionStatus(Action):
    """Paused or not, the pause under way, partitions now, failover suspension and counts."""

    name = "status"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        changes = _refresh(ctx)
        return _watch(ctx).status(), ctx.set(**changes)


class PartitionHistory(Action):
    """The latest recorded events, oldest first; ``kind`` filters (``paused``, ...)."""

    name = "history"

    class Params(BaseModel):
        limit: int = Field(default=100, ge=1, le=10_000)
        kind: str | None = None

    async def run(self, params: PartitionHistory.Params, ctx: Context) -> Any:
        return {"events": _watch(ctx).events(params.limit, params.kind)}


class PartitionRefresh(Action):
    """Read the partitions now."""

    name = "refresh"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        return None, ctx.set(**_refresh(ctx))


class PartitionHandlerAgent(SystemAgent):
    """Records its node's pauses, resumptions and the partitions seen; never decides."""

    State = PartitionHandlerState
    capabilities = [SYSTEM_CAPABILITY, f"{SYSTEM_CAPABILITY}.{PARTITION_HANDLER}"]
    sensors: ClassVar[list[Sensor]] = [_LeaseEvents()]
    routes = {
        "cluster.partition_handler.status": PartitionStatus,
        "cluster.partition_handler.history": PartitionHistory,
        "cluster.partition_handler.refresh": PartitionRefresh,
    }

    def mount(self, ctx: Context) -> Any:
        return None, [
            ctx.set(**_refresh(ctx)),
            ctx.schedule(PartitionRefresh, every=ctx.state.refresh_interval, key="refresh"),
        ]
