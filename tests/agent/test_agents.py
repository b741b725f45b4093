"""Agents: state validation, hooks, directives, run-time actions, snapshots and restore."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, field_validator

from agentcluster import (
    Action,
    ActionFailed,
    ActionValidationError,
    Agent,
    AgentExists,
    AgentNotFound,
    LocalNode,
    NoRoute,
    RestoreFailed,
    Signal,
)
from agentcluster.agent.agent import apply_changes
from agentcluster.errors import ConfigurationError
from tests.agent.conftest import eventually, stays

# --- a small agent used throughout ------------------------------------------------------

validated: list[str] = []


class Counter(Agent):
    class State(BaseModel):
        qty: int = 0
        label: str = "none"
        ticks: int = 0

        @field_validator("label")
        @classmethod
        def _count(cls, value: str) -> str:
            validated.append(value)
            return value


class Bump(Action):
    class Params(BaseModel):
        by: int = 1

    async def run(self, params: Any, ctx: Any) -> Any:
        return ctx.state.qty + params.by, ctx.set(qty=ctx.state.qty + params.by)


class SetRaw(Action):
    """Sets whatever it is given, to exercise state validation."""

    class Params(BaseModel):
        changes: dict[str, Any]

    async def run(self, params: Any, ctx: Any) -> Any:
        return "set", ctx.set(**params.changes)


class Tick(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        return None, ctx.set(ticks=ctx.state.ticks + 1)


class Noop(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        return "ok"


class CounterAgent(Counter):
    routes = {"c.bump": Bump, "c.set": SetRaw, "c.tick": Tick, "c.noop": Noop}


# --- state --------------------------------------------------------------------------------


async def test_invalid_state_change_fails_the_call_and_changes_nothing() -> None:
    async with LocalNode() as node:
        await node.start_agent(CounterAgent, "c")
        await node.call("c", Signal("c.bump", {"by": 2}))
        with pytest.raises(ActionValidationError) as info:
            await node.call("c", Signal("c.set", {"changes": {"qty": "x", "label": "fine"}}))
        assert info.value.what == "state change"
        assert [e["loc"] for e in info.value.errors] == [["qty"]]
        state = node.state("c")
        assert (state.qty, state.label) == (2, "none")  # type: ignore[attr-defined]


async def test_unknown_state_field_is_refused() -> None:
    async with LocalNode() as node:
        await node.start_agent(CounterAgent, "c")
        with pytest.raises(ActionValidationError) as info:
            await node.call("c", Signal("c.set", {"changes": {"nope": 1}}))
        assert info.value.what == "state change"
        assert "nope" not in node.state("c").model_dump()


async def test_only_changed_fields_are_validated() -> None:
    async with LocalNode() as node:
        await node.start_agent(CounterAgent, "c")
        validated.clear()
        await node.call("c", Signal("c.bump"))
        await node.call("c", Signal("c.bump"))
        assert validated == []
        await node.call("c", Signal("c.set", {"changes": {"label": "new"}}))
        assert validated == ["new"]


def test_apply_changes_returns_a_copy() -> None:
    state = CounterAgent.State()
    new = apply_changes(state, {"qty": 3}, "test")
    assert (state.qty, new.qty) == (0, 3)  # type: ignore[attr-defined]
    with pytest.raises(ActionValidationError):
        apply_changes(state, {"qty": "three"}, "test")
    assert state.qty == 0  # type: ignore[attr-defined]


async def test_failed_action_changes_nothing() -> None:
    seen: list[Signal] = []

    class Partial(Action):
        class Result(BaseModel):
            n: int

        async def run(self, params: Any, ctx: Any) -> Any:
            return {"n": "not a number"}, [
                ctx.set(qty=99),
                ctx.emit("c.changed", {"qty": 99}),
                ctx.schedule(Tick, after=0.0, key="t"),
                ctx.enqueue(Tick),
            ]

    class Agent1(CounterAgent):
        routes = {**CounterAgent.routes, "c.partial": Partial}

    async with LocalNode() as node:
        node.bus.subscribe("c.*", seen.append)
        await node.start_agent(Agent1, "c")
        with pytest.raises(ActionValidationError):
            await node.call("c", Signal("c.partial"))
        assert await node.call("c", Signal("c.noop")) == "ok"
        assert node.state("c").model_dump() == {"qty": 0, "label": "none", "ticks": 0}
        assert node.snapshot("c")["schedules"] == []
        assert seen == []


async def test_bad_directive_fails_before_any_state_change() -> None:
    class BadEnqueue(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return None, [ctx.set(qty=5), ctx.enqueue("no_such_action")]

    class BadSchedule(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return None, [ctx.set(qty=6), ctx.schedule(Tick, after=-1.0)]

    class BadEvery(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return None, [ctx.set(qty=7), ctx.schedule(Tick, every=0)]

    class Agent1(CounterAgent):
        routes = {
            **CounterAgent.routes,
            "c.bad_enqueue": BadEnqueue,
            "c.bad_schedule": BadSchedule,
            "c.bad_every": BadEvery,
        }

    async with LocalNode() as node:
        await node.start_agent(Agent1, "c")
        for kind in ("c.bad_enqueue", "c.bad_schedule", "c.bad_every"):
            with pytest.raises(ConfigurationError):
                await node.call("c", Signal(kind))
            assert node.state("c").qty == 0, kind  # type: ignore[attr-defined]
        assert node.snapshot("c")["schedules"] == []


async def test_initial_state() -> None:
    async with LocalNode() as node:
        await node.start_agent(CounterAgent, "a", state={"qty": 4})
        assert node.state("a").qty == 4  # type: ignore[attr-defined]
        await node.start_agent(CounterAgent, "b", state=CounterAgent.State(qty=5))
        assert node.state("b").qty == 5  # type: ignore[attr-defined]
        with pytest.raises(ActionValidationError):
            await node.start_agent(CounterAgent, "x", state={"qty": "lots"})
        assert "x" not in node.agents()


# --- hooks ----------------------------------------------------------------------------


class Hooked(Agent):
    class State(BaseModel):
        mounted: int = 0
        ticks: int = 0

    routes = {"h.tick": Tick, "h.noop": Noop}
    events: ClassVar[list[Any]] = []

    def mount(self, ctx: Any) -> Any:
        self.events.append(("mount", self.id))
        return None, [
            ctx.set(mounted=ctx.state.mounted + 1),
            ctx.schedule(Tick, after=0.01, key="first"),
        ]

    async def shutdown(self, reason: str) -> None:
        self.events.append(("shutdown", reason))


async def test_mount_directives_and_shutdown_reason() -> None:
    Hooked.events.clear()
    async with LocalNode() as node:
        await node.start_agent(Hooked, "h")
        assert Hooked.events == [("mount", "h")]
        assert node.state("h").mounted == 1  # type: ignore[attr-defined]
        await eventually(lambda: node.state("h").ticks == 1)  # type: ignore[attr-defined]
        await node.stop_agent("h", reason="maintenance")
        assert Hooked.events[-1] == ("shutdown", "maintenance")
        await node.start_agent(Hooked, "h2")
    assert Hooked.events[-1] == ("shutdown", "shutdown")


async def test_on_before_run_sees_params_and_raising_rejects_the_action() -> None:
    ran: list[int] = []
    before: list[tuple[str, Any]] = []

    class Guarded(Action):
        class Params(BaseModel):
            n: int

        async def run(self, params: Any, ctx: Any) -> Any:
            ran.append(params.n)
            return params.n, ctx.set(last=params.n)

    class Gate(Agent):
        routes = {"g.run": Guarded}

        def on_before_run(self, action: Any, params: Any, ctx: Any) -> None:
            before.append((action.name, params.n))
            if params.n < 0:
                raise PermissionError("negative numbers are not allowed")

    async with LocalNode() as node:
        await node.start_agent(Gate, "g")
        assert await node.call("g", Signal("g.run", {"n": 1})) == 1
        with pytest.raises(ActionFailed) as info:
            await node.call("g", Signal("g.run", {"n": -1}), timeout=1.0)
        assert info.value.error_type == "PermissionError"
        assert ran == [1]
        assert before == [("guarded", 1), ("guarded", -1)]
        assert node.state("g").model_dump() == {"last": 1}
        assert await node.call("g", Signal("g.run", {"n": 2})) == 2


async def test_on_after_run_sees_the_result_before_directives_apply() -> None:
    after: list[tuple[str, Any, int]] = []

    class Watched(CounterAgent):
        def on_after_run(self, action: Any, result: Any, ctx: Any) -> None:
            after.append((action.name, result, self.state.qty))  # type: ignore[attr-defined]

    async with LocalNode() as node:
        await node.start_agent(Watched, "w")
        await node.call("w", Signal("c.bump", {"by": 3}))
        assert after == [("bump", 3, 0)]
        assert node.state("w").qty == 3  # type: ignore[attr-defined]


async def test_on_after_run_raising_fails_the_action_and_changes_nothing() -> None:
    class Picky(CounterAgent):
        def on_after_run(self, action: Any, result: Any, ctx: Any) -> None:
            if result > 5:
                raise ValueError("too big")

    async with LocalNode() as node:
        await node.start_agent(Picky, "p")
        with pytest.raises(ActionFailed) as info:
            await node.call("p", Signal("c.bump", {"by": 9}), timeout=1.0)
        assert info.value.error_type == "ValueError"
        assert node.state("p").qty == 0  # type: ignore[attr-defined]


async def test_on_error_receives_the_error() -> None:
    errors: list[BaseException] = []

    class Boom(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            raise ValueError("boom")

    class Careful(CounterAgent):
        routes = {**CounterAgent.routes, "c.boom": Boom}

        async def on_error(self, error: BaseException, ctx: Any) -> None:
            errors.append(error)

    async with LocalNode() as node:
        await node.start_agent(Careful, "c")
        with pytest.raises(ActionFailed):
            await node.call("c", Signal("c.boom"))
        with pytest.raises(ActionValidationError):
            await node.call("c", Signal("c.bump", {"by": "x"}))
        assert [type(e) for e in errors] == [ValueError, ActionValidationError]
        assert str(errors[0]) == "boom"
        assert await node.call("c", Signal("c.noop")) == "ok"


def test_hooks_not_overridden_are_skipped() -> None:
    compiled = CounterAgent._compiled
    assert not (compiled.has_mount)
    assert not (compiled.has_shutdown)
    assert not (compiled.has_error)
    assert not (compiled.has_before)
    assert not (compiled.has_after)
    compiled = Hooked._compiled
    assert compiled.has_mount
    assert compiled.has_shutdown
    assert not compiled.has_before


# --- directives -----------------------------------------------------------------------


async def test_enqueue_runs_right_after_before_queued_signals() -> None:
    log: list[str] = []

    class First(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            log.append("first")
            return None, ctx.enqueue(Second, {"n": 7})

    class Second(Action):
        class Params(BaseModel):
            n: int

        async def run(self, params: Any, ctx: Any) -> Any:
            log.append(f"second:{params.n}")

    class Third(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            log.append("third")

    class Chain(Agent):
        actions = (Second,)
        routes = {"q.first": First, "q.third": Third}

    async with LocalNode() as node:
        await node.start_agent(Chain, "q")
        await node.cast("q", Signal("q.first"))
        await node.cast("q", Signal("q.third"))
        await eventually(lambda: len(log) == 3)
        assert log == ["first", "second:7", "third"]


async def test_emit_to_a_target_and_to_the_bus_carries_causation() -> None:
    received: list[Signal] = []
    published: list[Signal] = []

    class Place(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return "placed", [
                ctx.emit("order.placed", {"id": 1}),
                ctx.emit("audit.record", {"what": "order"}, target="auditor"),
            ]

    class Record(Action):
        class Params(BaseModel):
            what: str

        async def run(self, params: Any, ctx: Any) -> Any:
            received.append(ctx.signal)

    class Shop(Agent):
        routes = {"order.place": Place}

    class Auditor(Agent):
        routes = {"audit.record": Record}

    async with LocalNode() as node:
        node.bus.subscribe("order.*", published.append)
        await node.start_agent(Shop, "shop")
        await node.start_agent(Auditor, "auditor")
        trigger = Signal("order.place")
        assert await node.call("shop", trigger) == "placed"
        await eventually(lambda: received)
    assert [s.type for s in published] == ["order.placed"]
    assert published[0].causationid == trigger.id
    assert published[0].correlationid == trigger.id
    assert published[0].source == "agentcluster/agents/shop"
    assert published[0].data == {"id": 1}
    assert [s.type for s in received] == ["audit.record"]
    assert received[0].causationid == trigger.id
    assert received[0].target == "auditor"


async def test_emit_of_a_prebuilt_signal_is_caused_by_the_current_one() -> None:
    published: list[Signal] = []
    kept = Signal("order.kept", causationid="elsewhere", correlationid="conv")

    class Forward(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return None, [ctx.emit(Signal("order.forwarded", {"n": 1})), ctx.emit(kept)]

    class Shop(Agent):
        routes = {"order.forward": Forward}

    async with LocalNode() as node:
        node.bus.subscribe("order.*", published.append)
        await node.start_agent(Shop, "shop")
        trigger = Signal("order.forward", correlationid="conversation-1")
        await node.call("shop", trigger)
    forwarded, other = published
    assert forwarded.causationid == trigger.id
    assert forwarded.correlationid == "conversation-1"
    assert forwarded.source == "agentcluster/agents/shop"
    assert (other.causationid, other.correlationid) == ("elsewhere", "conv")


async def test_emit_to_a_missing_agent_is_dead_lettered() -> None:
    class Tell(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return "told", ctx.emit("x.y", target="nobody")

    class Teller(Agent):
        routes = {"t.tell": Tell}

    async with LocalNode() as node:
        await node.start_agent(Teller, "t")
        assert await node.call("t", Signal("t.tell")) == "told"
        letters = node.dead_letters.list()
        assert [(d.agent_id, d.signal.type) for d in letters] == [("nobody", "x.y")]


class Scheduler(CounterAgent):
    class State(CounterAgent.State):
        once: int = 0

    class Once(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return None, ctx.set(once=ctx.state.once + 1)

    class Plan(Action):
        class Params(BaseModel):
            after: float = 0.0
            every: float | None = None
            key: str | None = None
            what: str = "tick"
            params: dict[str, Any] | None = None

        async def run(self, params: Any, ctx: Any) -> Any:
            return None, ctx.schedule(
                params.what, params.params, after=params.after, every=params.every, key=params.key
            )

    class Cancel(Action):
        class Params(BaseModel):
            key: str

        async def run(self, params: Any, ctx: Any) -> Any:
            return None, ctx.unschedule(params.key)

    actions = (Once,)
    routes = {**CounterAgent.routes, "s.plan": Plan, "s.cancel": Cancel}


async def test_schedule_once() -> None:
    async with LocalNode() as node:
        await node.start_agent(Scheduler, "s")
        await node.call("s", Signal("s.plan", {"after": 0.02, "what": "once"}))
        assert [e["action"] for e in node.snapshot("s")["schedules"]] == ["once"]
        await eventually(lambda: node.state("s").once == 1)  # type: ignore[attr-defined]
        assert node.snapshot("s")["schedules"] == []


async def test_schedule_periodic_and_unschedule() -> None:
    async with LocalNode() as node:
        await node.start_agent(Scheduler, "s")
        await node.call("s", Signal("s.plan", {"after": 0.0, "every": 0.02, "key": "beat"}))
        await eventually(lambda: node.state("s").ticks >= 3)  # type: ignore[attr-defined]
        [entry] = node.snapshot("s")["schedules"]
        assert (entry["key"], entry["action"], entry["every_ms"]) == ("beat", "tick", 20)
        await node.call("s", Signal("s.cancel", {"key": "beat"}))
        assert node.snapshot("s")["schedules"] == []
        await node.call("s", Signal("c.noop"))  # a fire already queued has run by now
        await stays(lambda: node.state("s").ticks, 0.08)  # type: ignore[attr-defined]


async def test_schedule_with_the_same_key_replaces() -> None:
    async with LocalNode() as node:
        await node.start_agent(Scheduler, "s")
        await node.call("s", Signal("s.plan", {"after": 30, "key": "k", "what": "once"}))
        await node.call("s", Signal("s.plan", {"after": 0.01, "key": "k", "what": "tick"}))
        await eventually(lambda: node.state("s").ticks == 1)  # type: ignore[attr-defined]
        assert node.snapshot("s")["schedules"] == []
        assert node.state("s").once == 0  # type: ignore[attr-defined]


async def test_schedule_of_an_unknown_action_is_refused() -> None:
    async with LocalNode() as node:
        await node.start_agent(Scheduler, "s")
        with pytest.raises(ConfigurationError):
            await node.call("s", Signal("s.plan", {"what": "nothing_here"}))
        assert node.snapshot("s")["schedules"] == []


class Child(Agent):
    routes = {"child.ping": Noop}
    stopped: ClassVar[list[tuple[str, str]]] = []

    def shutdown(self, reason: str) -> None:
        self.stopped.append((self.id, reason))


class Parent(Agent):
    class SpawnChild(Action):
        class Params(BaseModel):
            id: str

        async def run(self, params: Any, ctx: Any) -> Any:
            return "spawned", ctx.spawn(Child, params.id)

    class StopIt(Action):
        class Params(BaseModel):
            id: str

        async def run(self, params: Any, ctx: Any) -> Any:
            return "stopped", ctx.stop_child(params.id)

    routes = {"p.spawn": SpawnChild, "p.stop_child": StopIt}


async def test_spawned_child_runs_and_stops_with_its_parent() -> None:
    Child.stopped.clear()
    async with LocalNode() as node:
        await node.start_agent(Parent, "p")
        await node.call("p", Signal("p.spawn", {"id": "kid"}))
        info = node.lookup("kid")
        assert info is not None
        assert info.parent == "p"
        assert await node.call("kid", Signal("child.ping")) == "ok"
        await node.stop_agent("p")
        assert "kid" not in node.agents()
        assert Child.stopped == [("kid", "shutdown")]
        with pytest.raises(AgentNotFound):
            await node.call("kid", Signal("child.ping"))


async def test_stop_child() -> None:
    Child.stopped.clear()
    async with LocalNode() as node:
        await node.start_agent(Parent, "p")
        await node.call("p", Signal("p.spawn", {"id": "kid"}))
        await node.call("p", Signal("p.stop_child", {"id": "kid"}))
        assert "kid" not in node.agents()
        assert "p" in node.agents()
        assert Child.stopped == [("kid", "shutdown")]
        with pytest.raises(ConfigurationError):
            await node.call("p", Signal("p.stop_child", {"id": "stranger"}))


async def test_a_directive_that_cannot_be_carried_out_applies_nothing() -> None:
    class Confused(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return None, [ctx.set(touched=True), ctx.stop_child("stranger")]

    class Lost(Agent):
        routes = {"l.confused": Confused}

    async with LocalNode() as node:
        await node.start_agent(Lost, "l")
        with pytest.raises(ConfigurationError):
            await node.call("l", Signal("l.confused"))
        assert node.state("l").model_dump() == {}


class Extra(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        return "extra"


class Learner(Agent):
    class Learn(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return "learned", ctx.register_action(Extra, "l.extra")

    class Forget(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return "forgot", ctx.remove_action("extra")

    class Clash(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            class Learn(Action):  # same name as an existing, different action
                pass

            return None, ctx.register_action(Learn, "l.other")

    routes = {"l.learn": Learn, "l.forget": Forget, "l.clash": Clash}


async def test_register_and_remove_action_at_run_time_for_one_agent_only() -> None:
    async with LocalNode() as node:
        await node.start_agent(Learner, "a")
        await node.start_agent(Learner, "b")
        with pytest.raises(NoRoute):
            await node.call("a", Signal("l.extra"))
        await node.call("a", Signal("l.learn"))
        assert await node.call("a", Signal("l.extra")) == "extra"
        assert "extra" in node.server("a").agent.action_names()
        with pytest.raises(NoRoute):
            await node.call("b", Signal("l.extra"))
        assert "extra" not in node.server("b").agent.action_names()
        assert "extra" not in Learner._compiled.actions
        await node.call("a", Signal("l.forget"))
        with pytest.raises(NoRoute):
            await node.call("a", Signal("l.extra"))
        assert "extra" not in node.server("a").agent.action_names()
        with pytest.raises(ConfigurationError):
            await node.call("a", Signal("l.clash"))
        assert node.server("a").agent.route("l.other") == ()


async def test_registering_an_action_twice_routes_it_once() -> None:
    async with LocalNode() as node:
        await node.start_agent(Learner, "a")
        await node.call("a", Signal("l.learn"))
        await node.call("a", Signal("l.learn"))
        assert len(node.server("a").agent.route("l.extra")) == 1


async def test_stop_directive() -> None:
    class Quit(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return "bye", ctx.stop()

    class Quitter(Child):
        routes = {"q.quit": Quit}

    Child.stopped.clear()
    async with LocalNode() as node:
        await node.start_agent(Quitter, "q")
        assert await node.call("q", Signal("q.quit")) == "bye"
        await eventually(lambda: "q" not in node.agents())
        assert Child.stopped == [("q", "normal")]
        with pytest.raises(AgentNotFound):
            await node.call("q", Signal("q.quit"))


async def test_method_and_function_handlers() -> None:
    def double(signal: Signal, ctx: Any) -> Any:
        return signal.data * 2

    class Handy(Agent):
        routes = {"h.method": "handle", "h.function": double}

        async def handle(self, signal: Signal, ctx: Any) -> Any:
            return ("method", signal.data), ctx.set(seen=signal.data)

    async with LocalNode() as node:
        await node.start_agent(Handy, "h")
        assert await node.call("h", Signal("h.method", 3)) == ("method", 3)
        assert node.state("h").model_dump() == {"seen": 3}
        assert await node.call("h", Signal("h.function", 4)) == 8


# --- snapshots ------------------------------------------------------------------------


async def test_snapshot_is_json_and_restores_state_and_schedules() -> None:
    async with LocalNode() as node:
        await node.start_agent(Scheduler, "s")
        await node.call("s", Signal("c.bump", {"by": 5}))
        await node.call("s", Signal("s.plan", {"after": 0.02, "every": 0.02, "key": "beat"}))
        snap = node.snapshot("s")
    text = json.dumps(snap)
    assert snap["schema_version"] == 1
    assert snap["id"] == "s"
    assert snap["state"]["qty"] == 5
    assert snap["skills"] == {}
    [entry] = snap["schedules"]
    assert entry["key"] == "beat"
    assert entry["every_ms"] == 20
    assert 0 <= entry["due_in_ms"] <= 20

    async with LocalNode() as node:
        await node.start_agent(Scheduler, snapshot=json.loads(text))
        assert node.state("s").qty == 5  # type: ignore[attr-defined]
        await eventually(lambda: node.state("s").ticks >= 2)  # type: ignore[attr-defined]
        assert [e["key"] for e in node.snapshot("s")["schedules"]] == ["beat"]


async def test_restore_under_another_id() -> None:
    async with LocalNode() as node:
        await node.start_agent(CounterAgent, "a", state={"qty": 2})
        snap = node.snapshot("a")
        await node.start_agent(CounterAgent, "b", snapshot=snap)
        assert node.state("b").qty == 2  # type: ignore[attr-defined]
        assert node.snapshot("b")["id"] == "b"


class CounterV2(Agent):
    schema_version = 3

    class State(BaseModel):
        quantity: int = 0
        note: str = ""

    routes = {"c.noop": Noop}

    @classmethod
    def migrate(cls, version: int, data: dict[str, Any]) -> dict[str, Any]:
        if version == 1:
            state = data["state"]
            state["quantity"] = state.pop("qty")  # in place, on purpose
            state.pop("label")
            state.pop("ticks")
            version = 2
        if version == 2:
            data["state"]["note"] = "migrated"
            return data
        raise RestoreFailed(f"cannot migrate from {version}")


async def test_migrate_upgrades_an_older_snapshot() -> None:
    async with LocalNode() as node:
        await node.start_agent(CounterAgent, "c", state={"qty": 9})
        snap = node.snapshot("c")
        original = copy.deepcopy(snap)
        await node.start_agent(CounterV2, "c2", snapshot=snap)
        assert node.state("c2").model_dump() == {"quantity": 9, "note": "migrated"}
        assert node.snapshot("c2")["schema_version"] == 3
        assert snap == original, "restore must not change the caller's snapshot"


def _good_snapshot() -> dict[str, Any]:
    return {
        "agent": "x",
        "id": "c",
        "schema_version": 1,
        "state": {"qty": 1, "label": "a", "ticks": 0},
        "schedules": [],
    }


def _with(**changes: Any) -> dict[str, Any]:
    snap = _good_snapshot()
    for key, value in changes.items():
        if value is KeyError:
            del snap[key]
        else:
            snap[key] = value
    return snap


@pytest.mark.parametrize(
    "snap",
    [
        pytest.param(_with(schema_version=2), id="newer-version"),
        pytest.param(_with(schema_version=0), id="no-migration"),
        pytest.param(_with(schema_version="1"), id="version-not-int"),
        pytest.param(_with(schema_version=KeyError), id="no-version"),
        pytest.param(_with(state={"qty": "many"}), id="invalid-state"),
        pytest.param(_with(state=KeyError), id="no-state"),
        pytest.param(_with(state=[1, 2]), id="state-not-object"),
        pytest.param(
            _with(schedules=[{"key": "k", "action": "gone", "due_in_ms": 0, "every_ms": None}]),
            id="unknown-scheduled-action",
        ),
        pytest.param(_with(schedules=[{"action": "tick"}]), id="bad-schedule"),
        pytest.param(_with(schema_version=True), id="version-bool"),
        pytest.param(_with(skills={"ghost": {}}), id="unknown-skill"),
    ],
)
async def test_bad_snapshot_raises_restore_failed(snap: dict[str, Any]) -> None:
    async with LocalNode() as node:
        with pytest.raises(RestoreFailed) as info:
            await node.start_agent(CounterAgent, "c", snapshot=snap)
        assert info.value.node_id == "local"
        assert node.lookup("c") is None
        assert "c" not in node.agents()


@pytest.mark.parametrize("error", [RuntimeError, AttributeError, LookupError])
def test_a_crashing_migration_raises_restore_failed(error: type[Exception]) -> None:
    class Fragile(Agent):
        schema_version = 2

        @classmethod
        def migrate(cls, version: int, data: dict[str, Any]) -> dict[str, Any]:
            raise error("migration bug")

    with pytest.raises(RestoreFailed) as info:
        Fragile.restore({"id": "f", "schema_version": 1, "state": {}})
    assert info.value.agent_id == "f"


def test_a_migration_returning_garbage_raises_restore_failed() -> None:
    class Sloppy(Agent):
        schema_version = 2

        @classmethod
        def migrate(cls, version: int, data: dict[str, Any]) -> dict[str, Any]:
            return None  # type: ignore[return-value]

    with pytest.raises(RestoreFailed):
        Sloppy.restore({"id": "s", "schema_version": 1, "state": {}})


def test_restore_of_a_non_mapping_raises_restore_failed() -> None:
    with pytest.raises(RestoreFailed):
        CounterAgent.restore(["not", "a", "snapshot"])  # type: ignore[arg-type]


# --- declarations and start_agent ---------------------------------------------------------


class NotAnAction:
    pass


@pytest.mark.parametrize(
    "attrs",
    [
        pytest.param({"State": dict}, id="state-not-model"),
        pytest.param({"State": CounterAgent.State()}, id="state-instance"),
        pytest.param({"mailbox_size": 0}, id="mailbox-0"),
        pytest.param({"action_timeout": 0}, id="timeout-0"),
        pytest.param({"schema_version": 0}, id="schema-0"),
        pytest.param({"schema_version": "1"}, id="schema-str"),
        pytest.param({"routes": {"a.b": 42}}, id="route-to-int"),
        pytest.param({"routes": {"a.b": NotAnAction}}, id="route-to-class"),
        pytest.param({"routes": {"a.b": "no_such_method"}}, id="route-to-missing-method"),
        pytest.param({"routes": {"a.b": "mailbox_size"}}, id="route-to-attribute"),
        pytest.param({"routes": {"a.b": (Noop, "high")}}, id="bad-priority"),
        pytest.param({"routes": {"a.b": (Noop, 1, 2)}}, id="bad-tuple"),
        pytest.param({"actions": [int]}, id="action-not-action"),
        pytest.param({"sensors": [object()]}, id="sensor-not-sensor"),
        pytest.param({"actions": Noop}, id="actions-not-sequence"),
        pytest.param({"capabilities": "search"}, id="capabilities-a-string"),
        pytest.param({"capabilities": ["ok", ""]}, id="capability-empty"),
        pytest.param({"routes": [("a.b", Noop)]}, id="routes-not-mapping"),
    ],
)
def test_invalid_declarations_are_refused(attrs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        type("Broken", (Agent,), dict(attrs))


def test_route_priorities_and_lists_are_accepted() -> None:
    class Multi(Agent):
        routes = {"m.*": [(Noop, 1), Bump], "m.tick": Tick}

    assert [e.label for e in Multi._compiled.router.match("m.tick")] == ["noop", "tick", "bump"]


async def test_state_of_another_model_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        CounterAgent("c", Hooked.State())
    async with LocalNode() as node:
        with pytest.raises(ConfigurationError):
            await node.start_agent(CounterAgent, "c", state=Hooked.State())
        assert "c" not in node.agents()


async def test_snapshot_is_a_copy() -> None:
    async with LocalNode() as node:
        await node.start_agent(Scheduler, "s")
        plan = {"after": 30, "key": "later", "what": "bump", "params": {"by": 2}}
        await node.call("s", Signal("s.plan", plan))
        snap = node.snapshot("s")
        snap["state"]["qty"] = 1000
        snap["schedules"][0]["params"]["by"] = 1000
        assert node.state("s").qty == 0  # type: ignore[attr-defined]
        assert node.snapshot("s")["schedules"][0]["params"] == {"by": 2}


async def test_start_agent_twice() -> None:
    async with LocalNode() as node:
        assert await node.start_agent(CounterAgent, "c") == "c"
        await node.call("c", Signal("c.bump"))
        assert await node.start_agent(CounterAgent, "c") == "c"
        assert node.state("c").qty == 1  # type: ignore[attr-defined]
        with pytest.raises(AgentExists):
            await node.start_agent(Hooked, "c")
        with pytest.raises(ConfigurationError):
            await node.start_agent(CounterAgent, "d", state={"qty": 1}, snapshot=node.snapshot("c"))
        assert "d" not in node.agents()


async def test_agents_of_one_class_have_independent_state() -> None:
    async with LocalNode() as node:
        await node.start_agent(CounterAgent, "a")
        await node.start_agent(CounterAgent, "b")
        await asyncio.gather(
            node.call("a", Signal("c.bump", {"by": 2})), node.call("b", Signal("c.bump"))
        )
        assert node.state("a").qty == 2  # type: ignore[attr-defined]
        assert node.state("b").qty == 1  # type: ignore[attr-defined]
