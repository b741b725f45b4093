"""What nodes say to each other about signals: envelopes, batches, acknowledgements, errors.

Theory of operation. Every message a node's router publishes is a **batch**: one NATS
message holding a JSON array of **envelopes**, published on the destination's inbox subject
with the sender's inbox as the reply subject (acknowledgements and call results go back
there). An envelope is an object whose ``k`` names its kind:

- ``cast`` / ``send`` / ``call`` — a signal for agent ``to``; ``ev`` is the signal as a
  CloudEvents JSON object (``core.codec``), so its deadline travels as the remaining budget
  ``deadlinems`` and its call chain as ``callchain``;
- ``bcast`` — a signal for every agent of the receiving node that routes its type;
- ``ack`` — one per received batch that held any ``send`` or ``call``: node ``n``
  (incarnation ``ni``) accepted the deliveries in ``ok`` (pairs ``[signal id, agent id]``)
  and refused those in ``no``, each with its reason ``r``, whether it is retryable ``rt``,
  a message ``m`` and, for ``moved``, the node ``mv`` (incarnation ``mi``) the agent is on;
- ``result`` — the answer to call ``id`` for agent ``to``: the value ``v``, or ``e``, the
  remote error's ``to_dict()`` plus the fields needed to rebuild it (``error_from_dict``);
- ``cancel`` — the caller gave up on call ``id`` for agent ``to``: cancel the action.

A delivery is named by the pair (signal id, agent id), not the signal id alone, so one
signal sent to several agents is acknowledged, de-duplicated and cancelled per agent.

Pure: nothing here reads a clock or does I/O. Encoding builds bytes around the already
encoded CloudEvent (no second serialisation); parsing validates the shape of each envelope
and raises ``SignalDecodeError`` naming the culprit, so a bad envelope costs only itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel

from agentcluster.errors import (
    NO_NODE_REASONS,
    ActionError,
    ActionFailed,
    ActionTimeout,
    ActionValidationError,
    AgentClusterError,
    AgentCrashed,
    AgentError,
    AgentExists,
    AgentMoved,
    AgentNotFound,
    AgentStarting,
    AgentStopped,
    AgentUnavailable,
    CallCycle,
    CallTimeout,
    ConfigurationError,
    ConnectionClosed,
    DeliveryError,
    InvalidRoute,
    InvalidSignal,
    MailboxFull,
    NoAvailableNode,
    NodeUnavailable,
    NoResponders,
    NoRoute,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    RestartLimitExceeded,
    RestoreFailed,
    SignalDecodeError,
    SignalExpired,
    SignalTooLarge,
    SkillMountError,
    SubstrateError,
    TransportError,
    UsageError,
    WatchLost,
)

__all__ = [
    "AckFrame",
    "AgentMoved",
    "AgentStarting",
    "AgentUnavailable",
    "CancelFrame",
    "Frame",
    "Kind",
    "Reason",
    "Refusal",
    "ResultFrame",
    "SignalFrame",
    "ack_frame",
    "cancel_frame",
    "cut_batches",
    "error_from_dict",
    "error_to_dict",
    "parse_batch",
    "refusal_error",
    "result_frame",
    "signal_frame",
]


class Kind(StrEnum):
    CAST = "cast"
    SEND = "send"
    CALL = "call"
    BROADCAST = "bcast"
    ACK = "ack"
    RESULT = "result"
    CANCEL = "cancel"


SIGNAL_KINDS = frozenset({Kind.CAST, Kind.SEND, Kind.CALL, Kind.BROADCAST})


class Reason(StrEnum):
    """Why a delivery was refused; each is the ``reason`` of the error it becomes."""

    UNKNOWN = "unknown"
    MOVED = "moved"
    STARTING = "starting"
    UNAVAILABLE = "unavailable"
    MAILBOX_FULL = "mailbox_full"
    OVERLOADED = "overloaded"
    EXPIRED = "expired"
    INVALID = "invalid_signal"
    NO_ACK = "no_ack"
    """Not a refusal on the wire: the sender's own note that no acknowledgement came."""


# --- errors a refusal can turn into, beyond errors.py --------------------------------


# --- frames -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """One delivery the receiver (or the sender itself) would not accept."""

    id: str
    to: str
    reason: str
    retryable: bool
    message: str = ""
    moved_to: str | None = None
    moved_incarnation: int | None = None


@dataclass(frozen=True, slots=True)
class SignalFrame:
    kind: Kind
    to: str
    event: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AckFrame:
    node: str
    incarnation: int
    accepted: tuple[tuple[str, str], ...]
    refused: tuple[Refusal, ...]


@dataclass(frozen=True, slots=True)
class ResultFrame:
    id: str
    to: str
    value: Any
    error: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class CancelFrame:
    id: str
    to: str


Frame = SignalFrame | AckFrame | ResultFrame | CancelFrame


# --- encoding -----------------------------------------------------------------------

_PREFIX = {kind: b'{"k":"' + kind.value.encode() + b'","to":' for kind in Kind}


def signal_frame(kind: Kind, to: str, event: bytes) -> bytes:
    """An envelope around an encoded CloudEvent (``codec.encode``'s output, unparsed)."""
    return _PREFIX[kind] + orjson.dumps(to) + b',"ev":' + event + b"}"


def ack_frame(
    node: str,
    incarnation: int,
    accepted: Sequence[tuple[str, str]],
    refused: Sequence[Refusal],
) -> bytes:
    no = []
    for r in refused:
        item: dict[str, Any] = {"id": r.id, "to": r.to, "r": r.reason, "rt": r.retryable}
        if r.message:
            item["m"] = r.message
        if r.moved_to is not None:
            item["mv"] = r.moved_to
            item["mi"] = r.moved_incarnation
        no.append(item)
    return orjson.dumps({"k": "ack", "n": node, "ni": incarnation, "ok": accepted, "no": no})


def result_frame(call_id: str, to: str, value: Any) -> bytes:
    """A call's result; raises ``InvalidSignal`` if the value cannot be JSON."""
    try:
        return orjson.dumps(
            {"k": "result", "id": call_id, "to": to, "v": value},
            default=_json_default,
            option=orjson.OPT_NON_STR_KEYS,
        )
    except orjson.JSONEncodeError as exc:
        raise InvalidSignal(f"call result cannot be encoded as JSON: {exc}") from None


def error_frame(call_id: str, to: str, error: BaseException) -> bytes:
    return orjson.dumps({"k": "result", "id": call_id, "to": to, "e": error_to_dict(error)})


def cancel_frame(call_id: str, to: str) -> bytes:
    return orjson.dumps({"k": "cancel", "id": call_id, "to": to})


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def cut_batches(parts: Iterable[bytes], max_count: int, max_bytes: int) -> list[bytes]:
    """JSON arrays of ``parts``, in order, each of at most ``max_count`` parts and
    ``max_bytes`` bytes (a part larger than that on its own still gets a batch)."""
    batches: list[bytes] = []
    current: list[bytes] = []
    size = 2
    for part in parts:
        grown = size + len(part) + (1 if current else 0)
        if current and (grown > max_bytes or len(current) >= max_count):
            batches.append(b"[" + b",".join(current) + b"]")
            current = [part]
            size = 2 + len(part)
        else:
            current.append(part)
            size = grown
    if current:
        batches.append(b"[" + b",".join(current) + b"]")
    return batches


# --- parsing ------------------------------------------------------------------------


def parse_batch(data: bytes) -> list[Any]:
    """The envelopes of a batch, unparsed beyond JSON; ``SignalDecodeError`` if not an array."""
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SignalDecodeError("<batch>", f"not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise SignalDecodeError("<batch>", "expected a JSON array of envelopes")
    return items


def parse_frame(item: Any) -> Frame:
    """One envelope; raises ``SignalDecodeError`` naming the culprit."""
    if not isinstance(item, dict):
        raise SignalDecodeError("<envelope>", "expected a JSON object")
    raw_kind = item.get("k")
    try:
        kind = Kind(str(raw_kind))
    except ValueError:
        raise SignalDecodeError("k", f"unknown envelope kind {raw_kind!r}") from None
    if kind in SIGNAL_KINDS:
        event = item.get("ev")
        if not isinstance(event, dict):
            raise SignalDecodeError("ev", "expected a CloudEvents JSON object")
        to = item.get("to")
        if kind is Kind.BROADCAST:
            to = "" if to is None else to
        return SignalFrame(kind, _str(to, "to", kind is not Kind.BROADCAST), event)
    if kind is Kind.ACK:
        return AckFrame(
            _str(item.get("n"), "n"),
            _int(item.get("ni"), "ni"),
            tuple(_pair(p, "ok") for p in _list(item.get("ok"), "ok")),
            tuple(_refusal(r) for r in _list(item.get("no"), "no")),
        )
    call_id = _str(item.get("id"), "id")
    to = _str(item.get("to"), "to")
    if kind is Kind.CANCEL:
        return CancelFrame(call_id, to)
    error = item.get("e")
    if error is not None and not isinstance(error, dict):
        raise SignalDecodeError("e", "expected an error object")
    return ResultFrame(call_id, to, item.get("v"), error)


def _str(value: Any, name: str, nonempty: bool = True) -> str:
    if not isinstance(value, str) or (nonempty and not value):
        raise SignalDecodeError(name, f"expected a non-empty string, got {value!r:.60}")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SignalDecodeError(name, f"expected an integer, got {value!r:.60}")
    return value


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise SignalDecodeError(name, "expected an array")
    return value


def _pair(value: Any, name: str) -> tuple[str, str]:
    if not (isinstance(value, list) and len(value) == 2):
        raise SignalDecodeError(name, "expected [signal id, agent id] pairs")
    return _str(value[0], name), _str(value[1], name)


def _refusal(value: Any) -> Refusal:
    if not isinstance(value, dict):
        raise SignalDecodeError("no", "expected refusal objects")
    moved_to = value.get("mv")
    moved_inc = value.get("mi")
    message = value.get("m", "")
    return Refusal(
        _str(value.get("id"), "no.id"),
        _str(value.get("to"), "no.to"),
        _str(value.get("r"), "no.r"),
        value.get("rt") is True,
        message if isinstance(message, str) else "",
        moved_to if isinstance(moved_to, str) and moved_to else None,
        moved_inc if isinstance(moved_inc, int) and not isinstance(moved_inc, bool) else None,
    )


# --- errors across the wire ---------------------------------------------------------


def refusal_error(refusal: Refusal, node_id: str | None = None) -> DeliveryError:
    """The typed error a refusal means (for dead letters and for the sender's caller)."""
    message = refusal.message or f"delivery to agent {refusal.to!r} refused: {refusal.reason}"
    agent_id = refusal.to
    error: DeliveryError
    reason = refusal.reason
    if reason == Reason.MOVED:
        error = AgentMoved(
            message,
            moved_to=refusal.moved_to,
            moved_incarnation=refusal.moved_incarnation,
            agent_id=agent_id,
        )
    elif reason == Reason.UNKNOWN:
        error = AgentNotFound(message, agent_id=agent_id)
    elif reason == Reason.UNAVAILABLE:
        error = AgentUnavailable(message, agent_id=agent_id)
    elif reason == Reason.STARTING:
        error = AgentStarting(message, agent_id=agent_id)
    elif reason == Reason.MAILBOX_FULL:
        error = MailboxFull(message, agent_id=agent_id)
    elif reason == Reason.OVERLOADED:
        error = Overloaded(message, agent_id=agent_id)
    elif reason == Reason.EXPIRED:
        error = SignalExpired(message, agent_id=agent_id)
    else:
        error = DeliveryError(message, agent_id=agent_id, retryable=refusal.retryable)
        error.reason = reason
    error.node_id = node_id
    return error


def error_to_dict(error: BaseException) -> dict[str, Any]:
    """``to_dict()`` plus what ``error_from_dict`` needs to rebuild the error exactly."""
    if not isinstance(error, AgentClusterError):
        return ActionFailed("remote", type(error).__name__, str(error)).to_dict() | {
            "action": "remote",
            "error_type": type(error).__name__,
            "error_message": str(error),
        }
    out = error.to_dict()
    if isinstance(error, ActionFailed):
        out.update(
            action=error.action, error_type=error.error_type, error_message=error.error_message
        )
    elif isinstance(error, CallCycle):
        out["chain"] = list(error.chain)
    elif isinstance(error, AgentMoved):
        out.update(moved_to=error.moved_to, moved_incarnation=error.moved_incarnation)
    elif isinstance(error, SignalDecodeError):
        out.update(attribute=error.attribute, problem=error.problem)
    elif isinstance(error, SignalTooLarge | PayloadTooLarge):
        out.update(size=error.size, limit=error.limit)
    elif isinstance(error, ActionValidationError):
        out.update(
            action=error.action,
            what=error.what,
            errors=[
                {
                    "loc": [str(p) for p in e.get("loc", ())],
                    "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", "")),
                }
                for e in error.errors
            ],
        )
    elif isinstance(error, SubstrateError):
        out["code"] = error.code
    return out


_PLAIN: dict[str, type[AgentClusterError]] = {
    cls.__name__: cls
    for cls in (
        AgentClusterError,
        UsageError,
        ConfigurationError,
        InvalidSignal,
        InvalidRoute,
        SkillMountError,
        AgentExists,
        DeliveryError,
        AgentNotFound,
        AgentUnavailable,
        AgentStarting,
        NodeUnavailable,
        MailboxFull,
        Overloaded,
        SignalExpired,
        NoRoute,
        CallTimeout,
        AgentStopped,
        ActionError,
        ActionTimeout,
        AgentError,
        RestoreFailed,
        RestartLimitExceeded,
        TransportError,
        ConnectionClosed,
        NoResponders,
        RequestTimeout,
        WatchLost,
    )
}

_NAME_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def error_from_dict(data: Mapping[str, Any]) -> AgentClusterError:
    """Rebuild a typed error from ``error_to_dict`` (or plain ``to_dict()``) output.

    Known types come back as themselves; an unknown type (a newer peer) comes back as an
    ``AgentClusterError`` keeping the remote ``reason``, and the type name in its message.
    """
    name = str(data.get("type") or "AgentClusterError")
    message = str(data.get("message") or name)
    agent_id = _opt_str(data.get("agent_id"))
    node_id = _opt_str(data.get("node_id"))
    retryable = data.get("retryable")
    error: AgentClusterError
    if name in ("ActionFailed", "AgentCrashed"):
        error_type = _opt_str(data.get("error_type"))
        error_message = _opt_str(data.get("error_message"))
        action = _opt_str(data.get("action"))
        if error_type is None or error_message is None or action is None:
            action, error_type, error_message = _split_failure(message)
        cls = AgentCrashed if name == "AgentCrashed" else ActionFailed
        error = cls(action, error_type, error_message)
    elif name == "CallCycle":
        chain = data.get("chain")
        links = tuple(str(c) for c in chain) if isinstance(chain, list) else ()
        error = CallCycle(message, chain=links, agent_id=agent_id)
    elif name == "AgentMoved":
        moved_inc = data.get("moved_incarnation")
        error = AgentMoved(
            message,
            moved_to=_opt_str(data.get("moved_to")),
            moved_incarnation=moved_inc if isinstance(moved_inc, int) else None,
        )
    elif name == "SignalDecodeError":
        error = SignalDecodeError(
            str(data.get("attribute", "<unknown>")), str(data.get("problem", message))
        )
    elif name in ("SignalTooLarge", "PayloadTooLarge"):
        size, limit = data.get("size"), data.get("limit")
        size = size if isinstance(size, int) else 0
        limit = limit if isinstance(limit, int) else 0
        error = (
            SignalTooLarge(size, limit)
            if name == "SignalTooLarge"
            else PayloadTooLarge(size, limit)
        )
    elif name == "ActionValidationError":
        errors = data.get("errors")
        error = ActionValidationError(
            str(data.get("action", "remote")),
            [dict(e) for e in errors if isinstance(e, dict)] if isinstance(errors, list) else [],
            what=str(data.get("what", "params")),
        )
    elif name == "NoAvailableNode":
        reason = data.get("reason")
        error = NoAvailableNode(message, reason=reason if reason in NO_NODE_REASONS else "no_nodes")
    elif name == "SubstrateError":
        code = data.get("code")
        error = SubstrateError(message, code=code if isinstance(code, int) else None)
    elif name in _PLAIN:
        error = _PLAIN[name](message)
    else:
        shown = name if _NAME_LIKE.fullmatch(name) else "?"
        message = f"{shown}: {message}"
        error = AgentClusterError(message)
        reason = data.get("reason")
        if isinstance(reason, str) and reason:
            error.reason = reason
    error.message = message
    error.args = (message,)
    error.agent_id = agent_id
    error.node_id = node_id
    if isinstance(retryable, bool):
        error.retryable = retryable
    return error


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _split_failure(message: str) -> tuple[str, str, str]:
    """``"{action} failed: {type}: {message}"`` back into its parts, as best it can."""
    head, sep, rest = message.partition(" failed: ")
    if not sep:
        return "remote", "Exception", message
    error_type, sep, text = rest.partition(": ")
    return (head, error_type, text) if sep else (head, "Exception", rest)
