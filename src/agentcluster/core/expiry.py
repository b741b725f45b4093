"""When the registry keeper may delete an ``unavailable`` plain agent's entry.

Entries of plain agents whose node died are kept ``unavailable`` (refused, not retryable)
for ``unavailable_ttl`` and then deleted by the leader. Time counts on the deciding
observer's own monotonic clock from when it first saw the entry unavailable at a revision;
a rewrite (a new revision) starts the count again, so the wait is never shorter than the
ttl after the last change that observer saw. No synchronised clocks; a new leader counts
again, which only deletes later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["MAX_DELETES", "ExpiryPlan", "PendingDeletion", "plan_expiry"]

MAX_DELETES = 256
"""Deletions one sweep may plan."""


@dataclass(frozen=True, slots=True)
class PendingDeletion:
    """An unavailable plain entry being timed: the revision seen and when it was first seen."""

    revision: int
    first_seen: float


@dataclass(frozen=True, slots=True)
class ExpiryPlan:
    """What a sweep does: the entries still being timed, and those to delete now."""

    pending: dict[str, PendingDeletion]
    due: tuple[tuple[str, int], ...]
    """``(agent id, revision)``, sorted by id, at most ``limit``."""


def plan_expiry(
    candidates: Iterable[tuple[str, int]],
    pending: Mapping[str, PendingDeletion],
    now: float,
    ttl: float,
    limit: int = MAX_DELETES,
) -> ExpiryPlan:
    """Decide which unavailable entries have waited ``ttl`` on this observer's clock.

    ``candidates`` are the ``(id, revision)`` of the plain ``unavailable`` entries the cache
    holds now; entries no longer candidates are dropped.
    """
    timed: dict[str, PendingDeletion] = {}
    due: list[tuple[str, int]] = []
    for agent_id, revision in candidates:
        held = pending.get(agent_id)
        if held is None or held.revision != revision:
            held = PendingDeletion(revision=revision, first_seen=now)
        timed[agent_id] = held
        if now - held.first_seen >= ttl:
            due.append((agent_id, revision))
    due.sort()
    return ExpiryPlan(dict(sorted(timed.items())), tuple(due[:limit]))
