"""Delivery on one node: cast, send, call, targets, backpressure, expiry and dead letters."""

from __future__ import annotations

import asyncio
from collections import Counter as Tally

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, Capability, LocalNode, Signal
from agentcluster.agent.server import PING
from agentcluster.errors import (
    ActionTimeout,
    ActionValidationError,
    AgentNotFound,
    AgentStopped,
    CallCycle,
    CallTimeout,
    ConfigurationError,
    MailboxFull,
    NoRoute,
    SignalExpired,
)
from tests.agent.conftest import eventually


class Add(Action):
    class Params(BaseModel):
        n: int = 1

    async def run(self, params, ctx):
        total = ctx.state.total + params.n
        return total, ctx.set(total=total)


class Counter(Agent):
    class State(BaseModel):
        total: int = 0

    routes = {"counter.add": Add}


class WhoAmI(Action):
    async def run(self, params, ctx):
        return ctx.agent_id


class Inventory(Agent):
    routes = {"inventory.who": WhoAmI}
    capabilities = ["inventory"]


class Relay(Action):
    """Call the first agent of ``via`` with the rest; the last one answers."""

    class Params(BaseModel):
        via: list[str] = []

    async def run(self, params, ctx):
        if not params.via:
            return f"answered by {ctx.agent_id}"
        return await ctx.call(params.via[0], "relay.hop", {"via": params.via[1:]})


class Relayer(Agent):
    routes = {"relay.hop": Relay}


class ReentrantRelayer(Agent):
    reentrant = True
    routes = {"relay.hop": Relay}


def reasons(node: LocalNode) -> list[str]:
    return [letter.reason for letter in node.dead_letters.list()]


def gated_agent(gate: asyncio.Event, started: list[int], done: list[int], size: int = 1024):
    """An agent whose action records its ``i``, waits for ``gate``, then records it again."""

    class Hold(Action):
        class Params(BaseModel):
            i: int

        async def run(self, params, ctx):
            started.append(params.i)
            await gate.wait()
            done.append(params.i)
            return params.i

    class Held(Agent):
        mailbox_size = size
        routes = {"hold.it": Hold}

    return Held


def hold(i: int) -> Signal:
    return Signal("hold.it", {"i": i})


# --- the runtime's ping ----------------------------------------------------------------


async def test_every_agent_answers_a_ping_from_its_mailbox_without_a_route():
    gate = asyncio.Event()
    started: list[int] = []
    done: list[int] = []
    async with LocalNode() as node:
        await node.start_agent(gated_agent(gate, started, done), "g")
        assert await node.call("g", Signal(PING), timeout=1) == {"agent_id": "g", "mailbox": 0}
        # Behind a hung action the ping waits its turn: a stuck agent does not answer.
        await node.cast("g", hold(1))
        await eventually(lambda: started == [1])
        with pytest.raises(CallTimeout):
            await node.call("g", Signal(PING), timeout=0.2)
        gate.set()
        assert (await node.call("g", Signal(PING), timeout=1))["agent_id"] == "g"
        # A cast ping is no error and no dead letter (the call that gave up is one).
        letters = len(node.dead_letters)
        await node.cast("g", Signal(PING))
        assert await node.call("g", Signal(PING), timeout=1) == {"agent_id": "g", "mailbox": 0}
        assert len(node.dead_letters) == letters


# --- cast, send, call -----------------------------------------------------------------


async def test_cast_runs_the_action_and_changes_state():
    async with LocalNode() as node:
        await node.start_agent(Counter, "c")
        assert await node.cast("c", Signal("counter.add", {"n": 3})) is None
        await eventually(lambda: node.state("c").total == 3)


async def test_send_returns_once_the_signal_is_queued():
    async with LocalNode() as node:
        await node.start_agent(Counter, "c")
        await node.send("c", Signal("counter.add", {"n": 2}))
        # Queued, not yet run: the acknowledgement on one node is the mailbox.
        assert node.server("c").mailbox_depth == 1
        assert node.state("c").total == 0
        await eventually(lambda: node.state("c").total == 2)
        assert node.server("c").mailbox_depth == 0


async def test_call_returns_the_action_result():
    async with LocalNode() as node:
        await node.start_agent(Counter, "c")
        assert await node.call("c", Signal("counter.add", {"n": 4})) == 4
        assert await node.call("c", Signal("counter.add", {"n": 1})) == 5
        assert node.state("c").total == 5


async def test_call_with_invalid_params_fails_and_changes_nothing():
    async with LocalNode() as node:
        await node.start_agent(Counter, "c")
        with pytest.raises(ActionValidationError) as exc:
            await node.call("c", Signal("counter.add", {"n": "many"}))
        assert exc.value.errors[0]["loc"] == ["n"]
        assert node.state("c").total == 0
        assert await node.call("c", Signal("counter.add", {"n": 1})) == 1


async def test_every_matching_route_runs_in_priority_order_and_call_gets_the_first():
    def recorder(label: str) -> type[Action]:
        class Record(Action):
            name = label

            async def run(self, params, ctx):
                return label, ctx.set(ran=[*ctx.state.ran, label])

        return Record

    high, wild, low = recorder("high"), recorder("wild"), recorder("low")

    class Multi(Agent):
        class State(BaseModel):
            ran: list[str] = []

        routes = {"job.run": [(low, 1), (high, 10)], "job.*": (wild, 5)}

    async with LocalNode() as node:
        await node.start_agent(Multi, "m")
        assert await node.call("m", Signal("job.run")) == "high"
        # Each action sees the state the previous one left: they run one after another.
        await eventually(lambda: node.state("m").ran == ["high", "wild", "low"])


# --- what cannot be delivered -----------------------------------------------------------


async def test_unknown_agent_raises_and_is_dead_lettered_as_unknown():
    async with LocalNode() as node:
        for deliver in (node.call, node.cast, node.send):
            signal = Signal("counter.add")
            with pytest.raises(AgentNotFound) as exc:
                await deliver("ghost", signal)
            assert exc.value.agent_id == "ghost"
            assert exc.value.retryable is False
            letter = node.dead_letters.list()[-1]
            assert (letter.reason, letter.agent_id, letter.signal.id) == (
                "unknown",
                "ghost",
                signal.id,
            )
        assert node.dead_letters.by_reason == {"unknown": 3}


async def test_unrouted_type_raises_no_route_on_call_and_dead_letters_a_cast():
    async with LocalNode() as node:
        await node.start_agent(Counter, "c")
        with pytest.raises(NoRoute) as exc:
            await node.call("c", Signal("counter.reset"))
        assert exc.value.agent_id == "c"

        cast = Signal("counter.explode")
        await node.cast("c", cast)
        await eventually(lambda: node.dead_letters.by_reason["no_route"] == 2)
        letter = node.dead_letters.list(reason="no_route")[-1]
        assert (letter.signal.id, letter.agent_id) == (cast.id, "c")
        assert node.state("c").total == 0


async def test_expired_signal_is_not_run_and_is_dead_lettered_as_expired():
    async with LocalNode() as node:
        await node.start_agent(Counter, "c")
        expired = Signal("counter.add", {"n": 100}, deadline=node.clock.monotonic() - 1)
        await node.cast("c", expired)
        await node.cast("c", Signal("counter.add", {"n": 1}))
        await eventually(lambda: node.state("c").total == 1)
        letters = node.dead_letters.list()
        assert [(d.reason, d.signal.id) for d in letters] == [("expired", expired.id)]


async def test_call_with_an_expired_deadline_is_refused():
    async with LocalNode() as node:
        await node.start_agent(Counter, "c")
        expired = Signal("counter.add", {"n": 100}, deadline=node.clock.monotonic() - 1)
        with pytest.raises(SignalExpired):
            await node.call("c", expired)
        assert node.state("c").total == 0
        assert "expired" in reasons(node)


# --- timeouts and cancellation ----------------------------------------------------------


def sleeper_agent(events: list[str], action_timeout: float | None = 30.0) -> type[Agent]:
    class Slow(Action):
        async def run(self, params, ctx):
            events.append("started")
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                events.append("cancelled")
                raise
            finally:
                events.append("finally")
            return "late", ctx.set(done=True)

    class Quick(Action):
        async def run(self, params, ctx):
            return "quick"

    class Sleeper(Agent):
        class State(BaseModel):
            done: bool = False

        routes = {"slow.run": Slow, "slow.quick": Quick}

    Sleeper.action_timeout = action_timeout
    return Sleeper


async def test_call_timeout_cancels_the_running_action():
    events: list[str] = []
    async with LocalNode() as node:
        await node.start_agent(sleeper_agent(events), "s")
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(CallTimeout) as exc:
            await node.call("s", Signal("slow.run"), timeout=0.05)
        assert loop.time() - began < 1.0
        assert exc.value.agent_id == "s"
        await eventually(lambda: "finally" in events)
        assert events == ["started", "cancelled", "finally"]
        assert node.state("s").done is False
        assert "timeout" in reasons(node)
        # The agent is not stuck: it answers the next call.
        assert await node.call("s", Signal("slow.quick"), timeout=1) == "quick"


async def test_call_timeout_cancels_the_action_when_the_agent_has_no_action_timeout():
    events: list[str] = []
    async with LocalNode() as node:
        try:
            await node.start_agent(sleeper_agent(events, action_timeout=None), "s")
            with pytest.raises(CallTimeout):
                await node.call("s", Signal("slow.run"), timeout=0.05)
            await eventually(lambda: "finally" in events, timeout=0.5)
            assert events == ["started", "cancelled", "finally"]
            assert node.state("s").done is False
            assert await node.call("s", Signal("slow.quick"), timeout=1) == "quick"
        finally:
            await node.stop(timeout=0.1)  # do not wait out a stuck action on failure


async def test_cancelling_the_caller_cancels_the_running_action():
    events: list[str] = []
    async with LocalNode() as node:
        await node.start_agent(sleeper_agent(events), "s")
        caller = asyncio.create_task(node.call("s", Signal("slow.run")))
        await eventually(lambda: events == ["started"])
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await eventually(lambda: "finally" in events)
        assert events == ["started", "cancelled", "finally"]
        assert node.state("s").done is False


async def test_a_short_action_timeout_after_a_long_one_still_interrupts_in_time():
    class Fast(Action):
        async def run(self, params, ctx):
            return "fast"

    class Stuck(Action):
        timeout = 0.05

        async def run(self, params, ctx):
            await asyncio.sleep(10)

    class Mixed(Agent):
        routes = {"mixed.fast": Fast, "mixed.stuck": Stuck}

    async with LocalNode() as node:
        await node.start_agent(Mixed, "m")
        # The first action arms the watchdog for its own (30 s) deadline.
        assert await node.call("m", Signal("mixed.fast")) == "fast"
        loop = asyncio.get_running_loop()
        began = loop.time()
        # The stuck action's 50 ms timeout must fire, not the call's 0.5 s deadline.
        with pytest.raises(TimeoutError) as exc:
            await node.call("m", Signal("mixed.stuck"), timeout=0.5)
        assert not isinstance(exc.value, CallTimeout), "the action timeout never fired"
        assert isinstance(exc.value, ActionTimeout)
        assert loop.time() - began < 0.3


async def test_queued_call_whose_caller_gave_up_is_skipped():
    gate = asyncio.Event()
    ran: list[str] = []

    class Block(Action):
        async def run(self, params, ctx):
            ran.append("block")
            await gate.wait()

    class Mark(Action):
        class Params(BaseModel):
            tag: str

        async def run(self, params, ctx):
            ran.append(params.tag)
            return params.tag

    class Queue(Agent):
        routes = {"q.block": Block, "q.mark": Mark}

    async with LocalNode() as node:
        await node.start_agent(Queue, "q")
        await node.cast("q", Signal("q.block"))
        await eventually(lambda: ran == ["block"])
        with pytest.raises(CallTimeout):
            await node.call("q", Signal("q.mark", {"tag": "abandoned"}), timeout=0.05)
        gate.set()
        assert await node.call("q", Signal("q.mark", {"tag": "after"}), timeout=1) == "after"
        assert ran == ["block", "after"]


# --- call cycles ------------------------------------------------------------------------


async def test_call_cycle_between_two_agents_fails_at_once():
    async with LocalNode() as node:
        await node.start_agent(Relayer, "A")
        await node.start_agent(Relayer, "B")
        with pytest.raises(CallCycle) as exc:
            await node.call("A", Signal("relay.hop", {"via": ["B", "A"]}), timeout=1.0)
        assert exc.value.chain == ("A", "B")
        assert exc.value.agent_id == "A"
        assert "call_cycle" in reasons(node)
        # Both agents are free again afterwards.
        assert await node.call("A", Signal("relay.hop", {"via": ["B"]}), timeout=1) == (
            "answered by B"
        )


async def test_an_agent_calling_itself_fails_at_once():
    async with LocalNode() as node:
        await node.start_agent(Relayer, "A")
        with pytest.raises(CallCycle) as exc:
            await node.call("A", Signal("relay.hop", {"via": ["A"]}), timeout=1.0)
        assert exc.value.chain == ("A",)


async def test_reentrant_agent_answers_the_nested_call():
    async with LocalNode() as node:
        await node.start_agent(ReentrantRelayer, "A")
        await node.start_agent(Relayer, "B")
        result = await node.call("A", Signal("relay.hop", {"via": ["B", "A"]}), timeout=1.0)
        assert result == "answered by A"
        assert await node.call("A", Signal("relay.hop", {"via": ["A"]}), timeout=1.0) == (
            "answered by A"
        )
        assert node.dead_letters.total == 0


# --- backpressure -----------------------------------------------------------------------


async def test_full_mailbox_makes_casts_wait_until_there_is_room():
    gate = asyncio.Event()
    started: list[int] = []
    done: list[int] = []
    async with LocalNode() as node:
        await node.start_agent(gated_agent(gate, started, done, size=2), "s")
        await node.cast("s", hold(0))
        await eventually(lambda: started == [0])
        await node.cast("s", hold(1))
        await node.cast("s", hold(2))
        assert node.server("s").mailbox_depth == 2
        blocked = asyncio.create_task(node.cast("s", hold(3)))
        finished, _ = await asyncio.wait({blocked}, timeout=0.05)
        assert not finished, "a cast into a full mailbox must wait for room"
        gate.set()
        await asyncio.wait_for(blocked, 1.0)
        await eventually(lambda: done == [0, 1, 2, 3])
        assert node.dead_letters.total == 0


async def test_full_mailbox_raises_mailbox_full_after_push_timeout():
    gate = asyncio.Event()
    started: list[int] = []
    done: list[int] = []
    async with LocalNode(push_timeout=0.05) as node:
        await node.start_agent(gated_agent(gate, started, done, size=2), "s")
        await node.cast("s", hold(0))
        await eventually(lambda: started == [0])
        await node.cast("s", hold(1))
        await node.send("s", hold(2))
        refused = hold(3)
        with pytest.raises(MailboxFull) as exc:
            await node.cast("s", refused)
        assert exc.value.agent_id == "s"
        assert exc.value.retryable is True
        with pytest.raises(MailboxFull):
            await node.send("s", hold(4))
        letters = node.dead_letters.list(reason="mailbox_full")
        assert [d.signal.data["i"] for d in letters] == [3, 4]
        assert letters[0].signal.id == refused.id
        gate.set()
        await eventually(lambda: done == [0, 1, 2])


async def test_push_timeout_must_be_positive():
    with pytest.raises(ConfigurationError):
        LocalNode(push_timeout=0)


# --- ordering ---------------------------------------------------------------------------


@pytest.mark.parametrize("mailbox_size", [1024, 8])
async def test_casts_from_one_sender_run_in_send_order(mailbox_size):
    seen: list[int] = []

    class Note(Action):
        class Params(BaseModel):
            i: int

        async def run(self, params, ctx):
            seen.append(params.i)

    class Notes(Agent):
        routes = {"note.it": Note}

    Notes.mailbox_size = mailbox_size
    async with LocalNode() as node:
        await node.start_agent(Notes, "n")
        for i in range(1000):
            await node.cast("n", Signal("note.it", {"i": i}))
        await eventually(lambda: len(seen) == 1000)
        assert seen == list(range(1000))


# --- targets ----------------------------------------------------------------------------


async def test_capability_one_round_robins_across_holders():
    async with LocalNode() as node:
        for aid in ("inv-1", "inv-2", "inv-3"):
            await node.start_agent(Inventory, aid)
        await node.start_agent(Counter, "not-inventory")
        answers = [
            await node.call(Capability("inventory"), Signal("inventory.who")) for _ in range(6)
        ]
        assert Tally(answers) == {"inv-1": 2, "inv-2": 2, "inv-3": 2}
        assert answers[:3] == answers[3:]

        await node.stop_agent("inv-2")
        answers = [
            await node.call(Capability("inventory"), Signal("inventory.who")) for _ in range(4)
        ]
        assert Tally(answers) == {"inv-1": 2, "inv-3": 2}


async def test_capability_all_reaches_every_holder():
    seen: list[str] = []

    class Record(Action):
        async def run(self, params, ctx):
            seen.append(ctx.agent_id)

    class Holder(Agent):
        routes = {"inventory.count": Record}
        capabilities = ["inventory"]

    async with LocalNode() as node:
        for aid in ("inv-1", "inv-2", "inv-3"):
            await node.start_agent(Holder, aid)
        await node.start_agent(Holder, "elsewhere", capabilities=["shipping"])
        await node.cast(Capability("inventory", "all"), Signal("inventory.count"))
        await eventually(lambda: len(seen) == 3)
        assert sorted(seen) == ["inv-1", "inv-2", "inv-3"]
        assert node.find_by_capability("shipping") == ["elsewhere"]


async def test_capability_bad_input():
    async with LocalNode() as node:
        await node.start_agent(Inventory, "inv-1")
        with pytest.raises(AgentNotFound):
            await node.call(Capability("teleport"), Signal("inventory.who"))
        with pytest.raises(AgentNotFound):
            await node.cast(Capability("teleport", "all"), Signal("inventory.who"))
        assert reasons(node) == ["unknown", "unknown"]
        with pytest.raises(ConfigurationError):
            Capability("inventory", "some")
        with pytest.raises(ConfigurationError):
            await node.call(Capability("inventory", "all"), Signal("inventory.who"))
        with pytest.raises(ConfigurationError):
            await node.cast(42, Signal("inventory.who"))  # type: ignore[arg-type]


async def test_broadcast_counts_the_agents_that_route_the_type():
    async with LocalNode() as node:
        await node.start_agent(Counter, "c1")
        await node.start_agent(Counter, "c2")
        await node.start_agent(Inventory, "inv-1")
        assert await node.broadcast(Signal("counter.add", {"n": 5})) == 2
        await eventually(lambda: node.state("c1").total == 5 and node.state("c2").total == 5)
        assert await node.broadcast(Signal("nobody.listens")) == 0
        assert await node.broadcast(Signal("inventory.who")) == 1


# --- stopping and idling ----------------------------------------------------------------


async def test_stop_agent_dead_letters_the_queue_and_fails_pending_calls():
    gate = asyncio.Event()
    started: list[int] = []
    done: list[int] = []
    async with LocalNode() as node:
        await node.start_agent(gated_agent(gate, started, done), "h")
        await node.cast("h", hold(0))
        await eventually(lambda: started == [0])
        await node.cast("h", hold(1))
        await node.cast("h", hold(2))
        pending = asyncio.create_task(node.call("h", hold(3)))
        await eventually(lambda: node.server("h").mailbox_depth == 3)

        stopper = asyncio.create_task(node.stop_agent("h"))
        await eventually(lambda: node.server("h")._stop_reason == "shutdown")
        gate.set()
        await asyncio.wait_for(stopper, 1.0)

        with pytest.raises(AgentStopped):
            await asyncio.wait_for(pending, 1.0)
        assert done == [0], "the running action finishes; nothing queued runs"
        stopped = node.dead_letters.list(reason="stopped")
        assert sorted(d.signal.data["i"] for d in stopped) == [1, 2]
        assert {d.agent_id for d in stopped} == {"h"}
        assert node.lookup("h") is None
        with pytest.raises(AgentNotFound):
            await node.cast("h", hold(9))
        with pytest.raises(AgentNotFound):
            await node.stop_agent("h")


async def test_idle_agent_has_no_task_until_a_signal_arrives():
    async with LocalNode() as node:
        await node.start_agent(Counter, "c")
        server = node.server("c")
        assert server._task is None
        assert node.lookup("c").status == "idle"
        await node.cast("c", Signal("counter.add"))
        assert server._task is not None
        await eventually(lambda: node.state("c").total == 1)


# --- the dead-letter store --------------------------------------------------------------


async def test_dead_letter_store_is_bounded_and_counts_what_it_evicts():
    async with LocalNode(dead_letter_limit=3) as node:
        await node.start_agent(Counter, "c")
        sent = []
        for i in range(3):
            signal = Signal("counter.add", {"n": i})
            sent.append(signal)
            with pytest.raises(AgentNotFound):
                await node.cast(f"ghost-{i}", signal)
        for i in range(2):
            signal = Signal(f"counter.unknown{i}")
            sent.append(signal)
            with pytest.raises(NoRoute):
                await node.call("c", signal)
        store = node.dead_letters
        assert (len(store), store.evicted, store.total) == (3, 2, 5)
        assert store.by_reason == {"unknown": 3, "no_route": 2}
        assert [d.signal.id for d in store.list()] == [s.id for s in sent[2:]]
        assert [d.agent_id for d in store.list(reason="unknown")] == ["ghost-2"]
        assert [d.signal.id for d in store.list(limit=2)] == [s.id for s in sent[3:]]
        assert store.list(limit=0) == []
        assert len(store.list(limit=10)) == 3
        assert store.list(reason="stopped") == []
        letter = store.list()[-1]
        assert letter.node_id == "local"
        assert letter.error["type"] == "NoRoute"
        with pytest.raises(ConfigurationError):
            store.list(limit=-1)


def test_dead_letter_limit_must_be_positive():
    with pytest.raises(ConfigurationError):
        LocalNode(dead_letter_limit=0)
