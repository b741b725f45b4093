"""Sensors: sources of signals that live and die with their agent.

A sensor declared on an agent class is a template; each running agent gets its own copy,
started after the agent mounts and stopped before it shuts down (and restarted with it).
What a sensor observes becomes an ordinary signal in the agent's mailbox, routed like any
other, so reacting to a timer, a bus event or a resource reading is just another route.

- ``IntervalSensor`` — calls ``sense()`` every ``interval`` seconds and emits its result;
- ``BusSensor`` — forwards signals published on the node's bus that match a pattern;
- ``ResourceSensor`` — process cpu and memory (psutil), event-loop lag and the agent's
  mailbox depth.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentcluster.core.routes import validate_pattern
from agentcluster.core.signal import Signal
from agentcluster.errors import ConfigurationError

if TYPE_CHECKING:
    from agentcluster.agent.bus import Subscription
    from agentcluster.agent.node import LocalNode

__all__ = ["BusSensor", "IntervalSensor", "ResourceSensor", "Sensor", "SensorHost"]

log = logging.getLogger("agentcluster.sensor")


class SensorHost:
    """What a running sensor may use: its agent's id, node, mailbox depth and emitter."""

    __slots__ = ("agent_id", "emit", "mailbox_depth", "node")

    def __init__(
        self,
        agent_id: str,
        node: LocalNode,
        emit: Callable[[Signal], None],
        mailbox_depth: Callable[[], int],
    ) -> None:
        self.agent_id = agent_id
        self.node = node
        self.emit = emit
        self.mailbox_depth = mailbox_depth


class Sensor(ABC):
    """Base class; ``start`` and ``stop`` are called by the agent server."""

    signal_type: str = "agentcluster.sensor"

    def bind(self) -> Sensor:
        """The per-agent copy of this template."""
        return copy.copy(self)

    @abstractmethod
    async def start(self, host: SensorHost) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    def _signal(self, host: SensorHost, data: Any) -> Signal:
        return Signal(
            self.signal_type,
            data,
            source=f"agentcluster/agents/{host.agent_id}/sensors/{type(self).__name__}",
            target=host.agent_id,
        )


class IntervalSensor(Sensor):
    """Emits ``sense()``'s result every ``interval`` seconds (None means nothing to say)."""

    def __init__(
        self,
        interval: float,
        signal_type: str = "agentcluster.sensor.tick",
        sense: Callable[[], Any] | None = None,
    ) -> None:
        if interval <= 0:
            raise ConfigurationError(f"sensor interval must be positive, got {interval}")
        self.interval = interval
        self.signal_type = signal_type
        self._sense = sense
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> Sensor:
        bound = copy.copy(self)
        bound._task = None
        return bound

    def sense(self, host: SensorHost) -> Any:
        return self._sense() if self._sense is not None else {}

    async def start(self, host: SensorHost) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._loop(host), name=f"sensor:{host.agent_id}:{type(self).__name__}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise

    async def _loop(self, host: SensorHost) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                data = self.sense(host)
                if inspect.isawaitable(data):
                    data = await data
            except Exception:
                log.exception("sensor %s of agent %s failed", type(self).__name__, host.agent_id)
                continue
            if data is not None:
                host.emit(self._signal(host, data))


class ResourceSensor(IntervalSensor):
    """Process cpu and memory, event-loop lag and mailbox depth, every ``interval``."""

    def __init__(
        self, interval: float = 1.0, signal_type: str = "agentcluster.sensor.resources"
    ) -> None:
        super().__init__(interval, signal_type)
        self._process: Any = None
        self._expected: float | None = None

    def bind(self) -> Sensor:
        bound = super().bind()
        assert isinstance(bound, ResourceSensor)
        bound._process = None
        bound._expected = None
        return bound

    def sense(self, host: SensorHost) -> dict[str, float]:
        import psutil

        if self._process is None:
            self._process = psutil.Process()
            self._process.cpu_percent(None)
        now = host.node.clock.monotonic()
        lag = 0.0 if self._expected is None else max(0.0, now - self._expected)
        self._expected = now + self.interval
        memory = self._process.memory_info()
        return {
            "cpu_percent": float(self._process.cpu_percent(None)),
            "rss_bytes": float(memory.rss),
            "loop_lag_ms": lag * 1000,
            "mailbox_depth": float(host.mailbox_depth()),
        }

    async def _loop(self, host: SensorHost) -> None:
        self._expected = host.node.clock.monotonic() + self.interval
        await super()._loop(host)


class BusSensor(Sensor):
    """Forwards bus signals that match ``pattern`` into the agent."""

    def __init__(self, pattern: str) -> None:
        validate_pattern(pattern)
        self.pattern = pattern
        self.signal_type = pattern
        self._subscription: Subscription | None = None
        self._node: LocalNode | None = None

    def bind(self) -> Sensor:
        bound = copy.copy(self)
        bound._subscription = None
        bound._node = None
        return bound

    async def start(self, host: SensorHost) -> None:
        self._node = host.node

        def forward(signal: Signal) -> None:
            if signal.target != host.agent_id:
                host.emit(signal.evolve(target=host.agent_id))
            else:
                host.emit(signal)

        self._subscription = host.node.bus.subscribe(self.pattern, forward)

    async def stop(self) -> None:
        if self._subscription is not None and self._node is not None:
            self._node.bus.unsubscribe(self._subscription)
        self._subscription = None
