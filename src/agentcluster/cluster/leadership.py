"""Leadership: follow the ``leader`` key, and campaign for it when ``core.leader`` says so.

The ``leader`` bucket's one key (``current``) holds a ``LeaderRecord`` (node, incarnation,
term, stamp). This shell watches it, and whenever the key, the membership or its own lease
changes (and every ``poll`` seconds regardless) asks ``leader_action`` about it — only
against a complete membership cache, and only while its own lease is valid (a paused node
does not campaign). CAMPAIGN creates the key when it is absent, or moves it by
compare-and-set at the revision held to ``record.successor(...)`` (term + 1), stamped. The
store picks one winner per revision; losers learn the winner from the watch.

``leader()`` is ``(node id, term)`` of the current key; ``is_leader`` says the key names this
node at its current incarnation. ``on_elected(term)`` runs when that starts, ``on_deposed()``
when it ends (another node took the key, or this node rejoined under a new incarnation).
A client builds this with ``renewer=None``: it follows and never campaigns. Leader-only
duties must themselves be compare-and-sets behind the node's fence, so a leader that has
not yet noticed its successor cannot undo its work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agentcluster.cluster.buckets import LEADER_KEY, BucketWatch, stamped_update, stop_task
from agentcluster.cluster.lease_renewer import LeaseRenewer
from agentcluster.cluster.membership import Membership
from agentcluster.core.leader import LeaderAction, LeaderRecord, leader_action
from agentcluster.core.membership import NodeRecord
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import (
    ConnectionClosed,
    CorruptRecord,
    KeyExists,
    NoResponders,
    RequestTimeout,
    RevisionMismatch,
)
from agentcluster.telemetry.events import Telemetry
from agentcluster.telemetry.events import telemetry as default_telemetry
from agentcluster.transport.interface import Entry, KeyValue

__all__ = ["LEADER_DEPOSED", "LEADER_ELECTED", "Leadership", "leader_stamp"]

_log = logging.getLogger("agentcluster.cluster.leadership")

LEADER_ELECTED = ("agentcluster", "cluster", "leader", "elected")
LEADER_DEPOSED = ("agentcluster", "cluster", "leader", "deposed")


def leader_stamp(value: bytes) -> WriteStamp | None:
    return LeaderRecord.from_bytes(value).stamp


class Leadership:
    """One node's view of the leader, and its campaigns; see the module docstring."""

    def __init__(
        self,
        kv: KeyValue,
        membership: Membership,
        *,
        node_id: str,
        renewer: LeaseRenewer | None,
        on_elected: Callable[[int], None] | None = None,
        on_deposed: Callable[[], None] | None = None,
        telemetry: Telemetry | None = None,
        write_attempts: int = 2,
        write_timeout: float = 0.2,
        poll: float = 0.5,
    ) -> None:
        self._kv = kv
        self._membership = membership
        self.node_id = node_id
        self._renewer = renewer
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._telemetry = default_telemetry if telemetry is None else telemetry
        self._attempts = write_attempts
        self._timeout = write_timeout if renewer is None else renewer.timing.renewal_timeout
        self._poll = poll
        self._record: LeaderRecord | None = None
        self._revision: int | None = None
        self._leading_term: int | None = None
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._removers: list[Callable[[], None]] = []
        self.campaigns = 0
        """Compare-and-sets this node attempted on the key."""
        self.elections_won = 0
        self._watch = BucketWatch(
            kv,
            on_reset=self._reset,
            on_entry=self._entry,
            poll=poll,
            name=f"leader-watch[{node_id}]",
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self._watch.start()
        self._removers = [self._membership.add_listener(self._membership_changed)]
        if self._renewer is not None:
            self._removers.append(self._renewer.add_listener(self._dirty.set))
        self._task = asyncio.create_task(self._run(), name=f"leadership[{self.node_id}]")

    async def stop(self) -> None:
        for remove in self._removers:
            remove()
        self._removers = []
        task, self._task = self._task, None
        await stop_task(task)
        await self._watch.stop()

    # --- reading ------------------------------------------------------------------------

    @property
    def record(self) -> LeaderRecord | None:
        return self._record

    def leader(self) -> tuple[str, int] | None:
        """``(node id, term)`` of the current leader key, or None when there is none."""
        record = self._record
        return None if record is None else (record.node, record.term)

    @property
    def is_leader(self) -> bool:
        record, renewer = self._record, self._renewer
        return (
            renewer is not None
            and renewer.superseded is None
            and record is not None
            and record.node == self.node_id
            and record.incarnation == renewer.incarnation
        )

    # --- following the key --------------------------------------------------------------

    def _reset(self, entries: list[Entry]) -> None:
        current = [e for e in entries if e.key == LEADER_KEY]
        if current:
            self._entry(current[-1])
        elif self._record is not None:
            self._record, self._revision = None, None
            self._dirty.set()

    def _entry(self, entry: Entry) -> None:
        if entry.key != LEADER_KEY:
            return
        if self._revision is not None and entry.revision <= self._revision:
            return
        self._revision = entry.revision
        if entry.deleted:
            self._record = None
        else:
            try:
                self._record = LeaderRecord.from_bytes(entry.value)
            except CorruptRecord as exc:
                _log.error("unreadable leader record at revision %d: %s", entry.revision, exc)
                self._record = None
        self._update_role()
        self._dirty.set()

    def _membership_changed(self, node: str, record: NodeRecord | None, revision: int) -> None:
        holder = self._record
        if holder is None or holder.node == node or node == self.node_id:
            self._dirty.set()

    # --- deciding -----------------------------------------------------------------------

    def _update_role(self) -> None:
        leading = self.is_leader
        if leading and self._leading_term != (term := self._term()):
            self._leading_term = term
            self.elections_won += 1
            self._telemetry.emit(
                LEADER_ELECTED, {"term": term}, {"node_id": self.node_id, "term": term}
            )
            self._call(self._on_elected, term)
        elif not leading and self._leading_term is not None:
            term = self._leading_term
            self._leading_term = None
            self._telemetry.emit(
                LEADER_DEPOSED, {"term": term}, {"node_id": self.node_id, "term": term}
            )
            self._call(self._on_deposed)

    def _term(self) -> int:
        return 0 if self._record is None else self._record.term

    async def _run(self) -> None:
        while True:
            self._dirty.clear()
            self._update_role()
            try:
                await self._evaluate()
            except ConnectionClosed:
                _log.warning("%s: connection closed; leadership stops", self.node_id)
                return
            except Exception:
                _log.exception("%s: leadership evaluation failed", self.node_id)
            try:
                async with asyncio.timeout(self._poll):
                    await self._dirty.wait()
            except TimeoutError:
                pass

    async def _evaluate(self) -> None:
        renewer = self._renewer
        if renewer is None or not self._watch.complete or not self._membership.complete:
            return
        if not renewer.valid():
            return
        members = {node: m.record for node, m in self._membership.records.items()}
        action = leader_action(self._record, self.node_id, renewer.incarnation, members)
        if action is LeaderAction.CAMPAIGN:
            await self._campaign(renewer)

    async def _campaign(self, renewer: LeaseRenewer) -> None:
        record, revision = self._record, self._revision
        stamp = renewer.stamps.next()
        if record is None:
            new = LeaderRecord(self.node_id, renewer.incarnation, 1, stamp)
        else:
            new = record.successor(self.node_id, renewer.incarnation, stamp)
        self.campaigns += 1
        try:
            written = await stamped_update(
                self._kv,
                LEADER_KEY,
                new.to_bytes(),
                stamp,
                revision,
                stamp_of=leader_stamp,
                timeout=self._timeout,
                attempts=self._attempts,
            )
        except (KeyExists, RevisionMismatch):
            return
        except (RequestTimeout, NoResponders) as exc:
            _log.info("%s: campaign for term %d still open: %s", self.node_id, new.term, exc)
            return
        self._entry(Entry(self._kv.bucket, LEADER_KEY, new.to_bytes(), written))

    def _call(self, hook: Callable[..., None] | None, *args: object) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            _log.exception("%s: leadership hook %r failed", self.node_id, hook)
