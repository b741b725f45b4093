"""Coordination primitives across the cluster: locks, barriers, group elections, votes,
pipelines and map-reduce."""
