"""The demo: the order pipeline keeps its invariants, and the CLI reports them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentcluster.cli.main import app
from agentcluster.examples import orders
from agentcluster.examples.orders import (
    DemoReport,
    GatewayCrashed,
    Invariant,
    PaymentGateway,
    run_demo,
)


async def test_run_demo_keeps_every_invariant() -> None:
    report = await run_demo(orders=300)

    assert report.ok, report.violations
    assert report.crashes > 0
    assert report.restarts == report.crashes
    assert report.recovered_payments == report.crashes
    assert report.placed == report.submitted - report.malformed
    assert report.confirmed + report.rejected_total == report.placed
    assert report.charged_cents == report.revenue_cents
    assert all(left >= 0 for left in report.stock_left.values())
    # Each crashed capture is dead-lettered with reason "crashed" (and then re-run from the
    # restored payment intent); malformed orders are dead-lettered as "validation".
    assert report.dead_letters == {"validation": report.malformed, "crashed": report.crashes}
    assert set(report.rejected) <= {"out_of_stock", "card_declined", "fraud_suspected"}
    assert report.signals > report.placed


async def test_run_demo_depends_only_on_the_seed() -> None:
    def outcome(report: DemoReport) -> dict[str, object]:
        data = dataclasses.asdict(report)
        del data["elapsed"]
        return data

    first, second = await run_demo(orders=200, seed=3), await run_demo(orders=200, seed=3)
    other = await run_demo(orders=200, seed=4)

    assert outcome(first) == outcome(second)
    assert outcome(first) != outcome(other)


def test_gateway_crashes_only_on_the_chosen_requests() -> None:
    gateway = PaymentGateway({2})
    assert gateway.capture("a", "tok_visa", 100)
    with pytest.raises(GatewayCrashed):
        gateway.capture("b", "tok_visa", 200)
    assert gateway.capture("b", "tok_visa", 200)
    assert not gateway.capture("c", "tok_chargeDeclined", 300)
    assert gateway.charged_cents == 300
    assert gateway.crashes == 1


def test_cli_demo_prints_tables_and_summary() -> None:
    result = CliRunner().invoke(app, ["demo", "--orders", "200", "--seed", "7"])

    assert result.exit_code == 0, result.output
    for title in ("Pipeline", "Orders", "Inventory", "Supervision", "Dead letters"):
        assert title in result.output
    summary = [line for line in result.output.splitlines() if line.startswith("200 orders (")]
    assert len(summary) == 1, result.output
    assert "0 lost" in summary[0]
    assert "invariants hold" in summary[0]


def test_cli_demo_exits_1_when_an_invariant_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    real = orders.run_demo

    async def broken(orders: int, seed: int) -> DemoReport:
        report = await real(orders=orders, seed=seed)
        bad = Invariant("stock never negative", False, "negative stock: {'kb-mech': -1}")
        return dataclasses.replace(report, invariants=[*report.invariants, bad])

    monkeypatch.setattr(orders, "run_demo", broken)
    result = CliRunner().invoke(app, ["demo", "--orders", "50"])

    assert result.exit_code == 1, result.output
    assert "BROKEN" in result.output
    assert "1 invariant(s) broken" in result.output


def test_cli_version() -> None:
    result = CliRunner().invoke(app, ["version"])

    assert result.exit_code == 0
    assert result.output.startswith("agentcluster ")


def test_console_script_runs_the_demo() -> None:
    script = Path(sys.executable).with_name("agentcluster")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "agentcluster.cli.main"]
    proc = subprocess.run(
        [*command, "demo", "--orders", "200"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "invariants hold" in proc.stdout
