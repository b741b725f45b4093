"""The transport conformance suite against both backends, on asyncio and uvloop."""

from agentcluster.testing.conformance import TransportConformance


class TestTransportConformance(TransportConformance):
    """Runs every case of the suite; the ``substrate`` fixture supplies the backend."""
