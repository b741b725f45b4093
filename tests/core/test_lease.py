import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agentcluster.core.lease import (
    DeathCandidate,
    DeathWatch,
    LeaseTiming,
    NodeStatus,
    OwnLease,
    ResumeDecision,
    next_incarnation,
    resume_decision,
)
from agentcluster.errors import AgentError, ConfigurationError, NodeSuperseded

TIMING = LeaseTiming()
F, M, R = TIMING.fencing_timeout, TIMING.margin, TIMING.renew_interval

# --- timing -------------------------------------------------------------------------


def test_default_timing() -> None:
    assert (R, F, M) == (0.2, 0.7, 0.3)
    assert TIMING.death_after == pytest.approx(1.0)
    assert TIMING.renewal_timeout == 0.2


@pytest.mark.parametrize(
    ("r", "f", "m"), [(0.25, 0.8, 0.2), (0.1, 0.5, 0.2), (1.0, 2.3, 5.0), (2, 7, 3)]
)
def test_timing_at_and_above_the_bounds_is_accepted(r: float, f: float, m: float) -> None:
    assert LeaseTiming(r, f, m).death_after == pytest.approx(f + m)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"margin": 0.19}, "margin"),
        ({"margin": 0}, "margin"),
        ({"margin": -1}, "margin"),
        ({"fencing_timeout": 0.69}, "fencing_timeout"),
        ({"renew_interval": 0.25}, "fencing_timeout"),
        ({"fencing_timeout": 0}, "fencing_timeout"),
        ({"fencing_timeout": math.inf}, "fencing_timeout"),
        ({"renew_interval": 0}, "renew_interval"),
        ({"renew_interval": -0.2}, "renew_interval"),
        ({"renew_interval": math.nan}, "renew_interval"),
        ({"renew_interval": "0.2"}, "renew_interval"),
        ({"margin": True}, "margin"),
    ],
)
def test_timing_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"LeaseTiming\.{field}\b"):
        LeaseTiming(**kwargs)  # type: ignore[arg-type]


# --- the own lease ------------------------------------------------------------------


def test_no_lease_before_the_first_acknowledgement() -> None:
    lease = OwnLease()
    assert lease.timing == TIMING
    assert not lease.valid(0.0)
    assert lease.should_pause(0.0)
    assert lease.valid_until == -math.inf
    assert lease.valid_since(0.0) is None
    assert lease.next_renewal_at is None
    assert lease.next_deadline(3.0) == 3.0
    token = lease.renewal_started(3.0)
    assert lease.should_pause(3.1)
    assert lease.next_renewal_at == pytest.approx(3.2)
    lease.renewal_succeeded(token, 3.1)
    assert lease.valid(3.1)
    assert lease.valid_since(3.1) == 3.1
    assert lease.lapses == 0


def test_lease_counts_from_the_send_time() -> None:
    lease = OwnLease()
    token = lease.renewal_started(10.0)
    lease.renewal_succeeded(token, 10.15)
    assert lease.valid_until == pytest.approx(10.7)
    assert lease.valid(10.699)
    assert not lease.valid(10.7)
    assert lease.should_pause(10.7)


def test_an_older_acknowledgement_does_not_move_the_lease_back() -> None:
    lease = OwnLease()
    old = lease.renewal_started(0.0)
    new = lease.renewal_started(0.2)
    lease.renewal_succeeded(new, 0.25)
    lease.renewal_succeeded(old, 0.3)
    assert lease.valid_until == pytest.approx(0.9)
    assert lease.valid(0.85)


def test_failures_do_not_shorten_the_lease() -> None:
    lease = OwnLease()
    lease.renewal_succeeded(lease.renewal_started(0.0), 0.01)
    lease.renewal_failed(lease.renewal_started(0.2))
    lease.renewal_failed(lease.renewal_started(0.4))
    assert lease.valid(0.69)
    assert lease.should_pause(0.7)


def test_an_acknowledgement_later_than_F_gives_no_lease() -> None:
    lease = OwnLease()
    token = lease.renewal_started(0.0)
    lease.renewal_succeeded(token, 0.8)
    assert not lease.valid(0.8)
    assert lease.valid_since(0.8) is None


def test_next_deadline_is_the_next_renewal_or_the_lapse() -> None:
    lease = OwnLease()
    lease.renewal_succeeded(lease.renewal_started(0.0), 0.05)
    assert lease.next_deadline(0.05) == pytest.approx(0.2)
    lease.renewal_started(0.2)
    lease.renewal_started(0.4)
    lease.renewal_started(0.6)
    assert lease.next_deadline(0.6) == pytest.approx(0.7)
    assert lease.next_deadline(0.7) == pytest.approx(0.8)


def test_lapse_and_recovery_are_counted() -> None:
    lease = OwnLease()
    lease.renewal_succeeded(lease.renewal_started(0.0), 0.01)
    lease.renewal_succeeded(lease.renewal_started(0.2), 0.21)
    assert lease.valid_since(0.5) == 0.01
    token = lease.renewal_started(2.0)
    assert lease.valid_since(2.0) is None
    lease.renewal_succeeded(token, 2.05)
    assert lease.lapses == 1
    assert lease.valid_since(2.05) == 2.05
    lease.renewal_succeeded(lease.renewal_started(2.2), 2.3)
    assert lease.lapses == 1
    assert lease.valid_since(2.3) == 2.05


def test_an_acknowledgement_at_the_very_instant_of_expiry_is_a_lapse() -> None:
    lease = OwnLease(LeaseTiming(2, 7, 3))
    lease.renewal_succeeded(lease.renewal_started(0.0), 1.0)
    token = lease.renewal_started(6.0)
    lease.renewal_succeeded(token, 7.0)
    assert lease.lapses == 1
    assert lease.valid_since(7.0) == 7.0


def test_tokens() -> None:
    lease = OwnLease()
    with pytest.raises(ValueError, match="never issued"):
        lease.renewal_succeeded(0, 0.0)
    first = lease.renewal_started(0.0)
    second = lease.renewal_started(0.2)
    assert second == first + 1
    assert lease.outstanding == 2
    with pytest.raises(ValueError, match="never issued"):
        lease.renewal_failed(second + 1)
    lease.renewal_failed(first)
    lease.renewal_succeeded(first, 0.21)
    assert not lease.valid(0.21)
    lease.renewal_succeeded(second, 0.25)
    lease.renewal_succeeded(second, 0.3)
    assert lease.valid_until == pytest.approx(0.9)
    kept = lease.renewal_started(0.3)
    lease.renewal_started(0.99)
    lease.renewal_succeeded(kept, 0.995)
    assert lease.valid_until == pytest.approx(1.0)
    stale = lease.renewal_started(1.0)
    lease.renewal_started(1.7)
    assert lease.outstanding == 1
    lease.renewal_succeeded(stale, 1.8)
    assert not lease.valid(1.8)


# --- resume decisions ----------------------------------------------------------------

ALIVE, DEAD, LEFT = NodeStatus.ALIVE, NodeStatus.DEAD, NodeStatus.LEFT
RESUME, SUPERSEDED, REJOIN = (
    ResumeDecision.RESUME,
    ResumeDecision.SUPERSEDED,
    ResumeDecision.REJOIN,
)


@pytest.mark.parametrize(
    ("status", "record", "own", "decision"),
    [
        (ALIVE, 4, 4, RESUME),
        (DEAD, 4, 4, REJOIN),
        (LEFT, 4, 4, REJOIN),
        (ALIVE, 5, 4, SUPERSEDED),
        (DEAD, 5, 4, SUPERSEDED),
        (LEFT, 9, 4, SUPERSEDED),
        (ALIVE, 3, 4, REJOIN),
        (DEAD, 3, 4, REJOIN),
        (LEFT, 0, 4, REJOIN),
        ("alive", 1, 1, RESUME),
    ],
)
def test_resume_decision_table(
    status: NodeStatus, record: int, own: int, decision: ResumeDecision
) -> None:
    assert resume_decision(status, record, own) is decision


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="zombie"):
        resume_decision("zombie", 1, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("own", "record", "new"), [(4, 4, 5), (4, 2, 5), (4, 7, 8)])
def test_next_incarnation(own: int, record: int, new: int) -> None:
    assert next_incarnation(own, record) == new


def test_node_superseded_error() -> None:
    error = NodeSuperseded("n1", own_incarnation=3, found_incarnation=4)
    assert isinstance(error, AgentError)
    assert (error.node_id, error.own_incarnation, error.found_incarnation) == ("n1", 3, 4)
    assert error.reason == "superseded"
    assert not error.retryable
    assert str(error) == "node 'n1' at incarnation 3 was superseded by incarnation 4 of the same id"


# --- a small world: nodes renewing against a store that may stall ---------------------

MS = 0.001


@dataclass
class Renewer:
    """A node's lease renewer: a renewal every r, acknowledged after ``ack`` when the store
    is up at send time, timing out after r otherwise; a successful renewal bumps the record."""

    lease: OwnLease
    ack: float = 0.01
    pending: list[tuple[float, int, bool]] = field(default_factory=list)

    def tick(self, now: float, store_up: bool, record: "Record | None" = None) -> None:
        for settle_at, token, ok in list(self.pending):
            if settle_at <= now + 1e-12:
                self.pending.remove((settle_at, token, ok))
                if ok:
                    self.lease.renewal_succeeded(token, now)
                    if record is not None:
                        record.bump(now)
                else:
                    self.lease.renewal_failed(token)
        due = self.lease.next_renewal_at
        if due is None or now >= due - 1e-12:
            token = self.lease.renewal_started(now)
            if store_up:
                self.pending.append((now + self.ack, token, True))
            else:
                self.pending.append((now + self.lease.renewal_timeout, token, False))


@dataclass
class Record:
    revision: int = 1
    changed_at: float = 0.0

    def bump(self, now: float) -> None:
        self.revision += 1
        self.changed_at = now


def run(
    until: float,
    *,
    store_up: Callable[[float], bool] = lambda t: True,
    peer_alive: Callable[[float], bool] = lambda t: True,
    watch_from: float = 0.0,
) -> dict[str, object]:
    """Observer O and peer X, 1 ms steps; returns when X was first due and its story."""
    observer, peer = OwnLease(), OwnLease()
    watch = DeathWatch(observer)
    o_renewer, x_renewer = Renewer(observer), Renewer(peer)
    record = Record()
    first_due: float | None = None
    candidate: DeathCandidate | None = None
    x_paused_at: float | None = None
    for step in range(round(until / MS) + 1):
        now = step * MS
        up = store_up(now)
        o_renewer.tick(now, up)
        if peer_alive(now):
            x_renewer.tick(now, up, record)
            if x_paused_at is None and peer.valid_until > -math.inf and peer.should_pause(now):
                x_paused_at = now
        if now >= watch_from - 1e-12:
            watch.observe("x", record.revision, now)
        due = watch.due(now)
        if due and first_due is None:
            first_due, candidate = now, due[0]
    return {
        "first_due": first_due,
        "candidate": candidate,
        "record": record,
        "x_paused_at": x_paused_at,
        "observer": observer,
    }


def test_a_killed_node_is_due_F_plus_m_after_its_last_revision_and_not_before() -> None:
    story = run(4.0, peer_alive=lambda t: t < 2.0)
    record = story["record"]
    assert isinstance(record, Record)
    assert 1.8 < record.changed_at < 2.0
    assert story["first_due"] == pytest.approx(record.changed_at + F + M, abs=1.5 * MS)
    assert story["candidate"] == DeathCandidate("x", record.revision)


def test_a_store_stall_for_everyone_kills_nobody() -> None:
    story = run(12.0, store_up=lambda t: not 2.0 <= t < 7.0)
    assert story["first_due"] is None
    observer = story["observer"]
    assert isinstance(observer, OwnLease)
    assert observer.lapses == 1


def test_a_store_stall_with_the_peer_gone_counts_from_the_end_of_the_stall() -> None:
    story = run(12.0, store_up=lambda t: not 2.0 <= t < 7.0, peer_alive=lambda t: t < 4.0)
    record = story["record"]
    assert isinstance(record, Record)
    assert record.changed_at < 2.0
    first_due = story["first_due"]
    assert isinstance(first_due, float)
    assert first_due == pytest.approx(7.0 + 0.01 + F + M, abs=1.5 * MS)


def test_an_observer_that_started_late_cannot_declare_early() -> None:
    story = run(8.0, peer_alive=lambda t: t < 1.0, watch_from=5.0)
    assert story["first_due"] == pytest.approx(5.0 + F + M, abs=1.5 * MS)


def test_a_cut_off_node_pauses_after_F_and_is_declared_only_after_F_plus_m() -> None:
    cut = 3.0
    observer, x = OwnLease(), OwnLease()
    watch = DeathWatch(observer)
    o_renewer, x_renewer = Renewer(observer), Renewer(x)
    record = Record()
    paused_at = due_at = None
    for step in range(round(6.0 / MS) + 1):
        now = step * MS
        o_renewer.tick(now, True)
        x_renewer.tick(now, now < cut, record)
        watch.observe("x", record.revision, now)
        if paused_at is None and now > 1 and x.should_pause(now):
            paused_at = now
        if due_at is None and watch.due(now):
            due_at = now
    assert paused_at is not None
    assert due_at is not None
    last_acked_send = record.changed_at - 0.01
    assert paused_at == pytest.approx(last_acked_send + F, abs=1.5 * MS)
    assert due_at == pytest.approx(record.changed_at + F + M, abs=1.5 * MS)
    assert due_at - paused_at >= M


# --- the death watch, step by step ----------------------------------------------------


def healthy_lease(timing: LeaseTiming = TIMING, since: float = 0.0) -> OwnLease:
    lease = OwnLease(timing)
    lease.renewal_succeeded(lease.renewal_started(since), since)
    return lease


def keep_renewing(lease: OwnLease, until: float) -> None:
    t = lease.next_renewal_at
    assert t is not None
    while t <= until:
        lease.renewal_succeeded(lease.renewal_started(t), t)
        t += lease.timing.renew_interval


def test_revision_change_restarts_the_window_and_stale_revisions_are_ignored() -> None:
    lease = healthy_lease()
    keep_renewing(lease, 10.0)
    watch = DeathWatch(lease)
    watch.observe("x", 5, 0.0)
    watch.observe("x", 6, 0.5)
    watch.observe("x", 4, 0.9)
    watch.observe("x", 6, 1.2)
    assert watch.due(1.49) == []
    assert watch.still_for("x", 1.2) == pytest.approx(0.7)
    assert watch.due(1.5) == [DeathCandidate("x", 6)]


def test_due_reports_once_per_renewal_timeout_until_settled() -> None:
    lease = healthy_lease()
    keep_renewing(lease, 10.0)
    watch = DeathWatch(lease)
    watch.observe("b", 1, 0.0)
    watch.observe("a", 7, 0.0)
    assert watch.next_deadline(0.0) == pytest.approx(1.0)
    assert watch.due(1.0) == [DeathCandidate("a", 7), DeathCandidate("b", 1)]
    assert watch.due(1.1) == []
    assert watch.next_deadline(1.1) == pytest.approx(1.2)
    watch.declared("a")
    assert "a" not in watch
    assert watch.due(1.2) == [DeathCandidate("b", 1)]
    watch.observe("b", 9, 1.3)
    assert watch.due(1.4) == []
    assert watch.next_deadline(1.4) == pytest.approx(2.3)
    watch.forget("b")
    assert watch.peers() == []
    assert watch.next_deadline(1.4) is None
    assert watch.still_for("b", 1.4) is None


def test_nothing_is_due_while_the_own_lease_is_not_valid() -> None:
    lease = healthy_lease()
    watch = DeathWatch(lease)
    watch.observe("x", 1, 0.0)
    assert watch.due(0.69) == []
    assert watch.due(5.0) == []
    assert watch.next_deadline(5.0) is None
    assert watch.still_for("x", 5.0) == 0.0
    token = lease.renewal_started(5.0)
    lease.renewal_succeeded(token, 5.02)
    assert watch.next_deadline(5.02) == pytest.approx(6.02)
    keep_renewing(lease, 7.0)
    assert watch.due(6.01) == []
    assert watch.due(6.02) == [DeathCandidate("x", 1)]


def test_a_lapse_shorter_than_the_window_still_resets_it() -> None:
    lease = healthy_lease()
    keep_renewing(lease, 1.0)
    watch = DeathWatch(lease)
    watch.observe("x", 1, 0.0)
    lease.renewal_succeeded(lease.renewal_started(1.75), 1.76)
    keep_renewing(lease, 5.0)
    assert lease.lapses == 1
    assert watch.due(2.75) == []
    assert watch.due(2.76) == [DeathCandidate("x", 1)]


# --- the death watch against a naive oracle ------------------------------------------
#
# Integer times and an integer timing (r=2, F=7, m=3) keep the arithmetic exact, so ties —
# an acknowledgement at the very instant the lease expires — are tested as they come.

ORACLE_TIMING = LeaseTiming(2, 7, 3)
PEERS = ("a", "b", "c")

actions = st.one_of(
    st.tuples(st.just("renew")),
    st.tuples(st.just("renew")),
    st.tuples(st.just("start")),
    st.tuples(st.just("ack"), st.integers(0, 5)),
    st.tuples(st.just("fail"), st.integers(0, 5)),
    st.tuples(st.just("observe"), st.sampled_from(PEERS), st.integers(-1, 2)),
    st.tuples(st.just("observe"), st.sampled_from(PEERS), st.sampled_from([0, 0, 1, -1])),
    st.tuples(st.just("query")),
    st.tuples(st.just("query")),
    st.tuples(st.just("forget"), st.sampled_from(PEERS)),
)
logs = st.lists(st.tuples(st.integers(0, 3), actions), min_size=10, max_size=120)


@dataclass
class Oracle:
    """Recomputes due-ness from the whole event log by brute force."""

    timing: LeaseTiming
    events: list[tuple[float, str, tuple[object, ...]]] = field(default_factory=list)
    sent: dict[int, float] = field(default_factory=dict)
    reported: dict[str, float] = field(default_factory=dict)
    memo: dict[int, float] = field(default_factory=dict)

    def until_after(self, count: int) -> float:
        """The lease end after the first ``count`` events (first settlement of a token wins);
        memoised, as the log only grows."""
        if count not in self.memo:
            self.memo[count] = self._until_after(count)
        return self.memo[count]

    def _until_after(self, count: int) -> float:
        until, settled = -math.inf, set()
        for _, kind, args in self.events[:count]:
            if kind in ("ack", "fail"):
                (token,) = args
                assert isinstance(token, int)
                if token not in settled and kind == "ack":
                    until = max(until, self.sent[token] + self.timing.fencing_timeout)
                settled.add(token)
        return until

    def valid_since_and_lapses(self) -> tuple[float | None, int]:
        """When the lease last became valid (an ack ending an invalid stretch), and how often
        it became valid again after the first time."""
        since: float | None = None
        becomings = 0
        for i, (t, kind, _) in enumerate(self.events):
            if kind == "ack" and self.until_after(i) <= t < self.until_after(i + 1):
                since = t
                becomings += 1
        return since, max(0, becomings - 1)

    def window(self, peer: str) -> tuple[int, float] | None:
        """(revision, first seen) of the peer's current revision, or None if not watched."""
        revision: int | None = None
        seen = 0.0
        for t, kind, args in self.events:
            if kind == "forget" and args[0] == peer:
                revision = None
            elif kind == "observe" and args[0] == peer:
                rev = args[1]
                assert isinstance(rev, int)
                if revision is None or rev > revision:
                    revision, seen = rev, t
        return None if revision is None else (revision, seen)

    def eligible(self, peer: str, now: float) -> bool:
        window = self.window(peer)
        if window is None:
            return False
        start = now - self.timing.death_after
        if window[1] > start:
            return False
        count = len(self.events)
        if not now < self.until_after(count):
            return False
        last_at_start = max(
            (i + 1 for i, (t, _, _) in enumerate(self.events) if t <= start), default=0
        )
        if not start < self.until_after(last_at_start):
            return False
        return all(t < self.until_after(i) for i, (t, _, _) in enumerate(self.events) if t > start)

    def expected_due(self, now: float) -> list[DeathCandidate]:
        found = []
        for peer in PEERS:
            window = self.window(peer)
            if window is None or not self.eligible(peer, now):
                continue
            reported = self.reported.get(peer)
            if reported is not None and now < reported + self.timing.renewal_timeout:
                continue
            found.append(DeathCandidate(peer, window[0]))
        return found


@settings(max_examples=300, deadline=None)
@given(logs)
def test_death_watch_matches_a_brute_force_replay(
    log: list[tuple[int, tuple[object, ...]]],
) -> None:
    lease = OwnLease(ORACLE_TIMING)
    watch = DeathWatch(lease)
    oracle = Oracle(ORACLE_TIMING)
    open_tokens: list[int] = []
    revisions = dict.fromkeys(PEERS, 0)
    now = 0.0
    for dt, action in log:
        now += dt
        kind = action[0]
        if kind in ("start", "renew"):
            token = lease.renewal_started(now)
            oracle.sent[token] = now
            oracle.events.append((now, "start", (token,)))
            if kind == "renew":
                lease.renewal_succeeded(token, now)
                oracle.events.append((now, "ack", (token,)))
            else:
                open_tokens.append(token)
        elif kind in ("ack", "fail") and open_tokens:
            index = action[1]
            assert isinstance(index, int)
            token = open_tokens.pop(index % len(open_tokens))
            if kind == "ack":
                lease.renewal_succeeded(token, now)
            else:
                lease.renewal_failed(token)
            oracle.events.append((now, kind, (token,)))
        elif kind == "observe":
            peer, delta = action[1], action[2]
            assert isinstance(peer, str)
            assert isinstance(delta, int)
            revision = max(1, revisions[peer] + delta)
            revisions[peer] = max(revisions[peer], revision)
            before = oracle.window(peer)
            watch.observe(peer, revision, now)
            oracle.events.append((now, "observe", (peer, revision)))
            if oracle.window(peer) != before:
                oracle.reported.pop(peer, None)
        elif kind == "forget":
            peer = action[1]
            assert isinstance(peer, str)
            watch.forget(peer)
            oracle.events.append((now, "forget", (peer,)))
            oracle.reported.pop(peer, None)
        elif kind == "query":
            expected = oracle.expected_due(now)
            assert watch.due(now) == expected
            event("due" if expected else "nothing due")
            for candidate in expected:
                oracle.reported[candidate.peer] = now
        valid = now < oracle.until_after(len(oracle.events))
        assert lease.valid(now) == valid
        since, lapses = oracle.valid_since_and_lapses()
        assert lease.valid_since(now) == (since if valid else None)
        assert lease.lapses == lapses
        check_next_deadline(watch, oracle, now)


def check_next_deadline(watch: DeathWatch, oracle: Oracle, now: float) -> None:
    """With no further events, ``due`` first reports someone exactly at ``next_deadline``."""
    deadline = watch.next_deadline(now)
    until = oracle.until_after(len(oracle.events))
    if deadline is None:
        assert all(not oracle.expected_due(t) for t in range(int(now), int(now) + 15))
        return
    if deadline <= now:
        assert oracle.expected_due(now)
        return
    assert deadline == int(deadline)
    for t in itertools.takewhile(lambda t: t < deadline, itertools.count(int(now))):
        assert not oracle.expected_due(t)
    if deadline < until:
        assert oracle.expected_due(deadline)
