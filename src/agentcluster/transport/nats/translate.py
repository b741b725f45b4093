"""The one place where nats-py's exceptions and JetStream's error replies become ours.

nats-py raises one class for several meanings (``KeyWrongLastSequenceError`` for both "key
exists" and "wrong revision"; ``ServiceUnavailableError`` for a full subject and a leader
election alike), so the backend does not rely on its classes: it reads the JetStream error
code (``err_code``) of the reply and maps it here. Codes measured against nats-server 2.9.10:

==========  ====  ==============================================  ===========================
err_code    code  description                                     becomes
==========  ====  ==============================================  ===========================
10071       400   wrong last sequence: N                          ``KeyExists`` (create) or
                                                                  ``RevisionMismatch``
10077       503   maximum messages per subject exceeded           ``SubjectFull``
10077       503   maximum messages / bytes exceeded               ``SubstrateError`` (10077)
10037       404   no message found                                ``None`` (absent)
10059       404   stream not found                                absent (idempotent deletes)
10014       404   consumer not found                              absent (idempotent deletes)
10058       400   stream name already in use with a different     bind / update instead
                  configuration
other 503         (e.g. 10008 JetStream temporarily unavailable)  ``NoResponders``
==========  ====  ==============================================  ===========================

A publish to a subject no stream holds, and any JetStream request while a stream or the meta
group has no leader, gets a 503 status from the server: nats-py's ``NoRespondersError``,
which is ``NoResponders`` (retryable) here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import nats.errors
import nats.js.errors

from agentcluster.errors import (
    AgentClusterError,
    ConfigurationError,
    ConnectionClosed,
    InvalidName,
    NoResponders,
    RequestTimeout,
    SubjectFull,
    SubstrateError,
)

__all__ = [
    "CONSUMER_NOT_FOUND",
    "NO_MESSAGE",
    "STREAM_IN_USE",
    "STREAM_NOT_FOUND",
    "STREAM_STORE_FAILED",
    "WRONG_LAST_SEQUENCE",
    "api_error",
    "translate",
]

WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
"""``JSStreamWrongLastSequenceErrF`` (and its constant form on newer servers)."""
NO_MESSAGE = 10037
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
STREAM_IN_USE = 10058
STREAM_STORE_FAILED = 10077
_PER_SUBJECT_FULL = "maximum messages per subject exceeded"
_STATUS_OF = (
    (nats.js.errors.ServiceUnavailableError, 503),
    (nats.js.errors.NotFoundError, 404),
    (nats.js.errors.BadRequestError, 400),
    (nats.js.errors.ServerError, 500),
)


def api_error(
    error: Mapping[str, Any],
    what: str,
    *,
    stream: str | None = None,
    subject: str | None = None,
) -> AgentClusterError:
    """The error for a JetStream API reply's ``error`` object (``code``, ``err_code``,
    ``description``); ``what`` names the operation for the message."""
    code = error.get("code")
    err_code = error.get("err_code")
    description = str(error.get("description", "")) or "no description"
    if err_code == STREAM_STORE_FAILED and _PER_SUBJECT_FULL in description:
        return SubjectFull(stream or "?", subject or "?")
    if code == 503 and err_code != STREAM_STORE_FAILED:
        return NoResponders(f"{what}: JetStream unavailable ({description}, code {err_code})")
    number = err_code if isinstance(err_code, int) else code if isinstance(code, int) else None
    return SubstrateError(f"{what}: {description}", code=number)


def translate(exc: BaseException, what: str) -> AgentClusterError:
    """Our error for an exception nats-py (or the socket under it) raised during ``what``.

    Errors of this project pass through unchanged. ``asyncio.CancelledError`` must never be
    passed here: callers catch ``Exception`` only.
    """
    if isinstance(exc, AgentClusterError):
        return exc
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return ConnectionClosed(f"{what}: the connection is closed")
    if isinstance(exc, (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)):
        return NoResponders(f"{what}: no responders")
    if isinstance(exc, nats.js.errors.APIError):
        # Some subclasses skip APIError.__init__ and lack these attributes.
        code = getattr(exc, "code", None)
        err_code = getattr(exc, "err_code", None)
        description = getattr(exc, "description", None) or str(exc)
        if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError) and err_code is None:
            code, err_code = 400, min(WRONG_LAST_SEQUENCE)
        if code is None:
            code = next((c for cls, c in _STATUS_OF if isinstance(exc, cls)), None)
        if err_code is None and code == 503:
            return NoResponders(f"{what}: JetStream unavailable")
        return api_error({"code": code, "err_code": err_code, "description": description}, what)
    if isinstance(exc, nats.errors.BadHeaderError):
        return InvalidName("header", exc.key, "not a valid header name")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return RequestTimeout(f"{what}: no answer in time")
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower():
        return SubstrateError(f"{what}: authorization failed: {exc}", retryable=False)
    if isinstance(
        exc,
        (
            nats.errors.OutboundBufferLimitError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.ConnectionDrainingError,
            nats.errors.StaleConnectionError,
            nats.errors.NoServersError,
        ),
    ):
        return SubstrateError(f"{what}: {exc}", retryable=True)
    if isinstance(exc, ImportError):
        return ConfigurationError(
            f"{what}: NatsConfig.nkeys_seed and creds_file need the 'nkeys' package "
            f"(pip install nkeys): {exc}"
        )
    if isinstance(exc, OSError):
        return SubstrateError(f"{what}: {exc}", retryable=True)
    return SubstrateError(f"{what}: {type(exc).__name__}: {exc}")
