"""Three nodes in one process, one of them killed: what ``agentcluster demo`` runs.

Theory of operation. ``Cluster.local(nodes=3)`` starts three nodes over the memory
transport. Six ``Quoter`` agents (plain mode, capability ``quotes``) are placed round robin,
two per node. All traffic comes from the ``Cluster`` facade, which sends through its first
live node, as a client attached to it would:

1. **Three nodes up.** A ``cast`` to ``Capability("quotes", "all")`` sets every quoter's
   rates; each quoter is called and sent to by id; then a few paced clients send
   ``Capability("quotes")`` requests (round robin over the holders).
2. **The kill.** Between two requests (so no call is in flight through a node that
   vanishes, the facade's own node included), one node is killed — by default whichever
   leads. Its connections drop at once and it writes nothing more.
3. **Detection.** The clients go on at once while a watcher polls every few milliseconds
   what each survivor sees: phi suspicion, the killed node's record turning ``dead`` (the
   lease rule), the leader, and the killed node's agents turning ``unavailable`` (the
   leader's duty). The declaration itself comes from telemetry, with its observer.
4. **After.** Every agent is called and sent to by id again: survivors answer, the killed
   node's agents are refused at once with ``AgentUnavailable`` (plain agents are not
   restarted elsewhere). Each survivor's own count of work is read back and compared with
   what the clients saw answered.

A capability request tries the holder the facade picks, one attempt with a short deadline
each, until one answers. Until the declaration the round robin still picks the killed
node's agents, and those attempts time out; an attempt that picks one after it is marked
``unavailable`` is refused at once. Both are counted, per phase. ``judge`` turns the
measurements into the invariants; ``run_cluster_demo`` returns them in a
``ClusterDemoReport``. Everything printed is measured (the watcher's times to within its
polling interval); only the timings vary between runs of one seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from agentcluster.agent import Action, Agent, Capability
from agentcluster.clock import Clock, SystemClock
from agentcluster.cluster import Cluster
from agentcluster.cluster.death_watch import NODE_DECLARED_DEAD
from agentcluster.core.membership import NodeStatus
from agentcluster.core.registry import AgentStatus
from agentcluster.core.signal import Signal
from agentcluster.errors import (
    AgentClusterError,
    AgentUnavailable,
    CallTimeout,
    ConfigurationError,
)
from agentcluster.examples.orders import CATALOG, Invariant
from agentcluster.telemetry import telemetry
from agentcluster.testing.waiting import eventually

__all__ = [
    "CAPABILITY",
    "DETECTION_LIMIT",
    "Attempt",
    "ClusterDemoReport",
    "Declaration",
    "PhaseStats",
    "Quoter",
    "Request",
    "judge",
    "run_cluster_demo",
]

CAPABILITY = "quotes"
QUOTE = "quotes.price.request"
RATES = "quotes.rates.update"
STATS = "quotes.stats.read"

DETECTION_LIMIT = 3.0
"""Seconds from the kill to the declaration, at most (the lease rule needs about 1 s)."""

_SKUS = sorted(CATALOG)
_POLL = 0.002
"""Seconds between two looks of the watcher: the resolution of the measured times."""


# --- the agent ------------------------------------------------------------------------


class QuoteParams(BaseModel):
    sku: str
    qty: int = Field(gt=0)

    @field_validator("sku")
    @classmethod
    def _known(cls, sku: str) -> str:
        if sku not in CATALOG:
            raise ValueError(f"unknown sku {sku!r}")
        return sku


class RatesParams(BaseModel):
    version: int = Field(gt=0)
    discount_pct: int = Field(ge=0, le=90)


class Quote(Action):
    """Price a line at this quoter's rates, and count it."""

    Params = QuoteParams

    async def run(self, params: QuoteParams, ctx: Any) -> Any:
        state = ctx.state
        total = CATALOG[params.sku].price_cents * params.qty * (100 - state.discount_pct) // 100
        reply = {"agent": ctx.agent_id, "node": ctx.node.node_id, "total_cents": total}
        return reply, ctx.set(served=state.served + 1)


class UpdateRates(Action):
    """Take new rates (sent to every holder of the capability at once)."""

    Params = RatesParams

    async def run(self, params: RatesParams, ctx: Any) -> Any:
        return None, ctx.set(rates_version=params.version, discount_pct=params.discount_pct)


class ReadStats(Action):
    """What this quoter has done; changes nothing."""

    async def run(self, params: Any, ctx: Any) -> Any:
        state = ctx.state
        return {"served": state.served, "rates": state.rates_version, "node": ctx.node.node_id}


class Quoter(Agent):
    """Quotes prices; a plain agent, so it lives and dies with its node."""

    class State(BaseModel):
        served: int = 0
        rates_version: int = 0
        discount_pct: int = 0

    routes = {QUOTE: Quote, RATES: UpdateRates, STATS: ReadStats}
    capabilities = [CAPABILITY]


# --- what the run measures ------------------------------------------------------------

Outcome = Literal["answered", "timeout", "unavailable", "failed"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call or send to one agent. Times are seconds after the kill (negative before)."""

    kind: Literal["call", "send"]
    agent: str
    node: str
    """Where the agent was started (an answer names the node that ran it: ``answered_on``)."""
    outcome: Outcome
    at: float
    latency: float
    answered_on: str | None = None
    error: str = ""
    after_kill: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    """One capability request: the attempts it took until a holder answered."""

    at: float
    latency: float
    attempts: tuple[Attempt, ...]
    after_kill: bool = False

    @property
    def served(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].outcome == "answered"

    @property
    def served_by(self) -> str | None:
        return self.attempts[-1].answered_on if self.served else None


@dataclass(frozen=True, slots=True)
class Declaration:
    """A ``node_declared_dead`` event: which node, by whom, when (after the kill), and how
    long its record had stood still on the observer's clock."""

    node: str
    observer: str
    at: float
    still_for: float


@dataclass(frozen=True, slots=True)
class PhaseStats:
    """The capability requests of one phase: ``before`` the kill, the detection ``window``
    (kill to declaration), ``after`` it."""

    phase: Literal["before", "window", "after"]
    requests: int
    served: int
    served_on: dict[str, int]
    """Node -> requests it answered."""
    timed_out: int
    """Attempts that got no answer within the attempt's deadline."""
    refused: int
    """Attempts refused at once as ``unavailable``."""
    failed: int
    median_latency: float
    max_latency: float


@dataclass(frozen=True)
class ClusterDemoReport:
    """What ``run_cluster_demo`` saw; ``ok`` when every invariant held."""

    seed: int
    nodes: tuple[str, ...]
    placement: dict[str, list[str]]
    """Node -> the agents started there."""
    killed: str
    statuses_before: dict[str, str]
    """Node -> status in the facade's view just before the kill."""
    leader_before: tuple[str, int] | None
    leader_after: tuple[str, int] | None
    entry_before: str
    entry_after: str
    """The node the facade sent through before and after the kill."""
    suspected: dict[str, float]
    """Survivor -> seconds after the kill its phi detector first suspected the killed node."""
    dead_seen: dict[str, float]
    """Survivor -> seconds after the kill its membership cache showed the node ``dead``."""
    declared: list[Declaration]
    """Every death declared while the story ran (the cluster's own shutdown excluded)."""
    leader_seen: float | None
    """Seconds after the kill a surviving node was seen leading."""
    unavailable_seen: float | None
    """Seconds after the kill every agent of the killed node read ``unavailable``."""
    statuses_after: dict[str, str]
    """Node -> status in the facade's view at the end of the story."""
    rates_seen: dict[str, int]
    """Agent -> rates version it reported after the ``cast`` to all holders."""
    by_id: list[Attempt]
    requests: list[Request]
    served: dict[str, int]
    """Surviving agent -> the work its own state counted at the end."""
    clients: int
    attempt_timeout: float
    elapsed: float
    invariants: list[Invariant] = field(default_factory=list)

    # --- derived views ----------------------------------------------------------------

    @property
    def survivors(self) -> list[str]:
        return [n for n in self.nodes if n != self.killed]

    @property
    def killed_led(self) -> bool:
        return self.leader_before is not None and self.leader_before[0] == self.killed

    @property
    def node_of(self) -> dict[str, str]:
        return {agent: node for node, agents in self.placement.items() for agent in agents}

    @property
    def killed_agents(self) -> list[str]:
        return list(self.placement.get(self.killed, []))

    @property
    def detection(self) -> float | None:
        """Seconds from the kill to the first sign, anywhere, that the node was declared dead."""
        times = [d.at for d in self.declared if d.node == self.killed]
        times += list(self.dead_seen.values())
        return min(times) if times else None

    @property
    def attempts(self) -> list[Attempt]:
        return [*self.by_id, *(a for r in self.requests for a in r.attempts)]

    def phase(self, request: Request) -> Literal["before", "window", "after"]:
        detection = self.detection
        if not request.after_kill:
            return "before"
        if detection is None or request.at < detection:
            return "window"
        return "after"

    def phases(self) -> list[PhaseStats]:
        """The capability requests, phase by phase."""
        out = []
        for name in ("before", "window", "after"):
            requests = [r for r in self.requests if self.phase(r) == name]
            attempts = [a for r in requests for a in r.attempts]
            latencies = sorted(r.latency for r in requests)
            served_on = Counter(r.served_by for r in requests if r.served_by is not None)
            out.append(
                PhaseStats(
                    name,
                    len(requests),
                    sum(r.served for r in requests),
                    dict(sorted(served_on.items())),
                    sum(a.outcome == "timeout" for a in attempts),
                    sum(a.outcome == "unavailable" for a in attempts),
                    sum(a.outcome == "failed" for a in attempts),
                    latencies[len(latencies) // 2] if latencies else 0.0,
                    latencies[-1] if latencies else 0.0,
                )
            )
        return out

    @property
    def violations(self) -> list[str]:
        return [f"{i.name}: {i.detail}" for i in self.invariants if not i.held]

    @property
    def ok(self) -> bool:
        return bool(self.invariants) and all(i.held for i in self.invariants)

    def timeline(self) -> list[tuple[float, str, str]]:
        """``(seconds after the kill, what happened, who saw it)``, in time order."""
        rows: list[tuple[float, str, str]] = [(0.0, f"{self.killed} killed", "")]
        for observer, at in self.suspected.items():
            rows.append((at, f"{self.killed} suspected (phi)", observer))
        for d in self.declared:
            rows.append(
                (
                    d.at,
                    f"{d.node} declared dead (its record still for {d.still_for:.2f} s)",
                    d.observer,
                )
            )
        for observer, at in self.dead_seen.items():
            rows.append((at, f"{self.killed} reads dead", observer))
        if self.leader_seen is not None and self.leader_after is not None:
            node, term = self.leader_after
            if self.killed_led:
                rows.append((self.leader_seen, f"{node} leads (term {term})", self.entry_after))
        if self.unavailable_seen is not None:
            agents = ", ".join(self.killed_agents)
            rows.append((self.unavailable_seen, f"{agents} unavailable", self.entry_after))
        return sorted(rows, key=lambda row: row[0])

    def summary(self) -> str:
        verdict = "invariants hold" if self.ok else f"{len(self.violations)} invariant(s) broken"
        detection = "never" if self.detection is None else f"after {self.detection:.2f} s"
        before = "none" if self.leader_before is None else self.leader_before[0]
        after = "none" if self.leader_after is None else self.leader_after[0]
        leader = f"leader {before} -> {after}" if after != before else f"leader {after} unchanged"
        served = sum(r.served for r in self.requests)
        failed = sum(1 for a in self.attempts if a.node != self.killed and a.outcome != "answered")
        return (
            f"{len(self.nodes)} nodes, killed {self.killed}"
            f"{' (the leader)' if self.killed_led else ''}: declared dead {detection}, "
            f"{leader}; {len(self.killed_agents)} agents unavailable; "
            f"{served}/{len(self.requests)} capability requests served, "
            f"{failed} failures on surviving nodes; {self.elapsed:.2f}s; {verdict}"
        )


# --- the invariants -------------------------------------------------------------------


def judge(report: ClusterDemoReport) -> list[Invariant]:
    """The properties the story must have, each with what was measured."""
    killed, survivors = report.killed, report.survivors
    node_of = report.node_of
    detection = report.detection
    declared = [(d.node, d.observer) for d in report.declared]
    leader = report.leader_after
    attempts = report.attempts

    others_down = {n: s for n, s in report.statuses_after.items() if n != killed and s != "alive"}
    on_survivors = [a for a in attempts if a.node != killed]
    survivor_failures = [a for a in on_survivors if a.outcome != "answered"]
    wrong_node = [a for a in on_survivors if a.answered_on not in (None, a.node)]

    refusals: dict[tuple[str, str], str] = {
        (a.agent, a.kind): a.outcome for a in report.by_id if a.after_kill and a.node == killed
    }
    wanted_refusals = {(agent, kind) for agent in report.killed_agents for kind in ("call", "send")}
    not_refused = sorted(
        f"{agent} {kind}: {refusals.get((agent, kind), 'not tried')}"
        for agent, kind in wanted_refusals
        if refusals.get((agent, kind)) != "unavailable"
    )

    survivor_agents = [a for n in survivors for a in report.placement.get(n, [])]
    answered_by_id = {
        (a.agent, a.kind)
        for a in report.by_id
        if a.after_kill and a.outcome == "answered" and a.node != killed
    }
    silent = sorted(
        f"{agent} {kind}"
        for agent in survivor_agents
        for kind in ("call", "send")
        if (agent, kind) not in answered_by_id
    )

    unserved = [r for r in report.requests if not r.served]
    after = [r for r in report.requests if report.phase(r) == "after" and r.served]
    reached_after = {a.agent for r in after for a in r.attempts if a.outcome == "answered"}
    missed = sorted(set(survivor_agents) - reached_after)

    expected = Counter(a.agent for a in attempts if a.outcome == "answered")
    counts = {a: (report.served.get(a), expected.get(a, 0)) for a in survivor_agents}
    miscounted = {a: c for a, c in counts.items() if c[0] != c[1]}

    no_rates = {a: v for a, v in report.rates_seen.items() if v != 1}
    missing_rates = sorted(set(node_of) - set(report.rates_seen))

    return [
        Invariant(
            f"only {killed} was declared dead; {', '.join(survivors)} stayed alive",
            len(declared) == 1
            and declared[0][0] == killed
            and declared[0][1] in survivors
            and report.statuses_after.get(killed) == "dead"
            and not others_down,
            f"declared dead (node, by): {declared}; statuses at the end: {report.statuses_after}",
        ),
        Invariant(
            f"{killed} declared dead within {DETECTION_LIMIT:.0f} s of the kill",
            detection is not None and 0 < detection < DETECTION_LIMIT,
            "never declared dead"
            if detection is None
            else f"declared dead {detection:.3f} s after the kill",
        ),
        Invariant(
            "a surviving node leads" + (" (a new term)" if report.killed_led else ""),
            leader is not None
            and leader[0] in survivors
            and (
                not report.killed_led
                or (report.leader_before is not None and leader[1] > report.leader_before[1])
            ),
            f"leader before {report.leader_before}, after {leader}",
        ),
        Invariant(
            f"{killed}'s agents are unavailable: calls and sends refused at once",
            report.unavailable_seen is not None and not not_refused,
            f"unavailable seen after {report.unavailable_seen} s; not refused as "
            f"unavailable: {not_refused}",
        ),
        Invariant(
            f"every agent on {', '.join(survivors)} answers by id after the kill",
            not silent,
            f"no answer from: {silent}",
        ),
        Invariant(
            "no call or send to an agent on a surviving node failed",
            not survivor_failures and not wrong_node,
            f"{len(survivor_failures)} of {len(on_survivors)} failed, e.g. "
            f"{[(a.agent, a.outcome, a.error) for a in survivor_failures[:3]]}; "
            f"{len(wrong_node)} answered on another node than their own",
        ),
        Invariant(
            "every capability request was served, after the kill by every survivor in turn",
            bool(report.requests) and not unserved and bool(after) and not missed,
            f"{len(unserved)} of {len(report.requests)} not served; {len(after)} served "
            f"after detection; surviving holders never reached after it: {missed}",
        ),
        Invariant(
            "the cast to all holders reached each of them",
            not no_rates and not missing_rates,
            f"rates seen {report.rates_seen}",
        ),
        Invariant(
            "each surviving agent ran every answered call and send exactly once",
            not miscounted,
            f"(counted by the agent, answered to the clients): {miscounted}",
        ),
    ]


# --- the run --------------------------------------------------------------------------


async def _attempt(
    clock: Clock,
    kind: Literal["call", "send"],
    agent: str | None,
    node_of: Mapping[str, str],
    operation: Awaitable[Any],
    *,
    after_kill: bool,
) -> Attempt:
    """Await one call or send and record how it went. ``agent`` is the target by id (None for
    a capability: the answer or the error names the holder). ``at`` is absolute here; the
    report shifts it to seconds after the kill."""
    started = clock.monotonic()
    holder, answered_on, error = agent, None, ""
    outcome: Outcome
    try:
        reply = await operation
    except AgentUnavailable as exc:
        outcome, holder = "unavailable", holder or exc.agent_id
    except CallTimeout as exc:
        outcome, holder = "timeout", holder or exc.agent_id
    except AgentClusterError as exc:
        outcome, holder = "failed", holder or exc.agent_id
        error = f"{type(exc).__name__}: {exc}"
    else:
        outcome = "answered"
        if isinstance(reply, dict):
            holder, answered_on = reply["agent"], reply["node"]
    holder = holder or "?"
    return Attempt(
        kind,
        holder,
        node_of.get(holder, "?"),
        outcome,
        started,
        clock.monotonic() - started,
        answered_on,
        error,
        after_kill,
    )


def _quote(rng: random.Random) -> dict[str, Any]:
    return {"sku": rng.choice(_SKUS), "qty": rng.randint(1, 3)}


class _Clients:
    """Paced clients sending ``Capability(CAPABILITY)`` requests through the facade.

    Each request tries the holder the facade picks, one attempt of ``attempt_timeout``
    each, until one answers (at most one attempt per agent in the cluster).
    """

    def __init__(
        self,
        cluster: Cluster,
        clock: Clock,
        node_of: Mapping[str, str],
        *,
        count: int,
        interval: float,
        attempt_timeout: float,
        seed: int,
        after_kill: bool,
    ) -> None:
        self._cluster = cluster
        self._after_kill = after_kill
        self._clock = clock
        self._node_of = node_of
        self._interval = interval
        self._attempt_timeout = attempt_timeout
        self._rngs = [random.Random(f"{seed}/client-{i}") for i in range(count)]
        self.requests: list[Request] = []

    async def run(self, done: Callable[[], bool], timeout: float) -> None:
        """Run the clients until ``done()`` holds (checked after each request) or for
        ``timeout`` seconds at most; a request under way is finished, not abandoned."""
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(self._client(rng, done, stop), name=f"demo-client-{i}")
            for i, rng in enumerate(self._rngs)
        ]
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await stop.wait()
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    def served_since(self, moment: float) -> int:
        return sum(1 for r in self.requests if r.at >= moment and r.served)

    async def _client(
        self, rng: random.Random, done: Callable[[], bool], stop: asyncio.Event
    ) -> None:
        clock = self._clock
        due = clock.monotonic()
        while not stop.is_set():
            self.requests.append(await self._request(rng))
            if done():
                stop.set()
                return
            due += self._interval
            pause = due - clock.monotonic()
            if pause <= 0:
                due = clock.monotonic()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()

    async def _request(self, rng: random.Random) -> Request:
        quote = _quote(rng)
        started = self._clock.monotonic()
        attempts: list[Attempt] = []
        for _ in range(max(1, len(self._node_of))):
            attempt = await _attempt(
                self._clock,
                "call",
                None,
                self._node_of,
                self._cluster.call(
                    Capability(CAPABILITY), Signal(QUOTE, quote), timeout=self._attempt_timeout
                ),
                after_kill=self._after_kill,
            )
            attempts.append(attempt)
            if attempt.outcome == "answered":
                break
        return Request(
            started, self._clock.monotonic() - started, tuple(attempts), self._after_kill
        )


class _Watch:
    """Looks at the survivors every ``_POLL`` seconds after the kill and notes when each
    sign first showed; ``settled_at`` is when the last of them did."""

    def __init__(
        self,
        cluster: Cluster,
        clock: Clock,
        killed: str,
        survivors: Sequence[str],
        agents: Sequence[str],
    ) -> None:
        self._cluster = cluster
        self._clock = clock
        self._killed = killed
        self._survivors = list(survivors)
        self._agents = list(agents)
        self.suspected: dict[str, float] = {}
        self.dead_seen: dict[str, float] = {}
        self.leader_seen: float | None = None
        self.unavailable_seen: float | None = None

    @property
    def settled_at(self) -> float | None:
        if (
            len(self.dead_seen) < len(self._survivors)
            or self.leader_seen is None
            or self.unavailable_seen is None
        ):
            return None
        return max(*self.dead_seen.values(), self.leader_seen, self.unavailable_seen)

    async def run(self, timeout: float) -> None:
        """Look until every sign showed, or for ``timeout`` seconds at most."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    self._look()
                    if self.settled_at is not None:
                        return
                    await asyncio.sleep(_POLL)

    def _look(self) -> None:
        now = self._clock.monotonic()
        cluster, killed = self._cluster, self._killed
        for name in self._survivors:
            node = cluster.node(name)
            liveness = node.liveness
            if (
                name not in self.suspected
                and liveness is not None
                and any(v.peer == killed and v.suspected for v in liveness.topology())
            ):
                self.suspected[name] = now
            record = node.members().get(killed)
            if (
                name not in self.dead_seen
                and record is not None
                and record.status is NodeStatus.DEAD
            ):
                self.dead_seen[name] = now
        if self.leader_seen is None:
            leader = cluster.leader()
            if leader is not None and leader[0] in self._survivors:
                self.leader_seen = now
        if self.unavailable_seen is None:
            entries = [cluster.lookup(agent) for agent in self._agents]
            if all(e is not None and e.status is AgentStatus.UNAVAILABLE for e in entries):
                self.unavailable_seen = now


async def run_cluster_demo(
    seed: int = 7,
    *,
    kill: str = "leader",
    nodes: int = 3,
    agents_per_node: int = 2,
    clients: int = 4,
    interval: float = 0.004,
    attempt_timeout: float = 0.3,
    before: int = 400,
    after: int = 400,
    clock: Clock | None = None,
) -> ClusterDemoReport:
    """Run the story of the module docstring and check its invariants.

    ``kill`` is ``"leader"`` (whichever node leads at that moment) or a node id. ``before``
    and ``after`` are how many capability requests to serve with every node up and after
    the detection settled; ``interval`` paces each of the ``clients``. ``clock`` must read
    the running loop's time (the default ``SystemClock`` does on asyncio and uvloop; pass
    a ``VirtualClock`` on a virtual-time loop).
    """
    if nodes < 2:
        raise ConfigurationError(f"the story needs at least 2 nodes, not {nodes!r}")
    if kill != "leader" and kill not in {f"n{i}" for i in range(1, nodes + 1)}:
        raise ConfigurationError(f"no node {kill!r} to kill: say 'leader' or n1..n{nodes}")
    clock = clock or SystemClock()
    began = clock.monotonic()
    declared: list[tuple[float, dict[str, Any]]] = []

    def on_declared(
        event: Any, measurements: Mapping[str, Any], metadata: Mapping[str, Any]
    ) -> None:
        declared.append((clock.monotonic(), {**measurements, **metadata}))

    handler = telemetry.attach(NODE_DECLARED_DEAD, on_declared)
    try:
        async with Cluster.local(nodes=nodes, seed=f"demo-{seed}", clock=clock) as cluster:
            story = _Story(cluster, clock, seed, clients, interval, attempt_timeout)
            await story.run(kill, agents_per_node, before, after)
            declarations = list(declared)  # the cluster's own shutdown is not part of it
    finally:
        telemetry.detach(handler)
    return story.report(declarations, clock.monotonic() - began)


class _Story:
    """The four steps of the module docstring, and what each measured."""

    def __init__(
        self,
        cluster: Cluster,
        clock: Clock,
        seed: int,
        clients: int,
        interval: float,
        attempt_timeout: float,
    ) -> None:
        self.cluster = cluster
        self.clock = clock
        self.seed = seed
        self.clients = clients
        self.interval = interval
        self.attempt_timeout = attempt_timeout
        self.rng = random.Random(f"{seed}/by-id")
        self.placement: dict[str, list[str]] = {}
        self.node_of: dict[str, str] = {}
        self.rates_seen: dict[str, int] = {}
        self.by_id: list[Attempt] = []
        self.requests: list[Request] = []
        self.served: dict[str, int] = {}
        self.killed = ""
        self.killed_at = 0.0
        self.leader_before: tuple[str, int] | None = None
        self.leader_after: tuple[str, int] | None = None
        self.entry_before = self.entry_after = ""
        self.statuses: dict[str, str] = {}
        self.statuses_before: dict[str, str] = {}
        self.watch: _Watch | None = None

    async def run(self, kill: str, agents_per_node: int, before: int, after: int) -> None:
        await self._ready()
        await self._place(agents_per_node)
        await self._all_nodes_up(before)
        await self._kill(kill)
        await self._detect(after)
        await self._after()

    async def _ready(self) -> None:
        cluster, everyone = self.cluster, sorted(self.cluster.nodes)

        def ready() -> bool:
            alive = [n for n, r in cluster.members().items() if r.status is NodeStatus.ALIVE]
            return cluster.leader() is not None and sorted(alive) == everyone

        await eventually(ready, timeout=10, interval=_POLL)

    async def _place(self, agents_per_node: int) -> None:
        self.placement = {n: [] for n in self.cluster.nodes}
        for i in range(agents_per_node * len(self.placement)):
            entry = await self.cluster.start_agent(Quoter, f"quoter-{i + 1}")
            self.placement[entry.node].append(entry.id)
        self.node_of = {a: n for n, agents in self.placement.items() for a in agents}

    async def _all_nodes_up(self, before: int) -> None:
        cluster = self.cluster
        rates = Signal(RATES, {"version": 1, "discount_pct": 10})
        await cluster.cast(Capability(CAPABILITY, "all"), rates)
        # A cast is fire and forget: read each holder back until it shows (bounded).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                while True:
                    for agent in self.node_of:
                        stats = await cluster.call(agent, Signal(STATS), timeout=1.0)
                        self.rates_seen[agent] = stats["rates"]
                    if min(self.rates_seen.values()) >= 1:
                        break
                    await asyncio.sleep(_POLL)
        for _ in range(5):
            await self._each_by_id(after_kill=False)
        await self._load(lambda load: len(load.requests) >= before, after_kill=False)

    async def _kill(self, kill: str) -> None:
        self.leader_before = self.cluster.leader()
        if kill == "leader":
            if self.leader_before is None:
                raise ConfigurationError("no node leads, so there is no leader to kill")
            kill = self.leader_before[0]
        self.killed = kill
        self.statuses_before = {
            n: r.status.value for n, r in sorted(self.cluster.members().items())
        }
        self.entry_before = _entry(self.cluster)
        self.killed_at = self.clock.monotonic()
        await self.cluster.kill_node(kill)

    async def _detect(self, after: int) -> None:
        survivors = [n for n in self.cluster.nodes if n != self.killed]
        watch = self.watch = _Watch(
            self.cluster, self.clock, self.killed, survivors, self.placement[self.killed]
        )
        watcher = asyncio.create_task(watch.run(2 * DETECTION_LIMIT), name="demo-watch")

        def enough(load: _Clients) -> bool:
            if not watcher.done():
                return False
            settled = watch.settled_at
            return settled is None or load.served_since(settled) >= after

        try:
            await self._load(enough, after_kill=True)
        finally:
            await watcher

    async def _after(self) -> None:
        cluster = self.cluster
        await self._each_by_id(after_kill=True)
        for agent, node in self.node_of.items():
            if node == self.killed:
                continue
            with contextlib.suppress(AgentClusterError):
                stats = await cluster.call(agent, Signal(STATS), timeout=1.0)
                self.served[agent] = stats["served"]
        self.statuses = {n: r.status.value for n, r in sorted(cluster.members().items())}
        self.leader_after = cluster.leader()
        self.entry_after = _entry(cluster)

    async def _each_by_id(self, *, after_kill: bool) -> None:
        cluster, clock, node_of = self.cluster, self.clock, self.node_of
        for agent in node_of:
            call = cluster.call(agent, Signal(QUOTE, _quote(self.rng)), timeout=1.0)
            self.by_id.append(
                await _attempt(clock, "call", agent, node_of, call, after_kill=after_kill)
            )
            send = cluster.send(agent, Signal(QUOTE, _quote(self.rng)), timeout=1.0)
            self.by_id.append(
                await _attempt(clock, "send", agent, node_of, send, after_kill=after_kill)
            )

    async def _load(self, done: Callable[[_Clients], bool], *, after_kill: bool) -> None:
        load = _Clients(
            self.cluster,
            self.clock,
            self.node_of,
            count=self.clients,
            interval=self.interval,
            attempt_timeout=self.attempt_timeout,
            seed=self.seed + len(self.requests),
            after_kill=after_kill,
        )
        try:
            await load.run(lambda: done(load), timeout=2 * DETECTION_LIMIT + 10)
        finally:
            self.requests.extend(load.requests)

    def report(
        self, declarations: list[tuple[float, dict[str, Any]]], elapsed: float
    ) -> ClusterDemoReport:
        t0 = self.killed_at
        watch = self.watch
        assert watch is not None

        def since(moment: float | None) -> float | None:
            return None if moment is None else moment - t0

        def shift(attempt: Attempt) -> Attempt:
            return replace(attempt, at=attempt.at - t0)

        report = ClusterDemoReport(
            seed=self.seed,
            nodes=tuple(self.placement),
            placement=self.placement,
            killed=self.killed,
            statuses_before=self.statuses_before,
            leader_before=self.leader_before,
            leader_after=self.leader_after,
            entry_before=self.entry_before,
            entry_after=self.entry_after,
            suspected={n: t - t0 for n, t in watch.suspected.items()},
            dead_seen={n: t - t0 for n, t in watch.dead_seen.items()},
            declared=[
                Declaration(
                    str(info.get("node_id")),
                    str(info.get("observer")),
                    at - t0,
                    float(info.get("still_for", 0.0)),
                )
                for at, info in declarations
            ],
            leader_seen=since(watch.leader_seen),
            unavailable_seen=since(watch.unavailable_seen),
            statuses_after=self.statuses,
            rates_seen=self.rates_seen,
            by_id=[shift(a) for a in self.by_id],
            requests=[
                replace(r, at=r.at - t0, attempts=tuple(shift(a) for a in r.attempts))
                for r in self.requests
            ],
            served=self.served,
            clients=self.clients,
            attempt_timeout=self.attempt_timeout,
            elapsed=elapsed,
        )
        return replace(report, invariants=judge(report))


def _entry(cluster: Cluster) -> str:
    """The node the facade sends through: its first live node."""
    return next((n for n in cluster.nodes if not cluster.node(n).stopped), "-")
