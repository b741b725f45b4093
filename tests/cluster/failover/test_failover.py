"""Modes, snapshots, durable inboxes and failover on ``Cluster.local``, in virtual time.

Every test records the commits of every agent instance (``sim.invariants.CommitLog``) and
fails on any interleaving of two incarnations of one agent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, Signal
from agentcluster.cluster.failover_manager import FailoverConfig
from agentcluster.cluster.state_store import state_key
from agentcluster.core.membership import NodeStatus
from agentcluster.core.registry import AgentMode, AgentStatus
from agentcluster.errors import (
    AgentExists,
    AgentUnavailable,
    ConfigurationError,
    InvalidSignal,
)
from agentcluster.examples.durable_counter import Counter
from agentcluster.telemetry import telemetry
from agentcluster.testing.waiting import eventually, stays
from tests.cluster.failover.harness import (
    cluster_of,
    instances,
    running_elsewhere,
    send_until_acknowledged,
    total,
)

# --- 1. modes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"mode": "eternal"}, "unknown mode"),
        ({"mode": "plain", "max_staleness": 0.1}, "max_staleness"),
        ({"mode": "critical", "restart": "temporary"}, "temporary"),
        ({"mode": "critical", "max_attempts": 2}, "max_attempts"),
        ({"mode": "durable", "max_staleness": -1}, "max_staleness"),
        ({"mode": "durable", "snapshot": {"id": "x"}}, "snapshot"),
    ],
)
async def test_contradictory_options_are_refused_at_start(
    options: dict[str, Any], names: str
) -> None:
    async with cluster_of(2) as (cluster, _):
        with pytest.raises(ConfigurationError, match=names):
            await cluster.start_agent(Counter, "c", node="n2", **options)
        assert cluster.lookup("c") is None
        assert cluster.node("n2").local.lookup("c") is None


async def test_the_mode_is_recorded_and_each_action_is_snapshotted() -> None:
    async with cluster_of(2) as (cluster, log):
        entry = await cluster.start_agent(Counter, "c", node="n2", mode="critical")
        assert (entry.mode, entry.status, entry.incarnation) == (
            AgentMode.CRITICAL,
            AgentStatus.RUNNING,
            1,
        )
        for _ in range(3):
            await cluster.call("c", Signal("count.add", {"n": 2}))
        stored = await cluster.node("n1").state_store.read("c")  # type: ignore[union-attr]
        assert stored.envelope is not None
        assert stored.envelope.state["state"]["total"] == 6
        assert stored.envelope.agent_incarnation == 1
        kinds = [c.kind for c in log.of("c")]
        assert kinds[0] == "fencing"
        assert kinds.count("reply") == 3
        assert kinds.count("state") >= 1


# --- 3. failover ----------------------------------------------------------------------


async def test_a_critical_agent_fails_over_with_its_state_and_a_plain_one_does_not() -> None:
    completed: list[dict[str, Any]] = []
    handler = telemetry.attach(
        ("agentcluster", "failover", "completed"),
        lambda event, m, meta: completed.append(dict(m)),
    )
    try:
        async with cluster_of(3) as (cluster, log):
            await cluster.start_agent(Counter, "crit", node="n3", mode="critical")
            await cluster.start_agent(Counter, "plain", node="n3")
            for _ in range(5):
                await cluster.call("crit", Signal("count.add", {"n": 1}))
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            await cluster.kill_node("n3")
            await eventually(lambda: running_elsewhere(cluster, "crit", "n3"), timeout=10)
            took = loop.time() - killed_at
            assert took < 2.0, took
            entry = cluster.lookup("crit")
            assert entry is not None
            assert entry.incarnation == 2
            assert await total(cluster, "crit") == 5
            assert await cluster.call("crit", Signal("count.add", {"n": 1})) == {"total": 6}
            plain = cluster.lookup("plain")
            assert plain is not None
            assert plain.status is AgentStatus.UNAVAILABLE
            with pytest.raises(AgentUnavailable):
                await cluster.call("plain", Signal("count.get"), timeout=2)
            assert instances(cluster, "crit") == [entry.node]
            assert {c.incarnation for c in log.of("crit")} == {1, 2}
    finally:
        telemetry.detach(handler)
    assert any(m["moved"] >= 1 and m["unavailable"] >= 1 for m in completed), completed


async def test_start_agent_on_a_live_id_returns_it_and_refuses_another_class() -> None:
    class Other(Agent):
        pass

    async with cluster_of(2) as (cluster, _):
        first = await cluster.start_agent(Counter, "c", node="n2", mode="critical")
        again = await cluster.start_agent(Counter, "c", node="n1", mode="critical")
        assert (again.node, again.incarnation) == (first.node, first.incarnation)
        with pytest.raises(AgentExists):
            await cluster.start_agent(Other, "c", node="n1", mode="critical")


class Versioned(Agent):
    """Schema 1 kept ``total``; a later schema is migrated by adding 100 (to see it ran)."""

    State = Counter.State

    schema_version = 1
    routes = {
        "count.add": Counter._compiled.actions["add"],
        "count.get": Counter.routes["count.get"],
    }

    @classmethod
    def migrate(cls, version: int, data: dict[str, Any]) -> dict[str, Any]:
        data["state"]["total"] += 100
        data["schema_version"] = cls.schema_version
        return data


async def test_an_old_snapshot_is_migrated_on_restore() -> None:
    async with cluster_of(3) as (cluster, _):
        await cluster.start_agent(Versioned, "v", node="n3", mode="critical")
        await cluster.call("v", Signal("count.add", {"n": 7}))
        Versioned.schema_version = 2
        try:
            await cluster.kill_node("n3")
            await eventually(lambda: running_elsewhere(cluster, "v", "n3"), timeout=10)
            assert await total(cluster, "v") == 107
        finally:
            Versioned.schema_version = 1


async def test_an_unrestorable_snapshot_marks_the_agent_failed_with_restore_failed() -> None:
    async with cluster_of(3) as (cluster, _):
        await cluster.start_agent(Counter, "broken", node="n3", mode="critical")
        await cluster.call("broken", Signal("count.add", {"n": 1}))
        state = cluster.node("n1").liveness.buckets.state  # type: ignore[union-attr]
        await state.put(state_key("broken"), b'{"schema_version": 1, "state": 42}')
        await cluster.kill_node("n3")

        def failed() -> bool:
            entry = cluster.lookup("broken")
            return entry is not None and entry.status is AgentStatus.FAILED

        await eventually(failed, timeout=10)
        entry = cluster.lookup("broken")
        assert entry is not None
        assert entry.reason is not None
        assert "restore_failed" in entry.reason
        assert instances(cluster, "broken") == []


async def test_a_snapshot_over_the_key_value_limit_goes_to_the_object_store() -> None:
    class Big(Action):
        name = "big"

        async def run(self, params: Any, ctx: Any) -> Any:
            return None, ctx.set(blob="x" * 1_500_000)

    class Blob(Agent):
        class State(BaseModel):
            blob: str = ""

        routes = {"blob.fill": Big}

    async with cluster_of(3) as (cluster, _):
        await cluster.start_agent(Blob, "blob", node="n3", mode="critical")
        await cluster.call("blob", Signal("blob.fill"))
        kv = cluster.node("n1").liveness.buckets.state  # type: ignore[union-attr]

        async def pointer() -> bool:
            found = await kv.get(state_key("blob"))
            return found is not None and "object" in orjson.loads(found.value)

        await eventually(pointer, timeout=5)
        await cluster.kill_node("n3")
        await eventually(lambda: running_elsewhere(cluster, "blob", "n3"), timeout=10)
        entry = cluster.lookup("blob")
        assert entry is not None
        assert len(cluster.node(entry.node).local.state("blob").blob) == 1_500_000  # type: ignore[attr-defined]


# --- 2. the durable inbox ---------------------------------------------------------------


async def test_durable_counters_count_every_acknowledged_send_exactly_across_a_kill() -> None:
    async with cluster_of(3) as (cluster, log):
        await cluster.start_agent(Counter, "b", node="n1", mode="durable")
        await cluster.start_agent(Counter, "a", node="n3", mode="durable", state={"forward": "b"})
        sends = 120
        first = [
            asyncio.create_task(
                send_until_acknowledged(cluster, "a", Signal("count.add", {"n": 1}, id=f"s{i}"))
            )
            for i in range(sends // 2)
        ]
        await asyncio.sleep(0.01)
        await cluster.kill_node("n3")
        rest = [
            asyncio.create_task(
                send_until_acknowledged(cluster, "a", Signal("count.add", {"n": 1}, id=f"s{i}"))
            )
            for i in range(sends // 2, sends)
        ]
        await asyncio.gather(*first, *rest)
        await eventually(lambda: running_elsewhere(cluster, "a", "n3"), timeout=10)

        async def exact() -> bool:
            return await total(cluster, "a") == sends and await total(cluster, "b") == sends

        await eventually(exact, timeout=20, interval=0.5)
        assert {c.incarnation for c in log.of("a")} == {1, 2}
        assert await total(cluster, "a") == sends


async def test_a_durable_send_may_not_outlive_the_duplicate_window() -> None:
    async with cluster_of(2) as (cluster, _):
        await cluster.start_agent(Counter, "d", node="n2", mode="durable")
        with pytest.raises(InvalidSignal, match="duplicate window"):
            await cluster.send("d", Signal("count.add", {"n": 1}), timeout=600)
        assert await total(cluster, "d") == 0


_poison_kills: list[str] = []


class Poison(Action):
    """Kills the node it runs on, as a signal that crashes its process would."""

    name = "poison"

    async def run(self, params: Any, ctx: Any) -> Any:
        cluster = ctx.node.services["test_cluster"]
        _poison_kills.append(ctx.node.node_id)
        asyncio.get_running_loop().create_task(cluster.kill_node(ctx.node.node_id))
        await asyncio.sleep(60)


class Fragile(Agent):
    State = Counter.State

    routes = {"poison": Poison, "count.get": Counter.routes["count.get"]}


async def test_a_poison_signal_is_dead_lettered_after_its_attempts_not_killing_every_node() -> None:
    _poison_kills.clear()
    async with cluster_of(5) as (cluster, _):
        for node in cluster._nodes.values():
            node.local.services["test_cluster"] = cluster
        await cluster.start_agent(Fragile, "fragile", node="n2", mode="durable", max_attempts=2)
        await cluster.send("fragile", Signal("poison", id="poison-1"), timeout=30)

        def settled() -> bool:
            entry = cluster.lookup("fragile")
            return (
                entry is not None
                and entry.status is AgentStatus.RUNNING
                and entry.node not in _poison_kills
            )

        await eventually(settled, timeout=30, interval=0.1)
        # The live run and two replays ran it; the third owner dead-lettered it instead.
        assert len(_poison_kills) == 3, _poison_kills
        letters = await cluster.dead_letters()
        assert any(
            letter.signal.get("id") == "poison-1" and "PoisonSignal" in str(letter.error)
            for letter in letters
        )
        assert await total(cluster, "fragile") == 0


class SlowAdd(Action):
    """Add ``n`` after 0.1 s: a backlog of these takes a while to replay."""

    name = "add"

    class Params(BaseModel):
        n: int = 1

    async def run(self, params: Any, ctx: Any) -> Any:
        await asyncio.sleep(0.1)
        total = ctx.state.total + params.n
        return {"total": total}, ctx.set(total=total)


class Slow(Agent):
    State = Counter.State

    routes = {"count.add": SlowAdd, "count.get": Counter.routes["count.get"]}


async def test_a_replay_longer_than_the_activation_timeout_is_not_planned_again() -> None:
    """A durable agent's backlog takes longer to replay than ``activation_timeout``: the
    activation tells the leader it is alive (the entry is rewritten while it replays), so
    the agent is not moved again and again, and every acknowledged send is applied once."""
    config = FailoverConfig(activation_timeout=1.0)
    async with cluster_of(3, failover=config) as (cluster, _):
        await cluster.start_agent(Slow, "slow", node="n3", mode="durable")
        for _ in range(40):
            await cluster.send("slow", Signal("count.add", {"n": 1}), timeout=30)
        applied = cluster.node("n3").local.state("slow").total
        assert applied < 10  # most of the backlog is only in the inbox
        await cluster.kill_node("n3")
        await eventually(lambda: running_elsewhere(cluster, "slow", "n3"), timeout=30)
        entry = cluster.lookup("slow")
        assert entry is not None
        assert entry.incarnation == 2  # one activation, never planned again
        assert len(entry.failovers) == 1
        assert await total(cluster, "slow") == 40


# --- 4. fencing -----------------------------------------------------------------------


async def test_a_leader_killed_mid_failover_strands_nothing_and_doubles_nothing() -> None:
    ids = [f"w{i:02d}" for i in range(20)]
    config = FailoverConfig(concurrency=4, batch=5)
    async with cluster_of(4, failover=config) as (cluster, _log):
        assert cluster.leader() is not None
        assert cluster.leader()[0] == "n1"
        for agent_id in ids:
            await cluster.start_agent(Counter, agent_id, node="n3", mode="critical")
            await cluster.call(agent_id, Signal("count.add", {"n": 3}))
        passes: list[float] = []

        def kill_leader(event: Any, measurements: Any, meta: Any) -> None:
            # The first passes mark n3's plain system agents; kill at the first move.
            if meta.get("node_id") == "n1" and measurements["moved"] and not passes:
                passes.append(measurements["moved"])
                cluster.hub.faults.kill("n1")  # type: ignore[union-attr]

        handler = telemetry.attach(("agentcluster", "failover", "completed"), kill_leader)
        try:
            await cluster.kill_node("n3")
            await eventually(lambda: passes, timeout=10)
            await cluster.node("n1").stop(leave=False)
            assert 0 < passes[0] <= 5  # the old leader moved part of them, then died
            await eventually(
                lambda: (
                    all(running_elsewhere(cluster, a, "n3") for a in ids)
                    and all(cluster.lookup(a).node in ("n2", "n4") for a in ids)
                ),  # type: ignore[union-attr]
                timeout=30,
                interval=0.1,
            )
        finally:
            telemetry.detach(handler)
        for agent_id in ids:
            assert len(instances(cluster, agent_id)) == 1, agent_id
            assert await total(cluster, agent_id) == 3


async def test_a_cut_off_minority_pauses_commits_nothing_and_heals_cleanly() -> None:
    async with cluster_of(3) as (cluster, log):
        await cluster.start_agent(Counter, "c", node="n3", mode="critical")
        await cluster.call("c", Signal("count.add", {"n": 4}))
        n3 = cluster.node("n3")
        cluster.hub.faults.cut_off(["n3"])  # type: ignore[union-attr]
        await eventually(lambda: n3.liveness.paused, timeout=5)  # type: ignore[union-attr]
        await eventually(lambda: cluster.members()["n3"].status is NodeStatus.DEAD, timeout=5)
        await eventually(lambda: running_elsewhere(cluster, "c", "n3"), timeout=10)
        assert await cluster.call("c", Signal("count.add", {"n": 1})) == {"total": 5}
        cut_commits = [c for c in log.of("c") if c.node_id == "n3"]
        await asyncio.sleep(1.0)
        cluster.hub.faults.reconnect_store(["n3"])  # type: ignore[union-attr]
        await eventually(lambda: n3.incarnation == 2, timeout=5)
        await eventually(lambda: n3.local.lookup("c") is None, timeout=5)
        assert [c for c in log.of("c") if c.node_id == "n3"] == cut_commits
        assert await total(cluster, "c") == 5
        assert len(instances(cluster, "c")) == 1


async def test_a_store_whose_lease_lapsed_on_the_way_is_not_acknowledged() -> None:
    """The fence of an inbox acknowledgement: the node's lease lapses while its store of a
    durable send is on the wire (a freeze, a cut). The store lands, but the sender is
    refused (retryable) rather than acknowledged; once the lease is back, the sender's
    retry of the same id is acknowledged without running the signal twice."""
    async with cluster_of(3) as (cluster, log):
        await cluster.start_agent(Counter, "d", node="n3", mode="durable")
        await cluster.send("d", Signal("count.add", {"n": 1}))
        n3 = cluster.node("n3")
        keeper = n3.keepers["d"]
        lease = keeper._deps.fence_ok
        lapsed: list[int] = []
        real_store = keeper.store

        async def store_then_lapse(stored: Signal) -> tuple[int, bool]:
            found = await real_store(stored)
            if not lapsed:
                lapsed.append(found[0])
                keeper._deps.fence_ok = lambda: False
                asyncio.get_running_loop().call_later(0.3, setattr, keeper._deps, "fence_ok", lease)
            return found

        keeper.store = store_then_lapse  # type: ignore[method-assign]
        router = cluster.node("n1").router
        assert router is not None
        retries = router.stats.retries
        acks = len([c for c in log.of("d") if c.kind == "inbox_ack"])
        await cluster.send("d", Signal("count.add", {"n": 1}), timeout=10)
        assert lapsed  # the store landed while the lease lapsed ...
        assert router.stats.retries > retries  # ... and the first answer was a refusal
        assert len([c for c in log.of("d") if c.kind == "inbox_ack"]) == acks + 1
        await eventually(lambda: n3.local.state("d").total == 2, timeout=5)
        assert await total(cluster, "d") == 2


async def test_an_emitted_signal_waits_for_the_lease_before_it_leaves() -> None:
    """The fence of an emitted signal: the lease lapses between the snapshot's commit and
    the release of the signal it holds. Nothing leaves while it is lapsed; once the lease
    is confirmed again, the signal goes, once."""
    async with cluster_of(3) as (cluster, log):
        await cluster.start_agent(Counter, "b", node="n2", mode="durable")
        await cluster.start_agent(Counter, "a", node="n3", mode="durable", state={"forward": "b"})
        await cluster.send("a", Signal("count.add", {"n": 1}))
        await eventually(lambda: cluster.node("n2").local.state("b").total == 1, timeout=5)
        keeper = cluster.node("n3").keepers["a"]
        lease = keeper._deps.fence_ok
        store = keeper._deps.store
        real_write = store.write
        lapsed: list[float] = []

        async def write_then_lapse(*args: Any, **kwargs: Any) -> Any:
            written = await real_write(*args, **kwargs)
            if not lapsed and args[0] == "a":
                loop = asyncio.get_running_loop()
                lapsed.append(loop.time())
                keeper._deps.fence_ok = lambda: False
                loop.call_later(0.5, setattr, keeper._deps, "fence_ok", lease)
            return written

        store.write = write_then_lapse  # type: ignore[method-assign]
        emits = len([c for c in log.of("a") if c.kind == "emit"])
        await cluster.send("a", Signal("count.add", {"n": 1}))
        await eventually(lambda: bool(lapsed), timeout=5)
        await stays(lambda: cluster.node("n2").local.state("b").total, 0.4)
        assert len([c for c in log.of("a") if c.kind == "emit"]) == emits
        await eventually(lambda: cluster.node("n2").local.state("b").total == 2, timeout=5)
        assert len([c for c in log.of("a") if c.kind == "emit"]) == emits + 1
        assert await total(cluster, "b") == 2


async def test_an_activation_overtaken_by_a_newer_assignment_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Step 3 of the activation path aborts when the entry shows a higher incarnation,
    before the fencing write: an activation at incarnation 2 on n2, while the registry
    already gave the agent to another node at incarnation 3."""
    from dataclasses import replace

    from agentcluster.cluster.activation import activate
    from agentcluster.errors import AgentFenced

    async with cluster_of(3) as (cluster, log):
        entry = await cluster.start_agent(Counter, "c", node="n3", mode="critical")
        await cluster.call("c", Signal("count.add", {"n": 2}))
        n2 = cluster.node("n2")
        registry = n2._registry()
        newer = replace(entry, node="n1", incarnation=entry.incarnation + 2)
        real_lookup = registry.lookup
        monkeypatch.setattr(
            registry, "lookup", lambda agent_id: newer if agent_id == "c" else real_lookup(agent_id)
        )
        stale = replace(entry, node="n2", incarnation=entry.incarnation + 1)
        before = len(log.of("c"))
        with pytest.raises(AgentFenced):
            await activate(n2, stale, 0)
        assert len(log.of("c")) == before  # no fencing write, no release, no replay
        assert n2.local.lookup("c") is None
        monkeypatch.undo()
        assert await total(cluster, "c") == 2


async def test_a_reply_committed_but_not_sent_is_sent_by_the_next_owner() -> None:
    """A call's reply is part of the snapshot that holds the action's effect: when the
    node dies after that snapshot committed and before the reply left, the agent's next
    owner sends it, and the caller gets the result instead of a timeout — from one run."""
    async with cluster_of(3) as (cluster, log):
        await cluster.start_agent(Counter, "c", node="n3", mode="critical")
        await cluster.call("c", Signal("count.add", {"n": 1}), timeout=5)
        n3 = cluster.node("n3")
        router = n3.router
        assert router is not None
        real_enqueue = router._enqueue
        lost: list[bytes] = []

        def lose_results(subject: str, frame: bytes, *, control: bool = False) -> bool:
            if b'"k":"result"' in frame:
                lost.append(frame)  # the node dies before this leaves
                return True
            return real_enqueue(subject, frame, control=control)

        router._enqueue = lose_results  # type: ignore[method-assign]
        keeper = n3.keepers["c"]
        call = asyncio.create_task(cluster.call("c", Signal("count.add", {"n": 4}), timeout=30))
        await eventually(lambda: bool(lost), timeout=5)
        assert keeper.scheduler.committed_version == keeper.scheduler.latest_version
        await cluster.kill_node("n3")
        assert await asyncio.wait_for(call, 10) == {"total": 5}  # long before its 30 s
        assert running_elsewhere(cluster, "c", "n3")
        assert await total(cluster, "c") == 5
        replies = [c for c in log.of("c") if c.kind == "reply" and c.node_id != "n3"]
        assert replies
        assert replies[0].incarnation == 2


async def test_a_new_leader_counts_the_failover_limit_on_from_the_registry() -> None:
    """The failover history is in the registry entry, not in a leader's memory: with a
    limit of one failover, the agent's second failover is refused as ``failover_limit``
    even when the leader that moved it the first time died meanwhile."""
    config = FailoverConfig(max_failovers=1)
    async with cluster_of(4, failover=config) as (cluster, _):
        first_leader = cluster.leader()
        assert first_leader is not None
        host = next(n for n in ("n4", "n3", "n2") if n != first_leader[0])
        await cluster.start_agent(Counter, "c", node=host, mode="critical")
        await cluster.call("c", Signal("count.add", {"n": 1}), timeout=5)
        await cluster.kill_node(host)
        await eventually(lambda: running_elsewhere(cluster, "c", host), timeout=10)
        moved = cluster.lookup("c")
        assert moved is not None
        assert len(moved.failovers) == 1
        # Both the node the agent now lives on and the leader that moved it die.
        leader = cluster.leader()
        assert leader is not None
        for node_id in sorted({moved.node, leader[0]}):
            await cluster.kill_node(node_id)
        await eventually(
            lambda: (
                (entry := cluster.lookup("c")) is not None and entry.status is AgentStatus.FAILED
            ),
            timeout=15,
        )
        entry = cluster.lookup("c")
        assert entry is not None
        assert entry.reason == "failover_limit"
        new_leader = cluster.leader()
        assert new_leader is not None
        assert new_leader[0] not in {leader[0], moved.node}


async def test_a_store_stall_during_failover_delays_it_and_kills_nobody() -> None:
    async with cluster_of(3) as (cluster, _):
        await cluster.start_agent(Counter, "c", node="n3", mode="critical")
        await cluster.call("c", Signal("count.add", {"n": 2}))
        await cluster.kill_node("n3")
        await eventually(lambda: cluster.members()["n3"].status is NodeStatus.DEAD, timeout=5)
        cluster.hub.faults.leader_election(3.0)  # type: ignore[union-attr]
        await eventually(lambda: running_elsewhere(cluster, "c", "n3"), timeout=15)
        assert await total(cluster, "c") == 2
        alive = {n for n, r in cluster.members().items() if r.status is NodeStatus.ALIVE}
        assert alive == {"n1", "n2"}
        assert all(cluster.members()[n].incarnation == 1 for n in alive)


async def test_ctx_exposes_a_fencing_token_that_grows_across_failover() -> None:
    class Token(Action):
        name = "token"

        async def run(self, params: Any, ctx: Any) -> Any:
            return list(ctx.fencing_token)

    class Fenced(Agent):
        routes = {"token": Token}

    async with cluster_of(3) as (cluster, _):
        await cluster.start_agent(Fenced, "f", node="n3", mode="critical")
        before = await cluster.call("f", Signal("token"))
        await cluster.kill_node("n3")
        await eventually(lambda: running_elsewhere(cluster, "f", "n3"), timeout=10)
        after = await cluster.call("f", Signal("token"))
        assert before[0] == 1
        assert after[0] == 2
        assert after[1] > before[1]
