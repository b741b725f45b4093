"""A connection's handle on a durable stream.

The handle looks its stream up by name on every call (a deleted stream answers
``SubstrateError`` code 10059), validates, and sends ``publish`` and ``purge`` through
``gate.write``; ``next_message`` and ``state`` read through ``gate.view``. Publishing a
subject this stream does not cover fails like a JetStream publish that names its
stream: ``SubstrateError`` (code 10060) if another stream covers it, ``NoResponders``
if none does. ``next_message`` accepts a wildcard subject too. Consumers are created or
bound by durable name, shared by every connection (see ``consumer``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agentcluster.errors import NoResponders, PayloadTooLarge, SubstrateError
from agentcluster.transport import names
from agentcluster.transport.interface import (
    ConsumerConfig,
    PubAck,
    StoredMessage,
    StreamState,
)
from agentcluster.transport.memory import gate
from agentcluster.transport.memory.consumer import ConsumerState, MemoryConsumer
from agentcluster.transport.memory.streamdata import StreamData

if TYPE_CHECKING:
    from agentcluster.transport.memory.connection import MemoryConnection

__all__ = ["MemoryStream"]


def _not_found(name: str) -> SubstrateError:
    return SubstrateError(f"stream {name!r} not found", code=10059)


class MemoryStream:
    __slots__ = ("_conn", "_name")

    def __init__(self, conn: MemoryConnection, name: str) -> None:
        self._conn = conn
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def _live(self) -> StreamData:
        data = self._conn.hub.store.streams.get(self._name)
        if data is None:
            raise _not_found(self._name)
        return data

    def _read(self) -> StreamData:
        live = self._live()
        store = gate.view(self._conn)
        if store is self._conn.hub.store:
            return live
        return store.streams.get(self._name) or StreamData(live.config)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> PubAck:
        conn = self._conn
        conn.ensure_open()
        names.validate_subject(subject)
        live = self._live()
        size = len(data)
        limit = conn.max_payload
        if 0 <= live.config.max_msg_size < limit:
            limit = live.config.max_msg_size
        if size > limit:
            raise PayloadTooLarge(size, limit, what="message")
        if not live.covers(subject):
            if conn.hub.store.stream_for(subject) is not None:
                raise SubstrateError(
                    f"subject {subject!r} belongs to another stream than {self._name!r}",
                    code=10060,
                )
            raise NoResponders(f"no stream listens on {subject!r}")
        kept = dict(headers) if headers else None

        def apply() -> PubAck:
            return self._live().publish(subject, data, msg_id, kept, self._now())

        return await gate.write(conn, timeout, apply, f"publish {self._name}/{subject}")

    async def next_message(
        self, subject: str, from_seq: int = 1, *, timeout: float | None = None
    ) -> StoredMessage | None:
        self._conn.ensure_open()
        names.validate_subject(subject, wildcards=True)
        await gate.before_read(self._conn, timeout, f"read {self._name}/{subject}")
        data = self._read()
        data.expire(self._now())
        return data.next_message(subject, from_seq)

    async def purge(self, subject: str, *, below_seq: int, timeout: float | None = None) -> None:
        conn = self._conn
        conn.ensure_open()
        names.validate_subject(subject, wildcards=True)
        self._live()

        def apply() -> None:
            data = self._live()
            data.purge(subject, below_seq)
            data.wake_consumers()

        await gate.write(conn, timeout, apply, f"purge {self._name}/{subject}")

    async def state(self, *, timeout: float | None = None) -> StreamState:
        self._conn.ensure_open()
        await gate.before_read(self._conn, timeout, f"state of {self._name}")
        data = self._read()
        data.expire(self._now())
        return data.state()

    async def consumer(self, config: ConsumerConfig) -> MemoryConsumer:
        self._conn.ensure_open()
        names.validate_name("consumer", config.durable)
        if config.filter_subject is not None:
            names.validate_subject(config.filter_subject, wildcards=True)
        data = self._live()
        if config.durable not in data.consumers:
            start = data.last_seq + 1 if config.deliver == "new" else 1
            data.consumers[config.durable] = ConsumerState(config, start)
        return MemoryConsumer(self._conn, self._name, config.durable)

    async def delete_consumer(self, durable: str) -> None:
        self._conn.ensure_open()
        names.validate_name("consumer", durable)
        state = self._live().consumers.pop(durable, None)
        if state is not None:
            state.wake()
