"""Partitions as the nodes see them: who hears whom, from every node's own suspicions.

Every heartbeat carries the peers its sender suspects (phi), so each node knows, for every
live node, whom that node does not hear. Two nodes are *connected* when neither suspects
the other; a partition is a connected component of that graph. One component means
everyone hears everyone (directly or through others); several mean the network is split
the way they show. This is a view for operators and ``topology()``: liveness is decided by
the lease alone, never by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["partitions"]


def partitions(
    nodes: Iterable[str], suspects: Mapping[str, Iterable[str]]
) -> list[tuple[str, ...]]:
    """The connected components of ``nodes`` where an edge joins two nodes that do not
    suspect each other; ``suspects[n]`` is what ``n`` suspects (a node with no entry
    suspects nobody). Components are sorted, largest first, then by their first id."""
    members = sorted(set(nodes))
    doubted = {node: frozenset(suspects.get(node, ())) for node in members}
    seen: set[str] = set()
    components: list[tuple[str, ...]] = []
    for start in members:
        if start in seen:
            continue
        seen.add(start)
        stack, component = [start], []
        while stack:
            node = stack.pop()
            component.append(node)
            for other in members:
                if other in seen:
                    continue
                if other in doubted[node] or node in doubted[other]:
                    continue
                seen.add(other)
                stack.append(other)
        components.append(tuple(sorted(component)))
    components.sort(key=lambda c: (-len(c), c[0]))
    return components
