"""One logical node's connection to the in-process substrate.

Publishing is synchronous underneath: with no message fault in force, ``publish``
validates, builds the ``Message`` once and pushes it straight into the pending queue of
every subscription the cached route names (one member per queue group), so delivery
order per publisher is the order of the calls and nothing is in flight afterwards. With
a message fault on, the message passes the drop rules, then the connection's
``DelayLine`` (which keeps order), and is routed when it comes out — to receivers on the
sender's side of any partition only. Every 128 publishes the publisher yields once to
the loop, so a tight publishing loop lets the subscriptions drain instead of overflowing
(nats-py yields the same way when its write buffer fills).

``request`` fails with ``NoResponders`` when no subscription at all matches, then sends
with a reply subject ``_INBOX.<connection id>.<n>`` that the router hands back to this
connection's reply table. Every wait of the connection — request replies, fetches, the
timeouts store faults impose — is ``park``-ed: bounded by its timeout and failed with
``ConnectionClosed`` when the connection closes.

``close`` is graceful (listeners see ``CLOSED``; watchers end); ``abort`` is the ``kill``
fault (``DISCONNECTED`` then ``CLOSED``; watchers raise ``ConnectionClosed``). Both drop
whatever the delay line still held and stop every subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from agentcluster.errors import (
    ConfigurationError,
    ConnectionClosed,
    InvalidName,
    NoResponders,
    PayloadTooLarge,
    RequestTimeout,
)
from agentcluster.transport import names
from agentcluster.transport.interface import (
    DEFAULT_TIMEOUT,
    BucketConfig,
    ConnectionEvent,
    EventListener,
    Handler,
    Message,
    ObjectStoreConfig,
    StreamConfig,
)
from agentcluster.transport.memory import admin
from agentcluster.transport.memory.delayline import DelayLine
from agentcluster.transport.memory.kv import MemoryKeyValue
from agentcluster.transport.memory.objects import MemoryObjectStore
from agentcluster.transport.memory.router import INBOX_PREFIX, Sink
from agentcluster.transport.memory.stream import MemoryStream
from agentcluster.transport.memory.subscription import MemorySubscription

if TYPE_CHECKING:
    from agentcluster.transport.memory.hub import MemoryTransport
    from agentcluster.transport.memory.watch import MemoryWatcher

__all__ = ["MemoryConnection"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_YIELD_EVERY = 128
_OUTBOX_LIMIT = 1 << 18
_STOP_WAIT = 1.0


class _Inbox:
    """The router's sink for replies to this connection's requests."""

    __slots__ = ("conn_name", "replies")

    def __init__(self, conn_name: str) -> None:
        self.conn_name = conn_name
        self.replies: dict[str, asyncio.Future[Message]] = {}

    def push(self, msg: Message) -> None:
        fut = self.replies.get(msg.subject)
        if fut is not None and not fut.done():
            fut.set_result(msg)


class MemoryConnection:
    __slots__ = (
        "_closed",
        "_faults",
        "_hub",
        "_id",
        "_inbox",
        "_listeners",
        "_max_payload",
        "_name",
        "_next_reply",
        "_outbox",
        "_parked",
        "_router",
        "_since_yield",
        "_subs",
        "_watchers",
    )

    def __init__(self, hub: MemoryTransport, name: str, conn_id: int) -> None:
        self._hub = hub
        self._name = name
        self._id = conn_id
        self._router = hub.router
        self._faults = hub.faults
        self._max_payload = hub.max_payload
        self._closed = False
        self._listeners: list[EventListener] = []
        self._subs: dict[MemorySubscription, None] = {}
        self._watchers: dict[MemoryWatcher, None] = {}
        self._parked: dict[asyncio.Future[Any], None] = {}
        self._outbox: DelayLine[Message] = DelayLine(self._route, _OUTBOX_LIMIT)
        self._inbox = _Inbox(name)
        self._next_reply = 0
        self._since_yield = 0
        self._router.add_inbox(str(conn_id), self._inbox)

    # --- identity and state -------------------------------------------------------

    @property
    def hub(self) -> MemoryTransport:
        return self._hub

    @property
    def name(self) -> str:
        return self._name

    @property
    def conn_id(self) -> int:
        return self._id

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def is_connected(self) -> bool:
        return not self._closed

    def ensure_open(self) -> None:
        if self._closed:
            raise ConnectionClosed(f"connection {self._name!r} is closed")

    def add_listener(self, listener: EventListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def emit(self, event: ConnectionEvent) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("listener of %r failed on %s", self._name, event)

    # --- waiting ------------------------------------------------------------------

    async def park(self, fut: asyncio.Future[T], timeout: float) -> T | None:
        """Wait up to ``timeout`` for ``fut``: its result, ``None`` on timeout, or
        ``ConnectionClosed`` if the connection closes meanwhile."""
        self.ensure_open()
        self._parked[fut] = None
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            self.ensure_open()
            return None
        finally:
            self._parked.pop(fut, None)

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, failing with ``ConnectionClosed`` if the connection closes."""
        await self.park(asyncio.get_running_loop().create_future(), seconds)

    # --- messages -----------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        reply: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if self._closed:
            raise ConnectionClosed(f"connection {self._name!r} is closed")
        if len(data) > self._max_payload:
            raise PayloadTooLarge(len(data), self._max_payload)
        route = self._router.route(subject)
        if reply:
            names.validate_subject(reply)
        msg = Message(subject, data, reply, dict(headers) if headers else None)
        if self._faults.msg_active or self._outbox.busy:
            self._send_with_faults(msg)
        else:
            for sink in route.plain:
                sink.push(msg)
            for group in route.groups:
                group.pick().push(msg)
        self._since_yield += 1
        if self._since_yield >= _YIELD_EVERY:
            self._since_yield = 0
            await asyncio.sleep(0)

    def _send_with_faults(self, msg: Message) -> None:
        faults = self._faults
        delay = 0.0
        if faults.msg_active:
            if faults.should_drop(msg.subject):
                faults.dropped += 1
                return
            delay = faults.delay_for(msg.subject)
            if delay > 0:
                faults.delayed += 1
        if not self._outbox.push(msg, delay):
            faults.dropped += 1

    def _route(self, msg: Message) -> None:
        route = self._router.route(msg.subject)
        faults = self._faults
        me = self._name

        def near(sink: Sink) -> bool:
            return faults.reachable(me, sink.conn_name)

        for sink in route.plain:
            if near(sink):
                sink.push(msg)
            else:
                faults.lost += 1
        for group in route.groups:
            member = group.pick_where(near)
            if member is not None:
                member.push(msg)
            else:
                faults.lost += 1

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        pending_limit: int = 65536,
    ) -> MemorySubscription:
        self.ensure_open()
        names.validate_subject(subject, wildcards=True)
        if queue is not None:
            try:
                names.validate_subject(queue)
            except InvalidName as exc:
                raise InvalidName("queue group", queue, exc.problem) from None
        if (
            isinstance(pending_limit, bool)
            or not isinstance(pending_limit, int)
            or pending_limit < 1
        ):
            raise ConfigurationError(f"pending_limit must be an int >= 1, not {pending_limit!r}")
        sub = MemorySubscription(self, subject, queue, handler, pending_limit)
        self._subs[sub] = None
        self._router.add(sub)
        return sub

    def forget_subscription(self, sub: MemorySubscription) -> None:
        self._subs.pop(sub, None)
        self._router.remove(sub)

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        self.ensure_open()
        if len(data) > self._max_payload:
            raise PayloadTooLarge(len(data), self._max_payload)
        if not self._router.route(subject).interest:
            raise NoResponders(f"no responders on {subject!r}")
        self._next_reply += 1
        reply = f"{INBOX_PREFIX}{self._id}.{self._next_reply}"
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        replies = self._inbox.replies
        replies[reply] = fut
        try:
            await self.publish(subject, data, reply=reply, headers=headers)
            answer = await self.park(fut, timeout)
        finally:
            replies.pop(reply, None)
        if answer is None:
            raise RequestTimeout(f"no reply on {subject!r} within {timeout}s")
        return answer

    async def flush(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.ensure_open()
        if not await self._outbox.wait_empty(timeout):
            raise RequestTimeout(f"flush of {self._name!r} did not finish within {timeout}s")
        self.ensure_open()

    # --- key-value, streams, objects ----------------------------------------------

    async def key_value(self, config: BucketConfig) -> MemoryKeyValue:
        self.ensure_open()
        return admin.open_bucket(self, config)

    async def delete_key_value(self, name: str) -> None:
        self.ensure_open()
        admin.delete_bucket(self, name)

    async def stream(self, config: StreamConfig) -> MemoryStream:
        self.ensure_open()
        return admin.open_stream(self, config)

    async def delete_stream(self, name: str) -> None:
        self.ensure_open()
        admin.delete_stream(self, name)

    async def object_store(self, config: ObjectStoreConfig) -> MemoryObjectStore:
        self.ensure_open()
        return admin.open_object_store(self, config)

    async def delete_object_store(self, name: str) -> None:
        self.ensure_open()
        admin.delete_object_store(self, name)

    def register_watcher(self, watcher: MemoryWatcher) -> None:
        self._watchers[watcher] = None

    def forget_watcher(self, watcher: MemoryWatcher) -> None:
        self._watchers.pop(watcher, None)

    # --- closing ------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        tasks = self._shut(abrupt=False)
        current = asyncio.current_task()
        tasks = [t for t in tasks if t is not current and not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_WAIT)
        self.emit(ConnectionEvent.CLOSED)

    def abort(self) -> None:
        """Close abruptly (the ``kill`` fault): ``DISCONNECTED``, then ``CLOSED``."""
        if self._closed:
            return
        self.emit(ConnectionEvent.DISCONNECTED)
        self._shut(abrupt=True)
        self.emit(ConnectionEvent.CLOSED)

    def _shut(self, *, abrupt: bool) -> list[asyncio.Task[None]]:
        self._closed = True
        self._hub.forget(self)
        self._router.remove_inbox(str(self._id))
        self._outbox.clear()
        tasks = []
        for sub in tuple(self._subs):
            tasks.append(sub.task)
            sub.stop()
        for watcher in tuple(self._watchers):
            if abrupt:
                watcher.fail(ConnectionClosed(f"connection {self._name!r} was killed"))
            else:
                watcher.end()
        error = f"connection {self._name!r} closed while waiting"
        for fut in tuple(self._parked):
            if not fut.done():
                fut.set_exception(ConnectionClosed(error))
        self._parked.clear()
        return tasks
