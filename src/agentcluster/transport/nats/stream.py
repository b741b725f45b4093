"""Durable streams: publish with de-duplication, direct reads by subject, pull consumers.

Publishing is a request to the stream's subject with ``Nats-Msg-Id`` when a ``msg_id`` is
given; the ack says ``duplicate`` when the id was seen within the duplicate window. A full
subject under ``discard="new"`` answers with error 10077 "maximum messages per subject
exceeded" (``SubjectFull``); a subject no stream holds gets no responders (``NoResponders``).
``next_message`` is the leader's ``STREAM.MSG.GET`` with ``next_by_subj``: no consumer state.
Consumers are durable pull consumers with explicit acks, fetched through nats-py's pull
subscription (whose timeouts become an empty batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentcluster.errors import ConfigurationError, PayloadTooLarge, SubstrateError
from agentcluster.transport.interface import (
    Consumer,
    ConsumerConfig,
    Delivery,
    PubAck,
    StoredMessage,
    StreamState,
)
from agentcluster.transport.names import validate_name, validate_subject
from agentcluster.transport.nats.translate import CONSUMER_NOT_FOUND, translate
from agentcluster.transport.nats.wire import (
    API,
    EXPECTED_STREAM,
    MSG_ID,
    ack_metadata,
    decode_stored,
    header_size,
    nanos,
)

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from agentcluster.transport.nats.connection import NatsConnection

__all__ = ["NatsConsumer", "NatsDelivery", "NatsStream"]

_MIN_FETCH_WAIT = 0.01
"""nats-py refuses a fetch without time to wait; shorter waits are rounded up to this."""


class NatsStream:
    """One stream reached through one connection."""

    __slots__ = ("_conn", "_consumers", "_limit", "_name")

    def __init__(self, conn: NatsConnection, name: str, max_msg_size: int) -> None:
        self._conn = conn
        self._name = name
        self._limit = max_msg_size
        self._consumers: dict[str, list[NatsConsumer]] = {}

    @property
    def name(self) -> str:
        return self._name

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> PubAck:
        validate_subject(subject)
        # Pinning the stream makes a subject that another stream holds fail (10060) instead
        # of being stored there, as the memory backend does.
        sent: dict[str, str] = dict(headers) if headers else {}
        sent[EXPECTED_STREAM] = self._name
        if msg_id is not None:
            if not msg_id or any(c in msg_id for c in "\r\n"):
                raise ConfigurationError(f"publish to {subject!r}: bad msg_id {msg_id!r}")
            sent[MSG_ID] = msg_id
        size = len(data) + header_size(sent)
        limit = self._conn._nc._max_payload
        if self._limit > 0:
            limit = min(limit, self._limit)
        if size > limit:
            raise PayloadTooLarge(size, limit, what=f"message for stream {self._name!r}")
        reply = await self._conn._js_publish(
            subject,
            data,
            sent,
            self._conn._timeout(timeout),
            f"publish to {subject!r} in stream {self._name!r}",
        )
        return PubAck(str(reply["stream"]), int(reply["seq"]), bool(reply.get("duplicate")))

    async def next_message(
        self, subject: str, from_seq: int = 1, *, timeout: float | None = None
    ) -> StoredMessage | None:
        validate_subject(subject, wildcards=True)
        reply = await self._conn._api_or_none(
            f"{API}.STREAM.MSG.GET.{self._name}",
            {"seq": max(1, int(from_seq)), "next_by_subj": subject},
            self._conn._timeout(timeout),
            f"read {subject!r} from stream {self._name!r}",
        )
        if reply is None:
            return None
        found, seq, data, headers = decode_stored(reply["message"])
        return StoredMessage(self._name, found, seq, data, headers)

    async def purge(self, subject: str, *, below_seq: int, timeout: float | None = None) -> None:
        validate_subject(subject, wildcards=True)
        if below_seq <= 1:
            return  # nothing lies below the first sequence (and seq 0 would purge everything)
        await self._conn._api(
            f"{API}.STREAM.PURGE.{self._name}",
            {"filter": subject, "seq": int(below_seq)},
            self._conn._timeout(timeout),
            f"purge {subject!r} in stream {self._name!r}",
        )

    async def state(self, *, timeout: float | None = None) -> StreamState:
        reply = await self._conn._api(
            f"{API}.STREAM.INFO.{self._name}",
            None,
            self._conn._timeout(timeout),
            f"state of stream {self._name!r}",
        )
        state = reply.get("state", {})
        return StreamState(
            int(state.get("messages", 0)),
            int(state.get("first_seq", 0)),
            int(state.get("last_seq", 0)),
        )

    async def consumer(self, config: ConsumerConfig) -> Consumer:
        conn = self._conn
        what = f"consumer {config.durable!r} of stream {self._name!r}"
        conn._check_open(what)
        validate_name("consumer", config.durable)
        if config.filter_subject is not None:
            validate_subject(config.filter_subject, wildcards=True)
        if config.deliver not in ("all", "new"):
            raise ConfigurationError(f"{what}: deliver {config.deliver!r} is not 'all' or 'new'")
        if config.ack_wait <= 0:
            raise ConfigurationError(f"{what}: ack_wait must be above 0")
        if config.max_deliver == 0 or config.max_deliver < -1:
            raise ConfigurationError(f"{what}: max_deliver must be -1 or positive")
        body: dict[str, Any] = {
            "durable_name": config.durable,
            "ack_policy": "explicit",
            "ack_wait": nanos(config.ack_wait),
            "max_deliver": config.max_deliver,
            "deliver_policy": config.deliver,
            "max_ack_pending": config.max_ack_pending,
        }
        if config.filter_subject is not None:
            body["filter_subject"] = config.filter_subject
        timeout = conn._timeout(None)
        try:
            await conn._api(
                f"{API}.CONSUMER.DURABLE.CREATE.{self._name}.{config.durable}",
                {"stream_name": self._name, "config": body},
                timeout,
                what,
            )
        except SubstrateError as exc:
            # It exists with settings that cannot change in place: bind to it as it is.
            if exc.code == CONSUMER_NOT_FOUND:
                raise
            await conn._api(
                f"{API}.CONSUMER.INFO.{self._name}.{config.durable}", None, timeout, what
            )
        try:
            pull = await conn._nc.jetstream().pull_subscribe_bind(
                consumer=config.durable, stream=self._name
            )
        except Exception as exc:
            raise translate(exc, what) from exc
        consumer = NatsConsumer(conn, config.durable, pull)
        self._consumers.setdefault(config.durable, []).append(consumer)
        return consumer

    async def delete_consumer(self, durable: str) -> None:
        validate_name("consumer", durable)
        for consumer in self._consumers.pop(durable, []):
            await consumer._release()
        try:
            await self._conn._api(
                f"{API}.CONSUMER.DELETE.{self._name}.{durable}",
                None,
                self._conn._timeout(None),
                f"delete consumer {durable!r} of stream {self._name!r}",
            )
        except SubstrateError as exc:
            if exc.code != CONSUMER_NOT_FOUND:
                raise

    def __repr__(self) -> str:
        return f"NatsStream({self._name!r})"


class NatsConsumer:
    """A durable pull consumer bound on one connection."""

    __slots__ = ("_conn", "_name", "_pull")

    def __init__(self, conn: NatsConnection, name: str, pull: Any) -> None:
        self._conn = conn
        self._name = name
        self._pull = pull

    @property
    def name(self) -> str:
        return self._name

    async def fetch(self, batch: int = 1, *, timeout: float) -> list[Delivery]:
        what = f"fetch from consumer {self._name!r}"
        self._conn._check_open(what)
        if not isinstance(batch, int) or batch < 1:
            raise ConfigurationError(f"{what}: batch {batch!r} must be >= 1")
        try:
            msgs = await self._pull.fetch(batch, timeout=max(timeout, _MIN_FETCH_WAIT))
        except TimeoutError:
            return []
        except Exception as exc:
            raise translate(exc, what) from exc
        return [NatsDelivery(self._conn, msg) for msg in msgs]

    async def _release(self) -> None:
        await self._conn._unsubscribe(self._pull._sub, f"release consumer {self._name!r}")

    def __repr__(self) -> str:
        return f"NatsConsumer({self._name!r})"


class NatsDelivery:
    """A fetched message; settling it twice is a no-op (the first answer stands)."""

    __slots__ = ("_conn", "_delivered", "_msg", "_seq", "_settled")

    def __init__(self, conn: NatsConnection, msg: Msg) -> None:
        self._conn = conn
        self._msg = msg
        self._delivered, self._seq, _cseq, _pending = ack_metadata(msg.reply)
        self._settled = False

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def headers(self) -> Mapping[str, str] | None:
        return self._msg.headers

    @property
    def num_delivered(self) -> int:
        return self._delivered

    async def ack(self) -> None:
        await self._settle(b"+ACK", "ack")

    async def nak(self, delay: float | None = None) -> None:
        if delay is not None and delay > 0:
            await self._settle(b'-NAK {"delay": %d}' % nanos(delay), "nak")
        else:
            await self._settle(b"-NAK", "nak")

    async def in_progress(self) -> None:
        if self._settled:
            return
        await self._reply(b"+WPI", "in_progress")

    async def term(self) -> None:
        await self._settle(b"+TERM", "term")

    async def _settle(self, answer: bytes, verb: str) -> None:
        if self._settled:
            return
        await self._reply(answer, verb)
        self._settled = True

    async def _reply(self, answer: bytes, verb: str) -> None:
        self._conn._check_open(f"{verb} message {self.seq}")
        await self._conn._send(self._msg.reply, answer)

    def __repr__(self) -> str:
        return f"NatsDelivery({self.subject!r}, seq={self.seq}, delivered={self.num_delivered})"
