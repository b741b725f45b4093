"""Leader election within a group of agents (leader-follower), on one coordination key.

Theory of operation (the rules are ``core.coordination``'s). ``election.<group>`` names the
leader member, its node, that node's incarnation, and the term. Each member's ``Election``
follows the key with a watch and re-decides whenever the key, the membership cache or its
own lease changes (and every ``poll`` seconds regardless):

- no record, a vacant one (its leader resigned), or a leader that is gone — its node
  declared ``dead`` or ``left``, or replaced by a newer incarnation — and this member's
  node holds a valid lease: campaign, writing itself with term + 1 by compare-and-set at
  the revision read. The store picks one winner per revision, so a term has one leader,
  and terms strictly increase (a vacant record keeps its term);
- otherwise follow: ``leader`` is the record's member while it is live.

``is_leader`` holds while the key names this member on this node at its current
incarnation and the node's lease is valid: use ``term`` as the fencing token of whatever
the leader does. ``on_change(leader)`` runs (on the election's task; it must not block)
whenever the live leader or its term changes, with ``None`` while there is none.

``resign()`` (also ``close()``, and leaving ``async with``) stops campaigning and, if this
member leads, vacates the post by compare-and-set, so a follower takes over at once
instead of after a death detection. A member whose node dies is replaced within the
death-detection time (about 1 s after its last lease renewal) plus a watch delivery.

One member id campaigns at most once per group on a node at a time (``UsageError``); a
client (``role="client"``) cannot campaign.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from agentcluster.cluster.buckets import stamped_update, stop_task
from agentcluster.cluster.coordination.seat import (
    BACKOFF,
    IO_TIMEOUT,
    POLL,
    RELEASE_WITHIN,
    WRITE_ATTEMPTS,
    KeyFollower,
    Seat,
)
from agentcluster.core.coordination import (
    ElectionAction,
    ElectionRecord,
    Leader,
    campaign_record,
    election_action,
    leader_of,
)
from agentcluster.core.membership import NodeRecord
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import (
    ConfigurationError,
    ConnectionClosed,
    CoordinationError,
    CorruptRecord,
    ElectionTimeout,
    KeyExists,
    NoResponders,
    RequestTimeout,
    RevisionMismatch,
    UsageError,
)
from agentcluster.telemetry.events import telemetry
from agentcluster.transport.interface import Entry
from agentcluster.transport.names import encode_token

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = ["LEADER_CHANGED", "Election", "elect", "election_key"]

_log = logging.getLogger("agentcluster.cluster.coordination.election")

LEADER_CHANGED = ("agentcluster", "coordination", "election", "leader_changed")
"""Emitted by the member that won a term: ``term`` measured, group, member, node."""

OnChange = Callable[[Leader | None], None]


def election_key(group: str) -> str:
    """The ``coordination`` key of election group ``group`` (any non-empty string)."""
    return f"election.{encode_token(group)}"


def _election_stamp(value: bytes) -> WriteStamp | None:
    return ElectionRecord.from_bytes(value).stamp


_campaigning: weakref.WeakKeyDictionary[ClusterNode, set[tuple[str, str]]] = (
    weakref.WeakKeyDictionary()
)
"""Per node: the (group, member) pairs with an open ``Election``."""


async def elect(
    node: ClusterNode,
    group: str,
    member: str,
    *,
    on_change: OnChange | None = None,
    poll: float = POLL,
) -> Election:
    """Join ``group``'s election as ``member`` (an agent id, say) through ``node``.

    Returns once the key has been read and, if nobody live leads, one campaign made: a
    lone member leads on return. ``UsageError`` if this member already campaigns in this
    group on this node, or on a client.
    """
    for what, value in (("group", group), ("member", member)):
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"an election {what} must be a non-empty string")
    seat = Seat.of(node, writes="campaign in an election")
    held = _campaigning.setdefault(node, set())
    if (group, member) in held:
        raise UsageError(f"{member!r} already campaigns in {group!r} on node {node.node_id!r}")
    held.add((group, member))
    election = Election(seat, group, member, on_change, poll)
    try:
        await election._start()
    except BaseException:
        held.discard((group, member))
        raise
    return election


class Election:
    """One member's place in a group's election; see the module docstring."""

    def __init__(
        self, seat: Seat, group: str, member: str, on_change: OnChange | None, poll: float
    ) -> None:
        self._seat = seat
        self.group = group
        self.member = member
        self._on_change = on_change
        self._poll = poll
        self._key = election_key(group)
        self._follower = KeyFollower(seat, self._key, poll=poll)
        self._record: ElectionRecord | None = None
        self._revision = 0
        self._view: Leader | None = None
        self._view_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.campaigns = 0
        """Compare-and-sets this member attempted on the key."""
        self.terms_won: list[int] = []

    # --- reading ------------------------------------------------------------------------

    @property
    def leader(self) -> Leader | None:
        """The live leader as this member sees it; None while there is none, and once
        this election is closed."""
        return self._view

    @property
    def term(self) -> int:
        """The term of the key as last seen (0 before any leader)."""
        return 0 if self._record is None else self._record.term

    @property
    def is_leader(self) -> bool:
        """The key names this member, on this node at its incarnation, and the node's lease
        is valid: it may act as leader, under ``term``."""
        view, seat = self._view, self._seat
        return (
            not self._closed
            and view is not None
            and view.member == self.member
            and view.node == seat.node_id
            and view.incarnation == seat.incarnation
            and seat.valid()
        )

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_leader(self, timeout: float) -> Leader:
        """The live leader, waiting at most ``timeout`` seconds for there to be one;
        ``ElectionTimeout`` naming the group when none appeared in time
        (``CoordinationError`` when the election is closed)."""
        if self._closed:
            raise CoordinationError(f"{self._who()}: the election is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._view is None:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closed:
                raise ElectionTimeout(
                    self.group, timeout, f"as {self.member!r} on {self._seat.node_id!r} sees it"
                )
            self._view_changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._view_changed.wait()
            except TimeoutError:
                continue
        return self._view

    # --- lifecycle ----------------------------------------------------------------------

    async def _start(self) -> None:
        await self._follower.start()
        try:
            await self._evaluate()
        except (RequestTimeout, NoResponders) as exc:
            _log.info("%s: first evaluation deferred: %s", self._who(), exc)
        except BaseException:
            await self._follower.stop()
            raise
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"election[{self._seat.node_id}:{self.group}:{self.member}]"
        )

    async def resign(self, *, timeout: float = RELEASE_WITHIN) -> None:
        """Stop campaigning and, if this member leads, vacate the post; idempotent.

        The store is retried for ``timeout`` seconds; after that a post this member still
        holds is freed only when its node is declared dead (logged as a warning).
        """
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        try:
            await stop_task(task)
            await self._vacate(timeout)
        finally:
            self._view = None
            self._view_changed.set()
            await self._follower.stop()
            held = _campaigning.get(self._seat.node)
            if held is not None:
                held.discard((self.group, self.member))

    close = resign

    async def __aenter__(self) -> Election:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.resign()

    # --- deciding -----------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            try:
                if not await self._follower.wait(self._poll):
                    await self._follower.refresh()
                await self._evaluate()
            except ConnectionClosed:
                _log.info("%s: connection closed; the election stops", self._who())
                return
            except (RequestTimeout, NoResponders) as exc:
                _log.debug("%s: evaluation deferred: %s", self._who(), exc)
                await asyncio.sleep(BACKOFF)
            except Exception:
                _log.exception("%s: election evaluation failed", self._who())
                await asyncio.sleep(self._poll)

    async def _evaluate(self) -> None:
        follower = self._follower
        if follower.revision > self._revision:
            self._revision = follower.revision
            self._record = self._decode(follower.entry)
        record = self._record
        holder = "" if record is None or record.vacant else record.node
        members, complete = await self._seat.members_for(holder)
        self._show(members, complete)
        seat = self._seat
        if self._closed or not seat.valid():
            return
        action = election_action(
            record, self.member, seat.node_id, seat.incarnation, members, view_complete=complete
        )
        if action is ElectionAction.CAMPAIGN:
            await self._campaign(record, members)

    def _decode(self, entry: Entry | None) -> ElectionRecord | None:
        if entry is None:
            return None
        try:
            return ElectionRecord.from_bytes(entry.value)
        except CorruptRecord as exc:
            _log.error("%s: unreadable election record: %s; campaigning over it", self._who(), exc)
            return None

    async def _campaign(
        self, record: ElectionRecord | None, members: dict[str, NodeRecord]
    ) -> None:
        seat = self._seat
        stamp = seat.stamp()
        new = campaign_record(record, self.member, stamp)
        self.campaigns += 1
        expected = None if record is None and self._follower.entry is None else self._revision
        try:
            written = await stamped_update(
                seat.kv,
                self._key,
                new.to_bytes(),
                stamp,
                expected,
                stamp_of=_election_stamp,
                timeout=IO_TIMEOUT,
                attempts=WRITE_ATTEMPTS,
            )
        except (KeyExists, RevisionMismatch):
            await self._follower.refresh()  # someone else won: learn who at once
            return
        except (RequestTimeout, NoResponders) as exc:
            _log.info("%s: campaign for term %d still open: %s", self._who(), new.term, exc)
            return
        self._follower.feed(Entry(seat.kv.bucket, self._key, new.to_bytes(), written))
        self._revision, self._record = written, new
        self.terms_won.append(new.term)
        members[seat.node_id] = members.get(seat.node_id) or _self_record(seat)
        self._show(members, True)
        _log.info("%s leads %r (term %d)", self.member, self.group, new.term)
        telemetry.emit(
            LEADER_CHANGED,
            {"term": new.term},
            {"group": self.group, "member": self.member, "node_id": seat.node_id},
        )

    def _show(self, members: dict[str, NodeRecord], complete: bool) -> None:
        view = leader_of(self._record, members, view_complete=complete)
        if view == self._view:
            return
        self._view = view
        self._view_changed.set()
        if self._on_change is not None:
            try:
                self._on_change(view)
            except Exception:
                _log.exception("%s: on_change hook failed", self._who())

    async def _vacate(self, timeout: float) -> None:
        seat = self._seat
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                entry = await seat.kv.get(self._key, timeout=IO_TIMEOUT)
                record = self._decode(entry)
                if entry is None or record is None or not self._names_me(record):
                    return
                stamp = seat.stamp()
                await stamped_update(
                    seat.kv,
                    self._key,
                    record.vacated(stamp).to_bytes(),
                    stamp,
                    entry.revision,
                    stamp_of=_election_stamp,
                    timeout=IO_TIMEOUT,
                    attempts=WRITE_ATTEMPTS,
                )
                _log.info("%s resigned from %r (term %d)", self.member, self.group, record.term)
                return
            except ConnectionClosed:
                return
            except (KeyExists, RevisionMismatch):
                continue  # the key moved: read it again
            except (RequestTimeout, NoResponders) as exc:
                if loop.time() >= deadline:
                    _log.warning(
                        "%s: could not vacate %r (%s); it is freed when node %r is declared dead",
                        self._who(),
                        self.group,
                        exc,
                        seat.node_id,
                    )
                    return
                await asyncio.sleep(BACKOFF)

    def _names_me(self, record: ElectionRecord) -> bool:
        return (
            record.leader == self.member
            and record.node == self._seat.node_id
            and record.incarnation == self._seat.incarnation
        )

    def _who(self) -> str:
        return f"election {self.group!r} member {self.member!r} on {self._seat.node_id!r}"

    def __repr__(self) -> str:
        return (
            f"Election({self.group!r}, member={self.member!r}, leader={self._view}, "
            f"term={self.term})"
        )


def _self_record(seat: Seat) -> NodeRecord:
    """This node's own record, as its lease renewer last wrote it."""
    record = seat.writer.record
    if record is None:
        raise ConnectionClosed(f"node {seat.node_id!r} has not joined")
    return record
