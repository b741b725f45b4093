"""Creating, binding and deleting buckets, streams and object stores in the shared store.

All three are idempotent creates: a missing one is made, a present one is bound. A
bucket or object store keeps the configuration it was created with; a stream takes the
new configuration and trims itself to the new limits (JetStream's stream update).
Stream subjects default to the stream name, as on NATS; overlapping subjects between
streams are not refused — the first created stream takes the message. Deleting a missing
one is not an error. Deleting a bucket ends its watchers; deleting a stream wakes its
consumers' fetches, which then fail with ``SubstrateError``. None of this is subject to
store faults: the management plane is assumed reachable.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from agentcluster.transport import names
from agentcluster.transport.interface import BucketConfig, ObjectStoreConfig, StreamConfig
from agentcluster.transport.memory.kv import BucketData, MemoryKeyValue
from agentcluster.transport.memory.objects import MemoryObjectStore, ObjectData
from agentcluster.transport.memory.stream import MemoryStream
from agentcluster.transport.memory.streamdata import StreamData

if TYPE_CHECKING:
    from agentcluster.transport.memory.connection import MemoryConnection

__all__ = [
    "delete_bucket",
    "delete_object_store",
    "delete_stream",
    "open_bucket",
    "open_object_store",
    "open_stream",
]


def open_bucket(conn: MemoryConnection, config: BucketConfig) -> MemoryKeyValue:
    names.validate_name("bucket", config.name)
    buckets = conn.hub.store.buckets
    if config.name not in buckets:
        buckets[config.name] = BucketData(config)
    return MemoryKeyValue(conn, config.name)


def delete_bucket(conn: MemoryConnection, name: str) -> None:
    names.validate_name("bucket", name)
    data = conn.hub.store.buckets.pop(name, None)
    if data is not None:
        for watcher in tuple(data.watchers):
            watcher.end()


def open_stream(conn: MemoryConnection, config: StreamConfig) -> MemoryStream:
    names.validate_name("stream", config.name)
    if not config.subjects:
        config = replace(config, subjects=(config.name,))
    for subject in config.subjects:
        names.validate_subject(subject, wildcards=True)
    streams = conn.hub.store.streams
    data = streams.get(config.name)
    if data is None:
        streams[config.name] = StreamData(config)
    elif data.config != config:
        data.config = config
        data.enforce_limits()
    return MemoryStream(conn, config.name)


def delete_stream(conn: MemoryConnection, name: str) -> None:
    names.validate_name("stream", name)
    data = conn.hub.store.streams.pop(name, None)
    if data is not None:
        data.wake_consumers()


def open_object_store(conn: MemoryConnection, config: ObjectStoreConfig) -> MemoryObjectStore:
    names.validate_name("object store", config.name)
    objects = conn.hub.store.objects
    if config.name not in objects:
        objects[config.name] = ObjectData(config)
    return MemoryObjectStore(conn, config.name)


def delete_object_store(conn: MemoryConnection, name: str) -> None:
    names.validate_name("object store", name)
    conn.hub.store.objects.pop(name, None)
