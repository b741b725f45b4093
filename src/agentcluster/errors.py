"""Every error agentcluster raises, in one tree.

Errors split by who must act: the caller (``UsageError`` — fix the call), the delivery
path (``DeliveryError`` — the signal did not reach or finish in its agent; ``retryable``
says whether the same signal may be sent again), the action (``ActionError`` — user code
ran and failed), or the agent's lifecycle (``AgentError``). Each carries the context a
log line or a retry loop needs (``agent_id``, ``node_id``, ``retryable``) and a
``reason`` code that dead letters and telemetry use.

::

    AgentClusterError
    ├── UsageError                      the caller did something wrong; never retryable
    │   ├── ConfigurationError          a setting or declaration is invalid
    │   ├── InvalidSignal
    │   │   ├── SignalDecodeError       bad CloudEvents input; names the attribute
    │   │   └── SignalTooLarge          encoded size over the limit
    │   ├── ActionValidationError       params or state change failed validation
    │   ├── InvalidRoute                a route pattern cannot be parsed
    │   ├── SkillMountError             a skill clashes with what the agent has
    │   ├── AgentExists                 an id is taken by an agent of another class
    │   ├── JournalTruncated            replay asked for entries the bus journal dropped
    │   ├── InvalidName                 a subject, key, bucket or stream name is malformed
    │   └── PayloadTooLarge             a message or value over the substrate's limit
    ├── DeliveryError                   the signal did not get through
    │   ├── AgentNotFound               no agent with that id (reason "unknown")
    │   │   └── AgentUnavailable        a plain agent whose node died; not coming back
    │   ├── MailboxFull                 retryable; the mailbox stayed full
    │   ├── Overloaded                  retryable; the receiver sheds load
    │   ├── SignalExpired               its deadline passed before it ran
    │   ├── NoRoute                     the agent has no route for the signal type
    │   ├── CallCycle                   the call would wait on itself
    │   ├── CallTimeout                 no reply within the deadline (also a TimeoutError)
    │   ├── AgentStopped                the agent stopped before the signal ran
    │   ├── AgentMoved                  retryable; the agent is elsewhere (``moved_to``)
    │   ├── AgentStarting               retryable; the agent is being started or restored
    │   └── NodeUnavailable             retryable; the node asked did not answer
    ├── ActionError                     user code ran and failed
    │   ├── ActionFailed                carries the remote error's type and message
    │   │   └── AgentCrashed            the action crashed its agent (it was restarted)
    │   └── ActionTimeout               the action overran its timeout
    ├── AgentError
    │   ├── RestoreFailed               a snapshot cannot be restored; never a silent reset
    │   ├── RestartLimitExceeded        a supervisor's restart intensity was exceeded
    │   ├── NoAvailableNode             retryable; no live node can take the agent (``reason``)
    │   ├── NodeSuperseded              a restart under the same node id replaced this process
    │   └── AgentFenced                 a newer incarnation of the agent owns it; this one stops
    ├── CoordinationError               a lock, barrier, election, vote, pipeline or map-reduce
    │   ├── LockTimeout                 retryable; the lock stayed held (also a TimeoutError)
    │   ├── LockLost                    the lock is no longer ours (a newer fencing token)
    │   ├── BarrierTimeout              retryable; ``missing`` participants never arrived
    │   ├── ElectionTimeout             retryable; no live leader of the group appeared in time
    │   ├── StageFailed                 a pipeline stage failed; names ``stage`` and its agent
    │   └── ChunkFailed                 a map-reduce chunk failed on every agent tried
    └── TransportError                  the substrate (NATS or the memory backend) said no
        ├── ConnectionClosed            the connection is closed; nothing more goes through it
        ├── NoResponders                retryable; nobody listens (or a store leader election)
        ├── RequestTimeout              retryable; no answer in time — a write may have landed
        ├── KeyExists                   ``create`` found the key present
        ├── RevisionMismatch            compare-and-set lost: the key is at another revision
        ├── SubjectFull                 retryable; a per-subject limit with discard=new refused
        ├── WatchLost                   a watcher dropped updates (slow consumer); rebuild
        ├── CorruptRecord               a stored value is not in the shape this version writes
        ├── SubstrateError              any other refusal; ``code`` carries the server's code
        └── DiscoveryFailed             retryable; discovery found no server (``strategy``)
            └── MalformedDnsMessage     a DNS packet does not decode; ``problem`` says why
"""

from __future__ import annotations

from typing import Any


class AgentClusterError(Exception):
    """Root of every error agentcluster raises on purpose."""

    reason: str = "error"
    default_retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        agent_id: str | None = None,
        node_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.agent_id = agent_id
        self.node_id = node_id
        self.retryable = self.default_retryable if retryable is None else retryable

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form, used for call replies and dead letters."""
        return {
            "type": type(self).__name__,
            "reason": self.reason,
            "message": self.message,
            "agent_id": self.agent_id,
            "node_id": self.node_id,
            "retryable": self.retryable,
        }


# --- the caller did something wrong -------------------------------------------------


class UsageError(AgentClusterError):
    """The call itself is wrong; sending it again will not help."""

    reason = "usage"


class ConfigurationError(UsageError):
    """A setting, declaration or option combination is invalid."""

    reason = "configuration"


class InvalidSignal(UsageError):
    """A signal is malformed."""

    reason = "invalid_signal"


class SignalDecodeError(InvalidSignal):
    """CloudEvents input could not be decoded; ``attribute`` names the culprit."""

    reason = "decode"

    def __init__(self, attribute: str, problem: str) -> None:
        super().__init__(f"signal attribute {attribute!r}: {problem}")
        self.attribute = attribute
        self.problem = problem


class SignalTooLarge(InvalidSignal):
    """The encoded signal exceeds the configured size limit."""

    reason = "too_large"

    def __init__(self, size: int, limit: int, *, signal_type: str | None = None) -> None:
        what = f"signal {signal_type!r}" if signal_type else "signal"
        super().__init__(f"{what} is {size} bytes encoded; the limit is {limit}")
        self.size = size
        self.limit = limit
        self.signal_type = signal_type


class ActionValidationError(UsageError):
    """Params or a state change failed validation; ``errors`` lists each field error."""

    reason = "validation"

    def __init__(self, action: str, errors: list[dict[str, Any]], *, what: str = "params") -> None:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '<root>'}: {e.get('msg', '')}"
            for e in errors
        )
        super().__init__(f"{action}: invalid {what}: {fields}")
        self.action = action
        self.errors = errors
        self.what = what


class InvalidRoute(UsageError):
    """A route pattern cannot be parsed."""

    reason = "invalid_route"


class SkillMountError(UsageError):
    """A skill's name, action or route clashes with what the agent already has."""

    reason = "skill_clash"


class AgentExists(UsageError):
    """``start_agent`` named an id that a live agent of another class holds."""

    reason = "exists"


class JournalTruncated(UsageError):
    """A replay asked for bus entries older than the bounded journal still holds."""

    reason = "journal_truncated"

    def __init__(self, requested: int, first_available: int) -> None:
        super().__init__(
            f"replay from offset {requested} asked for entries the journal dropped; "
            f"the oldest kept is {first_available}"
        )
        self.requested = requested
        self.first_available = first_available


# --- the signal did not get through -------------------------------------------------


class DeliveryError(AgentClusterError):
    """The signal did not reach its agent, or did not finish there."""

    reason = "undeliverable"


class AgentNotFound(DeliveryError):
    """No agent with that id is known."""

    reason = "unknown"


class MailboxFull(DeliveryError):
    """The agent's bounded mailbox stayed full; try again later."""

    reason = "mailbox_full"
    default_retryable = True


class Overloaded(DeliveryError):
    """The receiver refuses new work for now; try again later."""

    reason = "overloaded"
    default_retryable = True


class SignalExpired(DeliveryError):
    """The signal's deadline passed before it could run."""

    reason = "expired"


class NoRoute(DeliveryError):
    """The agent has no route for the signal's type."""

    reason = "no_route"


class CallCycle(DeliveryError):
    """The call would wait on itself (A calls B calls A); ``chain`` holds the waiters."""

    reason = "call_cycle"

    def __init__(self, message: str, *, chain: tuple[str, ...], agent_id: str | None) -> None:
        super().__init__(message, agent_id=agent_id)
        self.chain = chain


class CallTimeout(DeliveryError, TimeoutError):
    """No reply arrived within the call's deadline; the remote action was cancelled."""

    reason = "timeout"
    default_retryable = True


class AgentStopped(DeliveryError):
    """The agent stopped before the signal ran."""

    reason = "stopped"


class AgentMoved(DeliveryError):
    """The agent is not on the node that was asked; ``moved_to`` names where it is, if known.

    Retryable: the sender refreshes its placement and retries at once at the new node.
    """

    reason = "moved"
    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        moved_to: str | None = None,
        moved_incarnation: int | None = None,
        agent_id: str | None = None,
        node_id: str | None = None,
    ) -> None:
        super().__init__(message, agent_id=agent_id, node_id=node_id)
        self.moved_to = moved_to
        self.moved_incarnation = moved_incarnation


class AgentStarting(DeliveryError):
    """The agent is being started (or restored) on its node; retryable, never dead-lettered
    by a sender that still has time."""

    reason = "starting"
    default_retryable = True


class NodeUnavailable(DeliveryError):
    """The node that was asked (to start, stop or run something) did not answer in time;
    retryable — a node that died is soon declared dead and its agents marked."""

    reason = "node_unavailable"
    default_retryable = True


class AgentUnavailable(AgentNotFound):
    """A plain agent whose node died: it will not come back, so not retryable."""

    reason = "unavailable"


# --- user code ran and failed -------------------------------------------------------


class ActionError(AgentClusterError):
    """An action ran and failed."""

    reason = "action_failed"


class ActionFailed(ActionError):
    """An action raised; ``error_type`` and ``message`` describe the original error."""

    reason = "action_failed"

    def __init__(
        self,
        action: str,
        error_type: str,
        message: str,
        *,
        agent_id: str | None = None,
        node_id: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(
            f"{action} failed: {error_type}: {message}",
            agent_id=agent_id,
            node_id=node_id,
            retryable=retryable,
        )
        self.action = action
        self.error_type = error_type
        self.error_message = message


class AgentCrashed(ActionFailed):
    """The action raised an error that crashes its agent; the supervisor took over."""

    reason = "crashed"


class ActionTimeout(ActionError, TimeoutError):
    """An action overran its timeout and was cancelled (cooperatively, for a thread)."""

    reason = "action_timeout"
    default_retryable = True


# --- the agent's lifecycle ----------------------------------------------------------


class AgentError(AgentClusterError):
    """An agent could not be started, restored or kept running."""

    reason = "agent"


class RestoreFailed(AgentError):
    """A snapshot could not be restored; the agent is marked failed, never reset."""

    reason = "restore_failed"


class RestartLimitExceeded(AgentError):
    """A supervisor restarted children more often than its intensity allows."""

    reason = "restart_limit"


NO_NODE_REASONS = frozenset(
    {
        "no_nodes",
        "no_capacity",
        "no_capability",
        "all_quarantined",
        "all_breakers_open",
        "all_saturated",
        "no_leader",
    }
)
"""The ``reason`` codes of ``NoAvailableNode``: why every candidate was excluded."""


class NoAvailableNode(AgentError):
    """No live node (or holder) can take the agent or request now. ``reason`` says why:
    ``no_nodes`` (none alive), ``no_capacity``, ``no_capability``, ``all_quarantined``,
    ``all_breakers_open``, ``all_saturated`` or ``no_leader``. Retryable: nodes join,
    capacity frees up, breakers close."""

    reason = "no_available_node"
    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        reason: str = "no_nodes",
        agent_id: str | None = None,
        node_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        if reason not in NO_NODE_REASONS:
            raise ValueError(f"unknown NoAvailableNode reason {reason!r}")
        super().__init__(message, agent_id=agent_id, node_id=node_id, retryable=retryable)
        self.reason = reason


class NodeSuperseded(AgentError):
    """This node process found its own record at a higher incarnation and must exit.

    A restart under the same node id took the record over: the process stops every agent
    and exits without writing the record again.
    """

    reason = "superseded"

    def __init__(self, node_id: str, own_incarnation: int, found_incarnation: int) -> None:
        super().__init__(
            f"node {node_id!r} at incarnation {own_incarnation} was superseded by "
            f"incarnation {found_incarnation} of the same id",
            node_id=node_id,
        )
        self.own_incarnation = own_incarnation
        self.found_incarnation = found_incarnation


class AgentFenced(AgentError):
    """A newer incarnation of this agent owns it: the state key (or the registry entry)
    moved on under another writer, so this instance must commit nothing more and stop.
    Raised by the activation path and the snapshot writer; never retried."""

    reason = "fenced"

    def __init__(
        self,
        agent_id: str,
        own_incarnation: int,
        found_incarnation: int | None = None,
        *,
        node_id: str | None = None,
    ) -> None:
        found = "" if found_incarnation is None else f" (found incarnation {found_incarnation})"
        super().__init__(
            f"agent {agent_id!r} at incarnation {own_incarnation} was fenced off: a newer "
            f"owner wrote its state{found}",
            agent_id=agent_id,
            node_id=node_id,
        )
        self.own_incarnation = own_incarnation
        self.found_incarnation = found_incarnation


# --- coordination primitives ---------------------------------------------------------


class CoordinationError(AgentClusterError):
    """A coordination primitive (lock, barrier, election, vote, pipeline, map-reduce)
    could not complete."""

    reason = "coordination"


class LockTimeout(CoordinationError, TimeoutError):
    """The lock stayed held by another owner until the acquire's timeout."""

    reason = "lock_timeout"
    default_retryable = True

    def __init__(self, name: str, holder: str | None, timeout: float) -> None:
        held = f"held by {holder!r}" if holder else "held"
        super().__init__(f"lock {name!r} still {held} after {timeout:g} s")
        self.name = name
        self.holder = holder
        self.timeout = timeout


class LockLost(CoordinationError):
    """The lock is no longer held under this fencing token: it was released, or taken
    over after its holder's node was declared dead. Work guarded by it must stop."""

    reason = "lock_lost"

    def __init__(self, name: str, token: int, detail: str = "") -> None:
        tail = f": {detail}" if detail else ""
        super().__init__(f"lock {name!r} is no longer held under token {token}{tail}")
        self.name = name
        self.token = token


class BarrierTimeout(CoordinationError, TimeoutError):
    """Not every participant arrived at the barrier in time; ``missing`` names them."""

    reason = "barrier_timeout"
    default_retryable = True

    def __init__(self, barrier_id: str, missing: tuple[str, ...], timeout: float) -> None:
        super().__init__(
            f"barrier {barrier_id!r}: {', '.join(missing) or 'nobody'} missing after {timeout:g} s"
        )
        self.barrier_id = barrier_id
        self.missing = missing
        self.timeout = timeout


class ElectionTimeout(CoordinationError, TimeoutError):
    """No live leader of the group appeared within the wait's timeout."""

    reason = "election_timeout"
    default_retryable = True

    def __init__(self, group: str, timeout: float, detail: str = "") -> None:
        tail = f" ({detail})" if detail else ""
        super().__init__(f"election {group!r}: no live leader within {timeout:g} s{tail}")
        self.group = group
        self.timeout = timeout


class StageFailed(CoordinationError):
    """A pipeline stage failed; ``stage`` is its index, ``target`` the agent (or
    capability) asked, ``cause`` the error it gave."""

    reason = "stage_failed"

    def __init__(self, stage: int, target: str, cause: BaseException) -> None:
        super().__init__(f"pipeline stage {stage} ({target}) failed: {cause}", agent_id=target)
        self.stage = stage
        self.target = target
        self.cause = cause


class ChunkFailed(CoordinationError):
    """A map-reduce chunk failed on every agent it was tried on (``tried``)."""

    reason = "chunk_failed"

    def __init__(self, chunk: int, tried: tuple[str, ...], cause: BaseException | None) -> None:
        super().__init__(
            f"chunk {chunk} failed on {', '.join(tried) or 'no agent'}"
            + (f": {cause}" if cause is not None else "")
        )
        self.chunk = chunk
        self.tried = tried
        self.cause = cause


# --- the substrate said no ------------------------------------------------------------


class TransportError(AgentClusterError):
    """The substrate refused or failed an operation (translated from nats-py at the edge)."""

    reason = "transport"


class InvalidName(UsageError):
    """A subject, key, bucket or stream name has characters or a shape the substrate refuses.

    User-supplied strings (agent ids, capability names) are encoded with
    ``agentcluster.transport.names.encode_token`` before they reach a subject; this error
    means an already-built name was wrong, and ``name`` shows it.
    """

    reason = "invalid_name"

    def __init__(self, kind: str, name: str, problem: str) -> None:
        super().__init__(f"invalid {kind} {name!r}: {problem}")
        self.kind = kind
        self.name = name
        self.problem = problem


class PayloadTooLarge(UsageError):
    """A message or value is larger than the substrate accepts (NATS ``max_payload``)."""

    reason = "too_large"

    def __init__(self, size: int, limit: int, *, what: str = "payload") -> None:
        super().__init__(f"{what} is {size} bytes; the limit is {limit}")
        self.size = size
        self.limit = limit
        self.what = what


class ConnectionClosed(TransportError):
    """The connection was closed (by its owner, or for good by the backend)."""

    reason = "closed"


class NoResponders(TransportError):
    """Nobody listens on the subject — for a store write, a JetStream leader election."""

    reason = "no_responders"
    default_retryable = True


class RequestTimeout(TransportError, TimeoutError):
    """No answer in time. For a write this is ambiguous: it may still have been applied."""

    reason = "timeout"
    default_retryable = True


class KeyExists(TransportError):
    """``create`` found the key already present."""

    reason = "key_exists"

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"key {key!r} already exists in bucket {bucket!r}")
        self.bucket = bucket
        self.key = key


class RevisionMismatch(TransportError):
    """A compare-and-set expected one revision and the key is at another."""

    reason = "revision_mismatch"

    def __init__(self, bucket: str, key: str, expected: int) -> None:
        super().__init__(f"key {key!r} in bucket {bucket!r} is not at revision {expected}")
        self.bucket = bucket
        self.key = key
        self.expected = expected


class SubjectFull(TransportError):
    """A stream subject reached its message limit and the stream discards new messages."""

    reason = "subject_full"
    default_retryable = True

    def __init__(self, stream: str, subject: str) -> None:
        super().__init__(f"subject {subject!r} of stream {stream!r} is full")
        self.stream = stream
        self.subject = subject


class WatchLost(TransportError):
    """A watcher fell behind and updates were dropped; the watching cache must rebuild."""

    reason = "watch_lost"
    default_retryable = True


class SubstrateError(TransportError):
    """Any other refusal of the substrate; ``code`` is the server's error code if it gave one."""

    reason = "substrate"

    def __init__(self, message: str, *, code: int | None = None, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code


class CorruptRecord(TransportError):
    """A value read from the store is not in the shape this version writes; ``kind`` names
    the record (node, agent entry, leader, stamp) and ``problem`` what was wrong."""

    reason = "corrupt_record"

    def __init__(self, kind: str, problem: str) -> None:
        super().__init__(f"corrupt {kind} record: {problem}")
        self.kind = kind
        self.problem = problem


class DiscoveryFailed(TransportError):
    """Discovery produced no server to connect to: its source did not answer in time, said
    the name does not exist, or answered with nothing usable. ``strategy`` names the
    discovery (``dns``, ``static``, ``transport``); retryable, since records appear later
    (a Kubernetes headless service has none until its pods are ready)."""

    reason = "discovery_failed"
    default_retryable = True

    def __init__(self, strategy: str, problem: str, *, retryable: bool | None = None) -> None:
        super().__init__(f"{strategy} discovery failed: {problem}", retryable=retryable)
        self.strategy = strategy
        self.problem = problem


class MalformedDnsMessage(DiscoveryFailed):
    """A DNS message could not be decoded; ``problem`` says what was wrong and ``offset``
    where (a byte offset into the message), so a broken nameserver is named, not guessed."""

    reason = "malformed_dns"
    default_retryable = False

    def __init__(self, problem: str, *, offset: int | None = None) -> None:
        where = "" if offset is None else f" at byte {offset}"
        super().__init__("dns", f"malformed DNS message: {problem}{where}")
        self.problem = problem
        self.offset = offset
