"""Key-value buckets on JetStream: the ``KV_<bucket>`` stream, one subject per key.

A bucket is the stream ``KV_<bucket>`` on ``$KV.<bucket>.>`` (the layout every NATS client
uses). A write is a publish to ``$KV.<bucket>.<key>``; compare-and-set adds the
``Nats-Expected-Last-Subject-Sequence`` header, so the revision is the stream sequence. A
delete is a message with ``KV-Operation: DEL``. Reads use the leader's ``STREAM.MSG.GET``
(``last_by_subj``), not direct gets that a lagging replica may answer. ``keys`` and
``watch`` run a server-filtered consumer (``watch.py``).

The server answers "key exists" and "wrong revision" alike (10071): ``create`` turns it into
``KeyExists`` — after checking whether the last entry is a delete marker, in which case the
key is absent and the write is retried as a compare-and-set on the marker's revision —
and ``update`` / ``delete`` into ``RevisionMismatch``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentcluster.errors import KeyExists, PayloadTooLarge, RevisionMismatch, SubstrateError
from agentcluster.transport.interface import Entry, Watcher
from agentcluster.transport.names import validate_key, validate_prefix
from agentcluster.transport.nats.translate import WRONG_LAST_SEQUENCE
from agentcluster.transport.nats.watch import NatsWatcher
from agentcluster.transport.nats.wire import (
    API,
    EXPECTED_LAST_SUBJECT_SEQ,
    KV_OPERATION,
    decode_stored,
    header_size,
)

if TYPE_CHECKING:
    from agentcluster.transport.nats.connection import NatsConnection

__all__ = ["NatsKeyValue"]

_DELETE_MARKERS = ("DEL", "PURGE")
_DELETE_HEADERS = {KV_OPERATION: "DEL"}
_CREATE_ATTEMPTS = 5


class NatsKeyValue:
    """One key-value bucket reached through one connection."""

    __slots__ = ("_bucket", "_conn", "_get_subject", "_prefix", "_stream", "_value_limit")

    def __init__(self, conn: NatsConnection, bucket: str, max_value_size: int) -> None:
        self._conn = conn
        self._bucket = bucket
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._get_subject = f"{API}.STREAM.MSG.GET.KV_{bucket}"
        self._value_limit = max_value_size

    @property
    def bucket(self) -> str:
        return self._bucket

    async def get(self, key: str, *, timeout: float | None = None) -> Entry | None:
        validate_key(key)
        last = await self._last(key, self._conn._timeout(timeout))
        if last is None or last[2]:
            return None
        revision, value, _ = last
        return Entry(self._bucket, key, value, revision)

    async def put(self, key: str, value: bytes, *, timeout: float | None = None) -> int:
        validate_key(key)
        self._check_size(value, None)
        reply = await self._conn._js_publish(
            self._prefix + key, value, None, self._conn._timeout(timeout), self._what("put", key)
        )
        return int(reply["seq"])

    async def create(self, key: str, value: bytes, *, timeout: float | None = None) -> int:
        validate_key(key)
        seconds = self._conn._timeout(timeout)
        expected = 0
        for _ in range(_CREATE_ATTEMPTS):
            try:
                return await self._write(key, value, expected, seconds, "create")
            except SubstrateError as exc:
                if exc.code not in WRONG_LAST_SEQUENCE:
                    raise
            last = await self._last(key, seconds)
            if last is not None and not last[2]:
                raise KeyExists(self._bucket, key) from None
            # Absent (a delete marker, or purged meanwhile): CAS on what the subject holds.
            expected = 0 if last is None else last[0]
        raise KeyExists(self._bucket, key)

    async def update(
        self, key: str, value: bytes, revision: int, *, timeout: float | None = None
    ) -> int:
        validate_key(key)
        try:
            return await self._write(key, value, revision, self._conn._timeout(timeout), "update")
        except SubstrateError as exc:
            if exc.code in WRONG_LAST_SEQUENCE:
                raise RevisionMismatch(self._bucket, key, revision) from None
            raise

    async def delete(
        self, key: str, *, revision: int | None = None, timeout: float | None = None
    ) -> None:
        validate_key(key)
        headers = dict(_DELETE_HEADERS)
        if revision is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQ] = str(int(revision))
        try:
            await self._conn._js_publish(
                self._prefix + key,
                b"",
                headers,
                self._conn._timeout(timeout),
                self._what("delete", key),
            )
        except SubstrateError as exc:
            if revision is not None and exc.code in WRONG_LAST_SEQUENCE:
                raise RevisionMismatch(self._bucket, key, revision) from None
            raise

    async def keys(self, prefix: str = "", *, timeout: float | None = None) -> list[str]:
        validate_prefix(prefix)
        watcher = await NatsWatcher.start(
            self._conn,
            self._bucket,
            prefix,
            pending_limit=65536,
            keys_only=True,
            timeout=self._conn._timeout(timeout),
        )
        await watcher.stop()
        return sorted(entry.key for entry in watcher.initial)

    async def watch(self, prefix: str = "", *, pending_limit: int = 65536) -> Watcher:
        validate_prefix(prefix)
        return await NatsWatcher.start(
            self._conn,
            self._bucket,
            prefix,
            pending_limit=pending_limit,
            keys_only=False,
            timeout=self._conn._timeout(None),
        )

    # --- internals --------------------------------------------------------------------

    async def _write(self, key: str, value: bytes, expected: int, timeout: float, verb: str) -> int:
        headers = {EXPECTED_LAST_SUBJECT_SEQ: str(int(expected))}
        self._check_size(value, headers)
        reply = await self._conn._js_publish(
            self._prefix + key, value, headers, timeout, self._what(verb, key)
        )
        return int(reply["seq"])

    async def _last(self, key: str, timeout: float) -> tuple[int, bytes, bool] | None:
        """``(revision, value, is_delete_marker)`` of the key's last message, or ``None``."""
        reply = await self._conn._api_or_none(
            self._get_subject,
            {"last_by_subj": self._prefix + key},
            timeout,
            self._what("get", key),
        )
        if reply is None:
            return None
        _subject, seq, data, headers = decode_stored(reply["message"])
        deleted = headers is not None and headers.get(KV_OPERATION) in _DELETE_MARKERS
        return seq, data, deleted

    def _check_size(self, value: bytes, headers: dict[str, str] | None) -> None:
        size = len(value) + header_size(headers)
        limit = self._conn._nc._max_payload
        if self._value_limit > 0:
            limit = min(limit, self._value_limit)
        if size > limit:
            raise PayloadTooLarge(size, limit, what=f"value for bucket {self._bucket!r}")

    def _what(self, verb: str, key: str) -> str:
        return f"{verb} {key!r} in bucket {self._bucket!r}"

    def __repr__(self) -> str:
        return f"NatsKeyValue({self._bucket!r})"
