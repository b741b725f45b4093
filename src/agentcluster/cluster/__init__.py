"""The cluster layer: nodes over the substrate, their liveness, the registry and routing.

``Cluster.local(nodes=N)`` is the in-process cluster (memory transport). What is built and
what is not is listed in the README's Status section.
"""

from agentcluster.cluster.cluster import Cluster
from agentcluster.cluster.node import ClusterNode

__all__ = ["Cluster", "ClusterNode"]
