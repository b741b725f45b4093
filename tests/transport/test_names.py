"""Name rules and the reversible token encoding, checked against simple oracles."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.errors import InvalidName
from agentcluster.transport.names import (
    decode_token,
    encode_token,
    key_matches_prefix,
    subject_matches,
    validate_key,
    validate_name,
    validate_prefix,
    validate_subject,
)

_TOKEN = re.compile(r"[-/_=A-Za-z0-9]+")


@given(st.text(min_size=1))
def test_any_string_encodes_to_one_valid_token_and_back(text: str) -> None:
    token = encode_token(text)
    assert _TOKEN.fullmatch(token)
    assert "." not in token
    assert decode_token(token) == text


@given(st.text(min_size=1), st.text(min_size=1))
def test_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_token(a) != encode_token(b)


def test_plain_ids_stay_readable() -> None:
    assert encode_token("order-42/eu_west") == "order-42/eu_west"
    assert encode_token("a.b") == "a=2Eb"
    assert encode_token("x=y") == "x=3Dy"
    assert encode_token("é") == "=C3=A9"


@pytest.mark.parametrize("token", ["a=2", "a=ZZ", "a b", "a=2eb", "=FF", "x=41"])
def test_tokens_no_string_encodes_to_are_refused(token: str) -> None:
    with pytest.raises(InvalidName):
        decode_token(token)


def test_empty_string_cannot_be_a_token() -> None:
    with pytest.raises(InvalidName):
        encode_token("")


_tokens = st.sampled_from(["a", "b", "c"])


def _naive_match(pattern: str, subject: str) -> bool:
    regex = "^" + ".".join(
        "[^.]+" if t == "*" else ".+" if t == ">" else re.escape(t) for t in pattern.split(".")
    )
    return re.fullmatch(regex + "$", subject) is not None


@given(
    st.lists(st.sampled_from(["a", "b", "*"]), min_size=1, max_size=4),
    st.booleans(),
    st.lists(_tokens, min_size=1, max_size=5),
)
def test_subject_matching_agrees_with_a_regex(
    pattern_tokens: list[str], tail: bool, subject_tokens: list[str]
) -> None:
    pattern = ".".join([*pattern_tokens, ">"] if tail else pattern_tokens)
    subject = ".".join(subject_tokens)
    assert subject_matches(pattern, subject) == _naive_match(pattern, subject)


def test_prefixes_are_whole_tokens() -> None:
    assert key_matches_prefix("n1.a", "n1")
    assert key_matches_prefix("n1.a.b", "n1.a")
    assert not key_matches_prefix("n10.a", "n1")
    assert not key_matches_prefix("n1", "n1")
    assert key_matches_prefix("anything", "")


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (validate_subject, "a..b"),
        (validate_subject, "a.*"),
        (validate_key, "a.>"),
        (validate_key, "a b"),
        (validate_prefix, "a."),
        (lambda v: validate_name("bucket", v), "has.dot"),
        (lambda v: validate_name("stream", v), ""),
    ],
)
def test_invalid_names_name_the_culprit(check: object, value: str) -> None:
    with pytest.raises(InvalidName) as info:
        check(value)  # type: ignore[operator]
    assert value in str(info.value)


def test_wildcards_only_where_allowed() -> None:
    assert validate_subject("a.*.c.>", wildcards=True) == "a.*.c.>"
    with pytest.raises(InvalidName):
        validate_subject("a.>.c", wildcards=True)
