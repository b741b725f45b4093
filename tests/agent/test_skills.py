"""Skills: namespaced state, routes and sensors; clashes refused when the agent is defined."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from agentcluster import (
    Action,
    ActionValidationError,
    Agent,
    IntervalSensor,
    LocalNode,
    RestoreFailed,
    Signal,
    Skill,
)
from agentcluster.errors import ConfigurationError, SkillMountError
from tests.agent.conftest import eventually


class Incr(Action):
    class Params(BaseModel):
        by: int = 1

    async def run(self, params: Any, ctx: Any) -> Any:
        count = ctx.state.count + params.by
        return count, ctx.set(count=count)


class Poke(Action):
    """Tries to change a field of the agent's own state from inside a skill."""

    async def run(self, params: Any, ctx: Any) -> Any:
        return None, ctx.set(owner_only=1)


class Peek(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        return ctx.state.model_dump()


class SensorTick(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        return None, ctx.set(ticks=ctx.state.ticks + 1)


class CounterSkill(Skill):
    name = "counter"

    class State(BaseModel):
        count: int = 0
        ticks: int = 0

    actions = (Peek,)
    routes = {"counter.incr": Incr, "counter.poke": Poke, "counter.tick": SensorTick}
    sensors = (IntervalSensor(0.02, "counter.tick"),)


class Other(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        return ctx.state.count + 10, ctx.set(count=ctx.state.count + 10)


class OtherSkill(Skill):
    name = "other"

    class State(BaseModel):
        count: int = 0

    routes = {"other.bump": Other}


class Own(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        return ctx.state.count, ctx.set(count=ctx.state.count - 1)


class Host(Agent):
    class State(BaseModel):
        count: int = 100
        owner_only: int = 0

    routes = {"host.own": Own}
    skills = (CounterSkill, OtherSkill)


async def test_skill_actions_read_and_write_only_their_namespace() -> None:
    async with LocalNode() as node:
        await node.start_agent(Host, "h")
        assert await node.call("h", Signal("counter.incr", {"by": 2})) == 2
        assert await node.call("h", Signal("counter.incr")) == 3
        assert await node.call("h", Signal("other.bump")) == 10
        assert await node.call("h", Signal("host.own")) == 100
        assert node.skill_state("h", "counter").count == 3  # type: ignore[attr-defined]
        assert node.skill_state("h", "other").count == 10  # type: ignore[attr-defined]
        assert node.state("h").count == 99  # type: ignore[attr-defined]


async def test_skill_action_cannot_change_the_agents_fields() -> None:
    async with LocalNode() as node:
        await node.start_agent(Host, "h")
        with pytest.raises(ActionValidationError) as info:
            await node.call("h", Signal("counter.poke"))
        assert info.value.what == "state change"
        assert node.state("h").owner_only == 0  # type: ignore[attr-defined]


async def test_unrouted_skill_action_runs_in_its_namespace() -> None:
    class Ask(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return None, ctx.enqueue("peek")

    seen: list[Any] = []

    class Watching(Host):
        routes = {**Host.routes, "host.ask": Ask}

        def on_after_run(self, action: Any, result: Any, ctx: Any) -> None:
            if action is Peek:
                seen.append(result)

    async with LocalNode() as node:
        await node.start_agent(Watching, "w")
        await node.call("w", Signal("host.ask"))
        await eventually(lambda: seen)
        assert set(seen[0]) == {"count", "ticks"}
        assert seen[0]["count"] == 0


async def test_skill_sensors_start_with_the_agent() -> None:
    async with LocalNode() as node:
        await node.start_agent(Host, "h")
        await eventually(lambda: node.skill_state("h", "counter").ticks >= 2)  # type: ignore[attr-defined]
        assert node.state("h").count == 100  # type: ignore[attr-defined]


async def test_skill_state_is_in_the_snapshot_and_restored() -> None:
    async with LocalNode() as node:
        await node.start_agent(Host, "h")
        await node.call("h", Signal("counter.incr", {"by": 5}))
        snap = json.loads(json.dumps(node.snapshot("h")))
    assert snap["skills"]["counter"]["count"] == 5
    assert snap["skills"]["other"] == {"count": 0}
    async with LocalNode() as node:
        await node.start_agent(Host, snapshot=snap)
        assert node.skill_state("h", "counter").count == 5  # type: ignore[attr-defined]
        bad = {**snap, "skills": {"counter": {"count": "five"}}}
        with pytest.raises(RestoreFailed):
            await node.start_agent(Host, "h2", snapshot=bad)


def test_skills_of_one_agent_get_separate_state_instances() -> None:
    a, b = Host("a"), Host("b")
    assert a.skill_states["counter"] is not b.skill_states["counter"]
    assert set(a.skill_states) == {"counter", "other"}


# --- clashes and bad declarations -------------------------------------------------------


def _skill(name: str, **attrs: Any) -> type[Skill]:
    return type(f"Skill_{name}", (Skill,), {"name": name, **attrs})


def test_two_skills_with_the_same_name_clash() -> None:
    first = _skill("dup", routes={"a.x": Incr})
    second = _skill("dup", routes={"b.x": Other})
    with pytest.raises(SkillMountError, match="dup"):

        class Twice(Agent):
            skills = (first, second)


def test_the_same_skill_twice_clashes() -> None:
    with pytest.raises(SkillMountError):

        class Twice(Agent):
            skills = (CounterSkill, CounterSkill)


def test_action_name_clash_between_agent_and_skill() -> None:
    class Incr2(Action):
        name = "incr"

        async def run(self, params: Any, ctx: Any) -> Any:
            return None

    with pytest.raises(SkillMountError, match="incr"):

        class Clash(Agent):
            actions = (Incr2,)
            skills = (CounterSkill,)


def test_action_name_clash_between_two_skills() -> None:
    class Incr2(Action):
        name = "incr"

    other = _skill("other_counter", routes={"oc.incr": Incr2})
    with pytest.raises(SkillMountError):

        class Clash(Agent):
            skills = (CounterSkill, other)


def test_same_route_pattern_in_agent_and_skill_clashes() -> None:
    with pytest.raises(SkillMountError, match=r"counter\.incr"):

        class Clash(Agent):
            routes = {"counter.incr": Own}
            skills = (CounterSkill,)


def test_skill_name_equal_to_a_state_field_clashes() -> None:
    with pytest.raises(SkillMountError, match="counter"):

        class Clash(Agent):
            class State(BaseModel):
                counter: int = 0

            skills = (CounterSkill,)


def test_a_non_skill_is_refused() -> None:
    with pytest.raises(ConfigurationError):

        class Clash(Agent):
            skills = (Incr,)  # type: ignore[assignment]


@pytest.mark.parametrize("bad", ["", "Counter", "1st", "has-dash", "has space", "_private"])
def test_a_skill_needs_a_valid_name(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        _skill(bad)


def test_a_skill_without_a_name_is_refused() -> None:
    with pytest.raises(ConfigurationError):

        class Nameless(Skill):
            pass


def test_a_skill_state_must_be_a_model() -> None:
    with pytest.raises(ConfigurationError):
        _skill("stateful", State=dict)


@pytest.mark.parametrize(
    "attrs",
    [{"actions": Incr}, {"sensors": IntervalSensor(1.0)}, {"routes": [("a.b", Incr)]}],
)
def test_a_skill_declaration_must_be_well_formed(attrs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        _skill("malformed", **attrs)


async def test_a_removed_skill_action_registered_again_keeps_its_namespace() -> None:
    class Forget(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return None, ctx.remove_action(Incr)

    class Relearn(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return None, ctx.register_action(Incr, "counter.incr")

    class Learning(Host):
        routes = {**Host.routes, "host.forget": Forget, "host.relearn": Relearn}

    async with LocalNode() as node:
        await node.start_agent(Learning, "l")
        await node.call("l", Signal("host.forget"))
        assert node.server("l").agent.route("counter.incr") == ()
        await node.call("l", Signal("host.relearn"))
        assert await node.call("l", Signal("counter.incr")) == 1
        assert node.skill_state("l", "counter").count == 1  # type: ignore[attr-defined]
        assert node.state("l").count == 100  # type: ignore[attr-defined]


def test_skills_are_not_instantiated() -> None:
    with pytest.raises(TypeError):
        CounterSkill()
