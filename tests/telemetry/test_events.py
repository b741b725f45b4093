import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import agentcluster.telemetry as tel
from agentcluster.errors import ConfigurationError
from agentcluster.telemetry import (
    HANDLER_FAILED,
    Event,
    EventRecorder,
    Telemetry,
)

Call = tuple[str, Event, Mapping[str, float], Mapping[str, Any]]


class Calls:
    """Handlers that log every call into one shared list, so order across handlers shows."""

    def __init__(self) -> None:
        self.log: list[Call] = []

    def handler(self, name: str) -> Any:
        def handle(
            event: Event, measurements: Mapping[str, float], meta: Mapping[str, Any]
        ) -> None:
            self.log.append((name, event, measurements, meta))

        return handle

    def names(self, event: Event | None = None) -> list[str]:
        return [name for name, ev, _, _ in self.log if event is None or ev == event]


def failing(event: Event, measurements: Mapping[str, float], meta: Mapping[str, Any]) -> None:
    raise RuntimeError("handler broke")


@pytest.fixture
def bus() -> Telemetry:
    return Telemetry()


@pytest.mark.parametrize(
    ("prefix", "event", "matches"),
    [
        (("a", "b", "c"), ("a", "b", "c"), True),
        (("a", "b"), ("a", "b", "c"), True),
        (("a",), ("a", "b", "c"), True),
        ((), ("a", "b", "c"), True),
        ("", ("a", "b", "c"), True),
        ("a.b", ("a", "b", "c"), True),
        ("a.b.c", ("a", "b", "c"), True),
        (("a", "b", "c", "d"), ("a", "b", "c"), False),
        (("a", "c"), ("a", "b", "c"), False),
        (("a", "b"), ("a", "bc"), False),
        ("a.b", ("a",), False),
        (("b",), ("a", "b"), False),
        ((), (), True),
        (("a",), (), False),
    ],
)
def test_prefix_matching(bus: Telemetry, prefix: Event | str, event: Event, matches: bool) -> None:
    calls = Calls()
    bus.attach(prefix, calls.handler("h"))
    assert bus.wants(event) is matches
    bus.emit(event, {"n": 1.0}, {"k": "v"})
    assert calls.log == ([("h", event, {"n": 1.0}, {"k": "v"})] if matches else [])


def test_handlers_run_in_attach_order_across_prefixes(bus: Telemetry) -> None:
    calls = Calls()
    bus.attach("a.b.c", calls.handler("1"))
    bus.attach("", calls.handler("2"))
    bus.attach("a.b", calls.handler("3"))
    bus.attach(("a", "b", "c"), calls.handler("4"))
    bus.attach("a", calls.handler("5"))
    bus.emit(("a", "b", "c"))
    assert calls.names() == ["1", "2", "3", "4", "5"]
    calls.log.clear()
    bus.emit(("a", "b"))
    assert calls.names() == ["2", "3", "5"]


def test_missing_measurements_and_metadata_are_empty(bus: Telemetry) -> None:
    calls = Calls()
    bus.attach("", calls.handler("h"))
    bus.emit(("x",))
    (_, _, measurements, meta) = calls.log[0]
    assert dict(measurements) == {}
    assert dict(meta) == {}


def test_detach(bus: Telemetry) -> None:
    calls = Calls()
    first = bus.attach("a", calls.handler("1"))
    bus.attach("a", calls.handler("2"), handler_id="second")
    assert bus.enabled
    assert bus.handlers() == [(first, ("a",)), ("second", ("a",))]
    assert bus.detach(first) is True
    assert bus.detach(first) is False
    assert bus.detach("never-attached") is False
    bus.emit(("a", "z"))
    assert calls.names() == ["2"]
    assert bus.detach("second")
    assert not bus.enabled
    assert bus.handlers() == []
    assert not bus.wants(("a", "z"))


def test_handler_ids(bus: Telemetry) -> None:
    calls = Calls()
    assert bus.attach("a", calls.handler("1"), handler_id="mine") == "mine"
    with pytest.raises(ValueError, match="'mine' is already attached"):
        bus.attach("b", calls.handler("2"), handler_id="mine")
    handler = calls.handler("3")
    generated = {bus.attach("a", handler) for _ in range(5)}
    assert len(generated) == 5
    assert "mine" not in generated


@pytest.mark.parametrize("prefix", ["a..b", ".a", ("a", ""), ("a", 1)])
def test_bad_prefixes_are_refused(bus: Telemetry, prefix: Any) -> None:
    with pytest.raises(ValueError, match="empty or non-str"):
        bus.attach(prefix, failing)


def test_non_callable_handler_and_bad_prefix_type_are_refused(bus: Telemetry) -> None:
    with pytest.raises(TypeError):
        bus.attach("a", "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bus.attach(["a"], failing)  # type: ignore[arg-type]


def test_str_event_is_refused_when_someone_listens(bus: Telemetry) -> None:
    bus.attach("", failing)
    with pytest.raises(TypeError, match="tuple of names"):
        bus.emit("a.b")  # type: ignore[arg-type]


def test_failing_handler_is_detached_and_reported(
    bus: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    bus.attach("", calls.handler("before"))
    bus.attach("a", failing, handler_id="bad")
    bus.attach("a", calls.handler("after"))
    with caplog.at_level(logging.ERROR, logger="agentcluster.telemetry"):
        bus.emit(("a", "b"), {"n": 1})
    assert len(bus.handlers()) == 2
    assert "bad" not in dict(bus.handlers())
    # The report reaches the remaining handlers, then the original event goes on.
    assert [(name, ev) for name, ev, _, _ in calls.log] == [
        ("before", ("a", "b")),
        ("before", HANDLER_FAILED),
        ("after", ("a", "b")),
    ]
    report = calls.log[1][3]
    assert report["handler_id"] == "bad"
    assert report["event"] == ("a", "b")
    assert isinstance(report["error"], RuntimeError)
    (record,) = caplog.records
    assert record.name == "agentcluster.telemetry"
    assert "'bad'" in record.getMessage()
    assert record.exc_info is not None
    calls.log.clear()
    bus.emit(("a", "b"))
    assert calls.names() == ["before", "after"]


def test_handler_failing_on_handler_failed_does_not_loop(
    bus: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Event] = []

    def always_fails(event: Event, m: Mapping[str, float], meta: Mapping[str, Any]) -> None:
        seen.append(event)
        raise RuntimeError("again")

    bus.attach("", always_fails, handler_id="one")
    bus.attach(HANDLER_FAILED, always_fails, handler_id="two")
    bus.attach("", always_fails, handler_id="three")
    with caplog.at_level(logging.CRITICAL, logger="agentcluster.telemetry"):
        bus.emit(("x",))
    assert not bus.enabled
    assert len(seen) == 3
    assert seen[0] == ("x",)


def test_detach_during_emit_is_immediate_attach_from_the_next_emit(bus: Telemetry) -> None:
    calls = Calls()

    def detach_other(event: Event, m: Mapping[str, float], meta: Mapping[str, Any]) -> None:
        bus.detach("other")
        bus.attach("", calls.handler("late"), handler_id="late")

    bus.attach("", detach_other, handler_id="first")
    bus.attach("", calls.handler("other"), handler_id="other")
    bus.emit(("a",))
    assert calls.names() == []
    bus.detach("first")
    calls.log.clear()
    bus.emit(("a",))
    assert calls.names() == ["late"]


class Trap(tuple[str, ...]):
    def __len__(self) -> int:
        raise AssertionError("emit looked at the event")

    def __getitem__(self, item: Any) -> Any:
        raise AssertionError("emit looked at the event")

    def __hash__(self) -> int:
        raise AssertionError("emit looked at the event")


class TrapMapping(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise AssertionError("emit looked at the metadata")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("emit looked at the metadata")

    def __len__(self) -> int:
        raise AssertionError("emit looked at the metadata")


def test_emit_with_nothing_attached_touches_nothing(bus: Telemetry) -> None:
    bus.emit(Trap(("a",)), TrapMapping(), TrapMapping())
    bus.detach(bus.attach("a", failing))
    bus.emit(Trap(("a",)), TrapMapping(), TrapMapping())
    assert not bus.wants(Trap(("a",)))


def test_emit_passes_mappings_through_without_copying(bus: Telemetry) -> None:
    calls = Calls()
    bus.attach("a", calls.handler("h"))
    measurements, meta = {"n": 1.0}, {"k": "v"}
    bus.emit(("a",), measurements, meta)
    assert calls.log[0][2] is measurements
    assert calls.log[0][3] is meta


# --- the recorder and the process-wide bus --------------------------------------------


def test_event_recorder_is_bounded_and_filters(bus: Telemetry) -> None:
    recorder = EventRecorder(maxlen=3)
    bus.attach("", recorder)
    for i in range(5):
        bus.emit(("a", "even" if i % 2 == 0 else "odd"), {"i": i}, {"n": i})
    assert len(recorder) == 3
    assert [r.measurements["i"] for r in recorder.events()] == [2, 3, 4]
    assert [r.metadata["n"] for r in recorder.events("a.even")] == [2, 4]
    assert [r.event for r in recorder.events(("a", "odd"))] == [("a", "odd")]
    assert recorder.events("b") == []
    event, measurements, meta = recorder.events()[0]
    assert (event, measurements, meta) == (("a", "even"), {"i": 2}, {"n": 2})
    recorder.clear()
    assert recorder.events() == []


def test_event_recorder_copies_what_it_keeps() -> None:
    recorder = EventRecorder()
    meta = {"k": 1}
    recorder(("a",), {}, meta)
    meta["k"] = 2
    assert recorder.events()[0].metadata == {"k": 1}


@pytest.mark.parametrize("maxlen", [0, -1, 1.5, True])
def test_event_recorder_validates_maxlen(maxlen: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"EventRecorder\.maxlen"):
        EventRecorder(maxlen=maxlen)


def test_module_functions_use_the_default_bus() -> None:
    recorder = EventRecorder()
    handler_id = tel.attach("agentcluster.test", recorder)
    try:
        assert (handler_id, ("agentcluster", "test")) in tel.telemetry.handlers()
        tel.emit(("agentcluster", "test", "ran"), {"x": 1.0})
        tel.emit(("agentcluster", "other"))
    finally:
        assert tel.detach(handler_id)
    assert [r.event for r in recorder.events()] == [("agentcluster", "test", "ran")]


# --- against a naive oracle: scan every handler ---------------------------------------

names = st.sampled_from(["a", "b", "c"])
events = st.lists(names, max_size=4).map(tuple)


@given(st.lists(events, max_size=8), st.lists(events, min_size=1, max_size=10))
def test_delivery_matches_a_linear_scan(prefixes: list[Event], emitted: list[Event]) -> None:
    bus = Telemetry()
    calls = Calls()
    for i, prefix in enumerate(prefixes):
        bus.attach(prefix, calls.handler(str(i)))
    for event in emitted:
        calls.log.clear()
        bus.emit(event)
        expected = [str(i) for i, p in enumerate(prefixes) if event[: len(p)] == p]
        assert calls.names() == expected
        assert bus.wants(event) is bool(expected)
