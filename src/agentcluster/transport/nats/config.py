"""How to reach a NATS cluster: servers, credentials, TLS, timeouts and reconnection.

``NatsConfig`` is checked when it is built, so a bad setting fails with a
``ConfigurationError`` naming the field before any socket is opened. Files (TLS material,
credentials) are only read at ``connect``; a missing one fails there, also by field name.
Nothing here imports nats-py.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agentcluster.errors import ConfigurationError
from agentcluster.transport.interface import DEFAULT_TIMEOUT

__all__ = ["NatsConfig"]

_SCHEMES = ("nats", "tls")


def _problem(name: str, text: str) -> ConfigurationError:
    return ConfigurationError(f"NatsConfig.{name}: {text}")


@dataclass(frozen=True, slots=True)
class NatsConfig:
    """Settings of one NATS connection (a node's or a client's link to the substrate).

    - ``servers``: ``nats://host:port`` or ``tls://host:port`` URLs of the cluster; more
      servers are discovered from the first one reached.
    - credentials, at most one kind: ``user`` + ``password``, ``token``, ``nkeys_seed``
      (a file holding an nkey seed) or ``creds_file`` (a user JWT and nkey, as ``nsc``
      writes it; these two need the ``nkeys`` package).
    - TLS: ``tls_ca_file`` to trust a private CA, ``tls_cert_file`` + ``tls_key_file`` for a
      client certificate, ``tls_hostname`` to verify a name other than the URL's host. Any of
      these, or a ``tls://`` URL, makes TLS required: a server that does not offer it is
      refused.
    - ``connect_timeout``: the whole first connect (every server, every retry) fails with a
      typed error after this many seconds, never hangs.
    - reconnection: after a connection was up, it is re-established forever by default
      (``max_reconnect_attempts=-1``): the substrate is the cluster's only quorum, and a node
      cut off from it is fenced by its lease, not by giving up on the socket. Attempts are
      spaced by ``reconnect_time_wait`` plus a random ``reconnect_jitter`` (so a whole
      cluster does not reconnect in lockstep). A positive ``max_reconnect_attempts`` closes
      the connection for good after that many failed attempts per server.
    - ``ping_interval`` / ``max_outstanding_pings``: a silent TCP link is declared dead after
      about ``ping_interval * max_outstanding_pings`` seconds.
    - ``request_timeout``: the default wait of store operations that get no ``timeout``.
    - ``pending_bytes_limit``: bytes a subscription may hold unprocessed before it drops
      messages (the message count limit is ``subscribe(pending_limit=…)``); 0 for no limit.
    - ``reconnect_buffer_size``: bytes published while disconnected that are kept to send
      after reconnecting; beyond it, publishing fails until the link is back.
    - ``watch_heartbeat``: idle heartbeat of key-value watches; a watch that hears nothing
      for three heartbeats reports ``WatchLost`` (and the node's cache rebuilds it). A
      watch's consumer lives on one server: when that server dies, this is how long the
      caches of the registry and the membership stay stale, which delays a failover that
      coincides with it. 1 s costs one small message per second per idle watch.
    """

    servers: Sequence[str] = ("nats://127.0.0.1:4222",)
    name: str = "agentcluster"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkeys_seed: str | None = None
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    connect_timeout: float = 2.0
    allow_reconnect: bool = True
    max_reconnect_attempts: int = -1
    reconnect_time_wait: float = 0.25
    reconnect_jitter: float = 0.1
    ping_interval: float = 20.0
    max_outstanding_pings: int = 2
    request_timeout: float = DEFAULT_TIMEOUT
    pending_bytes_limit: int = 128 * 1024 * 1024
    reconnect_buffer_size: int = 8 * 1024 * 1024
    watch_heartbeat: float = 1.0

    def __post_init__(self) -> None:
        servers = self.servers
        if isinstance(servers, str):
            servers = (servers,)
        if not isinstance(servers, Sequence) or not servers:
            raise _problem("servers", "give at least one nats:// or tls:// URL")
        servers = tuple(servers)
        with_credentials = False
        for url in servers:
            with_credentials |= _check_url(url)
        object.__setattr__(self, "servers", servers)

        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in "\r\n"):
            raise _problem("name", f"{self.name!r} is not a usable connection name")
        for name in (
            "user",
            "password",
            "token",
            "nkeys_seed",
            "creds_file",
            "tls_ca_file",
            "tls_cert_file",
            "tls_key_file",
            "tls_hostname",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise _problem(name, "must be a non-empty string or None")
        if (self.user is None) != (self.password is None):
            missing = "password" if self.password is None else "user"
            raise _problem(missing, "user and password go together")
        kinds = [
            kind
            for kind, present in (
                ("user/password", self.user is not None),
                ("token", self.token is not None),
                ("nkeys_seed", self.nkeys_seed is not None),
                ("creds_file", self.creds_file is not None),
                ("credentials in a server URL", with_credentials),
            )
            if present
        ]
        if len(kinds) > 1:
            raise _problem(
                "servers" if with_credentials else kinds[1].split("/")[0],
                f"give one kind of credentials, not {' and '.join(kinds)}",
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            raise _problem(
                missing, "a client certificate needs both tls_cert_file and tls_key_file"
            )

        _positive(self, "connect_timeout")
        _positive(self, "ping_interval")
        _positive(self, "request_timeout")
        _positive(self, "watch_heartbeat")
        _at_least(self, "reconnect_time_wait", 0.0)
        _at_least(self, "reconnect_jitter", 0.0)
        _at_least(self, "pending_bytes_limit", 0)
        _at_least(self, "reconnect_buffer_size", 0)
        _at_least(self, "max_outstanding_pings", 1)
        if not isinstance(self.allow_reconnect, bool):
            raise _problem("allow_reconnect", "must be True or False")
        attempts = self.max_reconnect_attempts
        if not _is_int(attempts) or attempts < -1 or attempts == 0:
            raise _problem(
                "max_reconnect_attempts",
                f"{attempts!r}: use -1 (forever) or a positive count; "
                "to never reconnect set allow_reconnect=False",
            )

    @property
    def tls_required(self) -> bool:
        """Whether this connection insists on TLS."""
        return (
            any(urlsplit(url).scheme == "tls" for url in self.servers)
            or self.tls_ca_file is not None
            or self.tls_cert_file is not None
            or self.tls_hostname is not None
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context built from the files named here (read now), or ``None``."""
        if not self.tls_required:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise _problem("tls_ca_file", f"cannot load {self.tls_ca_file!r}: {exc}") from exc
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            try:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise _problem(
                    "tls_cert_file",
                    f"cannot load {self.tls_cert_file!r} with {self.tls_key_file!r}: {exc}",
                ) from exc
        return context

    def describe(self) -> str:
        """The servers, without credentials, for messages and logs."""
        return ", ".join(_without_credentials(url) for url in self.servers)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for nats-py's ``connect`` (callbacks excluded)."""
        options: dict[str, Any] = {
            "servers": list(self.servers),
            "name": self.name,
            "allow_reconnect": self.allow_reconnect,
            "connect_timeout": self.connect_timeout,
            "reconnect_time_wait": self.reconnect_time_wait,
            "max_reconnect_attempts": self.max_reconnect_attempts,
            "ping_interval": self.ping_interval,
            "max_outstanding_pings": self.max_outstanding_pings,
            "pending_size": self.reconnect_buffer_size,
            # Subjects are validated by ``names`` (stricter) before they reach nats-py.
            "skip_subject_validation": True,
        }
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password
        if self.token is not None:
            options["token"] = self.token
        if self.nkeys_seed is not None:
            _readable("nkeys_seed", self.nkeys_seed)
            options["nkeys_seed"] = self.nkeys_seed
        if self.creds_file is not None:
            _readable("creds_file", self.creds_file)
            options["user_credentials"] = self.creds_file
        context = self.ssl_context()
        if context is not None:
            options["tls"] = context
        if self.tls_hostname is not None:
            options["tls_hostname"] = self.tls_hostname
        return options


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _positive(config: NatsConfig, name: str) -> None:
    value = getattr(config, name)
    if not _is_number(value) or value <= 0:
        raise _problem(name, f"{value!r} must be a number above 0")


def _at_least(config: NatsConfig, name: str, floor: float) -> None:
    value = getattr(config, name)
    ok = _is_int(value) if isinstance(floor, int) else _is_number(value)
    if not ok or value < floor:
        raise _problem(name, f"{value!r} must be a number of at least {floor}")


def _check_url(url: object) -> bool:
    """Validate one server URL; return whether it carries credentials."""
    if not isinstance(url, str) or not url:
        raise _problem("servers", f"{url!r} is not a URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _problem("servers", f"{_without_credentials(url)!r}: {exc}") from exc
    if parts.scheme not in _SCHEMES:
        raise _problem("servers", f"{_without_credentials(url)!r} is not a nats:// or tls:// URL")
    if not parts.hostname:
        raise _problem("servers", f"{_without_credentials(url)!r} names no host")
    if port == 0:
        raise _problem("servers", f"{_without_credentials(url)!r} has port 0")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _problem("servers", f"{_without_credentials(url)!r} must be scheme://host:port")
    return parts.username is not None or parts.password is not None


def _without_credentials(url: str) -> str:
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        return f"{head}://***@{tail.rsplit('@', 1)[1]}"
    return url


def _readable(name: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _problem(name, f"cannot read {path!r}: {exc}") from exc
