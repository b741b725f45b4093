"""Decoding stored records: typed field access whose every failure names the record and field.

Records in the store are JSON objects written by this version or an older one; a field
with the wrong type is a ``CorruptRecord``, never a half-read record or a bare KeyError.
"""

from __future__ import annotations

from typing import Any

import orjson

from agentcluster.errors import CorruptRecord

__all__ = ["RecordFields", "decode_object"]


def decode_object(kind: str, data: bytes) -> dict[str, Any]:
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CorruptRecord(kind, f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CorruptRecord(kind, "not a JSON object")
    return raw


class RecordFields:
    """Typed access to a decoded record; every failure names the record and the field."""

    __slots__ = ("_kind", "_raw")

    _MISSING: Any = object()

    def __init__(self, kind: str, raw: dict[str, Any]) -> None:
        self._kind = kind
        self._raw = raw

    def _get(self, name: str, default: Any) -> Any:
        value = self._raw.get(name, default)
        if value is RecordFields._MISSING:
            raise CorruptRecord(self._kind, f"field {name!r} is missing")
        return value

    def _bad(self, name: str, expected: str, value: Any) -> CorruptRecord:
        return CorruptRecord(self._kind, f"field {name!r} should be {expected}, not {value!r}")

    def text(self, name: str, default: Any = _MISSING) -> str:
        value = self._get(name, default)
        if not isinstance(value, str):
            raise self._bad(name, "a string", value)
        return value

    def optional_text(self, name: str) -> str | None:
        value = self._raw.get(name)
        if value is not None and not isinstance(value, str):
            raise self._bad(name, "a string or null", value)
        return value

    def integer(self, name: str, default: Any = _MISSING) -> int:
        value = self._get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(name, "an integer", value)
        return value

    def number(self, name: str, default: Any = _MISSING) -> float:
        value = self._get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._bad(name, "a number", value)
        return float(value)

    def text_map(self, name: str) -> dict[str, str]:
        value = self._get(name, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._bad(name, "an object of strings", value)
        return value

    def number_map(self, name: str) -> dict[str, float]:
        value = self._get(name, {})
        if not isinstance(value, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
        ):
            raise self._bad(name, "an object of numbers", value)
        return {k: float(v) for k, v in value.items()}

    def text_tuple(self, name: str) -> tuple[str, ...]:
        value = self._get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(name, "a list of strings", value)
        return tuple(value)

    def mapping(self, name: str) -> dict[str, Any]:
        value = self._get(name, {})
        if not isinstance(value, dict):
            raise self._bad(name, "an object", value)
        return value
