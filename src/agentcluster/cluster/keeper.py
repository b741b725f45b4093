"""The keeper of one persistent (critical or durable) agent on its node: snapshots, the
outbox, the fence and, for a durable agent, its inbox.

Theory of operation. The agent server calls the keeper at three points and nowhere else:
``hold_emit`` and ``hold_reply`` when an action emits a signal or answers a call (the
effect is staged, not carried out), and ``note`` after each item it handled. ``note``
numbers the change in ``core.snapshots.SnapshotScheduler`` when the item changed anything
(state, skills, schedules, staged effects, a durable inbox sequence), moves the staged
effects into the outbox under that version, and wakes the writer.

- **The writer** is one task. It writes when the scheduler says a write is due (group
  commit: at once when no write is in flight, so the changes made during one write share
  the next; ``max_staleness`` may delay writes further), as a compare-and-set on the
  revision of its own previous write (``StateStore``). Once a write commits, the outbox
  entries it covers are released — signals are sent with their final ids, replies settle
  their callers — and a durable agent's subject is purged below the new floor. A signal
  leaves the ledger only when its send was acknowledged, so a node that dies between the
  release and the acknowledgement leaves it in the committed snapshot, and the next
  owner releases it again with the same id (receivers drop the duplicate).
- **The fence.** Before every externally visible effect (a write, a release, a reply, an
  inbox acknowledgement) ``fence_ok`` checks the node's lease on the lease clock, which
  keeps counting through a suspension. A write that loses its compare-and-set means a
  newer incarnation wrote the key: ``AgentFenced``, the agent is stopped at once and its
  unreleased effects are dropped — the new owner has them from the snapshot it restored.
- **A durable inbox.** ``accept`` stores a signal in the agent's ``INBOX`` subject and
  hands (sequence, signal) straight to the mailbox; the sender is acknowledged only then.
  ``note`` marks the sequence applied in the inbox position the next snapshot carries.
  Stream sequences are stream-wide, so a subject's are sparse: the floor is advanced over
  the gaps once nothing of ours is outstanding, relying on the one connection's order (a
  store issued later gets a later sequence). A duplicate store (a sender's retry) answers
  with the original sequence, which is delivered again unless this keeper saw it.

Replies to calls are held until the snapshot covering the state they read commits. The
reply to a call from another node, by an action that changed something, is also an outbox
entry (its call id, the caller's reply subject and the result frame) in the snapshot that
holds the change: if the node dies after that commit and before the reply left, the next
owner sends it, and answers the same call id from it if the caller resends the call —
never a second run. The entry leaves the ledger once the live reply went, so the next
snapshot drops it. A call whose action had not committed when the node died is not
journaled: its caller gets a timeout (``send`` is how to reach a durable agent reliably).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentcluster.cluster import wire
from agentcluster.cluster.inbox import DUPLICATE_WINDOW, DurableInbox
from agentcluster.cluster.state_store import StateStore
from agentcluster.core import codec
from agentcluster.core.inbox_position import InboxGapTooLarge, InboxPosition
from agentcluster.core.registry import AgentMode
from agentcluster.core.signal import Signal
from agentcluster.core.snapshots import (
    DEFAULT_MAX_STALENESS,
    ObjectPointer,
    Outbox,
    OutboxEntry,
    SnapshotEnvelope,
    SnapshotScheduler,
)
from agentcluster.errors import (
    AgentClusterError,
    AgentFenced,
    AgentStarting,
    DeliveryError,
    InvalidSignal,
    MailboxFull,
    NodeUnavailable,
)
from agentcluster.telemetry.events import Telemetry

if TYPE_CHECKING:
    from agentcluster.agent.server import AgentServer
    from agentcluster.clock import Clock

__all__ = ["AgentKeeper", "KeeperDeps"]

_log = logging.getLogger("agentcluster.cluster.keeper")

_SEEN_LIMIT = 100_000
"""Sequences a keeper remembers having delivered (to tell a retried store from a lost one)."""

_REPLY = "reply"
_REPLY_PREFIX = "reply:"
_ROUTES_LIMIT = 10_000
"""Reply subjects of calls running, and restored replies, an agent remembers."""


def _reply_entry(call_id: str) -> str:
    return f"{_REPLY_PREFIX}{call_id}"


def _is_reply(entry: OutboxEntry) -> bool:
    payload = entry.payload
    return isinstance(payload, dict) and payload.get("kind") == _REPLY


_LEASE_POLL = 0.05
"""Seconds between looks at the lease while a release waits for it."""

_ACCEPT_WAIT = 5.0
"""Seconds ``accept`` waits for mailbox room for a signal already stored."""


@dataclass(slots=True)
class KeeperDeps:
    """What a keeper needs from its node."""

    node_id: str
    clock: Clock
    store: StateStore
    inbox: DurableInbox | None
    fence_ok: Callable[[], bool]
    """The node's lease is valid now (on the lease clock)."""
    send: Callable[[Signal], Any]
    """Releases an emitted signal: an awaitable that returns once it is acknowledged."""
    dead_letter: Callable[[Signal, AgentClusterError], None]
    on_fenced: Callable[[str, AgentFenced], None]
    telemetry: Telemetry
    max_staleness: float = DEFAULT_MAX_STALENESS
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    send_reply: Callable[[str, bytes], None] | None = None
    """Sends a restored reply's result frame to its caller's reply subject."""
    incarnation_of: Callable[[str], int | None] = lambda agent_id: None
    """The agent's incarnation in this node's registry cache (None: unknown)."""


class AgentKeeper:
    """See the module docstring."""

    def __init__(
        self,
        deps: KeeperDeps,
        agent_id: str,
        mode: AgentMode,
        incarnation: int,
        *,
        revision: int,
        pointer: ObjectPointer | None,
        outbox: Outbox,
        position: InboxPosition | None,
    ) -> None:
        self._deps = deps
        self.agent_id = agent_id
        self.mode = mode
        self.incarnation = incarnation
        self.revision = revision
        self._pointer = pointer
        self.scheduler = SnapshotScheduler(deps.max_staleness)
        self.outbox = outbox
        self.position = position
        self.activation_floor = 0 if position is None else position.floor
        self.server: AgentServer | None = None
        self.running = False
        self.fenced: AgentFenced | None = None
        self._staged: list[tuple[str, Any]] = []
        self._replies: list[tuple[int, asyncio.Future[Any], Any]] = []
        self._reply_routes: OrderedDict[str, str] = OrderedDict()
        """Call id -> the caller's reply subject, for calls that came over the wire."""
        self._answered: OrderedDict[str, bytes] = OrderedDict()
        """Call id -> result frame of the restored snapshot's replies, for a resent call."""
        self._sending: set[str] = set()
        self._lease_waiter: asyncio.Task[None] | None = None
        self._fingerprint: tuple[Any, ...] = ()
        self._seq_of: dict[str, int] = {}
        self._outstanding: dict[int, None] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()
        for seq in () if position is None else sorted(position.applied):
            self._remember(seq)  # applied by an earlier owner: a retried store is a duplicate
        self._max_seq = 0 if position is None else position.floor
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._purged_below = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.writes = 0
        self.write_failures = 0

    @property
    def durable(self) -> bool:
        return self.mode is AgentMode.DURABLE

    @property
    def fencing_token(self) -> tuple[int, int]:
        """(agent incarnation, state revision): what a system outside the cluster compares."""
        return self.incarnation, self.revision

    # --- lifecycle ------------------------------------------------------------------

    def attach(self, server: AgentServer) -> None:
        self.server = server
        server.keeper = self
        self._fingerprint = self._current_fingerprint()
        self._task = asyncio.get_running_loop().create_task(
            self._writer(), name=f"keeper:{self.agent_id}"
        )

    async def close(self) -> None:
        """Stop writing (the agent stopped or was fenced); pending replies are failed."""
        self._stopped = True
        self.running = False
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, future, _ in self._replies:
            if not future.done():
                future.set_exception(
                    NodeUnavailable(
                        f"agent {self.agent_id!r} stopped before its reply was released",
                        agent_id=self.agent_id,
                    )
                )
        self._replies.clear()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.cancel()

    async def final_snapshot(self, timeout: float) -> None:
        """A graceful stop or leave: commit what is pending, bounded by ``timeout``."""
        if self.fenced is not None or self._stopped:
            return
        with contextlib.suppress(TimeoutError, AgentClusterError):
            async with asyncio.timeout(timeout):
                if self.scheduler.latest_version > self.scheduler.committed_version:
                    await self._write_once()

    # --- hooks from the agent server ------------------------------------------------

    def hold_emit(self, signal: Signal) -> None:
        self._staged.append(("signal", signal))

    def hold_reply(self, future: asyncio.Future[Any], value: Any, call_id: str = "") -> None:
        self._staged.append(("reply", (future, value, call_id)))

    def route_reply(self, call_id: str, subject: str) -> None:
        """A call from another node is about to run: where its reply goes, so a reply of an
        action that changed the state is kept in the outbox with it."""
        routes = self._reply_routes
        routes[call_id] = subject
        while len(routes) > _ROUTES_LIMIT:
            routes.popitem(last=False)

    def forget_route(self, call_id: str) -> None:
        self._reply_routes.pop(call_id, None)

    def answered(self, call_id: str) -> bytes | None:
        """The result frame of a call the restored snapshot had answered, if this is one."""
        return self._answered.get(call_id)

    def note(self, item: Any) -> None:
        """The server finished ``item`` (a signal, call or instruction), whatever the
        outcome: record its effects as one change when it made any."""
        seq = None
        if self.durable:
            signal = item if type(item) is Signal else getattr(item, "signal", None)
            if signal is not None:
                seq = self._seq_of.pop(signal.id, None)
        fingerprint = self._current_fingerprint()
        staged, self._staged = self._staged, []
        if fingerprint == self._fingerprint and seq is None:
            # Nothing changed: replies only wait for the state they read to be committed.
            latest = self.scheduler.latest_version
            for kind, value in staged:
                if kind == "signal":
                    self._staged.append((kind, value))
                elif self.scheduler.covers(latest) and self._deps.fence_ok():
                    future, result, _ = value
                    if not future.done():
                        self._committed("reply")
                        future.set_result(result)
                else:
                    self._replies.append((latest, value[0], value[1]))
            if not self._staged:
                return
            staged, self._staged = self._staged, []
        self._fingerprint = fingerprint
        now = self._deps.clock.monotonic()
        if seq is not None:
            self._applied(seq)
        version = self.scheduler.changed(now)
        for kind, value in staged:
            if kind == "signal":
                signal = value
                try:
                    self.outbox = self.outbox.add(signal.id, version, _encode(signal, now))
                except AgentClusterError as error:
                    self._deps.dead_letter(signal, error)
            else:
                future, result, call_id = value
                self._replies.append((version, future, result))
                self._keep_reply(call_id, result, version)
        self._wake.set()

    def _keep_reply(self, call_id: str, result: Any, version: int) -> None:
        """The reply of a call from another node, to an action that changed the state, goes
        into the outbox with the caller's reply subject: if this node dies after the
        snapshot commits and before the reply leaves, the next owner sends it."""
        route = self._reply_routes.pop(call_id, None) if call_id else None
        if route is None:
            return
        try:
            frame = wire.result_frame(call_id, self.agent_id, result)
            payload = {"kind": _REPLY, "to": route, "frame": frame.decode()}
            self.outbox = self.outbox.add(_reply_entry(call_id), version, payload)
        except AgentClusterError as error:
            # Unencodable (the router answers with the error) or the outbox is full: the
            # live reply still goes; only a failover between commit and send loses it.
            _log.debug("reply to %s of %r not kept: %s", call_id, self.agent_id, error)

    def _current_fingerprint(self) -> tuple[Any, ...]:
        server = self.server
        if server is None:
            return ()
        agent = server.agent
        return (
            id(agent.state),
            tuple(id(v) for v in agent.skill_states.values()),
            tuple(agent.schedules),
        )

    # --- the durable inbox ----------------------------------------------------------

    async def accept(self, signal: Signal) -> None:
        """Store ``signal`` in the inbox and hand it to the mailbox; returns once both are
        done (the sender may be acknowledged). Raises a retryable ``DeliveryError`` when
        the agent cannot take it now. ``admit``, ``store`` and ``hand_over`` are its three
        steps, for a caller that stores many signals at once."""
        stored = self.admit(signal)
        seq, duplicate = await self.store(stored)
        await self.hand_over(seq, duplicate, stored)
        self.acknowledge()

    def admit(self, signal: Signal) -> Signal:
        """The checks that need no store: returns the signal as it is stored (a stored
        signal no longer has a deadline), or raises a retryable ``DeliveryError`` (not
        running, lease unconfirmed, mailbox full) or ``InvalidSignal`` (a deadline past
        the duplicate window)."""
        server = self.server
        assert self._deps.inbox is not None
        assert self.position is not None
        if not self.running or server is None or self.fenced is not None:
            raise AgentStarting(f"agent {self.agent_id!r} is starting", agent_id=self.agent_id)
        if not self._deps.fence_ok():
            raise NodeUnavailable(
                f"node {self._deps.node_id!r} cannot confirm its lease", agent_id=self.agent_id
            )
        if server.mailbox_depth >= server.mailbox_size:
            raise MailboxFull(f"mailbox of agent {self.agent_id!r} is full", agent_id=self.agent_id)
        now = self._deps.clock.monotonic()
        if signal.deadline is not None and signal.deadline - now > DUPLICATE_WINDOW:
            raise InvalidSignal(
                f"a send to durable agent {self.agent_id!r} may have a deadline of at most "
                f"{DUPLICATE_WINDOW:g} s (the inbox's duplicate window), not "
                f"{signal.deadline - now:.0f} s: a later retry would be stored twice"
            )
        return signal.evolve(deadline=None) if signal.deadline is not None else signal

    async def store(self, stored: Signal) -> tuple[int, bool]:
        """Store an admitted signal in the agent's subject: its stream sequence and whether
        it was stored before under the same id. Stores issued one after another on the
        node's connection get increasing sequences, whether or not each waited for the
        one before."""
        inbox = self._deps.inbox
        assert inbox is not None
        return await inbox.store(self.agent_id, stored, self._deps.clock.monotonic())

    async def hand_over(self, seq: int, duplicate: bool, stored: Signal) -> None:
        """Hand a stored signal to the mailbox, unless it is a retried store of one already
        delivered; the sender may be acknowledged once this returned and ``acknowledge``
        passed."""
        if self.server is None or self.fenced is not None:
            raise AgentStarting(f"agent {self.agent_id!r} is starting", agent_id=self.agent_id)
        if duplicate and (
            seq in self._seen or seq in self._outstanding or seq <= self.activation_floor
        ):
            # Stored before and delivered (or done before this owner began): the sender's
            # retry is acknowledged, not run again. A duplicate this owner never saw was
            # stored without being delivered (an earlier store's reply was lost): run it.
            return
        await self.deliver(seq, stored, wait=_ACCEPT_WAIT)

    def acknowledge(self) -> None:
        """The fence of an inbox acknowledgement, called synchronously right before the
        sender is told its signal is stored. An instance that was frozen or cut off past
        its lease may have had a store land after the new owner walked the subject: it
        must not acknowledge it (the sender retries, reaches the new owner, and the
        stream's de-duplication hands that owner the stored copy)."""
        if self.superseded():
            raise AgentStarting(
                f"agent {self.agent_id!r} moved to a newer incarnation", agent_id=self.agent_id
            )
        if self.fenced is not None or not self._deps.fence_ok():
            raise NodeUnavailable(
                f"node {self._deps.node_id!r} cannot confirm its lease", agent_id=self.agent_id
            )
        self._committed("inbox_ack")

    async def deliver(self, seq: int, signal: Signal, *, wait: float) -> None:
        """Hand a stored signal to the mailbox under its sequence."""
        server = self.server
        assert server is not None
        self._outstanding[seq] = None
        self._remember(seq)
        if seq > self._max_seq:
            self._max_seq = seq
        self._seq_of[signal.id] = seq
        try:
            await server.put(signal, self._deps.clock.monotonic() + wait)
        except DeliveryError:
            self._outstanding.pop(seq, None)
            self._seq_of.pop(signal.id, None)
            raise

    async def run_replayed(self, seq: int, signal: Signal, timeout: float) -> None:
        """Deliver one replayed signal and wait until the agent finished it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[seq] = future
        try:
            await self.deliver(seq, signal, wait=timeout)
            async with asyncio.timeout(timeout):
                await future
        finally:
            self._waiters.pop(seq, None)

    def settle(self, seq: int) -> None:
        """A sequence done without running (dead-lettered or undecodable during a replay)."""
        self._remember(seq)
        self._applied(seq)
        self.scheduler.changed(self._deps.clock.monotonic())
        self._wake.set()

    def _remember(self, seq: int) -> None:
        seen = self._seen
        seen[seq] = None
        if len(seen) > _SEEN_LIMIT:
            seen.popitem(last=False)

    def _applied(self, seq: int) -> None:
        position = self.position
        assert position is not None
        self._outstanding.pop(seq, None)
        try:
            position = position.mark_applied(seq)
        except InboxGapTooLarge:
            position = position.advance_floor_to(seq)
        if self._outstanding:
            position = position.advance_floor_to(min(self._outstanding) - 1)
        elif self.running:
            position = position.advance_floor_to(self._max_seq)
        self.position = position
        waiter = self._waiters.pop(seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- writing --------------------------------------------------------------------

    async def commit_now(self) -> None:
        """Write a snapshot of the present now and wait for it (replay attempts, tests)."""
        self.scheduler.changed(self._deps.clock.monotonic())
        await self._write_once()

    async def _writer(self) -> None:
        clock = self._deps.clock
        while not self._stopped:
            now = clock.monotonic()
            scheduler = self.scheduler
            if scheduler.in_flight is None and scheduler.due(now):
                try:
                    await self._write_once()
                except AgentFenced:
                    return
                except NodeUnavailable as error:
                    _log.debug("snapshot of %r waits for the lease: %s", self.agent_id, error)
                except AgentClusterError as error:
                    _log.warning("snapshot of %r not written: %s", self.agent_id, error)
                continue
            deadline = scheduler.next_deadline()
            self._wake.clear()
            timeout = None if deadline is None else max(1e-4, deadline - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _envelope(self, now: float) -> SnapshotEnvelope:
        server = self.server
        assert server is not None
        snap = server.agent.snapshot(now)
        return SnapshotEnvelope(
            schema_version=snap["schema_version"],
            state=snap,
            schedules=snap["schedules"],
            outbox=self.outbox.for_snapshot(),
            inbox=None if self.position is None else self.position.to_json(),
            agent_incarnation=self.incarnation,
        )

    async def _write_once(self) -> None:
        async with self._lock:
            if self.fenced is not None:
                raise self.fenced
            clock = self._deps.clock
            now = clock.monotonic()
            version = self.scheduler.write_started(now)
            if not self._deps.fence_ok():
                self.scheduler.write_failed(version, clock.monotonic())
                self.write_failures += 1
                raise NodeUnavailable(
                    f"node {self._deps.node_id!r} cannot confirm its lease",
                    agent_id=self.agent_id,
                )
            envelope = self._envelope(now)
            try:
                revision, pointer = await self._deps.store.write(
                    self.agent_id, envelope, self.revision, replaces=self._pointer
                )
            except AgentFenced as fenced:
                self.scheduler.write_failed(version, clock.monotonic())
                self._fence(fenced)
                raise
            except AgentClusterError:
                self.scheduler.write_failed(version, clock.monotonic())
                self.write_failures += 1
                raise
            self.revision = revision
            self._pointer = pointer
            self.writes += 1
            self.scheduler.write_committed(version, clock.monotonic())
            self._committed("state", revision)
        self._release(version, envelope)

    def _release(self, version: int, envelope: SnapshotEnvelope) -> None:
        """A write of ``version`` committed: release what it covers, purge the inbox."""
        if not self._deps.fence_ok():
            # Released once the lease is confirmed again (or by the new owner, from the
            # committed snapshot, if this instance was replaced meanwhile).
            self._release_when_lease_back()
            return
        self._release_effects(version)
        position = self.position
        inbox = self._deps.inbox
        if position is not None and inbox is not None and envelope.inbox is not None:
            below = InboxPosition.from_json(envelope.inbox).purge_below()
            if below > self._purged_below + 1:
                self._purged_below = below - 1
                self._spawn(self._purge(inbox, below))

    def _release_effects(self, version: int) -> None:
        """Settle the held replies and send the outbox entries ``version`` covers."""
        if self._replies:
            still: list[tuple[int, asyncio.Future[Any], Any]] = []
            for held in self._replies:
                if held[0] <= version:
                    if not held[1].done():
                        self._committed("reply")
                        held[1].set_result(held[2])
                else:
                    still.append(held)
            self._replies = still
        replies = []
        for entry in self.outbox.releasable(version):
            if _is_reply(entry):
                replies.append(entry.entry_id)  # the live reply leaves with its caller's future
            elif entry.entry_id not in self._sending:
                self._send(entry)
        if replies:
            self.outbox = self.outbox.released(replies)

    def _release_when_lease_back(self) -> None:
        """Release what the last commit covers once the node's lease is confirmed again:
        one waiter per keeper, however many effects wait."""
        waiter = self._lease_waiter
        if waiter is None or waiter.done():
            self._lease_waiter = self._spawn(self._wait_for_lease())

    async def _wait_for_lease(self) -> None:
        while not self._deps.fence_ok():
            if self.fenced is not None or self._stopped:
                return  # replaced: the new owner releases from the committed snapshot
            await asyncio.sleep(_LEASE_POLL)
        if self.fenced is None and not self._stopped:
            self._release_effects(self.scheduler.committed_version)

    def release_restored(self, entries: list[OutboxEntry] | None = None) -> None:
        """After the fencing write: release again every entry the restored snapshot held.
        A reply goes to its caller's reply subject under its call id (a caller still
        waiting takes it; any other drops it), and is remembered to answer that call
        again if the caller resends it here."""
        held = {entry.entry_id for entry in self.outbox.for_snapshot()}
        replies = []
        for entry in self.outbox.for_snapshot() if entries is None else entries:
            if entry.entry_id not in held:
                continue  # released meanwhile (a later commit covered it)
            if _is_reply(entry):
                replies.append(entry.entry_id)
                self._send_reply(entry)
            elif entry.entry_id not in self._sending:
                self._send(entry)
        if replies:
            self.outbox = self.outbox.released(replies)

    def superseded(self) -> bool:
        """The registry (this node's cache: a hint) names a newer incarnation of the agent.
        Checked with the lease before effects that no compare-and-set guards."""
        newest = self._deps.incarnation_of(self.agent_id)
        return newest is not None and newest > self.incarnation

    def may_commit(self) -> bool:
        return self.fenced is None and self._deps.fence_ok() and not self.superseded()

    def _send_reply(self, entry: OutboxEntry) -> None:
        payload = entry.payload
        frame = str(payload.get("frame", "")).encode()
        call_id = entry.entry_id[len(_REPLY_PREFIX) :]
        self._answered[call_id] = frame
        while len(self._answered) > _ROUTES_LIMIT:
            self._answered.popitem(last=False)
        send_reply = self._deps.send_reply
        if send_reply is None or not self.may_commit():
            return
        self._committed("reply")
        send_reply(str(payload.get("to", "")), frame)

    def _send(self, entry: OutboxEntry) -> None:
        try:
            signal = codec.decode(entry.payload, self._deps.clock.monotonic())
        except AgentClusterError as error:
            _log.error(
                "outbox entry %s of %r is unreadable: %s", entry.entry_id, self.agent_id, error
            )
            self.outbox = self.outbox.released([entry.entry_id])
            return
        self._sending.add(entry.entry_id)
        self._spawn(self._send_one(entry.entry_id, signal))

    async def _send_one(self, entry_id: str, signal: Signal) -> None:
        # The fence, synchronously before the first transmission: the commit of an emitted
        # signal. The router's retransmissions carry the same id, and receivers drop them
        # as duplicates. Without a lease the entry waits in the outbox (the new owner
        # releases it from its snapshot if this instance is replaced meanwhile).
        if self.fenced is not None or self._stopped or self.superseded():
            self._sending.discard(entry_id)
            return
        if not self._deps.fence_ok():
            self._sending.discard(entry_id)  # still in the outbox: released again then
            self._release_when_lease_back()
            return
        self._committed("emit")
        try:
            await self._deps.send(signal)
        except AgentClusterError as error:
            # The sender that gave up dead-lettered it (with its reason): done here.
            _log.info("emitted signal %s of %r gave up: %s", entry_id, self.agent_id, error)
        except Exception:
            _log.exception("releasing %s of %r failed", entry_id, self.agent_id)
            self._sending.discard(entry_id)
            return
        self._sending.discard(entry_id)
        if self.fenced is None and not self._stopped:
            self.outbox = self.outbox.released([entry_id])
            self.scheduler.changed(self._deps.clock.monotonic())
            self._wake.set()

    async def _purge(self, inbox: DurableInbox, below: int) -> None:
        try:
            await inbox.purge(self.agent_id, below)
        except AgentClusterError as error:
            _log.debug("inbox of %r not purged below %d: %s", self.agent_id, below, error)
            self._purged_below = 0

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        tasks = self._deps.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    def _committed(self, kind: str, revision: int | None = None) -> None:
        """Every externally visible effect, for invariant checkers (``sim.invariants``)."""
        telemetry = self._deps.telemetry
        if telemetry.enabled:
            telemetry.emit(
                ("agentcluster", "agent", "committed"),
                {"count": 1},
                {
                    "agent_id": self.agent_id,
                    "incarnation": self.incarnation,
                    "kind": kind,
                    "revision": revision,
                    "node_id": self._deps.node_id,
                },
            )

    def _fence(self, fenced: AgentFenced) -> None:
        if self.fenced is not None:
            return
        fenced.node_id = self._deps.node_id
        self.fenced = fenced
        self.running = False
        self._staged.clear()
        self._deps.telemetry.emit(
            ("agentcluster", "agent", "fenced"),
            {"count": 1},
            {
                "agent_id": self.agent_id,
                "node_id": self._deps.node_id,
                "incarnation": self.incarnation,
            },
        )
        self._deps.on_fenced(self.agent_id, fenced)


def _encode(signal: Signal, now: float) -> Any:
    import orjson

    return orjson.loads(codec.encode(signal, now))
