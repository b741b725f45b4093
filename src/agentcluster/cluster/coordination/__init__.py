"""Coordination primitives across the cluster: locks, barriers, group elections, votes,
pipelines and map-reduce.

The key-value ones (``locks``, ``barrier``, ``election``) live in the ``coordination``
bucket and are made definite under ambiguous write timeouts by write stamps; the
signal-based ones (``vote``, ``pipeline``, ``scatter``) call agents through the node's
routing. Each takes a started ``ClusterNode`` first; ``Cluster`` has a method for each.
"""

from agentcluster.cluster.coordination.barrier import barrier
from agentcluster.cluster.coordination.election import Election, elect
from agentcluster.cluster.coordination.locks import LockHandle, acquire_lock
from agentcluster.cluster.coordination.pipeline import pipeline
from agentcluster.cluster.coordination.scatter import map_reduce, scatter_gather
from agentcluster.cluster.coordination.vote import VoteResult, vote

__all__ = [
    "Election",
    "LockHandle",
    "VoteResult",
    "acquire_lock",
    "barrier",
    "elect",
    "map_reduce",
    "pipeline",
    "scatter_gather",
    "vote",
]
