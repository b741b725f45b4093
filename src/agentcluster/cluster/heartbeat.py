"""Heartbeats: who this node hears, how suspicious each silence is, and its own loop lag.

Every ``interval`` (100 ms) a node publishes on core messages (no store, no quorum) a small
JSON heartbeat on ``ac.hb.<encoded node id>``::

    {"node": "n1", "inc": 3, "seq": 41, "agents": 12, "load": 0.4, "lag": 0.0012}

— node id, incarnation, a sequence number, vitals (agent count, load) and the loop lag it
measured. Each node subscribes to ``ac.hb.*`` and feeds the arrival times into
``core.phi.PeerDetectors``. A heartbeat from an older incarnation than one already heard is
ignored; a newer incarnation starts the peer's detector afresh.

The publishing timer is also the node's own lag probe: how late it fired is the loop lag.
Each measurement goes to ``core.phi.LocalHealth`` (raised when the lag exceeds
``lag_limit``, lowered after ``healthy_every`` punctual beats in a row), whose score
stretches this node's suspicion threshold; the lag itself is discounted from the silence
of every peer (time this node did not run does not count against them).

Phi feeds routing, breakers and ``topology()`` (``view``); it never declares a node dead —
the lease does (``cluster.death_watch``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from agentcluster.clock import Clock, LoopClock
from agentcluster.cluster.buckets import stop_task
from agentcluster.cluster.membership import Vitals, VitalsSource
from agentcluster.core.phi import LocalHealth, PeerDetectors, PhiSettings
from agentcluster.errors import ConfigurationError, ConnectionClosed, CorruptRecord
from agentcluster.transport.interface import Connection, Message, Subscription
from agentcluster.transport.names import encode_token

__all__ = [
    "HEARTBEAT_SUBJECTS",
    "Heartbeat",
    "Heartbeats",
    "PeerView",
    "heartbeat_subject",
]

_log = logging.getLogger("agentcluster.cluster.heartbeat")

HEARTBEAT_SUBJECTS = "ac.hb.*"


def heartbeat_subject(node_id: str) -> str:
    return f"ac.hb.{encode_token(node_id)}"


def _int(raw: dict[str, Any], name: str) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CorruptRecord("heartbeat", f"{name} must be an int, got {value!r}")
    return value


def _float(raw: dict[str, Any], name: str) -> float:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CorruptRecord("heartbeat", f"{name} must be a finite number, got {value!r}")
    return float(value)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CorruptRecord("heartbeat", f"suspects must be a list of str, got {value!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node: str
    incarnation: int
    seq: int
    agent_count: int = 0
    load: float = 0.0
    lag: float = 0.0
    suspects: tuple[str, ...] = ()
    """The peers the sender suspects now: every node learns who sees whom."""

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "node": self.node,
                "inc": self.incarnation,
                "seq": self.seq,
                "agents": self.agent_count,
                "load": self.load,
                "lag": self.lag,
                "suspects": self.suspects,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Heartbeat:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CorruptRecord("heartbeat", f"not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise CorruptRecord("heartbeat", "not a JSON object")
        node = raw.get("node")
        if not isinstance(node, str) or not node:
            raise CorruptRecord("heartbeat", f"node must be a non-empty str, got {node!r}")
        return cls(
            node=node,
            incarnation=_int(raw, "inc"),
            seq=_int(raw, "seq"),
            agent_count=_int(raw, "agents"),
            load=_float(raw, "load"),
            lag=_float(raw, "lag"),
            suspects=_names(raw.get("suspects", [])),
        )


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer as this node hears it (``topology()``)."""

    peer: str
    incarnation: int
    phi: float
    suspected: bool
    last_heartbeat_age: float | None
    agent_count: int
    load: float
    lag: float
    suspects: tuple[str, ...] = ()


class Heartbeats:
    """Publishes this node's heartbeats and judges everyone else's; see the module docstring.

    ``incarnation`` is read at each beat (a rejoin changes it; 0 publishes nothing);
    ``publish=False`` only listens (a client). At most ``max_peers`` peers are tracked.
    """

    def __init__(
        self,
        conn: Connection,
        node_id: str,
        *,
        incarnation: Callable[[], int],
        vitals: VitalsSource | None = None,
        clock: Clock | None = None,
        interval: float = 0.1,
        settings: PhiSettings | None = None,
        publish: bool = True,
        lag_limit: float | None = None,
        healthy_every: int = 10,
        max_peers: int = 4096,
        pending_limit: int = 4096,
    ) -> None:
        if not (isinstance(interval, int | float) and math.isfinite(interval) and interval > 0):
            raise ConfigurationError(f"heartbeat interval must be > 0, got {interval!r}")
        self._conn = conn
        self.node_id = node_id
        self._incarnation = incarnation
        self._vitals = vitals if vitals is not None else Vitals
        self._clock = clock
        self.interval = float(interval)
        self.detectors = PeerDetectors(settings)
        self.health = LocalHealth()
        self._publish = publish
        self._lag_limit = self.interval if lag_limit is None else lag_limit
        self._healthy_every = healthy_every
        self._max_peers = max_peers
        self._pending_limit = pending_limit
        self._peers: dict[str, Heartbeat] = {}
        self._lag = 0.0
        self._punctual = 0
        self._seq = 0
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.malformed = 0
        """Heartbeats that could not be read."""
        self.refused = 0
        """Heartbeats of new peers dropped because ``max_peers`` were tracked."""
        self.sent = 0

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._subscription = await self._conn.subscribe(
            HEARTBEAT_SUBJECTS, self._receive, pending_limit=self._pending_limit
        )
        if self._publish:
            self._task = asyncio.create_task(self._beat(), name=f"heartbeat[{self.node_id}]")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except ConnectionClosed:
                pass

    def _now(self) -> float:
        if self._clock is None:
            self._clock = LoopClock(asyncio.get_running_loop())
        return self._clock.monotonic()

    # --- reading ------------------------------------------------------------------------

    @property
    def lag(self) -> float:
        """How late this node's own heartbeat timer fired last time, in seconds."""
        return self._lag

    def phi(self, peer: str) -> float:
        return self.detectors.phi(peer, self._now(), self._lag)

    def suspected(self, peer: str) -> bool:
        return self.detectors.suspected(peer, self._now(), self._lag, self.health.score)

    def suspects(self) -> frozenset[str]:
        return self.detectors.suspects(self._now(), self._lag, self.health.score)

    def view(self) -> tuple[PeerView, ...]:
        """Every peer heard from, sorted by id."""
        views = []
        for phi in self.detectors.view(self._now(), self._lag, self.health.score):
            last = self._peers[phi.peer]
            views.append(
                PeerView(
                    peer=phi.peer,
                    incarnation=last.incarnation,
                    phi=phi.phi,
                    suspected=phi.suspected,
                    last_heartbeat_age=phi.last_heartbeat_age,
                    agent_count=last.agent_count,
                    load=last.load,
                    lag=last.lag,
                    suspects=last.suspects,
                )
            )
        return tuple(views)

    def forget(self, peer: str) -> None:
        """Drop a peer (it left or died); a later heartbeat starts it afresh."""
        self.detectors.forget(peer)
        self._peers.pop(peer, None)

    # --- receiving ----------------------------------------------------------------------

    async def _receive(self, msg: Message) -> None:
        try:
            beat = Heartbeat.from_bytes(msg.data)
        except CorruptRecord as exc:
            self.malformed += 1
            _log.debug("unreadable heartbeat on %s: %s", msg.subject, exc)
            return
        if beat.node == self.node_id:
            return
        known = self._peers.get(beat.node)
        if known is None:
            if len(self._peers) >= self._max_peers:
                self.refused += 1
                return
        elif beat.incarnation < known.incarnation:
            return
        elif beat.incarnation > known.incarnation:
            self.detectors.forget(beat.node)
        self._peers[beat.node] = beat
        self.detectors.heartbeat(beat.node, self._now())

    # --- publishing ---------------------------------------------------------------------

    async def _beat(self) -> None:
        due = self._now()
        while True:
            now = self._now()
            self._measured(max(0.0, now - due))
            try:
                await self._publish_one()
            except ConnectionClosed:
                _log.warning("%s: connection closed; heartbeats stop", self.node_id)
                return
            except Exception:
                _log.exception("%s: heartbeat failed", self.node_id)
            due += self.interval
            now = self._now()
            if due <= now:
                due = now + self.interval
            await asyncio.sleep(due - now)

    async def _publish_one(self) -> None:
        incarnation = self._incarnation()
        if incarnation <= 0:
            return
        vitals = self._vitals()
        self._seq += 1
        beat = Heartbeat(
            self.node_id,
            incarnation,
            self._seq,
            vitals.agent_count,
            vitals.load,
            self._lag,
            tuple(sorted(self.suspects())),
        )
        await self._conn.publish(heartbeat_subject(self.node_id), beat.to_bytes())
        self.sent += 1

    def _measured(self, lag: float) -> None:
        self._lag = lag
        if lag > self._lag_limit:
            self.health.note_lag(lag, self._lag_limit)
            self._punctual = 0
            return
        self._punctual += 1
        if self._punctual >= self._healthy_every:
            self._punctual = 0
            self.health.note_healthy()
