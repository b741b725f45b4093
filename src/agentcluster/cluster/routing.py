"""Signal routing between nodes: one ``Router`` per node carries cast, send and call over the
transport to agents hosted by other nodes' ``LocalNode``.

Theory of operation.

- **Where.** Every operation first asks ``resolve(agent_id)`` (the registry cache) for a
  ``Placement``. Unknown → ``AgentNotFound``; ``unavailable`` → ``AgentUnavailable``; this
  node → straight through ``LocalNode`` (no transport); another node → that node's inbox
  subject ``ac.node.<encoded node id>.in``.
- **Outbound batching.** Encoded envelopes (``cluster.wire``) for one destination queue up
  in the ``Batcher``; the first one of a burst creates that destination's flush task, which
  runs on the next loop iteration (no timer) and publishes everything queued by then as
  few messages as the count and byte caps allow, in order. While it publishes, new
  envelopes queue behind and go out in its next round. A sender yields once whenever a
  full batch is waiting, so a producer that never yields still lets the flush run. Queues
  are bounded: a full one refuses locally with ``Overloaded``.
- **Receiving.** The inbox handler decodes a batch and admits each signal synchronously, so
  signals of one batch reach mailboxes in batch order: a ``send``/``call`` whose (id, agent)
  was already accepted is acknowledged again and dropped; otherwise it is refused with a
  reason — ``expired``, ``moved`` (with the node the registry names), ``starting``,
  ``unavailable``, ``unknown``, ``mailbox_full``, ``overloaded`` (dedup memory or call
  slots full) — or put into the mailbox (``offer``, after checking room, so the handler
  never waits on one agent) and remembered until its deadline. One ``ack`` per batch lists
  accepted and refused deliveries of ``send`` and ``call``, except that an accepted call
  is acknowledged by its result when that comes within ``ack_delay`` (saving a message per
  call) and by an ``ack`` of its own after that; a refused ``cast`` is dead-lettered here,
  by the receiver, with its reason.
- **Calls** run on the receiver as ``LocalNode.call`` in a task with the remaining budget
  plus a grace, so the caller's deadline passes first: the caller then sends ``cancel`` and
  the task is cancelled, which abandons (interrupts) the running action. The result, or the
  error's ``error_to_dict``, goes back as a ``result`` envelope and is rebuilt with
  ``error_from_dict``. The call chain travels in the signal, so ``LocalNode.call`` on the
  receiver finds a cycle at once (``CallCycle``).
- **Retries (send and call delivery).** The sender keeps one pending entry per (signal id,
  agent id) and waits up to ``ack_timeout`` for the acknowledgement of each attempt.
  Accepted → done (a call then waits for its result until the deadline). ``moved`` →
  re-resolve (or take the node the refusal names) and retry at once, at most ``max_moves``
  times in a row. Other retryable refusals → back off (``RetryPolicy``, seeded jitter) and
  retry with the same id; a missing acknowledgement → retry at once (the wait was the
  back-off). Non-retryable refusals fail at once with their typed error. At the deadline the
  send fails with ``SignalExpired`` (``CallTimeout`` for a call; ``MailboxFull`` or
  ``Overloaded`` when that was the last refusal). The sender dead-letters what it gives up.
- **Ordering**: one flush task per destination publishes in queue order, the transport keeps
  per-publisher order, and the receiver admits a batch in order — so signals from one sender
  to one agent arrive in send order while no retry or move intervenes.

Bounded everywhere: per-destination queues (count and bytes), pending sends and calls,
running remote calls, and the receiver's memory of accepted ids (``AcceptedIds``; when full
it refuses with a retryable ``Overloaded`` instead of forgetting early).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agentcluster.agent.node import LocalNode
from agentcluster.agent.server import AgentServer
from agentcluster.clock import Clock
from agentcluster.cluster import wire
from agentcluster.cluster.batcher import Batcher
from agentcluster.cluster.wire import (
    AgentMoved,
    AgentStarting,
    AgentUnavailable,
    Kind,
    Reason,
    Refusal,
    error_from_dict,
)
from agentcluster.core import codec
from agentcluster.core.dedup import AcceptedIds, Admission
from agentcluster.core.redelivery import Next, after_refusal
from agentcluster.core.retry import RetryPolicy
from agentcluster.core.signal import Signal
from agentcluster.errors import (
    AgentClusterError,
    AgentNotFound,
    CallTimeout,
    ConfigurationError,
    ConnectionClosed,
    DeliveryError,
    InvalidSignal,
    Overloaded,
    PayloadTooLarge,
    SignalDecodeError,
    SignalExpired,
    SignalTooLarge,
    TransportError,
)
from agentcluster.transport.interface import Connection, Message, Subscription
from agentcluster.transport.names import encode_token

if TYPE_CHECKING:
    from agentcluster.cluster.keeper import AgentKeeper

__all__ = [
    "CLUSTER_SUBJECT",
    "AgentMoved",
    "AgentStarting",
    "AgentUnavailable",
    "Placement",
    "PlacementStatus",
    "Resolve",
    "Router",
    "RouterConfig",
    "RouterStats",
    "error_from_dict",
    "node_inbox",
]

log = logging.getLogger("agentcluster.routing")

PlacementStatus = Literal["running", "starting", "unavailable"]

CLUSTER_SUBJECT = "ac.all.in"
"""Every router listens here too: ``broadcast_all`` publishes one batch to it."""

_KIB = 1024

DEFAULT_RETRY = RetryPolicy(
    max_retries=10_000, base_delay=0.02, factor=2.0, max_delay=1.0, jitter=0.5
)
"""Retries after a retryable refusal: 20 ms doubling to 1 s, half-jittered; bounded in
practice by the deadline."""
_ENVELOPE_ALLOWANCE = 64 * _KIB


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the registry says an agent lives."""

    node: str
    node_incarnation: int
    status: PlacementStatus = "running"


Resolve = Callable[[str], Placement | None]


@functools.lru_cache(maxsize=4096)
def node_inbox(node_id: str) -> str:
    """The subject a node's router receives batches on."""
    return f"ac.node.{encode_token(node_id)}.in"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Bounds and timings of a router; the defaults follow DESIGN.md."""

    max_batch: int = 512
    """Envelopes per published message, at most (bytes are capped by ``max_payload``)."""
    max_queued: int = 10_000
    """Envelopes waiting for one destination before new signals are refused."""
    max_queued_bytes: int = 64 * 1024 * 1024
    max_pending: int = 100_000
    """Sends and calls in flight from this node."""
    max_remote_calls: int = 10_000
    """Calls from other nodes running here at once."""
    dedup_capacity: int = 500_000
    """Accepted ids remembered (until their deadline) to drop duplicates. Size it above the
    sustained rate of sends and calls received times their deadline (30 s by default):
    past that, new ones are refused (retryable) until old ids may be forgotten."""
    ack_timeout: float = 1.0
    """Seconds to wait for an attempt's acknowledgement before sending it again."""
    ack_delay: float = 0.05
    """A call accepted by a receiver is acknowledged by its result when that comes within
    this many seconds, else by an acknowledgement of its own; keep it well below
    ``ack_timeout``."""
    retry: RetryPolicy = DEFAULT_RETRY
    """Back-off between retries after a retryable refusal (the deadline bounds it too)."""
    max_moves: int = 4
    """``moved`` refusals followed at once, in a row, before backing off."""
    call_grace: float = 1.0
    """Extra seconds a remote call runs past its budget, so the caller's cancel comes first."""
    send_timeout: float = 30.0
    call_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queued", "max_queued_bytes", "max_pending"):
            _positive_int(name, getattr(self, name))
        for name in ("max_remote_calls", "dedup_capacity", "max_moves"):
            _positive_int(name, getattr(self, name))
        for name in ("ack_timeout", "send_timeout", "call_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"RouterConfig.{name} must be positive, not {value!r}")
        if (
            isinstance(self.ack_delay, bool)
            or not isinstance(self.ack_delay, int | float)
            or not 0 <= self.ack_delay < self.ack_timeout
        ):
            raise ConfigurationError(
                f"RouterConfig.ack_delay must be >= 0 and below ack_timeout: {self.ack_delay!r}"
            )
        if not isinstance(self.call_grace, int | float) or self.call_grace < 0:
            raise ConfigurationError(f"RouterConfig.call_grace must be >= 0: {self.call_grace!r}")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"RouterConfig.{name} must be an int >= 1, not {value!r}")


@dataclass(slots=True)
class RouterStats:
    """Counters for tests, metrics and the dashboard."""

    envelopes_queued: int = 0
    batches_sent: int = 0
    batches_received: int = 0
    signals_received: int = 0
    accepted: int = 0
    duplicates: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    """Deliveries this node refused as a receiver, by reason."""
    retries: int = 0
    moves_followed: int = 0
    local: int = 0
    """Signals delivered through the local shortcut."""
    acks_sent: int = 0
    publish_errors: int = 0
    decode_errors: int = 0


class _Pending:
    """A send or call in flight from this node, keyed by (signal id, agent id)."""

    __slots__ = ("accepted_on", "ack", "node", "result")

    def __init__(self, ack: asyncio.Future[Refusal | None], result: asyncio.Future[Any] | None):
        self.ack = ack
        self.result = result
        self.node: str | None = None
        self.accepted_on: str | None = None


def _dedup_key(agent_id: str, signal_id: str) -> str:
    return f"{signal_id}\x00{agent_id}"


def _settle_error(fut: asyncio.Future[Any], error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)
        fut.exception()  # retrieved: whoever awaits it still gets it; nobody may


class Router:
    """Routes signals of one node to agents on any node (module docstring)."""

    def __init__(
        self,
        node_id: str,
        incarnation: int,
        connection: Connection,
        node: LocalNode,
        resolve: Resolve,
        *,
        config: RouterConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self.config = cfg = config or RouterConfig()
        self.inbox = node_inbox(node_id)
        self.stats = RouterStats()
        self._conn = connection
        self._node = node
        self._resolve = resolve
        self._clock: Clock = clock or node.clock
        self._rng = random.Random(node.random.getrandbits(64))
        max_payload = connection.max_payload
        self._batch_bytes = max_payload - min(4 * _KIB, max_payload // 8)
        self._signal_bytes = (
            max_payload - _ENVELOPE_ALLOWANCE
            if max_payload >= 2 * _ENVELOPE_ALLOWANCE
            else self._batch_bytes
        )
        self._batcher = Batcher(
            max_count=cfg.max_batch,
            max_bytes=self._batch_bytes,
            max_queued=cfg.max_queued,
            max_queued_bytes=cfg.max_queued_bytes,
        )
        self._flushers: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._calls: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._unacked: dict[tuple[str, str], str] = {}
        self._accepted = AcceptedIds(cfg.dedup_capacity)
        self._durable: list[_DurableSend] = []
        self._storing: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []
        self._started = False
        self._stopped = False

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe the node's inbox (and the cluster-wide broadcast subject)."""
        if self._stopped:
            raise ConnectionClosed(f"router of node {self.node_id!r} is stopped")
        if self._started:
            return
        self._subs.append(await self._conn.subscribe(self.inbox, self._on_message))
        self._subs.append(await self._conn.subscribe(CLUSTER_SUBJECT, self._on_message))
        self._started = True

    async def stop(self, timeout: float = 1.0) -> None:
        """Stop receiving, publish what is queued (up to ``timeout``), cancel remote calls
        running here and fail every send and call in flight with ``ConnectionClosed``."""
        if self._stopped:
            return
        self._stopped = True
        for sub in self._subs:
            with contextlib.suppress(AgentClusterError):
                await sub.unsubscribe()
        self._subs.clear()
        flushers = list(self._flushers.values())
        if flushers:
            await asyncio.wait(flushers, timeout=timeout)
        for task in list(self._flushers.values()):
            task.cancel()
        self._batcher.clear()
        for task in list(self._calls.values()):
            task.cancel()
        for task in list(self._storing):
            task.cancel()
        closed = ConnectionClosed(f"router of node {self.node_id!r} stopped")
        for pending in self._pending.values():
            _settle_error(pending.ack, closed)
            if pending.result is not None:
                _settle_error(pending.result, closed)

    @property
    def in_flight(self) -> int:
        """Sends and calls from this node not yet finished."""
        return len(self._pending)

    @property
    def remote_calls(self) -> int:
        """Calls from other nodes running here now."""
        return len(self._calls)

    def _check_open(self) -> None:
        if self._stopped:
            raise ConnectionClosed(f"router of node {self.node_id!r} is stopped")
        if not self._started:
            raise ConfigurationError(f"router of node {self.node_id!r} is not started")

    # --- sending ------------------------------------------------------------------

    async def cast(self, agent_id: str, signal: Signal) -> None:
        """At most once, fire and forget. Raises only what this node knows at once (no such
        agent in the registry, the destination's queue full, an invalid signal); whatever
        the receiver refuses, the receiver dead-letters."""
        self._check_open()
        placement = self._resolve(agent_id)
        if placement is None:
            raise self._give_up(signal, agent_id, self._unknown(agent_id))
        if placement.status == "unavailable":
            raise self._give_up(signal, agent_id, self._unavailable(agent_id))
        if placement.node == self.node_id:
            self.stats.local += 1
            if self._local_server(agent_id) is None:
                refusal = self._where(agent_id, signal.id)
                self._node.dead_letter(signal, wire.refusal_error(refusal, self.node_id), agent_id)
                return
            with contextlib.suppress(DeliveryError):  # LocalNode dead-lettered it
                await self._node.cast(agent_id, signal)
            return
        frame = self._frame(Kind.CAST, agent_id, signal)
        subject = node_inbox(placement.node)
        if not self._enqueue(subject, frame):
            raise self._give_up(signal, agent_id, self._queue_full(placement.node, agent_id))
        await self._make_way(subject)

    async def send(self, agent_id: str, signal: Signal, *, timeout: float | None = None) -> None:
        """At least once: returns once the agent's node has the signal in the mailbox.

        The deadline is the signal's own, or ``timeout`` seconds (default 30) from now,
        whichever is earlier. Retries with the same id until then; raises a typed error
        (and dead-letters the signal) when it gives up.
        """
        self._check_open()
        signal, deadline = self._with_deadline(signal, timeout, self.config.send_timeout)
        await self._deliver(Kind.SEND, agent_id, signal, deadline)

    async def call(self, agent_id: str, signal: Signal, *, timeout: float | None = None) -> Any:
        """Run the signal in the agent and return the first action's result, or raise the
        remote error rebuilt as its type. A caller that gives up cancels the remote action."""
        self._check_open()
        signal, deadline = self._with_deadline(signal, timeout, self.config.call_timeout)
        return await self._deliver(Kind.CALL, agent_id, signal, deadline)

    async def broadcast_node(self, node_id: str, signal: Signal) -> None:
        """Cast to every agent of ``node_id`` that routes the signal's type."""
        self._check_open()
        if node_id == self.node_id:
            await self._node.broadcast(signal)
            return
        event = codec.encode(signal, self._clock.monotonic(), max_bytes=self._signal_bytes)
        subject = node_inbox(node_id)
        if not self._enqueue(subject, wire.signal_frame(Kind.BROADCAST, "", event)):
            raise Overloaded(f"outbound queue to node {node_id!r} is full", node_id=self.node_id)
        await self._make_way(subject)

    async def broadcast_all(self, signal: Signal) -> None:
        """Cast to every agent on every node (this one included) that routes the type."""
        self._check_open()
        event = codec.encode(signal, self._clock.monotonic(), max_bytes=self._signal_bytes)
        if not self._enqueue(CLUSTER_SUBJECT, wire.signal_frame(Kind.BROADCAST, "", event)):
            raise Overloaded("outbound broadcast queue is full", node_id=self.node_id)
        await self._make_way(CLUSTER_SUBJECT)

    def _with_deadline(
        self, signal: Signal, timeout: float | None, default: float
    ) -> tuple[Signal, float]:
        now = self._clock.monotonic()
        own = signal.deadline
        if timeout is None:
            deadline = own if own is not None else now + default
        else:
            deadline = now + timeout if own is None else min(own, now + timeout)
        if deadline != own:
            signal = signal.evolve(deadline=deadline)
        return signal, deadline

    async def _deliver(self, kind: Kind, agent_id: str, signal: Signal, deadline: float) -> Any:
        cfg = self.config
        key = (signal.id, agent_id)
        pending: _Pending | None = None
        hint: Placement | None = None
        last: Refusal | None = None
        retry = 0
        moves = 0
        try:
            while True:
                if self._stopped:
                    raise self._give_up(
                        signal, agent_id, ConnectionClosed(f"router of {self.node_id!r} stopped")
                    )
                now = self._clock.monotonic()
                if now >= deadline:
                    raise self._give_up(
                        signal, agent_id, self._deadline_error(kind, agent_id, last)
                    )
                placement = hint if hint is not None else self._resolve(agent_id)
                hint = None
                if placement is None:
                    raise self._give_up(signal, agent_id, self._unknown(agent_id))
                if placement.status == "unavailable":
                    raise self._give_up(signal, agent_id, self._unavailable(agent_id))
                if placement.node == self.node_id:
                    server = self._local_server(agent_id)
                    refusal: Refusal | None = None
                    if server is not None and server.keeper is not None:
                        refusal = await self._keeper_admits(server, kind, agent_id, signal)
                        if refusal is None and kind is Kind.SEND and server.keeper.durable:
                            self.stats.local += 1
                            return None
                    if server is not None and refusal is None:
                        self.stats.local += 1
                        if kind is Kind.SEND:
                            await self._node.send(agent_id, signal)
                            return None
                        return await self._node.call(agent_id, signal, timeout=deadline - now)
                    if refusal is None:
                        refusal = self._where(agent_id, signal.id)
                else:
                    if pending is None:
                        pending = self._register(key, kind, signal)
                    refusal = await self._attempt(
                        kind, agent_id, signal, placement, pending, deadline
                    )
                    if refusal is None:
                        if kind is Kind.SEND:
                            return None
                        return await self._await_result(agent_id, signal, pending, deadline)
                assert refusal is not None
                last = refusal
                step = after_refusal(
                    moved=refusal.reason == Reason.MOVED,
                    retryable=refusal.retryable,
                    ack_lost=refusal.reason == Reason.NO_ACK,
                    moves=moves,
                    max_moves=cfg.max_moves,
                    retry=retry + 1,
                    policy=cfg.retry,
                    rng=self._rng,
                    time_left=deadline - self._clock.monotonic(),
                )
                if step.next is Next.FOLLOW_MOVE:
                    moves += 1
                    self.stats.moves_followed += 1
                    hint = self._moved_hint(agent_id, placement, refusal)
                    continue
                if step.next is Next.GIVE_UP:
                    raise self._give_up(
                        signal, agent_id, wire.refusal_error(refusal, placement.node)
                    )
                if step.next is Next.EXHAUSTED:
                    raise self._give_up(
                        signal, agent_id, self._deadline_error(kind, agent_id, last)
                    )
                retry += 1
                self.stats.retries += 1
                if step.delay > 0:
                    await asyncio.sleep(step.delay)
                moves = 0
        except BaseException:
            if kind is Kind.CALL and pending is not None:
                self._cancel_remote(signal.id, agent_id, pending)
            raise
        finally:
            if pending is not None:
                self._pending.pop(key, None)

    def _register(self, key: tuple[str, str], kind: Kind, signal: Signal) -> _Pending:
        if key in self._pending:
            raise ConfigurationError(
                f"signal {key[0]!r} is already in flight to agent {key[1]!r}; "
                "give each send its own id"
            )
        if len(self._pending) >= self.config.max_pending:
            raise self._give_up(
                signal,
                key[1],
                Overloaded(
                    f"{len(self._pending)} sends and calls already in flight from node "
                    f"{self.node_id!r}",
                    agent_id=key[1],
                    node_id=self.node_id,
                ),
            )
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] | None = loop.create_future() if kind is Kind.CALL else None
        pending = self._pending[key] = _Pending(loop.create_future(), result)
        return pending

    async def _attempt(
        self,
        kind: Kind,
        agent_id: str,
        signal: Signal,
        placement: Placement,
        pending: _Pending,
        deadline: float,
    ) -> Refusal | None:
        """Send once to ``placement`` and wait for its acknowledgement (``None``: accepted)."""
        frame = self._frame(kind, agent_id, signal)
        ack = pending.ack
        if ack.done():
            ack = pending.ack = asyncio.get_running_loop().create_future()
        pending.node = placement.node
        subject = node_inbox(placement.node)
        if not self._enqueue(subject, frame):
            return Refusal(
                signal.id,
                agent_id,
                Reason.OVERLOADED,
                True,
                f"outbound queue to node {placement.node!r} is full",
            )
        await self._make_way(subject)
        wait = min(self.config.ack_timeout, deadline - self._clock.monotonic())
        if wait > 0:
            await asyncio.wait((ack,), timeout=wait)
        if ack.done():
            return ack.result()
        return Refusal(signal.id, agent_id, Reason.NO_ACK, True, "no acknowledgement")

    async def _await_result(
        self, agent_id: str, signal: Signal, pending: _Pending, deadline: float
    ) -> Any:
        fut = pending.result
        assert fut is not None
        remaining = deadline - self._clock.monotonic()
        if not fut.done() and remaining > 0:
            await asyncio.wait((fut,), timeout=remaining)
        if fut.done():
            return fut.result()
        raise self._give_up(
            signal,
            agent_id,
            CallTimeout(
                f"call to agent {agent_id!r} on node {pending.accepted_on or pending.node!r} "
                "got no reply before its deadline",
                agent_id=agent_id,
                node_id=self.node_id,
            ),
        )

    def _cancel_remote(self, call_id: str, agent_id: str, pending: _Pending) -> None:
        node = pending.accepted_on or pending.node
        if node is None or node == self.node_id or self._stopped:
            return
        if pending.result is not None and pending.result.done():
            return
        self._enqueue(node_inbox(node), wire.cancel_frame(call_id, agent_id), control=True)

    def _moved_hint(
        self, agent_id: str, placement: Placement, refusal: Refusal
    ) -> Placement | None:
        fresh = self._resolve(agent_id)
        if fresh is not None and fresh.node != placement.node:
            return fresh
        if refusal.moved_to is not None and refusal.moved_to != placement.node:
            return Placement(refusal.moved_to, refusal.moved_incarnation or 0)
        return None

    def _frame(self, kind: Kind, agent_id: str, signal: Signal) -> bytes:
        event = codec.encode(signal, self._clock.monotonic(), max_bytes=self._signal_bytes)
        frame = wire.signal_frame(kind, agent_id, event)
        if len(frame) + 2 > self._batch_bytes:
            raise SignalTooLarge(len(frame) + 2, self._batch_bytes, signal_type=signal.type)
        return frame

    def _enqueue(self, subject: str, frame: bytes, *, control: bool = False) -> bool:
        if not self._batcher.add(subject, frame, control=control):
            return False
        self.stats.envelopes_queued += 1
        if subject not in self._flushers:
            self._flushers[subject] = asyncio.get_running_loop().create_task(
                self._flush(subject), name=f"router-flush:{subject}"
            )
        return True

    async def _make_way(self, subject: str) -> None:
        """Yield once when a full batch waits for ``subject``, so that a producer that never
        yields (a tight ``await cast(...)`` loop) lets the flush run, in full batches."""
        if self._batcher.queued(subject) >= self.config.max_batch:
            await asyncio.sleep(0)

    async def _flush(self, subject: str) -> None:
        try:
            while True:
                batches = self._batcher.take(subject)
                if not batches:
                    return
                for data in batches:
                    try:
                        await self._conn.publish(subject, data, reply=self.inbox)
                    except AgentClusterError as error:
                        self.stats.publish_errors += 1
                        log.warning("batch to %r lost: %s", subject, error)
                    else:
                        self.stats.batches_sent += 1
        finally:
            self._flushers.pop(subject, None)

    # --- giving up ------------------------------------------------------------------

    def _give_up(
        self, signal: Signal, agent_id: str, error: AgentClusterError
    ) -> AgentClusterError:
        """The sender gives up: dead-letter the signal here and hand back the error."""
        if error.node_id is None:
            error.node_id = self.node_id
        self._node.dead_letter(signal, error, agent_id)
        return error

    def _deadline_error(self, kind: Kind, agent_id: str, last: Refusal | None) -> AgentClusterError:
        if last is not None and last.reason in (Reason.MAILBOX_FULL, Reason.OVERLOADED):
            return wire.refusal_error(last, self.node_id)
        why = f"last: {last.reason}" if last is not None else "never attempted"
        if kind is Kind.CALL:
            return CallTimeout(
                f"call to agent {agent_id!r} was not answered before its deadline ({why})",
                agent_id=agent_id,
            )
        return SignalExpired(
            f"send to agent {agent_id!r} was not acknowledged before its deadline ({why})",
            agent_id=agent_id,
        )

    def _unknown(self, agent_id: str) -> AgentNotFound:
        return AgentNotFound(f"no agent {agent_id!r} in the registry", agent_id=agent_id)

    def _unavailable(self, agent_id: str) -> AgentUnavailable:
        return AgentUnavailable(
            f"agent {agent_id!r} is unavailable (its node died)", agent_id=agent_id
        )

    def _queue_full(self, node: str, agent_id: str) -> Overloaded:
        return Overloaded(
            f"outbound queue to node {node!r} is full", agent_id=agent_id, node_id=self.node_id
        )

    # --- receiving ------------------------------------------------------------------

    async def _on_message(self, msg: Message) -> None:
        self.stats.batches_received += 1
        try:
            items = wire.parse_batch(msg.data)
        except SignalDecodeError as error:
            self.stats.decode_errors += 1
            log.warning("undecodable batch on %r: %s", msg.subject, error)
            return
        now = self._clock.monotonic()
        accepted: list[tuple[str, str]] = []
        refused: list[Refusal] = []
        for item in items:
            try:
                frame = wire.parse_frame(item)
            except SignalDecodeError as error:
                self._bad_envelope(item, error, refused)
                continue
            if type(frame) is wire.SignalFrame:
                if frame.kind is Kind.BROADCAST:
                    await self._receive_broadcast(frame, now)
                else:
                    self._receive(frame, msg.reply, now, accepted, refused)
            elif type(frame) is wire.AckFrame:
                self._on_ack(frame)
            elif type(frame) is wire.ResultFrame:
                self._on_result(frame)
            elif type(frame) is wire.CancelFrame:
                # Popped here: a task cancelled before its first step never runs
                # ``_run_call``'s ``finally``, and would hold its slot for good.
                task = self._calls.pop((frame.id, frame.to), None)
                if task is not None:
                    task.cancel()
        if self._durable:
            durable, self._durable = self._durable, []
            task = asyncio.get_running_loop().create_task(self._store_durable(durable))
            self._storing.add(task)
            task.add_done_callback(self._storing.discard)
        if not msg.reply or not (accepted or refused):
            return
        calls = self._calls
        now_acked = [key for key in accepted if key not in calls] if calls else accepted
        if len(now_acked) < len(accepted):
            # Accepted calls: their result is their acknowledgement (``_on_result``), so
            # one message per call is saved when it answers within ``ack_delay``; a
            # slower one is acknowledged alone then, well before the caller resends.
            held = [key for key in accepted if key in calls]
            for key in held:
                self._unacked[key] = msg.reply
            asyncio.get_running_loop().call_later(
                self.config.ack_delay, self._ack_held, msg.reply, held
            )
        if now_acked or refused:
            ack = wire.ack_frame(self.node_id, self.incarnation, now_acked, refused)
            if self._enqueue(msg.reply, ack, control=True):
                self.stats.acks_sent += 1

    async def _keeper_admits(
        self, server: AgentServer, kind: Kind, agent_id: str, signal: Signal
    ) -> Refusal | None:
        """A persistent agent here: refused while it is starting; a ``send`` to a durable
        one is stored in its inbox (None: taken, or not the keeper's to take)."""
        keeper = server.keeper
        if not keeper.running:
            return _starting(signal.id, agent_id, self.node_id)
        if kind is not Kind.SEND or not keeper.durable:
            return None
        try:
            await keeper.accept(signal)
        except _STORE_ERRORS as error:
            return _store_refusal(signal.id, agent_id, error)
        return None

    async def _store_durable(self, items: list[_DurableSend]) -> None:
        """Store a batch's sends to durable agents, then acknowledge them.

        The stores are issued together, in the batch's order, and their acknowledgements
        awaited together: a batch costs one store round trip, not one per signal. The one
        connection keeps their order, so each agent's inbox sequences follow the batch;
        each stored signal is then handed to its mailbox in that order.
        """
        by_reply: dict[str, tuple[list[tuple[str, str]], list[Refusal]]] = {
            item.reply: ([], []) for item in items
        }

        def refuse(item: _DurableSend, refusal: Refusal) -> None:
            self.stats.refused[refusal.reason] += 1
            by_reply[item.reply][1].append(refusal)

        loop = asyncio.get_running_loop()
        stores: list[tuple[_DurableSend, AgentKeeper, Signal, asyncio.Task[tuple[int, bool]]]]
        stores = []
        handed: list[tuple[_DurableSend, AgentKeeper]] = []
        try:
            for item in items:
                server = self._local_server(item.agent_id)
                keeper = server.keeper if server is not None else None
                if keeper is None or not keeper.durable:
                    refuse(item, self._where(item.agent_id, item.signal.id))
                elif not keeper.running:
                    refuse(item, _starting(item.signal.id, item.agent_id, self.node_id))
                else:
                    try:
                        stored = keeper.admit(item.signal)
                    except _STORE_ERRORS as error:
                        refuse(item, _store_refusal(item.signal.id, item.agent_id, error))
                        continue
                    stores.append((item, keeper, stored, loop.create_task(keeper.store(stored))))
            for item, keeper, stored, task in stores:
                try:
                    seq, duplicate = await task
                    await keeper.hand_over(seq, duplicate, stored)
                except _STORE_ERRORS as error:
                    refuse(item, _store_refusal(item.signal.id, item.agent_id, error))
                    continue
                handed.append((item, keeper))
        finally:
            for *_, task in stores:
                if not task.done():
                    task.cancel()
        # From the fence checks to the acknowledgements, nothing awaits.
        for item, keeper in handed:
            try:
                keeper.acknowledge()
            except DeliveryError as error:
                refuse(item, _store_refusal(item.signal.id, item.agent_id, error))
                continue
            signal, now = item.signal, item.now
            self._accepted.accept(item.key, self._remember_until(signal, now), now)
            self.stats.accepted += 1
            by_reply[item.reply][0].append((signal.id, item.agent_id))
        for reply, (accepted, refused) in by_reply.items():
            if reply and not self._stopped:
                ack = wire.ack_frame(self.node_id, self.incarnation, accepted, refused)
                if self._enqueue(reply, ack, control=True):
                    self.stats.acks_sent += 1

    def _ack_held(self, reply: str, held: list[tuple[str, str]]) -> None:
        unacked = self._unacked
        late = [key for key in held if unacked.pop(key, None) is not None]
        if late and not self._stopped:
            ack = wire.ack_frame(self.node_id, self.incarnation, late, [])
            if self._enqueue(reply, ack, control=True):
                self.stats.acks_sent += 1

    def _bad_envelope(self, item: Any, error: SignalDecodeError, refused: list[Refusal]) -> None:
        self.stats.decode_errors += 1
        log.warning("undecodable envelope: %s", error)
        if isinstance(item, dict) and item.get("k") in (Kind.SEND, Kind.CALL):
            event, to = item.get("ev"), item.get("to")
            signal_id = event.get("id") if isinstance(event, dict) else None
            if isinstance(signal_id, str) and signal_id and isinstance(to, str) and to:
                refused.append(Refusal(signal_id, to, Reason.INVALID, False, str(error)))

    async def _receive_broadcast(self, frame: wire.SignalFrame, now: float) -> None:
        try:
            signal = codec.decode(frame.event, now)
        except SignalDecodeError as error:
            self.stats.decode_errors += 1
            log.warning("undecodable broadcast: %s", error)
            return
        self.stats.signals_received += 1
        await self._node.broadcast(signal)

    def _receive(
        self,
        frame: wire.SignalFrame,
        reply: str,
        now: float,
        accepted: list[tuple[str, str]],
        refused: list[Refusal],
    ) -> None:
        kind = frame.kind
        agent_id = frame.to
        try:
            signal = codec.decode(frame.event, now)
        except SignalDecodeError as error:
            self._bad_envelope({"k": kind, "ev": frame.event, "to": agent_id}, error, refused)
            return
        self.stats.signals_received += 1
        acked = kind is not Kind.CAST
        key = ""
        if acked:
            key = _dedup_key(agent_id, signal.id)
            if key in self._accepted:
                # Accepted before (maybe past its deadline, not yet forgotten): never again.
                self._accepted.accept(key, self._remember_until(signal, now), now)
                self.stats.duplicates += 1
                accepted.append((signal.id, agent_id))
                return
        verdict = self._admit(agent_id, signal, now)
        if isinstance(verdict, AgentServer) and verdict.keeper is not None:
            keeper = verdict.keeper
            if not keeper.running:
                verdict = _starting(signal.id, agent_id, self.node_id)
            elif kind is Kind.CALL and (answer := keeper.answered(signal.id)) is not None:
                # A call the restored snapshot had answered, resent by its caller: the
                # same answer again, never a second run.
                self.stats.duplicates += 1
                if reply:
                    self._enqueue(reply, answer, control=True)
                accepted.append((signal.id, agent_id))
                return
            elif kind is Kind.SEND and keeper.durable:
                # Acknowledged once stored in the durable inbox, after this batch.
                self._durable.append(_DurableSend(agent_id, signal, key, reply, now))
                return
        if isinstance(verdict, AgentServer):
            if kind is Kind.CALL and len(self._calls) >= self.config.max_remote_calls:
                verdict = Refusal(
                    signal.id, agent_id, Reason.OVERLOADED, True, "too many calls running"
                )
            elif (
                acked
                and self._accepted.accept(key, self._remember_until(signal, now), now)
                is Admission.FULL
            ):
                verdict = Refusal(
                    signal.id, agent_id, Reason.OVERLOADED, True, "accepted-id memory is full"
                )
        if isinstance(verdict, Refusal):
            self.stats.refused[verdict.reason] += 1
            if acked:
                refused.append(verdict)
            else:
                refusal_error = wire.refusal_error(verdict, self.node_id)
                self._node.dead_letter(signal, refusal_error, agent_id)
            return
        self.stats.accepted += 1
        if kind is Kind.CALL:
            self._calls[(signal.id, agent_id)] = asyncio.get_running_loop().create_task(
                self._run_call(agent_id, signal, reply), name=f"router-call:{agent_id}"
            )
        else:
            verdict.offer(signal)
        if acked:
            accepted.append((signal.id, agent_id))

    def _remember_until(self, signal: Signal, now: float) -> float:
        deadline = signal.deadline
        return deadline if deadline is not None else now + self.config.send_timeout

    def _admit(self, agent_id: str, signal: Signal, now: float) -> AgentServer | Refusal:
        deadline = signal.deadline
        if deadline is not None and deadline <= now:
            return Refusal(
                signal.id,
                agent_id,
                Reason.EXPIRED,
                False,
                f"signal {signal.type!r} reached node {self.node_id!r} past its deadline",
            )
        server = self._local_server(agent_id)
        if server is None:
            return self._where(agent_id, signal.id)
        if server.mailbox_depth >= server.mailbox_size:
            return Refusal(
                signal.id,
                agent_id,
                Reason.MAILBOX_FULL,
                True,
                f"mailbox of agent {agent_id!r} is full ({server.mailbox_size} signals)",
            )
        return server

    def _local_server(self, agent_id: str) -> AgentServer | None:
        if self._node.lookup(agent_id) is None:
            return None
        server = self._node.server(agent_id)
        return server if server.alive else None

    def _where(self, agent_id: str, signal_id: str) -> Refusal:
        """Why an agent that is not running here cannot take a signal here."""
        placement = self._resolve(agent_id)
        here = f"on node {self.node_id!r}"
        if placement is None:
            return Refusal(signal_id, agent_id, Reason.UNKNOWN, False, f"no agent {agent_id!r}")
        if placement.status == "unavailable":
            return Refusal(
                signal_id, agent_id, Reason.UNAVAILABLE, False, f"agent {agent_id!r} is unavailable"
            )
        if placement.node != self.node_id:
            return Refusal(
                signal_id,
                agent_id,
                Reason.MOVED,
                True,
                f"agent {agent_id!r} is not {here}; it is on node {placement.node!r}",
                placement.node,
                placement.node_incarnation,
            )
        return Refusal(
            signal_id, agent_id, Reason.STARTING, True, f"agent {agent_id!r} is starting {here}"
        )

    def send_reply(self, subject: str, frame: bytes) -> None:
        """Send a result frame that a restored persistent agent's snapshot held."""
        if subject and not self._stopped:
            self._enqueue(subject, frame, control=True)

    async def _run_call(self, agent_id: str, signal: Signal, reply: str) -> None:
        key = (signal.id, agent_id)
        server = self._local_server(agent_id)
        keeper = server.keeper if server is not None else None
        if keeper is not None and reply:
            keeper.route_reply(signal.id, reply)
        try:
            deadline = signal.deadline
            budget = self.config.call_timeout
            if deadline is not None:
                budget = max(0.0, deadline - self._clock.monotonic())
            try:
                value = await self._node.call(
                    agent_id, signal, timeout=budget + self.config.call_grace
                )
            except Exception as error:  # the caller's boundary: every failure goes back
                frame = wire.error_frame(signal.id, agent_id, error)
            else:
                try:
                    frame = wire.result_frame(signal.id, agent_id, value)
                except InvalidSignal as error:
                    frame = wire.error_frame(signal.id, agent_id, error)
                if len(frame) + 2 > self._batch_bytes:
                    too_large = PayloadTooLarge(len(frame), self._batch_bytes, what="call result")
                    frame = wire.error_frame(signal.id, agent_id, too_large)
        finally:
            self._calls.pop(key, None)
            self._unacked.pop(key, None)
            if keeper is not None:
                keeper.forget_route(signal.id)
        if reply and not self._stopped:
            self._enqueue(reply, frame, control=True)

    def _on_ack(self, frame: wire.AckFrame) -> None:
        pending_map = self._pending
        for signal_id, agent_id in frame.accepted:
            pending = pending_map.get((signal_id, agent_id))
            if pending is None:
                continue
            if pending.accepted_on is None:
                pending.accepted_on = frame.node
            if not pending.ack.done():
                pending.ack.set_result(None)
        for refusal in frame.refused:
            pending = pending_map.get((refusal.id, refusal.to))
            if pending is not None and pending.node == frame.node and not pending.ack.done():
                pending.ack.set_result(refusal)

    def _on_result(self, frame: wire.ResultFrame) -> None:
        pending = self._pending.get((frame.id, frame.to))
        if pending is None or pending.result is None or pending.result.done():
            return
        if frame.error is not None:
            _settle_error(pending.result, error_from_dict(frame.error))
        else:
            pending.result.set_result(frame.value)
        if not pending.ack.done():
            if pending.accepted_on is None:
                pending.accepted_on = pending.node
            pending.ack.set_result(None)


def _starting(signal_id: str, agent_id: str, node_id: str) -> Refusal:
    return Refusal(
        signal_id, agent_id, Reason.STARTING, True, f"agent {agent_id!r} is starting on {node_id!r}"
    )


@dataclass(frozen=True, slots=True)
class _DurableSend:
    """A ``send`` to a durable agent here, accepted from a batch, waiting to be stored."""

    agent_id: str
    signal: Signal
    key: str
    """Its key in the accepted-id memory."""
    reply: str
    """Where its batch's acknowledgement goes."""
    now: float


_STORE_ERRORS = (DeliveryError, InvalidSignal, TransportError)
"""What admitting, storing or handing over a durable send may raise as a refusal."""


def _store_refusal(signal_id: str, agent_id: str, error: Exception) -> Refusal:
    """The refusal of a durable send that could not be stored or handed over: the agent's
    own word (``DeliveryError``), a deadline past the duplicate window (not retryable), or
    a store that did not answer (retryable)."""
    if isinstance(error, DeliveryError):
        return _refusal_of(signal_id, agent_id, error)
    if isinstance(error, InvalidSignal):
        return Refusal(signal_id, agent_id, Reason.INVALID, False, str(error))
    return Refusal(signal_id, agent_id, Reason.OVERLOADED, True, str(error))


def _refusal_of(signal_id: str, agent_id: str, error: DeliveryError) -> Refusal:
    reasons = {"starting": Reason.STARTING, "mailbox_full": Reason.MAILBOX_FULL}
    return Refusal(
        signal_id, agent_id, reasons.get(error.reason, Reason.OVERLOADED), True, str(error)
    )
