"""Object stores: whole values by name, of any size, with a NATS-style digest.

NATS cuts objects into chunks below ``max_payload``; in one process there is nothing to
cut, so an object is kept whole and no size limit but the store's ``max_bytes`` applies
(a put past it is refused with ``SubstrateError`` code 10047). Object names are any
non-empty string, as on NATS (which encodes them). The digest is
``"SHA-256=" + urlsafe_b64encode(sha256(data))``, padding kept, as nats-py writes it.
Writes go through ``gate.write``, reads through ``gate.view``; a deleted store answers
``SubstrateError`` code 10059.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

from agentcluster.errors import InvalidName, SubstrateError
from agentcluster.transport.interface import ObjectInfo, ObjectStoreConfig
from agentcluster.transport.memory import gate

if TYPE_CHECKING:
    from agentcluster.transport.memory.connection import MemoryConnection

__all__ = ["MemoryObjectStore", "ObjectData", "digest"]


def digest(data: bytes) -> str:
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode("ascii")


class ObjectData:
    __slots__ = ("config", "objects", "size")

    def __init__(self, config: ObjectStoreConfig) -> None:
        self.config = config
        self.objects: dict[str, tuple[ObjectInfo, bytes]] = {}
        self.size = 0

    def snapshot(self) -> ObjectData:
        copy = ObjectData(self.config)
        copy.objects = dict(self.objects)
        copy.size = self.size
        return copy

    def put(self, name: str, data: bytes) -> ObjectInfo:
        old = self.objects.get(name)
        size = self.size - (old[0].size if old is not None else 0) + len(data)
        if 0 <= self.config.max_bytes < size:
            raise SubstrateError(
                f"object store {self.config.name!r}: maximum bytes exceeded", code=10047
            )
        info = ObjectInfo(self.config.name, name, len(data), digest(data))
        self.objects[name] = (info, bytes(data))
        self.size = size
        return info

    def delete(self, name: str) -> None:
        old = self.objects.pop(name, None)
        if old is not None:
            self.size -= old[0].size


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidName("object name", str(name), "must be a non-empty string")


class MemoryObjectStore:
    __slots__ = ("_conn", "_name")

    def __init__(self, conn: MemoryConnection, name: str) -> None:
        self._conn = conn
        self._name = name

    @property
    def bucket(self) -> str:
        return self._name

    def _live(self) -> ObjectData:
        data = self._conn.hub.store.objects.get(self._name)
        if data is None:
            raise SubstrateError(f"object store {self._name!r} not found", code=10059)
        return data

    def _read(self) -> ObjectData:
        live = self._live()
        store = gate.view(self._conn)
        if store is self._conn.hub.store:
            return live
        return store.objects.get(self._name) or ObjectData(live.config)

    async def put(self, name: str, data: bytes, *, timeout: float | None = None) -> ObjectInfo:
        self._conn.ensure_open()
        _check_name(name)
        self._live()
        return await gate.write(
            self._conn, timeout, lambda: self._live().put(name, data), f"put object {name!r}"
        )

    async def get(self, name: str, *, timeout: float | None = None) -> bytes | None:
        self._conn.ensure_open()
        _check_name(name)
        await gate.before_read(self._conn, timeout, f"get object {name!r}")
        found = self._read().objects.get(name)
        return found[1] if found is not None else None

    async def info(self, name: str, *, timeout: float | None = None) -> ObjectInfo | None:
        self._conn.ensure_open()
        _check_name(name)
        await gate.before_read(self._conn, timeout, f"object info {name!r}")
        found = self._read().objects.get(name)
        return found[0] if found is not None else None

    async def delete(self, name: str, *, timeout: float | None = None) -> None:
        self._conn.ensure_open()
        _check_name(name)
        self._live()
        await gate.write(
            self._conn, timeout, lambda: self._live().delete(name), f"delete object {name!r}"
        )
