"""Discovery: which NATS servers to connect to, and which nodes to expect in the cluster.

Theory of operation. A discovery strategy produces a ``Discovered``: ``servers`` (NATS URLs,
``scheme://host:port``) and ``peers`` (node ids). The three strategies of the issue (the
seeds' ``:static_config`` and ``:dns``; their ``:mabeam_registry`` is ``transport`` here,
and ``:multicast`` is left out — NATS is the rendezvous, and multicast rarely crosses a
cloud network):

- ``static`` — a configured list, checked here (``StaticConfig``): every URL is
  ``nats``/``tls``/``ws``/``wss`` with a host and a port in 1-65535 (a missing port becomes
  the scheme's default, 4222 for ``nats``/``tls``), carries no credentials (they belong in
  ``NatsConfig``), does not repeat another, and websocket and plain URLs are not mixed
  (nats-py refuses the mix). A bad entry raises ``ConfigurationError`` naming it.
- ``dns`` — A or AAAA records of a name (plus a configured port), or SRV records
  (``_nats._tcp.example.internal``: a host and port each). SRV answers are ordered as
  RFC 2782 says: by priority, then by weighted random choice within a priority, drawn from
  an injected ``random.Random``; a target of ``.`` means "no service here" and is dropped.
  The wire format lives in ``core.dns``; here ``dns_discovered`` turns a definite answer
  into a ``Discovered`` or a retryable ``DiscoveryFailed`` (NXDOMAIN, no records), and
  ``query_schedule`` plans which nameserver each try asks and for how long, all within one
  overall timeout (``parse_resolv_conf`` reads the nameservers the system uses).
- ``transport`` (the default) — the cluster's own ``nodes`` bucket: ``alive_peers`` picks
  the alive records; the servers are those the node is already connected to.

``parse_discovery`` reads a configuration (a string or a mapping, see its docstring) into
one of ``StaticConfig`` / ``DnsConfig`` / ``TransportConfig``. Nothing here does I/O: the
shells in ``agentcluster.cluster.discovery`` send the queries and read ``resolv.conf``.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from agentcluster.core.dns import (
    DnsMessage,
    Rcode,
    RecordType,
    SrvRecord,
    answer_records,
    dns_name,
)
from agentcluster.core.membership import NodeRecord, NodeStatus
from agentcluster.errors import ConfigurationError, DiscoveryFailed

__all__ = [
    "DEFAULT_DNS_ATTEMPTS",
    "DEFAULT_DNS_TIMEOUT",
    "DEFAULT_PORT",
    "DNS_PORT",
    "SCHEMES",
    "Discovered",
    "DiscoveryConfig",
    "DnsConfig",
    "Nameserver",
    "StaticConfig",
    "TransportConfig",
    "addresses_discovered",
    "alive_peers",
    "dns_discovered",
    "parse_discovery",
    "parse_nameserver",
    "parse_resolv_conf",
    "peer_ids",
    "query_schedule",
    "server_url",
    "server_urls",
    "servers_from_addresses",
    "servers_from_srv",
    "srv_order",
]

DEFAULT_PORT = 4222
DNS_PORT = 53
DEFAULT_DNS_TIMEOUT = 3.0
DEFAULT_DNS_ATTEMPTS = 3
SCHEMES: Mapping[str, int] = {"nats": 4222, "tls": 4222, "ws": 80, "wss": 443}
"""The URL schemes a NATS client takes, with the port a URL without one gets."""

_WEBSOCKET = frozenset({"ws", "wss"})
_PEER = re.compile(r"[^\s\x00-\x1f\x7f]+\Z")

Nameserver = tuple[str, int]
"""A nameserver's address and port."""


@dataclass(frozen=True, slots=True)
class Discovered:
    """What a discovery found: NATS server URLs to connect to and node ids to expect."""

    servers: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()


# --- static configuration -------------------------------------------------------------


def _bad(where: str, entry: object, problem: str) -> ConfigurationError:
    return ConfigurationError(f"discovery {where} {_shown(entry)!r}: {problem}")


def _shown(entry: object) -> object:
    """``entry`` for an error message: a URL's credentials masked."""
    if isinstance(entry, str) and "://" in entry:
        head, _, tail = entry.partition("://")
        authority, slash, rest = tail.partition("/")
        if "@" in authority:
            return f"{head}://***@{authority.rsplit('@', 1)[1]}{slash}{rest}"
    return entry


def _host(host: str) -> str | None:
    """``host`` as it goes into a URL (IPv6 in brackets), or None when it is not a host."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    try:
        return dns_name(host).lower()
    except ConfigurationError:
        return None


def server_url(entry: object, *, where: str = "server") -> str:
    """One NATS server URL, checked and normalised to ``scheme://host:port``.

    ``where`` names the entry in the error (``servers[2]``).
    """
    if not isinstance(entry, str) or not entry.strip():
        raise _bad(where, entry, "is not a URL")
    text = entry.strip()
    if "://" not in text:
        raise _bad(where, entry, "needs a scheme: nats://host:port (or tls, ws, wss)")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _bad(where, entry, f"{exc} (the port must be 1-65535)") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise _bad(where, entry, f"scheme {parts.scheme!r} is not one of {', '.join(SCHEMES)}")
    if parts.username is not None or parts.password is not None:
        raise _bad(where, entry, "carries credentials; give them to NatsConfig instead")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _bad(where, entry, "must be scheme://host:port, without a path or query")
    if not parts.hostname:
        raise _bad(where, entry, "names no host")
    host = _host(parts.hostname)
    if host is None:
        raise _bad(where, entry, f"host {parts.hostname!r} is neither an IP address nor a name")
    if port == 0:
        raise _bad(where, entry, "port 0 is not a port (it must be 1-65535)")
    return f"{scheme}://{host}:{SCHEMES[scheme] if port is None else port}"


def _entries(value: object, what: str) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        return list(value)
    raise ConfigurationError(
        f"discovery {what}: {value!r} is not a list (or a comma-separated string)"
    )


def server_urls(value: object, *, what: str = "servers") -> tuple[str, ...]:
    """A configured server list (a sequence or a comma-separated string), each URL checked
    by ``server_url``; a repeated server or a mix of websocket and plain URLs is refused."""
    urls: list[str] = []
    first: dict[str, int] = {}
    for index, entry in enumerate(_entries(value, what)):
        where = f"{what}[{index}]"
        url = server_url(entry, where=where)
        if url in first:
            raise _bad(where, entry, f"repeats {what}[{first[url]}]")
        first[url] = index
        urls.append(url)
    schemes = {url.split("://", 1)[0] for url in urls}
    if schemes & _WEBSOCKET and schemes - _WEBSOCKET:
        raise ConfigurationError(
            f"discovery {what}: websocket (ws, wss) and plain (nats, tls) URLs cannot be mixed"
        )
    return tuple(urls)


def peer_ids(value: object, *, what: str = "peers") -> tuple[str, ...]:
    """Configured node ids: non-empty, without spaces or control characters, not repeated."""
    ids: list[str] = []
    first: dict[str, int] = {}
    for index, entry in enumerate(_entries(value, what)):
        where = f"{what}[{index}]"
        if not isinstance(entry, str) or not _PEER.match(entry):
            raise _bad(where, entry, "is not a node id (a non-empty string without spaces)")
        if entry in first:
            raise _bad(where, entry, f"repeats {what}[{first[entry]}]")
        first[entry] = index
        ids.append(entry)
    return tuple(ids)


# --- the parsed configurations --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaticConfig:
    """A configured list of servers (and, optionally, of peers); checked when built."""

    servers: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "servers", server_urls(self.servers))
        object.__setattr__(self, "peers", peer_ids(self.peers))
        if not self.servers and not self.peers:
            raise ConfigurationError("static discovery names no servers and no peers")

    def discovered(self) -> Discovered:
        return Discovered(self.servers, self.peers)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """A DNS lookup: ``record`` ``A`` / ``AAAA`` (addresses, each with ``port``) or ``SRV``
    (hosts and ports from the records; ``port`` is unused). ``nameserver`` None means the
    system's resolver for A/AAAA and the nameservers of ``/etc/resolv.conf`` for SRV.
    ``timeout`` bounds the whole lookup; ``attempts`` rounds over the nameservers."""

    name: str
    record: Literal["A", "AAAA", "SRV"] = "A"
    port: int = DEFAULT_PORT
    scheme: str = "nats"
    nameserver: Nameserver | None = None
    timeout: float = DEFAULT_DNS_TIMEOUT
    attempts: int = DEFAULT_DNS_ATTEMPTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", dns_name(self.name, where="discovery dns name"))
        record = self.record.upper() if isinstance(self.record, str) else self.record
        if record not in ("A", "AAAA", "SRV"):
            raise _bad("record", self.record, "must be A, AAAA or SRV")
        object.__setattr__(self, "record", record)
        if not _is_int(self.port) or not 1 <= self.port <= 65535:
            raise _bad("port", self.port, "must be an int in 1-65535")
        if self.scheme not in SCHEMES:
            raise _bad("scheme", self.scheme, f"must be one of {', '.join(SCHEMES)}")
        server: object = self.nameserver
        if isinstance(server, tuple) and len(server) == 2:
            object.__setattr__(self, "nameserver", parse_nameserver(server[0], port=server[1]))
        elif server is not None:
            object.__setattr__(self, "nameserver", parse_nameserver(server))
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not math.isfinite(self.timeout)
            or self.timeout <= 0
        ):
            raise _bad("timeout", self.timeout, "must be a number of seconds above 0")
        if not _is_int(self.attempts) or self.attempts < 1:
            raise _bad("attempts", self.attempts, "must be an int of at least 1")

    @property
    def rtype(self) -> RecordType:
        return RecordType[self.record]


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Peers from the cluster's ``nodes`` bucket; ``servers`` are the ones already in use."""

    servers: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "servers", server_urls(self.servers))


DiscoveryConfig = StaticConfig | DnsConfig | TransportConfig


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_KEYS: Mapping[str, frozenset[str]] = {
    "static": frozenset({"servers", "peers"}),
    "dns": frozenset({"name", "record", "port", "scheme", "nameserver", "timeout", "attempts"}),
    "transport": frozenset({"servers"}),
}
_DNS_PREFIXES: Mapping[str, Literal["A", "AAAA", "SRV"]] = {
    "dns": "A",
    "dns+a": "A",
    "dns+aaaa": "AAAA",
    "dns+srv": "SRV",
}


def parse_discovery(config: str | Mapping[str, Any] | DiscoveryConfig | None) -> DiscoveryConfig:
    """Read a discovery configuration.

    Strings:

    - ``"transport"`` (or ``None`` / ``""``): the default;
    - ``"static:nats://a:4222,nats://b:4222"``: a server list;
    - ``"dns:nats.example.internal"`` (also ``dns+a:``), ``"dns+aaaa:…"``: address records,
      each with port 4222, or with ``:port`` after the name (``dns:nats.internal:6222``);
    - ``"dns+srv:_nats._tcp.example.internal"``: SRV records;
    - any dns form may end in ``@nameserver`` (``@10.0.0.2``, ``@10.0.0.2:5353``,
      ``@[fd00::2]:53``) to ask that nameserver instead of the system's.

    Mappings: ``{"strategy": "static" | "dns" | "transport", …}`` with the fields of
    ``StaticConfig`` / ``DnsConfig`` / ``TransportConfig`` (static ``peers`` are only
    given this way); an unknown key is an error.
    """
    if isinstance(config, StaticConfig | DnsConfig | TransportConfig):
        return config
    if config is None:
        return TransportConfig()
    if isinstance(config, str):
        return _parse_string(config.strip())
    if isinstance(config, Mapping):
        return _parse_mapping(config)
    raise ConfigurationError(f"discovery {config!r}: give a string or a mapping")


def _parse_string(text: str) -> DiscoveryConfig:
    if text in ("", "transport"):
        return TransportConfig()
    strategy, sep, rest = text.partition(":")
    strategy = strategy.lower()
    if strategy == "static" and sep:
        return StaticConfig(servers=server_urls(rest))
    if strategy in _DNS_PREFIXES and sep:
        target, at, server = rest.partition("@")
        nameserver = parse_nameserver(server) if at else None
        record = _DNS_PREFIXES[strategy]
        name, colon, port = target.partition(":")
        if colon and record == "SRV":
            raise _bad("dns+srv", text, "SRV records carry their own ports; drop ':port'")
        if colon and not port.isdigit():
            raise _bad("dns", text, f"port {port!r} is not a number")
        return DnsConfig(
            name=name,
            record=record,
            port=int(port) if colon else DEFAULT_PORT,
            nameserver=nameserver,
        )
    if strategy in SCHEMES:
        raise _bad(
            "strategy",
            text,
            f"a bare URL is not a strategy; did you mean 'static:{text}'?",
        )
    raise _bad(
        "strategy",
        text,
        "is not one of transport, static:<urls>, dns:<name>, dns+aaaa:<name>, dns+srv:<name>",
    )


def _parse_mapping(config: Mapping[str, Any]) -> DiscoveryConfig:
    strategy = config.get("strategy", "transport")
    if strategy not in _KEYS:
        raise _bad("strategy", strategy, f"is not one of {', '.join(_KEYS)}")
    unknown = sorted(set(config) - _KEYS[strategy] - {"strategy"})
    if unknown:
        raise ConfigurationError(
            f"discovery {strategy}: unknown setting {unknown[0]!r} "
            f"(known: {', '.join(sorted(_KEYS[strategy]))})"
        )
    options = {key: value for key, value in config.items() if key != "strategy"}
    if strategy == "static":
        return StaticConfig(
            servers=options.get("servers", ()),  # checked and made a tuple by the config
            peers=options.get("peers", ()),
        )
    if strategy == "transport":
        return TransportConfig(servers=options.get("servers", ()))
    if "name" not in options:
        raise ConfigurationError("discovery dns: 'name' is required")
    return DnsConfig(**options)


def parse_nameserver(text: object, *, port: object = None) -> Nameserver:
    """``"10.0.0.2"``, ``"10.0.0.2:5353"``, ``"fd00::2"``, ``"[fd00::2]:5353"`` (port 53 by
    default) as ``(address, port)``; the address must be an IP address."""
    if not isinstance(text, str) or not text:
        raise _bad("nameserver", text, "is not an address")
    host, number = text, None
    if text.startswith("["):
        host, bracket, tail = text[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise _bad("nameserver", text, "is not [address] or [address]:port")
        number = tail[1:] if tail else None
    elif text.count(":") == 1:
        host, number = text.split(":")
    if port is not None:
        if number is not None:
            raise _bad("nameserver", text, "gives its port twice")
        number = str(port) if _is_int(port) else "?"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise _bad(
            "nameserver", text, "is not an IP address (a nameserver is asked by address)"
        ) from None
    if number is None:
        return (address.compressed, DNS_PORT)
    if not number.isdigit() or not 1 <= int(number) <= 65535:
        raise _bad("nameserver", text, "port must be 1-65535")
    return (address.compressed, int(number))


def parse_resolv_conf(text: str) -> tuple[Nameserver, ...]:
    """The nameservers of a ``resolv.conf``, in order; none listed means the local one
    (``127.0.0.1``), as glibc does. Lines that do not parse are skipped, as glibc does."""
    servers: list[Nameserver] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            address = words[1].split("%", 1)[0]
            try:
                servers.append((ipaddress.ip_address(address).compressed, DNS_PORT))
            except ValueError:
                continue
    return tuple(servers) or (("127.0.0.1", DNS_PORT),)


def query_schedule(
    nameservers: Sequence[Nameserver], attempts: int, timeout: float
) -> tuple[tuple[Nameserver, float], ...]:
    """Each try of a lookup: the nameserver it asks and how long it waits for the answer.

    ``attempts`` rounds over the nameservers (as ``resolv.conf``'s ``attempts``), the waits
    adding up to ``timeout``, so a lookup never outlasts it.
    """
    if not nameservers:
        raise ValueError("no nameserver to ask")
    tries = [server for _ in range(attempts) for server in nameservers]
    wait = timeout / len(tries)
    return tuple((server, wait) for server in tries)


# --- the transport strategy -----------------------------------------------------------


def alive_peers(records: Mapping[str, NodeRecord]) -> tuple[str, ...]:
    """The ids of the alive nodes, sorted (a node record's key is its id)."""
    return tuple(sorted(node for node, rec in records.items() if rec.status is NodeStatus.ALIVE))


# --- from a DNS answer to the servers -------------------------------------------------


def servers_from_addresses(
    addresses: Iterable[str], port: int, *, scheme: str = "nats"
) -> tuple[str, ...]:
    """``scheme://address:port`` for each address, in order, each once."""
    urls: list[str] = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        host = f"[{address.compressed}]" if address.version == 6 else address.compressed
        url = f"{scheme}://{host}:{port}"
        if url not in urls:
            urls.append(url)
    return tuple(urls)


def srv_order(records: Iterable[SrvRecord], rng: random.Random) -> tuple[SrvRecord, ...]:
    """The SRV records in the order to try them (RFC 2782).

    Lowest priority first; within a priority, repeatedly pick one at random with
    probability proportional to its weight (weight-0 records first in the running list,
    so they are chosen only rarely, when the draw is 0). Records with target ``.`` are
    dropped. The candidates are sorted before drawing, so the order depends only on the
    set of records and ``rng``, not on how the resolver rotated them.
    """
    usable = [r for r in records if r.target != "."]
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in usable}):
        pending = sorted(
            (r for r in usable if r.priority == priority),
            key=lambda r: (r.weight != 0, r.target.lower(), r.port, r.weight),
        )
        while pending:
            draw = rng.randint(0, sum(r.weight for r in pending))
            running = itertools.accumulate(r.weight for r in pending)
            index = next(i for i, total in enumerate(running) if total >= draw)
            ordered.append(pending.pop(index))
    return tuple(ordered)


def servers_from_srv(
    records: Iterable[SrvRecord], rng: random.Random, *, scheme: str = "nats"
) -> tuple[str, ...]:
    """``scheme://target:port`` per record in ``srv_order``, each once (the NATS client
    resolves the target names itself, and a ``tls://`` server is verified by that name)."""
    urls: list[str] = []
    for record in srv_order(records, rng):
        url = f"{scheme}://{record.target.rstrip('.').lower()}:{record.port}"
        if url not in urls:
            urls.append(url)
    return tuple(urls)


def dns_discovered(response: DnsMessage, config: DnsConfig, rng: random.Random) -> Discovered:
    """The servers a definite answer (``judge_response`` said ``ANSWER``) names, or
    ``DiscoveryFailed`` (retryable) when it names none."""
    what = f"{config.name} {config.record}"
    if response.rcode == Rcode.NXDOMAIN:
        raise DiscoveryFailed("dns", f"{what}: the name does not exist (NXDOMAIN)")
    records = answer_records(response, config.name, config.rtype)
    if config.record == "SRV":
        srv = [r.data for r in records if isinstance(r.data, SrvRecord)]
        servers = servers_from_srv(srv, rng, scheme=config.scheme)
        if srv and not servers:
            raise DiscoveryFailed("dns", f"{what}: the service is not offered (target '.')")
    else:
        addresses = [r.data for r in records if isinstance(r.data, str)]
        servers = servers_from_addresses(addresses, config.port, scheme=config.scheme)
    if not servers:
        raise DiscoveryFailed("dns", f"{what}: no records")
    return Discovered(servers=servers)


def addresses_discovered(addresses: Iterable[str], config: DnsConfig) -> Discovered:
    """The servers at the addresses the system resolver gave for an A/AAAA lookup, or
    ``DiscoveryFailed`` (retryable) when there are none."""
    servers = servers_from_addresses(addresses, config.port, scheme=config.scheme)
    if not servers:
        raise DiscoveryFailed("dns", f"{config.name} {config.record}: no addresses")
    return Discovered(servers=servers)
