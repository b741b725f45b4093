"""Backends for the transport tests: the conformance suite runs on memory and NATS, each on
the standard event loop and on uvloop (they order callbacks differently)."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import uvloop

from agentcluster.transport.interface import Connection

_CONFORMANCE_LOOPS: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if "conformance" in item.nodeid:
        return _CONFORMANCE_LOOPS
    return {"asyncio": asyncio.new_event_loop}


class _Substrate:
    """One test's view of a backend: connections it closes afterwards, names no one shares."""

    _run = itertools.count()

    def __init__(self, kind: str, connect: Callable[[str], object], test_name: str) -> None:
        self.kind = kind
        self._connect = connect
        self._connections: list[Connection] = []
        self._prefix = re.sub(r"[^A-Za-z0-9]", "", test_name)[-24:] + str(next(self._run))
        self._names = itertools.count()

    async def connect(self, name: str) -> Connection:
        conn = await self._connect(name)  # type: ignore[misc]
        self._connections.append(conn)
        return conn  # type: ignore[no-any-return]

    def unique(self, base: str) -> str:
        return f"{base}{self._prefix}n{next(self._names)}"

    async def close(self) -> None:
        for conn in self._connections:
            await conn.close()


@pytest.fixture(params=["memory", "nats"])
async def substrate(request: pytest.FixtureRequest) -> AsyncIterator[_Substrate]:
    if request.param == "memory":
        from agentcluster.transport.memory import MemoryTransport

        hub = MemoryTransport(seed=request.node.name)
        sub = _Substrate("memory", hub.connect, request.node.name)
    else:
        from agentcluster.transport.nats import NatsConfig, connect

        url: str = request.getfixturevalue("nats_url")

        async def connect_nats(name: str) -> Connection:
            return await connect(NatsConfig(servers=[url], name=name))

        sub = _Substrate("nats", connect_nats, request.node.name)
    try:
        yield sub
    finally:
        await sub.close()
