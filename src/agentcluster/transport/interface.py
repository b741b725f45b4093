"""The one interface to the substrate: messages, key-value buckets, durable streams, objects.

Everything the cluster shares goes through a ``Connection``. Two backends implement it:
``memory`` (every node in one process, the embedded default, with fault injection) and
``nats`` (NATS core + JetStream through nats-py). The transport conformance suite
(``agentcluster.testing.conformance``) pins every behaviour below; a backend that passes it
is correct by definition.

Semantics both backends share:

- **Messages** are fire-and-forget (``publish``), fanned out to every matching subscription
  (``*`` matches one token, a final ``>`` one or more); a queue group hands each message to
  one member. Each subscription runs its handler for one message at a time, in arrival
  order, from a bounded pending queue; a subscription that falls behind drops messages and
  counts them in ``Subscription.dropped`` (NATS calls this a slow consumer). ``request``
  raises ``NoResponders`` at once when nobody listens and ``RequestTimeout`` when nobody
  answers in time.
- **Key-value** writes return the new revision; a revision is a per-bucket sequence, so
  revisions order all writes of a bucket. ``create`` raises ``KeyExists``; ``update`` and
  ``delete(revision=…)`` are compare-and-set and raise ``RevisionMismatch``. A deleted key
  reads as absent and can be created again. ``keys(prefix)`` and ``watch(prefix)`` take a
  prefix of whole tokens: ``n1`` covers ``n1.a`` but not ``n10.a`` (nor ``n1`` itself).
- **Timeouts** bound every wait. A write that raises ``RequestTimeout`` may still have been
  applied (the reply was lost): callers that must know read the key back (write stamps).
  While a store has no leader, writes fail fast with ``NoResponders``; retry with backoff.
- **Streams** keep messages by subject with a stream-wide sequence. Publishing with a
  ``msg_id`` already seen within the duplicate window answers with the original sequence
  and ``duplicate=True``. ``next_message(subject, from_seq)`` is a direct read that keeps
  no state on the server. A subject at its limit under ``discard="new"`` refuses the write
  with ``SubjectFull``.
- **Names** (subjects, keys) allow ``[-/_=A-Za-z0-9]`` per dot-separated token; user
  strings pass through ``names.encode_token`` first. Bad names raise ``InvalidName``,
  oversize payloads ``PayloadTooLarge``, any call on a closed connection
  ``ConnectionClosed`` — all before anything is sent.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "BucketConfig",
    "Connection",
    "ConnectionEvent",
    "Consumer",
    "ConsumerConfig",
    "Delivery",
    "Entry",
    "EventListener",
    "Handler",
    "KeyValue",
    "Message",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreConfig",
    "Operation",
    "PubAck",
    "Storage",
    "StoredMessage",
    "Stream",
    "StreamConfig",
    "StreamState",
    "Subscription",
    "Watcher",
]

Storage = Literal["file", "memory"]
"""Where JetStream keeps a bucket or stream. The memory backend accepts both and keeps
everything in the process."""

DEFAULT_TIMEOUT = 5.0
"""Seconds a store operation waits when the caller gives no ``timeout``."""


class ConnectionEvent(enum.Enum):
    """What a connection reports to its listeners. Liveness never rests on these."""

    DISCONNECTED = "disconnected"
    RECONNECTED = "reconnected"
    CLOSED = "closed"
    SLOW_CONSUMER = "slow_consumer"


EventListener = Callable[[ConnectionEvent], None]


# --- messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A core message as a handler sees it; ``reply`` is ``""`` when no answer is expected."""

    subject: str
    data: bytes
    reply: str = ""
    headers: Mapping[str, str] | None = None


Handler = Callable[[Message], Awaitable[None]]


@runtime_checkable
class Subscription(Protocol):
    @property
    def subject(self) -> str: ...

    @property
    def queue(self) -> str | None: ...

    @property
    def dropped(self) -> int:
        """Messages dropped because the handler fell behind (bounded pending queue)."""
        ...

    async def unsubscribe(self) -> None:
        """Stop delivery; messages still pending are discarded. Idempotent."""
        ...


# --- key-value ------------------------------------------------------------------------


class Operation(enum.Enum):
    PUT = "PUT"
    DELETE = "DEL"


@dataclass(frozen=True, slots=True)
class Entry:
    """One revision of one key. A delete is an entry with ``operation=DELETE`` and no value."""

    bucket: str
    key: str
    value: bytes
    revision: int
    operation: Operation = Operation.PUT

    @property
    def deleted(self) -> bool:
        return self.operation is Operation.DELETE


@dataclass(frozen=True, slots=True)
class BucketConfig:
    """A key-value bucket; created if missing, bound if present (idempotent)."""

    name: str
    replicas: int = 1
    storage: Storage = "file"
    history: int = 1
    max_value_size: int = -1
    max_bytes: int = -1
    description: str = ""


@runtime_checkable
class Watcher(Protocol):
    """Live changes under a prefix, after an initial snapshot, in revision order.

    ``initial`` holds the present (non-deleted) entries when the watch started, in
    revision order; iteration then yields every later put and delete. A watcher that fell
    behind raises ``WatchLost`` from iteration: updates were dropped and the consumer
    must rebuild from a fresh watch. Iteration ends after ``stop``.
    """

    @property
    def initial(self) -> list[Entry]: ...

    def __aiter__(self) -> AsyncIterator[Entry]: ...

    async def __anext__(self) -> Entry: ...

    async def next(self, timeout: float) -> Entry | None:
        """The next update, or ``None`` if none came within ``timeout`` seconds."""
        ...

    async def stop(self) -> None: ...


@runtime_checkable
class KeyValue(Protocol):
    @property
    def bucket(self) -> str: ...

    async def get(self, key: str, *, timeout: float | None = None) -> Entry | None:
        """The current entry, or ``None`` if the key is absent or deleted."""
        ...

    async def put(self, key: str, value: bytes, *, timeout: float | None = None) -> int: ...

    async def create(self, key: str, value: bytes, *, timeout: float | None = None) -> int:
        """Write only if the key is absent (or deleted); else ``KeyExists``."""
        ...

    async def update(
        self, key: str, value: bytes, revision: int, *, timeout: float | None = None
    ) -> int:
        """Write only if the key's last revision is ``revision``; else ``RevisionMismatch``.

        The last revision of a deleted key is its delete entry's; ``revision=0`` expects a
        key that was never written (or whose history was purged with its bucket).
        """
        ...

    async def delete(
        self, key: str, *, revision: int | None = None, timeout: float | None = None
    ) -> None:
        """Delete (leaves a delete entry that watchers see); with ``revision``, only if the
        key is at that revision, else ``RevisionMismatch``."""
        ...

    async def keys(self, prefix: str = "", *, timeout: float | None = None) -> list[str]:
        """Present keys under ``prefix``, sorted; filtered by the server. Not for hot paths."""
        ...

    async def watch(self, prefix: str = "", *, pending_limit: int = 65536) -> Watcher: ...


# --- durable streams ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """A durable stream; created if missing, its config updated if present (idempotent).

    ``discard="new"`` with ``max_msgs_per_subject`` refuses a write to a full subject
    (``SubjectFull``) instead of deleting the oldest message, which ``"old"`` would do.
    ``max_age`` is seconds, 0 for no limit; ``duplicate_window`` bounds de-duplication.
    """

    name: str
    subjects: tuple[str, ...]
    replicas: int = 1
    storage: Storage = "file"
    discard: Literal["old", "new"] = "old"
    max_msgs_per_subject: int = -1
    max_msgs: int = -1
    max_bytes: int = -1
    max_msg_size: int = -1
    max_age: float = 0.0
    duplicate_window: float = 120.0


@dataclass(frozen=True, slots=True)
class PubAck:
    stream: str
    seq: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from a stream by sequence."""

    stream: str
    subject: str
    seq: int
    data: bytes
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class StreamState:
    messages: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """A durable pull consumer: the live feed with acknowledgements and redelivery.

    A message fetched and neither acked nor nak'ed within ``ack_wait`` seconds is delivered
    again, to whichever fetch comes next — also from another connection bound to the same
    ``durable`` name, which is how work survives a consumer that died.
    """

    durable: str
    filter_subject: str | None = None
    ack_wait: float = 30.0
    max_deliver: int = -1
    deliver: Literal["all", "new"] = "all"
    max_ack_pending: int = 1000


@runtime_checkable
class Delivery(Protocol):
    """A stream message handed to a consumer, to be settled once."""

    @property
    def subject(self) -> str: ...

    @property
    def seq(self) -> int:
        """The stream sequence."""
        ...

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str] | None: ...

    @property
    def num_delivered(self) -> int:
        """1 on first delivery, 2 on the first redelivery, and so on."""
        ...

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None:
        """Give it back, for redelivery now or after ``delay`` seconds."""
        ...

    async def in_progress(self) -> None:
        """Restart the ack deadline: still working on it."""
        ...

    async def term(self) -> None:
        """Never deliver it again."""
        ...


@runtime_checkable
class Consumer(Protocol):
    @property
    def name(self) -> str: ...

    async def fetch(self, batch: int = 1, *, timeout: float) -> list[Delivery]:
        """Up to ``batch`` messages; fewer (maybe none) if ``timeout`` passes first."""
        ...


@runtime_checkable
class Stream(Protocol):
    @property
    def name(self) -> str: ...

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> PubAck: ...

    async def next_message(
        self, subject: str, from_seq: int = 1, *, timeout: float | None = None
    ) -> StoredMessage | None:
        """The first message on ``subject`` at or after ``from_seq``, or ``None``."""
        ...

    async def purge(self, subject: str, *, below_seq: int, timeout: float | None = None) -> None:
        """Remove the messages of ``subject`` with a sequence below ``below_seq``."""
        ...

    async def state(self, *, timeout: float | None = None) -> StreamState: ...

    async def consumer(self, config: ConsumerConfig) -> Consumer:
        """Create or bind the durable consumer ``config.durable``."""
        ...

    async def delete_consumer(self, durable: str) -> None: ...


# --- objects --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectStoreConfig:
    name: str
    replicas: int = 1
    storage: Storage = "file"
    max_bytes: int = -1


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    bucket: str
    name: str
    size: int
    digest: str
    """``SHA-256=`` followed by the URL-safe base64 digest, as NATS writes it."""


@runtime_checkable
class ObjectStore(Protocol):
    """Values larger than a key-value entry, cut into chunks under the hood."""

    @property
    def bucket(self) -> str: ...

    async def put(self, name: str, data: bytes, *, timeout: float | None = None) -> ObjectInfo: ...

    async def get(self, name: str, *, timeout: float | None = None) -> bytes | None: ...

    async def info(self, name: str, *, timeout: float | None = None) -> ObjectInfo | None: ...

    async def delete(self, name: str, *, timeout: float | None = None) -> None:
        """Remove the object; removing an absent one is not an error."""
        ...


# --- the connection -------------------------------------------------------------------


@runtime_checkable
class Connection(Protocol):
    """One node's (or client's) link to the substrate."""

    @property
    def name(self) -> str: ...

    @property
    def max_payload(self) -> int:
        """The largest message (and key-value value) in bytes the substrate accepts."""
        ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def is_connected(self) -> bool:
        """Connected right now. A hint for humans, never a liveness signal."""
        ...

    def add_listener(self, listener: EventListener) -> Callable[[], None]:
        """Call ``listener`` on every ``ConnectionEvent``; returns a function that removes it."""
        ...

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        reply: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None: ...

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        pending_limit: int = 65536,
    ) -> Subscription: ...

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> Message: ...

    async def flush(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until everything published so far has reached the substrate."""
        ...

    async def close(self) -> None:
        """Drain nothing, stop every subscription and watcher, release the link. Idempotent."""
        ...

    async def key_value(self, config: BucketConfig) -> KeyValue: ...

    async def delete_key_value(self, name: str) -> None: ...

    async def stream(self, config: StreamConfig) -> Stream: ...

    async def delete_stream(self, name: str) -> None: ...

    async def object_store(self, config: ObjectStoreConfig) -> ObjectStore: ...

    async def delete_object_store(self, name: str) -> None: ...
