"""Seeded fault injection: the failures of a real NATS deployment, on demand, reproducibly.

Every fault mirrors a behaviour measured on nats-server (DESIGN.md, "Substrate facts"),
and every random choice comes from one ``random.Random`` seeded with a string, drawn only
for the messages a rule covers — so the same seed and the same traffic give the same
outcome on every run.

Core messages (publish, subscribe, request replies):

- ``partition(names)`` cuts the named connections off into a group of their own; each
  call makes one more group, and a name given again moves to the newest group. Connections
  named in no call form the remaining group. Messages cross no group boundary, in either
  direction; a queue group hands a message to a member on the sender's side only. Interest
  is still known across the cut (as in a NATS cluster that lost a route), so a request
  whose only responders are on the other side times out with ``RequestTimeout`` rather
  than failing with ``NoResponders``. Partitions go by name: a connection opened later
  under a partitioned name is on that side too.
- ``drop`` and ``delay`` add rules for the subjects a pattern covers. A message is lost
  when any drop rule covering it fires; it is delayed by the largest delay among the
  delay rules that fire (``seconds`` plus a uniform draw from ``[0, jitter]``). Delays
  keep each sender's order (a per-connection ``DelayLine``), like a slow TCP link.
- ``kill(name)`` closes the connections of that name abruptly: listeners see
  ``DISCONNECTED`` then ``CLOSED``, subscriptions stop, watchers raise
  ``ConnectionClosed``, waiting calls fail with ``ConnectionClosed``.

The store (key-value, stream publish and purge, objects):

- ``leader_election(duration, reads="stall")``: every write fails fast with
  ``NoResponders`` for ``duration`` seconds of loop time. Reads (key-value ``get`` and
  ``keys``, stream ``next_message`` and ``state``, object ``get`` and ``info``) wait for the
  election to end and time out with ``RequestTimeout`` if theirs comes first — what
  nats-server 2.9 does, where no replica answers reads while the stream has no leader;
  ``reads="answer"`` lets them answer at once. Consumer fetches and acks still work.
- ``ambiguous_writes(count, apply_after)``: the next ``count`` writes raise
  ``RequestTimeout`` after their whole timeout, yet are applied ``apply_after`` seconds
  after they were issued. A write that is invalid when applied (a ``create`` on a key
  that exists by then) is dropped and recorded.
- ``cut_off(names)``: those connections sit on a minority side. Their reads answer from a
  snapshot taken at the cut (stale); their writes wait their whole timeout and raise
  ``RequestTimeout``, unapplied; their fetches return nothing after their timeout and
  their acks are lost (so the work is redelivered after ``ack_wait``); their watchers get
  nothing new. ``reconnect_store(names)`` ends it: each watcher then catches up with the
  latest entry of every key it missed, in revision order (what a NATS watcher sees of a
  history-1 bucket). Creating, binding and deleting buckets, streams and object stores is
  not affected.
- ``delay_watch(seconds)``: watch deliveries arrive ``seconds`` later, in order;
  ``delay_watch(0)`` ends it (what is under way still arrives in order).

``heal()`` ends every fault at once. ``dropped``, ``lost`` and ``delayed`` count what the
message faults did; ``records`` keeps the most recent fault events.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentcluster.errors import ConfigurationError, TransportError
from agentcluster.transport import names

if TYPE_CHECKING:
    from agentcluster.transport.memory.hub import MemoryTransport
    from agentcluster.transport.memory.store import Store

__all__ = ["FaultRecord", "Faults"]

_RECORDS = 1000


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One fault event: ``at`` is loop time (NaN outside a loop), ``kind`` the fault,
    ``detail`` its arguments."""

    at: float
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class _DropRule:
    subject: str
    probability: float


@dataclass(frozen=True, slots=True)
class _DelayRule:
    subject: str
    seconds: float
    probability: float
    jitter: float


def _probability(value: float) -> float:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ConfigurationError(f"probability must be within [0, 1], not {value!r}")
    return float(value)


def _seconds(what: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigurationError(f"{what} must be a finite number >= 0, not {value!r}")
    return float(value)


def _now() -> float:
    return asyncio.get_running_loop().time()


class Faults:
    """The fault switchboard of one ``MemoryTransport`` (its ``faults`` attribute)."""

    __slots__ = (
        "_ambiguous",
        "_cut",
        "_delays",
        "_drops",
        "_groups",
        "_hub",
        "_leader_until",
        "_next_group",
        "_reads_stall",
        "_records",
        "_rng",
        "delayed",
        "dropped",
        "lost",
        "msg_active",
        "store_active",
        "watch_delay",
    )

    def __init__(self, hub: MemoryTransport, seed: str) -> None:
        self._hub = hub
        self._rng = random.Random(seed)
        self._groups: dict[str, int] = {}
        self._next_group = 1
        self._drops: list[_DropRule] = []
        self._delays: list[_DelayRule] = []
        self._leader_until = -math.inf
        self._reads_stall = True
        self._ambiguous: deque[list[float]] = deque()
        self._cut: dict[str, Store] = {}
        self._records: deque[FaultRecord] = deque(maxlen=_RECORDS)
        self.msg_active = False
        """True while any partition, drop or delay rule is in force (the publish fast path)."""
        self.store_active = False
        """True while any store fault may be in force (the store fast path)."""
        self.watch_delay = 0.0
        self.dropped = 0
        """Core messages lost to drop rules (and to a full delay line)."""
        self.lost = 0
        """Deliveries lost because the receiver was across a partition."""
        self.delayed = 0
        """Core messages a delay rule held back."""

    # --- bookkeeping --------------------------------------------------------------

    @property
    def records(self) -> list[FaultRecord]:
        """The most recent fault events (up to 1000), oldest first."""
        return list(self._records)

    def record(self, kind: str, detail: str) -> None:
        try:
            at = _now()
        except RuntimeError:
            at = math.nan
        self._records.append(FaultRecord(at, kind, detail))

    def _update(self) -> None:
        self.msg_active = bool(self._groups or self._drops or self._delays)
        self.store_active = bool(self._cut or self._ambiguous or self._leader_until > -math.inf)

    # --- core messages ------------------------------------------------------------

    def partition(self, names_: Iterable[str]) -> None:
        """Cut the named connections off into one new group (see the module docstring)."""
        group_names = sorted(set(names_))
        group = self._next_group
        self._next_group += 1
        for name in group_names:
            self._groups[name] = group
        self._update()
        self.record("partition", ",".join(group_names))

    def reachable(self, a: str, b: str) -> bool:
        groups = self._groups
        return groups.get(a, 0) == groups.get(b, 0)

    def drop(self, probability: float, subject: str = ">") -> None:
        """Lose core messages on subjects ``subject`` covers, each with ``probability``."""
        names.validate_subject(subject, wildcards=True)
        self._drops.append(_DropRule(subject, _probability(probability)))
        self._update()
        self.record("drop", f"{subject} p={probability}")

    def delay(
        self, seconds: float, probability: float = 1.0, subject: str = ">", jitter: float = 0.0
    ) -> None:
        """Hold back core messages on ``subject`` by ``seconds`` (+ up to ``jitter``)."""
        names.validate_subject(subject, wildcards=True)
        rule = _DelayRule(
            subject,
            _seconds("seconds", seconds),
            _probability(probability),
            _seconds("jitter", jitter),
        )
        self._delays.append(rule)
        self._update()
        self.record("delay", f"{subject} {seconds}s p={probability} jitter={jitter}")

    def clear_message_faults(self) -> None:
        """Remove every drop and delay rule (partitions stay; ``heal`` ends those)."""
        self._drops.clear()
        self._delays.clear()
        self._update()
        self.record("clear_message_faults", "")

    def should_drop(self, subject: str) -> bool:
        rng = self._rng
        for rule in self._drops:
            if names.subject_matches(rule.subject, subject) and rng.random() < rule.probability:
                return True
        return False

    def delay_for(self, subject: str) -> float:
        rng = self._rng
        longest = 0.0
        for rule in self._delays:
            if names.subject_matches(rule.subject, subject) and rng.random() < rule.probability:
                longest = max(longest, rule.seconds + rule.jitter * rng.random())
        return longest

    def kill(self, name: str) -> int:
        """Close every open connection called ``name`` abruptly; returns how many."""
        victims = self._hub.connections_named(name)
        for conn in victims:
            conn.abort()
        self.record("kill", f"{name} ({len(victims)})")
        return len(victims)

    # --- the store ----------------------------------------------------------------

    def leader_election(self, duration: float, *, reads: str = "stall") -> None:
        """For ``duration`` seconds every store write fails fast with ``NoResponders``;
        reads stall until it ends (``reads="stall"``) or answer (``reads="answer"``)."""
        if reads not in ("stall", "answer"):
            raise ConfigurationError(f"reads must be 'stall' or 'answer', not {reads!r}")
        until = _now() + _seconds("duration", duration)
        self._leader_until = max(self._leader_until, until)
        self._reads_stall = reads == "stall"
        self._update()
        self.record("leader_election", f"{duration}s")

    def leader_electing(self) -> bool:
        if self._leader_until == -math.inf:
            return False
        if _now() < self._leader_until:
            return True
        self._leader_until = -math.inf
        self._update()
        return False

    def read_stall_remaining(self) -> float:
        """Seconds a read must still wait for the election to end (0 when it need not)."""
        if not self._reads_stall or not self.leader_electing():
            return 0.0
        return self._leader_until - _now()

    def ambiguous_writes(self, count: int = 1, apply_after: float = 0.0) -> None:
        """The next ``count`` store writes time out, yet land ``apply_after`` s later."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigurationError(f"count must be an int >= 1, not {count!r}")
        self._ambiguous.append([float(count), _seconds("apply_after", apply_after)])
        self._update()
        self.record("ambiguous_writes", f"{count} apply_after={apply_after}s")

    def take_ambiguous(self) -> float | None:
        """Consume one ambiguous write: its ``apply_after``, or ``None`` if none is due."""
        if not self._ambiguous:
            return None
        head = self._ambiguous[0]
        head[0] -= 1
        if head[0] <= 0:
            self._ambiguous.popleft()
            self._update()
        return head[1]

    def apply_later(self, apply: Callable[[], object], delay: float, what: str) -> None:
        """Apply an ambiguous write now or after ``delay``; a refusal then is only recorded."""

        def run() -> None:
            try:
                apply()
            except TransportError as exc:
                self.record("ambiguous_refused", f"{what}: {exc}")
            else:
                self.record("ambiguous_applied", what)

        if delay <= 0:
            run()
        else:
            asyncio.get_running_loop().call_later(delay, run)

    def cut_off(self, names_: Iterable[str]) -> None:
        """Put the named connections on a minority side of the store (module docstring)."""
        snapshot = self._hub.store.snapshot()
        cut = sorted(set(names_))
        for name in cut:
            self._cut.setdefault(name, snapshot)
        self._update()
        self.record("cut_off", ",".join(cut))

    def reconnect_store(self, names_: Iterable[str]) -> None:
        """End the cut-off of the named connections; their watchers catch up."""
        released = {name for name in names_ if self._cut.pop(name, None) is not None}
        self._update()
        if released:
            self._hub.catch_up_watchers(released)
        self.record("reconnect_store", ",".join(sorted(released)))

    def is_cut(self, name: str) -> bool:
        return bool(self._cut) and name in self._cut

    def view_for(self, name: str) -> Store | None:
        """The stale snapshot a cut-off connection reads, or ``None`` for the live store."""
        if not self._cut:
            return None
        return self._cut.get(name)

    def delay_watch(self, seconds: float) -> None:
        """Deliver watch updates ``seconds`` late, in order; ``0`` ends it."""
        self.watch_delay = _seconds("seconds", seconds)
        self.record("delay_watch", f"{seconds}s")

    # --- everything ---------------------------------------------------------------

    def heal(self) -> None:
        """End every fault: partitions, message rules, store faults and watch delay."""
        self._groups.clear()
        self._drops.clear()
        self._delays.clear()
        self._leader_until = -math.inf
        self._ambiguous.clear()
        self.watch_delay = 0.0
        released = set(self._cut)
        self._cut.clear()
        self._update()
        if released:
            self._hub.catch_up_watchers(released)
        self.record("heal", "")
