"""The processes a test kit started, tracked by PID so none outlives the interpreter.

``NatsServer`` and ``NodeProcess`` each stop their own process by PID; a test that fails
half-way may not get there, so each also registers here and ``atexit`` kills whatever is
still running (SIGCONT first, so a frozen process dies too).
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import subprocess
import threading

__all__ = ["ProcessRegistry"]


class ProcessRegistry:
    """Started processes by PID, killed at interpreter exit if still running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        atexit.register(self.kill_all)

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running[proc.pid] = proc

    def untrack(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.pop(proc.pid, None)

    def running_pids(self) -> list[int]:
        """PIDs started and not stopped yet."""
        with self._lock:
            return sorted(pid for pid, proc in self._running.items() if proc.poll() is None)

    def kill_all(self) -> None:
        """SIGKILL every tracked process still running, each by its own PID."""
        with self._lock:
            procs = list(self._running.values())
            self._running.clear()
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                proc.wait(timeout=5)
