"""Liveness scenarios on the memory transport and a virtual-time loop.

Every async test here runs on a ``VirtualEventLoop`` seeded with its node id, so seconds of
cluster time cost milliseconds and a run replays exactly. ``Harness`` starts
``NodeLiveness`` components on one ``MemoryTransport``. Connection naming, which is what
the faults act on: both connections of a node (data and lease) are named after the
*process*, which is the node id unless a test starts a second process under the same id
(``conn_name="n2b"``), so ``kill("n3")`` / ``cut_off(["n3"])`` hit both at once and leave
the second process alone. Every hook call is logged with its virtual time in
``Node.events``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentcluster.cluster.death_watch import PeerDeathWatch
from agentcluster.cluster.lease_renewer import LeaseRenewer
from agentcluster.cluster.liveness import LivenessHooks, NodeLiveness, Role
from agentcluster.cluster.membership import JoinSpec
from agentcluster.core.lease import LeaseTiming
from agentcluster.core.membership import NodeRecord
from agentcluster.errors import NodeSuperseded
from agentcluster.sim import VirtualClock, VirtualEventLoop
from agentcluster.telemetry.events import EventRecorder, RecordedEvent, Telemetry
from agentcluster.transport.memory import MemoryConnection, MemoryTransport

TIMING = LeaseTiming()
R = TIMING.renew_interval
F = TIMING.fencing_timeout
M = TIMING.margin
EPS = 1e-6


def now() -> float:
    return asyncio.get_running_loop().time()


@dataclass
class Node:
    """One process of a node (or a client) and what its hooks saw."""

    node_id: str
    conn_name: str
    liveness: NodeLiveness
    data: MemoryConnection
    lease: MemoryConnection | None
    events: list[tuple[float, str, tuple[Any, ...]]] = field(default_factory=list)

    def log(self, kind: str, *args: Any) -> None:
        self.events.append((now(), kind, args))

    def when(self, kind: str) -> list[float]:
        return [t for t, k, _ in self.events if k == kind]

    def seen(self, kind: str) -> list[tuple[Any, ...]]:
        return [args for _, k, args in self.events if k == kind]

    def downs(self, node_id: str) -> list[tuple[float, str, int]]:
        """``(time, reason, incarnation)`` of every ``on_node_down`` for ``node_id``."""
        return [
            (t, args[1], args[0].incarnation)
            for t, k, args in self.events
            if k == "down" and args[0].id == node_id
        ]

    def ups(self, node_id: str) -> list[tuple[float, int]]:
        return [
            (t, args[0].incarnation)
            for t, k, args in self.events
            if k == "up" and args[0].id == node_id
        ]

    @property
    def renewer(self) -> LeaseRenewer:
        assert self.liveness.renewer is not None
        return self.liveness.renewer

    @property
    def death_watch(self) -> PeerDeathWatch:
        assert self.liveness.death_watch is not None
        return self.liveness.death_watch

    def record(self, node_id: str) -> NodeRecord:
        """``node_id``'s record in this node's membership cache."""
        found = self.liveness.membership.get(node_id)
        assert found is not None
        return found

    def last_renewal_sent(self) -> float:
        """The send time of the newest committed renewal (its lease runs F from it)."""
        return self.renewer.lease.valid_until - F


class Harness:
    def __init__(self, hub: MemoryTransport, clock: VirtualClock) -> None:
        self.hub = hub
        self.clock = clock
        self.telemetry = Telemetry()
        self.recorder = EventRecorder(maxlen=10_000)
        self.telemetry.attach("agentcluster", self.recorder)
        self.nodes: dict[str, Node] = {}
        self._all: list[Node] = []

    async def start(
        self,
        node_id: str,
        *,
        conn_name: str | None = None,
        role: Role = "node",
        labels: Mapping[str, str] | None = None,
    ) -> Node:
        name = conn_name or node_id
        data = await self.hub.connect(name)
        lease = await self.hub.connect(name) if role == "node" else None
        holder: list[Node] = []

        def log(kind: str) -> Callable[..., None]:
            def hook(*args: Any) -> None:
                holder[0].log(kind, *args)

            return hook

        hooks = LivenessHooks(
            on_pause=log("pause"),
            on_resume=log("resume"),
            on_superseded=log("superseded"),
            on_rejoin=log("rejoin"),
            on_node_up=log("up"),
            on_node_down=log("down"),
            on_elected=log("elected"),
            on_deposed=log("deposed"),
        )
        liveness = NodeLiveness(
            data,
            lease,
            JoinSpec(
                node_id,
                labels=dict(labels or {"zone": "z1", "region": "r1"}),
                capabilities=("compute",),
                capacity={"cpu": 4.0},
                version="test",
            ),
            role=role,
            timing=TIMING,
            clock=self.clock,
            hooks=hooks,
            telemetry=self.telemetry,
            storage="memory",
        )
        node = Node(node_id, name, liveness, data, lease)
        holder.append(node)
        await liveness.start()
        self.nodes[node_id] = node
        self._all.append(node)
        return node

    async def stop(self, node: Node) -> None:
        """Stop a process without leaving: its record stays as it was."""
        await node.liveness.stop()
        await node.data.close()
        if node.lease is not None:
            await node.lease.close()

    async def kill(self, node: Node) -> None:
        """Kill a process: its connections drop abruptly and its components are gone."""
        self.hub.faults.kill(node.conn_name)
        await node.liveness.stop()

    def members(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.liveness.role == "node"]

    def events(self, *name: str) -> list[RecordedEvent]:
        return self.recorder.events(("agentcluster", "cluster", *name))

    async def close(self) -> None:
        for node in self._all:
            await node.liveness.stop()
        await self.hub.close()


@pytest.fixture(autouse=True)
def _fast() -> Iterator[None]:
    """Each scenario simulates seconds; it must take well under a second of real time."""
    began = time.perf_counter()
    yield
    assert time.perf_counter() - began < 2.0


@pytest.fixture
async def cluster() -> AsyncIterator[Harness]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualEventLoop)
    harness = Harness(MemoryTransport(seed="liveness"), VirtualClock(loop))
    yield harness
    await harness.close()


__all__ = ["EPS", "TIMING", "F", "Harness", "M", "Node", "NodeRecord", "NodeSuperseded", "R", "now"]
