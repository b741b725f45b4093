"""Signal routing between nodes: cast, send and call over the memory transport, with
batching, acknowledgements, retries, moves, deadlines, dead letters and ordering.

Every test runs on the virtual-time loop (``conftest.py``): seconds of ack timeouts and
deadlines pass in no real time, and ``eventually`` polls instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, Signal
from agentcluster.cluster import wire
from agentcluster.cluster.batcher import Batcher
from agentcluster.cluster.routing import (
    AgentUnavailable,
    Placement,
    RouterConfig,
    error_from_dict,
    node_inbox,
)
from agentcluster.core import codec
from agentcluster.errors import (
    ActionFailed,
    AgentCrashed,
    AgentNotFound,
    CallCycle,
    CallTimeout,
    ConfigurationError,
    MailboxFull,
    Overloaded,
    SignalDecodeError,
    SignalExpired,
    SignalTooLarge,
)
from agentcluster.testing.waiting import eventually
from agentcluster.transport.interface import Message
from agentcluster.transport.memory import MemoryTransport
from tests.cluster.conftest import World

pytestmark = pytest.mark.sim

RECEIVED: dict[str, list[tuple[int, float]]] = {}
"""What each agent ran: (n, loop time) per ``test.rec`` signal, in order."""
EVENTS: list[tuple[str, str]] = []


@pytest.fixture(autouse=True)
def _reset_and_fast() -> Iterator[None]:
    RECEIVED.clear()
    EVENTS.clear()
    began = time.perf_counter()
    yield
    assert time.perf_counter() - began < 5.0, "routing tests must stay fast"


def got(agent_id: str) -> list[int]:
    return [n for n, _ in RECEIVED.get(agent_id, [])]


class Record(Action):
    class Params(BaseModel):
        n: int = 0
        pad: str = ""

    async def run(self, params: Any, ctx: Any) -> Any:
        RECEIVED.setdefault(ctx.agent_id, []).append((params.n, asyncio.get_running_loop().time()))
        return params.n


class Echo(Action):
    class Params(BaseModel):
        value: Any = None

    async def run(self, params: Any, ctx: Any) -> Any:
        return {"echo": params.value, "by": ctx.agent_id}


class Fail(Action):
    async def run(self, params: Any, ctx: Any) -> Any:
        raise ValueError("boom")


class Slow(Action):
    class Params(BaseModel):
        seconds: float = 20.0

    async def run(self, params: Any, ctx: Any) -> Any:
        EVENTS.append(("started", ctx.agent_id))
        try:
            await asyncio.sleep(params.seconds)
        except asyncio.CancelledError:
            EVENTS.append(("cancelled", ctx.agent_id))
            raise
        EVENTS.append(("finished", ctx.agent_id))
        return "done"


class Sink(Agent):
    routes = {"test.rec": Record, "test.echo": Echo, "test.fail": Fail, "test.slow": Slow}


def rec(n: int = 0, **attrs: Any) -> Signal:
    return Signal("test.rec", {"n": n}, **attrs)


def now() -> float:
    return asyncio.get_running_loop().time()


def reasons(peer: Any) -> list[str]:
    return [letter.reason for letter in peer.node.dead_letters.list()]


async def spy(hub: MemoryTransport, subject: str) -> list[int]:
    """Envelope counts of every message published on ``subject``, one entry per message."""
    seen: list[int] = []
    conn = await hub.connect("spy")

    async def count(msg: Message) -> None:
        seen.append(len(orjson.loads(msg.data)))

    await conn.subscribe(subject, count)
    return seen


# --- the three deliveries -------------------------------------------------------------


async def test_cast_send_and_call_across_two_nodes(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")

    await a.router.cast("s1", rec(1))
    await a.router.send("s1", rec(2))
    reply = await a.router.call("s1", Signal("test.echo", {"value": [1, 2]}))

    assert reply == {"echo": [1, 2], "by": "s1"}
    await eventually(lambda: got("s1") == [1, 2])
    assert a.router.stats.local == 0
    assert b.router.stats.accepted == 3
    assert a.router.in_flight == 0
    assert reasons(a) == reasons(b) == []


async def test_burst_of_casts_goes_out_in_few_messages(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1", mailbox_size=2000)
    seen = await spy(world.hub, b.router.inbox)

    for i in range(1000):
        await a.router.cast("s1", rec(i))

    await eventually(lambda: len(got("s1")) == 1000)
    assert got("s1") == list(range(1000))
    assert sum(seen) == 1000
    assert len(seen) <= 1000 // a.router.config.max_batch + 1  # two messages, not 1000
    assert a.router.stats.batches_sent == len(seen)


async def test_a_lone_signal_is_not_held_back(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    t0 = now()

    await a.router.cast("s1", rec(7))
    await eventually(lambda: got("s1"))
    assert RECEIVED["s1"][0][1] == t0  # ran without virtual time moving: no timer

    t1 = now()
    await a.router.send("s1", rec(8))
    assert now() == t1  # acknowledged within the same instant


async def test_batches_are_cut_by_bytes() -> None:
    hub = MemoryTransport(seed="bytes", max_payload=16 * 1024)
    world = World(hub)
    try:
        a, b = await world.add("a"), await world.add("b")
        await world.place(b, Sink, "s1")
        seen: list[int] = []
        sizes: list[int] = []
        conn = await hub.connect("spy")

        async def count(msg: Message) -> None:
            seen.append(len(orjson.loads(msg.data)))
            sizes.append(len(msg.data))

        await conn.subscribe(b.router.inbox, count)
        for i in range(60):
            await a.router.cast("s1", Signal("test.rec", {"n": i, "pad": "x" * 1000}))
        await eventually(lambda: len(got("s1")) == 60)
        assert got("s1") == list(range(60))
        assert len(seen) >= 4
        assert max(sizes) <= 16 * 1024
        with pytest.raises(SignalTooLarge):
            await a.router.cast("s1", Signal("test.rec", {"n": 0, "pad": "x" * 20_000}))
    finally:
        await world.close()


# --- send: acknowledgement and retries --------------------------------------------------


async def test_send_is_retried_through_dropped_messages(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    world.hub.faults.drop(1.0)
    sending = asyncio.create_task(a.router.send("s1", rec(1), timeout=20.0))

    await eventually(lambda: world.hub.faults.dropped >= 2, timeout=5.0)
    world.hub.faults.clear_message_faults()
    await sending

    assert got("s1") == [1]
    assert a.router.stats.retries >= 1
    assert a.router.in_flight == 0


async def test_lost_ack_makes_a_duplicate_that_the_receiver_drops(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    world.hub.faults.drop(1.0, subject=a.router.inbox)  # only acks to the sender are lost
    sending = asyncio.create_task(a.router.send("s1", rec(1), timeout=20.0))

    await eventually(lambda: b.router.stats.duplicates >= 1, timeout=5.0)
    world.hub.faults.clear_message_faults()
    await sending

    assert got("s1") == [1]  # delivered exactly once
    assert b.router.stats.accepted == 1


async def test_send_to_a_moved_agent_retries_at_the_new_node_at_once(world: World) -> None:
    a, b, c = await world.add("a"), await world.add("b"), await world.add("c")
    await world.place(c, Sink, "m1")
    world.views["a"] = {"m1": Placement("b", 1)}  # a's cache is stale
    t0 = now()

    await a.router.send("m1", rec(5))

    assert got("m1") == [5]
    assert now() == t0  # no back-off, no timeout: followed the move at once
    assert b.router.stats.refused["moved"] == 1
    assert a.router.stats.moves_followed == 1
    assert reasons(a) == reasons(b) == []


async def test_send_past_its_deadline_fails_and_the_sender_dead_letters(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    world.hub.faults.drop(1.0, subject=b.router.inbox)
    t0 = now()

    with pytest.raises(SignalExpired) as caught:
        await a.router.send("s1", rec(1), timeout=2.0)

    assert now() - t0 == pytest.approx(2.0)
    assert caught.value.agent_id == "s1"
    assert reasons(a) == ["expired"]
    assert reasons(b) == []
    assert a.router.in_flight == 0


async def test_send_to_a_starting_agent_is_retried_until_it_runs(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    world.placements["late"] = Placement("b", 1, "starting")
    sending = asyncio.create_task(a.router.send("late", rec(3), timeout=10.0))

    await eventually(lambda: b.router.stats.refused["starting"] >= 2)
    await world.place(b, Sink, "late")
    await sending

    assert got("late") == [3]
    assert reasons(a) == []


async def test_send_to_an_unknown_agent_fails_at_once(world: World) -> None:
    a, _ = await world.add("a"), await world.add("b")
    with pytest.raises(AgentNotFound):
        await a.router.send("nobody", rec())
    world.views["a"] = {"ghost": Placement("b", 1)}  # a thinks b has it; b knows better
    t0 = now()
    with pytest.raises(AgentNotFound) as caught:
        await a.router.send("ghost", rec())
    assert now() == t0  # not retryable
    assert caught.value.reason == "unknown"
    assert reasons(a) == ["unknown", "unknown"]


async def test_unavailable_agent_is_refused_without_retries(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    world.placements["gone"] = Placement("b", 1, "unavailable")
    with pytest.raises(AgentUnavailable):
        await a.router.send("gone", rec())
    world.views["a"] = {"gone": Placement("b", 1)}
    with pytest.raises(AgentNotFound) as caught:  # AgentUnavailable is an AgentNotFound
        await a.router.send("gone", rec())
    assert caught.value.reason == "unavailable"
    assert b.router.stats.refused["unavailable"] == 1


async def test_full_dedup_memory_refuses_retryably_until_ids_expire(world: World) -> None:
    a = await world.add("a")
    b = await world.add("b", config=RouterConfig(dedup_capacity=1))
    await world.place(b, Sink, "s1")
    await a.router.send("s1", rec(1), timeout=1.0)  # remembered for 1 s
    t0 = now()

    await a.router.send("s1", rec(2), timeout=5.0)

    assert got("s1") == [1, 2]
    assert b.router.stats.refused["overloaded"] >= 1
    assert 1.0 - t0 <= now() - t0 < 2.5  # accepted once the first id could be forgotten


async def test_full_mailbox_is_retried_and_reported_at_the_deadline(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "busy", mailbox_size=1)
    await a.router.send("busy", Signal("test.slow", {"seconds": 10.0}))  # runs
    await eventually(lambda: ("started", "busy") in EVENTS)
    await a.router.send("busy", rec(1))  # waits in the mailbox

    with pytest.raises(MailboxFull):
        await a.router.send("busy", rec(2), timeout=1.0)
    assert b.router.stats.refused["mailbox_full"] >= 2
    assert reasons(a) == ["mailbox_full"]


async def test_sends_keep_their_order(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")

    issued: list[int] = []

    async def one(i: int) -> None:
        issued.append(i)  # the send is queued in this same step, before its first await
        await a.router.send("s1", rec(i))

    await asyncio.gather(*(one(i) for i in range(500)))

    await eventually(lambda: len(got("s1")) == 500)
    assert got("s1") == issued  # arrival order is issue order (on any scheduling)
    assert sorted(issued) == list(range(500))
    assert a.router.stats.retries == 0


async def test_a_full_destination_queue_refuses_locally(world: World) -> None:
    a = await world.add("a", config=RouterConfig(max_queued=10))
    b = await world.add("b")
    await world.place(b, Sink, "s1")
    for i in range(10):
        await a.router.cast("s1", rec(i))
    with pytest.raises(Overloaded):
        await a.router.cast("s1", rec(10))
    await eventually(lambda: len(got("s1")) == 10)
    await a.router.cast("s1", rec(11))  # drained: room again
    await eventually(lambda: got("s1")[-1:] == [11])
    assert reasons(a) == ["overloaded"]


async def test_same_signal_to_two_agents_on_one_node_is_delivered_to_both(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "x")
    await world.place(b, Sink, "y")
    signal = rec(4)
    await asyncio.gather(a.router.send("x", signal), a.router.send("y", signal))
    assert got("x") == got("y") == [4]
    assert b.router.stats.duplicates == 0


# --- cast: the receiver dead-letters ----------------------------------------------------


async def test_cast_to_an_unknown_agent_is_dead_lettered_by_the_receiver(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    world.views["a"] = {"ghost": Placement("b", 1)}

    await a.router.cast("ghost", rec())

    await eventually(lambda: reasons(b) == ["unknown"])
    letter = b.node.dead_letters.list()[0]
    assert letter.agent_id == "ghost"
    assert letter.node_id == "b"
    assert reasons(a) == []


async def test_cast_to_a_moved_agent_is_dead_lettered_as_moved(world: World) -> None:
    a, b, c = await world.add("a"), await world.add("b"), await world.add("c")
    await world.place(c, Sink, "m1")
    world.views["a"] = {"m1": Placement("b", 1)}
    await a.router.cast("m1", rec())
    await eventually(lambda: reasons(b) == ["moved"])
    assert got("m1") == []  # at most once: no forwarding


async def test_cast_past_its_deadline_is_dead_lettered_expired(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    # Budgets are re-anchored on arrival (transit is not measured), so only a signal that
    # leaves with no budget left arrives expired.
    await a.router.cast("s1", rec(deadline=now() - 0.5))
    await eventually(lambda: reasons(b) == ["expired"])
    assert got("s1") == []
    assert b.router.stats.refused["expired"] == 1


# --- call -------------------------------------------------------------------------------


async def test_call_returns_the_result(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    assert await a.router.call("s1", rec(42)) == 42
    assert await a.router.call("s1", Signal("test.echo", {"value": {"k": "v"}})) == {
        "echo": {"k": "v"},
        "by": "s1",
    }


async def test_call_to_a_failing_action_raises_action_failed(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")

    with pytest.raises(ActionFailed) as caught:
        await a.router.call("s1", Signal("test.fail"))

    error = caught.value
    assert type(error) is ActionFailed
    assert error.error_type == "ValueError"
    assert error.error_message == "boom"
    assert error.agent_id == "s1"
    assert error.node_id == "b"
    assert reasons(a) == []  # the caller got the error: nothing to dead-letter


async def test_call_timeout_cancels_the_remote_action(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    t0 = now()

    with pytest.raises(CallTimeout):
        await a.router.call("s1", Signal("test.slow", {"seconds": 20.0}), timeout=1.0)

    assert now() - t0 == pytest.approx(1.0)
    await eventually(lambda: ("cancelled", "s1") in EVENTS)
    assert ("finished", "s1") not in EVENTS
    await eventually(lambda: b.router.remote_calls == 0)
    assert reasons(a) == ["timeout"]
    assert reasons(b) == []  # the caller gave up first; the receiver just stopped


async def test_a_cancelled_caller_cancels_the_remote_action(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    calling = asyncio.create_task(a.router.call("s1", Signal("test.slow")))
    await eventually(lambda: ("started", "s1") in EVENTS)

    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling

    await eventually(lambda: ("cancelled", "s1") in EVENTS)
    assert a.router.in_flight == 0


async def test_a_call_that_would_wait_on_itself_fails_with_call_cycle(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    t0 = now()
    with pytest.raises(CallCycle) as caught:
        await a.router.call("s1", Signal("test.echo", callchain=("s0", "s1")))
    assert caught.value.chain == ("s0", "s1")
    assert now() == t0


async def test_call_delivery_is_retried_through_a_lost_call(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    world.hub.faults.drop(1.0, subject=b.router.inbox)
    calling = asyncio.create_task(a.router.call("s1", rec(9), timeout=10.0))
    await eventually(lambda: world.hub.faults.dropped >= 1)
    world.hub.faults.clear_message_faults()
    assert await calling == 9
    assert got("s1") == [9]


# --- the local shortcut and broadcasts --------------------------------------------------


async def test_an_agent_on_this_node_is_reached_without_the_transport(world: World) -> None:
    a = await world.add("a")
    await world.place(a, Sink, "here")
    seen = await spy(world.hub, a.router.inbox)

    await a.router.cast("here", rec(1))
    await a.router.send("here", rec(2))
    assert await a.router.call("here", rec(3)) == 3

    await eventually(lambda: got("here") == [1, 2, 3])
    assert a.router.stats.local == 3
    assert a.router.stats.batches_sent == 0
    assert seen == []


async def test_broadcasts_reach_every_routing_agent(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(a, Sink, "a1")
    await world.place(b, Sink, "b1")
    await world.place(b, Sink, "b2")

    await a.router.broadcast_node("b", rec(1))
    await eventually(lambda: got("b1") == got("b2") == [1])
    await a.router.broadcast_all(rec(2))
    await eventually(lambda: got("a1") == [2] and got("b1") == got("b2") == [1, 2])


async def test_a_stopped_router_refuses_and_fails_what_is_in_flight(world: World) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    world.hub.faults.drop(1.0, subject=b.router.inbox)
    sending = asyncio.create_task(a.router.send("s1", rec(), timeout=10.0))
    await eventually(lambda: a.router.in_flight == 1)
    await a.router.stop()
    with pytest.raises(Exception, match="stopped"):
        await sending
    with pytest.raises(Exception, match="stopped"):
        await a.router.cast("s1", rec())


# --- the wire, pure -----------------------------------------------------------------------


def test_errors_survive_the_wire() -> None:
    cases: list[Any] = [
        ActionFailed("Do", "ValueError", "bad", agent_id="x", node_id="n"),
        AgentCrashed("Do", "KeyError", "'k'", agent_id="x"),
        CallCycle("cycle", chain=("a", "b"), agent_id="a"),
        CallTimeout("late", agent_id="x"),
        AgentNotFound("none", agent_id="x"),
        AgentUnavailable("gone", agent_id="x"),
        SignalDecodeError("type", "missing"),
        SignalTooLarge(10, 5, signal_type="t"),
        MailboxFull("full"),
        wire.AgentMoved("moved", moved_to="c", moved_incarnation=3),
    ]
    for error in cases:
        back = error_from_dict(orjson.loads(orjson.dumps(wire.error_to_dict(error))))
        assert type(back) is type(error)
        assert str(back) == str(error)
        assert back.to_dict() == error.to_dict()
    back = error_from_dict(cases[0].to_dict())  # plain to_dict(): the message is parsed
    assert isinstance(back, ActionFailed)
    assert (back.action, back.error_type, back.error_message) == ("Do", "ValueError", "bad")
    assert error_from_dict(cases[2].to_dict()).chain == ()  # type: ignore[attr-defined]
    unknown = error_from_dict({"type": "FutureError", "reason": "future", "message": "m"})
    assert unknown.reason == "future"
    assert "FutureError" in str(unknown)
    foreign = error_from_dict(wire.error_to_dict(RuntimeError("raw")))
    assert isinstance(foreign, ActionFailed)
    assert foreign.error_type == "RuntimeError"


def test_frames_round_trip_and_bad_ones_name_the_culprit() -> None:
    refusal = wire.Refusal("i2", "x", "moved", True, "m", "c", 2)
    batch = wire.cut_batches(
        [
            wire.signal_frame(wire.Kind.SEND, "x", b'{"specversion":"1.0"}'),
            wire.ack_frame("b", 1, [("i1", "x")], [refusal]),
            wire.result_frame("i3", "x", [1]),
            wire.cancel_frame("i4", "x"),
        ],
        10,
        1 << 20,
    )
    assert len(batch) == 1
    frames = [wire.parse_frame(item) for item in wire.parse_batch(batch[0])]
    assert frames[0] == wire.SignalFrame(wire.Kind.SEND, "x", {"specversion": "1.0"})
    assert frames[1] == wire.AckFrame("b", 1, (("i1", "x"),), (refusal,))
    assert frames[2] == wire.ResultFrame("i3", "x", [1], None)
    assert frames[3] == wire.CancelFrame("i4", "x")
    for bad, culprit in [
        ({"k": "nope"}, "k"),
        ({"k": "send", "to": "x"}, "ev"),
        ({"k": "send", "to": "", "ev": {}}, "to"),
        ({"k": "ack", "n": "b", "ni": 1, "ok": [["i"]], "no": []}, "ok"),
        ([], "<envelope>"),
    ]:
        with pytest.raises(SignalDecodeError) as caught:
            wire.parse_frame(bad)
        assert caught.value.attribute == culprit
    with pytest.raises(SignalDecodeError):
        wire.parse_batch(b"{}")


def test_batches_are_cut_by_count_and_bytes() -> None:
    parts = [b'"%03d"' % i for i in range(10)]
    assert [len(orjson.loads(b)) for b in wire.cut_batches(parts, 4, 1000)] == [4, 4, 2]
    by_bytes = wire.cut_batches(parts, 100, 2 + 5 * 3 + 2)
    assert all(len(b) <= 19 for b in by_bytes)
    assert [x for b in by_bytes for x in orjson.loads(b)] == [f"{i:03d}" for i in range(10)]
    batcher = Batcher(max_count=4, max_bytes=1000, max_queued=3, max_queued_bytes=1000)
    assert all(batcher.add("s", p) for p in parts[:3])
    assert not batcher.add("s", parts[3])
    assert batcher.add("s", parts[3], control=True)  # control frames get more room
    assert [len(orjson.loads(b)) for b in batcher.take("s")] == [4]
    assert batcher.take("s") == []
    with pytest.raises(ConfigurationError):
        Batcher(max_count=0, max_bytes=1, max_queued=1, max_queued_bytes=1)


def test_node_inbox_encodes_the_node_id() -> None:
    assert node_inbox("n1") == "ac.node.n1.in"
    assert node_inbox("host.example:1") == "ac.node.host=2Eexample=3A1.in"
    with pytest.raises(ConfigurationError):
        RouterConfig(ack_timeout=0)


async def test_a_quick_call_is_acknowledged_by_its_result_and_a_slow_one_by_an_ack(
    world: World,
) -> None:
    a, b = await world.add("a"), await world.add("b")
    await world.place(b, Sink, "s1")
    assert await a.router.call("s1", Signal("test.echo", {"value": 1})) == {
        "echo": 1,
        "by": "s1",
    }
    assert b.router.stats.acks_sent == 0  # the result was the acknowledgement
    delay = b.router.config.ack_delay
    slow = asyncio.create_task(
        a.router.call("s1", Signal("test.slow", {"seconds": delay * 4}), timeout=5)
    )
    await eventually(lambda: b.router.stats.acks_sent == 1, timeout=delay * 3)
    assert await slow == "done"
    assert b.router.stats.acks_sent == 1
    assert a.router.stats.retries == 0
    assert a.router.in_flight == 0


async def test_a_call_cancelled_before_its_task_starts_frees_its_slot(world: World) -> None:
    # A call and its cancel processed back to back (here: in one batch) cancel the call's
    # task before its first step, so ``_run_call``'s own clean-up never runs; the slot must
    # be freed anyway, or enough of them refuse every call with "too many calls running".
    b = await world.add("b")
    await world.place(b, Sink, "s1")
    raw = await world.hub.connect("raw")
    signal = Signal("test.slow", {"seconds": 20.0}, deadline=now() + 30)
    call = wire.signal_frame(wire.Kind.CALL, "s1", codec.encode(signal, now()))
    batch = b"[" + call + b"," + wire.cancel_frame(signal.id, "s1") + b"]"
    await raw.publish(node_inbox("b"), batch, reply="raw.replies")
    await eventually(lambda: b.router.stats.batches_received == 1)
    await asyncio.sleep(0.1)
    assert b.router.remote_calls == 0
    assert ("started", "s1") not in EVENTS
