"""Supervision at run time: crashes, restarts with the last good state, intensity, strategies."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, ChildSpec, LocalNode, Signal
from agentcluster.errors import ActionFailed, AgentNotFound, ConfigurationError
from agentcluster.telemetry import EventRecorder, Telemetry
from tests.agent.conftest import eventually

ALERT = ("agentcluster", "alert", "raised")


class Boom(Exception):
    """Listed in ``crash_on``: crashes the agent instead of failing one action."""


class Inc(Action):
    async def run(self, params, ctx):
        count = ctx.state.count + 1
        return count, ctx.set(count=count)


class Explode(Action):
    async def run(self, params, ctx):
        raise Boom("kaboom")


class StopSelf(Action):
    async def run(self, params, ctx):
        return "bye", ctx.stop()


class Fragile(Agent):
    """Counts its mounts in its state, which a restart keeps (the last good state)."""

    class State(BaseModel):
        count: int = 0
        mounts: int = 0

    crash_on = (Boom,)
    routes = {"fragile.inc": Inc, "fragile.explode": Explode, "fragile.stop": StopSelf}

    def mount(self, ctx):
        return ctx.set(mounts=ctx.state.mounts + 1)


INC = "fragile.inc"
EXPLODE = "fragile.explode"


def recorded() -> tuple[Telemetry, EventRecorder]:
    t = Telemetry()
    recorder = EventRecorder()
    t.attach("agentcluster", recorder)
    return t, recorder


def mounts(node: LocalNode, aid: str) -> int:
    return node.state(aid).mounts


def alive(node: LocalNode, aid: str) -> bool:
    info = node.lookup(aid)
    return info is not None and info.status in ("idle", "running")


# --- crash and restart ------------------------------------------------------------------


async def test_crash_restarts_with_the_last_good_state_and_mounts_again():
    async with LocalNode() as node:
        await node.start_agent(Fragile, "f")
        assert mounts(node, "f") == 1
        assert await node.call("f", Signal(INC)) == 1
        assert await node.call("f", Signal(INC)) == 2
        await node.cast("f", Signal(EXPLODE))
        await eventually(lambda: mounts(node, "f") == 2)
        assert node.state("f").count == 2, "restarted from the state before the crash"
        assert (node.crashes, node.restarts) == (1, 1)
        assert alive(node, "f")
        assert await node.call("f", Signal(INC)) == 3


async def test_queued_signals_survive_a_restart():
    async with LocalNode() as node:
        await node.start_agent(Fragile, "f")
        # All four are queued before the agent's task runs the first one.
        await node.cast("f", Signal(EXPLODE))
        for _ in range(3):
            await node.cast("f", Signal(INC))
        await eventually(lambda: node.state("f").count == 3)
        assert mounts(node, "f") == 2
        # Only the signal that crashed the agent may be dead-lettered, never a queued one.
        assert {d.signal.type for d in node.dead_letters.list()} <= {EXPLODE}


async def test_a_call_that_crashes_the_agent_gets_an_error_at_once():
    async with LocalNode() as node:
        await node.start_agent(Fragile, "f")
        try:
            with pytest.raises(ActionFailed) as exc:
                await node.call("f", Signal(EXPLODE), timeout=0.5)
            assert exc.value.error_type == "Boom"
            assert exc.value.agent_id == "f"
        finally:
            await eventually(lambda: mounts(node, "f") == 2)
        assert await node.call("f", Signal(INC)) == 1


async def test_restart_intensity_exceeded_fails_the_agent_and_raises_an_alert():
    t, recorder = recorded()
    async with LocalNode(telemetry=t) as node:
        await node.start_agent(Fragile, "f", max_restarts=2, restart_period=10)
        await node.start_agent(Fragile, "bystander")
        for _ in range(3):
            await node.cast("f", Signal(EXPLODE))
        await node.cast("f", Signal(INC))
        await eventually(lambda: node.lookup("f").status == "failed")
        assert (node.crashes, node.restarts) == (3, 2)
        with pytest.raises(AgentNotFound):
            await node.cast("f", Signal(INC))
        with pytest.raises(AgentNotFound):
            await node.call("f", Signal(INC))
        assert "f" not in node.agents()
        # What was still queued is dead-lettered, never run.
        assert [d.signal.type for d in node.dead_letters.list(reason="stopped")] == [INC]
        assert node.state("f").count == 0
        alerts = recorder.events(ALERT)
        assert len(alerts) == 1
        assert alerts[0].metadata["severity"] == "critical"
        assert alerts[0].metadata["agent_id"] == "f"
        # The rest of the node carries on.
        assert await node.call("bystander", Signal(INC)) == 1
        assert alive(node, "bystander")


async def test_intensity_counts_per_agent_on_the_node():
    async with LocalNode(max_restarts=1, restart_period=10) as node:
        await node.start_agent(Fragile, "a")
        await node.start_agent(Fragile, "b")
        await node.cast("a", Signal(EXPLODE))
        await node.cast("b", Signal(EXPLODE))
        await eventually(lambda: mounts(node, "a") == 2 and mounts(node, "b") == 2)
        assert alive(node, "a")
        assert alive(node, "b")


# --- restart types ----------------------------------------------------------------------


async def test_transient_restarts_after_a_crash_but_not_after_a_normal_stop():
    async with LocalNode() as node:
        await node.start_agent(Fragile, "t", restart="transient")
        await node.cast("t", Signal(EXPLODE))
        await eventually(lambda: mounts(node, "t") == 2)
        assert await node.call("t", Signal("fragile.stop")) == "bye"
        await eventually(lambda: node.lookup("t") is None)
        assert node.restarts == 1
        with pytest.raises(AgentNotFound):
            await node.cast("t", Signal(INC))


async def test_temporary_is_never_restarted_after_a_crash():
    async with LocalNode() as node:
        await node.start_agent(Fragile, "tmp", restart="temporary")
        await node.cast("tmp", Signal(EXPLODE))
        await eventually(lambda: node.crashes == 1)
        await eventually(lambda: not alive(node, "tmp"), timeout=0.5)
        assert node.restarts == 0
        with pytest.raises(AgentNotFound):
            await node.cast("tmp", Signal(INC))


async def test_temporary_is_never_restarted_after_a_normal_stop():
    async with LocalNode() as node:
        await node.start_agent(Fragile, "tmp", restart="temporary")
        assert await node.call("tmp", Signal("fragile.stop")) == "bye"
        await eventually(lambda: node.lookup("tmp") is None)
        assert node.restarts == 0


async def test_permanent_restarts_after_a_crash():
    async with LocalNode() as node:
        await node.start_agent(Fragile, "p", restart="permanent")
        await node.call("p", Signal(INC))
        await node.cast("p", Signal(EXPLODE))
        await eventually(lambda: mounts(node, "p") == 2)
        assert await node.call("p", Signal(INC)) == 2


async def test_permanent_restarts_even_after_a_normal_stop():
    async with LocalNode() as node:
        await node.start_agent(Fragile, "p", restart="permanent")
        assert await node.call("p", Signal("fragile.stop")) == "bye"
        await eventually(lambda: node.lookup("p") is not None and mounts(node, "p") == 2, 0.5)
        assert await node.call("p", Signal(INC)) == 1


async def test_unknown_restart_type_is_a_configuration_error():
    async with LocalNode() as node:
        with pytest.raises(ConfigurationError):
            await node.start_agent(Fragile, "x", restart="sometimes")
        assert node.lookup("x") is None


# --- supervisors built by the user ------------------------------------------------------


async def start_abc(node: LocalNode, strategy: str, **kwargs) -> None:
    await node.start_supervisor(
        "sup",
        [ChildSpec(Fragile, "a"), ChildSpec(Fragile, "b"), ChildSpec(Fragile, "c")],
        strategy=strategy,
        **kwargs,
    )


async def settled_mounts(node: LocalNode) -> dict[str, int]:
    # A call runs after any restart already requested (restarts go ahead of the queue).
    for aid in ("a", "b", "c"):
        await node.call(aid, Signal(INC))
    return {aid: mounts(node, aid) for aid in ("a", "b", "c")}


async def test_one_for_one_restarts_only_the_crashed_child():
    async with LocalNode() as node:
        await start_abc(node, "one_for_one")
        assert node.supervisor("sup").children() == ["a", "b", "c"]
        await node.cast("b", Signal(EXPLODE))
        await eventually(lambda: mounts(node, "b") == 2)
        assert await settled_mounts(node) == {"a": 1, "b": 2, "c": 1}


async def test_one_for_all_restarts_every_sibling():
    async with LocalNode() as node:
        await start_abc(node, "one_for_all")
        await node.cast("b", Signal(EXPLODE))
        await eventually(lambda: all(mounts(node, aid) == 2 for aid in "abc"))
        assert await settled_mounts(node) == {"a": 2, "b": 2, "c": 2}
        assert node.restarts == 3


async def test_rest_for_one_restarts_the_crashed_child_and_later_siblings():
    async with LocalNode() as node:
        await start_abc(node, "rest_for_one")
        await node.cast("b", Signal(EXPLODE))
        await eventually(lambda: mounts(node, "b") == 2 and mounts(node, "c") == 2)
        assert await settled_mounts(node) == {"a": 1, "b": 2, "c": 2}


async def test_child_spec_state_sets_the_initial_state():
    async with LocalNode() as node:
        await node.start_supervisor("sup", [ChildSpec(Fragile, "a", state={"count": 41})])
        assert await node.call("a", Signal(INC)) == 42


async def test_user_supervisor_escalates_after_its_intensity():
    t, recorder = recorded()
    async with LocalNode(telemetry=t) as node:
        await node.start_agent(Fragile, "outside")
        await start_abc(node, "one_for_one", max_restarts=1, period=10)
        await node.cast("a", Signal(EXPLODE))
        await eventually(lambda: mounts(node, "a") == 2)
        await node.cast("c", Signal(EXPLODE))  # the second restart in the period: too many
        sup = node.supervisor("sup")
        await eventually(lambda: sup.failed)
        await eventually(lambda: node.lookup("c").status == "failed")
        assert node.lookup("a") is None
        assert node.lookup("b") is None
        assert len(sup) == 0
        escalated = recorder.events(("agentcluster", "supervisor", "escalated"))
        assert [e.metadata["agent_id"] for e in escalated] == ["c"]
        alerts = recorder.events(ALERT)
        assert [(e.metadata["agent_id"], e.metadata["severity"]) for e in alerts] == [
            ("c", "critical")
        ]
        assert await node.call("outside", Signal(INC)) == 1


async def test_supervisor_bad_input():
    async with LocalNode() as node:
        await node.start_supervisor("sup", [])
        with pytest.raises(ConfigurationError):
            await node.start_supervisor("sup", [])
        with pytest.raises(ConfigurationError):
            await node.start_agent(Fragile, "x", supervisor="no-such-supervisor")
        assert node.lookup("x") is None


async def test_unknown_strategy_is_a_configuration_error():
    async with LocalNode() as node:
        with pytest.raises(ConfigurationError):
            await node.start_supervisor("other", [], strategy="one_for_some")


# --- hooks and children -----------------------------------------------------------------


def touchy_agent(seen: list[str], hook_raises: bool) -> type[Agent]:
    class Fail(Action):
        async def run(self, params, ctx):
            raise ValueError("bad input")

    class Touchy(Agent):
        class State(BaseModel):
            mounts: int = 0

        routes = {"touchy.fail": Fail}

        def mount(self, ctx):
            return ctx.set(mounts=ctx.state.mounts + 1)

        def on_error(self, error, ctx):
            seen.append(type(error).__name__)
            if hook_raises:
                raise RuntimeError("the hook itself broke")

    return Touchy


async def test_an_on_error_hook_that_raises_crashes_the_agent():
    seen: list[str] = []
    t, recorder = recorded()
    async with LocalNode(telemetry=t) as node:
        await node.start_agent(touchy_agent(seen, hook_raises=True), "t")
        await node.cast("t", Signal("touchy.fail"))
        await eventually(lambda: mounts(node, "t") == 2)
        assert seen == ["ValueError"]
        assert node.crashes == 1
        crashed = recorder.events(("agentcluster", "agent", "crashed"))
        assert [e.metadata["error_type"] for e in crashed] == ["RuntimeError"]


async def test_an_on_error_hook_that_returns_leaves_the_agent_running():
    seen: list[str] = []
    async with LocalNode() as node:
        await node.start_agent(touchy_agent(seen, hook_raises=False), "t")
        with pytest.raises(ActionFailed) as exc:
            await node.call("t", Signal("touchy.fail"))
        assert exc.value.error_type == "ValueError"
        assert seen == ["ValueError"]
        assert node.crashes == 0
        assert mounts(node, "t") == 1


class SpawnKid(Action):
    async def run(self, params, ctx):
        return "spawned", ctx.spawn(Fragile, "kid")


class Parent(Agent):
    class State(BaseModel):
        mounts: int = 0

    routes = {"parent.spawn": SpawnKid}

    def mount(self, ctx):
        return ctx.set(mounts=ctx.state.mounts + 1)


async def test_a_crashed_child_is_restarted_by_its_parents_supervisor():
    async with LocalNode() as node:
        await node.start_agent(Parent, "parent")
        assert await node.call("parent", Signal("parent.spawn")) == "spawned"
        parent = node.server("parent")
        assert node.lookup("kid").parent == "parent"
        assert "kid" in parent.children
        assert node.server("kid").supervisor is parent.children
        await node.call("kid", Signal(INC))
        await node.cast("kid", Signal(EXPLODE))
        await eventually(lambda: mounts(node, "kid") == 2)
        assert node.state("kid").count == 1
        assert mounts(node, "parent") == 1, "the parent is not restarted"
        assert "kid" in parent.children


async def test_a_child_past_its_intensity_crashes_its_parent():
    t, recorder = recorded()
    async with LocalNode(telemetry=t) as node:
        await node.start_agent(Parent, "parent")
        await node.call("parent", Signal("parent.spawn"))
        for _ in range(4):  # the child supervisor allows 3 restarts in 5 s
            await node.cast("kid", Signal(EXPLODE))
        await eventually(lambda: mounts(node, "parent") == 2)
        assert node.lookup("kid").status == "failed"
        crashed = [
            (e.metadata["agent_id"], e.metadata["error_type"])
            for e in recorder.events(("agentcluster", "agent", "crashed"))
        ]
        assert crashed == [("kid", "Boom")] * 4 + [("parent", "RestartLimitExceeded")]
        assert alive(node, "parent")
