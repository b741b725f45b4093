"""The local node: starts and stops agents, finds them, and delivers signals to them.

Delivery on one node, chosen per call:

- ``cast`` — at most once, no reply. Waits for room while the mailbox is full, up to the
  signal's deadline (``push_timeout`` when it has none), like a bounded channel; past that
  it raises ``MailboxFull`` and dead-letters the signal.
- ``send`` — the same wait, and returns once the signal is in the mailbox: on one node the
  mailbox *is* the acknowledgement.
- ``call`` — waits for the reply (the first matching action's result) or a typed error.
  A caller that gives up cancels the running action. The call chain rides in the signal,
  so a call that would wait on itself fails at once with ``CallCycle`` — unless the agent
  is ``reentrant``, in which case the nested call runs at once, interleaved with the
  waiting one, as Orleans' reentrant grains do.

Targets are agent ids or ``Capability(name, mode)``: ``"one"`` picks the holders round
robin, ``"all"`` reaches each. Whatever cannot be delivered is dead-lettered with its
reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from agentcluster.agent.agent import Agent, apply_changes
from agentcluster.agent.bus import SignalBus
from agentcluster.agent.dead_letters import DeadLetter, DeadLetterStore
from agentcluster.agent.directives import Spawn
from agentcluster.agent.server import AgentServer, _Call
from agentcluster.agent.supervisor import Supervisor
from agentcluster.clock import Clock, SystemClock
from agentcluster.core.balance import RoundRobin
from agentcluster.core.ids import IdSource, UuidV7Source
from agentcluster.core.signal import Signal
from agentcluster.core.supervision import RestartType, Strategy
from agentcluster.errors import (
    AgentClusterError,
    AgentExists,
    AgentNotFound,
    CallCycle,
    CallTimeout,
    ConfigurationError,
    DeliveryError,
    MailboxFull,
    RestoreFailed,
)
from agentcluster.telemetry import Telemetry
from agentcluster.telemetry import telemetry as default_telemetry

__all__ = ["AgentInfo", "Capability", "ChildSpec", "LocalNode", "Outbound", "Target"]

log = logging.getLogger("agentcluster.node")

DEFAULT_CALL_TIMEOUT = 30.0
_RESTART_TYPES = frozenset(t.value for t in RestartType)
MAX_CALL_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Capability:
    """A target naming a capability: ``one`` holder or ``all`` of them.

    On a cluster, ``one`` is balanced by the node's request strategy (round robin by
    default) with circuit breakers and load shedding; ``key`` makes it a sticky session:
    the same key reaches the same holder while that holder is available.
    """

    name: str
    mode: str = "one"
    key: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("one", "all"):
            raise ConfigurationError(f"capability mode must be 'one' or 'all', got {self.mode!r}")


Target = str | Capability


class Outbound(Protocol):
    """Where an agent's own ``ctx.call`` / ``ctx.cast`` and targeted emits go.

    A lone ``LocalNode`` is its own outbound; a cluster node replaces it with one that
    reaches agents on every node, so agent code is the same on one node and on many.
    """

    async def cast(self, target: Target, signal: Signal) -> None: ...

    async def send(
        self, target: Target, signal: Signal, *, timeout: float | None = None
    ) -> None: ...

    async def call(
        self, target: Target, signal: Signal, *, timeout: float | None = None
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class AgentInfo:
    id: str
    agent: str
    node: str
    status: str
    capabilities: tuple[str, ...]
    mailbox_depth: int
    parent: str | None


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child of a supervisor built with ``LocalNode.start_supervisor``."""

    agent: type[Agent]
    id: str
    state: Mapping[str, Any] | None = None
    restart: str = "permanent"


class LocalNode:
    def __init__(
        self,
        node_id: str = "local",
        *,
        clock: Clock | None = None,
        telemetry: Telemetry | None = None,
        id_source: IdSource | None = None,
        seed: str | None = None,
        workers: int | None = None,
        push_timeout: float = 5.0,
        hibernate_after: float = 30.0,
        dead_letter_limit: int = 10_000,
        journal_size: int = 10_000,
        max_restarts: int = 3,
        restart_period: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.clock: Clock = clock or SystemClock()
        self.telemetry = telemetry or default_telemetry
        self.random = random.Random(seed) if seed is not None else random.Random(os.urandom(16))
        if id_source is None:
            wall = self.clock.wall
            id_source = (
                UuidV7Source.seeded(seed, lambda: int(wall() * 1000))
                if seed is not None
                else UuidV7Source(lambda: int(wall() * 1000))
            )
        self.new_id = id_source
        if push_timeout <= 0:
            raise ConfigurationError("push_timeout must be positive")
        self.push_timeout = push_timeout
        if hibernate_after <= 0:
            raise ConfigurationError("hibernate_after must be positive")
        # Seconds of quiet after which an agent's task ends; the next signal starts it again.
        self.hibernate_after = hibernate_after
        self._workers = workers or min(32, (os.cpu_count() or 1) + 4)
        self._pool: ThreadPoolExecutor | None = None
        self.dead_letters = DeadLetterStore(self.telemetry, dead_letter_limit)
        self.bus = SignalBus(self._deliver_from_bus, journal_size=journal_size)
        self.root = Supervisor(
            self,
            f"{node_id}/root",
            max_restarts=max_restarts,
            period=restart_period,
            per_child=True,
        )
        self._agents: dict[str, AgentServer] = {}
        self._by_capability: dict[str, dict[str, None]] = {}
        self._round_robin = RoundRobin()
        self._supervisors: dict[str, Supervisor] = {}
        self.overrun_threads = 0
        self.restarts = 0
        self.crashes = 0
        self._closed = False
        self.outbound: Outbound = self
        # Named objects a host (a cluster node) lends to the agents it runs, such as the
        # system agents' view of their node: ``ctx.node.services["cluster"]``.
        self.services: dict[str, Any] = {}
        self._gate: asyncio.Event | None = None

    # --- pausing ------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._gate is not None

    def pause(self) -> None:
        """Hold every agent before its next signal: no actions start, nothing commits.

        A cluster node pauses while its lease has lapsed. Running actions finish; signals
        keep queueing in the mailboxes (bounded) and run on ``resume``.
        """
        if self._gate is None:
            self._gate = asyncio.Event()

    def resume(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    async def wait_unpaused(self) -> None:
        gate = self._gate
        while gate is not None:
            await gate.wait()
            gate = self._gate

    # --- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> LocalNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def worker_pool(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            pool = self._pool = ThreadPoolExecutor(
                self._workers, thread_name_prefix=f"agentcluster-{self.node_id}"
            )
        return pool

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop every agent (children before parents) and release the worker pool."""
        if self._closed:
            return
        self._closed = True
        self.resume()
        for server in reversed(list(self._agents.values())):
            if server.parent_id is None:
                await server.stop("shutdown", timeout)
        for server in list(self._agents.values()):
            await server.stop("shutdown", timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # --- starting and stopping agents ---------------------------------------------

    async def start_agent(
        self,
        agent: type[Agent],
        id: str | None = None,
        *,
        state: Mapping[str, Any] | BaseModel | None = None,
        snapshot: Mapping[str, Any] | None = None,
        capabilities: tuple[str, ...] | list[str] | None = None,
        restart: str = "transient",
        max_restarts: int | None = None,
        restart_period: float | None = None,
        mailbox_size: int | None = None,
        supervisor: str | None = None,
        _parent: AgentServer | None = None,
    ) -> str:
        """Start an agent and return its id.

        An id held by a running agent of the same class returns that agent; of another
        class, ``AgentExists``. ``snapshot`` restores a saved agent (``RestoreFailed``
        when it cannot be), ``state`` sets the initial state; not both.
        """
        if self._closed:
            raise ConfigurationError(f"node {self.node_id!r} is stopped")
        if not (isinstance(agent, type) and issubclass(agent, Agent)):
            raise ConfigurationError(f"{agent!r} is not an Agent subclass")
        if state is not None and snapshot is not None:
            raise ConfigurationError("start_agent takes state or snapshot, not both")
        if restart not in _RESTART_TYPES:
            raise ConfigurationError(
                f"unknown restart type {restart!r}; use one of {sorted(_RESTART_TYPES)}"
            )
        if id is None:
            id = snapshot["id"] if snapshot is not None else self.new_id()
        elif not isinstance(id, str) or not id:
            raise ConfigurationError(f"agent id must be a non-empty string, got {id!r}")
        existing = self._agents.get(id)
        if existing is not None and existing.alive:
            if type(existing.agent) is not agent:
                raise AgentExists(
                    f"agent {id!r} is already running as {type(existing.agent).__name__}",
                    agent_id=id,
                    node_id=self.node_id,
                )
            return id
        if snapshot is not None:
            try:
                instance = agent.restore(snapshot, self.clock.monotonic())
            except RestoreFailed as error:
                error.node_id = self.node_id
                self.telemetry.emit(
                    ("agentcluster", "agent", "restore_failed"),
                    {"count": 1},
                    {"agent_id": id, "node_id": self.node_id, "error": str(error)},
                )
                raise
            instance.id = id
        elif state is None:
            instance = agent(id)
        else:
            if isinstance(state, BaseModel):
                model = state
            else:
                model = apply_changes(agent.State(), state, f"{agent.__name__}.State")
            instance = agent(id, model)
        caps = tuple(capabilities) if capabilities is not None else tuple(agent.capabilities)
        server = AgentServer(
            self,
            instance,
            mailbox_size=mailbox_size or agent.mailbox_size,
            capabilities=caps,
            parent_id=_parent.id if _parent is not None else None,
        )
        if _parent is not None:
            owner_sup = _parent.children
            if owner_sup is None:
                owner_sup = _parent.children = Supervisor(
                    self, f"{_parent.id}/children", owner=_parent
                )
            owner_sup.add(server, restart)
        elif supervisor is not None:
            sup = self._supervisors.get(supervisor)
            if sup is None:
                raise ConfigurationError(f"no supervisor {supervisor!r} on node {self.node_id!r}")
            sup.add(server, restart)
        else:
            self.root.add(server, restart, max_restarts=max_restarts, period=restart_period)
        self._agents[id] = server
        for cap in caps:
            holders = self._by_capability.get(cap)
            if holders is None:
                holders = self._by_capability[cap] = {}
            holders[id] = None
        compiled = agent._compiled
        if compiled.has_mount or compiled.sensors or instance.schedules:
            try:
                await server.activate()
            except BaseException:
                self._forget(server)
                server.status = "failed"
                raise
        if self.telemetry.enabled:
            self.telemetry.emit(
                ("agentcluster", "agent", "started"),
                {"count": 1},
                {"agent_id": id, "agent": agent.__name__, "node_id": self.node_id},
            )
        return id

    async def stop_agent(self, id: str, reason: str = "shutdown", timeout: float = 5.0) -> None:
        server = self._agents.get(id)
        if server is None:
            raise AgentNotFound(f"no agent {id!r} on node {self.node_id!r}", agent_id=id)
        await server.stop(reason, timeout)

    async def start_supervisor(
        self,
        id: str,
        children: list[ChildSpec],
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
    ) -> Supervisor:
        """Start a supervisor and its children, in order (OTP semantics)."""
        if id in self._supervisors:
            raise ConfigurationError(f"supervisor {id!r} already exists")
        sup = Supervisor(self, id, strategy=strategy, max_restarts=max_restarts, period=period)
        self._supervisors[id] = sup
        for spec in children:
            await self.start_agent(
                spec.agent, spec.id, state=spec.state, restart=spec.restart, supervisor=id
            )
        return sup

    def supervisor(self, id: str) -> Supervisor:
        return self._supervisors[id]

    async def _spawn_child(self, parent: AgentServer, spawn: Spawn) -> str:
        return await self.start_agent(
            spawn.agent,
            spawn.id,
            state=spawn.state,
            restart=spawn.restart,
            _parent=parent,
            **dict(spawn.options),
        )

    async def _stop_child(self, parent: AgentServer, child_id: str) -> None:
        server = self._agents.get(child_id)
        if server is None or server.parent_id != parent.id:
            raise ConfigurationError(f"agent {parent.id!r} has no child {child_id!r}")
        await server.stop("shutdown")

    # --- bookkeeping called by servers and supervisors ------------------------------

    def _forget(self, server: AgentServer) -> None:
        if self._agents.get(server.id) is server:
            del self._agents[server.id]
        self._drop_capabilities(server)
        if server.supervisor is not None:
            server.supervisor.remove(server.id)

    def _drop_capabilities(self, server: AgentServer) -> None:
        for cap in server.capabilities:
            holders = self._by_capability.get(cap)
            if holders is not None:
                holders.pop(server.id, None)
                if not holders:
                    del self._by_capability[cap]

    def _stopped(self, server: AgentServer, reason: str, failed: bool) -> None:
        if not failed:
            self._forget(server)
        if self.telemetry.enabled:
            self.telemetry.emit(
                ("agentcluster", "agent", "stopped"),
                {"count": 1},
                {"agent_id": server.id, "reason": reason, "node_id": self.node_id},
            )

    def _crashed(self, server: AgentServer, error: BaseException) -> None:
        self.crashes += 1
        log.warning("agent %r crashed: %s: %s", server.id, type(error).__name__, error)
        self.telemetry.emit(
            ("agentcluster", "agent", "crashed"),
            {"count": 1},
            {
                "agent_id": server.id,
                "node_id": self.node_id,
                "error_type": type(error).__name__,
                "error": str(error),
            },
        )

    def _restarted(self, server: AgentServer, error: BaseException | None) -> None:
        self.restarts += 1
        self.telemetry.emit(
            ("agentcluster", "agent", "restarted"),
            {"count": 1},
            {"agent_id": server.id, "node_id": self.node_id},
        )

    def _alert_failed(self, server: AgentServer, reason: BaseException) -> None:
        log.error("agent %r failed for good: %s", server.id, reason)
        self._drop_capabilities(server)
        self.telemetry.emit(
            ("agentcluster", "alert", "raised"),
            {"count": 1},
            {
                "severity": "critical",
                "agent_id": server.id,
                "node_id": self.node_id,
                "reason": str(reason),
            },
        )

    # --- lookups ------------------------------------------------------------------

    def lookup(self, id: str) -> AgentInfo | None:
        server = self._agents.get(id)
        if server is None:
            return None
        return AgentInfo(
            id=server.id,
            agent=type(server.agent).__name__,
            node=self.node_id,
            status=server.status,
            capabilities=server.capabilities,
            mailbox_depth=server.mailbox_depth,
            parent=server.parent_id,
        )

    def find_by_capability(self, capability: str) -> list[str]:
        holders = self._by_capability.get(capability)
        return [aid for aid in holders if self._agents[aid].alive] if holders else []

    def agents(self) -> list[str]:
        return [aid for aid, server in self._agents.items() if server.alive]

    def mailbox_load(self) -> float:
        """How full this node's mailboxes are together (0..1): the load a node reports,
        so placement and request balancing steer away from a node whose agents queue."""
        queued = size = 0
        for server in self._agents.values():
            queued += server.mailbox_depth
            size += server.mailbox_size
        return 0.0 if size == 0 else min(1.0, queued / size)

    def __len__(self) -> int:
        return len(self._agents)

    def state(self, id: str) -> BaseModel:
        return self._server(id).agent.state

    def skill_state(self, id: str, skill: str) -> BaseModel:
        return self._server(id).agent.skill_states[skill]

    def snapshot(self, id: str) -> dict[str, Any]:
        return self._server(id).agent.snapshot(self.clock.monotonic())

    def server(self, id: str) -> AgentServer:
        return self._server(id)

    def _server(self, id: str) -> AgentServer:
        server = self._agents.get(id)
        if server is None:
            raise AgentNotFound(f"no agent {id!r} on node {self.node_id!r}", agent_id=id)
        return server

    # --- delivery -----------------------------------------------------------------

    def _resolve(self, target: Target, signal: Signal) -> list[AgentServer]:
        if type(target) is str:
            server = self._agents.get(target)
            if server is None or not server.alive:
                error = AgentNotFound(
                    f"no agent {target!r} on node {self.node_id!r}",
                    agent_id=target,
                    node_id=self.node_id,
                )
                self.dead_letter(signal, error, target)
                raise error
            return [server]
        if isinstance(target, Capability):
            holders = self.find_by_capability(target.name)
            if not holders:
                error = AgentNotFound(
                    f"no agent holds capability {target.name!r} on node {self.node_id!r}",
                    node_id=self.node_id,
                )
                self.dead_letter(signal, error, None)
                raise error
            if target.mode == "all":
                return [self._agents[aid] for aid in holders]
            return [self._agents[self._round_robin.pick(target.name, holders)]]
        raise ConfigurationError(f"a target is an agent id or a Capability, not {target!r}")

    def _push_deadline(self, signal: Signal, loop: asyncio.AbstractEventLoop) -> float:
        deadline = signal.deadline
        if deadline is None:
            return loop.time() + self.push_timeout
        return loop.time() + (deadline - self.clock.monotonic())

    async def cast(self, target: Target, signal: Signal) -> None:
        """At most once: into the mailbox, waiting for room up to the deadline."""
        if type(target) is str:
            server = self._agents.get(target)
            if server is not None and server.alive and server.offer(signal):
                return
        for server in self._resolve(target, signal):
            if server.offer(signal):
                continue
            await self._put(server, signal, signal)

    async def send(self, target: Target, signal: Signal, *, timeout: float | None = None) -> None:
        """Returns once the signal is in the mailbox (the acknowledgement on one node)."""
        if timeout is not None and signal.deadline is None:
            signal = signal.evolve(deadline=self.clock.monotonic() + timeout)
        for server in self._resolve(target, signal):
            if server.offer(signal):
                continue
            await self._put(server, signal, signal)

    async def _put(self, server: AgentServer, item: Any, signal: Signal) -> None:
        loop = asyncio.get_running_loop()
        try:
            await server.put(item, self._push_deadline(signal, loop))
        except DeliveryError as error:
            self.dead_letter(signal, error, server.id)
            raise

    async def call(self, target: Target, signal: Signal, *, timeout: float | None = None) -> Any:
        """Run the signal in the target agent and return the first action's result."""
        if isinstance(target, Capability) and target.mode == "all":
            raise ConfigurationError("call goes to one agent; use mode='one'")
        server = self._resolve(target, signal)[0]
        loop = asyncio.get_running_loop()
        now = self.clock.monotonic()
        if timeout is None:
            timeout = signal.deadline - now if signal.deadline is not None else DEFAULT_CALL_TIMEOUT
            if signal.deadline is None:
                signal = signal.evolve(deadline=now + timeout)
        else:
            deadline = now + timeout
            if signal.deadline is None or signal.deadline > deadline:
                signal = signal.evolve(deadline=deadline)
        chain = signal.callchain
        if chain:
            if server.id in chain and not server.agent.reentrant:
                error = CallCycle(
                    f"call to {server.id!r} would wait on itself: {' -> '.join(chain)} -> "
                    f"{server.id}",
                    chain=chain,
                    agent_id=server.id,
                )
                self.dead_letter(signal, error, server.id)
                raise error
            if len(chain) > MAX_CALL_DEPTH:
                error = CallCycle(
                    f"call chain deeper than {MAX_CALL_DEPTH}: {' -> '.join(chain[-5:])} ...",
                    chain=chain,
                    agent_id=server.id,
                )
                self.dead_letter(signal, error, server.id)
                raise error
        future: asyncio.Future[Any] = loop.create_future()
        call = _Call(signal, future)
        if chain and server.id in chain:
            # A reentrant agent: the call runs now, interleaved with the waiting one.
            return await self._call_inline(server, call, timeout)
        if not server.offer(call):
            await self._put(server, call, signal)
        timer = loop.call_later(timeout, _expire_call, future)
        try:
            return await future
        except CallTimeout as error:
            server.abandon(call)
            self.dead_letter(signal, error, server.id)
            error.agent_id = server.id
            error.node_id = self.node_id
            raise
        except asyncio.CancelledError:
            server.abandon(call)
            raise
        finally:
            timer.cancel()

    async def _call_inline(self, server: AgentServer, call: _Call, timeout: float) -> Any:
        # The nested call runs on the caller's task; the waiting action's watchdog state is
        # put back afterwards so its own timeout and cancellation still hold. The nested
        # call is bounded by the call timeout here, not by the agent's watchdog.
        saved = (server._action_deadline, server._running)
        try:
            async with asyncio.timeout(timeout):
                await server._handle_signal(call.signal, call)
        except TimeoutError:
            error = CallTimeout(
                f"reentrant call to {server.id!r} got no reply within {timeout}s",
                agent_id=server.id,
            )
            self.dead_letter(call.signal, error, server.id)
            raise error from None
        finally:
            server._action_deadline, server._running = saved
        return call.future.result()

    async def broadcast(self, signal: Signal) -> int:
        """Cast to every running agent that routes the signal's type; returns how many."""
        count = 0
        for server in list(self._agents.values()):
            if server.alive and server.agent.route(signal.type):
                if not server.offer(signal):
                    self.dead_letter(
                        signal,
                        MailboxFull(f"mailbox of agent {server.id!r} is full", agent_id=server.id),
                        server.id,
                    )
                    continue
                count += 1
        return count

    def publish(self, signal: Signal) -> int:
        """Publish on the node's bus; returns the journal offset."""
        return self.bus.publish(signal)

    def emit_from(self, agent_id: str, signal: Signal) -> None:
        """Carry out an ``Emit`` directive: to its target if it has one, else to the bus."""
        target = signal.target
        if target is None:
            self.bus.publish(signal)
            return
        server = self._agents.get(target)
        # A persistent target takes signals through its keeper (its durable inbox, or its
        # starting/fenced refusals), which the cluster outbound reaches.
        if server is None or not server.alive or server.keeper is not None:
            if self.outbound is not self:
                asyncio.get_running_loop().create_task(self._emit_away(signal, target))
                return
            self.dead_letter(
                signal,
                AgentNotFound(f"no agent {target!r} to receive an emitted signal", agent_id=target),
                target,
            )
            return
        if not server.offer(signal):
            asyncio.get_running_loop().create_task(self._emit_later(server, signal))

    async def _emit_away(self, signal: Signal, target: str) -> None:
        try:
            await self.outbound.send(target, signal)
        except AgentClusterError:
            pass  # the sender that gives up has dead-lettered it

    async def _emit_later(self, server: AgentServer, signal: Signal) -> None:
        try:
            await self._put(server, signal, signal)
        except AgentClusterError:
            pass  # already dead-lettered by _put

    def _deliver_from_bus(self, agent_id: str, signal: Signal) -> None:
        server = self._agents.get(agent_id)
        if server is None or not server.alive:
            self.dead_letter(
                signal,
                AgentNotFound(f"bus subscriber {agent_id!r} is gone", agent_id=agent_id),
                agent_id,
            )
        elif not server.offer(signal):
            self.dead_letter(
                signal,
                MailboxFull(f"mailbox of agent {agent_id!r} is full", agent_id=agent_id),
                agent_id,
            )

    def dead_letter(self, signal: Signal, error: AgentClusterError, agent_id: str | None) -> None:
        self.dead_letters.add(
            DeadLetter(
                signal=signal,
                reason=error.reason,
                agent_id=agent_id,
                node_id=self.node_id,
                at=self.clock.wall(),
                error=error.to_dict(),
            )
        )


def _expire_call(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(CallTimeout("no reply before the call's deadline"))
