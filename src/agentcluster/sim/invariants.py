"""Invariant checkers for fault-injection tests and the simulator.

``CommitLog`` holds the fencing invariant of DESIGN.md: at no time do two instances of one
agent commit anything — a state write, an inbox acknowledgement, a call reply, an emitted
signal. Every such effect is announced on telemetry as ``("agentcluster", "agent",
"committed")`` with the agent id and the committing instance's incarnation, in the order
the effects happen. Two instances interleave exactly when, for one agent, an effect of
incarnation ``k`` follows an effect of a newer incarnation: the older instance committed
after the newer one had started to. ``violations`` lists every such pair; a test asserts
there are none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentcluster.telemetry.events import Telemetry
from agentcluster.telemetry.events import telemetry as default_telemetry

__all__ = ["Commit", "CommitLog", "Interleaving"]

COMMITTED = ("agentcluster", "agent", "committed")


@dataclass(frozen=True, slots=True)
class Commit:
    agent_id: str
    incarnation: int
    kind: str
    node_id: str | None
    revision: int | None


@dataclass(frozen=True, slots=True)
class Interleaving:
    """``late`` (an older instance) committed after ``newer`` had committed."""

    newer: Commit
    late: Commit


class CommitLog:
    """Records every commit announced on ``telemetry`` while attached (a context manager).

    Bounded by ``limit`` commits; past it, recording stops and ``overflowed`` is set, so a
    test never silently checks a truncated history.
    """

    def __init__(self, telemetry: Telemetry | None = None, *, limit: int = 1_000_000) -> None:
        self._telemetry = telemetry or default_telemetry
        self._limit = limit
        self.commits: list[Commit] = []
        self.overflowed = False
        self._handler: str | None = None

    def __enter__(self) -> CommitLog:
        self._handler = self._telemetry.attach(COMMITTED, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handler is not None:
            self._telemetry.detach(self._handler)
            self._handler = None

    def _record(
        self, event: Any, measurements: Mapping[str, float], meta: Mapping[str, Any]
    ) -> None:
        if len(self.commits) >= self._limit:
            self.overflowed = True
            return
        self.commits.append(
            Commit(
                str(meta["agent_id"]),
                int(meta["incarnation"]),
                str(meta.get("kind", "")),
                meta.get("node_id"),
                meta.get("revision"),
            )
        )

    def of(self, agent_id: str) -> list[Commit]:
        return [c for c in self.commits if c.agent_id == agent_id]

    def violations(self) -> list[Interleaving]:
        """Every commit made by an older instance after a newer one committed."""
        newest: dict[str, Commit] = {}
        found: list[Interleaving] = []
        for commit in self.commits:
            top = newest.get(commit.agent_id)
            if top is None or commit.incarnation >= top.incarnation:
                newest[commit.agent_id] = commit
            else:
                found.append(Interleaving(top, commit))
        return found
