"""Telemetry: the synchronous event bus (``emit`` / ``attach``) every layer but core uses."""

from agentcluster.telemetry.events import (
    HANDLER_FAILED,
    Event,
    EventRecorder,
    Handler,
    RecordedEvent,
    Telemetry,
    attach,
    detach,
    emit,
    telemetry,
)

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
