"""Everything the memory substrate stores: buckets, streams, object stores, by name.

One live ``Store`` belongs to the ``MemoryTransport``; ``snapshot`` copies it (data only:
no watchers, consumers or de-duplication ids) for the ``cut_off`` fault, whose victims
read that frozen copy while the live store moves on.
"""

from __future__ import annotations

from agentcluster.transport.memory.kv import BucketData
from agentcluster.transport.memory.objects import ObjectData
from agentcluster.transport.memory.streamdata import StreamData

__all__ = ["Store"]


class Store:
    __slots__ = ("buckets", "objects", "streams")

    def __init__(self) -> None:
        self.buckets: dict[str, BucketData] = {}
        self.streams: dict[str, StreamData] = {}
        self.objects: dict[str, ObjectData] = {}

    def snapshot(self) -> Store:
        copy = Store()
        copy.buckets = {name: data.snapshot() for name, data in self.buckets.items()}
        copy.streams = {name: data.snapshot() for name, data in self.streams.items()}
        copy.objects = {name: data.snapshot() for name, data in self.objects.items()}
        return copy

    def stream_for(self, subject: str) -> StreamData | None:
        """The stream that stores ``subject`` (the first created, should two overlap)."""
        for data in self.streams.values():
            if data.covers(subject):
                return data
        return None
