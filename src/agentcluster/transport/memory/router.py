"""Routing of core messages: which subscriptions a subject reaches, cached per subject.

Subscriptions on exact subjects sit in a dict by subject; wildcard ones in a list scanned
with ``names.subject_matches``. The answer for a subject — a ``Route``: the plain
subscriptions plus one ``QueueGroup`` per queue name, each handing out its members round
robin — is cached in a bounded dict. Subscribing or unsubscribing an exact subject drops
that one cache entry; a wildcard change clears the cache. Validation piggybacks on the
cache: a subject found there was validated when its entry was built.

Request inboxes (``_INBOX.<connection id>.<n>``) are routed to the requesting
connection's reply table by the id token, in addition to any subscription that matches
them (``>`` does); their routes are built afresh and never cached, since every request
has its own reply subject.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from agentcluster.transport import names
from agentcluster.transport.interface import Message

__all__ = ["INBOX_PREFIX", "QueueGroup", "Route", "Router", "Sink"]

INBOX_PREFIX = "_INBOX."
_CACHE_LIMIT = 8192


class Sink(Protocol):
    """Anything a message can be routed to: a subscription or a connection's reply table."""

    @property
    def conn_name(self) -> str: ...

    def push(self, msg: Message) -> None: ...


class QueueGroup:
    """The members of one queue group that match one subject; each message goes to one."""

    __slots__ = ("_next", "members")

    def __init__(self, members: tuple[Sink, ...]) -> None:
        self.members = members
        self._next = 0

    def pick(self) -> Sink:
        members = self.members
        i = self._next
        if i >= len(members):
            i = 0
        self._next = i + 1
        return members[i]

    def pick_where(self, ok: Callable[[Sink], bool]) -> Sink | None:
        """The next member in round-robin order that ``ok`` accepts, or ``None``."""
        for _ in range(len(self.members)):
            member = self.pick()
            if ok(member):
                return member
        return None


class Route:
    __slots__ = ("groups", "interest", "plain")

    def __init__(self, plain: tuple[Sink, ...], groups: tuple[QueueGroup, ...]) -> None:
        self.plain = plain
        self.groups = groups
        self.interest = bool(plain or groups)


class _Entry(Protocol):
    @property
    def subject(self) -> str: ...

    @property
    def queue(self) -> str | None: ...

    @property
    def wildcard(self) -> bool: ...

    @property
    def conn_name(self) -> str: ...

    def push(self, msg: Message) -> None: ...


class Router:
    __slots__ = ("_cache", "_exact", "_inboxes", "_wild")

    def __init__(self) -> None:
        self._exact: dict[str, dict[_Entry, None]] = {}
        self._wild: dict[_Entry, None] = {}
        self._cache: dict[str, Route] = {}
        self._inboxes: dict[str, Sink] = {}

    def add(self, sub: _Entry) -> None:
        if sub.wildcard:
            self._wild[sub] = None
            self._cache.clear()
        else:
            self._exact.setdefault(sub.subject, {})[sub] = None
            self._cache.pop(sub.subject, None)

    def remove(self, sub: _Entry) -> None:
        if sub.wildcard:
            if sub in self._wild:
                del self._wild[sub]
                self._cache.clear()
            return
        subs = self._exact.get(sub.subject)
        if subs is not None and sub in subs:
            del subs[sub]
            if not subs:
                del self._exact[sub.subject]
            self._cache.pop(sub.subject, None)

    def add_inbox(self, token: str, sink: Sink) -> None:
        self._inboxes[token] = sink

    def remove_inbox(self, token: str) -> None:
        self._inboxes.pop(token, None)

    def route(self, subject: str) -> Route:
        """The route for ``subject``; raises ``InvalidName`` for a malformed subject."""
        route = self._cache.get(subject)
        if route is not None:
            return route
        names.validate_subject(subject)
        route = self._build(subject)
        if not subject.startswith(INBOX_PREFIX):
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[subject] = route
        return route

    def _build(self, subject: str) -> Route:
        matched: list[_Entry] = list(self._exact.get(subject, ()))
        matched.extend(s for s in self._wild if names.subject_matches(s.subject, subject))
        plain: list[Sink] = []
        groups: dict[str, list[Sink]] = {}
        for sub in matched:
            if sub.queue is None:
                plain.append(sub)
            else:
                groups.setdefault(sub.queue, []).append(sub)
        if subject.startswith(INBOX_PREFIX):
            inbox = self._inboxes.get(subject.split(".", 2)[1])
            if inbox is not None:
                plain.append(inbox)
        return Route(tuple(plain), tuple(QueueGroup(tuple(groups[q])) for q in sorted(groups)))
