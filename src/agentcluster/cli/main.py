"""The ``agentcluster`` command.

Commands import what they need when they run, so ``agentcluster --help`` and
``agentcluster version`` stay quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from agentcluster.examples.cluster_demo import Attempt, ClusterDemoReport
    from agentcluster.examples.failover_demo import FailoverDemoReport
    from agentcluster.examples.orders import DemoReport, Invariant
    from agentcluster.examples.placement_demo import PlacementDemoReport

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
    single_node: Annotated[
        bool,
        typer.Option(
            "--single-node", help="Run the order pipeline on one LocalNode instead (--orders)."
        ),
    ] = False,
    orders: Annotated[
        int | None,
        typer.Option(min=1, help="With --single-node: how many orders to submit [3000]."),
    ] = None,
    kill: Annotated[
        str, typer.Option(help="Which node to kill: 'leader' (whichever leads), n1, n2 or n3.")
    ] = "leader",
    seed: Annotated[int, typer.Option(help="Seed for the traffic (and orders, faults).")] = 7,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print the runtime's log.")
    ] = False,
) -> None:
    """Run three nodes in one process, kill one mid-run, and show the cluster noticing.

    Six agents are spread over the nodes and called by id and by capability; then a node
    is killed while the clients go on. The tables show when the others suspect it and
    declare it dead, the new leader, its agents refused as unavailable, and the capability
    still answered by the survivors. With --single-node: the order pipeline (desk, risk,
    inventory, billing, shipping) on one node, with a payment gateway that breaks on
    purpose. Exits 1 when an invariant is broken.
    """
    if not single_node and orders is not None:
        raise typer.BadParameter("--orders goes with --single-node", param_hint="--orders")
    if single_node:
        _single_node_demo(3000 if orders is None else orders, seed, verbose)
        return
    if kill not in ("leader", "n1", "n2", "n3"):
        raise typer.BadParameter(f"say leader, n1, n2 or n3, not {kill!r}", param_hint="--kill")
    from rich.console import Console

    from agentcluster.examples.cluster_demo import run_cluster_demo
    from agentcluster.examples.placement_demo import run_placement_demo

    console = Console(highlight=False)
    console.print(
        "[bold]agentcluster demo[/bold], act 1: placement by resources and zone, a circuit "
        "breaker opening on a failing node, map-reduce over a capability (3 nodes, Cluster.local)"
    )
    with _quiet(verbose):
        placement, _ = _run(run_placement_demo())
    _print_placement_report(console, placement)
    target = "whichever node leads" if kill == "leader" else kill
    console.print(
        f"\n[bold]agentcluster demo[/bold], act 2: 3 nodes in one process, 6 agents; "
        f"{target} is killed mid-run (seed {seed})"
    )
    with _quiet(verbose):
        report, loop = _run(run_cluster_demo(seed=seed, kill=kill))
    _print_cluster_report(console, report, loop)
    from agentcluster.examples.failover_demo import run_failover_demo

    console.print(
        "\n[bold]agentcluster demo[/bold], act 3: a node with durable and critical agents is "
        "killed under traffic; failover, then a health alert and a quarantine"
    )
    with _quiet(verbose):
        failover, _ = _run(run_failover_demo())
    _print_failover_report(console, failover)
    raise typer.Exit(0 if report.ok and placement.ok and failover.ok else 1)


def _print_failover_report(console: Console, report: FailoverDemoReport) -> None:
    """Where each agent went, how soon it served again, the exact counts, the checks."""
    from rich.table import Table

    from agentcluster.examples.failover_demo import PERSISTENT, judge

    moved = Table(title="Failover of the killed node's agents", title_justify="left")
    for column in ("agent", "mode", "now on", "incarnation", "serving again after"):
        moved.add_column(column)
    for agent_id in PERSISTENT:
        node, incarnation = report.moved_to.get(agent_id, ("?", 0))
        took = report.served_again.get(agent_id)
        moved.add_row(
            agent_id,
            "durable" if agent_id == "orders" else "critical",
            node,
            str(incarnation),
            "never" if took is None else f"{took:.2f} s",
        )
    console.print(moved)
    console.print(
        f"{report.sends} sends acknowledged (retried by the client {report.retried_sends} "
        f"times; the router retries a starting agent itself); orders counted "
        f"{report.orders_total}, audit counted {report.audit_total}; "
        f"{report.commits} commits recorded, "
        f"{report.interleavings} interleavings; health alerts: "
        f"{', '.join(report.alerts) or 'none'}; quarantined: "
        f"{', '.join(report.quarantined) or 'none'}; next placement on "
        f"{report.placed_after_quarantine or '?'}; drained off the quarantined node: "
        + (
            ", ".join(
                f"{agent} -> {node} (total {report.drained_totals.get(agent, '?')})"
                for agent, node in sorted(report.drained_to.items())
            )
            or "none"
        )
    )
    _print_invariants(console, "Invariants (act 3)", judge(report))


def _print_invariants(console: Console, title: str, invariants: Iterable[Invariant]) -> None:
    """A table of the run's invariants; a broken one shows what was measured."""
    from rich.table import Table

    checks = Table(title=title, title_justify="left")
    checks.add_column("")
    checks.add_column("invariant")
    for invariant in invariants:
        mark = "[green]ok[/green]" if invariant.held else "[red]BROKEN[/red]"
        text = (
            invariant.name if invariant.held else f"{invariant.name}\n[dim]{invariant.detail}[/dim]"
        )
        checks.add_row(mark, text)
    console.print(checks)


def _print_placement_report(console: Console, report: PlacementDemoReport) -> None:
    from rich.table import Table

    from agentcluster.examples.placement_demo import LABELS, judge

    nodes = Table(title="Placement and resources", title_justify="left")
    for column in ("node", "zone", "agents placed", "capacity", "reserved", "free"):
        nodes.add_column(column)

    def amounts(values: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in sorted(values.items())) or "-"

    for node, figures in report.resources.get("nodes", {}).items():
        placed = sorted(a for a, n in report.placed.items() if n == node)
        nodes.add_row(
            node,
            LABELS.get(node, {}).get("zone", "-"),
            ", ".join(placed),
            amounts(figures["capacity"]),
            amounts(figures["reserved"]),
            amounts(figures["free"]),
        )
    console.print(nodes)
    console.print(
        f"a third GPU trainer: refused, NoAvailableNode(reason={report.refused_reason!r})"
    )
    answered = ", ".join(f"{a} {n}" for a, n in sorted(report.answered_by.items()))
    console.print(
        f"requests to Capability('words') with {report.failing_node}'s counters failing: "
        f"{report.failures} failed, then its breaker opened; afterwards answered by: {answered}"
    )
    console.print(
        "breaker transitions: "
        + ", ".join(f"{key} ({kind}) -> {state}" for key, kind, state in report.breaker_events)
    )
    console.print(
        f"map-reduce over {len(report.expected)} distinct words: {report.chunk_retries} chunks "
        f"retried on another counter; {sum(report.reduced.values())} words counted"
    )
    _print_invariants(console, "Invariants (act 1)", judge(report))


def _single_node_demo(orders: int, seed: int, verbose: bool) -> None:
    """The order pipeline on one node: the billing agent's payment gateway breaks a few
    times on purpose; supervision restarts it with its last good state and every order
    still finishes."""
    from rich.console import Console

    from agentcluster.examples.orders import run_demo

    console = Console(highlight=False)
    console.print(
        f"[bold]agentcluster demo --single-node[/bold]: {orders} orders through five agents "
        f"on one LocalNode (seed {seed})"
    )
    # The crashes are on purpose and shown in a table below; their log lines only with -v.
    with _quiet(verbose):
        report, loop = _run(run_demo(orders=orders, seed=seed))
    _print_report(console, report, loop)
    raise typer.Exit(0 if report.ok else 1)


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Only errors of the runtime's log, unless ``verbose``: the faults are on purpose and
    shown in the tables."""
    logger = logging.getLogger("agentcluster")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def _latency(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.01 else _ms(seconds)


def _print_cluster_report(console: Console, report: ClusterDemoReport, loop: str) -> None:
    from collections import Counter

    from rich.table import Table

    from agentcluster.examples.cluster_demo import CAPABILITY

    killed = report.killed
    leader_before = report.leader_before[0] if report.leader_before else None
    leader_after = report.leader_after[0] if report.leader_after else None

    def roles(node: str, leader: str | None, entry: str) -> str:
        notes = ["leader" if node == leader else "", "entry" if node == entry else ""]
        shown = ", ".join(n for n in notes if n)
        return f" ({shown})" if shown else ""

    nodes = Table(
        title="Nodes (the Cluster facade sends through its entry: the first live node)",
        title_justify="left",
    )
    nodes.add_column("node")
    nodes.add_column("agents")
    nodes.add_column("before the kill")
    nodes.add_column("after the kill")
    for node in report.nodes:
        after = report.statuses_after.get(node, "?")
        if node == killed and after == "dead":
            after = "[red]dead[/red] (killed)"
        nodes.add_row(
            node,
            ", ".join(report.placement.get(node, [])),
            report.statuses_before.get(node, "?") + roles(node, leader_before, report.entry_before),
            after + roles(node, leader_after, report.entry_after),
        )
    console.print(nodes)

    phases = report.phases()
    before_kill = [a for a in report.by_id if not a.after_kill]
    traffic = Table(title="Traffic with every node up", title_justify="left")
    traffic.add_column("signals")
    traffic.add_column("outcome")
    for kind, verb, outcome in (
        ("call", "call each agent by id", "answered"),
        ("send", "send to each agent by id", "acknowledged"),
    ):
        sent = [a for a in before_kill if a.kind == kind]
        ok = sum(a.outcome == "answered" for a in sent)
        traffic.add_row(verb, f"{ok}/{len(sent)} {outcome}")
    applied = sum(v >= 1 for v in report.rates_seen.values())
    traffic.add_row(
        f'cast Capability("{CAPABILITY}", "all")',
        f"applied by {applied}/{len(report.node_of)} holders",
    )
    spread = ", ".join(f"{n} {c}" for n, c in phases[0].served_on.items())
    traffic.add_row(
        f'call Capability("{CAPABILITY}")',
        f"{phases[0].served}/{phases[0].requests} answered: {spread}",
    )
    console.print(traffic)

    title = f"Killing {killed}" + (" (the leader)" if report.killed_led else "")
    timeline = Table(title=f"{title}: what the survivors saw", title_justify="left")
    timeline.add_column("after the kill", justify="right")
    timeline.add_column("event")
    timeline.add_column("seen by")
    for at, event, seen_by in report.timeline():
        timeline.add_row(_ms(at), event, seen_by)
    console.print(timeline)

    load = Table(
        title=f'Capability("{CAPABILITY}") requests from {report.clients} clients '
        f"({_ms(report.attempt_timeout)} per attempt)",
        title_justify="left",
    )
    load.add_column("")
    for header in ("every node up", "kill -> dead", "dead -> end"):
        load.add_column(header, justify="right")

    def row(label: str, cells: list[str]) -> None:
        load.add_row(label, *cells)

    row("requests served", [f"{p.served}/{p.requests}" for p in phases])
    for node in report.nodes:
        row(f"answered by {node}", [str(p.served_on.get(node, 0)) for p in phases])
    row(f"timed out on {killed}", [str(p.timed_out) for p in phases])
    row("refused unavailable", [str(p.refused) for p in phases])
    if any(p.failed for p in phases):
        row("[red]failed[/red]", [str(p.failed) for p in phases])
    row("latency, median", [_latency(p.median_latency) for p in phases])
    row("latency, max", [_latency(p.max_latency) for p in phases])
    console.print(load)

    after_kill = {(a.agent, a.kind): a for a in report.by_id if a.after_kill}
    answered = Counter(a.agent for a in report.attempts if a.outcome == "answered")
    by_id = Table(
        title="Each agent by id after the kill (refused: AgentUnavailable, not retried)",
        title_justify="left",
    )
    by_id.add_column("agent")
    by_id.add_column("node")
    by_id.add_column("call")
    by_id.add_column("send")
    by_id.add_column("ran / answered", justify="right")

    def shown(attempt: Attempt | None) -> str:
        if attempt is None:
            return "-"
        took = _latency(attempt.latency)
        if attempt.outcome == "answered":
            return f"{'answered' if attempt.kind == 'call' else 'acknowledged'}, {took}"
        if attempt.outcome == "unavailable":
            return f"refused, {took}"
        return f"[red]{attempt.outcome}[/red], {took}"

    for agent, node in report.node_of.items():
        ran = report.served.get(agent)
        by_id.add_row(
            agent,
            node,
            shown(after_kill.get((agent, "call"))),
            shown(after_kill.get((agent, "send"))),
            f"{'-' if ran is None else ran} / {answered.get(agent, 0)}",
        )
    console.print(by_id)

    _print_invariants(console, "Invariants", report.invariants)

    console.print(
        f"{', '.join(report.killed_agents)} are plain agents: they lived and died with "
        f"{killed} and stay unavailable. Critical and durable agents are failed over "
        "instead: act 3."
    )
    style = "bold green" if report.ok else "bold red"
    console.print(f"[{style}]{report.summary()}[/{style}] [dim]({loop})[/dim]", soft_wrap=True)


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

    _print_invariants(console, "Invariants", report.invariants)

    style = "bold green" if report.ok else "bold red"
    console.print(f"[{style}]{report.summary()}[/{style}] [dim]({loop})[/dim]", soft_wrap=True)


def _register_node_command() -> None:
    from agentcluster.cli.node import node_command

    app.command("node")(node_command)


_register_node_command()


def main() -> None:
    """Entry point of the ``agentcluster`` console script."""
    app()


if __name__ == "__main__":
    main()
