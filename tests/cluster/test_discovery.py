"""Discovery shells that need no socket: static lists, the transport strategy over a members
provider, the factory. (DNS over real sockets is in tests/transport/test_dns_discovery.py:
this directory runs on the virtual-time loop, which refuses real I/O.)"""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from agentcluster.cluster.discovery import (
    Discovery,
    DnsDiscovery,
    StaticDiscovery,
    TransportDiscovery,
    discovery_from,
)
from agentcluster.core.discovery import Discovered, DnsConfig
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.errors import ConfigurationError


class Members:
    """A members provider, as ``Membership`` is one: a dict of node records."""

    def __init__(self) -> None:
        self.records: dict[str, NodeRecord] = {}

    def set(self, node: str, status: NodeStatus, incarnation: int = 1) -> None:
        self.records[node] = NodeRecord(node, incarnation, status=status)

    def members(self) -> Mapping[str, NodeRecord]:
        return dict(self.records)


async def test_static_discovery_returns_the_checked_list() -> None:
    strategy = StaticDiscovery("nats://a,nats://b:5222", peers=["n1", "n2"])
    assert await strategy.discover() == Discovered(
        servers=("nats://a:4222", "nats://b:5222"), peers=("n1", "n2")
    )
    assert isinstance(strategy, Discovery)


def test_static_discovery_refuses_a_bad_entry_when_built() -> None:
    with pytest.raises(ConfigurationError, match=r"servers\[1\] 'nats://b:0'"):
        StaticDiscovery(["nats://a", "nats://b:0"])


async def test_transport_discovery_follows_the_alive_members() -> None:
    members = Members()
    members.set("n2", NodeStatus.ALIVE)
    members.set("n1", NodeStatus.ALIVE)
    members.set("n3", NodeStatus.DEAD)
    strategy = TransportDiscovery(members, servers=["nats://10.0.0.1:4222"])
    assert await strategy.discover() == Discovered(
        servers=("nats://10.0.0.1:4222",), peers=("n1", "n2")
    )
    members.set("n2", NodeStatus.LEFT)
    members.set("n3", NodeStatus.ALIVE, incarnation=2)
    members.set("n4", NodeStatus.ALIVE)
    assert (await strategy.discover()).peers == ("n1", "n3", "n4")


async def test_the_factory_builds_each_strategy() -> None:
    members = Members()
    members.set("n1", NodeStatus.ALIVE)
    default = discovery_from(membership=members, servers="nats://a")
    assert isinstance(default, TransportDiscovery)
    assert await default.discover() == Discovered(servers=("nats://a:4222",), peers=("n1",))

    own = discovery_from(
        {"strategy": "transport", "servers": ["nats://b"]}, membership=members, servers="nats://a"
    )
    assert (await own.discover()).servers == ("nats://b:4222",)

    static = discovery_from("static:nats://a:4222")
    assert isinstance(static, StaticDiscovery)
    assert (await static.discover()).servers == ("nats://a:4222",)

    dns = discovery_from("dns+srv:_nats._tcp.example@10.0.0.2", rng=random.Random(0))
    assert isinstance(dns, DnsDiscovery)
    assert dns.config == DnsConfig("_nats._tcp.example", record="SRV", nameserver=("10.0.0.2", 53))


def test_transport_discovery_needs_the_membership() -> None:
    with pytest.raises(ConfigurationError, match="pass membership="):
        discovery_from("transport")


def test_a_bad_factory_config_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'static:nats://a:4222'"):
        discovery_from("nats://a:4222")


def test_dns_discovery_checks_its_settings_when_built() -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        DnsDiscovery("nats.example", timeout=-1)
    with pytest.raises(ConfigurationError, match="nameserver"):
        DnsDiscovery("nats.example", nameserver="resolver.example")
    assert DnsDiscovery("nats.example", nameserver="[::1]:5353").config.nameserver == ("::1", 5353)
    assert "@[::1]:5353" in repr(DnsDiscovery("nats.example", nameserver="[::1]:5353"))
