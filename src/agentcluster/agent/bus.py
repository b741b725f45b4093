"""The node's signal bus: publish/subscribe on type patterns, with a bounded journal.

Subscribers are matched through the same route trie agents use. A subscriber is either a
plain function (called inline, so it must be quick) or an agent id (the signal is cast
into that agent's mailbox). Every published signal gets an offset and is kept in a
journal of bounded size, so a late subscriber can ``replay`` what it missed — and is told
with ``JournalTruncated`` when what it asks for is no longer there, never given a
silent gap.

Handlers must be plain functions: a coroutine function is refused at ``subscribe``
(its coroutine would be created and never awaited); subscribe an agent for async work.
A subscription removed by an earlier handler of the same publish is not called.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from agentcluster.core.routes import Router, naive_match, validate_pattern
from agentcluster.core.signal import Signal
from agentcluster.errors import ConfigurationError, JournalTruncated

__all__ = ["SignalBus", "Subscription"]

log = logging.getLogger("agentcluster.bus")


class Subscription:
    __slots__ = ("agent_id", "handler", "id", "pattern")

    def __init__(
        self,
        id: str,
        pattern: str,
        handler: Callable[[Signal], Any] | None,
        agent_id: str | None,
    ) -> None:
        self.id = id
        self.pattern = pattern
        self.handler = handler
        self.agent_id = agent_id

    def __repr__(self) -> str:
        return f"<Subscription {self.id} {self.pattern!r}>"


class SignalBus:
    def __init__(
        self,
        deliver_to_agent: Callable[[str, Signal], None],
        *,
        journal_size: int = 10_000,
    ) -> None:
        if journal_size < 1:
            raise ConfigurationError(f"journal_size must be at least 1, got {journal_size!r}")
        self._router: Router[Subscription] = Router()
        self._subs: dict[str, Subscription] = {}
        self._ids = itertools.count(1)
        self._deliver_to_agent = deliver_to_agent
        self._journal: deque[tuple[int, Signal]] = deque(maxlen=journal_size)
        self._offset = 0
        self.handler_errors = 0

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Signal], Any] | None = None,
        *,
        agent_id: str | None = None,
    ) -> Subscription:
        if (handler is None) == (agent_id is None):
            raise ConfigurationError("subscribe needs exactly one of handler or agent_id")
        if handler is not None:
            if not callable(handler):
                raise ConfigurationError(f"a bus handler must be callable, got {handler!r}")
            if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
                getattr(handler, "__call__", None)  # noqa: B004
            ):
                raise ConfigurationError(
                    f"bus handler {handler!r} is a coroutine function; it would never be "
                    "awaited. Subscribe an agent (agent_id=...) for async work."
                )
        validate_pattern(pattern)
        sub = Subscription(f"sub-{next(self._ids)}", pattern, handler, agent_id)
        self._subs[sub.id] = sub
        self._router.add(pattern, sub)
        return sub

    def unsubscribe(self, subscription: Subscription | str) -> bool:
        sub_id = subscription if isinstance(subscription, str) else subscription.id
        sub = self._subs.pop(sub_id, None)
        if sub is None:
            return False
        self._router.remove(sub.pattern, sub)
        return True

    def publish(self, signal: Signal) -> int:
        """Journal the signal and hand it to every matching subscriber; returns its offset."""
        self._offset += 1
        self._journal.append((self._offset, signal))
        subs = self._subs
        for sub in self._router.match(signal.type):
            if subs.get(sub.id) is not sub:
                continue  # unsubscribed by an earlier handler of this publish
            if sub.agent_id is not None:
                self._deliver_to_agent(sub.agent_id, signal)
                continue
            try:
                sub.handler(signal)  # type: ignore[misc]
            except Exception:
                self.handler_errors += 1
                log.exception("bus subscriber %s failed on %r", sub.id, signal)
        return self._offset

    @property
    def last_offset(self) -> int:
        return self._offset

    @property
    def first_offset(self) -> int:
        return self._journal[0][0] if self._journal else self._offset + 1

    def replay(
        self, since: int | None = None, pattern: str | None = None
    ) -> list[tuple[int, Signal]]:
        """Journal entries from offset ``since`` (inclusive; None = all kept) matching pattern."""
        first = self.first_offset
        if since is not None and since < first and first > 1:
            raise JournalTruncated(since, first)
        if pattern is not None:
            validate_pattern(pattern)
        start = since if since is not None else 0
        return [
            (offset, signal)
            for offset, signal in self._journal
            if offset >= start and (pattern is None or naive_match(pattern, signal.type))
        ]

    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())
