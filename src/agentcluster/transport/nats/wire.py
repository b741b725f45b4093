"""What JetStream puts on the wire: API subjects, header blocks and ack-reply metadata.

Small pure helpers shared by the key-value, stream and object modules; no nats-py here.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

__all__ = [
    "API",
    "EXPECTED_LAST_SUBJECT_SEQ",
    "KV_OPERATION",
    "MSG_ID",
    "ROLLUP",
    "ack_metadata",
    "decode_stored",
    "header_size",
    "nanos",
]

API = "$JS.API"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
KV_OPERATION = "KV-Operation"
MSG_ID = "Nats-Msg-Id"
EXPECTED_STREAM = "Nats-Expected-Stream"
ROLLUP = "Nats-Rollup"
STATUS = "Status"

_HEADER_LINE = len(b"NATS/1.0\r\n")


def nanos(seconds: float) -> int:
    """JetStream durations are integer nanoseconds."""
    return int(seconds * 1_000_000_000)


def header_size(headers: Mapping[str, str] | None) -> int:
    """Bytes a header block takes in a message (counted against ``max_payload``)."""
    if not headers:
        return 0
    size = _HEADER_LINE + 2
    for key, value in headers.items():
        size += len(key.encode()) + len(value.encode()) + 4
    return size


def parse_headers(block: bytes) -> dict[str, str] | None:
    """The headers of a ``NATS/1.0`` block, or ``None`` when it holds none."""
    lines = block.decode("utf-8", "replace").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip()] = value.strip()
    return headers or None


def decode_stored(message: Mapping[str, Any]) -> tuple[str, int, bytes, dict[str, str] | None]:
    """``(subject, seq, data, headers)`` of a ``STREAM.MSG.GET`` reply's ``message``."""
    raw_headers = message.get("hdrs")
    headers = parse_headers(base64.b64decode(raw_headers)) if raw_headers else None
    raw_data = message.get("data")
    data = base64.b64decode(raw_data) if raw_data else b""
    return str(message["subject"]), int(message["seq"]), data, headers


def ack_metadata(reply: str) -> tuple[int, int, int, int]:
    """``(num_delivered, stream_seq, consumer_seq, num_pending)`` of a JetStream ack reply.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (9 tokens) or
    the domain form with a domain and account hash after ``ACK`` (11 or 12 tokens).
    """
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[4]), int(tokens[5]), int(tokens[6]), int(tokens[8])
    if len(tokens) >= 11 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[6]), int(tokens[7]), int(tokens[8]), int(tokens[10])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")
