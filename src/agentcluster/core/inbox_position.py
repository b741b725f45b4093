"""A durable agent's inbox position: what of its inbox subject is done, as one snapshot value.

A durable agent's inbox is its subject of the shared ``INBOX`` stream, and its snapshot is
the acknowledgement: the position recorded in the last committed snapshot says which
stream sequences need never run again. It holds three things:

- ``floor``: every sequence ``<= floor`` is done — applied, dead-lettered, or known absent
  from the subject (stream sequences are stream-wide, so a subject's are sparse);
- ``applied``: sequences above the floor that are done. Order is not strict after a
  restart (signals merged in during a replay may finish before older ones), so the floor
  cannot simply be "the last one applied". Marking a sequence applied compacts: the floor
  moves over every contiguous done sequence and they leave the set;
- ``attempts``: how many times a sequence not yet done has been started during a replay.
  A restore commits the attempt (in a snapshot) *before* running the signal, so a signal
  that kills its process still counts; once a sequence has used ``max_attempts`` the next
  replay dead-letters it instead of running it, and it is then marked applied like any
  other finished sequence. Attempts of done sequences are dropped.

A restore walks the subject from ``purge_below()`` and feeds the sequences it found to
``replay_plan``, which decides ``Skip`` / ``Run`` / ``DeadLetter`` for each, in order. Each
``Run``'s attempt is committed on its own, just before it runs (``started``): the plan's
position already holds the first one's, and the shell commits ``started(run)`` before each
later one. Counting every run's attempt up front in one commit would be cheaper but wrong:
a signal that kills the process would charge an attempt to every signal queued behind it,
and after ``max_attempts`` crashes those innocent signals would be dead-lettered with it.
After any snapshot commits, the shell may purge the subject below ``purge_below()``.

The applied set is bounded: when more than ``max_gap`` sequences wait above the floor,
one early sequence is stuck (never finished, or never found absent), and the snapshot
would grow without limit. ``mark_applied`` then raises ``InboxGapTooLarge`` — chosen over
a flag so a shell cannot keep growing the value by ignoring it — and leaves nothing
changed; the shell settles the stuck sequence (``first_pending``: dead-letter it and mark it
applied, or advance the floor over it), which always succeeds since it compacts.

The value is immutable and canonical (always compacted), so equal positions compare equal
and ``from_json(to_json())`` round-trips exactly. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agentcluster.errors import CorruptRecord

__all__ = [
    "MAX_GAP",
    "DeadLetter",
    "InboxGapTooLarge",
    "InboxPosition",
    "ReplayDecision",
    "ReplayPlan",
    "Run",
    "Skip",
    "replay_plan",
]

MAX_GAP = 10_000
"""Done sequences that may wait above the floor before the position refuses more."""

_KIND = "inbox position"


class InboxGapTooLarge(ValueError):
    """Raised by ``InboxPosition.mark_applied`` when more than ``max_gap`` done sequences
    would wait above the floor: ``first_pending`` (``floor + 1``) is stuck. A local error of
    this pure module; the shell settles ``first_pending`` and carries on."""

    def __init__(self, floor: int, waiting: int, max_gap: int) -> None:
        super().__init__(
            f"{waiting} applied sequences wait above floor {floor} (limit {max_gap}); "
            f"sequence {floor + 1} is stuck"
        )
        self.floor = floor
        self.first_pending = floor + 1
        self.waiting = waiting
        self.max_gap = max_gap


@dataclass(frozen=True, slots=True)
class Skip:
    """Already done: do not run."""

    seq: int


@dataclass(frozen=True, slots=True)
class Run:
    """Run it; ``attempt`` is this run's number (1 for the first), committed before it runs."""

    seq: int
    attempt: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """It was started ``attempts`` times without finishing: dead-letter it, then mark it
    applied."""

    seq: int
    attempts: int


ReplayDecision = Run | Skip | DeadLetter


def _check_seq(seq: int) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"stream sequences are integers >= 1, not {seq!r}")


def _check_max_attempts(max_attempts: int) -> None:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an integer >= 1, not {max_attempts!r}")


@dataclass(frozen=True, slots=True)
class InboxPosition:
    """How far a durable agent's inbox subject is done; see the module docstring.

    Built values are normalised: the floor is moved over contiguous applied sequences,
    applied sequences at or below the floor are dropped, and so are attempts of done
    sequences. Invalid values (negative floor, sequences < 1, counts < 1) raise
    ``ValueError``.
    """

    floor: int = 0
    applied: frozenset[int] = field(default_factory=frozenset)
    attempts: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        floor = self.floor
        if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
            raise ValueError(f"floor must be an integer >= 0, not {floor!r}")
        applied: set[int] = set()
        for seq in self.applied:
            _check_seq(seq)
            if seq > floor:
                applied.add(seq)
        while floor + 1 in applied:
            floor += 1
            applied.discard(floor)
        attempts: dict[int, int] = {}
        for seq, count in sorted(self.attempts.items()):
            _check_seq(seq)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"attempt counts are integers >= 1, not {count!r} for {seq}")
            if seq > floor and seq not in applied:
                attempts[seq] = count
        object.__setattr__(self, "floor", floor)
        object.__setattr__(self, "applied", frozenset(applied))
        object.__setattr__(self, "attempts", MappingProxyType(attempts))

    def is_applied(self, seq: int) -> bool:
        """Whether ``seq`` is done (applied, dead-lettered or skipped as absent)."""
        return seq <= self.floor or seq in self.applied

    def attempt(self, seq: int) -> InboxPosition:
        """Count one more attempt of ``seq``, to be committed before it runs in a replay.

        A done sequence is not counted (it will not run); the position is returned as is.
        """
        _check_seq(seq)
        if self.is_applied(seq):
            return self
        attempts = dict(self.attempts)
        attempts[seq] = attempts.get(seq, 0) + 1
        return InboxPosition(self.floor, self.applied, attempts)

    def started(self, run: Run) -> InboxPosition:
        """Record that ``run`` is starting: its attempt count becomes ``run.attempt``. Commit
        the result before running it. Idempotent, so recording the run ``replay_plan``
        already recorded returns the position unchanged."""
        _check_seq(run.seq)
        if self.is_applied(run.seq) or self.attempts.get(run.seq, 0) >= run.attempt:
            return self
        attempts = dict(self.attempts)
        attempts[run.seq] = run.attempt
        return InboxPosition(self.floor, self.applied, attempts)

    def replay_decision(self, seq: int, max_attempts: int) -> ReplayDecision:
        """What a replay does with ``seq``: skip it when done, dead-letter it when it has
        already been started ``max_attempts`` times, else run it."""
        _check_seq(seq)
        _check_max_attempts(max_attempts)
        if self.is_applied(seq):
            return Skip(seq)
        made = self.attempts.get(seq, 0)
        if made >= max_attempts:
            return DeadLetter(seq, made)
        return Run(seq, made + 1)

    def mark_applied(self, seq: int, *, max_gap: int = MAX_GAP) -> InboxPosition:
        """Record ``seq`` as done (applied, or dead-lettered) and compact.

        Marking a done sequence again returns the position unchanged. Raises
        ``InboxGapTooLarge``, changing nothing, when more than ``max_gap`` sequences would
        then wait above the floor.
        """
        _check_seq(seq)
        if self.is_applied(seq):
            return self
        marked = InboxPosition(self.floor, self.applied | {seq}, self.attempts)
        if len(marked.applied) > max_gap:
            raise InboxGapTooLarge(marked.floor, len(marked.applied), max_gap)
        return marked

    def advance_floor_to(self, seq: int) -> InboxPosition:
        """Record every sequence ``<= seq`` as done: a walk of the subject found nothing
        there left to run (absent, purged, or done). Never moves the floor back."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"a floor is an integer >= 0, not {seq!r}")
        if seq <= self.floor:
            return self
        return InboxPosition(seq, self.applied, self.attempts)

    def purge_below(self) -> int:
        """The sequence below which the subject may be purged once this position's snapshot
        has committed (the first sequence not known done)."""
        return self.floor + 1

    def to_json(self) -> dict[str, Any]:
        """Compact form: applied as a sorted list, attempts as sorted ``[seq, count]`` pairs."""
        return {
            "floor": self.floor,
            "applied": sorted(self.applied),
            "attempts": [[seq, count] for seq, count in sorted(self.attempts.items())],
        }

    @classmethod
    def from_json(cls, raw: Any) -> InboxPosition:
        """Read ``to_json``'s form; anything else is a ``CorruptRecord``."""
        if not isinstance(raw, dict):
            raise CorruptRecord(_KIND, f"expected an object, got {raw!r}")
        if "floor" not in raw:
            raise CorruptRecord(_KIND, "field 'floor' is missing")
        floor = raw["floor"]
        if not _is_int(floor) or floor < 0:
            raise CorruptRecord(_KIND, f"field 'floor' should be an integer >= 0, not {floor!r}")
        listed = raw.get("applied", [])
        if not isinstance(listed, list) or not all(_is_int(s) and s >= 1 for s in listed):
            raise CorruptRecord(
                _KIND, f"field 'applied' should be a list of sequences >= 1, not {listed!r}"
            )
        pairs = raw.get("attempts", [])
        if not isinstance(pairs, list):
            raise CorruptRecord(_KIND, f"field 'attempts' should be a list, not {pairs!r}")
        attempts: dict[int, int] = {}
        for pair in pairs:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not _is_int(pair[0])
                or not _is_int(pair[1])
                or pair[0] < 1
                or pair[1] < 1
            ):
                raise CorruptRecord(
                    _KIND, f"an attempt should be [sequence >= 1, count >= 1], not {pair!r}"
                )
            if pair[0] in attempts:
                raise CorruptRecord(_KIND, f"sequence {pair[0]} has two attempt counts")
            attempts[pair[0]] = pair[1]
        return cls(floor, frozenset(listed), attempts)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What a restore does: one decision per sequence found, in order, and the position to
    commit before running any of them (holding the first ``Run``'s attempt)."""

    decisions: tuple[ReplayDecision, ...]
    position: InboxPosition


def replay_plan(
    position: InboxPosition, sequences_found: Iterable[int], max_attempts: int
) -> ReplayPlan:
    """Plan a replay of the sequences a walk of the subject found (strictly ascending,
    gaps allowed; the walk starts at ``purge_below()``).

    The returned position holds the first ``Run``'s attempt; the shell commits it before
    running anything, and commits ``started(run)`` before each later ``Run`` (a crash then
    charges only the signal that was running). The walk saw every sequence of the subject up
    to the last one found, so the floor also moves over the absent and done ones before the
    first sequence still to run or dead-letter (or over all of them when none is).
    ``DeadLetter`` sequences keep their count until the shell marks them applied.
    """
    _check_max_attempts(max_attempts)
    decisions: list[ReplayDecision] = []
    first_open: int | None = None
    first_run: Run | None = None
    previous = 0
    for seq in sequences_found:
        _check_seq(seq)
        if seq <= previous:
            raise ValueError(f"sequences found must be strictly ascending: {seq} after {previous}")
        previous = seq
        decision = position.replay_decision(seq, max_attempts)
        decisions.append(decision)
        if isinstance(decision, Skip):
            continue
        if first_open is None:
            first_open = seq
        if first_run is None and isinstance(decision, Run):
            first_run = decision
    if first_run is not None:
        position = position.started(first_run)
    position = position.advance_floor_to(previous if first_open is None else first_open - 1)
    return ReplayPlan(tuple(decisions), position)
