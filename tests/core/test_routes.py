"""Router: table tests, and property tests against the naive matcher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcluster.core.routes import CacheInfo, Route, Router, naive_match, validate_pattern
from agentcluster.errors import ConfigurationError, InvalidRoute, UsageError

# --- matching, one pattern at a time ------------------------------------------------

MATCHES = [
    # exact
    ("order.item.created", "order.item.created", True),
    ("order.item.created", "order.item.updated", False),
    ("order.item.created", "order.item", False),
    ("order.item", "order.item.created", False),
    ("order", "order", True),
    # *
    ("order.*.created", "order.item.created", True),
    ("order.*.created", "order.created", False),
    ("order.*", "order", False),
    ("*", "order", True),
    ("*", "order.item", False),
    ("*.*", "a.b", True),
    ("*.*", "a.b.c", False),
    # ** at the end, including the empty suffix
    ("order.**", "order", True),
    ("order.**", "order.item", True),
    ("order.**", "order.item.created", True),
    ("order.**", "orders.item", False),
    # ** at the start
    ("**.failed", "failed", True),
    ("**.failed", "job.failed", True),
    ("**.failed", "a.b.c.failed", True),
    ("**.failed", "job.failed.again", False),
    # ** in the middle
    ("a.**.z", "a.z", True),
    ("a.**.z", "a.b.z", True),
    ("a.**.z", "a.b.c.d.z", True),
    ("a.**.z", "a.b.c", False),
    ("a.**.z", "b.a.z", False),
    # ** alone and several **
    ("**", "a", True),
    ("**", "a.b.c", True),
    ("**.**", "a", True),
    ("**.**", "a.b", True),
    ("a.**.**.b", "a.b", True),
    ("a.**.**.b", "a.x.y.b", True),
    ("a.**.**.b", "a.x.y", False),
    ("**.x.**", "x", True),
    ("**.x.**", "a.x.b", True),
    ("**.x.**", "a.b", False),
    # * and ** together
    ("**.*", "a", True),
    ("*.**", "a.b.c", True),
    ("a.*.**.*", "a.b", False),
    ("a.*.**.*", "a.b.c", True),
    ("a.*.**.*", "a.b.c.d.e", True),
    # words may use every allowed character
    ("a-b_c=d/E9", "a-b_c=d/E9", True),
    # an empty type segment matches only wildcards
    ("a.b", "a..b", False),
    ("a.*.b", "a..b", True),
    ("a.**", "a.", True),
]


@pytest.mark.parametrize(("pattern", "signal_type", "expected"), MATCHES)
def test_match_table(pattern: str, signal_type: str, expected: bool) -> None:
    router: Router[str] = Router([(pattern, "t")])
    assert router.match(signal_type) == (("t",) if expected else ())
    assert naive_match(pattern, signal_type) is expected


# --- order ---------------------------------------------------------------------------


def test_priority_orders_first() -> None:
    router: Router[str] = Router(
        [("order.item.created", "exact-low", -1), ("**", "catch-all-high", 5), ("order.**", "mid")]
    )
    assert router.match("order.item.created") == ("catch-all-high", "mid", "exact-low")


def test_specificity_orders_equal_priorities() -> None:
    router: Router[str] = Router()
    # Inserted least specific first, so insertion order cannot explain the result.
    for pattern in ["**", "**.**", "*.**", "*.*.*", "a.**", "a.*.**", "a.*.c", "a.**.c", "a.b.c"]:
        router.add(pattern, pattern)
    assert router.match("a.b.c") == (
        "a.b.c",  # 3 exact
        "a.*.c",  # 2 exact, no **
        "a.**.c",  # 2 exact, one **
        "a.**",  # 1 exact, one **, no *
        "a.*.**",  # 1 exact, one **, one *
        "*.*.*",  # 0 exact, no **
        "**",  # 0 exact, one **, no *
        "*.**",  # 0 exact, one **, one *
        "**.**",  # 0 exact, two **
    )


def test_insertion_order_breaks_ties() -> None:
    router: Router[str] = Router([("a.*", "first"), ("*.b", "second"), ("a.*", "third")])
    assert router.match("a.b") == ("first", "second", "third")
    assert [r.seq for r in router.match_routes("a.b")] == [0, 1, 2]


def test_several_targets_on_one_pattern() -> None:
    router: Router[str] = Router()
    router.add("a.b", "x")
    router.add("a.b", "y")
    router.add("a.b", "x", priority=3)
    assert router.match("a.b") == ("x", "x", "y")
    assert [(r.target, r.priority) for r in router.match_routes("a.b")] == [
        ("x", 3),
        ("x", 0),
        ("y", 0),
    ]
    assert len(router) == 3


def test_no_duplicates_through_several_globstars() -> None:
    router: Router[str] = Router([("**.**", "t"), ("a.**.**.**.b", "u"), ("**.a.**", "v")])
    assert router.match("a.a.b.b") == ("u", "v", "t")
    assert router.match("a.b") == ("u", "v", "t")


def test_many_globstars_do_not_blow_up() -> None:
    # Without memoising (node, index) this walks C(60, 20) paths and never finishes.
    pattern = ".".join(["**"] * 20 + ["z"])
    router: Router[int] = Router([(pattern, 1)])
    assert router.match(".".join(["a"] * 40)) == ()
    assert router.match(".".join(["a"] * 40 + ["z"])) == (1,)


def test_match_routes_returns_the_added_routes() -> None:
    router: Router[int] = Router()
    route = router.add("a.*", 7, priority=2)
    assert route == Route("a.*", 7, 2, 0)
    assert router.match_routes("a.b") == (route,)
    assert router.match_routes("b.b") == ()


# --- changing the routes -------------------------------------------------------------


def test_remove_one_target_or_all() -> None:
    router: Router[str] = Router([("a.*", "x"), ("a.*", "y"), ("a.*", "x", 2), ("a.**", "x")])
    assert router.remove("a.*", "x") == 2
    assert router.match("a.b") == ("y", "x")
    assert router.remove("a.*", "x") == 0
    assert router.remove("a.*") == 1
    assert router.match("a.b") == ("x",)
    assert "a.*" not in router
    assert [r.pattern for r in router.routes()] == ["a.**"]


def test_remove_unknown_pattern_removes_nothing() -> None:
    router: Router[str] = Router([("a.b.c", "x")])
    assert router.remove("a.b") == 0
    assert router.remove("a.b.c.d") == 0
    assert router.remove("a.*.c") == 0
    assert router.match("a.b.c") == ("x",)


def test_remove_keeps_routes_below_and_above() -> None:
    router: Router[str] = Router([("a", "top"), ("a.b", "mid"), ("a.b.c", "leaf")])
    assert router.remove("a.b") == 1
    assert router.match("a.b.c") == ("leaf",)
    assert router.match("a") == ("top",)
    assert router.remove("a.b.c") == 1
    assert router.match("a.b.c") == ()
    assert router.match("a") == ("top",)
    assert router.remove("a") == 1
    assert len(router) == 0
    router.add("a.b.c", "again")
    assert router.match("a.b.c") == ("again",)


def test_remove_compares_targets_with_equality() -> None:
    router: Router[tuple[str, int]] = Router([("a", ("x", 1))])
    assert router.remove("a", ("x", 1)) == 1
    assert len(router) == 0


def test_changes_clear_the_cache() -> None:
    router: Router[str] = Router([("a.*", "x")])
    assert router.match("a.b") == ("x",)
    router.add("a.b", "y")
    assert router.match("a.b") == ("y", "x")
    router.remove("a.*")
    assert router.match("a.b") == ("y",)


def test_routes_in_insertion_order_with_seq() -> None:
    router: Router[str] = Router([("b", "1"), ("a", "2", 9)])
    router.add("**", "3")
    assert router.routes() == [Route("b", "1", 0, 0), Route("a", "2", 9, 1), Route("**", "3", 0, 2)]
    router.remove("a")
    router.add("a", "4")
    assert [r.seq for r in router.routes()] == [0, 2, 3]


def test_copy_is_independent() -> None:
    original: Router[str] = Router([("a.*", "x"), ("a.b", "y")])
    assert original.match("a.b") == ("y", "x")
    clone = original.copy()
    clone.add("**", "z")
    clone.remove("a.b")
    assert original.match("a.b") == ("y", "x")
    assert clone.match("a.b") == ("x", "z")
    original.add("a.c", "w")
    assert "a.c" not in clone
    assert clone.match("a.c") == ("x", "z")
    assert len(original) == 3
    assert len(clone) == 2
    assert clone.add("q", "q").seq == 3  # seq keeps counting from the original's


def test_len_and_contains() -> None:
    router: Router[str] = Router()
    assert len(router) == 0
    assert "a" not in router
    router.add("a", "x")
    router.add("a", "y")
    router.add("b.**", "x")
    assert len(router) == 3
    assert "a" in router
    assert "b.**" in router
    assert "b" not in router
    assert "b.*" not in router
    assert 3 not in router
    router.remove("a", "x")
    assert "a" in router
    router.remove("a", "y")
    assert "a" not in router


# --- invalid patterns ----------------------------------------------------------------

INVALID = [
    ("", "empty"),
    (".", "segment 1 is empty"),
    ("a.", "segment 2 is empty"),
    (".a", "segment 1 is empty"),
    ("a..b", "segment 2 is empty"),
    ("***", "'***'"),
    ("a.***.b", "'***'"),
    ("a*", "'a*'"),
    ("*a", "'*a'"),
    ("a.b*.c", "'b*'"),
    ("a b", "'a b'"),
    (" a", "' a'"),
    ("a.b ", "'b '"),
    ("a\tb", "'a\\tb'"),
    ("a.b\n", "'b\\n'"),
    ("caf\u00e9", "'caf\u00e9'"),
    ("a.#", "'#'"),
    ("a.>", "'>'"),
    ("a.?", "'?'"),
    ("a.b:c", "'b:c'"),
]


@pytest.mark.parametrize(("pattern", "problem"), INVALID)
def test_invalid_pattern_raises(pattern: str, problem: str) -> None:
    for attempt in (
        lambda: validate_pattern(pattern),
        lambda: Router[str]().add(pattern, "x"),
        lambda: Router[str]([(pattern, "x")]),
        lambda: Router[str]().remove(pattern),
        lambda: naive_match(pattern, "a"),
    ):
        with pytest.raises(InvalidRoute) as caught:
            attempt()
        assert repr(pattern) in caught.value.message
        assert problem in caught.value.message
        assert isinstance(caught.value, UsageError)
        assert caught.value.reason == "invalid_route"


def test_non_string_pattern_raises() -> None:
    with pytest.raises(InvalidRoute, match="must be a str"):
        validate_pattern(5)  # type: ignore[arg-type]


def test_failed_add_changes_nothing() -> None:
    router: Router[str] = Router([("a", "x")])
    with pytest.raises(InvalidRoute):
        router.add("a..b", "y")
    assert len(router) == 1
    assert router.add("b", "z").seq == 1


@pytest.mark.parametrize(
    ("pattern", "segments"),
    [
        ("a", ("a",)),
        ("a.*.**", ("a", "*", "**")),
        ("**.**", ("**", "**")),
        ("A-1.x/y", ("A-1", "x/y")),
    ],
)
def test_validate_pattern_returns_segments(pattern: str, segments: tuple[str, ...]) -> None:
    assert validate_pattern(pattern) == segments


# --- the cache -----------------------------------------------------------------------


def test_cache_stays_bounded_for_distinct_types() -> None:
    router: Router[str] = Router([("order.**", "o"), ("*.created", "c")], cache_size=64)
    for n in range(5000):
        assert router.match(f"order.n{n}") == ("o",)
    info = router.cache_info()
    assert info.currsize == 64
    assert info.maxsize == 64
    assert info.misses == 5000


def test_cache_hits_and_evicts_least_recently_used() -> None:
    router: Router[str] = Router([("**", "x")], cache_size=2)
    router.match("a")
    router.match("b")
    router.match("a")  # a is now the most recently used
    router.match("c")  # evicts b
    assert router.cache_info() == CacheInfo(hits=1, misses=3, maxsize=2, currsize=2)
    router.match("a")
    assert router.cache_info().hits == 2
    router.match("b")
    assert router.cache_info().misses == 4


def test_cache_size_zero_disables_the_cache() -> None:
    router: Router[str] = Router([("**", "x")], cache_size=0)
    assert router.match("a") == ("x",)
    assert router.match("a") == ("x",)
    assert router.cache_info() == CacheInfo(hits=0, misses=2, maxsize=0, currsize=0)


def test_negative_cache_size_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="cache_size"):
        Router[str](cache_size=-1)


# --- properties against the naive matcher -------------------------------------------

WORDS = ["a", "b", "c"]
pattern_segments = st.lists(st.sampled_from([*WORDS, "*", "**"]), min_size=1, max_size=5)
patterns = pattern_segments.map(".".join)
types = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(".".join)
route_specs = st.lists(
    st.tuples(patterns, st.integers(min_value=-1, max_value=1)), min_size=0, max_size=25
)


def _expected(routes: list[Route[int]], signal_type: str) -> list[Route[int]]:
    """Matching routes sorted by the documented key, computed independently."""

    def key(route: Route[int]) -> tuple[int, int, int, int, int]:
        segments = route.pattern.split(".")
        exact = sum(1 for s in segments if s not in ("*", "**"))
        return (-route.priority, -exact, segments.count("**"), segments.count("*"), route.seq)

    return sorted((r for r in routes if naive_match(r.pattern, signal_type)), key=key)


def _build(specs: list[tuple[str, int]], cache_size: int = 1024) -> Router[int]:
    router: Router[int] = Router(cache_size=cache_size)
    for target, (pattern, priority) in enumerate(specs):
        router.add(pattern, target, priority)
    return router


@settings(max_examples=300)
@given(specs=route_specs, signal_types=st.lists(types, min_size=1, max_size=10))
def test_trie_agrees_with_naive_matcher(
    specs: list[tuple[str, int]], signal_types: list[str]
) -> None:
    router = _build(specs)
    uncached = _build(specs, cache_size=0)
    cold = {t: router.match_routes(t) for t in signal_types}
    for signal_type in signal_types:
        expected = _expected(router.routes(), signal_type)
        got = router.match_routes(signal_type)
        assert got == cold[signal_type] == uncached.match_routes(signal_type)
        assert list(got) == expected
        assert len({r.seq for r in got}) == len(got)
        assert router.match(signal_type) == tuple(r.target for r in expected)
        assert set(router.match(signal_type)) == {
            target for target, (p, _) in enumerate(specs) if naive_match(p, signal_type)
        }
    assert router.cache_info().hits >= len(signal_types)


@settings(max_examples=200)
@given(
    specs=route_specs,
    removals=st.lists(st.tuples(patterns, st.none() | st.integers(0, 24)), max_size=10),
    signal_types=st.lists(types, min_size=1, max_size=6),
)
def test_removal_agrees_with_a_list_model(
    specs: list[tuple[str, int]],
    removals: list[tuple[str, int | None]],
    signal_types: list[str],
) -> None:
    router = _build(specs)
    model = router.routes()
    for signal_type in signal_types:
        router.match(signal_type)  # warm the cache so removal must clear it
    for pattern, target in removals:
        gone = [r for r in model if r.pattern == pattern and target in (None, r.target)]
        model = [r for r in model if r not in gone]
        assert router.remove(pattern, target) == len(gone)
        assert router.routes() == model
        assert len(router) == len(model)
        assert (pattern in router) == any(r.pattern == pattern for r in model)
        for signal_type in signal_types:
            assert list(router.match_routes(signal_type)) == _expected(model, signal_type)


@given(specs=route_specs, extra=route_specs, signal_type=types)
def test_copy_matches_like_a_fresh_build(
    specs: list[tuple[str, int]], extra: list[tuple[str, int]], signal_type: str
) -> None:
    original = _build(specs)
    before = original.match_routes(signal_type)
    clone = original.copy()
    for pattern, priority in extra:
        clone.add(pattern, -1, priority)
    assert original.match_routes(signal_type) == before
    assert list(clone.match_routes(signal_type)) == _expected(clone.routes(), signal_type)
