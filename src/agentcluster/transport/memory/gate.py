"""The one door every store operation goes through, where the store faults act.

Reads ask ``view`` which store to read: the live one, or the snapshot a cut-off
connection is stuck with. Writes call ``write`` with a closure that applies them to the
live store; with no store fault in force (one boolean) it runs at once. Otherwise, in
this order: a cut-off connection waits its whole timeout and gets ``RequestTimeout``
(nothing applied); during a leader election the write fails fast with ``NoResponders``;
an ambiguous write is handed to the faults to apply (now or later) while the caller
waits out its timeout and gets ``RequestTimeout``. Validation happens before the gate,
so a bad call fails the same way under any fault.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from agentcluster.errors import NoResponders, RequestTimeout
from agentcluster.transport.interface import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from agentcluster.transport.memory.connection import MemoryConnection
    from agentcluster.transport.memory.store import Store

__all__ = ["before_read", "view", "wait_for", "write"]

T = TypeVar("T")


def wait_for(timeout: float | None) -> float:
    """The seconds a store operation may wait: ``timeout`` or the interface default."""
    return DEFAULT_TIMEOUT if timeout is None else timeout


def view(conn: MemoryConnection) -> Store:
    """The store ``conn`` reads: live, or the stale snapshot if it is cut off."""
    hub = conn.hub
    faults = hub.faults
    if faults.store_active:
        snapshot = faults.view_for(conn.name)
        if snapshot is not None:
            return snapshot
    return hub.store


async def before_read(conn: MemoryConnection, timeout: float | None, what: str) -> None:
    """Hold a read while a leader election stalls reads (as nats-server 2.9 does): it goes on
    when the election ends, or fails with ``RequestTimeout`` if its timeout comes first."""
    faults = conn.hub.faults
    if not faults.store_active:
        return
    remaining = faults.read_stall_remaining()
    if remaining <= 0:
        return
    wait = wait_for(timeout)
    if remaining > wait:
        await conn.pause(wait)
        raise RequestTimeout(f"{what}: no reply within {wait}s (store leader election)")
    await conn.pause(remaining)


async def write(
    conn: MemoryConnection, timeout: float | None, apply: Callable[[], T], what: str
) -> T:
    """Run the write ``apply`` through the store faults (module docstring)."""
    faults = conn.hub.faults
    if not faults.store_active:
        return apply()
    wait = wait_for(timeout)
    if faults.is_cut(conn.name):
        await conn.pause(wait)
        raise RequestTimeout(f"{what}: no reply within {wait}s (store unreachable)")
    if faults.leader_electing():
        raise NoResponders(f"{what}: no responders (store leader election)")
    apply_after = faults.take_ambiguous()
    if apply_after is None:
        return apply()
    faults.apply_later(apply, apply_after, what)
    await conn.pause(wait)
    raise RequestTimeout(f"{what}: no reply within {wait}s (the write may have been applied)")
