"""The health monitor system agent: checks every node, alerts, and quarantines (leader).

``system.<node>.health_monitor`` is the shell around ``core.health``'s ``HealthBook``.
Theory of operation:

- **Who checks.** Every node runs a monitor, but only the leader's probes and decides:
  one set of baselines, one alert per finding, one writer of automatic quarantine steps.
  A monitor that becomes leader starts a fresh book (its baselines judge nothing until
  ``min_samples`` windows); the quarantine records themselves live in the store
  (``cluster.quarantine``), so a quarantine and its probation carry on across leaders.
  Every monitor answers the probes of the leader's: ``cluster.health_monitor.vitals``.
- **Probing** runs in the agent's sensor (``HealthProber``), outside its mailbox, so two
  monitors never wait on each other's mailbox: when a level is due it reads ``basic`` from
  this node's phi detectors, asks every live node's monitor for ``comprehensive`` vitals
  (each request bounded by ``vitals_timeout``), pings a seeded sample of each node's
  running agents, user and system alike, for ``deep`` (``agent.server.PING``, which every
  agent answers from its mailbox without a route), and hands ``predictive`` each node's
  declared capacity. The observations come back into the mailbox as
  ``cluster.health_monitor.observed``; its action feeds the book and carries out what
  the book decided.
- **Vitals** of a node, measured by its own monitor: process cpu and resident memory
  (psutil), event-loop lag (the heartbeat timer's lateness, the node's existing lag
  probe), the mailbox load of its agents, and an error rate: signals dead-lettered plus
  agent crashes per second (the runtime counts no other failures: a failed call's error
  goes back to its caller only). A ``vitals`` provider in the config replaces all of it,
  so tests drive anomalies deterministically.
- **Alerts** are emitted as telemetry (``HEALTH_ALERT``) and as ``cluster.health.alert``
  signals published on the monitor's node bus (``BusSensor("cluster.health.alert")``
  hears them), and sent to ``alert_target`` too when the config names an agent.
- **Quarantine** steps are written by compare-and-set from the record and revision in the
  watched cache, behind the fence; one that loses is decided again next window. An
  operator's ``cluster.health_monitor.quarantine`` / ``release`` is written by whichever
  monitor receives it. Placement and request balancing read the cache on every node.
- **Escalations** go to the config's ``escalate`` hook (sync or async), each bounded by
  ``hook_timeout``; a failing hook is logged and counted, never raised.

The config and the book live in a node-side ``HealthService``
(``LocalNode.services["health_monitor"]``), so an agent restart loses no baselines and
``configure_health_monitor`` can change the config of a running node.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from agentcluster.agent.action import Action, NoParams
from agentcluster.agent.context import Context
from agentcluster.agent.sensor import Sensor, SensorHost
from agentcluster.agent.server import PING
from agentcluster.cluster.quarantine import QuarantineBook, quarantine_book
from agentcluster.cluster.system_base import (
    SYSTEM_CAPABILITY,
    SystemAgent,
    cluster_node,
    liveness_started,
    system_agent_id,
)
from agentcluster.core.health import (
    Alert,
    CheckLevel,
    Escalation,
    EscalationReason,
    HealthBook,
    HealthPolicy,
    Quarantine,
    Severity,
    WindowDecision,
    operator_quarantine,
    operator_release,
    sample_agents,
)
from agentcluster.core.membership import NodeStatus
from agentcluster.core.registry import AgentStatus
from agentcluster.core.signal import Signal
from agentcluster.errors import (
    AgentClusterError,
    ConfigurationError,
    KeyExists,
    NodeUnavailable,
    RevisionMismatch,
    TransportError,
    UsageError,
)

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = [
    "ALERT_SIGNAL",
    "HEALTH_ALERT",
    "HEALTH_MONITOR",
    "HEALTH_QUARANTINE",
    "HEALTH_SERVICE",
    "EscalationHook",
    "HealthMonitorAgent",
    "HealthMonitorConfig",
    "HealthMonitorState",
    "HealthService",
    "VitalsProvider",
    "configure_health_monitor",
    "health_service",
]

_log = logging.getLogger("agentcluster.cluster.health_monitor")

HEALTH_MONITOR = "health_monitor"
HEALTH_SERVICE = "health_monitor"
"""The ``LocalNode.services`` key of a node's ``HealthService``."""
HEALTH_ALERT = ("agentcluster", "health", "alert")
"""Measurements ``value``, ``z`` (when known); metadata: the alert's fields and ``observer``."""
HEALTH_QUARANTINE = ("agentcluster", "health", "quarantine")
"""A quarantine transition written: metadata ``node``, ``state``, ``transition`` (quarantined,
probation, relapsed, released), ``operator``, ``reason``."""
ALERT_SIGNAL = "cluster.health.alert"
OBSERVED = "cluster.health_monitor.observed"

_RECENT = 32
_MIB = 1024 * 1024

VitalsProvider = Callable[[str], Mapping[str, float] | Awaitable[Mapping[str, float]]]
"""Given a node id, that node's vitals (metric -> value); replaces the psutil reading."""
EscalationHook = Callable[[Escalation], Any]
"""Called with each escalation; may be a coroutine function. Must not block the loop."""


@dataclass(frozen=True, slots=True)
class HealthMonitorConfig:
    """How a node's health monitor works (the module docstring says what each part does).

    ``vitals_timeout`` and ``ping_timeout`` bound each probe (the seed's comprehensive
    check timeout is 30 s); ``deep_sample`` is how many agents of a node are pinged;
    ``concurrency`` bounds the probes in flight; ``poll`` is the longest the prober sleeps
    (how soon it notices it became leader); ``alerts_kept`` bounds the alert history.
    """

    policy: HealthPolicy = field(default_factory=HealthPolicy)
    vitals: VitalsProvider | None = None
    escalate: EscalationHook | None = None
    alert_target: str | None = None
    vitals_timeout: float = 30.0
    ping_timeout: float = 30.0
    hook_timeout: float = 5.0
    deep_sample: int = 3
    concurrency: int = 16
    poll: float = 1.0
    alerts_kept: int = 1000

    def __post_init__(self) -> None:
        for name in ("vitals_timeout", "ping_timeout", "hook_timeout", "poll"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"{name} must be seconds > 0, got {value!r}")
        for name in ("deep_sample", "concurrency", "alerts_kept"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")


class _ProcessVitals:
    """This process's vitals for its node; the error rate is per second since last read."""

    def __init__(self) -> None:
        self._process: Any = None
        self._errors: tuple[int, float] | None = None

    def read(self, node: ClusterNode, now: float) -> dict[str, float]:
        import psutil

        if self._process is None:
            self._process = psutil.Process()
            self._process.cpu_percent(None)
        local = node.local
        liveness = node.liveness
        lag = liveness.heartbeats.lag if liveness_started(liveness) and liveness else 0.0
        errors = local.dead_letters.total + local.crashes
        rate = 0.0
        if self._errors is not None and now > self._errors[1]:
            rate = max(errors - self._errors[0], 0) / (now - self._errors[1])
        self._errors = (errors, now)
        return {
            "cpu_percent": float(self._process.cpu_percent(None)),
            "memory_mb": self._process.memory_info().rss / _MIB,
            "loop_lag_ms": lag * 1000.0,
            "mailbox_load": local.mailbox_load(),
            "error_rate": rate,
        }


class HealthService:
    """A node's health monitor config, book and alert history (module docstring)."""

    def __init__(self, node: ClusterNode, config: HealthMonitorConfig | None = None) -> None:
        self.node = node
        self.wake = asyncio.Event()
        self.generation = 0
        self.term: int | None = None
        """The leader term the book was started in (None: not leading)."""
        self._sampler = _ProcessVitals()
        self._rng = random.Random(f"{node.node_id}/health")
        self.config = config or HealthMonitorConfig()
        self.book = HealthBook(self.config.policy, now=self._now())
        self.alerts: deque[Alert] = deque(maxlen=self.config.alerts_kept)

    def _now(self) -> float:
        return self.node.local.clock.monotonic()

    def configure(self, config: HealthMonitorConfig) -> None:
        """Use ``config`` from now on: a fresh book, and the prober woken to see it."""
        self.config = config
        self.generation += 1
        self.book = HealthBook(config.policy, now=self._now())
        self.alerts = deque(self.alerts, maxlen=config.alerts_kept)
        self.wake.set()

    @property
    def quarantine(self) -> QuarantineBook | None:
        return quarantine_book(self.node.local.services)

    def leading(self) -> int | None:
        """The current leader term if this node leads, else None; a new term starts a fresh
        book (writes still check the fence themselves)."""
        liveness = self.node.liveness
        if not liveness_started(liveness) or liveness is None or not liveness.is_leader:
            self.term = None
            return None
        leader = liveness.leader()
        term = None if leader is None else leader[1]
        if term is not None and term != self.term:
            self.term = term
            self.generation += 1
            self.book = HealthBook(self.config.policy, now=self._now())
        return term

    async def read_vitals(self) -> dict[str, float]:
        """This node's own vitals, from the provider when configured."""
        provider = self.config.vitals
        if provider is None:
            return self._sampler.read(self.node, self._now())
        found = provider(self.node.node_id)
        if inspect.isawaitable(found):
            found = await found
        return _numbers(found)

    def pick(self, candidates: list[str], k: int) -> list[str]:
        return sample_agents(candidates, k, self._rng)


def health_service(services: Mapping[str, Any]) -> HealthService:
    found = services.get(HEALTH_SERVICE)
    if not isinstance(found, HealthService):
        raise ConfigurationError("this node runs no health monitor service")
    return found


def configure_health_monitor(node: ClusterNode, config: HealthMonitorConfig) -> HealthService:
    """Change the health monitor config of a started node (its system agents running)."""
    service = health_service(node.local.services)
    service.configure(config)
    return service


def _numbers(raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        return {}
    return {
        str(k): float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


# --- probing (outside the mailbox) ------------------------------------------------------


def _alive_nodes(node: ClusterNode, limit: int) -> dict[str, dict[str, float]]:
    """Alive node id -> declared capacity, sorted, at most ``limit``."""
    alive = [
        (node_id, dict(record.capacity))
        for node_id, record in sorted(node.members().items())
        if record.status is NodeStatus.ALIVE
    ]
    return dict(alive[:limit])


def _ping_targets(node: ClusterNode, target: str) -> list[str]:
    """The running agents of ``target`` other than its health monitor, in id order."""
    registry = node.registry
    if registry is None:
        return []
    own_monitor = system_agent_id(target, HEALTH_MONITOR)
    found = []
    for agent_id in registry.index.on_node(target):
        entry = registry.lookup(agent_id)
        if entry is not None and agent_id != own_monitor and entry.status is AgentStatus.RUNNING:
            found.append(agent_id)
    return sorted(found)


async def probe(service: HealthService, levels: tuple[CheckLevel, ...]) -> dict[str, Any]:
    """Gather the observations of ``levels`` about every live node (JSON-safe)."""
    node = service.node
    config = service.config
    clock = node.local.clock
    now, at = clock.monotonic(), clock.wall()
    nodes = _alive_nodes(node, config.policy.max_nodes)
    observed: dict[str, Any] = {
        "generation": service.generation,
        "levels": [level.value for level in levels],
        "now": now,
        "at": at,
        "nodes": sorted(nodes),
        "capacity": nodes,
    }
    gate = asyncio.Semaphore(config.concurrency)
    outbound = node.outbound
    if CheckLevel.BASIC in levels:
        liveness = node.liveness
        heartbeats = liveness.heartbeats if liveness_started(liveness) and liveness else None
        observed["suspected"] = {
            n: heartbeats is not None and n != node.node_id and heartbeats.suspected(n)
            for n in nodes
        }

    async def vitals_of(target: str) -> dict[str, float] | None:
        async with gate:
            try:
                if target == node.node_id:
                    return await service.read_vitals()
                if outbound is None:
                    return None
                reply = await outbound.call(
                    system_agent_id(target, HEALTH_MONITOR),
                    Signal(f"cluster.{HEALTH_MONITOR}.vitals"),
                    timeout=config.vitals_timeout,
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:
                _log.info("no vitals from %r: %s", target, error)
                return None
            return _numbers(reply.get("metrics") if isinstance(reply, Mapping) else None)

    async def ping(agent_id: str) -> bool:
        async with gate:
            if outbound is None:
                return False
            try:
                await outbound.call(agent_id, Signal(PING), timeout=config.ping_timeout)
            except AgentClusterError:
                return False
            return True

    async def deep_of(target: str) -> list[int]:
        chosen = service.pick(_ping_targets(node, target), config.deep_sample)
        answers = await asyncio.gather(*(ping(agent_id) for agent_id in chosen))
        return [sum(answers), len(answers)]

    order = sorted(nodes)
    want_vitals = CheckLevel.COMPREHENSIVE in levels
    want_deep = CheckLevel.DEEP in levels
    vitals, deep = await asyncio.gather(
        asyncio.gather(*(vitals_of(n) for n in order)) if want_vitals else _none(),
        asyncio.gather(*(deep_of(n) for n in order)) if want_deep else _none(),
    )
    if want_vitals:
        observed["vitals"] = dict(zip(order, vitals or (), strict=True))
    if want_deep:
        observed["deep"] = dict(zip(order, deep or (), strict=True))
    return observed


async def _none() -> None:
    return None


class HealthProber(Sensor):
    """Runs the due checks while this node leads, outside the agent's mailbox."""

    signal_type = OBSERVED

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> Sensor:
        return HealthProber()

    async def start(self, host: SensorHost) -> None:
        service = health_service(host.node.services)
        self._task = asyncio.get_running_loop().create_task(
            self._loop(host, service), name=f"sensor:{host.agent_id}:HealthProber"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError

    async def _loop(self, host: SensorHost, service: HealthService) -> None:
        clock = host.node.clock
        while True:
            now = clock.monotonic()
            wait = service.config.poll
            if service.leading() is not None:
                deadline = service.book.next_deadline()
                if deadline is not None:
                    wait = min(wait, max(deadline - now, 1e-3))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await service.wake.wait()
            service.wake.clear()
            now = clock.monotonic()
            if service.leading() is None:
                continue
            levels = service.book.due(now)
            if not levels:
                continue
            for level in levels:
                service.book.ran(level, now)
            try:
                observed = await probe(service, levels)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("health probe of %r failed", host.node.node_id)
                continue
            host.emit(self._signal(host, observed))


# --- the agent --------------------------------------------------------------------------


class HealthMonitorState(BaseModel):
    node_id: str = ""
    leader: bool = False
    windows: int = 0
    """Check windows this monitor closed (per node)."""
    checked_at: float | None = None
    alerts: int = 0
    recent_alerts: list[dict[str, Any]] = Field(default_factory=list)
    verdicts: dict[str, str] = Field(default_factory=dict)
    written: int = 0
    """Quarantine records this monitor wrote."""
    lost: int = 0
    """Quarantine writes that lost their compare-and-set (decided again next window)."""
    escalations: int = 0
    hook_failures: int = 0


async def _call_hook(config: HealthMonitorConfig, escalation: Escalation) -> bool:
    hook = config.escalate
    if hook is None:
        return True
    try:
        async with asyncio.timeout(config.hook_timeout):
            outcome = hook(escalation)
            if inspect.isawaitable(outcome):
                await outcome
    except asyncio.CancelledError:
        raise
    except Exception:
        _log.exception("escalation hook failed for %s of %r", escalation.reason, escalation.node)
        return False
    return True


def _emit_alert(ctx: Context, service: HealthService, alert: Alert) -> list[Any]:
    """Record and emit one alert: telemetry now, the signals as directives."""
    service.alerts.append(alert)
    measurements = {"count": 1.0}
    if alert.value is not None:
        measurements["value"] = alert.value
    if alert.z is not None:
        measurements["z"] = alert.z
    ctx.node.telemetry.emit(
        HEALTH_ALERT, measurements, {**alert.to_json(), "observer": service.node.node_id}
    )
    data = alert.to_json()
    directives = [ctx.emit(ALERT_SIGNAL, data)]
    target = service.config.alert_target
    if target is not None:
        directives.append(ctx.emit(ALERT_SIGNAL, data, target=target))
    return directives


def _fenced(node: ClusterNode) -> bool:
    liveness = node.liveness
    return liveness is not None and liveness.valid()


async def _write_step(
    service: HealthService, decision: WindowDecision, revision: int | None
) -> Quarantine | None:
    """Write a quarantine step by compare-and-set; None when it lost or could not be sent."""
    book = service.quarantine
    record = decision.step.record
    if book is None or record is None:
        return None
    try:
        return await book.write(record, revision)
    except (RevisionMismatch, KeyExists):
        _log.info("quarantine step of %r lost its compare-and-set; next window", decision.node)
    except TransportError as error:
        _log.warning("quarantine step of %r not written: %s", decision.node, error)
    return None


async def apply_observed(ctx: Context, observed: Mapping[str, Any]) -> dict[str, Any]:
    """Feed one probe's observations to the book and carry out its decisions.

    Returns a summary and leaves the directives to emit in ``summary["_directives"]``.
    """
    service = health_service(ctx.node.services)
    state: HealthMonitorState = ctx.state
    node = service.node
    term = service.leading()
    if term is None or observed.get("generation") != service.generation:
        return {"checked": False, "leader": term is not None, "_directives": []}
    book = service.book
    now, at = float(observed["now"]), float(observed["at"])
    nodes: list[str] = list(observed.get("nodes", ()))
    levels = {CheckLevel(level) for level in observed.get("levels", ())}
    for gone in set(book.nodes()) - set(nodes):
        book.forget(gone)
    suspected = observed.get("suspected", {})
    vitals = observed.get("vitals", {})
    deep = observed.get("deep", {})
    capacity = observed.get("capacity", {})
    for target in nodes:
        if CheckLevel.BASIC in levels:
            book.basic(target, suspected=bool(suspected.get(target)), now=now, at=at)
        if CheckLevel.COMPREHENSIVE in levels:
            book.comprehensive(target, vitals.get(target), now=now, at=at)
        if CheckLevel.DEEP in levels and target in deep:
            answered, asked = deep[target]
            book.deep(target, answered=answered, asked=asked, now=now, at=at)
        if CheckLevel.PREDICTIVE in levels:
            book.predictive(target, _numbers(capacity.get(target)), now=now, at=at)
    quarantine = service.quarantine
    directives: list[Any] = []
    written = lost = escalated = failures = 0
    verdicts: dict[str, str] = {}
    alerts: list[Alert] = []
    for target in nodes:
        record = None if quarantine is None else quarantine.record(target)
        revision = None if quarantine is None else quarantine.revision(target)
        decision = book.window(target, record, now=now, at=at)
        verdicts[target] = decision.verdict.value
        kept = decision.alerts
        transitioned = False
        if decision.step.changed:
            done = None
            if _fenced(node) and service.leading() == term:
                done = await _write_step(service, decision, revision)
            if done is None:
                lost += 1
            else:
                written += 1
                transitioned = decision.step.transition is not None
                if transitioned:
                    _quarantine_event(ctx, done, decision.step.transition, operator=False)
        if not transitioned:
            # Not written: the transition did not happen, so neither does its alert.
            kept = tuple(a for a in kept if a.metric != "quarantine")
        for alert in kept:
            alerts.append(alert)
            directives.extend(_emit_alert(ctx, service, alert))
        for escalation in decision.escalations:
            if escalation.reason is not EscalationReason.CRITICAL_ALERT and not transitioned:
                continue
            escalated += 1
            if not await _call_hook(service.config, escalation):
                failures += 1
    await _forget_departed(service)
    changes = {
        "node_id": node.node_id,
        "leader": True,
        "windows": state.windows + len(nodes),
        "checked_at": now,
        "alerts": state.alerts + len(alerts),
        "recent_alerts": [*state.recent_alerts, *(a.to_json() for a in alerts)][-_RECENT:],
        "verdicts": verdicts,
        "written": state.written + written,
        "lost": state.lost + lost,
        "escalations": state.escalations + escalated,
        "hook_failures": state.hook_failures + failures,
    }
    return {
        "checked": True,
        "leader": True,
        "levels": sorted(level.value for level in levels),
        "verdicts": verdicts,
        "alerts": [a.to_json() for a in alerts],
        "quarantined": [] if quarantine is None else quarantine.quarantined(),
        "_changes": changes,
        "_directives": directives,
    }


async def _forget_departed(service: HealthService) -> None:
    """Delete the records of nodes whose membership record is gone (bounded keys); a node
    that is merely dead keeps its record, and is judged again when it rejoins."""
    quarantine = service.quarantine
    node = service.node
    liveness = node.liveness
    if (
        quarantine is None
        or not _fenced(node)
        or liveness is None
        or not liveness.membership.complete
    ):
        return  # an incomplete membership cache would forget records of live nodes
    members = node.members()
    for target in quarantine.records():
        revision = quarantine.revision(target)
        if target in members or revision is None:
            continue
        try:
            await quarantine.forget(target, revision)
        except TransportError as error:
            _log.info("released quarantine record of %r kept for now: %s", target, error)


def _quarantine_event(ctx: Context, record: Quarantine, transition: Any, *, operator: bool) -> None:
    ctx.node.telemetry.emit(
        HEALTH_QUARANTINE,
        {"count": 1.0},
        {
            "node": record.node,
            "state": record.state.value,
            "transition": None if transition is None else str(transition),
            "operator": operator,
            "reason": record.reason,
        },
    )


def _outcome(result: dict[str, Any], ctx: Context) -> tuple[dict[str, Any], list[Any]]:
    directives = list(result.pop("_directives", []))
    changes = result.pop("_changes", None)
    if changes is not None:
        directives.append(ctx.set(**changes))
    return result, directives


class Observed(Action):
    """Apply a probe's observations (sent by this agent's own sensor)."""

    name = "observed"
    timeout = 120.0

    class Params(BaseModel):
        model_config = {"extra": "allow"}

    async def run(self, params: Observed.Params, ctx: Context) -> Any:
        return _outcome(await apply_observed(ctx, params.model_dump()), ctx)


class Check(Action):
    """Run every check now (leader only; a follower answers who leads). Waits for the probes:
    call it with a timeout above the config's ``vitals_timeout`` and ``ping_timeout``."""

    name = "check"
    timeout = 120.0

    async def run(self, params: NoParams, ctx: Context) -> Any:
        service = health_service(ctx.node.services)
        if service.leading() is None:
            return _not_leading(service)
        now = ctx.node.clock.monotonic()
        levels = tuple(service.config.policy.intervals)
        for level in levels:
            service.book.ran(level, now)
        observed = await probe(service, levels)
        return _outcome(await apply_observed(ctx, observed), ctx)


def _not_leading(service: HealthService) -> dict[str, Any]:
    liveness = service.node.liveness
    leader = liveness.leader() if liveness_started(liveness) and liveness else None
    return {
        "checked": False,
        "leader": False,
        "leader_monitor": None if leader is None else system_agent_id(leader[0], HEALTH_MONITOR),
    }


class Vitals(Action):
    """This node's vitals now (what the leader's monitor asks each node)."""

    name = "vitals"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        service = health_service(ctx.node.services)
        return {
            "node": service.node.node_id,
            "metrics": await service.read_vitals(),
            "at": ctx.node.clock.wall(),
        }


class Ping(Action):
    """Answers at once: the monitor's mailbox is moving."""

    name = "ping"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        return {"node": cluster_node(ctx).node_id, "at": ctx.node.clock.wall()}


class Status(Action):
    """Baselines, verdicts, predictions, recent alerts and every quarantine with its
    evidence (baselines and verdicts are the leader's: a follower judges nothing)."""

    name = "status"

    class Params(BaseModel):
        alerts: int = Field(default=100, ge=0, le=10_000)

    async def run(self, params: Status.Params, ctx: Context) -> Any:
        service = health_service(ctx.node.services)
        book = service.book
        now = ctx.node.clock.monotonic()
        quarantine = service.quarantine
        leading = service.leading() is not None
        liveness = service.node.liveness
        leader = liveness.leader() if liveness_started(liveness) and liveness else None
        alerts = list(service.alerts)[-params.alerts :] if params.alerts else []
        return {
            "node_id": service.node.node_id,
            "leader": leading,
            "leader_monitor": None
            if leader is None
            else system_agent_id(leader[0], HEALTH_MONITOR),
            "intervals": {
                level.value: seconds for level, seconds in service.config.policy.intervals.items()
            },
            "next_check_in": None
            if book.next_deadline() is None or not leading
            else max((book.next_deadline() or now) - now, 0.0),
            "baselines": {
                n: {m: b.to_json() for m, b in book.baselines(n).items()} for n in book.nodes()
            },
            "verdicts": {
                n: {level.value: v.value for level, v in book.verdicts(n, now).items()}
                for n in book.nodes()
            },
            "predictions": {
                n: {m: p.to_json() for m, p in book.predictions(n).items()} for n in book.nodes()
            },
            "alerts": [a.to_json() for a in alerts],
            "quarantines": {}
            if quarantine is None
            else {n: r.to_json() for n, r in quarantine.records().items()},
            "quarantined": [] if quarantine is None else quarantine.quarantined(),
            "counters": ctx.state.model_dump(
                mode="json", include={"windows", "alerts", "written", "lost", "escalations"}
            ),
        }


class OperatorQuarantine(Action):
    """Quarantine ``node`` now, with ``reason``; with ``hold`` (the default) it stays until
    released, otherwise it follows probation like an automatic one."""

    name = "quarantine"

    class Params(BaseModel):
        node: str
        reason: str = "operator"
        hold: bool = True
        drain: bool | None = None

    async def run(self, params: OperatorQuarantine.Params, ctx: Context) -> Any:
        service = health_service(ctx.node.services)
        book = _writable(service, params.node)
        at = ctx.node.clock.wall()
        drain = service.config.policy.drain if params.drain is None else params.drain

        def change(current: Quarantine | None) -> Quarantine:
            return operator_quarantine(
                current,
                params.node,
                params.reason,
                at=at,
                hold=params.hold,
                drain=drain,
                max_evidence=service.config.policy.max_evidence,
            )

        record = await book.change(params.node, change)
        assert record is not None
        _quarantine_event(ctx, record, "quarantined", operator=True)
        alert = record.evidence[-1]
        directives = _emit_alert(ctx, service, alert)
        escalation = Escalation(params.node, EscalationReason.QUARANTINED, at, (alert,), record)
        ok = await _call_hook(service.config, escalation)
        state: HealthMonitorState = ctx.state
        directives.append(
            ctx.set(
                escalations=state.escalations + 1,
                hook_failures=state.hook_failures + (0 if ok else 1),
                written=state.written + 1,
            )
        )
        return record.to_json(), directives


class OperatorRelease(Action):
    """Release ``node`` from quarantine now (an operator's word, probation skipped)."""

    name = "release"

    class Params(BaseModel):
        node: str
        reason: str = "operator"

    async def run(self, params: OperatorRelease.Params, ctx: Context) -> Any:
        service = health_service(ctx.node.services)
        book = _writable(service, params.node)
        at = ctx.node.clock.wall()
        released: list[Quarantine] = []

        def change(current: Quarantine | None) -> Quarantine | None:
            record = operator_release(current, params.reason, at=at)
            released[:] = [] if record is None else [record]
            return record

        record = await book.change(params.node, change)
        if not released or record is None or record.active:
            return {"released": False, "record": None if record is None else record.to_json()}
        _quarantine_event(ctx, record, "released", operator=True)
        message = f"{params.node} released by an operator: {params.reason}"
        alert = Alert(params.node, None, "quarantine", Severity.INFO, message, at)
        directives = _emit_alert(ctx, service, alert)
        state: HealthMonitorState = ctx.state
        directives.append(ctx.set(written=state.written + 1))
        return {"released": True, "record": record.to_json()}, directives


def _writable(service: HealthService, target: str) -> QuarantineBook:
    node = service.node
    book = service.quarantine
    if book is None:
        raise ConfigurationError(f"node {node.node_id!r} follows no quarantine keys")
    if target not in node.members():
        raise UsageError(f"no node {target!r} in the membership", node_id=target)
    if not _fenced(node):
        raise NodeUnavailable(
            f"node {node.node_id!r} cannot write now: its lease has lapsed",
            node_id=node.node_id,
        )
    return book


class HealthMonitorAgent(SystemAgent):
    """Checks every node while its node leads; answers every leader's probes."""

    State = HealthMonitorState
    capabilities = [SYSTEM_CAPABILITY, f"{SYSTEM_CAPABILITY}.{HEALTH_MONITOR}"]
    sensors: ClassVar[list[Sensor]] = [HealthProber()]
    routes = {
        "cluster.health_monitor.status": Status,
        "cluster.health_monitor.check": Check,
        "cluster.health_monitor.vitals": Vitals,
        "cluster.health_monitor.ping": Ping,
        "cluster.health_monitor.quarantine": OperatorQuarantine,
        "cluster.health_monitor.release": OperatorRelease,
        OBSERVED: Observed,
    }
