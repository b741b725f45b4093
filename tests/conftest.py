"""Shared test configuration: real ``nats-server`` processes for the tests that need them.

- ``nats_server_bin`` (session): the binary; missing → skip with the install hint, or fail
  when ``CI=true`` (never a silent skip under CI).
- ``nats_server`` / ``nats_url`` (session): one JetStream server shared by the session. Tests
  must not stop or restart it; use unique bucket and subject names.
- ``fresh_nats_server`` (function): a server of the test's own, to kill and restart.
- ``nats_cluster`` (function): a fresh 3-server JetStream cluster per test.

Every server is stopped by PID after its scope, also when the test failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agentcluster.testing.nats_server import (
    INSTALL_HINT,
    NatsCluster,
    NatsServer,
    find_nats_server,
)


@pytest.fixture(scope="session")
def nats_server_bin() -> str:
    found = find_nats_server()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {INSTALL_HINT}", pytrace=False)
        pytest.skip(INSTALL_HINT)
    return found


@pytest.fixture(scope="session")
def nats_server(
    nats_server_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-session"), binary=nats_server_bin)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def fresh_nats_server(
    nats_server_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-fresh"), binary=nats_server_bin)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(
    nats_server_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path_factory.mktemp("nats-cluster"), size=3, binary=nats_server_bin)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
