"""Signal ids: UUIDv7 layout, strict order per source, reproducible seeded sources."""

from __future__ import annotations

import itertools
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core import ids
from agentcluster.core.ids import UuidV7Source, id_timestamp_ms, set_default_id_source
from agentcluster.core.signal import Signal

UUID_V7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
MS = 1_790_000_000_000


class FakeMs:
    """A wall clock in milliseconds that moves only when told to."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_ids_have_the_uuid_v7_layout() -> None:
    source = UuidV7Source(FakeMs(MS))
    for _ in range(200):
        value = source()
        assert UUID_V7.fullmatch(value), value
        parsed = uuid.UUID(value)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122  # the 10xx variant


def test_ids_increase_strictly_within_one_millisecond() -> None:
    source = UuidV7Source(FakeMs(MS))
    made = [source() for _ in range(500)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert {id_timestamp_ms(i) for i in made} == {MS}


def test_sequence_overflow_borrows_the_next_millisecond_and_keeps_order() -> None:
    clock = FakeMs(MS)
    source = UuidV7Source(clock)
    # The sequence starts below 1024 and holds 4096 values: 5000 ids must overflow once.
    made = [source() for _ in range(5000)]
    stamps = [id_timestamp_ms(i) for i in made]
    assert stamps[0] == MS
    assert stamps[-1] == MS + 1
    assert set(stamps) == {MS, MS + 1}
    # The clock catching up with the borrowed millisecond, then passing it.
    clock.ms = MS + 1
    made.append(source())
    clock.ms = MS + 5
    made.append(source())
    assert id_timestamp_ms(made[-1]) == MS + 5
    assert all(a < b for a, b in itertools.pairwise(made))


def test_a_clock_going_backwards_does_not_break_order() -> None:
    clock = FakeMs(MS)
    source = UuidV7Source(clock)
    first = source()
    clock.ms = MS - 1000
    second = source()
    assert first < second
    assert id_timestamp_ms(second) == MS


def test_seeded_sources_reproduce_and_differ_by_seed_and_incarnation() -> None:
    def run(seed: str, incarnation: int) -> list[str]:
        clock = FakeMs(MS)
        source = UuidV7Source.seeded(seed, clock, incarnation)
        out = []
        for step in range(50):
            clock.ms = MS + step // 7
            out.append(source())
        return out

    assert run("sim-1", 1) == run("sim-1", 1)
    assert run("sim-1", 1) != run("sim-2", 1)
    assert set(run("sim-1", 1)).isdisjoint(run("sim-1", 2))


def test_unseeded_sources_differ() -> None:
    assert UuidV7Source(FakeMs(MS))() != UuidV7Source(FakeMs(MS))()


@given(st.integers(min_value=0, max_value=2**48 - 1), st.integers())
def test_id_timestamp_round_trips_the_millisecond(ms: int, seed: int) -> None:
    value = UuidV7Source.seeded(str(seed), FakeMs(ms))()
    assert id_timestamp_ms(value) == ms
    assert id_timestamp_ms(value.upper()) == ms


@pytest.mark.parametrize(
    "value",
    [
        str(uuid.uuid4()),
        str(uuid.uuid1()),
        "",
        "order-42",
        "0190f1c2-3b4d-7e5f-0a1b-2c3d4e5f6a7b",  # version 7 but variant 0xxx
        "0190f1c2-3b4d-7e5f-ca1b-2c3d4e5f6a7b",  # version 7 but variant 110x
        "0190f1c23b4d-7e5f-8a1b-2c3d4e5f6a7b-",  # dashes misplaced
        "-190f1c2-3b4d-7e5f-8a1b-2c3d4e5f6a7b",  # a sign int() would accept
        " 190f1c2-3b4d-7e5f-8a1b-2c3d4e5f6a7b",  # whitespace int() would accept
        "0_90f1c2-3b4d-7e5f-8a1b-2c3d4e5f6a7b",  # underscore int() would accept
        "0190f1c2-3b4d-7e5f-8a1b-2c3d4e5f6a7g",  # not hex
    ],
)
def test_id_timestamp_is_none_for_other_ids(value: str) -> None:
    assert id_timestamp_ms(value) is None


def test_set_default_id_source_swaps_and_returns_the_old() -> None:
    original = ids.default_id_source()
    counter = iter(range(1000))

    def fixed() -> str:
        return f"fixed-{next(counter)}"

    old = set_default_id_source(fixed)
    try:
        assert old is original
        assert ids.default_id_source() is fixed
        assert ids.new_id() == "fixed-0"
        assert Signal("order.item.created").id == "fixed-1"
    finally:
        assert set_default_id_source(old) is fixed
    assert ids.default_id_source() is original
    assert UUID_V7.fullmatch(ids.new_id())
