"""A synchronous event bus in the manner of Erlang's ``:telemetry``.

Code emits an event — a tuple of names such as ``("agentcluster", "agent", "restarted")``
— with numeric measurements and free-form metadata; handlers attached to a prefix of the
event receive it, synchronously and in attach order. The bus decides nothing: it only
lets metrics exporters, loggers, the dashboard and tests watch the runtime.

The runtime emits on hot paths, so ``emit`` costs one attribute test when nothing is
attached, and otherwise one dict lookup per prefix length that has handlers (at most
``len(event) + 1``), never a scan of every handler. Callers whose metadata is costly to
build ask ``wants(event)`` first.

A handler that raises is detached before anything else happens, logged on the
``agentcluster.telemetry`` logger, and reported to the remaining handlers as
``("agentcluster", "telemetry", "handler_failed")``; the emitter never sees the error.
Because the failing handler is gone before the report goes out, a handler that fails on
the report itself cannot make it loop.

Handlers are kept in copy-on-write tuples, so attaching or detaching from inside a
handler is safe: a handler detached mid-emit is not called again, one attached mid-emit
receives events from the next ``emit`` on. The bus takes no lock: attach and detach from
the thread that emits.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from agentcluster.errors import ConfigurationError

__all__ = [
    "HANDLER_FAILED",
    "Event",
    "EventRecorder",
    "Handler",
    "RecordedEvent",
    "Telemetry",
    "attach",
    "detach",
    "emit",
    "telemetry",
]

Event = tuple[str, ...]
Handler = Callable[[Event, Mapping[str, float], Mapping[str, Any]], None]

HANDLER_FAILED: Event = ("agentcluster", "telemetry", "handler_failed")

_log = logging.getLogger("agentcluster.telemetry")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _as_event(prefix: Event | str) -> Event:
    """A prefix given as a tuple or a dotted string; ``()`` and ``""`` match everything."""
    if isinstance(prefix, str):
        if not prefix:
            return ()
        parts = tuple(prefix.split("."))
    elif isinstance(prefix, tuple):
        parts = prefix
    else:
        raise TypeError(f"an event prefix is a tuple of str or a dotted str, got {prefix!r}")
    for part in parts:
        if not isinstance(part, str) or not part:
            raise ValueError(f"event prefix {prefix!r} has an empty or non-str name")
    return parts


class _Entry(NamedTuple):
    seq: int
    handler_id: str
    prefix: Event
    handler: Handler


def _attach_order(entry: _Entry) -> int:
    return entry.seq


class Telemetry:
    """An event bus: ``attach`` handlers to event prefixes, ``emit`` events to them."""

    __slots__ = ("_by_id", "_by_prefix", "_lengths", "_seq")

    def __init__(self) -> None:
        self._by_prefix: dict[Event, tuple[_Entry, ...]] = {}
        self._by_id: dict[str, _Entry] = {}
        self._lengths: tuple[int, ...] = ()
        self._seq = 0

    @property
    def enabled(self) -> bool:
        """Whether any handler is attached."""
        return bool(self._by_id)

    def attach(
        self, prefix: Event | str, handler: Handler, *, handler_id: str | None = None
    ) -> str:
        """Call ``handler`` for every event starting with ``prefix``; returns its id.

        Raises ``ValueError`` when ``handler_id`` is already attached.
        """
        if not callable(handler):
            raise TypeError(f"a telemetry handler must be callable, got {handler!r}")
        key = _as_event(prefix)
        self._seq += 1
        if handler_id is None:
            name = getattr(handler, "__qualname__", type(handler).__qualname__)
            handler_id = f"{name}#{self._seq}"
            while handler_id in self._by_id:
                self._seq += 1
                handler_id = f"{name}#{self._seq}"
        elif handler_id in self._by_id:
            raise ValueError(f"a telemetry handler with id {handler_id!r} is already attached")
        entry = _Entry(self._seq, handler_id, key, handler)
        self._by_id[handler_id] = entry
        self._by_prefix[key] = (*self._by_prefix.get(key, ()), entry)
        self._reindex()
        return handler_id

    def detach(self, handler_id: str) -> bool:
        """Remove a handler; False when no handler has that id."""
        entry = self._by_id.pop(handler_id, None)
        if entry is None:
            return False
        remaining = tuple(e for e in self._by_prefix[entry.prefix] if e is not entry)
        if remaining:
            self._by_prefix[entry.prefix] = remaining
        else:
            del self._by_prefix[entry.prefix]
        self._reindex()
        return True

    def _reindex(self) -> None:
        self._lengths = tuple(sorted({len(prefix) for prefix in self._by_prefix}))

    def handlers(self) -> list[tuple[str, Event]]:
        """``(handler id, prefix)`` of every attached handler, in attach order."""
        return [(e.handler_id, e.prefix) for e in self._by_id.values()]

    def wants(self, event: Event) -> bool:
        """Whether some handler would receive ``event``."""
        if not self._lengths:
            return False
        n = len(event)
        by_prefix = self._by_prefix
        for length in self._lengths:
            if length > n:
                break
            if event[:length] in by_prefix:
                return True
        return False

    def emit(
        self,
        event: Event,
        measurements: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Call every handler whose prefix starts ``event``; never raises a handler's error."""
        if not self._lengths:
            return
        if isinstance(event, str):
            raise TypeError(f"an event is a tuple of names, not a str: {event!r}")
        n = len(event)
        by_prefix = self._by_prefix
        matched: tuple[_Entry, ...] = ()
        merged = False
        for length in self._lengths:
            if length > n:
                break
            found = by_prefix.get(event[:length])
            if found is not None:
                if matched:
                    matched = (*matched, *found)
                    merged = True
                else:
                    matched = found
        if not matched:
            return
        if merged:
            matched = tuple(sorted(matched, key=_attach_order))
        m = _EMPTY if measurements is None else measurements
        md = _EMPTY if metadata is None else metadata
        by_id = self._by_id
        for entry in matched:
            if by_id.get(entry.handler_id) is not entry:
                continue  # detached by an earlier handler of this emit
            try:
                entry.handler(event, m, md)
            except Exception as exc:
                self._handler_failed(entry, event, exc)

    def _handler_failed(self, entry: _Entry, event: Event, error: Exception) -> None:
        if self._by_id.get(entry.handler_id) is entry:
            self.detach(entry.handler_id)
        _log.error(
            "telemetry handler %r failed on event %s and was detached",
            entry.handler_id,
            ".".join(event),
            exc_info=error,
        )
        self.emit(
            HANDLER_FAILED,
            None,
            {"handler_id": entry.handler_id, "event": event, "error": error},
        )


class RecordedEvent(NamedTuple):
    event: Event
    measurements: Mapping[str, float]
    metadata: Mapping[str, Any]


class EventRecorder:
    """A handler that keeps the last ``maxlen`` events it received (tests, the CLI).

    ``telemetry.attach("agentcluster.agent", recorder)``; ``recorder.events("agentcluster")``.
    Measurements and metadata are copied, so later changes by the emitter do not show.
    """

    __slots__ = ("_records", "maxlen")

    def __init__(self, maxlen: int = 1000) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ConfigurationError(f"EventRecorder.maxlen must be an int >= 1, got {maxlen!r}")
        self.maxlen = maxlen
        self._records: deque[RecordedEvent] = deque(maxlen=maxlen)

    def __call__(
        self, event: Event, measurements: Mapping[str, float], metadata: Mapping[str, Any]
    ) -> None:
        self._records.append(RecordedEvent(event, dict(measurements), dict(metadata)))

    def events(self, prefix: Event | str | None = None) -> list[RecordedEvent]:
        """The kept events, oldest first; only those starting with ``prefix`` when given."""
        if prefix is None:
            return list(self._records)
        key = _as_event(prefix)
        n = len(key)
        return [r for r in self._records if r.event[:n] == key]

    def clear(self) -> None:
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)


telemetry = Telemetry()
"""The process-wide bus; ``emit``, ``attach`` and ``detach`` below are bound to it."""

emit = telemetry.emit
attach = telemetry.attach
detach = telemetry.detach
