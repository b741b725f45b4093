"""Every async test here runs on a ``VirtualEventLoop`` seeded with its node id,
so sleeps and timeouts cost no real time and a run replays exactly."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping

import pytest

from agentcluster.sim import new_virtual_loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"virtual": functools.partial(new_virtual_loop, seed=item.nodeid)}
