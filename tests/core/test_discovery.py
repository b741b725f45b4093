"""Discovery decisions: static lists, configuration strings, SRV order, answers to servers."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.discovery import (
    DnsConfig,
    StaticConfig,
    TransportConfig,
    addresses_discovered,
    alive_peers,
    dns_discovered,
    parse_discovery,
    parse_nameserver,
    parse_resolv_conf,
    peer_ids,
    query_schedule,
    server_url,
    server_urls,
    servers_from_addresses,
    servers_from_srv,
    srv_order,
)
from agentcluster.core.dns import DnsMessage, DnsQuestion, DnsRecord, Rcode, RecordType, SrvRecord
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.errors import ConfigurationError, DiscoveryFailed

# --- static lists -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "url"),
    [
        ("nats://10.0.0.1:4222", "nats://10.0.0.1:4222"),
        ("nats://Nats-1.Example.internal:6222", "nats://nats-1.example.internal:6222"),
        ("nats://nats.example", "nats://nats.example:4222"),
        ("tls://nats.example", "tls://nats.example:4222"),
        ("ws://nats.example", "ws://nats.example:80"),
        ("wss://nats.example", "wss://nats.example:443"),
        ("NATS://h:1", "nats://h:1"),
        ("nats://h:65535/", "nats://h:65535"),
        ("nats://[::1]:4222", "nats://[::1]:4222"),
        ("nats://[0:0:0::1]", "nats://[::1]:4222"),
        ("  nats://h:4222 ", "nats://h:4222"),
    ],
)
def test_server_urls_are_normalised_to_scheme_host_port(entry: str, url: str) -> None:
    assert server_url(entry) == url


@pytest.mark.parametrize(
    ("servers", "named", "problem"),
    [
        (["nats://a:4222", "http://b:4222"], "servers[1] 'http://b:4222'", "scheme 'http'"),
        (["nats://a:0"], "servers[0] 'nats://a:0'", "port 0"),
        (["nats://a:65536"], "servers[0] 'nats://a:65536'", "1-65535"),
        (["nats://a:port"], "servers[0] 'nats://a:port'", "1-65535"),
        (["nats://u:secret@a:4222"], "servers[0]", "credentials"),
        (["a:4222"], "servers[0] 'a:4222'", "needs a scheme"),
        (["nats://a:4222/x"], "servers[0]", "without a path"),
        (["nats://a:4222?x=1"], "servers[0]", "without a path"),
        (["nats://:4222"], "servers[0]", "names no host"),
        (["nats://bad!host:4222"], "servers[0]", "neither an IP address nor a name"),
        (["nats://a", "nats://b", "nats://a:4222"], "servers[2] 'nats://a:4222'", "servers[0]"),
        ([""], "servers[0] ''", "not a URL"),
        ([42], "servers[0] 42", "not a URL"),
        (42, "servers: 42", "not a list"),
    ],
)
def test_a_bad_static_server_is_refused_naming_the_entry(
    servers: object, named: str, problem: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        server_urls(servers)
    assert named in str(caught.value)
    assert problem in str(caught.value)


def test_a_refused_url_does_not_show_its_credentials() -> None:
    with pytest.raises(ConfigurationError, match="give them to NatsConfig") as caught:
        StaticConfig(servers=("nats://u:secret@a:4222",))
    assert "'nats://***@a:4222'" in str(caught.value)
    assert "secret" not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        server_url("http://u:secret@a/x")
    assert "secret" not in str(caught.value)


def test_websocket_and_plain_servers_do_not_mix() -> None:
    with pytest.raises(ConfigurationError, match="cannot be mixed"):
        server_urls(["nats://a:4222", "wss://b"])
    assert server_urls(["ws://a", "wss://b"]) == ("ws://a:80", "wss://b:443")


def test_a_comma_separated_string_is_a_list() -> None:
    assert server_urls("nats://a:4222, nats://b ,") == ("nats://a:4222", "nats://b:4222")


@pytest.mark.parametrize(
    ("peers", "named"),
    [
        (["n1", ""], "peers[1] ''"),
        (["n1", "n 2"], "peers[1] 'n 2'"),
        (["n1", 7], "peers[1] 7"),
        (["n1", "n2", "n1"], "peers[2] 'n1': repeats peers[0]"),
    ],
)
def test_a_bad_peer_is_refused_naming_the_entry(peers: list[object], named: str) -> None:
    with pytest.raises(ConfigurationError, match="discovery") as caught:
        peer_ids(peers)
    assert named in str(caught.value)


def test_a_static_config_needs_a_server_or_a_peer() -> None:
    with pytest.raises(ConfigurationError, match="no servers and no peers"):
        StaticConfig()
    assert StaticConfig(peers=("n1", "n2")).discovered().peers == ("n1", "n2")
    found = StaticConfig(servers=("nats://a", "tls://b:5222")).discovered()
    assert found.servers == ("nats://a:4222", "tls://b:5222")
    assert found.peers == ()


# --- configuration strings and mappings ---------------------------------------------------


@pytest.mark.parametrize(
    ("config", "parsed"),
    [
        (None, TransportConfig()),
        ("", TransportConfig()),
        ("transport", TransportConfig()),
        (
            "static:nats://a:4222,nats://b",
            StaticConfig(servers=("nats://a:4222", "nats://b:4222")),
        ),
        ("dns:nats.example.internal", DnsConfig("nats.example.internal")),
        ("DNS+A:nats.example.internal.", DnsConfig("nats.example.internal")),
        ("dns:nats.example.internal:6222", DnsConfig("nats.example.internal", port=6222)),
        ("dns+aaaa:nats.example.internal", DnsConfig("nats.example.internal", record="AAAA")),
        (
            "dns+srv:_nats._tcp.example.internal",
            DnsConfig("_nats._tcp.example.internal", record="SRV"),
        ),
        (
            "dns+srv:_nats._tcp.example.internal@10.0.0.2:5353",
            DnsConfig("_nats._tcp.example.internal", record="SRV", nameserver=("10.0.0.2", 5353)),
        ),
        (
            "dns:nats.internal@[fd00::2]",
            DnsConfig("nats.internal", nameserver=("fd00::2", 53)),
        ),
        (
            {"strategy": "static", "servers": ["nats://a:4222"], "peers": ["n1"]},
            StaticConfig(servers=("nats://a:4222",), peers=("n1",)),
        ),
        (
            {
                "strategy": "dns",
                "name": "_nats._tcp.x",
                "record": "srv",
                "nameserver": "10.0.0.2",
                "timeout": 1,
                "attempts": 2,
                "scheme": "tls",
            },
            DnsConfig(
                "_nats._tcp.x",
                record="SRV",
                nameserver=("10.0.0.2", 53),
                timeout=1,
                attempts=2,
                scheme="tls",
            ),
        ),
        ({"strategy": "transport"}, TransportConfig()),
        ({}, TransportConfig()),
        (
            {"strategy": "transport", "servers": "nats://a"},
            TransportConfig(servers=("nats://a:4222",)),
        ),
    ],
)
def test_parse_discovery(config: Any, parsed: object) -> None:
    assert parse_discovery(config) == parsed


def test_a_parsed_config_passes_through() -> None:
    config = DnsConfig("x.example")
    assert parse_discovery(config) is config


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("gossip", "is not one of transport"),
        ("static", "is not one of transport"),
        ("nats://a:4222", "did you mean 'static:nats://a:4222'"),
        ("static:", "no servers and no peers"),
        ("static:http://a", "servers[0] 'http://a'"),
        ("dns:", "not a DNS name"),
        ("dns:bad_name!", "label 'bad_name!'"),
        ("dns:nats.internal:http", "port 'http' is not a number"),
        ("dns:nats.internal:0", "port 0"),
        ("dns+srv:_nats._tcp.x:4222", "carry their own ports"),
        ("dns:nats.internal@resolver.internal", "not an IP address"),
        ("dns:nats.internal@10.0.0.2:99999", "port must be 1-65535"),
        ({"strategy": "multicast"}, "strategy 'multicast'"),
        ({"strategy": "static", "server": ["nats://a"]}, "unknown setting 'server'"),
        ({"strategy": "dns"}, "'name' is required"),
        ({"strategy": "dns", "name": "x", "record": "MX"}, "must be A, AAAA or SRV"),
        ({"strategy": "dns", "name": "x", "timeout": 0}, "timeout 0"),
        ({"strategy": "dns", "name": "x", "timeout": float("nan")}, "timeout nan"),
        ({"strategy": "dns", "name": "x", "attempts": 0}, "attempts 0"),
        ({"strategy": "dns", "name": "x", "port": True}, "port True"),
        ({"strategy": "dns", "name": "x", "scheme": "http"}, "scheme 'http'"),
        (42, "give a string or a mapping"),
    ],
)
def test_bad_discovery_configs_say_what_is_wrong(config: Any, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_discovery(config)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("text", "server"),
    [
        ("10.0.0.2", ("10.0.0.2", 53)),
        ("10.0.0.2:5353", ("10.0.0.2", 5353)),
        ("fd00::2", ("fd00::2", 53)),
        ("[fd00:0::2]:5353", ("fd00::2", 5353)),
        ("[::1]", ("::1", 53)),
    ],
)
def test_parse_nameserver(text: str, server: tuple[str, int]) -> None:
    assert parse_nameserver(text) == server


@pytest.mark.parametrize("text", ["", "dns.internal", "[::1", "[::1]x", "10.0.0.2:0", "1.2.3.4:x"])
def test_bad_nameservers_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="nameserver"):
        parse_nameserver(text)


def test_resolv_conf_nameservers_in_order_skipping_what_does_not_parse() -> None:
    text = """
# generated
search example.internal
nameserver 10.0.0.2   # primary
nameserver fe80::1%eth0
nameserver not-an-address
;nameserver 10.9.9.9
options ndots:5
nameserver 10.0.0.3
"""
    assert parse_resolv_conf(text) == (("10.0.0.2", 53), ("fe80::1", 53), ("10.0.0.3", 53))
    assert parse_resolv_conf("search x\n") == (("127.0.0.1", 53),)


def test_query_schedule_rounds_over_the_nameservers_within_the_timeout() -> None:
    servers = (("10.0.0.2", 53), ("10.0.0.3", 53))
    plan = query_schedule(servers, attempts=3, timeout=1.2)
    assert [server for server, _ in plan] == list(servers) * 3
    assert sum(wait for _, wait in plan) == pytest.approx(1.2)
    with pytest.raises(ValueError):
        query_schedule((), attempts=1, timeout=1.0)


# --- SRV order (RFC 2782) -----------------------------------------------------------------


def srv(target: str, priority: int = 10, weight: int = 0, port: int = 4222) -> SrvRecord:
    return SrvRecord(priority, weight, port, target)


def test_lower_priorities_come_first_and_dot_targets_are_dropped() -> None:
    records = [srv("c", 20, 5), srv("a", 10, 1), srv(".", 5), srv("b", 10, 3)]
    ordered = srv_order(records, random.Random(1))
    assert [r.priority for r in ordered] == [10, 10, 20]
    assert {r.target for r in ordered[:2]} == {"a", "b"}
    assert ordered[2].target == "c"


def test_the_order_depends_only_on_the_records_and_the_seed() -> None:
    records = [srv(t, 10, w) for t, w in [("a", 10), ("b", 20), ("c", 30), ("d", 0), ("e", 40)]]
    first = srv_order(records, random.Random("seed"))
    assert srv_order(list(reversed(records)), random.Random("seed")) == first
    assert srv_order(records, random.Random("seed")) == first
    orders = {srv_order(records, random.Random(n)) for n in range(50)}
    assert len(orders) > 5  # the seed really drives it


def first_pick_oracle(records: list[SrvRecord]) -> dict[str, float]:
    """RFC 2782 by the letter: weight-0 records first, then the rest (in target order); a
    draw in [0, total] picks the first record whose running sum reaches it."""
    running = sorted(records, key=lambda r: (r.weight != 0, r.target))
    total = sum(r.weight for r in running)
    chances = {r.target: r.weight / (total + 1) for r in running}
    chances[running[0].target] += 1 / (total + 1)  # a draw of 0 picks the first in the list
    return chances


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 10, "b": 30, "c": 60},
        {"a": 0, "b": 10},
        {"a": 0, "b": 0, "c": 0},
        {"a": 1, "b": 1, "c": 1, "d": 97},
    ],
)
def test_within_a_priority_first_picks_follow_the_weights(weights: dict[str, int]) -> None:
    records = [srv(target, 10, weight) for target, weight in weights.items()]
    rng = random.Random(f"weights{weights}")
    draws = 20_000
    firsts = Counter(srv_order(records, rng)[0].target for _ in range(draws))
    for target, chance in first_pick_oracle(records).items():
        assert firsts[target] / draws == pytest.approx(chance, abs=0.015), target


@given(
    st.lists(
        st.builds(
            SrvRecord,
            st.integers(0, 3),
            st.integers(0, 5),
            st.integers(1, 3),
            st.sampled_from(["a", "b", "c", "."]),
        ),
        max_size=8,
    ),
    st.integers(),
)
def test_srv_order_is_a_priority_sorted_permutation_of_the_usable_records(
    records: list[SrvRecord], seed: int
) -> None:
    ordered = srv_order(records, random.Random(seed))
    assert Counter(ordered) == Counter(r for r in records if r.target != ".")
    assert [r.priority for r in ordered] == sorted(r.priority for r in ordered)


def test_srv_servers_are_urls_of_target_and_port_each_once() -> None:
    records = [
        srv("B.example.", 10, port=6222),
        srv("a.example", 20),
        srv("b.example", 10, 0, 6222),
    ]
    assert servers_from_srv(records, random.Random(0), scheme="tls") == (
        "tls://b.example:6222",
        "tls://a.example:4222",
    )


# --- answers to servers ----------------------------------------------------------------------


def answer(config: DnsConfig, *records: DnsRecord, rcode: int = Rcode.NOERROR) -> DnsMessage:
    return DnsMessage(
        id=1,
        questions=(DnsQuestion(config.name, config.rtype),),
        answers=records,
        response=True,
        rcode=rcode,
    )


def test_address_answers_become_urls_with_the_configured_port() -> None:
    config = DnsConfig("nats.example", port=6222)
    response = answer(
        config,
        DnsRecord("nats.example", RecordType.CNAME, 60, "pool.example"),
        DnsRecord("pool.example", RecordType.A, 60, "10.0.0.2"),
        DnsRecord("pool.example", RecordType.A, 60, "10.0.0.1"),
        DnsRecord("pool.example", RecordType.A, 60, "10.0.0.2"),
    )
    found = dns_discovered(response, config, random.Random(0))
    assert found.servers == ("nats://10.0.0.2:6222", "nats://10.0.0.1:6222")
    assert found.peers == ()


def test_aaaa_answers_are_bracketed() -> None:
    config = DnsConfig("nats.example", record="AAAA")
    response = answer(config, DnsRecord("nats.example", RecordType.AAAA, 60, "fd00::7"))
    assert dns_discovered(response, config, random.Random(0)).servers == ("nats://[fd00::7]:4222",)


def test_srv_answers_become_urls_in_rfc_2782_order() -> None:
    config = DnsConfig("_nats._tcp.example", record="SRV")
    response = answer(
        config,
        DnsRecord(config.name, RecordType.SRV, 60, srv("n2.example", 20, port=4223)),
        DnsRecord(config.name, RecordType.SRV, 60, srv("n1.example", 10, port=4222)),
    )
    assert dns_discovered(response, config, random.Random(0)).servers == (
        "nats://n1.example:4222",
        "nats://n2.example:4223",
    )


@pytest.mark.parametrize(
    ("config", "records", "rcode", "problem"),
    [
        (DnsConfig("nats.example"), (), Rcode.NXDOMAIN, "does not exist (NXDOMAIN)"),
        (DnsConfig("nats.example"), (), Rcode.NOERROR, "no records"),
        (
            DnsConfig("nats.example"),
            (DnsRecord("other.example", RecordType.A, 60, "10.0.0.1"),),
            Rcode.NOERROR,
            "no records",
        ),
        (
            DnsConfig("_nats._tcp.example", record="SRV"),
            (DnsRecord("_nats._tcp.example", RecordType.SRV, 60, srv(".")),),
            Rcode.NOERROR,
            "not offered (target '.')",
        ),
    ],
)
def test_an_answer_without_servers_is_a_retryable_failure(
    config: DnsConfig, records: tuple[DnsRecord, ...], rcode: int, problem: str
) -> None:
    with pytest.raises(DiscoveryFailed) as caught:
        dns_discovered(answer(config, *records, rcode=rcode), config, random.Random(0))
    assert problem in str(caught.value)
    assert config.name in str(caught.value)
    assert caught.value.retryable
    assert caught.value.strategy == "dns"


def test_system_resolver_addresses() -> None:
    config = DnsConfig("nats.example", port=4333)
    found = addresses_discovered(["10.0.0.1", "fe80::1%eth0", "10.0.0.1"], config)
    assert found.servers == ("nats://10.0.0.1:4333", "nats://[fe80::1]:4333")
    with pytest.raises(DiscoveryFailed, match="no addresses"):
        addresses_discovered([], config)
    assert servers_from_addresses(["::1"], 1, scheme="wss") == ("wss://[::1]:1",)


# --- the transport strategy -----------------------------------------------------------------


def test_alive_peers_are_the_alive_records_sorted() -> None:
    records = {
        node: NodeRecord(node, 1, status=status)
        for node, status in [
            ("n3", NodeStatus.ALIVE),
            ("n1", NodeStatus.ALIVE),
            ("n2", NodeStatus.DEAD),
            ("n4", NodeStatus.LEFT),
        ]
    }
    assert alive_peers(records) == ("n1", "n3")
    assert alive_peers({}) == ()
