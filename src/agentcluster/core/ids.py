"""Signal ids: unique, sortable by creation time, in the UUIDv7 layout (RFC 9562).

An id is 48 bits of Unix milliseconds, a 12-bit sequence that keeps ids from one source
strictly increasing within a millisecond (it borrows the next millisecond when it
overflows, so order survives bursts), and 62 random bits that keep sources apart.

Production sources draw their random bits from a generator seeded by the OS; the simulator
seeds it with a string that mixes in the node incarnation, so a restarted node never
reuses an id. The wall clock is passed in as a function so that this module reads no time.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable

__all__ = [
    "IdSource",
    "UuidV7Source",
    "default_id_source",
    "id_timestamp_ms",
    "new_id",
    "set_default_id_source",
]

_SEQ_MAX = 0xFFF
_V7 = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)


class UuidV7Source:
    """A callable that returns a new id string on each call."""

    __slots__ = ("_getrandbits", "_last_ms", "_now_ms", "_prefix", "_seq")

    def __init__(self, now_ms: Callable[[], int], rng: random.Random | None = None) -> None:
        self._now_ms = now_ms
        generator = rng if rng is not None else random.Random(os.urandom(32))
        self._getrandbits = generator.getrandbits
        self._last_ms = -1
        self._seq = 0
        self._prefix = ""

    @classmethod
    def seeded(cls, seed: str, now_ms: Callable[[], int], incarnation: int = 0) -> UuidV7Source:
        """A reproducible source; ``incarnation`` keeps a restarted node's ids distinct."""
        return cls(now_ms, random.Random(f"{seed}/{incarnation}"))

    def _set_ms(self, ms: int) -> None:
        # The first two groups and the version nibble depend only on the millisecond,
        # so they are formatted once per millisecond rather than once per id.
        self._last_ms = ms
        h = f"{ms & 0xFFFFFFFFFFFF:012x}"
        self._prefix = f"{h[:8]}-{h[8:]}-7"

    def __call__(self) -> str:
        ms = self._now_ms()
        if ms > self._last_ms:
            self._set_ms(ms)
            seq = self._seq = self._getrandbits(10)
        else:
            seq = self._seq + 1
            if seq > _SEQ_MAX:
                self._set_ms(self._last_ms + 1)
                seq = 0
            self._seq = seq
        r = self._getrandbits(62)
        return "%s%03x-%04x-%012x" % (  # noqa: UP031 - one format call is the fast path
            self._prefix,
            seq,
            0x8000 | (r >> 48),
            r & 0xFFFFFFFFFFFF,
        )


IdSource = Callable[[], str]


def id_timestamp_ms(signal_id: str) -> int | None:
    """The creation time embedded in a UUIDv7 id, or None for any other id."""
    if len(signal_id) != 36 or signal_id[14] != "7" or _V7.fullmatch(signal_id) is None:
        return None
    return int(signal_id[:8] + signal_id[9:13], 16)


_default: IdSource | None = None


def _make_default() -> IdSource:
    # The process-wide source is the one place core needs a real wall clock; it takes it
    # from the clock module, which holds the only direct reads of time in the package.
    from agentcluster.clock import SystemClock

    wall = SystemClock().wall
    return UuidV7Source(lambda: int(wall() * 1000))


def default_id_source() -> IdSource:
    global _default
    if _default is None:
        _default = _make_default()
    return _default


def set_default_id_source(source: IdSource) -> IdSource:
    """Replace the process-wide id source (tests, the simulator); returns the old one."""
    global _default
    old = default_id_source()
    _default = source
    return old


def new_id() -> str:
    source = _default if _default is not None else default_id_source()
    return source()
