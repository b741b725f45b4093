"""Resource reservations: what each node has promised to the agents placed on it.

A node declares a capacity per resource (``cpu``, ``memory_mb``, ``gpu``, any counter).
Its reservations live in one key, ``reservations.<node>``, holding one entry per
(agent id, agent incarnation) with the resources that agent asked for. A placement adds
its entry only if every resource still fits (capacity minus everything reserved), and the
shell writes the result by compare-and-set on that one key: two concurrent placements
read the same revision, one wins, the loser re-reads and finds the slot gone. No
compare-and-set ever spans two keys, so a placement never needs a lock.

Entries are released when their agent stops or moves. Anything else that no longer
matches the registry — a placement whose starter died before registering, an agent whose
node died, a takeover under a newer incarnation — is collected: the collector notes when
its own clock first saw an entry unmatched and removes it after a grace period (longer
than an activation takes), so a reservation made just before its registration is never
collected early and no synchronised clocks are needed. A new collector counts again,
which only collects later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from agentcluster.core.fields import RecordFields, decode_object
from agentcluster.core.stamps import WriteStamp
from agentcluster.errors import ConfigurationError, CorruptRecord, NoAvailableNode

__all__ = [
    "NodeReservations",
    "Reservation",
    "ReservationKey",
    "check_resources",
    "plan_collection",
    "resource_totals",
]

ReservationKey = tuple[str, int]
"""(agent id, agent incarnation)."""

_EPSILON = 1e-9
"""Slack for float sums: 0.1 + 0.2 reserved of a 0.3 capacity still fits."""


def check_resources(resources: Mapping[str, Any] | None) -> dict[str, float]:
    """Validate a placement's ``resources``: names to finite non-negative numbers."""
    if resources is None:
        return {}
    if not isinstance(resources, Mapping):
        raise ConfigurationError(
            f"resources must be a mapping of name to amount, not {resources!r}"
        )
    checked: dict[str, float] = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"resource names are non-empty strings, not {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise ConfigurationError(f"resource {name!r}: amount must be a number, not {amount!r}")
        if not math.isfinite(amount) or amount < 0:
            raise ConfigurationError(
                f"resource {name!r}: amount must be finite and >= 0, not {amount!r}"
            )
        if amount:
            checked[name] = float(amount)
    return checked


@dataclass(frozen=True, slots=True)
class Reservation:
    agent_id: str
    incarnation: int
    resources: Mapping[str, float]

    @property
    def key(self) -> ReservationKey:
        return (self.agent_id, self.incarnation)


def _sum(entries: Iterable[Reservation]) -> dict[str, float]:
    total: dict[str, float] = {}
    for entry in entries:
        for name, amount in entry.resources.items():
            total[name] = total.get(name, 0.0) + amount
    return total


@dataclass(frozen=True, slots=True)
class NodeReservations:
    """The value of ``reservations.<node>``."""

    node: str
    entries: Mapping[ReservationKey, Reservation] = field(default_factory=dict)
    stamp: WriteStamp | None = None

    def reserved(self) -> dict[str, float]:
        return _sum(self.entries.values())

    def holds(self, key: ReservationKey) -> bool:
        return key in self.entries

    def shortfall(
        self, capacity: Mapping[str, float], resources: Mapping[str, float]
    ) -> dict[str, float]:
        """What ``resources`` would exceed ``capacity`` by (empty: it fits). An undeclared
        resource has capacity 0."""
        reserved = self.reserved()
        short: dict[str, float] = {}
        for name, amount in resources.items():
            free = capacity.get(name, 0.0) - reserved.get(name, 0.0)
            if amount > free + _EPSILON:
                short[name] = amount - free
        return short

    def with_reservation(
        self, reservation: Reservation, capacity: Mapping[str, float], stamp: WriteStamp
    ) -> NodeReservations:
        """This value plus ``reservation``; ``NoAvailableNode(no_capacity)`` if it does not
        fit. Adding an entry already held (same agent and incarnation) changes nothing but
        the stamp, so a repeated placement is idempotent."""
        if reservation.key in self.entries:
            return replace(self, stamp=stamp)
        short = self.shortfall(capacity, reservation.resources)
        if short:
            missing = ", ".join(
                f"{name} short by {amount:g}" for name, amount in sorted(short.items())
            )
            raise NoAvailableNode(
                f"node {self.node!r} cannot reserve for {reservation.agent_id!r}: {missing}",
                reason="no_capacity",
                agent_id=reservation.agent_id,
                node_id=self.node,
            )
        entries = dict(self.entries)
        entries[reservation.key] = reservation
        return NodeReservations(self.node, entries, stamp)

    def without(self, keys: Iterable[ReservationKey], stamp: WriteStamp) -> NodeReservations:
        entries = dict(self.entries)
        for key in keys:
            entries.pop(key, None)
        return NodeReservations(self.node, entries, stamp)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "node": self.node,
                "entries": [
                    {
                        "agent": r.agent_id,
                        "incarnation": r.incarnation,
                        "resources": dict(r.resources),
                    }
                    for r in sorted(self.entries.values(), key=lambda r: r.key)
                ],
                "stamp": None if self.stamp is None else self.stamp.to_json(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeReservations:
        raw = decode_object("reservations", data)
        get = RecordFields("reservations", raw)
        listed = raw.get("entries", [])
        if not isinstance(listed, list):
            raise CorruptRecord("reservations", f"field 'entries' should be a list, not {listed!r}")
        entries: dict[ReservationKey, Reservation] = {}
        for item in listed:
            if not isinstance(item, dict):
                raise CorruptRecord("reservations", f"an entry should be an object, not {item!r}")
            fields = RecordFields("reservation", item)
            reservation = Reservation(
                fields.text("agent"), fields.integer("incarnation"), fields.number_map("resources")
            )
            entries[reservation.key] = reservation
        stamp = raw.get("stamp")
        return cls(
            get.text("node"), entries, None if stamp is None else WriteStamp.from_json(stamp)
        )


def resource_totals(per_node: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for amounts in per_node:
        for name, amount in amounts.items():
            total[name] = total.get(name, 0.0) + amount
    return total


@dataclass(frozen=True, slots=True)
class CollectionPlan:
    """Unmatched entries still being timed (key -> first seen), and those due now."""

    pending: dict[tuple[str, ReservationKey], float]
    due: dict[str, tuple[ReservationKey, ...]]
    """Node id -> the entries to remove from its key."""


def plan_collection(
    reservations: Mapping[str, NodeReservations],
    matches: Callable[[str, ReservationKey], bool],
    pending: Mapping[tuple[str, ReservationKey], float],
    now: float,
    grace: float,
) -> CollectionPlan:
    """Decide which reservations to collect.

    ``matches(node, (agent, incarnation))`` says whether the registry still places that
    agent incarnation on that node in a status that holds resources. An unmatched entry
    is due once this collector has seen it unmatched for ``grace`` seconds of ``now``.
    """
    timed: dict[tuple[str, ReservationKey], float] = {}
    due: dict[str, list[ReservationKey]] = {}
    for node_id, value in sorted(reservations.items()):
        for key in sorted(value.entries):
            if matches(node_id, key):
                continue
            first_seen = pending.get((node_id, key), now)
            timed[(node_id, key)] = first_seen
            if now - first_seen >= grace:
                due.setdefault(node_id, []).append(key)
    return CollectionPlan(timed, {n: tuple(keys) for n, keys in due.items()})
