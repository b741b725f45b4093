"""Subject, key and name rules of the substrate, and the reversible encoding of user strings.

NATS subjects and key-value keys are dot-separated tokens. This project allows only
``[-/_=A-Za-z0-9]`` inside a token (the key-value alphabet, which is stricter than the
subject one), so that every name is valid for both. Agent ids, capability names and other
strings a user chooses may hold anything; ``encode_token`` maps them into one token and
``decode_token`` maps them back. The encoding keeps ``[-/_A-Za-z0-9]`` as is and writes every
other byte of the UTF-8 form as ``=XX`` (upper-case hex), so ``=`` itself becomes ``=3D``:
plain ids stay readable in subjects and the mapping is a bijection.

Both backends validate through this module, so a bad name fails the same way everywhere:
with ``InvalidName`` naming the culprit, before anything is sent.
"""

from __future__ import annotations

import re
from functools import lru_cache

from agentcluster.errors import InvalidName

__all__ = [
    "decode_token",
    "encode_token",
    "key_matches_prefix",
    "subject_matches",
    "validate_key",
    "validate_name",
    "validate_prefix",
    "validate_subject",
]

_TOKEN_SAFE = frozenset(b"-/_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_TOKEN_RE = re.compile(r"[-/_=A-Za-z0-9]+")
_NAME_RE = re.compile(r"[-_A-Za-z0-9]+")
_HEX = "0123456789ABCDEF"


def encode_token(text: str) -> str:
    """Map any non-empty string to one valid token, reversibly (see the module docstring)."""
    if not text:
        raise InvalidName("token", text, "an empty string cannot be encoded into a token")
    if text.isascii() and all(ord(c) in _TOKEN_SAFE for c in text):
        return text
    out: list[str] = []
    for byte in text.encode("utf-8"):
        if byte in _TOKEN_SAFE:
            out.append(chr(byte))
        else:
            out.append("=" + _HEX[byte >> 4] + _HEX[byte & 15])
    return "".join(out)


def decode_token(token: str) -> str:
    """Invert ``encode_token``; a token that no string encodes to raises ``InvalidName``."""
    if "=" not in token:
        if not _TOKEN_RE.fullmatch(token):
            raise InvalidName("token", token, "not an encoded token")
        return token
    raw = bytearray()
    i = 0
    n = len(token)
    while i < n:
        c = token[i]
        if c == "=":
            pair = token[i + 1 : i + 3]
            if len(pair) != 2 or any(h not in _HEX for h in pair):
                raise InvalidName("token", token, f"bad escape at offset {i}")
            raw.append(int(pair, 16))
            i += 3
        else:
            if ord(c) not in _TOKEN_SAFE:
                raise InvalidName("token", token, f"character {c!r} is not allowed")
            raw.append(ord(c))
            i += 1
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidName("token", token, "escapes do not form UTF-8") from exc
    if encode_token(text) != token:
        raise InvalidName("token", token, "not in canonical encoded form")
    return text


@lru_cache(maxsize=4096)
def _check_subject(subject: str, wildcards: bool) -> str | None:
    if not subject:
        return "empty"
    tokens = subject.split(".")
    last = len(tokens) - 1
    for i, tok in enumerate(tokens):
        if not tok:
            return "empty token (leading, trailing or doubled '.')"
        if tok == "*" or tok == ">":
            if not wildcards:
                return f"wildcard {tok!r} is not allowed here"
            if tok == ">" and i != last:
                return "'>' must be the last token"
            continue
        if not _TOKEN_RE.fullmatch(tok):
            return f"token {tok!r} has characters outside [-/_=A-Za-z0-9]"
    return None


def validate_subject(subject: str, *, wildcards: bool = False) -> str:
    """Return ``subject`` if it is valid (wildcards ``*`` and ``>`` only where allowed)."""
    problem = _check_subject(subject, wildcards)
    if problem is not None:
        raise InvalidName("subject", subject, problem)
    return subject


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid key-value key: tokens of ``[-/_=A-Za-z0-9]``."""
    problem = _check_subject(key, False) if isinstance(key, str) else "not a string"
    if problem is not None:
        raise InvalidName("key", str(key), problem)
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is empty (every key) or whole tokens (``nodes``, ``a.b``)."""
    if prefix == "":
        return prefix
    problem = _check_subject(prefix, False)
    if problem is not None:
        raise InvalidName("key prefix", prefix, problem)
    return prefix


def validate_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid bucket, stream or consumer name (``[-_A-Za-z0-9]``)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidName(kind, str(name), "use only letters, digits, '-' and '_'")
    return name


def key_matches_prefix(key: str, prefix: str) -> bool:
    """Whether ``key`` lies under ``prefix``: the empty prefix holds every key, ``n1`` holds
    ``n1.x`` and ``n1.x.y`` but neither ``n1`` itself nor ``n10.x`` (NATS's ``n1.>``)."""
    return prefix == "" or (key.startswith(prefix) and key[len(prefix) : len(prefix) + 1] == ".")


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` is one or more tokens."""
    if "*" not in pattern and ">" not in pattern:
        return pattern == subject
    pt = pattern.split(".")
    st = subject.split(".")
    for i, tok in enumerate(pt):
        if tok == ">":
            return len(st) > i
        if i >= len(st):
            return False
        if tok != "*" and tok != st[i]:
            return False
    return len(pt) == len(st)
