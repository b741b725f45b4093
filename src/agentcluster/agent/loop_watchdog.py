"""Naming what blocks the event loop, while it blocks.

Theory of operation. Everything a node does — lease renewals, heartbeats, every agent —
runs on one event loop, so an async action that computes for long (or calls something
blocking) stalls them all: past ``F`` the node pauses its agents, past ``F + m`` the
others declare it dead. The heartbeat timer measures that lag after the fact; it cannot
say who caused it, because by the time the loop turns again the culprit has returned.

The watchdog is a small daemon thread. The loop stamps the time from a callback every
``interval``; the thread looks every ``interval`` too, and when the stamp is older than
``threshold`` (``F/2`` on a node) the loop is blocked *now*: the thread reads the loop
thread's current stack (``sys._current_frames``) and finds the innermost ``Action.run``
frame, with the agent id from its ``ctx`` — the action holding the loop, named while it
holds it. It logs once per stall, and hands ``(seconds, agent id, action)`` to ``report``
on the loop (``call_soon_threadsafe``), which runs when the loop turns again. With no
action on the stack it names the innermost frame's function and line instead.

It reads real time and runs a real thread, so it runs only on the real clock: the
simulator injects lag on its virtual loop instead. Cost: one timer callback per
``interval`` on the loop, and a thread that sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from types import FrameType

from agentcluster.agent.action import Action
from agentcluster.clock import SystemClock

__all__ = ["LoopWatchdog", "blocking_frame"]

_log = logging.getLogger("agentcluster.agent.loop")

Report = Callable[[float, str | None, str], None]
"""``(seconds blocked so far, agent id or None, action name or code location)``."""


def blocking_frame(frame: FrameType | None) -> tuple[str | None, str]:
    """What a stack is running: the innermost ``Action.run`` (its agent id from ``ctx``,
    and the action's name), else the innermost frame's function and line."""
    innermost = frame
    while frame is not None:
        if frame.f_code.co_name == "run":
            owner = frame.f_locals.get("self")
            if isinstance(owner, Action):
                ctx = frame.f_locals.get("ctx")
                agent_id = getattr(ctx, "agent_id", None)
                return (agent_id if isinstance(agent_id, str) else None), type(owner).name
        frame = frame.f_back
    if innermost is None:
        return None, "unknown"
    code = innermost.f_code
    return None, f"{code.co_name} ({code.co_filename}:{innermost.f_lineno})"


class LoopWatchdog:
    """See the module docstring. ``start`` on the loop's thread; ``stop`` from it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        threshold: float,
        report: Report | None = None,
        interval: float | None = None,
        name: str = "loop",
    ) -> None:
        self._loop = loop
        self.threshold = threshold
        self.interval = interval if interval is not None else max(0.01, threshold / 4)
        self._report = report
        self._name = name
        self._clock = SystemClock()
        self._last = self._clock.monotonic()
        self._reported_for = -1.0
        self._loop_thread = threading.get_ident()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.stalls = 0

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._stamp()
        self._thread = threading.Thread(
            target=self._watch, name=f"agentcluster-watchdog[{self._name}]", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=1.0)

    def _stamp(self) -> None:
        self._last = self._clock.monotonic()
        if not self._stopping.is_set():
            self._timer = self._loop.call_later(self.interval, self._stamp)

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval):
            last = self._last
            blocked = self._clock.monotonic() - last
            if blocked <= self.threshold + self.interval or last == self._reported_for:
                continue
            self._reported_for = last
            self.stalls += 1
            agent_id, what = blocking_frame(sys._current_frames().get(self._loop_thread))
            if agent_id is not None:
                cause = f"action {what!r} of agent {agent_id!r}"
            else:
                cause = f"no agent action; the loop is in {what}"
            _log.warning(
                "event loop of %s blocked for %.0f ms so far (over %.0f ms): %s. Long "
                "synchronous work belongs in a synchronous action (it runs in the worker "
                "pool), or behind an await",
                self._name,
                blocked * 1000,
                self.threshold * 1000,
                cause,
            )
            report = self._report
            if report is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(report, blocked, agent_id, what)
                except RuntimeError:
                    return  # the loop closed meanwhile
