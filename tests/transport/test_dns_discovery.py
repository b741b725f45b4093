"""``DnsDiscovery`` over real sockets, against a tiny DNS server on 127.0.0.1.

Here rather than under tests/cluster, whose virtual-time loop refuses real sockets. The
server answers from a zone dict over UDP (and over TCP on the same port, for answers that
do not fit a datagram); ``mode`` makes it misbehave. It speaks through ``core.dns``, whose
byte layout ``tests/core/test_dns.py`` pins against hand-built packets.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from agentcluster.cluster.discovery import DnsDiscovery, discovery_from
from agentcluster.core.dns import (
    DnsMessage,
    DnsRecord,
    Rcode,
    RecordType,
    SrvRecord,
    decode_message,
    encode_message,
)
from agentcluster.errors import DiscoveryFailed, MalformedDnsMessage
from agentcluster.testing.ports import LOOPBACK, free_port

SRV_NAME = "_nats._tcp.cluster.test"
ZONE: dict[tuple[str, int], tuple[DnsRecord, ...]] = {
    ("nats.cluster.test", RecordType.A): (
        DnsRecord("nats.cluster.test", RecordType.A, 30, "10.0.0.1"),
        DnsRecord("nats.cluster.test", RecordType.A, 30, "10.0.0.2"),
    ),
    ("nats.cluster.test", RecordType.AAAA): (
        DnsRecord("nats.cluster.test", RecordType.AAAA, 30, "fd00::1"),
    ),
    (SRV_NAME, RecordType.SRV): (
        DnsRecord(SRV_NAME, RecordType.SRV, 30, SrvRecord(20, 0, 4223, "n3.cluster.test")),
        DnsRecord(SRV_NAME, RecordType.SRV, 30, SrvRecord(10, 60, 4222, "n1.cluster.test")),
        DnsRecord(SRV_NAME, RecordType.SRV, 30, SrvRecord(10, 40, 4222, "n2.cluster.test")),
    ),
}


@dataclass
class Nameserver(asyncio.DatagramProtocol):
    """``mode``: ``answer``; ``silent`` (never answers); ``garbage`` (a packet with the
    query's id that does not decode); ``servfail``; ``truncate`` (UDP answers carry the TC
    flag and no records, TCP answers in full); ``stranger_first`` (an answer with another id
    before the real one)."""

    mode: str = "answer"
    udp_queries: list[DnsMessage] = field(default_factory=list)
    tcp_queries: list[DnsMessage] = field(default_factory=list)
    transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def reply(self, query: DnsMessage) -> DnsMessage:
        (question,) = query.questions
        records = ZONE.get((question.name.lower(), question.rtype), ())
        known = any(name == question.name.lower() for name, _ in ZONE)
        return DnsMessage(
            id=query.id,
            questions=query.questions,
            answers=records,
            response=True,
            recursion_desired=query.recursion_desired,
            recursion_available=True,
            rcode=Rcode.NOERROR if known else Rcode.NXDOMAIN,
        )

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = decode_message(data)
        self.udp_queries.append(query)
        answer = self.reply(query)
        if self.mode == "silent":
            return
        if self.mode == "garbage":
            self.transport.sendto(data[:2] + b"\x81\x80\x00\x01", addr)
            return
        if self.mode == "servfail":
            answer = replace(answer, answers=(), rcode=Rcode.SERVFAIL)
        if self.mode == "truncate":
            answer = replace(answer, answers=(), truncated=True)
        if self.mode == "stranger_first":
            stranger = replace(answer, id=(query.id + 1) % 0x10000)
            self.transport.sendto(b"junk that does not decode", addr)
            self.transport.sendto(encode_message(stranger), addr)
        self.transport.sendto(encode_message(answer), addr)

    async def serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            query = decode_message(await reader.readexactly(size))
            self.tcp_queries.append(query)
            payload = encode_message(self.reply(query))
            writer.write(len(payload).to_bytes(2, "big") + payload)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def nameserver() -> AsyncIterator[tuple[Nameserver, str]]:
    loop = asyncio.get_running_loop()
    server = Nameserver()
    for _ in range(5):  # another process may take the port between the check and the bind
        port = free_port()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: server, local_addr=(LOOPBACK, port)
            )
        except OSError:
            continue
        try:
            tcp = await asyncio.start_server(server.serve_tcp, LOOPBACK, port)
        except OSError:
            transport.close()
            continue
        break
    else:
        pytest.fail("no free port for the test nameserver")
    try:
        yield server, f"{LOOPBACK}:{port}"
    finally:
        transport.close()
        tcp.close()
        await tcp.wait_closed()


async def test_a_records_become_servers_with_the_port(nameserver: tuple[Nameserver, str]) -> None:
    server, address = nameserver
    strategy = DnsDiscovery("nats.cluster.test", port=6222, nameserver=address)
    found = await strategy.discover()
    assert found.servers == ("nats://10.0.0.1:6222", "nats://10.0.0.2:6222")
    assert len(server.udp_queries) == 1
    (question,) = server.udp_queries[0].questions
    assert (question.name, question.rtype) == ("nats.cluster.test", RecordType.A)


async def test_aaaa_records(nameserver: tuple[Nameserver, str]) -> None:
    _, address = nameserver
    found = await discovery_from(f"dns+aaaa:nats.cluster.test@{address}").discover()
    assert found.servers == ("nats://[fd00::1]:4222",)


async def test_srv_records_in_priority_then_weighted_order(
    nameserver: tuple[Nameserver, str],
) -> None:
    _, address = nameserver
    orders = set()
    for seed in range(12):
        strategy = discovery_from(f"dns+srv:{SRV_NAME}@{address}", rng=random.Random(seed))
        found = await strategy.discover()
        assert set(found.servers[:2]) == {
            "nats://n1.cluster.test:4222",
            "nats://n2.cluster.test:4222",
        }
        assert found.servers[2] == "nats://n3.cluster.test:4223"
        again = discovery_from(f"dns+srv:{SRV_NAME}@{address}", rng=random.Random(seed))
        assert (await again.discover()) == found  # the same seed, the same order
        orders.add(found.servers)
    assert len(orders) == 2  # the weights within priority 10 do get drawn


async def test_a_truncated_answer_is_asked_again_over_tcp(
    nameserver: tuple[Nameserver, str],
) -> None:
    server, address = nameserver
    server.mode = "truncate"
    found = await DnsDiscovery(SRV_NAME, record="SRV", nameserver=address).discover()
    assert len(found.servers) == 3
    assert len(server.udp_queries) == 1
    assert len(server.tcp_queries) == 1
    assert server.tcp_queries[0].id == server.udp_queries[0].id


async def test_nxdomain_is_a_retryable_failure(nameserver: tuple[Nameserver, str]) -> None:
    _, address = nameserver
    with pytest.raises(DiscoveryFailed, match="NXDOMAIN") as caught:
        await DnsDiscovery("missing.cluster.test", nameserver=address).discover()
    assert caught.value.retryable


async def test_a_silent_nameserver_fails_within_the_timeout_after_bounded_tries(
    nameserver: tuple[Nameserver, str],
) -> None:
    server, address = nameserver
    server.mode = "silent"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DiscoveryFailed, match=r"no usable answer within 0\.3 s") as caught:
        await DnsDiscovery(
            "nats.cluster.test", nameserver=address, timeout=0.3, attempts=3
        ).discover()
    elapsed = loop.time() - started
    assert 0.25 <= elapsed < 0.3 + 0.2
    assert "did not answer in time" in str(caught.value)
    assert caught.value.retryable
    assert len(server.udp_queries) == 3
    assert len({q.id for q in server.udp_queries}) > 1  # each try a fresh id


async def test_servfail_is_retried_then_reported(nameserver: tuple[Nameserver, str]) -> None:
    server, address = nameserver
    server.mode = "servfail"
    with pytest.raises(DiscoveryFailed, match="answered SERVFAIL"):
        await DnsDiscovery("nats.cluster.test", nameserver=address, attempts=2).discover()
    assert len(server.udp_queries) == 2


async def test_a_packet_that_does_not_decode_raises_the_typed_error(
    nameserver: tuple[Nameserver, str],
) -> None:
    server, address = nameserver
    server.mode = "garbage"
    with pytest.raises(MalformedDnsMessage) as caught:
        await DnsDiscovery("nats.cluster.test", nameserver=address, timeout=5).discover()
    assert "under the 12-byte header" in caught.value.problem
    assert len(server.udp_queries) == 1  # at once, not after retrying for 5 s


async def test_packets_for_another_query_are_ignored(nameserver: tuple[Nameserver, str]) -> None:
    server, address = nameserver
    server.mode = "stranger_first"
    found = await DnsDiscovery("nats.cluster.test", nameserver=address).discover()
    assert found.servers == ("nats://10.0.0.1:4222", "nats://10.0.0.2:4222")


async def test_nobody_listening_fails_without_waiting_out_the_timeout() -> None:
    port = free_port()  # bound by nobody: each try is refused at once (ICMP)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DiscoveryFailed, match="ConnectionRefused"):
        await DnsDiscovery(
            "nats.cluster.test", nameserver=f"{LOOPBACK}:{port}", timeout=5, attempts=2
        ).discover()
    assert loop.time() - started < 2.5


async def test_srv_without_a_nameserver_asks_the_resolv_conf_ones(tmp_path: Any) -> None:
    conf = tmp_path / "resolv.conf"
    # Documentation addresses (RFC 5737, RFC 3849): nobody answers there, wherever this runs.
    conf.write_text("nameserver 192.0.2.1\nnameserver 2001:db8::1\n")
    with pytest.raises(DiscoveryFailed) as caught:
        await DnsDiscovery(
            SRV_NAME, record="SRV", timeout=0.4, attempts=1, resolv_conf=str(conf)
        ).discover()
    message = str(caught.value)
    assert "192.0.2.1:53" in message
    assert "[2001:db8::1]:53" in message


async def test_a_records_through_the_system_resolver() -> None:
    found = await DnsDiscovery("localhost", port=4333).discover()
    assert found.servers == ("nats://127.0.0.1:4333",)


async def test_an_unknown_name_through_the_system_resolver_is_a_failure() -> None:
    with pytest.raises(DiscoveryFailed, match=r"nats\.invalid A") as caught:
        await DnsDiscovery("nats.invalid", timeout=2).discover()
    assert caught.value.retryable
