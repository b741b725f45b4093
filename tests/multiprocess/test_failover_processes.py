"""Exact counts across faults, with real node processes over real nats-server.

Two durable counters (``examples.durable_counter``): ``a`` applies each ``count.add`` and
forwards one ``count.add`` to ``b``. A client sends N distinct signals to ``a``, a few at a
time, each retried under its own id until acknowledged, and a fault hits mid-stream:

- ``kill -9`` of the node process hosting ``a``, or of the one hosting ``b``;
- on a 3-server NATS cluster (replicas 3): ``kill -9`` of the server leading the ``INBOX``
  stream, of the one leading ``KV_nodes``, and of each of them together with the node
  process hosting ``a``;
- SIGSTOP of the node process hosting every counter for longer than ``F + m``, until they
  have failed over, then SIGCONT: the thawed process must commit nothing more.

Afterwards both totals must be exactly N. An acknowledged send that was lost, or a signal
applied twice anywhere on the path — the durable inbox and its replay, the outbox released
only after its snapshot committed and released again by the next owner, the forward's
de-duplication by signal id — shows as a wrong total, and each test also checks the snapshot
that the ``state`` bucket holds (the total, an empty outbox) and the registry entry (the
agent on another node, at a higher incarnation).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from agentcluster import Signal
from agentcluster.cluster import Cluster
from agentcluster.cluster.buckets import STATE
from agentcluster.cluster.state_store import state_key
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.registry import AgentEntry, AgentStatus
from agentcluster.errors import AgentClusterError
from agentcluster.examples.durable_counter import Counter
from agentcluster.testing.nats_server import NatsCluster, NatsServer
from agentcluster.testing.node_process import NodeProcess
from agentcluster.testing.waiting import eventually
from agentcluster.transport.interface import BucketConfig, Connection, KeyValue
from agentcluster.transport.nats import NatsConfig, connect
from tests.multiprocess.conftest import Nodes, alive, client

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.timeout(120)]

THREE = ("n1", "n2", "n3")

TIMING = LeaseTiming()
"""The nodes' lease timing (the command's defaults): F = 0.7 s, m = 0.3 s."""

SENDS = 300
"""Distinct signals per test on one nats-server."""

CLUSTER_SENDS = 150
"""Fewer on a 3-server cluster: every store there is replicated three times."""

WIDTH = 8
"""Sends in flight at once."""

SEND_DEADLINE = 90.0
"""Per send: within the inbox's duplicate window (120 s), far longer than any fault here."""


# --- the cluster under test ----------------------------------------------------------------


async def start_nodes(
    nodes: Nodes, servers: str | Sequence[str], *, replicas: int = 1
) -> dict[str, NodeProcess]:
    """Three node processes hosting nothing yet, started together."""
    procs = {n: nodes.spawn(servers, n, agents=(), replicas=replicas) for n in THREE}
    for proc in procs.values():
        proc.start(wait=None)
    for proc in procs.values():
        await asyncio.to_thread(proc.wait_event, "ready", 30.0)
    return procs


async def start_counters(cluster: Cluster, *, a_on: str, b_on: str, mode: str = "durable") -> None:
    await cluster.start_agent(Counter, "b", node=b_on, mode=mode)
    await cluster.start_agent(Counter, "a", node=a_on, mode=mode, state={"forward": "b"})


def others(node_id: str) -> list[str]:
    return [n for n in THREE if n != node_id]


def moved_away(cluster: Cluster, agent_id: str, before: AgentEntry) -> AgentEntry | None:
    """The agent's entry once it runs on another node at a higher incarnation."""
    entry = cluster.lookup(agent_id)
    if (
        entry is None
        or entry.node == before.node
        or entry.incarnation <= before.incarnation
        or entry.status is not AgentStatus.RUNNING
    ):
        return None
    return entry


# --- the load --------------------------------------------------------------------------------


@dataclass
class Load:
    """``total`` distinct ``count.add`` sends to one agent, ``width`` in flight at once.

    Each send is retried with the same signal (the same id) until it is acknowledged: the
    router retries within its deadline by itself, and a retryable error that still reaches
    here is retried again until the send's own deadline. ``acked_at`` holds the loop time of
    every acknowledgement, for the figures.
    """

    cluster: Cluster
    agent_id: str
    total: int
    width: int = WIDTH
    acked_at: list[float] = field(default_factory=list)
    retried: int = 0
    _next: int = 0

    @property
    def acked(self) -> int:
        return len(self.acked_at)

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.width)))

    async def _worker(self) -> None:
        while self._next < self.total:
            self._next += 1
            await self._send(Signal("count.add", {"n": 1}))

    async def _send(self, signal: Signal) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_DEADLINE
        while True:
            try:
                await self.cluster.send(self.agent_id, signal, timeout=deadline - loop.time())
            except AgentClusterError as error:
                if not error.retryable or deadline - loop.time() < 1.0:
                    raise
                self.retried += 1
                continue
            self.acked_at.append(loop.time())
            return

    def longest_pause(self, after: float) -> float:
        """The longest time without an acknowledgement from ``after`` on."""
        times = [after, *(t for t in self.acked_at if t > after)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@contextlib.asynccontextmanager
async def sending(load: Load) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(load.run())
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- reading the outcome ---------------------------------------------------------------------


async def total(cluster: Cluster, agent_id: str) -> int | None:
    """The agent's total, or None while it cannot answer (failing over, paused)."""
    try:
        value: int = await cluster.call(agent_id, Signal("count.get"), timeout=5)
    except AgentClusterError as error:
        if not error.retryable:
            raise
        return None
    return value


async def open_state(servers: str | Sequence[str], replicas: int) -> tuple[Connection, KeyValue]:
    urls = (servers,) if isinstance(servers, str) else tuple(servers)
    conn = await connect(NatsConfig(servers=urls, name="agentcluster/test-state-reader"))
    kv = await conn.key_value(BucketConfig(STATE, replicas=replicas, history=1))
    return conn, kv


async def snapshot_of(kv: KeyValue, agent_id: str) -> dict[str, Any] | None:
    entry = await kv.get(state_key(agent_id), timeout=5)
    if entry is None or entry.deleted:
        return None
    found: dict[str, Any] = orjson.loads(entry.value)
    return found


async def settled(cluster: Cluster, kv: KeyValue, expected: int, timeout: float) -> dict[str, Any]:
    """Wait until both counters answer at least ``expected`` and ``a``'s committed snapshot
    holds no unreleased signal (every forward acknowledged), then return what was read:
    the totals both agents answer and those their snapshots hold."""
    seen: dict[str, Any] = {}

    async def read() -> bool:
        seen["answered"] = {agent: await total(cluster, agent) for agent in ("a", "b")}
        try:
            snapshots = {agent: await snapshot_of(kv, agent) for agent in ("a", "b")}
        except AgentClusterError as error:
            # The state stream may still be electing a leader after a server's death:
            # nats-server 2.9 answers no read meanwhile (it took up to 7 s here).
            if not error.retryable:
                raise
            seen["stored"] = f"unreadable: {error}"
            return False
        seen["stored"] = {
            agent: None if snap is None else snap["state"]["state"]["total"]
            for agent, snap in snapshots.items()
        }
        a_snapshot = snapshots["a"]
        seen["a_outbox"] = None if a_snapshot is None else len(a_snapshot["outbox"])
        answered = seen["answered"].values()
        return (
            all(value is not None and value >= expected for value in answered)
            and seen["a_outbox"] == 0
            and all(value is not None and value >= expected for value in seen["stored"].values())
        )

    try:
        await eventually(read, timeout, 0.1)
    except AssertionError:
        raise AssertionError(f"not settled at {expected} within {timeout}s: {seen}") from None
    return seen


def exact(expected: int) -> dict[str, Any]:
    return {
        "answered": dict.fromkeys(("a", "b"), expected),
        "stored": dict.fromkeys(("a", "b"), expected),
        "a_outbox": 0,
    }


# --- one exact-count run ------------------------------------------------------------------


@dataclass
class Run:
    """What one run observed, for the assertions and the figures."""

    killed_at: float
    load: Load
    moved: dict[str, AgentEntry]
    back_at: dict[str, float]


async def exact_count_across(
    cluster: Cluster,
    kv: KeyValue,
    *,
    sends: int,
    fault: Callable[[], Awaitable[None]],
    moving: Sequence[str],
    settle_within: float,
) -> Run:
    """Send ``sends`` signals to ``a``, run ``fault`` once a third are acknowledged, wait
    for the agents in ``moving`` to run elsewhere at a higher incarnation, and for every
    send to be acknowledged; then both totals must be exactly ``sends``."""
    loop = asyncio.get_running_loop()
    before = {agent_id: cluster.lookup(agent_id) for agent_id in ("a", "b")}
    load = Load(cluster, "a", sends)
    async with sending(load) as task:
        await eventually(lambda: load.acked >= sends // 3, 30, 0.002)
        killed_at = loop.time()
        await fault()
        moved: dict[str, AgentEntry] = {}
        back_at: dict[str, float] = {}
        for agent_id in moving:
            was = before[agent_id]
            assert was is not None
            moved[agent_id] = await eventually(
                lambda agent_id=agent_id, was=was: moved_away(cluster, agent_id, was),  # type: ignore[misc]
                30,
                0.01,
            )
            back_at[agent_id] = loop.time()
        await asyncio.wait_for(task, SEND_DEADLINE)
    assert load.acked == sends
    seen = await settled(cluster, kv, sends, settle_within)
    assert seen == exact(sends)
    return Run(killed_at, load, moved, back_at)


def report(name: str, run: Run, extra: str = "") -> None:
    back = ", ".join(
        f"{agent} on {run.moved[agent].node} (incarnation {run.moved[agent].incarnation}) "
        f"after {run.back_at[agent] - run.killed_at:.2f}s"
        for agent in run.moved
    )
    print(
        f"\n[{name}] {run.load.acked} acknowledged; {back or 'nothing moved'}; longest pause "
        f"between acknowledgements {run.load.longest_pause(run.killed_at):.2f}s; client "
        f"retries {run.load.retried}{extra}"
    )


# --- kill -9 of a node process, one nats-server ------------------------------------------------


@pytest.mark.parametrize("victim", ["a", "b"])
async def test_kill_9_of_a_counters_node_keeps_the_counts_exact(
    fresh_nats_server: NatsServer, nodes: Nodes, victim: str
) -> None:
    url = fresh_nats_server.url
    procs = await start_nodes(nodes, url)
    async with client(url) as cluster:
        await eventually(lambda: alive(cluster)() == list(THREE), 10)
        leader, _term = await eventually(cluster.leader, 10)
        # The victim's agent lives on the leader, so its failover also waits for a new one.
        rest = others(leader)
        hosts = {victim: leader, ("b" if victim == "a" else "a"): rest[0]}
        await start_counters(cluster, a_on=hosts["a"], b_on=hosts["b"])
        conn, kv = await open_state(url, 1)
        try:

            async def fault() -> None:
                procs[hosts[victim]].kill()

            run = await exact_count_across(
                cluster, kv, sends=SENDS, fault=fault, moving=[victim], settle_within=30
            )
        finally:
            await conn.close()
        assert cluster.members()[leader].status.value == "dead"
        entry = run.moved[victim]
        assert entry.node in rest
        assert entry.node_incarnation == cluster.members()[entry.node].incarnation
        untouched = cluster.lookup("b" if victim == "a" else "a")
        assert untouched is not None
        assert (untouched.node, untouched.incarnation) == (rest[0], 1)
        report(f"kill -9 of {victim}'s node", run)


# --- kill -9 of a stream leader, a 3-server NATS cluster ----------------------------------------


@pytest.mark.parametrize(
    ("stream", "with_a"),
    [("INBOX", False), ("KV_nodes", False), ("INBOX", True), ("KV_nodes", True)],
    ids=["inbox-leader", "nodes-leader", "inbox-leader-and-a", "nodes-leader-and-a"],
)
async def test_kill_9_of_a_stream_leader_keeps_the_counts_exact(
    nats_cluster: NatsCluster, nodes: Nodes, stream: str, with_a: bool
) -> None:
    urls = nats_cluster.urls
    procs = await start_nodes(nodes, urls, replicas=3)
    async with client(urls) as cluster:
        await eventually(lambda: alive(cluster)() == list(THREE), 20)
        leader, _term = await eventually(cluster.leader, 10)
        rest = others(leader)
        await start_counters(cluster, a_on=rest[0], b_on=rest[1])
        members = {n: r.incarnation for n, r in cluster.members().items()}
        conn, kv = await open_state(urls, 3)
        server = await eventually(lambda: asyncio.to_thread(nats_cluster.stream_leader, stream), 10)
        try:

            async def fault() -> None:
                nats_cluster.kill(nats_cluster.index_of(server))
                if with_a:
                    procs[rest[0]].kill()

            run = await exact_count_across(
                cluster,
                kv,
                sends=CLUSTER_SENDS,
                fault=fault,
                moving=["a"] if with_a else [],
                settle_within=40,
            )
        finally:
            await conn.close()
        survivors = others(rest[0]) if with_a else list(THREE)
        # The stalled writes cost nobody its incarnation; only a killed node is dead. (The
        # client's own view may lag: a watch served by the killed server is found lost only
        # after three missed heartbeats.)
        expected = {
            n: ("alive", members[n]) if n in survivors else ("dead", members[n]) for n in THREE
        }

        def statuses() -> dict[str, tuple[str, int]]:
            return {n: (r.status.value, r.incarnation) for n, r in cluster.members().items()}

        with contextlib.suppress(AssertionError):
            await eventually(lambda: statuses() == expected, 20, 0.05)
        assert statuses() == expected
        if with_a:
            assert run.moved["a"].node in survivors
        else:
            entry = cluster.lookup("a")
            assert entry is not None
            assert (entry.node, entry.incarnation, entry.status) == (
                rest[0],
                1,
                AgentStatus.RUNNING,
            )
        entry = cluster.lookup("b")
        assert entry is not None
        assert (entry.node, entry.incarnation) == (rest[1], 1)
        report(
            f"kill -9 of the {stream} leader{' and of a' + chr(39) + 's node' if with_a else ''}",
            run,
            f"; server {server} killed",
        )


# --- SIGSTOP past F + m, then SIGCONT ---------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    key: str
    revision: int
    incarnation: int


class StateHistory:
    """Every revision of the ``state`` bucket's keys that a watch delivers, in order.

    A watch that falls behind raises ``WatchLost``; that fails the test at ``__aexit__``
    rather than letting a revision go unseen.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self.seen: list[Revision] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StateHistory:
        watcher = await self._kv.watch("")
        for entry in watcher.initial:
            self._note(entry.key, entry.revision, entry.value)

        async def follow() -> None:
            try:
                async for entry in watcher:
                    if not entry.deleted:
                        self._note(entry.key, entry.revision, entry.value)
            finally:
                await watcher.stop()

        self._task = asyncio.create_task(follow())
        return self

    def _note(self, key: str, revision: int, value: bytes) -> None:
        snapshot = orjson.loads(value)
        self.seen.append(Revision(key, revision, snapshot["agent_incarnation"]))

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        assert task is not None
        if task.done():
            task.result()  # a lost watch: revisions may have gone unseen
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def of(self, key: str) -> list[Revision]:
        return [r for r in self.seen if r.key == key]


async def test_a_frozen_node_commits_nothing_after_its_agents_failed_over(
    fresh_nats_server: NatsServer, nodes: Nodes
) -> None:
    url = fresh_nats_server.url
    procs = await start_nodes(nodes, url)
    loop = asyncio.get_running_loop()
    async with client(url) as cluster:
        await eventually(lambda: alive(cluster)() == list(THREE), 10)
        leader, _term = await eventually(cluster.leader, 10)
        victim = others(leader)[0]  # not the leader: the failover needs no election first
        await start_counters(cluster, a_on=victim, b_on=victim)
        await cluster.start_agent(Counter, "c", node=victim, mode="critical")
        for _ in range(5):
            await cluster.call("c", Signal("count.add", {"n": 1}), timeout=5)
        before = {agent_id: cluster.lookup(agent_id) for agent_id in ("a", "b", "c")}
        first_incarnation = cluster.members()[victim].incarnation
        conn, kv = await open_state(url, 1)
        try:
            async with StateHistory(kv) as history:
                load = Load(cluster, "a", SENDS)
                async with sending(load) as first:
                    await eventually(lambda: load.acked >= SENDS // 3, 30, 0.002)
                    frozen_at = loop.time()
                    procs[victim].freeze()
                    moved: dict[str, AgentEntry] = {}
                    for agent_id, was in before.items():
                        assert was is not None
                        moved[agent_id] = await eventually(
                            lambda agent_id=agent_id, was=was: moved_away(cluster, agent_id, was),  # type: ignore[misc]
                            30,
                            0.01,
                        )
                    moved_after = loop.time() - frozen_at
                    assert cluster.members()[victim].status.value == "dead"
                    # The sends go on at the new owner while the old one is still stopped.
                    await asyncio.wait_for(first, SEND_DEADLINE)
                    thawed = len(history.seen)
                    thawed_at = loop.time()
                    assert thawed_at - frozen_at > TIMING.fencing_timeout + TIMING.margin
                    procs[victim].thaw()
                    more = Load(cluster, "a", SENDS // 3)
                    async with sending(more) as second:
                        rejoined = await eventually(
                            lambda: (
                                (record := cluster.members().get(victim)) is not None
                                and record.status.value == "alive"
                                and record.incarnation > first_incarnation
                                and record
                            ),
                            20,
                            0.01,
                        )
                        rejoined_after = loop.time() - thawed_at
                        await asyncio.wait_for(second, SEND_DEADLINE)
                expected = SENDS + SENDS // 3
                seen = await settled(cluster, kv, expected, 30)
                assert seen == exact(expected)
                # The critical counter came back from its last snapshot: every call that
                # was answered had committed before it was answered.
                assert await total(cluster, "c") == 5
        finally:
            await conn.close()
        for agent_id, entry in moved.items():
            assert entry.node != victim
            revisions = history.of(agent_id)
            # Incarnations never go back, and after the thaw only the new owner's remain.
            incarnations = [r.incarnation for r in revisions]
            assert incarnations == sorted(incarnations), (agent_id, revisions)
            after_thaw = {r.incarnation for r in history.seen[thawed:] if r.key == agent_id}
            assert after_thaw <= {entry.incarnation}, (agent_id, after_thaw)
            assert [r.revision for r in revisions] == sorted({r.revision for r in revisions})
        # a and b kept committing after the thaw (the sends went on), all from the new owner.
        assert {r.key for r in history.seen[thawed:]} >= {"a", "b"}
        assert rejoined.incarnation == first_incarnation + 1
        assert procs[victim].returncode is None
        assert not any(event["event"] == "superseded" for event in procs[victim].events)
        assert not cluster.agents_by_node().get(victim)
        print(
            f"\n[SIGSTOP of {victim}] a, b, c on "
            f"{ {agent_id: (e.node, e.incarnation) for agent_id, e in moved.items()} } "
            f"{moved_after:.2f}s after the freeze; thawed after {thawed_at - frozen_at:.2f}s; "
            f"rejoined as incarnation {rejoined.incarnation} {rejoined_after:.2f}s after the "
            f"thaw; {len(history.seen)} state revisions seen, {len(history.seen) - thawed} "
            "after the thaw"
        )
