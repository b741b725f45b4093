"""The NATS backend: NATS core for messages, JetStream for key-value, streams and objects.

``connect(NatsConfig(servers=["nats://host:4222"]))`` returns a ``NatsConnection``, which
implements ``agentcluster.transport.interface.Connection``. nats-py is imported only when a
connection is made (or ``NatsConnection`` is looked up), so the embedded default never pays
for it; building a ``NatsConfig`` does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentcluster.transport.nats.config import NatsConfig

if TYPE_CHECKING:
    from agentcluster.transport.nats.connection import NatsConnection

__all__ = ["NatsConfig", "NatsConnection", "connect"]


async def connect(config: NatsConfig) -> NatsConnection:
    """Open a connection to the NATS cluster ``config`` names.

    Fails within ``config.connect_timeout`` seconds with ``SubstrateError`` (retryable, the
    servers and the last error in the message; not retryable when the server refused the
    credentials or TLS failed) or ``ConfigurationError`` (unreadable TLS or credential files,
    ``nkeys`` missing for nkey credentials). Never hangs.
    """
    from agentcluster.transport.nats.connection import NatsConnection

    return await NatsConnection.open(config)


def __getattr__(name: str) -> Any:
    if name == "NatsConnection":
        from agentcluster.transport.nats.connection import NatsConnection

        return NatsConnection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
