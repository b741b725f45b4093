"""One cluster node: liveness, the registry, the router and the agents it hosts, joined up.

``ClusterNode`` owns two connections to the substrate — data (watches, heartbeats,
routing, registry writes) and lease (its own record, renewals, death declarations), so a
busy data path never delays a renewal — and a ``LocalNode`` that hosts its agents. An
agent started here is started locally first and then registered uniquely; if the
registration loses, the local agent is stopped again and ``AgentExists`` raised. The
router resolves ids through the registry cache, and the local node's ``outbound`` is a
``ClusterOutbound``, so agents reach agents on every node with their own ``ctx.call``.

The lease drives the agents: when renewals have failed for ``F`` the local node is paused
(no action starts); when the record is found ``alive`` at our incarnation it resumes; when
it is found ``dead`` every agent of the old incarnation is stopped and the node rejoins
under a new one (its entries are the leader's to mark or fail over, so nothing is started
again here); when a restart under our id has taken over, every agent is stopped and
``superseded`` is set: the process must exit (``agentcluster node`` exits with status 3).

While this node leads, it marks the entries of every node that is declared dead or left
as ``unavailable`` (keeping their restart spec), and it sweeps the registry for such
entries when it is elected, so a leader that died half-way strands nothing.

A ``role="client"`` node hosts nothing, writes no record and never leads: it has the
data connection only, watches membership and the registry, and routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from agentcluster.agent.loop_watchdog import LoopWatchdog
from agentcluster.agent.node import LocalNode
from agentcluster.clock import Clock, SystemClock
from agentcluster.cluster.activation import activate
from agentcluster.cluster.balancing import BalancerConfig
from agentcluster.cluster.control import (
    AgentSource,
    NodeControl,
    load_agent_class,
    remember_class,
    spec_of,
)
from agentcluster.cluster.dead_letters import DeadLetterShipper
from agentcluster.cluster.drain import Drainer
from agentcluster.cluster.failover_manager import FailoverConfig, FailoverManager
from agentcluster.cluster.health_monitor import HealthMonitorConfig
from agentcluster.cluster.inbox import DurableInbox
from agentcluster.cluster.keeper import AgentKeeper, KeeperDeps
from agentcluster.cluster.liveness import LivenessHooks, NodeLiveness, Role
from agentcluster.cluster.membership import JoinSpec, Vitals
from agentcluster.cluster.outbound import ClusterOutbound
from agentcluster.cluster.partition_handler import failover_suspended
from agentcluster.cluster.quarantine import QUARANTINE_SERVICE, QuarantineBook, quarantine_book
from agentcluster.cluster.registry import Registry
from agentcluster.cluster.resources import Reservations
from agentcluster.cluster.routing import Placement, Router
from agentcluster.cluster.state_store import SNAPSHOT_OBJECTS, StateStore
from agentcluster.cluster.system_agents import SystemAgents, is_system_agent, start_system_agents
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.membership import NodeRecord
from agentcluster.core.registry import AgentEntry, AgentMode, AgentStatus
from agentcluster.core.reservations import Reservation, check_resources
from agentcluster.core.signal import Signal
from agentcluster.core.snapshots import DEFAULT_MAX_STALENESS
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import (
    AgentClusterError,
    AgentExists,
    AgentFenced,
    ConfigurationError,
    ConnectionClosed,
    NodeSuperseded,
    UsageError,
)
from agentcluster.transport.interface import Connection, ObjectStoreConfig, Storage

__all__ = ["LOOP_BLOCKED", "ClusterNode", "Connect"]

_log = logging.getLogger("agentcluster.cluster.node")

LOOP_BLOCKED = ("agentcluster", "node", "loop_blocked")
"""Telemetry: the node's event loop was blocked past F/2 (``seconds`` so far; the
``agent_id`` and ``action`` holding it, or the code location as ``action``)."""

Connect = Callable[[str], Awaitable[Connection]]
"""Opens a connection to the substrate for the node named by the argument."""


_PLACEMENT: dict[AgentStatus, Literal["running", "starting", "unavailable"]] = {
    AgentStatus.RUNNING: "running",
    AgentStatus.STARTING: "starting",
    AgentStatus.MOVING: "starting",
    AgentStatus.UNAVAILABLE: "unavailable",
    AgentStatus.FAILED: "unavailable",
}
"""How the router treats each registry status: moving counts as starting (retry soon)."""


_START_KEYS = ("state", "restart")
"""Options of ``LocalNode.start_agent`` a restart spec carries."""

_PERSISTENT_KEYS = (
    "max_staleness",
    "max_attempts",
    "mailbox_size",
    "max_restarts",
    "restart_period",
)
"""Options of a persistent agent its restart spec carries to the node that restores it."""

_MODES = {mode.value: mode for mode in AgentMode}

_FINAL_SNAPSHOT_TIMEOUT = 2.0
"""Seconds a graceful stop waits for each persistent agent's last snapshot."""


def detected_capacity() -> dict[str, float]:
    """What a node declares when it is given no capacity: this machine's cpu count and
    memory (MiB). Custom resources (``gpu``, …) are never guessed: undeclared means 0."""
    import psutil

    return {
        "cpu": float(os.cpu_count() or 1),
        "memory_mb": float(psutil.virtual_memory().total // (1024 * 1024)),
    }


class ClusterNode:
    """A node of the cluster (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        connect: Connect,
        *,
        labels: Mapping[str, str] | None = None,
        capacity: Mapping[str, float] | None = None,
        capabilities: tuple[str, ...] | list[str] = (),
        timing: LeaseTiming | None = None,
        clock: Clock | None = None,
        seed: str | None = None,
        role: Role = "node",
        replicas: int = 1,
        storage: Storage = "file",
        unavailable_ttl: float = 60.0,
        balancing: BalancerConfig | None = None,
        failover: FailoverConfig | None = None,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        health: HealthMonitorConfig | None = None,
        min_nodes: int | None = None,
    ) -> None:
        self.node_id = node_id
        self._failover_config = failover
        self._health = health
        self._min_nodes = min_nodes
        self.max_staleness = max_staleness
        self._balancing = balancing
        self.role: Role = role
        self._connect = connect
        declared = detected_capacity() if capacity is None and role == "node" else capacity
        self._spec = JoinSpec(
            node_id, dict(labels or {}), tuple(capabilities), dict(declared or {})
        )
        self._timing = timing
        self._clock = clock
        self._replicas = replicas
        self._storage: Storage = storage
        self._unavailable_ttl = unavailable_ttl
        self.system: SystemAgents | None = None
        self.local = LocalNode(node_id, clock=clock, seed=seed)
        self.liveness: NodeLiveness | None = None
        self.registry: Registry | None = None
        self.reservations: Reservations | None = None
        self.router: Router | None = None
        self.outbound: ClusterOutbound | None = None
        self.data: Connection | None = None
        self._control: NodeControl | None = None
        self.dead_letters: DeadLetterShipper | None = None
        self.state_store: StateStore | None = None
        self.durable_inbox: DurableInbox | None = None
        self.keepers: dict[str, AgentKeeper] = {}
        """The keepers of the persistent agents running here, by id."""
        self.failover: FailoverManager | None = None
        self.drainer: Drainer | None = None
        """Hands this node's persistent agents off while its quarantine asks for a drain."""
        self._watchdog: LoopWatchdog | None = None
        """Names what blocks the loop past F/2 (real clock only)."""
        self._activating: set[str] = set()
        self._keeper_tasks: set[asyncio.Task[Any]] = set()
        self._connections: list[Connection] = []
        self._duties: set[asyncio.Task[None]] = set()
        self._stopped = False
        self.superseded: NodeSuperseded | None = None
        self._superseded = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop(leave=False)
            raise

    async def _start(self) -> None:
        data = await self._connect(self.node_id)
        self.data = data
        self._connections = [data]
        lease = None
        if self.role == "node":
            lease = await self._connect(self.node_id)
            self._connections.append(lease)
        liveness = NodeLiveness(
            data,
            lease,
            self._spec,
            role=self.role,
            timing=self._timing,
            clock=self._clock,
            vitals=self._vitals,
            replicas=self._replicas,
            storage=self._storage,
            hooks=LivenessHooks(
                on_pause=self._pause,
                on_resume=self._resume,
                on_rejoin=self._rejoin,
                on_superseded=self._supersede,
                on_node_down=self._node_down,
                on_elected=self._elected,
            ),
        )
        self.liveness = liveness
        await liveness.start()
        if type(self.local.clock) is SystemClock:
            self._watchdog = LoopWatchdog(
                asyncio.get_running_loop(),
                threshold=liveness.timing.fencing_timeout / 2,
                report=self._loop_blocked,
                name=f"node {self.node_id}",
            )
            self._watchdog.start()
        assert liveness.buckets is not None
        renewer = liveness.renewer
        self.registry = Registry(
            liveness.buckets.agents,
            (lambda: renewer.stamps) if renewer is not None else self._client_stamps,
        )
        await self.registry.start()
        self.reservations = Reservations(
            liveness.buckets.reservations,
            (lambda: renewer.stamps) if renewer is not None else self._client_stamps,
        )
        await self.reservations.start()
        self.router = Router(
            self.node_id, liveness.incarnation, data, self.local, self._resolve, clock=self._clock
        )
        await self.router.start()
        self.dead_letters = DeadLetterShipper(
            data,
            self.node_id,
            self.local.clock.monotonic,
            replicas=self._replicas,
            storage=self._storage,
        )
        await self.dead_letters.start()
        self.local.dead_letters.sink = self.dead_letters.offer
        heartbeats = liveness.heartbeats
        own = self.node_id
        self.outbound = ClusterOutbound(
            self.router,
            self.registry,
            self.local,
            suspected=lambda node: node != own and heartbeats.suspected(node),
            members=self.members,
            balancing=self._balancing,
            labels=self._spec.labels,
        )
        self.local.outbound = self.outbound
        self.local.services["cluster"] = self
        if self.role == "node":
            objects = await data.object_store(
                ObjectStoreConfig(SNAPSHOT_OBJECTS, replicas=self._replicas, storage=self._storage)
            )
            self.state_store = StateStore(
                liveness.buckets.state, objects, kv_limit=max(1024, data.max_payload - 8192)
            )
            self.durable_inbox = await DurableInbox.open(
                data, replicas=self._replicas, storage=self._storage
            )
            self.registry.listeners.append(self._reconcile)
            self.failover = FailoverManager(
                self, self._failover_config, suspended=lambda: failover_suspended(self)
            )
            self.failover.start()
            self.drainer = Drainer(self)
            self.drainer.start()
            self._control = NodeControl(self, data)
            await self._control.start()
            self.system = await start_system_agents(
                self,
                unavailable_ttl=self._unavailable_ttl,
                health=self._health,
                min_nodes=self._min_nodes,
            )
        else:
            # A client places and balances too: it follows the quarantine keys, read-only.
            book = QuarantineBook(liveness.buckets.coordination, self._client_stamps)
            await book.start()
            self.local.services[QUARANTINE_SERVICE] = book
            self.outbound.balancer.quarantined = book.holds

    def _client_stamps(self) -> Any:
        raise UsageError(f"client {self.node_id!r} writes no registry entries")

    async def stop(self, *, leave: bool = True) -> None:
        """Stop everything; with ``leave`` the record says ``left`` (a graceful exit)."""
        if self._stopped:
            return
        self._stopped = True
        for task in list(self._duties):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.failover is not None:
            await self.failover.stop()
        if self.drainer is not None:
            await self.drainer.stop()
        if self._control is not None:
            await self._control.stop()
        await self._close_keepers(final=leave)
        if self.router is not None:
            await self.router.stop()
        await self.local.stop()
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.dead_letters is not None:
            self.local.dead_letters.sink = None
            await self.dead_letters.stop()
        if self.registry is not None:
            await self.registry.stop()
        if self.reservations is not None:
            await self.reservations.stop()
        book = quarantine_book(self.local.services)
        if book is not None:
            await book.stop()
        if self.liveness is not None:
            if leave:
                await self.liveness.leave()
            else:
                await self.liveness.stop()
        for conn in self._connections:
            await conn.close()

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def incarnation(self) -> int:
        return 0 if self.liveness is None else self.liveness.incarnation

    def members(self) -> dict[str, NodeRecord]:
        return {} if self.liveness is None else self.liveness.membership.members()

    # --- agents ---------------------------------------------------------------------

    @property
    def local_labels(self) -> dict[str, str]:
        """The labels this node declared (zone, region, …)."""
        return dict(self._spec.labels)

    @property
    def capacity(self) -> dict[str, float]:
        """What this node declared it can host, per resource."""
        return dict(self._spec.capacity)

    async def start_agent(
        self,
        agent: AgentSource,
        agent_id: str,
        *,
        capabilities: tuple[str, ...] = (),
        resources: Mapping[str, float] | None = None,
        placement: Mapping[str, Any] | None = None,
        mode: str | AgentMode | None = None,
        **options: Any,
    ) -> AgentEntry:
        """Start ``agent`` (a class, ``"module:Class"`` or a restart spec) here and register
        it; ``AgentExists`` if the id lives elsewhere.

        With ``resources``, they are reserved on this node first (one compare-and-set on
        its reservations key, ``NoAvailableNode(reason="no_capacity")`` when they do not
        fit) and released again if the start or the registration fails.

        ``mode`` is ``plain`` (the default: lives and dies with this node), ``critical``
        (restarted elsewhere from its last snapshot when this node dies) or ``durable``
        (critical, and every acknowledged ``send`` survives in its durable inbox). A
        persistent agent goes through the one activation path (``cluster.activation``):
        an id whose snapshot exists is restored from it, not started fresh.
        """
        if self.role != "node":
            raise UsageError(f"{self.node_id!r} is a client: it hosts no agents")
        if self.superseded is not None:
            raise self.superseded
        registry = self._registry()
        if isinstance(agent, type):
            cls = agent
            # Started here, so a class only this process can import is fine.
            spec: dict[str, Any] = {"class": remember_class(agent)}
        else:
            spec = spec_of(agent)
            cls = load_agent_class(spec["class"])
            capabilities = capabilities or tuple(spec.get("capabilities", ()))
            if resources is None:
                resources = spec.get("resources")
            if placement is None:
                placement = spec.get("placement")
            if mode is None:
                mode = spec.get("mode")
            for key in (*_START_KEYS, *_PERSISTENT_KEYS):
                if key in spec:
                    options.setdefault(key, spec[key])
        chosen_mode = _mode_of(mode, options, agent_id)
        wanted = check_resources(resources)
        for key in _START_KEYS:
            if key in options and options[key] is not None:
                spec[key] = options[key]
        if wanted:
            spec["resources"] = wanted
        if placement:
            spec["placement"] = dict(placement)
        if chosen_mode is not AgentMode.PLAIN:
            return await self._start_persistent(
                cls, agent_id, spec, chosen_mode, capabilities, wanted, options
            )
        held = registry.lookup(agent_id)
        if held is not None and held.node == self.node_id and self.local.lookup(agent_id):
            return held
        incarnation = 1 if held is None else held.incarnation + 1
        reserved = await self._reserve(agent_id, incarnation, wanted)
        try:
            await self.local.start_agent(cls, agent_id, capabilities=capabilities, **options)
        except BaseException:
            await self._release(agent_id, incarnation, reserved)
            raise
        entry = AgentEntry(
            agent_id,
            self.node_id,
            self.incarnation,
            incarnation=incarnation,
            capabilities=tuple(capabilities) or tuple(cls.capabilities),
            spec=spec,
        )
        try:
            written, _revision = await registry.register(entry, self.members())
        except BaseException:
            await self.local.stop_agent(agent_id)
            await self._release(agent_id, incarnation, reserved)
            raise
        await self._rekey_reservation(agent_id, incarnation, written, reserved, wanted)
        return written

    async def _start_persistent(
        self,
        cls: type[Any],
        agent_id: str,
        spec: dict[str, Any],
        mode: AgentMode,
        capabilities: tuple[str, ...],
        wanted: Mapping[str, float],
        options: dict[str, Any],
    ) -> AgentEntry:
        """Register the entry ``starting`` here, then activate it (``cluster.activation``)."""
        registry = self._registry()
        spec["mode"] = mode.value
        for key in _PERSISTENT_KEYS:
            if options.get(key) is not None:
                spec[key] = options[key]
        held = registry.lookup(agent_id)
        if (
            held is not None
            and held.status is AgentStatus.RUNNING
            and held.node == self.node_id
            and self.local.lookup(agent_id) is not None
            and agent_id in self.keepers
        ):
            _same_class(held, spec, agent_id)
            return held
        if held is not None and held.spec is not None:
            _same_class(held, spec, agent_id)
        incarnation = 1 if held is None else held.incarnation + 1
        reserved = await self._reserve(agent_id, incarnation, wanted)
        entry = AgentEntry(
            agent_id,
            self.node_id,
            self.incarnation,
            incarnation=incarnation,
            mode=mode,
            capabilities=tuple(capabilities) or tuple(cls.capabilities),
            spec=spec,
            status=AgentStatus.STARTING,
        )
        self._activating.add(agent_id)
        try:
            try:
                written, revision = await registry.register(entry, self.members())
            except AgentExists as exists:
                await self._release(agent_id, incarnation, reserved)
                live = registry.lookup(agent_id)
                if live is not None and live.spec is not None and not exists.retryable:
                    _same_class(live, spec, agent_id)
                    return live
                raise
            except BaseException:
                await self._release(agent_id, incarnation, reserved)
                raise
            await self._rekey_reservation(agent_id, incarnation, written, reserved, wanted)
            try:
                return await activate(self, written, revision)
            except BaseException:
                await self._release(agent_id, written.incarnation, reserved)
                raise
        finally:
            self._activating.discard(agent_id)

    async def _rekey_reservation(
        self,
        agent_id: str,
        incarnation: int,
        written: AgentEntry,
        reserved: bool,
        wanted: Mapping[str, float],
    ) -> None:
        if reserved and written.incarnation != incarnation:
            await self._reservations().replace(
                self.node_id,
                self._spec.capacity,
                (agent_id, incarnation),
                Reservation(agent_id, written.incarnation, wanted),
            )

    async def _reserve(self, agent_id: str, incarnation: int, wanted: Mapping[str, float]) -> bool:
        if not wanted:
            return False
        await self._reservations().reserve(
            self.node_id, self._spec.capacity, Reservation(agent_id, incarnation, wanted)
        )
        return True

    async def _release(self, agent_id: str, incarnation: int, reserved: bool) -> None:
        """Give back a reservation; a failure here leaves it to the collector."""
        if not reserved:
            return
        try:
            await self._reservations().release(self.node_id, [(agent_id, incarnation)])
        except AgentClusterError as error:
            _log.warning("reservation of %r left to the collector: %s", agent_id, error)

    async def stop_agent(self, agent_id: str) -> bool:
        """Stop a local agent, remove its registry entry and release its reservation;
        False if it is not here. A persistent agent is stopped for good: its snapshot is
        deleted and its inbox purged."""
        if self.local.lookup(agent_id) is None:
            return False
        keeper = self.keepers.pop(agent_id, None)
        if keeper is not None:
            await keeper.close()
        await self.local.stop_agent(agent_id)
        registry = self._registry()
        revision = registry.revision_of(agent_id)
        entry = registry.lookup(agent_id)
        if revision is not None and entry is not None and entry.node == self.node_id:
            await registry.unregister(agent_id, revision)
            reservations = self._reservations()
            if reservations.of(self.node_id).holds((agent_id, entry.incarnation)):
                await self._release(agent_id, entry.incarnation, True)
            if keeper is not None and keeper.fenced is None:
                await self._forget_persistent(agent_id, keeper)
        return True

    async def _forget_persistent(self, agent_id: str, keeper: AgentKeeper) -> None:
        try:
            if self.state_store is not None:
                await self.state_store.delete(agent_id)
            if keeper.durable and self.durable_inbox is not None:
                await self.durable_inbox.purge(agent_id, 2**62)
        except AgentClusterError as error:
            _log.warning("state of stopped agent %r not removed: %s", agent_id, error)

    def _reservations(self) -> Reservations:
        if self.reservations is None:
            raise ConnectionClosed(f"node {self.node_id!r} is not started")
        return self.reservations

    def _registry(self) -> Registry:
        if self.registry is None:
            raise ConnectionClosed(f"node {self.node_id!r} is not started")
        return self.registry

    def _resolve(self, agent_id: str) -> Placement | None:
        entry = None if self.registry is None else self.registry.lookup(agent_id)
        if entry is None:
            return None
        return Placement(entry.node, entry.node_incarnation, _PLACEMENT[entry.status])

    def _vitals(self) -> Vitals:
        count = len(self.local) - (0 if self.system is None else len(self.system.ids))
        return Vitals(agent_count=count, load=self.local.mailbox_load())

    # --- the lease drives the agents ------------------------------------------------

    def _pause(self) -> None:
        _log.warning("node %r: lease lapsed, pausing its agents", self.node_id)
        self.local.pause()

    def _resume(self) -> None:
        _log.info("node %r: lease confirmed, resuming its agents", self.node_id)
        self.local.resume()

    def _rejoin(self, incarnation: int) -> None:
        _log.warning(
            "node %r was declared dead: stopping its agents, rejoined as incarnation %d",
            self.node_id,
            incarnation,
        )
        if self.router is not None:
            self.router.incarnation = incarnation
        self._duty(self._stop_agents_then_resume())

    async def _stop_agents_then_resume(self) -> None:
        for agent_id, keeper in list(self.keepers.items()):
            keeper._fence(AgentFenced(agent_id, keeper.incarnation))
            await keeper.close()
            self.keepers.pop(agent_id, None)
        for agent_id in self.local.agents():
            info = self.local.lookup(agent_id)
            if info is not None and not is_system_agent(info.capabilities):
                with contextlib.suppress(Exception):
                    await self.local.stop_agent(agent_id, reason="node_rejoined")
        self.local.resume()

    def _supersede(self, error: NodeSuperseded) -> None:
        self.superseded = error
        self._superseded.set()
        self._duty(self.local.stop())

    async def wait_superseded(self) -> NodeSuperseded:
        """Returns when a restart under this node's id has taken over (the process must
        exit); waits forever otherwise — race it against your own shutdown signal."""
        await self._superseded.wait()
        assert self.superseded is not None
        return self.superseded

    # --- leader duties --------------------------------------------------------------

    def _node_down(self, record: NodeRecord, reason: str) -> None:
        if self.failover is not None:
            self.failover.kick()

    def _elected(self, term: int) -> None:
        _log.info("node %r leads the cluster (term %d)", self.node_id, term)
        if self.failover is not None:
            self.failover.kick()

    # --- persistent agents ----------------------------------------------------------

    def _stamp(self) -> WriteStamp:
        renewer = None if self.liveness is None else self.liveness.renewer
        if renewer is None:
            raise UsageError(f"client {self.node_id!r} writes no registry entries")
        return renewer.stamps.next()

    def fence_ok(self) -> bool:
        """This node may commit now: its lease is valid on the lease clock."""
        return self.liveness is not None and self.liveness.valid()

    def keeper_deps(self, max_staleness: float | None = None) -> KeeperDeps:
        assert self.state_store is not None
        return KeeperDeps(
            node_id=self.node_id,
            clock=self.local.clock,
            store=self.state_store,
            inbox=self.durable_inbox,
            fence_ok=self.fence_ok,
            send=self._release_signal,
            send_reply=self._send_reply,
            incarnation_of=self._incarnation_of,
            dead_letter=self._dead_letter_emit,
            on_fenced=self._on_fenced,
            telemetry=self.local.telemetry,
            max_staleness=self.max_staleness if max_staleness is None else max_staleness,
            tasks=self._keeper_tasks,
        )

    async def _release_signal(self, signal: Signal) -> None:
        target = signal.target
        if target is None:
            self.local.publish(signal)
            return
        if self.outbound is None:
            raise ConnectionClosed(f"node {self.node_id!r} is not started")
        await self.outbound.send(target, signal)

    def _loop_blocked(self, seconds: float, agent_id: str | None, action: str) -> None:
        """The watchdog's finding, on the loop once it turns again (it logged already)."""
        telemetry = self.local.telemetry
        if telemetry.enabled:
            telemetry.emit(
                LOOP_BLOCKED,
                {"seconds": seconds},
                {"node_id": self.node_id, "agent_id": agent_id, "action": action},
            )

    def _incarnation_of(self, agent_id: str) -> int | None:
        entry = None if self.registry is None else self.registry.lookup(agent_id)
        return None if entry is None else entry.incarnation

    def _send_reply(self, subject: str, frame: bytes) -> None:
        if self.router is not None:
            self.router.send_reply(subject, frame)

    def _dead_letter_emit(self, signal: Signal, error: AgentClusterError) -> None:
        self.local.dead_letter(signal, error, signal.target)

    def _on_fenced(self, agent_id: str, fenced: AgentFenced) -> None:
        _log.warning("%s", fenced)
        self._duty(self._drop_fenced(agent_id))

    async def _drop_fenced(self, agent_id: str) -> None:
        keeper = self.keepers.pop(agent_id, None)
        if keeper is not None:
            await keeper.close()
        if self.local.lookup(agent_id) is not None:
            await self.local.stop_agent(agent_id, reason="fenced")

    def _reconcile(self, entry: AgentEntry, revision: int) -> None:
        """Every entry the registry cache takes in: activate what is assigned here, fence
        what moved on to a newer incarnation elsewhere."""
        if self._stopped or self.role != "node":
            return
        keeper = self.keepers.get(entry.id)
        if keeper is not None and entry.incarnation > keeper.incarnation:
            keeper._fence(AgentFenced(entry.id, keeper.incarnation, entry.incarnation))
            return
        if (
            entry.status is AgentStatus.STARTING
            and entry.node == self.node_id
            and entry.node_incarnation == self.incarnation
            and entry.mode is not AgentMode.PLAIN
            and entry.id not in self._activating
            and keeper is None
        ):
            self._activating.add(entry.id)
            self._duty(self._activate_assigned(entry, revision))
        if (
            self.failover is not None
            and entry.mode is not AgentMode.PLAIN
            and entry.status is not AgentStatus.RUNNING
        ):
            self.failover.kick()

    async def _activate_assigned(self, entry: AgentEntry, revision: int) -> None:
        try:
            await activate(self, entry, revision)
        except AgentFenced as fenced:
            _log.info("activation of %r on %r abandoned: %s", entry.id, self.node_id, fenced)
        except AgentClusterError as error:
            _log.warning("activation of %r on %r failed: %s", entry.id, self.node_id, error)
        finally:
            self._activating.discard(entry.id)

    async def _close_keepers(self, *, final: bool) -> None:
        """Stopping: with ``final`` (a graceful leave) new signals are refused and each
        persistent agent takes a last snapshot, bounded; then every keeper stops."""
        keepers = list(self.keepers.values())
        if final and keepers:
            for keeper in keepers:
                keeper.running = False
            self.local.pause()
            await asyncio.gather(
                *(k.final_snapshot(_FINAL_SNAPSHOT_TIMEOUT) for k in keepers),
                return_exceptions=True,
            )
        for keeper in keepers:
            await keeper.close()
        self.keepers.clear()
        for task in list(self._keeper_tasks):
            task.cancel()

    def _duty(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopped:
                    _log.debug("duty on %r ended by the node's stop", self.node_id, exc_info=True)
                else:
                    _log.exception("duty on %r failed", self.node_id)

        def done(task: asyncio.Task[None]) -> None:
            self._duties.discard(task)
            if task.cancelled() and inspect.iscoroutine(work):
                work.close()  # cancelled before it began: never awaited, and that is fine

        if self._stopped:
            if inspect.iscoroutine(work):
                work.close()
            return
        task = asyncio.get_running_loop().create_task(run())
        self._duties.add(task)
        task.add_done_callback(done)

    def unavailable_agents(self) -> list[str]:
        """Entries this node's cache shows as ``unavailable``."""
        if self.registry is None:
            return []
        return sorted(e.id for e in self.registry.index if e.status is AgentStatus.UNAVAILABLE)


def _mode_of(mode: str | AgentMode | None, options: Mapping[str, Any], agent_id: str) -> AgentMode:
    """The agent's mode; contradictory options are refused here, at start."""
    if mode is None:
        chosen = AgentMode.PLAIN
    elif isinstance(mode, AgentMode):
        chosen = mode
    elif mode in _MODES:
        chosen = _MODES[mode]
    else:
        raise ConfigurationError(
            f"agent {agent_id!r}: unknown mode {mode!r}; use one of {sorted(_MODES)}"
        )
    if chosen is AgentMode.PLAIN:
        given = sorted(k for k in ("max_staleness", "max_attempts") if options.get(k) is not None)
        if given:
            raise ConfigurationError(
                f"agent {agent_id!r}: {', '.join(given)} apply to critical and durable agents, "
                "not to a plain one"
            )
        return chosen
    if options.get("restart") == "temporary":
        raise ConfigurationError(
            f"agent {agent_id!r}: a {chosen.value} agent is restarted after a failure by "
            "definition; restart='temporary' contradicts it"
        )
    if options.get("supervisor") is not None:
        raise ConfigurationError(
            f"agent {agent_id!r}: a {chosen.value} agent is supervised by the cluster, not by "
            "a local supervisor"
        )
    if options.get("snapshot") is not None:
        raise ConfigurationError(
            f"agent {agent_id!r}: a {chosen.value} agent restores its own snapshot; give "
            "initial state with state="
        )
    staleness = options.get("max_staleness")
    if staleness is not None and (
        isinstance(staleness, bool) or not isinstance(staleness, int | float) or staleness < 0
    ):
        raise ConfigurationError(
            f"agent {agent_id!r}: max_staleness must be seconds >= 0, not {staleness!r}"
        )
    attempts = options.get("max_attempts")
    if attempts is not None and (
        chosen is not AgentMode.DURABLE
        or isinstance(attempts, bool)
        or not isinstance(attempts, int)
        or attempts < 1
    ):
        raise ConfigurationError(
            f"agent {agent_id!r}: max_attempts is an integer >= 1 for a durable agent, "
            f"not {attempts!r} for a {chosen.value} one"
        )
    return chosen


def _same_class(entry: AgentEntry, spec: Mapping[str, Any], agent_id: str) -> None:
    held = None if entry.spec is None else entry.spec.get("class")
    if held is not None and held != spec.get("class"):
        raise AgentExists(
            f"agent {agent_id!r} exists as {held}, not {spec.get('class')}",
            agent_id=agent_id,
            node_id=entry.node,
        )
