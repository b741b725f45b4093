"""The one interface to the substrate, and its two backends.

- ``interface`` — the protocols (``Connection``, ``KeyValue``, ``Stream``, ``ObjectStore``,
  …) and value types every backend shares; ``names`` — subject and key rules and the
  reversible encoding of user strings into tokens.
- ``memory`` — ``MemoryTransport``: every node in one process, the embedded default, with
  seeded fault injection. Its store outlives the connections, not the process.
- ``nats`` — ``connect(NatsConfig(...))``: NATS core + JetStream through nats-py, which is
  imported only when a NATS connection is made.

The conformance suite in ``agentcluster.testing.conformance`` pins the semantics both
backends share.
"""

from agentcluster.transport.interface import (
    DEFAULT_TIMEOUT,
    BucketConfig,
    Connection,
    ConnectionEvent,
    Consumer,
    ConsumerConfig,
    Delivery,
    Entry,
    KeyValue,
    Message,
    ObjectInfo,
    ObjectStore,
    ObjectStoreConfig,
    Operation,
    PubAck,
    StoredMessage,
    Stream,
    StreamConfig,
    StreamState,
    Subscription,
    Watcher,
)
from agentcluster.transport.memory import MemoryTransport
from agentcluster.transport.names import decode_token, encode_token
from agentcluster.transport.nats import NatsConfig
from agentcluster.transport.nats import connect as connect_nats

__all__ = [
    "DEFAULT_TIMEOUT",
    "BucketConfig",
    "Connection",
    "ConnectionEvent",
    "Consumer",
    "ConsumerConfig",
    "Delivery",
    "Entry",
    "KeyValue",
    "MemoryTransport",
    "Message",
    "NatsConfig",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreConfig",
    "Operation",
    "PubAck",
    "StoredMessage",
    "Stream",
    "StreamConfig",
    "StreamState",
    "Subscription",
    "Watcher",
    "connect_nats",
    "decode_token",
    "encode_token",
]
