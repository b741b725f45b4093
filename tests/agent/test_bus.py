"""The node's signal bus: pattern subscriptions, agent subscribers, the bounded journal."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from agentcluster import Action, Agent, LocalNode, Signal
from agentcluster.agent import SignalBus
from agentcluster.errors import ConfigurationError, InvalidRoute, JournalTruncated
from tests.agent.conftest import eventually


def new_bus(journal_size: int = 100) -> tuple[SignalBus, list[tuple[str, Signal]]]:
    casts: list[tuple[str, Signal]] = []
    bus = SignalBus(
        lambda agent_id, signal: casts.append((agent_id, signal)), journal_size=journal_size
    )
    return bus, casts


class Add(Action):
    class Params(BaseModel):
        n: int = 1

    async def run(self, params, ctx):
        return None, ctx.set(total=ctx.state.total + params.n)


class Announce(Action):
    async def run(self, params, ctx):
        return None, ctx.emit("order.created", {"n": 7})


class Counter(Agent):
    class State(BaseModel):
        total: int = 0

    routes = {"order.**": Add, "shop.announce": Announce}


def test_patterns_select_what_each_subscriber_receives():
    bus, _ = new_bus()
    got: dict[str, list[str]] = {p: [] for p in ("order.*", "order.**", "**", "order.created")}
    for pattern, seen in got.items():
        bus.subscribe(pattern, lambda s, seen=seen: seen.append(s.type))
    for signal_type in ("order.created", "order.item.added", "order", "billing.paid"):
        bus.publish(Signal(signal_type))
    assert got == {
        "order.*": ["order.created"],
        "order.**": ["order.created", "order.item.added", "order"],
        "**": ["order.created", "order.item.added", "order", "billing.paid"],
        "order.created": ["order.created"],
    }


def test_unsubscribe_stops_delivery():
    bus, _ = new_bus()
    seen: list[str] = []
    first = bus.subscribe("a.*", lambda s: seen.append(f"first {s.type}"))
    second = bus.subscribe("a.*", lambda s: seen.append(f"second {s.type}"))
    bus.publish(Signal("a.one"))
    assert bus.unsubscribe(first) is True
    assert bus.unsubscribe(first) is False
    bus.publish(Signal("a.two"))
    assert bus.unsubscribe(second.id) is True
    bus.publish(Signal("a.three"))
    assert seen == ["first a.one", "second a.one", "second a.two"]
    assert bus.subscriptions() == []
    assert bus.unsubscribe("sub-unknown") is False


def test_a_subscription_removed_during_publish_is_not_called():
    bus, _ = new_bus()
    seen: list[str] = []
    later = None

    def remover(signal):
        seen.append("remover")
        bus.unsubscribe(later)

    bus.subscribe("x", remover)
    later = bus.subscribe("x", lambda s: seen.append("later"))
    bus.publish(Signal("x"))
    assert seen == ["remover"]


def test_agent_subscribers_get_casts():
    bus, casts = new_bus()
    bus.subscribe("order.*", agent_id="inv-1")
    signal = Signal("order.created")
    bus.publish(signal)
    bus.publish(Signal("billing.paid"))
    assert casts == [("inv-1", signal)]


async def test_agent_subscribers_on_a_node_run_the_signal():
    async with LocalNode() as node:
        await node.start_agent(Counter, "c")
        node.bus.subscribe("order.**", agent_id="c")
        node.publish(Signal("order.created", {"n": 2}))
        await eventually(lambda: node.state("c").total == 2)
        # An emit without a target goes to the bus, and so to the subscriber.
        await node.call("c", Signal("shop.announce"))
        await eventually(lambda: node.state("c").total == 9)


async def test_publishing_to_a_vanished_agent_subscriber_is_dead_lettered():
    async with LocalNode() as node:
        node.bus.subscribe("order.*", agent_id="gone")
        signal = Signal("order.created")
        node.publish(signal)
        letters = node.dead_letters.list()
        assert [(d.reason, d.agent_id, d.signal.id) for d in letters] == [
            ("unknown", "gone", signal.id)
        ]


def test_a_failing_handler_does_not_break_publish():
    bus, casts = new_bus()
    seen: list[str] = []

    def broken(signal):
        raise RuntimeError("subscriber bug")

    bus.subscribe("x.*", broken)
    bus.subscribe("x.*", lambda s: seen.append(s.type))
    bus.subscribe("x.*", agent_id="a")
    assert bus.publish(Signal("x.one")) == 1
    assert bus.publish(Signal("x.two")) == 2
    assert seen == ["x.one", "x.two"]
    assert [aid for aid, _ in casts] == ["a", "a"]
    assert bus.handler_errors == 2


def test_subscribe_bad_input():
    bus, _ = new_bus()
    for pattern in ("", "order..created", "order.cre ated", "order.*x"):
        with pytest.raises(InvalidRoute):
            bus.subscribe(pattern, lambda s: None)
    with pytest.raises(ConfigurationError):
        bus.subscribe("x", lambda s: None, agent_id="a")
    with pytest.raises(ConfigurationError):
        bus.subscribe("x")
    with pytest.raises(ConfigurationError):
        bus.subscribe("x", "not callable")  # type: ignore[arg-type]

    async def coroutine_handler(signal):
        return None

    # It would be called and its coroutine never awaited: refused up front instead.
    with pytest.raises(ConfigurationError):
        bus.subscribe("x", coroutine_handler)
    assert bus.subscriptions() == []


def test_journal_offsets_increase_and_replay_filters():
    bus, _ = new_bus()
    assert (bus.last_offset, bus.first_offset) == (0, 1)
    types = ["order.created", "billing.paid", "order.shipped", "order.item.added"]
    offsets = [bus.publish(Signal(t)) for t in types]
    assert offsets == [1, 2, 3, 4]
    assert (bus.last_offset, bus.first_offset) == (4, 1)
    assert [(o, s.type) for o, s in bus.replay()] == list(zip(offsets, types, strict=True))
    assert [o for o, _ in bus.replay(since=2)] == [2, 3, 4]
    assert [o for o, _ in bus.replay(since=2, pattern="order.*")] == [3]
    assert [o for o, _ in bus.replay(pattern="order.**")] == [1, 3, 4]
    assert bus.replay(since=5) == []
    with pytest.raises(InvalidRoute):
        bus.replay(pattern="order..x")


async def test_replay_past_the_bounded_journal_raises_journal_truncated():
    async with LocalNode(journal_size=5) as node:
        bus = node.bus
        for i in range(10):
            assert node.publish(Signal("tick", {"i": i})) == i + 1
        with pytest.raises(JournalTruncated) as exc:
            bus.replay(since=1)
        assert (exc.value.requested, exc.value.first_available) == (1, 6)
        assert "6" in str(exc.value)
        with pytest.raises(JournalTruncated):
            bus.replay(since=5)
        assert [o for o, _ in bus.replay(since=6)] == [6, 7, 8, 9, 10]
        assert [s.data["i"] for _, s in bus.replay(since=9)] == [8, 9]
        assert [o for o, _ in bus.replay()] == [6, 7, 8, 9, 10]
        assert bus.first_offset == 6


def test_journal_size_must_be_positive():
    with pytest.raises(ConfigurationError):
        SignalBus(lambda a, s: None, journal_size=0)
