"""Signals on the wire: CloudEvents 1.0 JSON, structured mode.

Every signal crosses a process boundary as one JSON object that any CloudEvents tool can
read: the context attributes and extensions as top-level members, the payload in ``data``
(or ``data_base64`` for bytes). A batch is a JSON array of such objects, the CloudEvents
JSON batch format, and is cut by bytes, never by count, so it fits one NATS message.

Theory of operation:

- **Deadlines are budgets.** A signal's ``deadline`` is a point on the *sender's*
  monotonic clock, which means nothing to another machine. On the wire it becomes the
  remaining budget, ``deadlinems`` (rounded up to whole milliseconds), and the receiver
  re-anchors it on its own monotonic clock: ``deadline = now + deadlinems / 1000``. No
  two clocks need to agree; transit time is simply spent from the budget.
- **Time comes from the id.** A UUIDv7 id carries its creation millisecond, so a signal
  need not store ``time``: the encoder derives the RFC 3339 ``time`` from the id for other
  CloudEvents consumers, and a decoded signal keeps the string it was given.
- **Pure.** Nothing here reads a clock or does I/O; the caller passes ``now``. Encoding
  builds one dict and calls ``orjson.dumps`` once; decoding validates every attribute and
  names the culprit in ``SignalDecodeError.attribute`` (``"<json>"`` for the document,
  ``"[3].type"`` inside a batch). Already-parsed input skips the size check, having no
  byte size of its own.
- ``callchain`` travels as one string, the ids joined by ``,`` with ``%`` and ``,``
  percent-encoded inside each id, so every id survives the trip.
- ``null`` members are treated as absent, as the CloudEvents JSON format requires.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import orjson

from agentcluster.core.ids import id_timestamp_ms
from agentcluster.core.signal import SPECVERSION, Signal
from agentcluster.errors import InvalidSignal, SignalDecodeError, SignalTooLarge

__all__ = [
    "DEFAULT_MAX_SIGNAL_BYTES",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "split_batches",
]

DEFAULT_MAX_SIGNAL_BYTES = 1024 * 1024 - 64 * 1024
"""The NATS default ``max_payload`` (1 MiB) less 64 KiB for headers and envelope."""

# Re-anchoring a budget adds float noise far below a microsecond; without this slack,
# rounding up would grow a budget by a millisecond on every hop.
_NOISE_MS = 0.001

_KNOWN = frozenset(
    {
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
)
# Optional string attributes, in wire order; the flag says whether "" is forbidden.
_OPTIONAL_STR: tuple[tuple[str, bool], ...] = (
    ("subject", True),
    ("datacontenttype", True),
    ("dataschema", True),
    ("target", False),
    ("correlationid", False),
    ("causationid", False),
    ("traceparent", False),
)
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))",
    re.ASCII,
)
_EPOCH = datetime(1970, 1, 1)
_MAX_TIME_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000) - _EPOCH) // timedelta(milliseconds=1)
_BYTES_LIKE = (bytes, bytearray, memoryview)


# --- encoding -----------------------------------------------------------------------


def encode(signal: Signal, now: float, *, max_bytes: int = DEFAULT_MAX_SIGNAL_BYTES) -> bytes:
    """The signal as CloudEvents JSON; ``now`` is the local monotonic time.

    Raises ``InvalidSignal`` when an attribute cannot be represented and
    ``SignalTooLarge`` when the result exceeds ``max_bytes``.
    """
    raw = _dump(signal, now)
    if len(raw) > max_bytes:
        raise SignalTooLarge(len(raw), max_bytes, signal_type=signal.type)
    return raw


def encode_batch(
    signals: Iterable[Signal], now: float, *, max_bytes: int = DEFAULT_MAX_SIGNAL_BYTES
) -> bytes:
    """The signals as one CloudEvents JSON batch (an array); the whole must fit ``max_bytes``."""
    raw = _join([encode(s, now, max_bytes=max_bytes) for s in signals])
    if len(raw) > max_bytes:
        raise SignalTooLarge(len(raw), max_bytes)
    return raw


def split_batches(
    signals: Iterable[Signal], now: float, max_bytes: int = DEFAULT_MAX_SIGNAL_BYTES
) -> list[bytes]:
    """Encoded batches, in order, each at most ``max_bytes``; each is filled before the next.

    A signal that does not fit a batch of its own raises ``SignalTooLarge``.
    """
    batches: list[bytes] = []
    current: list[bytes] = []
    size = 2  # the brackets
    for signal in signals:
        part = _dump(signal, now)
        n = len(part)
        if n + 2 > max_bytes:
            raise SignalTooLarge(n + 2, max_bytes, signal_type=signal.type)
        grown = size + n + (1 if current else 0)
        if grown > max_bytes:
            batches.append(_join(current))
            current = [part]
            size = 2 + n
        else:
            current.append(part)
            size = grown
    if current:
        batches.append(_join(current))
    return batches


def _join(parts: list[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


def _dump(signal: Signal, now: float) -> bytes:
    signal_id = signal.id
    if not isinstance(signal_id, str) or not signal_id:
        raise InvalidSignal(f"signal id must be a non-empty string, got {_show(signal_id)}")
    source = signal.source
    if not isinstance(source, str) or not source:
        raise InvalidSignal(f"signal source must be a non-empty string, got {_show(source)}")
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": signal_id,
        "source": source,
        "type": signal.type,
    }
    time = signal.time
    if time is None:
        ms = id_timestamp_ms(signal_id)
        if ms is not None and 0 <= ms <= _MAX_TIME_MS:
            event["time"] = _format_ms(ms)
    elif isinstance(time, str) and _is_rfc3339(time):
        event["time"] = time
    else:
        raise InvalidSignal(f"signal time must be an RFC 3339 string, got {_show(time)}")
    for name, nonempty in _OPTIONAL_STR:
        value = getattr(signal, name)
        if value is not None:
            if not isinstance(value, str) or (nonempty and not value):
                what = "a non-empty string" if nonempty else "a string"
                raise InvalidSignal(f"signal {name} must be {what}, got {_show(value)}")
            event[name] = value
    deadline = signal.deadline
    if deadline is not None:
        if (
            isinstance(deadline, bool)
            or not isinstance(deadline, int | float)
            or not math.isfinite(deadline)
        ):
            raise InvalidSignal(f"signal deadline must be a finite number, got {_show(deadline)}")
        event["deadlinems"] = max(0, math.ceil((deadline - now) * 1000.0 - _NOISE_MS))
    if signal.callchain:
        event["callchain"] = ",".join(map(_quote_link, signal.callchain))
    if signal.extensions:
        for name, value in signal.extensions.items():
            _check_extension(name, value)
            if value is not None:
                event[name] = value
    data = signal.data
    if data is not None:
        if isinstance(data, _BYTES_LIKE):
            event["data_base64"] = binascii.b2a_base64(data, newline=False).decode("ascii")
        else:
            event["data"] = data
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError as exc:
        raise _encode_error(data, exc) from exc


def _encode_error(data: Any, exc: orjson.JSONEncodeError) -> InvalidSignal:
    try:
        orjson.dumps(data)
    except orjson.JSONEncodeError as data_exc:
        return InvalidSignal(f"signal attribute 'data' cannot be encoded as JSON: {data_exc}")
    return InvalidSignal(f"signal cannot be encoded as JSON: {exc}")


def _quote_link(link: str) -> str:
    if not isinstance(link, str) or not link:
        raise InvalidSignal(f"callchain ids must be non-empty strings, got {_show(link)}")
    if "%" in link or "," in link:
        return link.replace("%", "%25").replace(",", "%2C")
    return link


def _check_extension(name: object, value: object) -> None:
    if not isinstance(name, str) or _EXTENSION_NAME.fullmatch(name) is None:
        raise InvalidSignal(
            f"extension attribute name {name!r} must be lowercase letters a-z and digits 0-9"
        )
    if name in _KNOWN:
        raise InvalidSignal(f"extension attribute {name!r} would shadow a signal attribute")
    if value is not None and not isinstance(value, str | int):
        raise InvalidSignal(
            f"extension attribute {name!r} must be a string, integer or boolean, "
            f"got {type(value).__name__}"
        )


def _format_ms(ms: int) -> str:
    return f"{_format_second(ms // 1000)}.{ms % 1000:03d}Z"


@lru_cache(maxsize=64)
def _format_second(second: int) -> str:
    return (_EPOCH + timedelta(seconds=second)).isoformat(timespec="seconds")


# --- decoding -----------------------------------------------------------------------


def decode(
    raw: bytes | bytearray | str | Mapping[str, Any],
    now: float,
    *,
    max_bytes: int = DEFAULT_MAX_SIGNAL_BYTES,
) -> Signal:
    """A signal from CloudEvents JSON (or its parsed mapping); ``now`` re-anchors the deadline.

    Raises ``SignalDecodeError`` naming the offending attribute, and ``SignalTooLarge``
    when the raw input exceeds ``max_bytes``.
    """
    event = _load(raw, max_bytes)
    if not isinstance(event, Mapping):
        raise SignalDecodeError("<json>", f"expected a JSON object, got {_json_kind(event)}")
    return _from_event(event, now)


def decode_batch(
    raw: bytes | bytearray | str | list[Any],
    now: float,
    *,
    max_bytes: int = DEFAULT_MAX_SIGNAL_BYTES,
) -> list[Signal]:
    """Signals from a CloudEvents JSON batch; an error's attribute starts with the index."""
    events = _load(raw, max_bytes)
    if not isinstance(events, list | tuple):
        raise SignalDecodeError("<json>", f"expected a JSON array, got {_json_kind(events)}")
    signals: list[Signal] = []
    for index, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise SignalDecodeError(
                f"[{index}]", f"expected a JSON object, got {_json_kind(event)}"
            )
        try:
            signals.append(_from_event(event, now))
        except SignalDecodeError as exc:
            raise SignalDecodeError(f"[{index}].{exc.attribute}", exc.problem) from None
    return signals


def _load(raw: object, max_bytes: int) -> Any:
    if isinstance(raw, str):
        size = len(raw)
        if size * 4 > max_bytes:
            size = len(raw.encode("utf-8", "surrogatepass"))
    elif isinstance(raw, _BYTES_LIKE):
        size = memoryview(raw).nbytes
    else:
        return raw
    if size > max_bytes:
        raise SignalTooLarge(size, max_bytes)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SignalDecodeError("<json>", f"not valid JSON: {exc}") from None


def _from_event(event: Mapping[str, Any], now: float) -> Signal:
    get = event.get
    specversion = get("specversion")
    if specversion != SPECVERSION:
        if specversion is None:
            raise SignalDecodeError("specversion", "missing")
        raise SignalDecodeError("specversion", f"must be {SPECVERSION!r}, got {_show(specversion)}")
    signal_id = _required(get("id"), "id")
    source = _required(get("source"), "source")
    signal_type = _required(get("type"), "type")

    optional: dict[str, str | None] = {}
    for name, nonempty in _OPTIONAL_STR:
        value = get(name)
        if value is not None and (not isinstance(value, str) or (nonempty and not value)):
            what = "a non-empty string" if nonempty else "a string"
            raise SignalDecodeError(name, f"must be {what}, got {_show(value)}")
        optional[name] = value

    time = get("time")
    if time is not None and (not isinstance(time, str) or not _is_rfc3339(time)):
        raise SignalDecodeError("time", f"must be an RFC 3339 timestamp, got {_show(time)}")

    budget = get("deadlinems")
    deadline = None if budget is None else _deadline(budget, now)

    chain = get("callchain")
    callchain = () if chain is None else _parse_callchain(chain)

    data = get("data")
    encoded = get("data_base64")
    if encoded is not None:
        if data is not None:
            raise SignalDecodeError("data_base64", "an event carries data or data_base64, not both")
        data = _b64decode(encoded)

    extensions: dict[str, Any] = {}
    extra = event.keys() - _KNOWN
    if extra:
        for name, value in event.items():
            if name in extra and value is not None:
                _check_decoded_extension(name, value)
                extensions[name] = value

    return Signal(
        signal_type,
        data,
        id=signal_id,
        source=source,
        time=time,
        deadline=deadline,
        callchain=callchain,
        extensions=extensions,
        **optional,
    )


def _required(value: object, name: str) -> str:
    if value is None:
        raise SignalDecodeError(name, "missing")
    if not isinstance(value, str):
        raise SignalDecodeError(name, f"must be a string, got {_json_kind(value)}")
    if not value:
        raise SignalDecodeError(name, "must not be empty")
    return value


def _deadline(budget: object, now: float) -> float:
    ms: int | None = None
    if isinstance(budget, int) and not isinstance(budget, bool):
        ms = budget
    elif isinstance(budget, float) and budget.is_integer():
        ms = int(budget)
    elif isinstance(budget, str) and budget.isascii() and budget.isdigit():
        try:
            ms = int(budget)
        except ValueError:  # more digits than int() accepts
            ms = None
    if ms is not None and ms >= 0:
        try:
            return now + ms / 1000.0
        except OverflowError:
            pass
    raise SignalDecodeError(
        "deadlinems", f"must be a non-negative integer of milliseconds, got {_show(budget)}"
    )


def _parse_callchain(chain: object) -> tuple[str, ...]:
    if not isinstance(chain, str):
        raise SignalDecodeError("callchain", f"must be a string, got {_json_kind(chain)}")
    if not chain:
        return ()
    links = chain.split(",")
    if "%" in chain:
        try:
            links = [unquote(link, errors="strict") if "%" in link else link for link in links]
        except UnicodeDecodeError as exc:
            raise SignalDecodeError("callchain", f"bad percent-encoding: {exc}") from None
    if "" in links:
        raise SignalDecodeError("callchain", "ids must not be empty")
    return tuple(links)


def _b64decode(encoded: object) -> bytes:
    if not isinstance(encoded, str):
        raise SignalDecodeError("data_base64", f"must be a string, got {_json_kind(encoded)}")
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError as exc:
        raise SignalDecodeError("data_base64", f"not valid base64: {exc}") from None


def _check_decoded_extension(name: object, value: object) -> None:
    if not isinstance(name, str):
        raise SignalDecodeError(repr(name), "attribute names must be strings")
    if _EXTENSION_NAME.fullmatch(name) is None:
        raise SignalDecodeError(
            name, "extension attribute names must be lowercase letters a-z and digits 0-9"
        )
    if not isinstance(value, str | int):
        raise SignalDecodeError(
            name, f"extension values must be a string, integer or boolean, got {_json_kind(value)}"
        )


# --- shared helpers -----------------------------------------------------------------


def _is_rfc3339(text: str) -> bool:
    match = _RFC3339.fullmatch(text)
    if match is None:
        return False
    # Two ASCII digits compare as strings the way they compare as numbers.
    year, month, day, hour, minute, second, off_hour, off_minute = match.groups()
    if not ("01" <= month <= "12" and day >= "01" and hour <= "23" and minute <= "59"):
        return False
    if second > "60" or (day > "28" and int(day) > calendar.monthrange(int(year), int(month))[1]):
        return False
    return off_hour is None or (off_hour <= "23" and off_minute <= "59")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
