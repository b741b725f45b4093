"""``agentcluster node``: run one cluster node as this process, until told to stop.

The process joins the cluster behind ``--servers``, starts the agents named by
``--agents module:Class[=id]`` on itself, and then serves. It reports what happens as JSON
lines on standard output (``joined``, ``agent_started``, ``superseded``, ``left``), so
scripts and tests can follow it without parsing logs. SIGTERM or SIGINT makes it leave
gracefully (its record says ``left``) and exit 0; when a restart under the same id has taken
over, it stops every agent and exits with status 3 (``NodeSuperseded``); a bad argument
exits 2.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import orjson
import typer

__all__ = ["EXIT_SUPERSEDED", "node_command", "parse_agent", "parse_pairs"]

EXIT_SUPERSEDED = 3


def emit(event: str, **fields: Any) -> None:
    """One JSON line on standard output, flushed (a pipe would otherwise hold it)."""
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


def parse_pairs(values: Sequence[str], what: str) -> dict[str, str]:
    """``["zone=a", "region=eu"]`` -> ``{"zone": "a", "region": "eu"}``."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} are key=value, got {value!r}")
        pairs[key] = item
    return pairs


def parse_agent(value: str, node_id: str) -> tuple[str, str]:
    """``module:Class[=id]`` -> (class path, agent id); the id defaults to
    ``<class name, lower case>-<node id>``."""
    path, sep, agent_id = value.partition("=")
    module, colon, name = path.partition(":")
    if not colon or not module or not name:
        raise typer.BadParameter(f"an agent is module:Class[=id], got {value!r}")
    if sep and not agent_id:
        raise typer.BadParameter(f"an empty agent id in {value!r}")
    return path, agent_id or f"{name.rsplit('.', 1)[-1].lower()}-{node_id}"


def node_command(
    node_id: Annotated[str, typer.Option("--id", help="This node's id, unique in the cluster.")],
    servers: Annotated[
        list[str] | None,
        typer.Option("--servers", "-s", help="NATS URL (repeat or comma-separate)."),
    ] = None,
    discovery: Annotated[
        str | None,
        typer.Option(
            help="How to find the servers instead: static:URL,URL | dns:NAME[:PORT] | "
            "dns+srv:_nats._tcp.NAME (transport, the default, uses --servers)."
        ),
    ] = None,
    agents: Annotated[
        list[str] | None,
        typer.Option("--agents", "-a", help="module:Class[=id] to start here (repeatable)."),
    ] = None,
    labels: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="key=value, e.g. zone=eu-1a.")
    ] = None,
    capacity: Annotated[
        list[str] | None, typer.Option("--capacity", help="resource=amount, e.g. cpu=4.")
    ] = None,
    replicas: Annotated[
        int, typer.Option(min=1, help="Replicas of the cluster's buckets (3 on 3 servers).")
    ] = 1,
    renewal: Annotated[float, typer.Option(help="Lease renewal interval r, seconds.")] = 0.2,
    fencing: Annotated[float, typer.Option(help="Fencing timeout F, seconds.")] = 0.7,
    margin: Annotated[float, typer.Option(help="Death margin m, seconds.")] = 0.3,
    loop: Annotated[str, typer.Option(help="Event loop: auto, asyncio or uvloop.")] = "auto",
) -> None:
    """Run one cluster node in this process until SIGTERM/SIGINT (exit 0) or until a
    restart under the same id supersedes it (exit 3)."""
    from agentcluster.core.lease import LeaseTiming
    from agentcluster.errors import ConfigurationError

    urls = [url for item in servers or () for url in item.split(",") if url]
    if not urls and discovery is None:
        raise typer.BadParameter("give --servers, or --discovery static:… / dns:…")
    specs = [parse_agent(value, node_id) for value in agents or ()]
    label_map = parse_pairs(labels or (), "labels")
    try:
        capacity_map = {k: float(v) for k, v in parse_pairs(capacity or (), "capacities").items()}
    except ValueError as error:
        raise typer.BadParameter(f"a capacity is a number: {error}") from None
    try:
        timing = LeaseTiming(renewal, fencing, margin)
    except ConfigurationError as error:
        raise typer.BadParameter(str(error)) from None
    if loop not in ("auto", "asyncio", "uvloop"):
        raise typer.BadParameter(f"--loop is auto, asyncio or uvloop, not {loop!r}")
    code = _run_loop(
        _serve(urls, discovery, node_id, specs, label_map, capacity_map or None, replicas, timing),
        loop,
    )
    raise typer.Exit(code)


def _run_loop(main: Any, loop: str) -> int:
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise typer.BadParameter("uvloop is not installed") from None
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return int(runner.run(main))
    return int(asyncio.run(main))


async def _serve(
    servers: list[str],
    discovery: str | None,
    node_id: str,
    specs: list[tuple[str, str]],
    labels: dict[str, str],
    capacity: dict[str, float] | None,
    replicas: int,
    timing: Any,
) -> int:
    from agentcluster.cluster import Cluster
    from agentcluster.errors import AgentClusterError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Cluster.connect(
            servers or None,
            discovery=discovery,
            node_id=node_id,
            labels=labels,
            capacity=capacity,
            replicas=replicas,
            timing=timing,
        ) as cluster:
            node = cluster.node(node_id)
            emit("joined", node=node_id, incarnation=node.incarnation, pid=os.getpid())
            for path, agent_id in specs:
                entry = await cluster.start_agent(path, agent_id, node=node_id)
                emit("agent_started", id=entry.id, node=node_id, capabilities=entry.capabilities)
            emit("ready", node=node_id, agents=[agent_id for _, agent_id in specs])
            superseded = asyncio.ensure_future(node.wait_superseded())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([superseded, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if superseded.done():
                error = superseded.result()
                emit(
                    "superseded",
                    node=node_id,
                    incarnation=error.own_incarnation,
                    by=error.found_incarnation,
                    error=str(error),
                )
                return EXIT_SUPERSEDED
            superseded.cancel()
        emit("left", node=node_id)
        return 0
    except AgentClusterError as error:
        emit("failed", node=node_id, error=str(error), type=type(error).__name__)
        return 1
