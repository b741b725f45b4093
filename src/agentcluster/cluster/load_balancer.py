"""The load balancer system agent: request balancing made visible and steerable.

``system.<node>.load_balancer`` is the shell around its node's ``RequestBalancer``
(``cluster.balancing``), which decides every ``Capability(name, "one")`` request the node
sends. Each refresh it records what the balancer sees — node capacities and loads from the
membership records (renewed with every lease renewal), latency and error figures from the
requests observed, breaker states — and it answers:

- ``cluster.load_balancer.status`` — strategy, thresholds, counts (routed, refused, shed),
  node figures and breaker states;
- ``cluster.load_balancer.routing_table`` — per capability: strategy, available holders
  with their in-flight counts and figures, the excluded ones;
- ``cluster.load_balancer.history`` — the latest decisions (bounded);
- ``cluster.load_balancer.traffic_surge_detected`` — tightens the shedding thresholds by
  the configured factor and, only when the config names a ``surge_strategy``, switches
  strategy; ``cluster.load_balancer.traffic_normal`` restores them;
- ``cluster.load_balancer.set_strategy`` — an operator's explicit switch.

Breaker transitions and shed requests are emitted as telemetry by the balancer itself
(``BREAKER_CHANGED``, ``REQUEST_SHED``), at the moment they happen.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agentcluster.agent.action import Action, NoParams
from agentcluster.agent.context import Context
from agentcluster.cluster.balancing import RequestBalancer
from agentcluster.cluster.system_base import SYSTEM_CAPABILITY, SystemAgent, cluster_node
from agentcluster.core.membership import NodeStatus
from agentcluster.errors import ConfigurationError

__all__ = ["LOAD_BALANCER", "LoadBalancerAgent", "LoadBalancerState"]

LOAD_BALANCER = "load_balancer"


class NodeFigures(BaseModel):
    capacity: dict[str, float] = Field(default_factory=dict)
    load: float = 0.0
    agent_count: int = 0
    breaker: str = "closed"


class LoadBalancerState(BaseModel):
    node_id: str = ""
    refresh_interval: float = 1.0
    strategy: str = ""
    thresholds: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, NodeFigures] = Field(default_factory=dict)
    breakers: dict[str, dict[str, str]] = Field(default_factory=dict)
    routed: int = 0
    refused: int = 0
    shed: int = 0
    surges: int = 0
    refreshed_at: float | None = None


def _balancer(ctx: Context) -> RequestBalancer:
    outbound = cluster_node(ctx).outbound
    if outbound is None:
        raise ConfigurationError(f"{ctx.agent_id!r}: its node is not started")
    return outbound.balancer


def _observe(ctx: Context) -> dict[str, Any]:
    """The state changes of a refresh: the balancer and the membership read now."""
    node = cluster_node(ctx)
    balancer = _balancer(ctx)
    breakers = balancer.breakers()
    nodes = {
        node_id: NodeFigures(
            capacity=dict(record.capacity),
            load=record.load,
            agent_count=record.agent_count,
            breaker=breakers["nodes"].get(node_id, "closed"),
        )
        for node_id, record in sorted(node.members().items())
        if record.status is NodeStatus.ALIVE
    }
    return {
        "node_id": node.node_id,
        "strategy": balancer.strategy,
        "thresholds": balancer.thresholds(),
        "nodes": nodes,
        "breakers": breakers,
        "routed": balancer.routed,
        "refused": balancer.refused,
        "shed": balancer.shed,
        "surges": balancer.surges,
        "refreshed_at": ctx.node.clock.monotonic(),
    }


def _status(changes: dict[str, Any], state: LoadBalancerState) -> dict[str, Any]:
    return state.model_copy(update=changes).model_dump(mode="json", exclude={"refresh_interval"})


class BalancerStatus(Action):
    """Strategy, thresholds, counts, node figures and breaker states, read now."""

    name = "status"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        changes = _observe(ctx)
        return _status(changes, ctx.state), ctx.set(**changes)


class RoutingTable(Action):
    """Per capability balanced so far: its strategy and holders, available and excluded."""

    name = "routing_table"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        return _balancer(ctx).routing_table()


class DecisionHistory(Action):
    """The latest balancing decisions, oldest first."""

    name = "history"

    class Params(BaseModel):
        limit: int = Field(default=100, ge=1, le=10_000)

    async def run(self, params: DecisionHistory.Params, ctx: Context) -> Any:
        return [
            {
                "at": d.at,
                "capability": d.capability,
                "strategy": d.strategy,
                "agent_id": d.agent_id,
                "node": d.node,
                "outcome": d.outcome,
            }
            for d in _balancer(ctx).history(params.limit)
        ]


class TrafficSurgeDetected(Action):
    """Shed earlier for a while: thresholds tightened by ``factor`` (the config's
    ``surge_factor`` when not given); the strategy switches only if configured to."""

    name = "traffic_surge_detected"

    class Params(BaseModel):
        factor: float | None = Field(default=None, gt=0, le=1)
        source: str | None = None

    async def run(self, params: TrafficSurgeDetected.Params, ctx: Context) -> Any:
        thresholds = _balancer(ctx).tighten(params.factor)
        changes = _observe(ctx)
        return thresholds, ctx.set(**changes)


class TrafficNormal(Action):
    """The surge is over: the configured thresholds and strategy again."""

    name = "traffic_normal"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        thresholds = _balancer(ctx).relax()
        return thresholds, ctx.set(**_observe(ctx))


class SetStrategy(Action):
    """Balance every capability with another request strategy from now on."""

    name = "set_strategy"

    class Params(BaseModel):
        strategy: str

    async def run(self, params: SetStrategy.Params, ctx: Context) -> Any:
        _balancer(ctx).set_strategy(params.strategy)
        return {"strategy": params.strategy}, ctx.set(**_observe(ctx))


class BalancerRefresh(Action):
    """Record what the balancer sees now in the agent's state."""

    name = "refresh"

    async def run(self, params: NoParams, ctx: Context) -> Any:
        return None, ctx.set(**_observe(ctx))


class LoadBalancerAgent(SystemAgent):
    """Shows and steers how this node balances requests to capabilities."""

    State = LoadBalancerState
    capabilities = [SYSTEM_CAPABILITY, f"{SYSTEM_CAPABILITY}.{LOAD_BALANCER}"]
    routes = {
        "cluster.load_balancer.status": BalancerStatus,
        "cluster.load_balancer.routing_table": RoutingTable,
        "cluster.load_balancer.history": DecisionHistory,
        "cluster.load_balancer.traffic_surge_detected": TrafficSurgeDetected,
        "cluster.load_balancer.traffic_normal": TrafficNormal,
        "cluster.load_balancer.set_strategy": SetStrategy,
        "cluster.load_balancer.refresh": BalancerRefresh,
    }

    def mount(self, ctx: Context) -> Any:
        return None, [
            ctx.set(**_observe(ctx)),
            ctx.schedule(BalancerRefresh, every=ctx.state.refresh_interval, key="refresh"),
        ]
