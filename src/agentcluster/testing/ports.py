"""Free TCP ports on the loopback interface, for servers that tests start.

Ports are drawn at random from below the kernel's ephemeral range, so an outgoing
connection of this or another process (which takes its source port from that range) never
lands on a port a test server is about to bind; each candidate is checked by binding it on
``127.0.0.1``. A port is handed out at most once per process, so the several servers of one
test never collide with each other. Another process can still take a port between the check
and the server's bind: callers that start servers retry with fresh ports when a bind fails.
"""

from __future__ import annotations

import random
import socket
import threading

__all__ = ["LOOPBACK", "free_port", "free_ports"]

LOOPBACK = "127.0.0.1"

_FALLBACK_RANGE = (20000, 32767)
_lock = threading.Lock()
_handed_out: set[int] = set()
_rng = random.Random()


def _candidate_range() -> tuple[int, int]:
    """Ports below the ephemeral range (Linux ``ip_local_port_range``), above 10000."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_RANGE
    if low - 1 <= 12000:
        return _FALLBACK_RANGE
    return (10000, low - 1)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The same option servers set, so a port in TIME_WAIT counts as free, as it is to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port() -> int:
    """A TCP port free on ``127.0.0.1`` now and not handed out before by this process."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on ``127.0.0.1`` (see :func:`free_port`)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    low, high = _candidate_range()
    chosen: list[int] = []
    with _lock:
        attempts = 0
        while len(chosen) < count:
            attempts += 1
            port = _rng.randint(low, high) if attempts < 10_000 else _kernel_port()
            if port in _handed_out or not _bindable(port):
                continue
            _handed_out.add(port)
            chosen.append(port)
    return chosen
