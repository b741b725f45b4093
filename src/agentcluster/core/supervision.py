"""The decisions of an OTP-style supervisor, without the processes.

A supervisor keeps an ordered list of children (their start order) and, when one exits,
decides what to do, following Erlang/OTP:

- whether the exited child is restarted depends on its restart type and how it exited:
  ``PERMANENT`` children always come back unless their supervisor stopped them,
  ``TRANSIENT`` ones only after a crash, ``TEMPORARY`` ones never (they are dropped);
- which siblings go with it depends on the strategy: ``ONE_FOR_ONE`` restarts only the
  exited child, ``ONE_FOR_ALL`` stops and restarts every child, ``REST_FOR_ONE`` the
  exited child and every child started after it. Siblings are stopped in reverse start
  order and started in start order; a ``TEMPORARY`` sibling that had to be stopped is
  dropped rather than restarted;
- restarts are rate limited by the restart intensity: more than ``max_restarts``
  restarts within ``period`` seconds and the supervisor gives up — it stops all its
  children and fails, so that its own supervisor deals with the fault (escalation).

``plan_restart`` returns a ``RestartPlan``; the supervisor shell carries it out. Only
``RestartIntensity`` holds state (the recent restart times); ``now`` is passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from agentcluster.errors import ConfigurationError

__all__ = [
    "ExitKind",
    "RestartIntensity",
    "RestartPlan",
    "RestartType",
    "Strategy",
    "plan_restart",
    "should_restart",
]


class Strategy(StrEnum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class RestartType(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class ExitKind(StrEnum):
    NORMAL = "normal"
    """Stopped on purpose or finished its work."""
    CRASH = "crash"
    """Exited abnormally."""
    SHUTDOWN = "shutdown"
    """Stopped by its supervisor."""


class RestartIntensity:
    """At most ``max_restarts`` restarts within any ``period`` seconds (OTP defaults 3 / 5 s).

    A restart ``period`` seconds old still counts, as in OTP. Only the last
    ``max_restarts + 1`` restart times are kept.
    """

    __slots__ = ("_times", "max_restarts", "period")

    def __init__(self, max_restarts: int = 3, period: float = 5.0) -> None:
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int):
            raise ConfigurationError(
                f"RestartIntensity.max_restarts must be an int, got {max_restarts!r}"
            )
        if max_restarts < 0:
            raise ConfigurationError(
                f"RestartIntensity.max_restarts must be >= 0, got {max_restarts!r}"
            )
        if (
            isinstance(period, bool)
            or not isinstance(period, int | float)
            or not math.isfinite(period)
            or period <= 0
        ):
            raise ConfigurationError(
                f"RestartIntensity.period must be a finite number > 0, got {period!r}"
            )
        self.max_restarts = max_restarts
        self.period = float(period)
        self._times: deque[float] = deque(maxlen=max_restarts + 1)

    def _expire(self, now: float) -> None:
        times = self._times
        while times and now - times[0] > self.period:
            times.popleft()

    def record(self, now: float) -> bool:
        """Count a restart at ``now``; False when it exceeds the intensity."""
        self._expire(now)
        self._times.append(now)
        return len(self._times) <= self.max_restarts

    def recent(self, now: float) -> int:
        """How many recorded restarts fall within the last ``period`` seconds."""
        self._expire(now)
        return len(self._times)

    def reset(self) -> None:
        self._times.clear()

    def __repr__(self) -> str:
        return (
            f"RestartIntensity(max_restarts={self.max_restarts}, period={self.period}, "
            f"recorded={len(self._times)})"
        )


def should_restart(restart: RestartType, exit: ExitKind) -> bool:
    """Whether a child of type ``restart`` that exited with ``exit`` is started again."""
    if restart == RestartType.PERMANENT:
        return exit != ExitKind.SHUTDOWN
    if restart == RestartType.TRANSIENT:
        return exit == ExitKind.CRASH
    return False


@dataclass(frozen=True, slots=True)
class RestartPlan:
    """What the supervisor does after a child exited, in this order.

    ``stop``: running siblings to stop, in reverse start order. ``remove``: children to
    drop from the supervisor (not restarted). ``start``: children to (re)start, in start
    order. ``escalate``: the restart intensity was exceeded; the supervisor stops the
    children in ``stop`` (all that still run) and fails upward with
    ``RestartLimitExceeded``.
    """

    stop: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    escalate: bool = False


def plan_restart(
    strategy: Strategy,
    children: Sequence[tuple[str, RestartType]],
    exited: str,
    exit: ExitKind,
    intensity: RestartIntensity,
    now: float,
) -> RestartPlan:
    """Decide how a supervisor reacts to ``exited`` leaving with ``exit``.

    ``children`` lists ``(id, restart type)`` in start order and includes ``exited``.
    Records a restart in ``intensity`` only when something is restarted. Raises
    ``KeyError`` for an ``exited`` id that is not among ``children``.
    """
    ids = [child_id for child_id, _ in children]
    try:
        position = ids.index(exited)
    except ValueError:
        raise KeyError(f"child {exited!r} is not supervised here; children are {ids!r}") from None
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate child ids in {ids!r}")

    if not should_restart(children[position][1], exit):
        return RestartPlan(remove=(exited,))

    if not intensity.record(now):
        others = tuple(child_id for child_id in reversed(ids) if child_id != exited)
        return RestartPlan(stop=others, escalate=True)

    if strategy == Strategy.ONE_FOR_ONE:
        return RestartPlan(start=(exited,))
    if strategy == Strategy.ONE_FOR_ALL:
        affected = children
    elif strategy == Strategy.REST_FOR_ONE:
        affected = children[position:]
    else:  # pragma: no cover - exhaustive over Strategy
        raise ValueError(f"unknown strategy {strategy!r}")

    stop = tuple(child_id for child_id, _ in reversed(affected) if child_id != exited)
    start = tuple(
        child_id
        for child_id, restart in affected
        if child_id == exited or restart != RestartType.TEMPORARY
    )
    remove = tuple(
        child_id
        for child_id, restart in affected
        if child_id != exited and restart == RestartType.TEMPORARY
    )
    return RestartPlan(stop=stop, start=start, remove=remove)
