"""The signal: a CloudEvents 1.0 event with the extensions the runtime needs.

A ``Signal`` is built on every hop, so it is a plain slotted object rather than a
validated model: construction checks only what routing relies on (a non-empty ``type``)
and defers everything else to the codec, which validates all of it at the edge. Treat a
signal as immutable; ``evolve`` returns a changed copy.

Attributes beyond CloudEvents' own:

- ``target`` — the agent id (or other target) the signal is addressed to;
- ``correlationid`` / ``causationid`` — the conversation it belongs to and the signal
  that caused it;
- ``traceparent`` — W3C trace context;
- ``deadline`` — an absolute time on the *local* monotonic clock, or None. On the wire it
  travels as the remaining budget in milliseconds (``deadlinems``) and is re-anchored on
  the receiver's clock, so no two machines need synchronised clocks;
- ``callchain`` — the ids of the agents whose calls are waiting on this one, so that a
  call cycle is found at once.

``time`` need not be stored: when absent it is read from the UUIDv7 id, which carries
its creation millisecond.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentcluster.core import ids as _ids
from agentcluster.errors import InvalidSignal

__all__ = ["DEFAULT_SOURCE", "SPECVERSION", "Signal"]

SPECVERSION = "1.0"
DEFAULT_SOURCE = "agentcluster"
_JSON = "application/json"


class Signal:
    __slots__ = (
        "callchain",
        "causationid",
        "correlationid",
        "data",
        "datacontenttype",
        "dataschema",
        "deadline",
        "extensions",
        "id",
        "source",
        "subject",
        "target",
        "time",
        "traceparent",
        "type",
    )

    def __init__(
        self,
        type: str,
        data: Any = None,
        *,
        id: str | None = None,
        source: str = DEFAULT_SOURCE,
        subject: str | None = None,
        time: str | None = None,
        datacontenttype: str | None = _JSON,
        dataschema: str | None = None,
        target: str | None = None,
        correlationid: str | None = None,
        causationid: str | None = None,
        traceparent: str | None = None,
        deadline: float | None = None,
        callchain: tuple[str, ...] = (),
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        if not type or not isinstance(type, str):
            raise InvalidSignal(f"signal type must be a non-empty string, got {type!r}")
        self.type = type
        self.data = data
        self.id = id if id is not None else _ids.new_id()
        self.source = source
        self.subject = subject
        self.time = time
        self.datacontenttype = datacontenttype
        self.dataschema = dataschema
        self.target = target
        self.correlationid = correlationid
        self.causationid = causationid
        self.traceparent = traceparent
        self.deadline = deadline
        self.callchain = callchain
        self.extensions: Mapping[str, Any] = extensions if extensions is not None else {}

    def evolve(self, **changes: Any) -> Signal:
        """A copy with some attributes changed; the id is kept unless given."""
        new = Signal.__new__(Signal)
        for name in Signal.__slots__:
            object.__setattr__(new, name, changes.pop(name, getattr(self, name)))
        if changes:
            raise InvalidSignal(f"unknown signal attributes: {sorted(changes)}")
        if not new.type or not isinstance(new.type, str):
            raise InvalidSignal(f"signal type must be a non-empty string, got {new.type!r}")
        return new

    def created_ms(self) -> int | None:
        """Creation time in Unix milliseconds, read from the UUIDv7 id (None for other ids)."""
        return _ids.id_timestamp_ms(self.id)

    def caused(self, type: str, data: Any = None, **attrs: Any) -> Signal:
        """A new signal caused by this one: same correlation, causation set, trace kept."""
        attrs.setdefault("correlationid", self.correlationid or self.id)
        attrs.setdefault("causationid", self.id)
        attrs.setdefault("traceparent", self.traceparent)
        return Signal(type, data, **attrs)

    def __repr__(self) -> str:
        target = f" target={self.target!r}" if self.target else ""
        return f"<Signal {self.type} id={self.id}{target}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signal):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in Signal.__slots__)

    __hash__ = None  # type: ignore[assignment]
