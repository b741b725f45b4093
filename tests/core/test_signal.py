"""Signal: construction, evolve, caused, equality."""

from __future__ import annotations

from typing import Any

import pytest

from agentcluster.core.signal import DEFAULT_SOURCE, Signal
from agentcluster.errors import InvalidSignal

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("bad_type", ["", None, 5, b"order.created", ("a",)])
def test_type_must_be_a_non_empty_string(bad_type: Any) -> None:
    with pytest.raises(InvalidSignal, match="type"):
        Signal(bad_type)


def test_defaults() -> None:
    signal = Signal("order.item.created")
    assert signal.source == DEFAULT_SOURCE
    assert signal.data is None
    assert signal.datacontenttype == "application/json"
    assert signal.deadline is None
    assert signal.callchain == ()
    assert dict(signal.extensions) == {}
    assert signal.created_ms() is not None


def test_default_ids_are_unique() -> None:
    made = {Signal("order.item.created").id for _ in range(2000)}
    assert len(made) == 2000


def test_evolve_keeps_the_id_and_changes_attributes() -> None:
    signal = Signal("order.item.created", {"n": 1}, target="a-1")
    changed = signal.evolve(data={"n": 2}, deadline=12.5, callchain=("c-1",))
    assert changed.id == signal.id
    assert changed.type == signal.type
    assert changed.target == "a-1"
    assert changed.data == {"n": 2}
    assert changed.deadline == 12.5
    assert changed.callchain == ("c-1",)
    # The original is untouched.
    assert signal.data == {"n": 1}
    assert signal.deadline is None
    assert signal.evolve(id="other").id == "other"


def test_evolve_rejects_unknown_attributes_and_an_empty_type() -> None:
    signal = Signal("order.item.created")
    with pytest.raises(InvalidSignal, match="colour"):
        signal.evolve(colour="red")
    with pytest.raises(InvalidSignal, match="type"):
        signal.evolve(type="")


def test_caused_starts_a_conversation_from_the_cause() -> None:
    cause = Signal("order.placed", traceparent=TRACE)
    effect = cause.caused("invoice.requested", {"order": 7}, target="billing")
    assert effect.id != cause.id
    assert effect.type == "invoice.requested"
    assert effect.data == {"order": 7}
    assert effect.target == "billing"
    assert effect.correlationid == cause.id
    assert effect.causationid == cause.id
    assert effect.traceparent == TRACE


def test_caused_keeps_an_existing_correlation_and_takes_overrides() -> None:
    cause = Signal("order.placed", correlationid="conv-1")
    effect = cause.caused("invoice.requested")
    assert effect.correlationid == "conv-1"
    assert effect.causationid == cause.id
    assert effect.traceparent is None
    assert cause.caused("x.y.z", correlationid="conv-2").correlationid == "conv-2"


def test_equality_compares_every_attribute() -> None:
    a = Signal("order.item.created", {"n": 1}, id="id-1", extensions={"tenant": "t1"})
    b = Signal("order.item.created", {"n": 1}, id="id-1", extensions={"tenant": "t1"})
    assert a == b
    assert a != b.evolve(data={"n": 2})
    assert a != b.evolve(extensions={"tenant": "t2"})
    assert a != b.evolve(deadline=1.0)
    assert a != Signal("order.item.created", {"n": 1}, id="id-2", extensions={"tenant": "t1"})
    assert a != "order.item.created"
    with pytest.raises(TypeError):
        hash(a)
