"""``NatsConnection``: the ``Connection`` protocol over one nats-py client.

Theory of operation. Core messages go straight to nats-py with as little in between as
possible (one closed-flag check, a cached subject check, a size check): the subscription
path is benchmarked against raw nats-py. JetStream is spoken directly — API requests and
publishes with headers through ``request`` with a per-call timeout, replies decoded with
orjson — rather than through nats-py's ``KeyValue`` / ``ObjectStore`` helpers, which take
no timeout, hide error codes behind shared classes, and filter keys on the client. Every
exception nats-py raises is translated in ``translate``; nothing of nats-py leaks out.

nats-py reports asynchronous trouble through callbacks: they become ``ConnectionEvent``s for
listeners, and a slow-consumer report (which names the subscription id) counts a dropped
message on that subscription, or invalidates the key-value watch it belongs to.
nats-server answers a publish whose subject has no subscriber with an empty "503" status
message on the publish's reply subject; a subscription never hands those on (counted in
``no_responder_notices``): to a reply inbox they are no reply, and the memory backend sends
none.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import nats.errors
import orjson
from nats.aio.client import Client, Server
from nats.aio.msg import Msg

from agentcluster.errors import (
    ConfigurationError,
    ConnectionClosed,
    PayloadTooLarge,
    RequestTimeout,
    SubstrateError,
)
from agentcluster.transport.interface import (
    DEFAULT_TIMEOUT,
    BucketConfig,
    ConnectionEvent,
    EventListener,
    Handler,
    KeyValue,
    Message,
    ObjectStore,
    ObjectStoreConfig,
    Stream,
    StreamConfig,
    Subscription,
)
from agentcluster.transport.names import validate_name, validate_subject
from agentcluster.transport.nats.config import NatsConfig
from agentcluster.transport.nats.translate import (
    NO_MESSAGE,
    STREAM_IN_USE,
    STREAM_NOT_FOUND,
    api_error,
    translate,
)
from agentcluster.transport.nats.wire import API, header_size, nanos

if TYPE_CHECKING:
    from agentcluster.transport.nats.watch import NatsWatcher

__all__ = ["NatsConnection", "NatsSubscription"]

_log = logging.getLogger("agentcluster.transport.nats")

# ``Message`` is a frozen slotted dataclass; on the delivery path it is built through its
# slot descriptors, 40% cheaper than its ``__init__`` (the object is the same).
_new = object.__new__
_slots: Any = Message
_set_subject: Callable[[Message, str], None] = _slots.subject.__set__
_set_data: Callable[[Message, bytes], None] = _slots.data.__set__
_set_reply: Callable[[Message, str], None] = _slots.reply.__set__
_set_headers: Callable[[Message, Mapping[str, str] | None], None] = _slots.headers.__set__

_SLOW_CONSUMER_EVENT_EVERY = 1.0
"""Seconds between two ``SLOW_CONSUMER`` events of one connection (nats-py reports every
dropped message; listeners hear about an episode, the counters keep the exact number)."""


class _SidOwner(Protocol):
    """Whatever owns a nats-py subscription id: told when nats-py dropped a message for it."""

    def _message_dropped(self) -> None: ...


class NatsSubscription:
    """A core subscription; ``dropped`` counts what nats-py discarded as a slow consumer."""

    __slots__ = ("_active", "_conn", "_dropped", "_queue", "_sub", "_subject")

    def __init__(self, conn: NatsConnection, sub: Any, subject: str, queue: str | None) -> None:
        self._conn = conn
        self._sub = sub
        self._subject = subject
        self._queue = queue
        self._dropped = 0
        self._active = True

    @property
    def subject(self) -> str:
        return self._subject

    @property
    def queue(self) -> str | None:
        return self._queue

    @property
    def dropped(self) -> int:
        return self._dropped

    def _message_dropped(self) -> None:
        self._dropped += 1

    async def unsubscribe(self) -> None:
        if not self._active:
            return
        self._active = False
        await self._conn._unsubscribe(self._sub, f"unsubscribe {self._subject!r}")

    def __repr__(self) -> str:
        return f"NatsSubscription({self._subject!r}, queue={self._queue!r})"


class NatsConnection:
    """One node's (or client's) link to a NATS cluster. Build it with ``connect``."""

    def __init__(self, config: NatsConfig, nc: Client) -> None:
        self._config = config
        self._nc = nc
        self._closed = False
        self.no_responder_notices = 0
        """The "no responders" notices that ``subscribe`` dropped (module docstring)."""
        self._listeners: list[EventListener] = []
        self._owners: dict[int, _SidOwner] = {}
        self._watchers: set[NatsWatcher] = set()
        self._connecting = True
        self._fatal: asyncio.Future[BaseException] | None = None
        self._last_error: BaseException | None = None
        self._slow_event_at = float("-inf")
        self._rng = random.Random()
        self._next_server = 0

    # --- opening ------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: NatsConfig) -> NatsConnection:
        """Connect within ``config.connect_timeout`` or fail with a typed error."""
        conn = cls(config, Client())
        options = config.connect_options()
        options.update(
            error_cb=conn._on_error,
            disconnected_cb=conn._on_disconnected,
            reconnected_cb=conn._on_reconnected,
            closed_cb=conn._on_closed,
        )
        if config.allow_reconnect and config.reconnect_jitter > 0:
            options["reconnect_to_server_handler"] = conn._pick_server
        await conn._connect(options)
        return conn

    async def _connect(self, options: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        config = self._config
        self._fatal = loop.create_future()
        attempt = loop.create_task(self._nc.connect(**options))
        either: set[asyncio.Future[Any]] = {attempt, self._fatal}
        try:
            await asyncio.wait(
                either, timeout=config.connect_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            attempt.cancel()
            await self._abandon(attempt)
            raise
        if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
            self._connecting = False
            self._fatal = None
            if config.tls_required and not self._nc._server_info.get("tls_required"):
                await self._abandon(attempt)
                raise SubstrateError(
                    f"connect to {config.describe()}: TLS is configured but the server does "
                    "not require it; refusing a plaintext connection"
                )
            return
        fatal = self._fatal.done()
        finished = attempt.done()
        cause: BaseException | None = None
        if fatal:
            cause = self._fatal.result()
        elif finished and not attempt.cancelled():
            cause = attempt.exception()
        if cause is None:
            cause = self._last_error
        timed_out = not finished and not fatal
        attempt.cancel()
        await self._abandon(attempt)
        self._fatal = None
        self._closed = True
        what = f"connect to {config.describe()}"
        if cause is not None:
            error = translate(cause, what)
            if isinstance(error, ConfigurationError):
                raise error from cause
        if fatal:
            raise SubstrateError(f"{what} refused: {cause}", retryable=False) from cause
        if timed_out:
            last = f" (last error: {cause})" if cause is not None else ""
            raise SubstrateError(
                f"{what}: not connected within {config.connect_timeout}s{last}", retryable=True
            ) from cause
        raise SubstrateError(f"{what} failed: {cause}", retryable=True) from cause

    async def _abandon(self, attempt: asyncio.Task[None]) -> None:
        """Stop a connect attempt and release whatever it opened."""
        await asyncio.wait({attempt})
        if not attempt.cancelled():
            attempt.exception()  # retrieved: it is reported through our own error
        try:
            await asyncio.wait_for(self._nc.close(), self._config.connect_timeout)
        except Exception as exc:  # best effort: the attempt failed already
            _log.debug("closing a failed connect attempt: %r", exc)

    def _pick_server(self, servers: list[Server], info: dict[str, Any]) -> tuple[Server, float]:
        """Round-robin reconnect target, spaced by ``reconnect_time_wait`` plus jitter."""
        self._next_server += 1
        server = servers[self._next_server % len(servers)]
        delay = self._config.reconnect_time_wait + self._rng.uniform(
            0.0, self._config.reconnect_jitter
        )
        return server, delay

    # --- nats-py callbacks ----------------------------------------------------------------

    def _emit(self, event: ConnectionEvent) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("connection listener %r failed on %s", listener, event)

    async def _on_disconnected(self) -> None:
        self._emit(ConnectionEvent.DISCONNECTED)

    async def _on_reconnected(self) -> None:
        self._emit(ConnectionEvent.RECONNECTED)

    async def _on_closed(self) -> None:
        if not self._closed:  # nats-py gave up on the link (not our close)
            self._closed = True
            self._stop_watchers(ConnectionClosed(f"connection {self.name!r} was lost for good"))
        self._emit(ConnectionEvent.CLOSED)

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            owner = self._owners.get(exc.sid)
            if owner is not None:
                owner._message_dropped()
            now = asyncio.get_running_loop().time()
            if now - self._slow_event_at >= _SLOW_CONSUMER_EVENT_EVERY:
                self._slow_event_at = now
                _log.warning("slow consumer on %r: messages dropped", exc.subject)
                self._emit(ConnectionEvent.SLOW_CONSUMER)
            return
        self._last_error = exc
        if self._connecting:
            fatal = self._fatal
            if (
                fatal is not None
                and not fatal.done()
                and (
                    isinstance(exc, (nats.errors.AuthorizationError, ssl.SSLError))
                    or "authorization" in str(exc).lower()
                )
            ):
                fatal.set_result(exc)
            _log.debug("connect attempt failed: %r", exc)
            return
        if isinstance(exc, (nats.errors.Error, OSError)):
            _log.warning("nats connection %r: %s", self._config.name, exc)
        else:  # raised by a subscription handler (nats-py reports those here too)
            _log.error("a subscription handler failed: %r", exc, exc_info=exc)

    # --- Connection: properties and listeners ----------------------------------------------

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def config(self) -> NatsConfig:
        return self._config

    @property
    def max_payload(self) -> int:
        return self._nc.max_payload

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def is_connected(self) -> bool:
        return not self._closed and self._nc.is_connected

    def add_listener(self, listener: EventListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    # --- Connection: core messages ---------------------------------------------------------

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        reply: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if self._closed:
            raise ConnectionClosed(f"publish to {subject!r}: the connection is closed")
        validate_subject(subject)
        if reply:
            validate_subject(reply)
        nc = self._nc
        size = len(data) if headers is None else len(data) + header_size(headers)
        if size > nc._max_payload:
            raise PayloadTooLarge(size, nc._max_payload, what="message")
        try:
            await nc.publish(subject, data, reply, headers)  # type: ignore[arg-type]
        except Exception as exc:
            raise translate(exc, f"publish to {subject!r}") from exc

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        pending_limit: int = 65536,
    ) -> Subscription:
        self._check_open(f"subscribe to {subject!r}")
        validate_subject(subject, wildcards=True)
        if queue is not None:
            validate_subject(queue)
        if not isinstance(pending_limit, int) or pending_limit < 1:
            raise ConfigurationError(f"subscribe: pending_limit {pending_limit!r} must be >= 1")

        async def deliver(msg: Msg) -> None:
            headers = msg.headers
            if headers is not None and not msg.data and headers.get("Status") == "503":
                # nats-server's "no responders" notice for a publish of ours whose
                # subject nobody subscribes to, sent to the reply subject we gave: not a
                # message (the memory backend sends none).
                self.no_responder_notices += 1
                return
            message = _new(Message)
            _set_subject(message, msg.subject)
            _set_data(message, msg.data)
            _set_reply(message, msg.reply)
            _set_headers(message, msg.headers)
            await handler(message)

        try:
            sub = await self._nc.subscribe(
                subject,
                queue=queue or "",
                cb=deliver,
                pending_msgs_limit=pending_limit,
                pending_bytes_limit=self._config.pending_bytes_limit,
            )
        except Exception as exc:
            raise translate(exc, f"subscribe to {subject!r}") from exc
        wrapped = NatsSubscription(self, sub, subject, queue)
        self._owners[sub._id] = wrapped
        return wrapped

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        if self._closed:
            raise ConnectionClosed(f"request to {subject!r}: the connection is closed")
        validate_subject(subject)
        nc = self._nc
        size = len(data) if headers is None else len(data) + header_size(headers)
        if size > nc._max_payload:
            raise PayloadTooLarge(size, nc._max_payload, what="message")
        try:
            msg = await nc.request(subject, data, timeout=timeout, headers=headers)  # type: ignore[arg-type]
        except Exception as exc:
            raise translate(exc, f"request to {subject!r}") from exc
        return Message(msg.subject, msg.data, msg.reply, msg.headers)

    async def flush(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once the server has processed everything sent on this connection so far.

        nats-py writes its PING straight to the socket while SUB and PUB commands wait in
        a buffer for its flusher task, so its own ``flush`` can see the PONG before the
        server saw a SUB queued just before it (a request right after then finds no
        responders). The buffer is written out first, then the round trip is made.
        """
        self._check_open("flush")
        nc = self._nc
        try:
            async with asyncio.timeout(timeout):
                await nc._flush_pending(force_flush=True)
            await nc.flush(timeout)  # type: ignore[arg-type]  # nats-py says int; any number works
        except TimeoutError as exc:
            raise RequestTimeout(f"flush: the server did not answer within {timeout:g} s") from exc
        except Exception as exc:
            raise translate(exc, "flush") from exc

    async def close(self) -> None:
        if self._closed and self._nc.is_closed:
            return
        self._closed = True
        self._stop_watchers()
        if self._nc.is_closed:
            return
        try:
            await asyncio.wait_for(self._nc.close(), self._config.request_timeout)
        except Exception as exc:  # closing is best effort; the link is given up either way
            _log.warning("closing the NATS connection: %r", exc)

    # --- Connection: stores ----------------------------------------------------------------

    async def key_value(self, config: BucketConfig) -> KeyValue:
        from agentcluster.transport.nats.kv import NatsKeyValue

        what = f"key-value bucket {config.name!r}"
        self._check_open(what)
        validate_name("bucket", config.name)
        _check_storage(what, config.storage, config.replicas)
        if not isinstance(config.history, int) or not 1 <= config.history <= 64:
            raise ConfigurationError(f"{what}: history {config.history!r} must be 1..64")
        stream = f"KV_{config.name}"
        body: dict[str, Any] = {
            "name": stream,
            "subjects": [f"$KV.{config.name}.>"],
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": config.max_bytes,
            "max_age": 0,
            "max_msgs_per_subject": config.history,
            "max_msg_size": config.max_value_size,
            "discard": "new",
            "storage": config.storage,
            "num_replicas": config.replicas,
            "duplicate_window": nanos(120.0),
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "allow_direct": True,
        }
        if config.description:
            body["description"] = config.description
        info = await self._create_or(stream, body, what, update=False)
        found = info.get("config", {})
        if int(found.get("max_msgs_per_subject", 0)) < 1:
            raise SubstrateError(f"{what}: stream {stream!r} exists but is not a key-value bucket")
        return NatsKeyValue(self, config.name, int(found.get("max_msg_size", -1)))

    async def delete_key_value(self, name: str) -> None:
        validate_name("bucket", name)
        await self._delete_stream(f"KV_{name}", f"delete key-value bucket {name!r}")

    async def stream(self, config: StreamConfig) -> Stream:
        from agentcluster.transport.nats.stream import NatsStream

        what = f"stream {config.name!r}"
        self._check_open(what)
        validate_name("stream", config.name)
        _check_storage(what, config.storage, config.replicas)
        if isinstance(config.subjects, str) or not config.subjects:
            raise ConfigurationError(f"{what}: subjects must be a non-empty tuple of subjects")
        for subject in config.subjects:
            validate_subject(subject, wildcards=True)
        if config.discard not in ("old", "new"):
            raise ConfigurationError(f"{what}: discard {config.discard!r} is not 'old' or 'new'")
        if config.max_age < 0 or config.duplicate_window < 0:
            raise ConfigurationError(f"{what}: max_age and duplicate_window must be >= 0")
        window = config.duplicate_window
        if config.max_age > 0:
            window = min(window, config.max_age)  # the server refuses a window beyond max_age
        body: dict[str, Any] = {
            "name": config.name,
            "subjects": list(config.subjects),
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": config.max_msgs,
            "max_bytes": config.max_bytes,
            "max_age": nanos(config.max_age),
            "max_msgs_per_subject": config.max_msgs_per_subject,
            "max_msg_size": config.max_msg_size,
            "discard": config.discard,
            "discard_new_per_subject": config.discard == "new" and config.max_msgs_per_subject > 0,
            "storage": config.storage,
            "num_replicas": config.replicas,
            "duplicate_window": nanos(window),
        }
        info = await self._create_or(config.name, body, what, update=True)
        found = info.get("config", {})
        return NatsStream(self, config.name, int(found.get("max_msg_size", -1)))

    async def delete_stream(self, name: str) -> None:
        validate_name("stream", name)
        await self._delete_stream(name, f"delete stream {name!r}")

    async def object_store(self, config: ObjectStoreConfig) -> ObjectStore:
        from agentcluster.transport.nats.objects import NatsObjectStore

        what = f"object store {config.name!r}"
        self._check_open(what)
        validate_name("object store", config.name)
        _check_storage(what, config.storage, config.replicas)
        stream = f"OBJ_{config.name}"
        body: dict[str, Any] = {
            "name": stream,
            "subjects": [f"$O.{config.name}.C.>", f"$O.{config.name}.M.>"],
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": config.max_bytes if config.max_bytes != 0 else -1,
            "max_age": 0,
            "max_msgs_per_subject": -1,
            "max_msg_size": -1,
            "discard": "new",
            "storage": config.storage,
            "num_replicas": config.replicas,
            "duplicate_window": nanos(120.0),
            "allow_rollup_hdrs": True,
            "allow_direct": True,
        }
        await self._create_or(stream, body, what, update=False)
        return NatsObjectStore(self, config.name)

    async def delete_object_store(self, name: str) -> None:
        validate_name("object store", name)
        await self._delete_stream(f"OBJ_{name}", f"delete object store {name!r}")

    # --- shared by the store modules ------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ConnectionClosed(f"{what}: the connection is closed")

    def _timeout(self, timeout: float | None) -> float:
        return self._config.request_timeout if timeout is None else timeout

    async def _api(
        self, subject: str, body: Mapping[str, Any] | None, timeout: float, what: str
    ) -> dict[str, Any]:
        """A JetStream API request; its ``error`` reply raised as our error."""
        reply = await self._api_reply(subject, body, timeout, what)
        error = reply.get("error")
        if error is not None:
            raise api_error(error, what)
        return reply

    async def _api_or_none(
        self, subject: str, body: Mapping[str, Any] | None, timeout: float, what: str
    ) -> dict[str, Any] | None:
        """Like ``_api``, with "no message found" answered by ``None``."""
        reply = await self._api_reply(subject, body, timeout, what)
        error = reply.get("error")
        if error is not None:
            if error.get("err_code") == NO_MESSAGE:
                return None
            raise api_error(error, what)
        return reply

    async def _api_reply(
        self, subject: str, body: Mapping[str, Any] | None, timeout: float, what: str
    ) -> dict[str, Any]:
        if self._closed:
            raise ConnectionClosed(f"{what}: the connection is closed")
        payload = b"" if body is None else orjson.dumps(body)
        try:
            msg = await self._nc.request(subject, payload, timeout=timeout)
            reply = orjson.loads(msg.data)
        except Exception as exc:
            raise translate(exc, what) from exc
        if not isinstance(reply, dict):
            raise SubstrateError(f"{what}: unexpected JetStream reply {msg.data[:200]!r}")
        return reply

    async def _js_publish(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        timeout: float,
        what: str,
    ) -> dict[str, Any]:
        """Publish into a stream and wait for its ack (``{"stream", "seq", "duplicate"?}``)."""
        if self._closed:
            raise ConnectionClosed(f"{what}: the connection is closed")
        try:
            msg = await self._nc.request(subject, data, timeout=timeout, headers=headers)
            reply = orjson.loads(msg.data)
        except Exception as exc:
            raise translate(exc, what) from exc
        error = reply.get("error")
        if error is not None:
            raise api_error(error, what, stream=reply.get("stream"), subject=subject)
        return reply  # type: ignore[no-any-return]

    async def _create_or(
        self, stream: str, body: dict[str, Any], what: str, *, update: bool
    ) -> dict[str, Any]:
        """Create a stream; if it exists with another configuration, update it (``update``)
        or bind to it as it is."""
        timeout = self._config.request_timeout
        try:
            return await self._api(f"{API}.STREAM.CREATE.{stream}", body, timeout, what)
        except SubstrateError as exc:
            if exc.code != STREAM_IN_USE:
                raise
        if update:
            return await self._api(f"{API}.STREAM.UPDATE.{stream}", body, timeout, what)
        return await self._api(f"{API}.STREAM.INFO.{stream}", None, timeout, what)

    async def _delete_stream(self, stream: str, what: str) -> None:
        try:
            await self._api(
                f"{API}.STREAM.DELETE.{stream}", None, self._config.request_timeout, what
            )
        except SubstrateError as exc:
            if exc.code != STREAM_NOT_FOUND:
                raise

    async def _subscribe_owned(
        self,
        subject: str,
        callback: Callable[[Msg], Awaitable[None]],
        owner: _SidOwner,
        pending_limit: int,
        what: str,
    ) -> Any:
        """A nats-py subscription whose dropped messages are reported to ``owner``."""
        self._check_open(what)
        try:
            sub = await self._nc.subscribe(
                subject,
                cb=callback,
                pending_msgs_limit=pending_limit,
                pending_bytes_limit=self._config.pending_bytes_limit,
            )
        except Exception as exc:
            raise translate(exc, what) from exc
        self._owners[sub._id] = owner
        return sub

    async def _unsubscribe(self, sub: Any, what: str) -> None:
        self._owners.pop(sub._id, None)
        if self._nc.is_closed:
            return
        try:
            await sub.unsubscribe()
        except (nats.errors.BadSubscriptionError, nats.errors.ConnectionClosedError):
            pass  # already gone: unsubscribing is idempotent
        except Exception as exc:
            raise translate(exc, what) from exc

    async def _send(self, subject: str, data: bytes, reply: str = "") -> None:
        """Fire-and-forget publish of an internal subject (acks, flow control, cleanup)."""
        if self._nc.is_closed:
            return
        try:
            await self._nc.publish(subject, data, reply)
        except Exception as exc:
            raise translate(exc, f"publish to {subject!r}") from exc

    def _new_inbox(self) -> str:
        return self._nc.new_inbox()

    def _stop_watchers(self, error: ConnectionClosed | None = None) -> None:
        """End every watch: quietly on ``close``, with ``error`` when the link broke."""
        for watcher in tuple(self._watchers):
            if error is None:
                watcher._halt()
            else:
                watcher._fail(error)
        self._watchers.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"NatsConnection({self._config.name!r}, {self._config.describe()}, {state})"


def _check_storage(what: str, storage: str, replicas: int) -> None:
    if storage not in ("file", "memory"):
        raise ConfigurationError(f"{what}: storage {storage!r} is not 'file' or 'memory'")
    if not isinstance(replicas, int) or not 1 <= replicas <= 5:
        raise ConfigurationError(f"{what}: replicas {replicas!r} must be 1..5")
