"""The ``agentcluster`` command.

Commands import what they need when they run, so ``agentcluster --help`` and
``agentcluster version`` stay quick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from agentcluster.examples.orders import DemoReport

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="agentcluster",
    help="Stateful agents that receive signals and answer them with actions.",
    no_args_is_help=True,
    add_completion=False,
)


def _run(coro: Coroutine[Any, Any, T]) -> tuple[T, str]:
    """Run ``coro`` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro), "asyncio"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro), "uvloop"


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        typer.echo(f"agentcluster {installed('agentcluster')}")
    except PackageNotFoundError:
        from agentcluster import __version__

        typer.echo(f"agentcluster {__version__}")


@app.command()
def demo(
    orders: Annotated[int, typer.Option(min=1, help="How many orders to submit.")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed for orders, stock and gateway faults.")] = 7,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print the runtime's log.")
    ] = False,
) -> None:
    """Run the order pipeline (desk, risk, inventory, billing, shipping) on one node.

    The billing agent's payment gateway breaks a few times on purpose; supervision
    restarts the agent with its last good state and every order still finishes. Exits 1
    when an invariant is broken.
    """
    from rich.console import Console

    from agentcluster.examples.orders import run_demo

    console = Console(highlight=False)
    console.print(
        f"[bold]agentcluster demo[/bold]: {orders} orders through five agents on one "
        f"LocalNode (seed {seed})"
    )
    # The crashes are on purpose and shown in a table below; their log lines only with -v.
    logger = logging.getLogger("agentcluster")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        report, loop = _run(run_demo(orders=orders, seed=seed))
    finally:
        logger.setLevel(level)
    _print_report(console, report, loop)
    raise typer.Exit(0 if report.ok else 1)


def _print_report(console: Console, report: DemoReport, loop: str) -> None:
    from rich.table import Table

    from agentcluster.examples.orders import CATALOG

    stages = Table(title="Pipeline, stage by stage", title_justify="left")
    stages.add_column("agent")
    stages.add_column("received", justify="right")
    stages.add_column("passed on", justify="right")
    stages.add_column("turned down", justify="right")
    stages.add_column("")
    for stage in report.stages:
        stages.add_row(
            stage.agent,
            str(stage.received),
            str(stage.passed),
            str(stage.turned_down),
            stage.note,
        )
    console.print(stages)

    outcomes = Table(title="Orders", title_justify="left")
    outcomes.add_column("outcome")
    outcomes.add_column("orders", justify="right")
    outcomes.add_row("submitted", str(report.submitted))
    outcomes.add_row("malformed (dead-lettered)", str(report.malformed))
    outcomes.add_row("placed", str(report.placed))
    outcomes.add_row("confirmed", str(report.confirmed))
    for reason, count in report.rejected.items():
        outcomes.add_row(f"rejected: {reason.replace('_', ' ')}", str(count))
    outcomes.add_row("lost", str(report.placed - report.confirmed - report.rejected_total))
    outcomes.add_row("revenue", f"${report.revenue_cents / 100:,.2f}")
    outcomes.add_row("charged by the gateway", f"${report.charged_cents / 100:,.2f}")
    console.print(outcomes)

    stock = Table(title="Inventory", title_justify="left")
    stock.add_column("sku")
    stock.add_column("product")
    stock.add_column("start", justify="right")
    stock.add_column("sold", justify="right")
    stock.add_column("left", justify="right")
    for sku, start in report.stock_start.items():
        left = report.stock_left.get(sku, 0)
        stock.add_row(
            sku,
            CATALOG[sku].name,
            str(start),
            str(report.units_confirmed.get(sku, 0)),
            str(left) if left else "[red]sold out[/red]",
        )
    console.print(stock)

    crashes = Table(
        title=f"Supervision: {report.crashes} crashes, {report.restarts} restarts, "
        f"{report.recovered_payments} payments recovered from the restored state",
        title_justify="left",
    )
    crashes.add_column("agent")
    crashes.add_column("crashed with")
    for agent_id, error in report.crash_log:
        crashes.add_row(agent_id, error)
    if not report.crash_log:
        crashes.add_row("-", "no crash")
    console.print(crashes)

    letters = Table(title="Dead letters", title_justify="left")
    letters.add_column("reason")
    letters.add_column("signals", justify="right")
    for reason, count in report.dead_letters.items():
        letters.add_row(reason, str(count))
    if not report.dead_letters:
        letters.add_row("-", "0")
    console.print(letters)

    checks = Table(title="Invariants", title_justify="left")
    checks.add_column("")
    checks.add_column("invariant")
    for invariant in report.invariants:
        mark = "[green]ok[/green]" if invariant.held else "[red]BROKEN[/red]"
        text = (
            invariant.name if invariant.held else f"{invariant.name}\n[dim]{invariant.detail}[/dim]"
        )
        checks.add_row(mark, text)
    console.print(checks)

    style = "bold green" if report.ok else "bold red"
    console.print(f"[{style}]{report.summary()}[/{style}] [dim]({loop})[/dim]", soft_wrap=True)


def main() -> None:
    """Entry point of the ``agentcluster`` console script."""
    app()


if __name__ == "__main__":
    main()
