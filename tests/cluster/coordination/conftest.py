"""Shared by the lock, barrier and election tests: a 3-node ``Cluster.local`` in virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentcluster.cluster import Cluster
from agentcluster.sim import VirtualClock


def now() -> float:
    return asyncio.get_running_loop().time()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with Cluster.local(nodes=3, clock=VirtualClock(asyncio.get_running_loop())) as c:
        yield c
