"""The demo's third act, in virtual time: its invariants hold, and a broken measurement
breaks one."""

from __future__ import annotations

import asyncio
import dataclasses

from agentcluster.examples.failover_demo import (
    PERSISTENT,
    FailoverDemoReport,
    judge,
    run_failover_demo,
)
from agentcluster.sim import VirtualClock


async def test_the_failover_act_keeps_every_invariant() -> None:
    report = await run_failover_demo(sends=200, clock=VirtualClock(asyncio.get_running_loop()))
    broken = [i for i in judge(report) if not i.held]
    assert broken == [], broken
    assert report.ok
    assert set(report.served_again) == set(PERSISTENT)
    assert report.orders_total == report.audit_total == 200
    assert report.quarantined == ["n2"]
    assert report.to_drain  # the audit counter at least lived on n2
    assert "n2" not in report.drained_to.values()
    assert report.drained_totals == report.to_drain


def _good() -> FailoverDemoReport:
    return FailoverDemoReport(
        sends=10,
        orders_total=10,
        audit_total=10,
        session_acked=dict.fromkeys(PERSISTENT[1:], 2),
        session_attempted=dict.fromkeys(PERSISTENT[1:], 3),
        session_total=dict.fromkeys(PERSISTENT[1:], 2),
        served_again=dict.fromkeys(PERSISTENT, 1.0),
        moved_to=dict.fromkeys(PERSISTENT, ("n1", 2)),
        cache_status="unavailable",
        interleavings=0,
        commits=50,
        alerts=["n2 memory_mb critical"],
        quarantined=["n2"],
        placed_after_quarantine="n1",
        to_drain={"audit": 10, "session-2": 2},
        drained_to={"audit": "n1", "session-2": "n1"},
        drained_totals={"audit": 10, "session-2": 2},
    )


def test_judge_holds_on_a_good_report_and_breaks_on_each_fault() -> None:
    assert _good().ok
    faults = {
        "slow": {"served_again": {**dict.fromkeys(PERSISTENT, 1.0), "orders": 2.5}},
        "lost": {"orders_total": 9},
        "doubled": {"audit_total": 11},
        "session": {"session_total": dict.fromkeys(PERSISTENT[1:], 1)},
        "interleaved": {"interleavings": 1},
        "plain moved": {"cache_status": "running"},
        "no quarantine": {"quarantined": []},
        "placed on the quarantined node": {"placed_after_quarantine": "n2"},
        "not drained": {"drained_to": {"audit": "n2", "session-2": "n1"}},
        "drained without its state": {"drained_totals": {"audit": 0, "session-2": 2}},
        "nothing to drain": {"to_drain": {}, "drained_to": {}, "drained_totals": {}},
    }
    for name, change in faults.items():
        report = dataclasses.replace(_good(), **change)
        assert not report.ok, name
