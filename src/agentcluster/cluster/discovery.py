"""Discovery strategies: where the NATS servers are, and which nodes to expect.

Each strategy is a ``Discovery``: ``await strategy.discover()`` returns a ``Discovered``
(``servers``: NATS URLs to connect to; ``peers``: node ids expected in the cluster) or
raises ``DiscoveryFailed`` (retryable: records appear, nameservers come back) or
``ConfigurationError`` (built from a bad setting). The decisions are in
``core.discovery`` and ``core.dns``; this module only waits, sends and reads.

- ``StaticDiscovery(servers, peers=())`` — a configured list, checked when built.
- ``DnsDiscovery(name, record="A", port=4222, nameserver=None, timeout=3.0, attempts=3)`` —
  ``A`` / ``AAAA``: the addresses of ``name``, each with ``port``; without a
  ``nameserver`` they come from the system resolver (``loop.getaddrinfo``: ``/etc/hosts``,
  search domains and all). ``SRV``: hosts and ports from the records, ordered by RFC 2782
  (priority, then weighted random from ``rng``). A query of our own goes over UDP to
  ``nameserver`` (``"10.0.0.2"``, ``"10.0.0.2:5353"``, ``"[fd00::2]:53"``), or to the
  nameservers of ``/etc/resolv.conf`` in turn, ``attempts`` rounds in all; an answer
  with the truncation flag is asked again over TCP. The whole lookup ends within
  ``timeout`` seconds. A packet from the nameserver that does not decode raises
  ``MalformedDnsMessage`` at once.
- ``TransportDiscovery(membership, servers=())`` — the default, through the substrate
  itself: the peers are the alive records of the cluster's ``nodes`` bucket (as
  ``membership.members()`` caches them: a hint, not a quorum read), the servers the ones
  the node already connected with (a NATS client learns the rest of a NATS cluster from
  the first server it reaches).

``discovery_from(config)`` builds one from a string or a mapping (grammar in
``core.discovery.parse_discovery``): ``"transport"`` (the default, also ``None``),
``"static:nats://a:4222,nats://b:4222"``, ``"dns:nats.example.internal"`` (``:port`` after
the name to change 4222), ``"dns+aaaa:…"``, ``"dns+srv:_nats._tcp.example.internal"``,
each dns form optionally ending in ``@nameserver``; or
``{"strategy": "dns", "name": …, "record": "SRV", "nameserver": …, "timeout": …}``.
``transport`` needs the node's membership, so it can only be built once connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from agentcluster.core.discovery import (
    DEFAULT_DNS_ATTEMPTS,
    DEFAULT_DNS_TIMEOUT,
    DEFAULT_PORT,
    Discovered,
    DiscoveryConfig,
    DnsConfig,
    Nameserver,
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
    server_urls,
)
from agentcluster.core.dns import (
    DnsMessage,
    DnsVerdict,
    Rcode,
    decode_message,
    dns_query,
    encode_message,
    judge_response,
)
from agentcluster.core.membership import NodeRecord
from agentcluster.errors import ConfigurationError, DiscoveryFailed, MalformedDnsMessage

__all__ = [
    "RESOLV_CONF",
    "Discovery",
    "DnsDiscovery",
    "MemberSource",
    "StaticDiscovery",
    "TransportDiscovery",
    "discovery_from",
]

RESOLV_CONF = "/etc/resolv.conf"


@runtime_checkable
class Discovery(Protocol):
    """A discovery strategy."""

    async def discover(self) -> Discovered: ...


class MemberSource(Protocol):
    """What ``TransportDiscovery`` reads: ``cluster.membership.Membership`` has it."""

    def members(self) -> Mapping[str, NodeRecord]: ...


class StaticDiscovery:
    """A configured list of servers (and optionally of peers); a bad entry is refused here,
    naming it."""

    def __init__(self, servers: Iterable[str] | str = (), peers: Iterable[str] | str = ()) -> None:
        self.config = StaticConfig(servers=server_urls(servers), peers=peer_ids(peers))

    @classmethod
    def from_config(cls, config: StaticConfig) -> StaticDiscovery:
        return cls(config.servers, config.peers)

    async def discover(self) -> Discovered:
        return self.config.discovered()

    def __repr__(self) -> str:
        return f"StaticDiscovery({list(self.config.servers)!r}, peers={list(self.config.peers)!r})"


class DnsDiscovery:
    """Servers from DNS A/AAAA or SRV records (see the module docstring).

    ``rng`` draws query ids and the SRV weighted order; the default is the system's
    unpredictable source (an id a forger could guess would let it answer for us), a test
    passes a seeded ``random.Random``. ``resolv_conf`` is read on each lookup that needs
    it, so a changed file (Kubernetes rewrites it) is picked up.
    """

    def __init__(
        self,
        name: str,
        record: Literal["A", "AAAA", "SRV"] = "A",
        port: int = DEFAULT_PORT,
        nameserver: str | Nameserver | None = None,
        timeout: float = DEFAULT_DNS_TIMEOUT,
        attempts: int = DEFAULT_DNS_ATTEMPTS,
        scheme: str = "nats",
        *,
        rng: random.Random | None = None,
        resolv_conf: str = RESOLV_CONF,
    ) -> None:
        self.config = DnsConfig(
            name=name,
            record=record,
            port=port,
            scheme=scheme,
            nameserver=parse_nameserver(nameserver) if isinstance(nameserver, str) else nameserver,
            timeout=timeout,
            attempts=attempts,
        )
        self._rng = random.SystemRandom() if rng is None else rng
        self._resolv_conf = resolv_conf

    @classmethod
    def from_config(
        cls,
        config: DnsConfig,
        *,
        rng: random.Random | None = None,
        resolv_conf: str = RESOLV_CONF,
    ) -> DnsDiscovery:
        return cls(
            config.name,
            config.record,
            config.port,
            config.nameserver,
            config.timeout,
            config.attempts,
            config.scheme,
            rng=rng,
            resolv_conf=resolv_conf,
        )

    def __repr__(self) -> str:
        c = self.config
        at = "" if c.nameserver is None else f" @{_where(c.nameserver)}"
        return f"DnsDiscovery({c.name!r} {c.record}{at})"

    async def discover(self) -> Discovered:
        config = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.timeout
        if config.nameserver is None and config.record != "SRV":
            return await self._system_resolver(loop)
        nameservers = (
            (config.nameserver,) if config.nameserver is not None else self._system_nameservers()
        )
        failures: list[str] = []
        for server, wait in query_schedule(nameservers, config.attempts, config.timeout):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            query = dns_query(config.name, config.rtype, self._rng.randrange(0x10000))
            try:
                response, verdict = await _ask_udp(server, query, min(wait, remaining))
                if verdict is DnsVerdict.TRUNCATED:
                    response, verdict = await _ask_tcp(server, query, deadline - loop.time())
            except TimeoutError:
                failures.append(f"{_where(server)} did not answer in time")
                continue
            except (OSError, asyncio.IncompleteReadError) as exc:
                failures.append(f"{_where(server)}: {exc!r}")
                continue
            if verdict is DnsVerdict.IGNORE:
                failures.append(f"{_where(server)} answered another query over TCP")
                continue
            if verdict is not DnsVerdict.ANSWER:
                failures.append(f"{_where(server)} answered {_rcode_name(response.rcode)}")
                continue
            return dns_discovered(response, config, self._rng)
        raise DiscoveryFailed(
            "dns",
            f"{config.name} {config.record}: no usable answer within {config.timeout} s "
            f"({'; '.join(failures) or 'no time left to ask'})",
        )

    async def _system_resolver(self, loop: asyncio.AbstractEventLoop) -> Discovered:
        config = self.config
        family = socket.AF_INET if config.record == "A" else socket.AF_INET6
        try:
            async with asyncio.timeout(config.timeout):
                infos = await loop.getaddrinfo(
                    config.name, config.port, family=family, type=socket.SOCK_STREAM
                )
        except TimeoutError:
            raise DiscoveryFailed(
                "dns",
                f"{config.name} {config.record}: the system resolver did not answer "
                f"within {config.timeout} s",
            ) from None
        except socket.gaierror as exc:
            raise DiscoveryFailed(
                "dns", f"{config.name} {config.record}: {exc.strerror or exc}"
            ) from None
        return addresses_discovered([str(info[4][0]) for info in infos], config)

    def _system_nameservers(self) -> tuple[Nameserver, ...]:
        try:
            with open(self._resolv_conf, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            text = ""
        return parse_resolv_conf(text)


class TransportDiscovery:
    """Peers from the cluster's ``nodes`` bucket (the alive ones, sorted), servers as given:
    the ones the node connected with."""

    def __init__(self, membership: MemberSource, servers: Iterable[str] | str = ()) -> None:
        self._membership = membership
        self.config = TransportConfig(servers=server_urls(servers))

    async def discover(self) -> Discovered:
        return Discovered(
            servers=self.config.servers, peers=alive_peers(self._membership.members())
        )

    def __repr__(self) -> str:
        return f"TransportDiscovery(servers={list(self.config.servers)!r})"


def discovery_from(
    config: str | Mapping[str, Any] | DiscoveryConfig | None = None,
    *,
    membership: MemberSource | None = None,
    servers: Iterable[str] | str = (),
    rng: random.Random | None = None,
) -> Discovery:
    """The strategy a configuration names (see the module docstring); ``None`` is
    ``transport``. ``membership`` and ``servers`` serve ``transport`` (its own ``servers``
    setting wins); ``rng`` serves ``dns``."""
    parsed = parse_discovery(config)
    if isinstance(parsed, StaticConfig):
        return StaticDiscovery.from_config(parsed)
    if isinstance(parsed, DnsConfig):
        return DnsDiscovery.from_config(parsed, rng=rng)
    if membership is None:
        raise ConfigurationError(
            "transport discovery reads the cluster's nodes bucket: pass membership= "
            "(the node's Membership) once connected"
        )
    return TransportDiscovery(membership, parsed.servers or server_urls(servers))


# --- one exchange with a nameserver -------------------------------------------------------


def _where(server: Nameserver) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _rcode_name(rcode: int) -> str:
    try:
        return Rcode(rcode).name
    except ValueError:
        return f"rcode {rcode}"


class _Exchange(asyncio.DatagramProtocol):
    """Waits for the first datagram that answers ``query``; others are ignored, except a
    packet carrying the query's id that does not decode, which fails the exchange."""

    def __init__(self, query: DnsMessage, loop: asyncio.AbstractEventLoop) -> None:
        self._query = query
        self.answer: asyncio.Future[tuple[DnsMessage, DnsVerdict]] = loop.create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.answer.done():
            return
        if len(data) >= 2 and int.from_bytes(data[:2], "big") != self._query.id:
            return
        try:
            response = decode_message(data)
        except MalformedDnsMessage as exc:
            self.answer.set_exception(exc)
            return
        verdict = judge_response(self._query, response)
        if verdict is not DnsVerdict.IGNORE:
            self.answer.set_result((response, verdict))

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("the UDP socket closed"))


async def _ask_udp(
    server: Nameserver, query: DnsMessage, wait: float
) -> tuple[DnsMessage, DnsVerdict]:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(wait):
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Exchange(query, loop), remote_addr=server
        )
        try:
            transport.sendto(encode_message(query))
            return await protocol.answer
        finally:
            protocol.answer.cancel()
            transport.close()


async def _ask_tcp(
    server: Nameserver, query: DnsMessage, wait: float
) -> tuple[DnsMessage, DnsVerdict]:
    """RFC 1035 4.2.2: the same query over TCP, each message prefixed by its length."""
    if wait <= 0:
        raise TimeoutError
    async with asyncio.timeout(wait):
        reader, writer = await asyncio.open_connection(*server)
        try:
            payload = encode_message(query)
            writer.write(len(payload).to_bytes(2, "big") + payload)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            response = decode_message(await reader.readexactly(size))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return response, judge_response(query, response, tcp=True)
