"""CloudEvents JSON codec: round trips, deadline budgets, foreign events, bad input, sizes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.codec import (
    DEFAULT_MAX_SIGNAL_BYTES,
    decode,
    decode_batch,
    encode,
    encode_batch,
    split_batches,
)
from agentcluster.core.ids import UuidV7Source, id_timestamp_ms
from agentcluster.core.signal import Signal
from agentcluster.errors import InvalidSignal, SignalDecodeError, SignalTooLarge

NOW = 1234.5
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RESERVED = {
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "target",
    "correlationid",
    "causationid",
    "traceparent",
    "deadlinems",
    "callchain",
}


def v7_id(ms: int, seed: str = "codec") -> str:
    return UuidV7Source.seeded(seed, lambda: ms)()


def wire(raw: bytes) -> dict[str, Any]:
    event = orjson.loads(raw)
    assert isinstance(event, dict)
    return event


def derived_time(signal_id: str) -> str | None:
    """The oracle for the time the encoder derives from a UUIDv7 id."""
    ms = id_timestamp_ms(signal_id)
    if ms is None:
        return None
    try:
        moment = EPOCH + timedelta(milliseconds=ms)
    except OverflowError:  # past year 9999: no RFC 3339 form
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# --- strategies ---------------------------------------------------------------------

printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30)
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
nonempty_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=20,
)
signal_ids = st.one_of(
    st.builds(v7_id, st.integers(min_value=0, max_value=2**48 - 1), printable),
    printable,
)
link_ids = st.text(
    st.sampled_from([",", "%", "2", "C", "c", "5", "a", "é", "🙂", " "]), min_size=1, max_size=6
)
extension_names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda name: name not in RESERVED
)
extension_values = st.one_of(
    any_text, st.booleans(), st.integers(min_value=-(2**31), max_value=2**31 - 1)
)
times = st.datetimes(timezones=st.just(UTC)).map(lambda moment: moment.isoformat())


@st.composite
def signals(draw: st.DrawFn, now: float = NOW) -> Signal:
    budget = draw(st.none() | st.integers(min_value=0, max_value=10**7))
    return Signal(
        draw(printable),
        draw(json_values | st.binary(max_size=64)),
        id=draw(signal_ids),
        source=draw(printable),
        subject=draw(st.none() | nonempty_text),
        time=draw(st.none() | times),
        datacontenttype=draw(st.none() | st.just("application/json") | nonempty_text),
        dataschema=draw(st.none() | nonempty_text),
        target=draw(st.none() | any_text),
        correlationid=draw(st.none() | any_text),
        causationid=draw(st.none() | any_text),
        traceparent=draw(st.none() | any_text),
        deadline=None if budget is None else now + budget / 1000,
        callchain=tuple(draw(st.lists(link_ids, max_size=5))),
        extensions=draw(st.dictionaries(extension_names, extension_values, max_size=3)),
    )


# --- round trips --------------------------------------------------------------------


@given(signals())
def test_every_attribute_round_trips(signal: Signal) -> None:
    raw = encode(signal, NOW)
    back = decode(raw, NOW)
    expected_time = signal.time if signal.time is not None else derived_time(signal.id)
    if isinstance(signal.data, bytes | bytearray):
        assert "data_base64" in wire(raw)
    assert back == signal.evolve(time=expected_time)
    # A decoded signal re-encodes to the same bytes: nothing drifts across hops.
    assert encode(back, NOW) == raw


@given(st.lists(signals(), max_size=6))
def test_batches_round_trip_in_order(batch: list[Signal]) -> None:
    raw = encode_batch(batch, NOW)
    assert orjson.loads(raw) == [orjson.loads(encode(s, NOW)) for s in batch]
    back = decode_batch(raw, NOW)
    assert [s.id for s in back] == [s.id for s in batch]
    assert back == [decode(encode(s, NOW), NOW) for s in batch]


def test_the_minimal_event_on_the_wire() -> None:
    signal = Signal("order.item.created", id="order-1", source="/shop", datacontenttype=None)
    assert wire(encode(signal, NOW)) == {
        "specversion": "1.0",
        "id": "order-1",
        "source": "/shop",
        "type": "order.item.created",
    }


def test_time_is_derived_from_a_uuid_v7_id() -> None:
    moment = datetime(2026, 11, 21, 10, 11, 12, 345000, tzinfo=UTC)
    ms = (moment - EPOCH) // timedelta(milliseconds=1)
    signal = Signal("order.item.created", id=v7_id(ms))
    assert wire(encode(signal, NOW))["time"] == "2026-11-21T10:11:12.345Z"
    assert "time" not in wire(encode(signal.evolve(id="order-1"), NOW))
    given_time = signal.evolve(time="2018-04-05T17:31:00+02:00")
    assert wire(encode(given_time, NOW))["time"] == "2018-04-05T17:31:00+02:00"
    # Beyond year 9999 there is no RFC 3339 form: omitted.
    assert "time" not in wire(encode(signal.evolve(id=v7_id(2**48 - 1)), NOW))


def test_bytes_travel_as_data_base64() -> None:
    signal = Signal("blob.stored", b"\x00\xffhello", id="b-1")
    event = wire(encode(signal, NOW))
    assert event["data_base64"] == "AP9oZWxsbw=="
    assert "data" not in event
    assert decode(encode(signal, NOW), NOW).data == b"\x00\xffhello"
    assert decode(encode(signal.evolve(data=bytearray(b"ab")), NOW), NOW).data == b"ab"


def test_callchain_is_one_string_with_percent_encoded_ids() -> None:
    signal = Signal("x.y.z", callchain=("a,b", "c%d", "e", "%2C"))
    assert wire(encode(signal, NOW))["callchain"] == "a%2Cb,c%25d,e,%252C"
    assert decode(encode(signal, NOW), NOW).callchain == ("a,b", "c%d", "e", "%2C")
    assert "callchain" not in wire(encode(signal.evolve(callchain=()), NOW))
    foreign = {"specversion": "1.0", "id": "1", "source": "s", "type": "t"}
    assert decode({**foreign, "callchain": "x%2cy,z"}, NOW).callchain == ("x,y", "z")
    assert decode({**foreign, "callchain": ""}, NOW).callchain == ()


# --- deadlines ----------------------------------------------------------------------


def test_deadline_travels_as_a_budget_and_is_re_anchored() -> None:
    signal = Signal("order.item.created", deadline=100.25)
    raw = encode(signal, 100.0)
    assert wire(raw)["deadlinems"] == 250
    assert decode(raw, 5000.0).deadline == 5000.25


@pytest.mark.parametrize(
    ("deadline", "now", "budget"),
    [
        (100.0005, 100.0, 1),  # a part of a millisecond rounds up
        (100.0, 100.0, 0),
        (99.0, 100.0, 0),  # already past: an empty budget, never negative
        (130.0, 100.0, 30_000),
    ],
)
def test_budget_rounding(deadline: float, now: float, budget: int) -> None:
    assert wire(encode(Signal("x.y.z", deadline=deadline), now))["deadlinems"] == budget


@given(
    st.integers(min_value=0, max_value=10**8),
    st.floats(min_value=0, max_value=1e7),
    st.floats(min_value=0, max_value=1e7),
)
def test_budgets_do_not_drift_across_hops(budget: int, sender_now: float, hop_now: float) -> None:
    first = encode(Signal("x.y.z", deadline=sender_now + budget / 1000), sender_now)
    assert wire(first)["deadlinems"] == budget
    relayed = encode(decode(first, hop_now), hop_now)
    assert wire(relayed)["deadlinems"] == budget


def test_no_deadline_means_no_budget() -> None:
    raw = encode(Signal("x.y.z"), NOW)
    assert "deadlinems" not in wire(raw)
    assert decode(raw, NOW).deadline is None


@pytest.mark.parametrize(("budget", "deadline"), [("250", 5000.25), (250.0, 5000.25), (0, 5000.0)])
def test_budget_may_arrive_as_an_integer_string(budget: Any, deadline: float) -> None:
    event = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "deadlinems": budget}
    assert decode(event, 5000.0).deadline == deadline


# --- events from other producers ----------------------------------------------------

SPEC_JSON_EXAMPLE = b"""
{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "subject": null,
    "id" : "C234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "unsetextension": null,
    "datacontenttype" : "application/json",
    "data" : {
        "appinfoA" : "abc",
        "appinfoB" : 123,
        "appinfoC" : true
    }
}
"""

SPEC_BINARY_EXAMPLE = """
{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "id" : "B234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "datacontenttype" : "application/vnd.apache.thrift.binary",
    "data_base64" : "aGVsbG8gd29ybGQ="
}
"""

SPEC_XML_EXAMPLE = b"""
{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "id" : "A234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "datacontenttype" : "application/xml",
    "data" : "<much wow=\\"xml\\"/>"
}
"""


def test_a_spec_example_with_json_data_decodes() -> None:
    signal = decode(SPEC_JSON_EXAMPLE, NOW)
    assert signal.type == "com.example.someevent"
    assert signal.source == "/mycontext"
    assert signal.id == "C234-1234-1234"
    assert signal.subject is None
    assert signal.time == "2018-04-05T17:31:00Z"
    assert signal.datacontenttype == "application/json"
    assert signal.data == {"appinfoA": "abc", "appinfoB": 123, "appinfoC": True}
    assert dict(signal.extensions) == {"comexampleextension1": "value", "comexampleothervalue": 5}
    assert signal.deadline is None
    assert signal.callchain == ()
    assert signal.target is None
    # Re-encoded, it is the same event (nulls dropped, the producer's time kept).
    expected = orjson.loads(SPEC_JSON_EXAMPLE)
    del expected["subject"], expected["unsetextension"]
    assert wire(encode(signal, NOW)) == expected


def test_a_spec_example_with_binary_data_decodes() -> None:
    signal = decode(SPEC_BINARY_EXAMPLE, NOW)
    assert signal.data == b"hello world"
    assert signal.datacontenttype == "application/vnd.apache.thrift.binary"
    assert signal.extensions["comexampleothervalue"] == 5
    assert wire(encode(signal, NOW))["data_base64"] == "aGVsbG8gd29ybGQ="


def test_a_spec_example_with_xml_data_decodes() -> None:
    signal = decode(SPEC_XML_EXAMPLE, NOW)
    assert signal.data == '<much wow="xml"/>'
    assert signal.datacontenttype == "application/xml"


def test_a_foreign_batch_decodes() -> None:
    raw = b"[" + SPEC_JSON_EXAMPLE + b"," + SPEC_XML_EXAMPLE + b"]"
    assert [s.id for s in decode_batch(raw, NOW)] == ["C234-1234-1234", "A234-1234-1234"]
    assert decode_batch(b"[]", NOW) == []


def test_an_event_without_datacontenttype_keeps_it_unset() -> None:
    signal = decode({"specversion": "1.0", "id": "1", "source": "s", "type": "t"}, NOW)
    assert signal.datacontenttype is None
    assert signal.data is None
    assert signal.time is None


@pytest.mark.parametrize(
    "time",
    [
        "2018-04-05T17:31:00Z",
        "2018-04-05t17:31:00z",
        "2018-04-05T17:31:00.123456789+05:30",
        "2016-12-31T23:59:60Z",  # a leap second
        "2020-02-29T00:00:00-00:00",
    ],
)
def test_rfc3339_times_are_accepted_and_kept(time: str) -> None:
    event = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "time": time}
    assert decode(event, NOW).time == time


# --- bad input ----------------------------------------------------------------------

VALID: dict[str, Any] = {
    "specversion": "1.0",
    "id": "A234-1234-1234",
    "source": "/mycontext",
    "type": "com.example.someevent",
}
MISSING = object()

BAD_EVENTS = [
    ("id", MISSING),
    ("id", None),
    ("id", ""),
    ("id", 42),
    ("source", MISSING),
    ("source", ""),
    ("source", ["/a"]),
    ("type", MISSING),
    ("type", ""),
    ("type", {"name": "x"}),
    ("specversion", MISSING),
    ("specversion", "0.3"),
    ("specversion", 1.0),
    ("subject", 5),
    ("subject", ""),
    ("datacontenttype", 5),
    ("dataschema", ""),
    ("target", 7),
    ("correlationid", True),
    ("causationid", ["c"]),
    ("traceparent", 1),
    ("time", "yesterday"),
    ("time", "2018-04-05 17:31:00Z"),
    ("time", "2018-04-05T17:31:00"),
    ("time", "2018-02-30T00:00:00Z"),
    ("time", "2018-13-01T00:00:00Z"),
    ("time", "2018-04-05T24:00:00Z"),
    ("time", "2018-04-05T17:31:00+24:00"),
    ("time", 1522949460),
    ("deadlinems", -1),
    ("deadlinems", 2.5),
    ("deadlinems", "-5"),
    ("deadlinems", "1.5"),
    ("deadlinems", "abc"),
    ("deadlinems", ""),
    ("deadlinems", True),
    ("deadlinems", [250]),
    ("callchain", 5),
    ("callchain", ["a", "b"]),
    ("callchain", "a,,b"),
    ("callchain", "a,"),
    ("data_base64", "not base64!"),
    ("data_base64", "abc"),
    ("data_base64", 12),
    ("Uppercase", "x"),
    ("bad-name", "x"),
    ("bad_name", "x"),
    ("café", "x"),
    ("", "x"),
    ("goodname", {"nested": True}),
    ("goodname", [1]),
    ("goodname", 1.5),
]


@pytest.mark.parametrize(("attribute", "value"), BAD_EVENTS)
def test_bad_events_name_the_attribute(attribute: str, value: Any) -> None:
    event = dict(VALID)
    if value is MISSING:
        del event[attribute]
    else:
        event[attribute] = value
    with pytest.raises(SignalDecodeError) as from_bytes:
        decode(orjson.dumps(event), NOW)
    assert from_bytes.value.attribute == attribute
    with pytest.raises(SignalDecodeError) as from_mapping:
        decode(event, NOW)
    assert from_mapping.value.attribute == attribute


def test_data_and_data_base64_together_are_refused() -> None:
    event = {**VALID, "data": {"a": 1}, "data_base64": "aGk="}
    with pytest.raises(SignalDecodeError) as caught:
        decode(orjson.dumps(event), NOW)
    assert caught.value.attribute == "data_base64"
    # A null is an absent member, so this is not "both".
    assert decode({**VALID, "data": None, "data_base64": "aGk="}, NOW).data == b"hi"


def test_null_members_count_as_absent() -> None:
    nulls = dict.fromkeys(RESERVED - set(VALID))
    signal = decode(orjson.dumps({**VALID, **nulls, "someext": None}), NOW)
    assert signal == Signal(
        VALID["type"], id=VALID["id"], source=VALID["source"], datacontenttype=None
    )


@pytest.mark.parametrize(
    "raw",
    [b"", b"{not json", b'{"id": ', b"\xff\xfe", "{'single': 'quotes'}", b"NaN"],
)
def test_malformed_json_names_the_document(raw: bytes | str) -> None:
    with pytest.raises(SignalDecodeError) as caught:
        decode(raw, NOW)
    assert caught.value.attribute == "<json>"


@pytest.mark.parametrize("raw", [b"[]", b"5", b'"event"', b"null", b"true", [VALID]])
def test_a_top_level_that_is_not_an_object_names_the_document(raw: Any) -> None:
    with pytest.raises(SignalDecodeError) as caught:
        decode(raw, NOW)
    assert caught.value.attribute == "<json>"


def test_batch_errors_name_the_index() -> None:
    events: list[Any] = [VALID, VALID, VALID, {**VALID, "type": ""}]
    with pytest.raises(SignalDecodeError) as caught:
        decode_batch(orjson.dumps(events), NOW)
    assert caught.value.attribute == "[3].type"

    with pytest.raises(SignalDecodeError) as caught:
        decode_batch(orjson.dumps([VALID, {**VALID, "Bad": 1}]), NOW)
    assert caught.value.attribute == "[1].Bad"

    with pytest.raises(SignalDecodeError) as caught:
        decode_batch(orjson.dumps([VALID, "not an event"]), NOW)
    assert caught.value.attribute == "[1]"

    for not_a_batch in (orjson.dumps(VALID), b"[", b"7"):
        with pytest.raises(SignalDecodeError) as caught:
            decode_batch(not_a_batch, NOW)
        assert caught.value.attribute == "<json>"


# --- what encode refuses ------------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize("data", [Opaque(), {1: "non-string key"}, {"a": {1, 2}}, 2**70])
def test_data_json_cannot_hold_is_refused_naming_data(data: Any) -> None:
    with pytest.raises(InvalidSignal, match="'data'") as caught:
        encode(Signal("x.y.z", data), NOW)
    assert not isinstance(caught.value, SignalDecodeError)


@pytest.mark.parametrize(
    "changes",
    [
        {"id": ""},
        {"source": ""},
        {"subject": ""},
        {"datacontenttype": 5},
        {"target": 5},
        {"time": "yesterday"},
        {"deadline": float("nan")},
        {"deadline": float("inf")},
        {"deadline": "soon"},
        {"callchain": ("a", "")},
        {"extensions": {"Bad": 1}},
        {"extensions": {"bad-name": 1}},
        {"extensions": {"id": "shadow"}},
        {"extensions": {"deadlinems": 5}},
        {"extensions": {"ratio": 0.5}},
        {"extensions": {"nested": {"a": 1}}},
    ],
)
def test_encode_refuses_what_decode_would_reject(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidSignal):
        encode(Signal("x.y.z").evolve(**changes), NOW)


# --- sizes --------------------------------------------------------------------------


def test_default_limit_leaves_64_kib_of_a_nats_payload() -> None:
    assert DEFAULT_MAX_SIGNAL_BYTES == 1024 * 1024 - 64 * 1024


def test_encode_over_the_limit_raises() -> None:
    signal = Signal("big.signal", "x" * 300, id="big-1")
    size = len(encode(signal, NOW))
    assert len(encode(signal, NOW, max_bytes=size)) == size
    with pytest.raises(SignalTooLarge) as caught:
        encode(signal, NOW, max_bytes=size - 1)
    assert caught.value.size == size
    assert caught.value.limit == size - 1
    assert "big.signal" in str(caught.value)


def test_decode_over_the_limit_raises() -> None:
    raw = encode(Signal("big.signal", "x" * 300), NOW)
    assert decode(raw, NOW, max_bytes=len(raw)).data == "x" * 300
    with pytest.raises(SignalTooLarge) as caught:
        decode(raw, NOW, max_bytes=len(raw) - 1)
    assert caught.value.size == len(raw)
    with pytest.raises(SignalTooLarge):
        decode_batch(b"[" + raw + b"]", NOW, max_bytes=len(raw))


def test_decode_measures_a_str_in_utf8_bytes() -> None:
    text = encode(Signal("x.y.z", "é" * 100), NOW).decode()
    size = len(text.encode())
    assert size > len(text)
    assert decode(text, NOW, max_bytes=size).data == "é" * 100
    with pytest.raises(SignalTooLarge) as caught:
        decode(text, NOW, max_bytes=size - 1)
    assert caught.value.size == size


def test_encode_batch_over_the_limit_raises() -> None:
    batch = [Signal("x.y.z", "x" * 50) for _ in range(5)]
    size = len(encode_batch(batch, NOW))
    with pytest.raises(SignalTooLarge) as caught:
        encode_batch(batch, NOW, max_bytes=size - 1)
    assert caught.value.size == size


def naive_split(signals: list[Signal], now: float, limit: int) -> list[bytes]:
    """Grow each batch one signal at a time, asking encode_batch whether it still fits."""
    batches: list[bytes] = []
    current: list[Signal] = []
    for signal in signals:
        try:
            encode_batch([*current, signal], now, max_bytes=limit)
        except SignalTooLarge:
            batches.append(encode_batch(current, now, max_bytes=limit))
            current = [signal]
        else:
            current.append(signal)
    if current:
        batches.append(encode_batch(current, now, max_bytes=limit))
    return batches


@given(
    st.lists(st.text(max_size=300), max_size=25),
    st.integers(min_value=0, max_value=2000),
)
def test_split_batches_stays_under_the_limit_and_keeps_order(
    payloads: list[str], slack: int
) -> None:
    signals = [Signal("x.y.z", payload, id=f"s-{n}") for n, payload in enumerate(payloads)]
    largest = max((len(encode(s, NOW)) for s in signals), default=0)
    limit = largest + 2 + slack
    batches = split_batches(signals, NOW, limit)
    assert all(len(batch) <= limit for batch in batches)
    decoded = [s for batch in batches for s in decode_batch(batch, NOW, max_bytes=limit)]
    assert decoded == signals
    assert batches == naive_split(signals, NOW, limit)


def test_split_batches_cuts_by_bytes_not_count() -> None:
    signals = [Signal("x.y.z", id=f"s-{n}") for n in range(200)]
    whole = len(encode_batch(signals, NOW))
    assert split_batches(signals, NOW, whole) == [encode_batch(signals, NOW)]
    # One byte less: the batch is filled as far as it goes, the last signal spills over.
    assert split_batches(signals, NOW, whole - 1) == [
        encode_batch(signals[:-1], NOW),
        encode_batch(signals[-1:], NOW),
    ]
    assert split_batches([], NOW, 100) == []


def test_split_batches_refuses_a_signal_too_large_for_any_batch() -> None:
    big = Signal("big.signal", "x" * 500)
    size = len(encode(big, NOW))
    assert len(split_batches([big], NOW, size + 2)) == 1
    with pytest.raises(SignalTooLarge) as caught:
        split_batches([Signal("x.y.z"), big], NOW, size + 1)
    assert caught.value.limit == size + 1
    assert "big.signal" in str(caught.value)
