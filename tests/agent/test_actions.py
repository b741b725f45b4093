"""Actions: params and result validation, names, threads, timeouts, retries, compensation."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel, Field

from agentcluster import (
    Action,
    ActionFailed,
    ActionTimeout,
    ActionValidationError,
    Agent,
    LocalNode,
    RetryPolicy,
    Signal,
)
from agentcluster.agent.action import NoParams, split_outcome
from agentcluster.agent.directives import Emit, SetState
from agentcluster.errors import ConfigurationError
from tests.agent.conftest import eventually


class Reserve(Action):
    """Reserve stock for an order.

    The quantity must be positive.
    """

    class Params(BaseModel):
        sku: str = Field(min_length=1)
        qty: int = Field(gt=0)

    class Result(BaseModel):
        left: int

    async def run(self, params: Any, ctx: Any) -> Any:
        left = ctx.state.stock.get(params.sku, 10) - params.qty
        return {"left": left}, ctx.set(stock={**ctx.state.stock, params.sku: left})


class BadResult(Action):
    class Result(BaseModel):
        left: int

    async def run(self, params: Any, ctx: Any) -> Any:
        return {"left": "many"}, ctx.set(stock={"x": 1})


class Inventory(Agent):
    class State(BaseModel):
        stock: dict[str, int] = {}

    routes = {"inventory.reserve": Reserve, "inventory.bad_result": BadResult}


# --- params and results ---------------------------------------------------------------


def test_params_validation_lists_each_field_error() -> None:
    with pytest.raises(ActionValidationError) as info:
        Reserve.validate_params({"sku": "", "qty": 0})
    error = info.value
    assert error.what == "params"
    assert error.action == "reserve"
    assert sorted(e["loc"] for e in error.errors) == [["qty"], ["sku"]]
    assert all(e["msg"] for e in error.errors)
    assert "qty" in str(error)
    assert "sku" in str(error)


@pytest.mark.parametrize(
    ("data", "locs"),
    [
        (None, [["qty"], ["sku"]]),
        ({}, [["qty"], ["sku"]]),
        ({"sku": "a"}, [["qty"]]),
        ({"sku": "a", "qty": "lots"}, [["qty"]]),
        ({"sku": 5, "qty": -1}, [["qty"], ["sku"]]),
        ([1, 2], [[]]),
    ],
)
def test_params_validation_bad_inputs(data: Any, locs: list[list[str]]) -> None:
    with pytest.raises(ActionValidationError) as info:
        Reserve.validate_params(data)
    assert sorted(e["loc"] for e in info.value.errors) == locs


def test_params_accepts_model_and_dict() -> None:
    params = Reserve.Params(sku="a", qty=1)
    assert Reserve.validate_params(params) is params
    assert Reserve.validate_params({"sku": "a", "qty": "2"}).qty == 2  # type: ignore[attr-defined]


def test_no_params_refuses_unknown_fields() -> None:
    class Ping(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return "pong"

    assert Ping.Params is NoParams
    assert isinstance(Ping.validate_params(None), NoParams)
    with pytest.raises(ActionValidationError) as info:
        Ping.validate_params({"surprise": 1})
    assert [e["loc"] for e in info.value.errors] == [["surprise"]]


async def test_invalid_params_reach_the_caller_and_change_nothing() -> None:
    async with LocalNode() as node:
        await node.start_agent(Inventory, "inv")
        with pytest.raises(ActionValidationError) as info:
            await node.call("inv", Signal("inventory.reserve", {"sku": "", "qty": 0}))
        assert len(info.value.errors) == 2
        assert node.state("inv").stock == {}  # type: ignore[attr-defined]
        assert await node.call("inv", Signal("inventory.reserve", {"sku": "a", "qty": 2})) == (
            Reserve.Result(left=8)
        )
        assert node.state("inv").stock == {"a": 8}  # type: ignore[attr-defined]


async def test_invalid_result_fails_the_call_and_changes_nothing() -> None:
    async with LocalNode() as node:
        await node.start_agent(Inventory, "inv")
        with pytest.raises(ActionValidationError) as info:
            await node.call("inv", Signal("inventory.bad_result"))
        assert info.value.what == "result"
        assert [e["loc"] for e in info.value.errors] == [["left"]]
        assert node.state("inv").stock == {}  # type: ignore[attr-defined]


# --- names, descriptions and declarations -----------------------------------------------


def test_name_is_snake_case_of_the_class_name() -> None:
    class ReserveStock(Action):
        pass

    class HTTPFetch(Action):
        pass

    class Named(Action):
        name = "custom-name_1"

    assert ReserveStock.name == "reserve_stock"
    assert HTTPFetch.name == "http_fetch"
    assert Named.name == "custom-name_1"
    assert Reserve.name == "reserve"


def test_name_of_a_subclass_is_its_own() -> None:
    class Base(Action):
        name = "base_thing"

    class Derived(Base):
        pass

    assert Derived.name == "derived"


@pytest.mark.parametrize("bad", ["", "has space", "dotted.name", "x" * 65, "ünïcode"])
def test_invalid_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError):

        class Bad(Action):
            name = bad


def test_description_comes_from_the_docstring() -> None:
    assert Reserve.description == "Reserve stock for an order.\n\nThe quantity must be positive."

    class Undocumented(Action):
        pass

    assert Undocumented.description == ""


@pytest.mark.parametrize(
    "attrs",
    [
        {"Params": dict},
        {"Params": Reserve.Params(sku="a", qty=1)},
        {"Result": int},
        {"timeout": 0},
        {"timeout": -1.0},
        {"retry": 3},
    ],
)
def test_invalid_declarations_are_refused(attrs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        type("Broken", (Action,), dict(attrs))


def test_split_outcome() -> None:
    d = SetState({"a": 1})
    e = Emit(Signal("x.y"))
    assert split_outcome(5) == (5, ())
    assert split_outcome((5, d)) == (5, (d,))
    assert split_outcome((5, [d, e])) == (5, [d, e])
    assert split_outcome(d) == (None, (d,))
    assert split_outcome((1, 2)) == ((1, 2), ())
    assert split_outcome((1, [d, 2])) == ((1, [d, 2]), ())


# --- synchronous actions run in worker threads --------------------------------------------


async def test_sync_action_runs_in_a_worker_thread_without_blocking_the_loop() -> None:
    seen: dict[str, Any] = {}

    class Slow(Action):
        def run(self, params: Any, ctx: Any) -> Any:
            seen["thread"] = threading.current_thread()
            seen["start"] = time.monotonic()
            time.sleep(0.2)
            seen["end"] = time.monotonic()
            return "done"

    class Worker(Agent):
        routes = {"work.slow": Slow}

    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async with LocalNode() as node:
        await node.start_agent(Worker, "w")
        task = asyncio.create_task(ticker())
        try:
            assert await node.call("w", Signal("work.slow")) == "done"
        finally:
            task.cancel()
    assert seen["thread"] is not threading.current_thread()
    assert seen["thread"].name.startswith("agentcluster-local")
    during = [t for t in ticks if seen["start"] < t < seen["end"]]
    assert len(during) >= 3, f"the loop made no progress while the action slept: {during}"


async def test_sync_action_lets_the_loop_answer_it() -> None:
    """The action waits for the loop to do something; a blocked loop would never do it."""
    released = threading.Event()

    class WaitForLoop(Action):
        def run(self, params: Any, ctx: Any) -> Any:
            return released.wait(timeout=2.0)

    class Worker(Agent):
        routes = {"work.wait": WaitForLoop}

    async with LocalNode() as node:
        await node.start_agent(Worker, "w")
        call = asyncio.create_task(node.call("w", Signal("work.wait")))
        await asyncio.sleep(0)
        released.set()
        assert await call is True


# --- timeouts -------------------------------------------------------------------------


async def test_async_action_timeout_reaches_the_caller() -> None:
    class Hang(Action):
        timeout = 0.05

        async def run(self, params: Any, ctx: Any) -> Any:
            await asyncio.sleep(5)
            return "late", ctx.set(done=True)

    class Ping(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return "pong"

    class Worker(Agent):
        routes = {"work.hang": Hang, "work.ping": Ping}

    async with LocalNode() as node:
        await node.start_agent(Worker, "w")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ActionTimeout) as info:
            await node.call("w", Signal("work.hang"), timeout=2.0)
        assert loop.time() - started < 1.0
        assert info.value.agent_id == "w"
        assert info.value.retryable is True
        assert "done" not in node.state("w").model_dump()
        assert await node.call("w", Signal("work.ping")) == "pong"


async def test_agent_action_timeout_is_the_default() -> None:
    class Hang(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            await asyncio.sleep(5)

    class Worker(Agent):
        action_timeout = 0.05
        routes = {"work.hang": Hang}

    async with LocalNode() as node:
        await node.start_agent(Worker, "w")
        with pytest.raises(ActionTimeout):
            await node.call("w", Signal("work.hang"), timeout=2.0)


async def test_sync_action_timeout_cancels_discards_and_never_overlaps() -> None:
    log: list[tuple[str, str]] = []
    observed: dict[str, bool] = {}

    class Crunch(Action):
        timeout = 0.1

        def run(self, params: Any, ctx: Any) -> Any:
            log.append(("crunch", "start"))
            limit = time.monotonic() + 2.0
            while not ctx.cancelled and time.monotonic() < limit:
                time.sleep(0.002)
            observed["cancelled"] = ctx.cancelled
            time.sleep(0.03)  # clean-up after noticing, while the caller already has its error
            log.append(("crunch", "end"))
            return "late", ctx.set(done=True)

    class Mark(Action):
        def run(self, params: Any, ctx: Any) -> Any:
            log.append(("mark", "start"))
            log.append(("mark", "end"))
            return "marked"

    class Worker(Agent):
        class State(BaseModel):
            done: bool = False

        routes = {"work.crunch": Crunch, "work.mark": Mark}

    async with LocalNode() as node:
        await node.start_agent(Worker, "w")
        with pytest.raises(ActionTimeout):
            await node.call("w", Signal("work.crunch"), timeout=2.0)
        # The caller has its error while the thread still runs; the next signal waits.
        assert ("crunch", "end") not in log
        assert await node.call("w", Signal("work.mark")) == "marked"
        assert observed["cancelled"] is True
        assert log == [("crunch", "start"), ("crunch", "end"), ("mark", "start"), ("mark", "end")]
        assert node.state("w").done is False  # type: ignore[attr-defined]


async def test_abandoned_call_cancels_a_sync_action() -> None:
    observed: dict[str, bool] = {}

    class Crunch(Action):
        def run(self, params: Any, ctx: Any) -> Any:
            limit = time.monotonic() + 2.0
            while not ctx.cancelled and time.monotonic() < limit:
                time.sleep(0.002)
            observed["cancelled"] = ctx.cancelled
            return "late", ctx.set(done=True)

    class Worker(Agent):
        class State(BaseModel):
            done: bool = False

        routes = {"work.crunch": Crunch}

    async with LocalNode() as node:
        await node.start_agent(Worker, "w")
        with pytest.raises(TimeoutError):
            await node.call("w", Signal("work.crunch"), timeout=0.05)
        await eventually(lambda: "cancelled" in observed)
        assert observed["cancelled"] is True
        assert node.state("w").done is False  # type: ignore[attr-defined]


@pytest.mark.parametrize("limit", [30.0, None])
async def test_abandoned_call_interrupts_an_async_action(limit: float | None) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    class Wait(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            started.set()
            await release.wait()
            return "late", ctx.set(done=True)

    class Ping(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            return "pong"

    class Worker(Agent):
        class State(BaseModel):
            done: bool = False

        action_timeout = limit
        routes = {"work.wait": Wait, "work.ping": Ping}

    async with LocalNode() as node:
        await node.start_agent(Worker, "w")
        with pytest.raises(TimeoutError):
            await node.call("w", Signal("work.wait"), timeout=0.05)
        assert started.is_set()
        release.set()
        assert await node.call("w", Signal("work.ping")) == "pong"
        assert node.state("w").done is False  # type: ignore[attr-defined]


# --- retries and compensation ---------------------------------------------------------


async def test_retry_policy_retries_a_flaky_action() -> None:
    attempts: list[int] = []

    class Flaky(Action):
        retry = RetryPolicy(max_retries=2, base_delay=0.01)

        async def run(self, params: Any, ctx: Any) -> Any:
            attempts.append(ctx.attempt)
            if ctx.attempt < 3:
                raise ConnectionError("try again")
            return "ok", ctx.set(attempts=ctx.attempt)

    class Worker(Agent):
        routes = {"work.flaky": Flaky}

    async with LocalNode(seed="retry") as node:
        await node.start_agent(Worker, "w")
        assert await node.call("w", Signal("work.flaky")) == "ok"
        assert attempts == [1, 2, 3]
        assert node.state("w").attempts == 3  # type: ignore[attr-defined]


async def test_retries_stop_at_max_retries() -> None:
    attempts: list[int] = []

    class Broken(Action):
        retry = RetryPolicy(max_retries=2, base_delay=0.01)

        def run(self, params: Any, ctx: Any) -> Any:
            attempts.append(ctx.attempt)
            raise ConnectionError("down")

    class Worker(Agent):
        routes = {"work.broken": Broken}

    async with LocalNode(seed="retry") as node:
        await node.start_agent(Worker, "w")
        with pytest.raises(ActionFailed) as info:
            await node.call("w", Signal("work.broken"))
        assert attempts == [1, 2, 3]
        assert info.value.error_type == "ConnectionError"


async def test_invalid_params_are_not_retried() -> None:
    runs: list[int] = []

    class Strict(Action):
        retry = RetryPolicy(max_retries=3, base_delay=0.01)

        class Params(BaseModel):
            n: int

        async def run(self, params: Any, ctx: Any) -> Any:
            runs.append(1)

    class Worker(Agent):
        routes = {"work.strict": Strict}

    async with LocalNode() as node:
        await node.start_agent(Worker, "w")
        with pytest.raises(ActionValidationError):
            await node.call("w", Signal("work.strict", {"n": "x"}))
        assert runs == []


@pytest.mark.parametrize("sync_compensate", [False, True])
async def test_compensate_runs_once_after_the_final_failure(sync_compensate: bool) -> None:
    attempts: list[int] = []
    compensated: list[tuple[Any, str, int, bool]] = []
    loop_thread = threading.current_thread()

    class Charge(Action):
        retry = RetryPolicy(max_retries=2, base_delay=0.01)

        class Params(BaseModel):
            amount: int

        async def run(self, params: Any, ctx: Any) -> Any:
            attempts.append(ctx.attempt)
            raise ValueError("card declined")

    if sync_compensate:

        class Undo(Charge):
            name = "charge"

            def compensate(self, params: Any, ctx: Any, error: BaseException) -> None:
                compensated.append(
                    (
                        params.amount,
                        type(error).__name__,
                        len(attempts),
                        threading.current_thread() is loop_thread,
                    )
                )

    else:

        class Undo(Charge):  # type: ignore[no-redef]
            name = "charge"

            async def compensate(self, params: Any, ctx: Any, error: BaseException) -> None:
                compensated.append(
                    (
                        params.amount,
                        type(error).__name__,
                        len(attempts),
                        threading.current_thread() is loop_thread,
                    )
                )

    class Worker(Agent):
        routes = {"pay.charge": Undo}

    async with LocalNode(seed="comp") as node:
        await node.start_agent(Worker, "w")
        with pytest.raises(ActionFailed) as info:
            await node.call("w", Signal("pay.charge", {"amount": 7}))
    error = info.value
    assert error.error_type == "ValueError"
    assert error.error_message == "card declined"
    assert error.retryable is False
    assert error.action == "charge"
    assert error.agent_id == "w"
    assert attempts == [1, 2, 3]
    assert compensated == [(7, "ValueError", 3, not sync_compensate)]


async def test_compensate_is_not_run_on_success_or_invalid_params() -> None:
    compensated: list[int] = []

    class Step(Action):
        class Params(BaseModel):
            ok: bool

        async def run(self, params: Any, ctx: Any) -> Any:
            return "fine"

        async def compensate(self, params: Any, ctx: Any, error: BaseException) -> None:
            compensated.append(1)

    class Worker(Agent):
        routes = {"work.step": Step}

    async with LocalNode() as node:
        await node.start_agent(Worker, "w")
        assert await node.call("w", Signal("work.step", {"ok": True})) == "fine"
        with pytest.raises(ActionValidationError):
            await node.call("w", Signal("work.step", {"ok": "perhaps"}))
    assert compensated == []


async def test_failing_compensate_does_not_hide_the_original_error() -> None:
    class Step(Action):
        async def run(self, params: Any, ctx: Any) -> Any:
            raise KeyError("original")

        async def compensate(self, params: Any, ctx: Any, error: BaseException) -> None:
            raise RuntimeError("compensation broke")

    class Worker(Agent):
        routes = {"work.step": Step}

    async with LocalNode() as node:
        await node.start_agent(Worker, "w")
        with pytest.raises(ActionFailed) as info:
            await node.call("w", Signal("work.step"))
        assert info.value.error_type == "KeyError"


# --- tools ----------------------------------------------------------------------------


def test_to_tool_openai() -> None:
    tool = Reserve.to_tool("openai")
    assert tool["type"] == "function"
    fn = tool["function"]
    assert fn["name"] == "reserve"
    assert fn["description"].startswith("Reserve stock for an order.")
    params = fn["parameters"]
    assert params["type"] == "object"
    assert "title" not in params
    assert set(params["properties"]) == {"sku", "qty"}
    assert sorted(params["required"]) == ["qty", "sku"]
    assert params["properties"]["qty"]["type"] == "integer"
    assert params["properties"]["qty"]["exclusiveMinimum"] == 0
    assert params["properties"]["sku"]["minLength"] == 1
    assert Reserve.to_tool() == tool


def test_to_tool_anthropic() -> None:
    tool = Reserve.to_tool("anthropic")
    assert set(tool) == {"name", "description", "input_schema"}
    assert tool["name"] == "reserve"
    assert tool["input_schema"] == Reserve.to_tool("openai")["function"]["parameters"]


def test_to_tool_without_params_has_empty_properties() -> None:
    class Ping(Action):
        """Check the agent is alive."""

    schema = Ping.to_tool("anthropic")["input_schema"]
    assert schema["properties"] == {}
    assert schema["type"] == "object"
    assert Ping.to_tool("anthropic")["description"] == "Check the agent is alive."


def test_to_tool_refuses_an_unknown_format() -> None:
    with pytest.raises(ConfigurationError):
        Reserve.to_tool("gemini")  # type: ignore[arg-type]


def test_action_without_run_is_refused_when_run() -> None:
    class Empty(Action):
        pass

    with pytest.raises(ConfigurationError):
        Empty().run(None, None)  # type: ignore[arg-type]
