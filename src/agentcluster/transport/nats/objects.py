"""The object store, in the layout every NATS client shares (``OBJ_<bucket>``).

An object is chunks on ``$O.<bucket>.C.<nuid>`` (a fresh nuid per version) and one meta
message on ``$O.<bucket>.M.<base64url(name)>`` — JSON with ``nuid``, ``size``, ``chunks``
and ``digest`` (``SHA-256=`` + base64url) — written last with ``Nats-Rollup: sub``, so the
meta message is the commit point and readers never see a half-written version. Replacing an
object purges the old version's chunks after the new meta landed; deleting writes a meta
with ``deleted: true`` and purges the chunks.

Implemented here rather than through nats-py's ``ObjectStore`` for per-call timeouts and
because its ``get`` leaves an ordered-consumer subscription behind when interrupted. Chunks
are read back one by one with ``STREAM.MSG.GET`` (``next_by_subj``), verified against the
digest. Object links are not supported.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import orjson
from nats.nuid import NUID

from agentcluster.errors import InvalidName, SubstrateError
from agentcluster.transport.interface import ObjectInfo
from agentcluster.transport.nats.wire import API, ROLLUP, decode_stored

if TYPE_CHECKING:
    from agentcluster.transport.nats.connection import NatsConnection

__all__ = ["NatsObjectStore"]

_log = logging.getLogger("agentcluster.transport.nats")

CHUNK_SIZE = 128 * 1024
_ROLLUP_SUBJECT = {ROLLUP: "sub"}
_DIGEST_PREFIX = "SHA-256="


def _digest(hasher: Any) -> str:
    return _DIGEST_PREFIX + base64.urlsafe_b64encode(hasher.digest()).decode()


class _Deadline:
    """One timeout shared by the several requests of an object operation."""

    __slots__ = ("_at", "_loop", "_timeout")

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._at = self._loop.time() + timeout

    def left(self) -> float:
        """Seconds left; at least a sliver, so the last request times out on its own."""
        return max(self._at - self._loop.time(), 0.001)


class NatsObjectStore:
    """One object store bucket reached through one connection."""

    __slots__ = ("_bucket", "_conn", "_get_subject", "_nuid", "_stream")

    def __init__(self, conn: NatsConnection, bucket: str) -> None:
        self._conn = conn
        self._bucket = bucket
        self._stream = f"OBJ_{bucket}"
        self._get_subject = f"{API}.STREAM.MSG.GET.OBJ_{bucket}"
        self._nuid = NUID()

    @property
    def bucket(self) -> str:
        return self._bucket

    async def put(self, name: str, data: bytes, *, timeout: float | None = None) -> ObjectInfo:
        _check_name(name)
        conn = self._conn
        deadline = _Deadline(conn._timeout(timeout))
        what = f"put object {name!r} in {self._bucket!r}"
        existing = await self._meta(name, deadline, what)
        nuid = self._nuid.next().decode()
        chunk_subject = f"$O.{self._bucket}.C.{nuid}"
        chunk_size = min(CHUNK_SIZE, conn._nc._max_payload - 1024)
        hasher = hashlib.sha256()
        view = memoryview(data)
        chunks = 0
        try:
            for start in range(0, len(data), chunk_size):
                chunk = bytes(view[start : start + chunk_size])
                hasher.update(chunk)
                await conn._js_publish(chunk_subject, chunk, None, deadline.left(), what)
                chunks += 1
            meta = {
                "name": name,
                "bucket": self._bucket,
                "nuid": nuid,
                "size": len(data),
                "chunks": chunks,
                "digest": _digest(hasher),
                "options": {"max_chunk_size": chunk_size},
            }
            await conn._js_publish(
                self._meta_subject(name),
                orjson.dumps(meta),
                dict(_ROLLUP_SUBJECT),
                deadline.left(),
                what,
            )
        except Exception:
            await self._purge_quietly(chunk_subject, what)
            raise
        if existing is not None and existing.get("nuid") and existing["nuid"] != nuid:
            await self._purge_quietly(f"$O.{self._bucket}.C.{existing['nuid']}", what)
        return ObjectInfo(self._bucket, name, len(data), str(meta["digest"]))

    async def get(self, name: str, *, timeout: float | None = None) -> bytes | None:
        _check_name(name)
        deadline = _Deadline(self._conn._timeout(timeout))
        what = f"get object {name!r} from {self._bucket!r}"
        meta = await self._meta(name, deadline, what)
        if meta is None:
            return None
        if meta.get("options", {}).get("link"):
            raise SubstrateError(f"{what}: object links are not supported")
        size = int(meta.get("size", 0))
        if size == 0:
            return b""
        chunk_subject = f"$O.{self._bucket}.C.{meta['nuid']}"
        expected_chunks = int(meta.get("chunks", 0))
        hasher = hashlib.sha256()
        parts: list[bytes] = []
        seq = 1
        for _ in range(expected_chunks):
            reply = await self._conn._api_or_none(
                self._get_subject,
                {"seq": seq, "next_by_subj": chunk_subject},
                deadline.left(),
                what,
            )
            if reply is None:
                now = await self._meta(name, deadline, what)
                if now is None:
                    return None  # deleted while we read
                if now.get("nuid") != meta.get("nuid"):
                    return await self.get(name, timeout=deadline.left())  # replaced meanwhile
                raise SubstrateError(
                    f"{what}: chunk {len(parts) + 1} of {expected_chunks} is missing"
                )
            _subject, found, data, _headers = decode_stored(reply["message"])
            hasher.update(data)
            parts.append(data)
            seq = found + 1
        blob = b"".join(parts)
        if len(blob) != size or _digest(hasher) != meta.get("digest"):
            raise SubstrateError(f"{what}: the chunks do not match the recorded size and digest")
        return blob

    async def info(self, name: str, *, timeout: float | None = None) -> ObjectInfo | None:
        _check_name(name)
        what = f"info of object {name!r} in {self._bucket!r}"
        meta = await self._meta(name, _Deadline(self._conn._timeout(timeout)), what)
        if meta is None:
            return None
        return ObjectInfo(self._bucket, name, int(meta.get("size", 0)), str(meta.get("digest")))

    async def delete(self, name: str, *, timeout: float | None = None) -> None:
        _check_name(name)
        deadline = _Deadline(self._conn._timeout(timeout))
        what = f"delete object {name!r} from {self._bucket!r}"
        meta = await self._meta(name, deadline, what)
        if meta is None:
            return
        tombstone = dict(meta, deleted=True, size=0, chunks=0, digest="")
        await self._conn._js_publish(
            self._meta_subject(name),
            orjson.dumps(tombstone),
            dict(_ROLLUP_SUBJECT),
            deadline.left(),
            what,
        )
        if meta.get("nuid"):
            await self._conn._api(
                f"{API}.STREAM.PURGE.{self._stream}",
                {"filter": f"$O.{self._bucket}.C.{meta['nuid']}"},
                deadline.left(),
                what,
            )

    # --- internals --------------------------------------------------------------------

    def _meta_subject(self, name: str) -> str:
        encoded = base64.urlsafe_b64encode(name.encode()).decode()
        return f"$O.{self._bucket}.M.{encoded}"

    async def _meta(self, name: str, deadline: _Deadline, what: str) -> dict[str, Any] | None:
        """The object's meta record, or ``None`` if it is absent or deleted."""
        reply = await self._conn._api_or_none(
            self._get_subject, {"last_by_subj": self._meta_subject(name)}, deadline.left(), what
        )
        if reply is None:
            return None
        _subject, _seq, data, _headers = decode_stored(reply["message"])
        try:
            meta = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SubstrateError(f"{what}: unreadable object meta: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("deleted"):
            return None
        return meta

    async def _purge_quietly(self, subject: str, what: str) -> None:
        try:
            await self._conn._api(
                f"{API}.STREAM.PURGE.{self._stream}",
                {"filter": subject},
                self._conn._timeout(None),
                what,
            )
        except Exception as exc:  # leftover chunks waste space but break nothing
            _log.warning("%s: could not purge %s: %r", what, subject, exc)

    def __repr__(self) -> str:
        return f"NatsObjectStore({self._bucket!r})"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidName("object name", str(name), "must be a non-empty string")
