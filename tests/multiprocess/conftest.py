"""Node processes over a real nats-server: helpers shared by the multi-process tests.

Each test gets its own server (a fresh store, so no record of an earlier test's nodes), its
node processes are stopped by PID when it ends, and the nodes' event loop alternates
between asyncio and uvloop from test to test (they order callbacks differently).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agentcluster.cluster import Cluster
from agentcluster.testing.node_process import NodeProcess

WORKERS = ("agentcluster.examples.workers:Echo", "agentcluster.examples.workers:Counter")

_loops = itertools.cycle(["asyncio", "uvloop"])


class Nodes:
    """Starts node processes for one test and stops every one of them at its end."""

    def __init__(self, directory: Path, loop: str) -> None:
        self.directory = directory
        self.loop = loop
        self.started: list[NodeProcess] = []

    def spawn(
        self,
        servers: str | Sequence[str],
        node_id: str,
        *,
        agents: Sequence[str] = WORKERS,
        replicas: int = 1,
        extra_args: Sequence[str] = (),
    ) -> NodeProcess:
        proc = NodeProcess(
            servers,
            node_id,
            agents=agents,
            directory=self.directory,
            replicas=replicas,
            loop=self.loop,
            extra_args=extra_args,
        )
        self.started.append(proc)
        return proc

    async def start(
        self,
        servers: str | Sequence[str],
        node_ids: Sequence[str],
        *,
        replicas: int = 1,
    ) -> dict[str, NodeProcess]:
        """Start the nodes together and return once each printed ``ready``."""
        procs = {n: self.spawn(servers, n, replicas=replicas) for n in node_ids}
        for proc in procs.values():
            proc.start(wait=None)
        for proc in procs.values():
            await asyncio.to_thread(proc.wait_event, "ready", 30.0)
        return procs

    def stop_all(self) -> None:
        for proc in self.started:
            proc.kill()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    group = Nodes(tmp_path / "nodes", next(_loops))
    try:
        yield group
    finally:
        group.stop_all()


@asynccontextmanager
async def client(servers: str | Sequence[str], **options: object) -> AsyncIterator[Cluster]:
    async with Cluster.connect(servers, role="client", **options) as cluster:  # type: ignore[arg-type]
        yield cluster


def alive(cluster: Cluster) -> Callable[[], list[str]]:
    return lambda: sorted(
        node_id for node_id, r in cluster.members().items() if r.status.value == "alive"
    )
