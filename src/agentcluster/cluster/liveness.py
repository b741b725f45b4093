"""A node's liveness, composed: join, lease, membership cache, death watch, heartbeats, leader.

``NodeLiveness`` wires the shells of this package for one node (or client) and nothing
more; every decision stays in ``core``:

====================  =================  ===============================================
component             connection         role
====================  =================  ===============================================
``LeaseRenewer``      lease              join, renew, pause / resume / rejoin / superseded
``PeerDeathWatch``    lease              the observer's ``alive -> dead`` compare-and-set
``Membership``        data               the ``nodes`` cache, ``on_node_up`` / ``_down``
``Heartbeats``        data               phi per peer, own loop lag, ``topology()``
``Leadership``        data               the ``leader`` key, campaigns
====================  =================  ===============================================

The lease connection carries only liveness writes, so a busy data connection cannot
starve them (DESIGN.md: the renewer is a node component on its own connection). A client
(``role="client"``) has no lease connection, writes no record, never declares anyone dead
and never campaigns; it watches membership and the leader and listens to heartbeats.

Start order: buckets, join (the lease is valid from the join's write), the membership
cache, then renewals, the death watch, heartbeats and leadership. ``stop`` ends everything
without writing (a crash, as far as the cluster can tell); ``leave`` writes ``left``.
When the renewer finds this process superseded, the user's ``on_superseded`` runs and the
rest stops on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from agentcluster.clock import Clock
from agentcluster.cluster.buckets import NODES, Buckets, ensure_buckets
from agentcluster.cluster.death_watch import PeerDeathWatch
from agentcluster.cluster.heartbeat import Heartbeats, PeerView
from agentcluster.cluster.leadership import Leadership
from agentcluster.cluster.lease_renewer import LeaseRenewer
from agentcluster.cluster.membership import JoinSpec, Membership, VitalsSource
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.membership import NodeRecord
from agentcluster.core.phi import PhiSettings
from agentcluster.errors import ConfigurationError, NodeSuperseded
from agentcluster.telemetry.events import Telemetry
from agentcluster.transport.interface import BucketConfig, Connection, Storage

__all__ = ["LivenessHooks", "NodeLiveness", "Role"]

_log = logging.getLogger("agentcluster.cluster.liveness")

Role = Literal["node", "client"]

_STOP_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class LivenessHooks:
    """What the node does on liveness events; each runs synchronously and must not block."""

    on_pause: Callable[[], None] | None = None
    on_resume: Callable[[], None] | None = None
    on_superseded: Callable[[NodeSuperseded], None] | None = None
    on_rejoin: Callable[[int], None] | None = None
    on_node_up: Callable[[NodeRecord], None] | None = None
    on_node_down: Callable[[NodeRecord, str], None] | None = None
    on_elected: Callable[[int], None] | None = None
    on_deposed: Callable[[], None] | None = None


class NodeLiveness:
    """The liveness of one node or client; see the module docstring."""

    def __init__(
        self,
        data: Connection,
        lease: Connection | None,
        spec: JoinSpec,
        *,
        role: Role = "node",
        timing: LeaseTiming | None = None,
        clock: Clock | None = None,
        vitals: VitalsSource | None = None,
        hooks: LivenessHooks | None = None,
        telemetry: Telemetry | None = None,
        replicas: int = 1,
        storage: Storage = "file",
        heartbeat_interval: float = 0.1,
        phi_settings: PhiSettings | None = None,
        poll: float = 0.5,
    ) -> None:
        if role not in ("node", "client"):
            raise ConfigurationError(f"role must be 'node' or 'client', got {role!r}")
        if role == "node" and lease is None:
            raise ConfigurationError("a node needs its own lease connection")
        self._data = data
        self._lease = lease
        self.spec = spec
        self.role: Role = role
        self.timing = LeaseTiming() if timing is None else timing
        self._clock = clock
        self._vitals = vitals
        self.hooks = LivenessHooks() if hooks is None else hooks
        self._telemetry = telemetry
        self._replicas = replicas
        self._storage: Storage = storage
        self._heartbeat_interval = heartbeat_interval
        self._phi_settings = phi_settings
        self._poll = poll
        self.buckets: Buckets | None = None
        self.renewer: LeaseRenewer | None = None
        self.death_watch: PeerDeathWatch | None = None
        self._membership: Membership | None = None
        self._heartbeats: Heartbeats | None = None
        self._leadership: Leadership | None = None
        self._started: list[Callable[[], Awaitable[None]]] = []
        self._shutdown: asyncio.Task[None] | None = None

    # --- accessors ----------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.spec.node_id

    @property
    def membership(self) -> Membership:
        if self._membership is None:
            raise ConfigurationError(f"{self.node_id!r} is not started")
        return self._membership

    @property
    def heartbeats(self) -> Heartbeats:
        if self._heartbeats is None:
            raise ConfigurationError(f"{self.node_id!r} is not started")
        return self._heartbeats

    @property
    def leadership(self) -> Leadership:
        if self._leadership is None:
            raise ConfigurationError(f"{self.node_id!r} is not started")
        return self._leadership

    @property
    def incarnation(self) -> int:
        return 0 if self.renewer is None else self.renewer.incarnation

    def valid(self) -> bool:
        """The fence: this node may commit now (always False for a client)."""
        return self.renewer is not None and self.renewer.valid()

    @property
    def paused(self) -> bool:
        return self.renewer is not None and self.renewer.paused

    @property
    def superseded(self) -> NodeSuperseded | None:
        return None if self.renewer is None else self.renewer.superseded

    def leader(self) -> tuple[str, int] | None:
        return None if self._leadership is None else self._leadership.leader()

    @property
    def is_leader(self) -> bool:
        return self._leadership is not None and self._leadership.is_leader

    def topology(self) -> tuple[PeerView, ...]:
        """Who this node hears, and how well (phi, vitals), sorted by peer id."""
        return () if self._heartbeats is None else self._heartbeats.view()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        hooks = self.hooks
        self.buckets = await ensure_buckets(self._data, self._replicas, self._storage)
        if self.role == "node":
            assert self._lease is not None
            lease_nodes = await self._lease.key_value(
                BucketConfig(NODES, replicas=self._replicas, storage=self._storage, history=1)
            )
            self.renewer = LeaseRenewer(
                lease_nodes,
                self.spec,
                timing=self.timing,
                clock=self._clock,
                vitals=self._vitals,
                on_pause=hooks.on_pause,
                on_resume=hooks.on_resume,
                on_superseded=self._superseded,
                on_rejoin=hooks.on_rejoin,
                telemetry=self._telemetry,
            )
            await self.renewer.join()
        self._membership = Membership(
            self.buckets.nodes,
            observer=self.node_id,
            on_node_up=hooks.on_node_up,
            on_node_down=self._node_down,
            telemetry=self._telemetry,
            poll=self._poll,
        )
        await self._membership.start()
        self._started.append(self._membership.stop)
        if self.renewer is not None:
            await self.renewer.start()
            self._started.append(self.renewer.stop)
            assert self._lease is not None
            self.death_watch = PeerDeathWatch(
                await self._lease.key_value(
                    BucketConfig(NODES, replicas=self._replicas, storage=self._storage, history=1)
                ),
                self._membership,
                self.renewer,
                telemetry=self._telemetry,
                poll=self._poll,
            )
            await self.death_watch.start()
            self._started.append(self.death_watch.stop)
        renewer = self.renewer
        self._heartbeats = Heartbeats(
            self._data,
            self.node_id,
            incarnation=(lambda: 0) if renewer is None else (lambda: renewer.incarnation),
            vitals=self._vitals,
            clock=self._clock,
            interval=self._heartbeat_interval,
            settings=self._phi_settings,
            publish=renewer is not None,
        )
        await self._heartbeats.start()
        self._started.append(self._heartbeats.stop)
        self._leadership = Leadership(
            self.buckets.leader,
            self._membership,
            node_id=self.node_id,
            renewer=renewer,
            on_elected=hooks.on_elected,
            on_deposed=hooks.on_deposed,
            telemetry=self._telemetry,
            write_timeout=self.timing.renewal_timeout,
            poll=self._poll,
        )
        await self._leadership.start()
        self._started.append(self._leadership.stop)

    async def stop(self) -> None:
        """Stop every component, writing nothing (the record stays as it is)."""
        shutdown = self._shutdown
        if shutdown is not None and shutdown is not asyncio.current_task():
            await asyncio.wait([shutdown], timeout=_STOP_WAIT)
        await self._stop_components()
        if self.renewer is not None:
            await self.renewer.stop()

    async def leave(self) -> bool:
        """Leave gracefully: stop watching and campaigning, write ``left``; True if written."""
        for component in (self._leadership, self.death_watch, self._heartbeats):
            if component is not None:
                await component.stop()
        left = False if self.renewer is None else await self.renewer.leave()
        await self.stop()
        return left

    # --- reactions ----------------------------------------------------------------------

    def _superseded(self, error: NodeSuperseded) -> None:
        _log.error("%s", error)
        hook = self.hooks.on_superseded
        if hook is not None:
            try:
                hook(error)
            except Exception:
                _log.exception("on_superseded hook of %r failed", self.node_id)
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(
                self._stop_components(), name=f"superseded[{self.node_id}]"
            )

    async def _stop_components(self) -> None:
        while self._started:
            await self._started.pop()()

    def _node_down(self, record: NodeRecord, reason: str) -> None:
        if self._heartbeats is not None and reason in ("dead", "left", "deleted"):
            self._heartbeats.forget(record.id)
        hook = self.hooks.on_node_down
        if hook is not None:
            hook(record, reason)
