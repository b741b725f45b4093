"""The observer side of the death rule: declare a peer dead by one compare-and-set.

Every revision of every peer's record that the membership cache applies goes into
``core.lease.DeathWatch`` (peers whose record says ``dead`` or ``left``, or that vanished,
are forgotten; the node does not watch itself). The watch is built on the node's own
``OwnLease`` (the lease renewer's), so a window runs only while our own lease is valid. A
task sleeps until ``DeathWatch.next_deadline``, takes ``due`` and, for each candidate still
at the revision the window expects, writes ``record.declared_dead(stamp)`` by
compare-and-set at that revision, stamped with this node's incarnation. A lost
compare-and-set is the normal outcome for all observers but one: the revision moved, and
the new one (the winner's ``dead``, or the peer's own renewal) arrives through the watch.

The winner emits ``("agentcluster", "cluster", "node_declared_dead")``. Everything else —
``on_node_down``, failover — follows from the record, as every node sees it in its watch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from agentcluster.cluster.buckets import node_key, stamped_update, stop_task
from agentcluster.cluster.lease_renewer import LeaseRenewer
from agentcluster.cluster.membership import Membership, node_stamp
from agentcluster.core.lease import DeathCandidate, DeathWatch
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.errors import (
    ConnectionClosed,
    KeyExists,
    NoResponders,
    RequestTimeout,
    RevisionMismatch,
)
from agentcluster.telemetry.events import Telemetry
from agentcluster.telemetry.events import telemetry as default_telemetry
from agentcluster.transport.interface import KeyValue

__all__ = ["NODE_DECLARED_DEAD", "PeerDeathWatch"]

_log = logging.getLogger("agentcluster.cluster.death_watch")

NODE_DECLARED_DEAD = ("agentcluster", "cluster", "node_declared_dead")

_MIN_WAIT = 1e-6
_KEEP_DECLARED = 256


class PeerDeathWatch:
    """Declares peers dead for one node; see the module docstring.

    ``kv`` is the ``nodes`` bucket on the node's lease connection. ``poll`` bounds each
    sleep while nothing is due (a new observation or a lease change wakes it earlier).
    """

    def __init__(
        self,
        kv: KeyValue,
        membership: Membership,
        renewer: LeaseRenewer,
        *,
        telemetry: Telemetry | None = None,
        write_attempts: int = 2,
        poll: float = 1.0,
    ) -> None:
        self._kv = kv
        self._membership = membership
        self._renewer = renewer
        self._telemetry = default_telemetry if telemetry is None else telemetry
        self._attempts = write_attempts
        self._poll = poll
        self.watch = DeathWatch(renewer.lease)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._removers: list[Callable[[], None]] = []
        self.declared: deque[tuple[str, int]] = deque(maxlen=_KEEP_DECLARED)
        """``(peer, revision)`` of the latest ``alive -> dead`` this node won, oldest first."""
        self.lost = 0
        """Compare-and-sets that lost (another observer won, or the peer renewed)."""

    async def start(self) -> None:
        for node, member in sorted(self._membership.records.items()):
            self._observe(node, member.record, member.revision)
        self._removers = [
            self._membership.add_listener(self._observe),
            self._renewer.add_listener(self._wake.set),
        ]
        self._task = asyncio.create_task(self._run(), name=f"death-watch[{self._renewer.node_id}]")

    async def stop(self) -> None:
        for remove in self._removers:
            remove()
        self._removers = []
        task, self._task = self._task, None
        await stop_task(task)

    def _observe(self, node: str, record: NodeRecord | None, revision: int) -> None:
        if node == self._renewer.node_id:
            return
        if record is None or record.status is not NodeStatus.ALIVE:
            self.watch.forget(node)
        else:
            self.watch.observe(node, revision, self._renewer.now())
        self._wake.set()

    async def _run(self) -> None:
        while self._renewer.superseded is None:
            self._wake.clear()
            for candidate in self.watch.due(self._renewer.now()):
                try:
                    await self._declare(candidate)
                except ConnectionClosed:
                    _log.warning("%s: connection closed; death watch stops", self._renewer.node_id)
                    return
                except Exception:
                    _log.exception("declaring %r dead failed", candidate.peer)
            now = self._renewer.now()
            deadline = self.watch.next_deadline(now)
            wait = self._poll if deadline is None else min(self._poll, deadline - now)
            try:
                async with asyncio.timeout(max(wait, _MIN_WAIT)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _declare(self, candidate: DeathCandidate) -> None:
        member = self._membership.member(candidate.peer)
        if (
            member is None
            or member.revision != candidate.revision
            or member.record.status is not NodeStatus.ALIVE
            or not self._renewer.valid()
        ):
            return
        still_for = self.watch.still_for(candidate.peer, self._renewer.now()) or 0.0
        stamp = self._renewer.stamps.next()
        dead = member.record.declared_dead(stamp)
        try:
            revision = await stamped_update(
                self._kv,
                node_key(candidate.peer),
                dead.to_bytes(),
                stamp,
                candidate.revision,
                stamp_of=node_stamp,
                timeout=self._renewer.timing.renewal_timeout,
                attempts=self._attempts,
            )
        except (RevisionMismatch, KeyExists):
            self.lost += 1
            return
        except (RequestTimeout, NoResponders) as exc:
            _log.info("declaring %r dead is still open: %s", candidate.peer, exc)
            return
        self.watch.declared(candidate.peer)
        self.declared.append((candidate.peer, candidate.revision))
        self._telemetry.emit(
            NODE_DECLARED_DEAD,
            {"still_for": still_for, "revision": revision},
            {
                "node_id": candidate.peer,
                "incarnation": member.record.incarnation,
                "observer": self._renewer.node_id,
                "observer_incarnation": self._renewer.incarnation,
            },
        )
