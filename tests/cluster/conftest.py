"""Nodes wired through the memory transport, on a virtual-time loop.

The loop hook below covers every test under ``tests/cluster``.

Every async test here runs on a ``VirtualEventLoop`` seeded with its node id, so ack
timeouts, back-offs and deadlines cost no real time and a run replays exactly. ``world``
builds nodes — each its own ``LocalNode``, connection and ``Router`` — that share one
``MemoryTransport`` and one registry (``placements``); ``views`` lets a node see a stale
or different registry entry than the others.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentcluster.agent.agent import Agent
from agentcluster.agent.node import LocalNode
from agentcluster.cluster.routing import Placement, Router, RouterConfig
from agentcluster.sim import VirtualClock, new_virtual_loop
from agentcluster.transport.memory import MemoryConnection, MemoryTransport


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"virtual": functools.partial(new_virtual_loop, seed=item.nodeid)}


@dataclass
class Peer:
    name: str
    node: LocalNode
    conn: MemoryConnection
    router: Router

    async def start(self, agent: type[Agent], agent_id: str, **options: Any) -> str:
        return await self.node.start_agent(agent, agent_id, **options)


@dataclass
class World:
    hub: MemoryTransport
    placements: dict[str, Placement] = field(default_factory=dict)
    views: dict[str, dict[str, Placement | None]] = field(default_factory=dict)
    peers: dict[str, Peer] = field(default_factory=dict)

    def resolve(self, viewer: str, agent_id: str) -> Placement | None:
        view = self.views.get(viewer)
        if view is not None and agent_id in view:
            return view[agent_id]
        return self.placements.get(agent_id)

    async def add(self, name: str, *, config: RouterConfig | None = None) -> Peer:
        loop = asyncio.get_running_loop()
        node = LocalNode(name, clock=VirtualClock(loop), seed=name)
        conn = await self.hub.connect(name)
        router = Router(name, 1, conn, node, functools.partial(self.resolve, name), config=config)
        await router.start()
        peer = self.peers[name] = Peer(name, node, conn, router)
        return peer

    async def place(self, peer: Peer, agent: type[Agent], agent_id: str, **options: Any) -> str:
        """Start an agent on ``peer`` and register it there."""
        await peer.start(agent, agent_id, **options)
        self.placements[agent_id] = Placement(peer.name, 1)
        return agent_id

    async def close(self) -> None:
        for peer in self.peers.values():
            await peer.router.stop()
            await peer.node.stop()
        await self.hub.close()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World(MemoryTransport(seed="routing"))
    yield w
    await w.close()
