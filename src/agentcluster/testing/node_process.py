"""Cluster nodes as real processes (``agentcluster node``), for multi-process tests and
benchmarks.

``NodeProcess`` starts ``python -m agentcluster.cli.main node ...`` with the given servers,
id and agents, follows the JSON lines it prints (``joined``, ``agent_started``, ``ready``,
``superseded``, ``left``) on a reader thread, and stops it by PID: ``terminate`` (a
graceful leave), ``kill`` (SIGKILL, a crash), ``freeze`` / ``thaw`` (SIGSTOP / SIGCONT).
Every process started is also killed at interpreter exit, so a failed test leaves none
behind. Its standard error goes to a log file whose tail is put into errors.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

from agentcluster.clock import SystemClock
from agentcluster.testing.processes import ProcessRegistry

__all__ = ["NodeProcess", "NodeProcessError", "running_node_pids"]

_clock = SystemClock()
_nodes = ProcessRegistry()


class NodeProcessError(RuntimeError):
    """A node process did not do what was expected; carries its log tail."""


def running_node_pids() -> list[int]:
    return _nodes.running_pids()


class NodeProcess:
    """One ``agentcluster node`` process (module docstring)."""

    def __init__(
        self,
        servers: str | Sequence[str],
        node_id: str,
        *,
        agents: Sequence[str] = (),
        directory: str | Path,
        replicas: int = 1,
        loop: str = "auto",
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        urls = [servers] if isinstance(servers, str) else list(servers)
        self.node_id = node_id
        self.directory = Path(directory)
        self.args = [
            python,
            "-m",
            "agentcluster.cli.main",
            "node",
            *(("--servers", ",".join(urls)) if urls else ()),
            "--id",
            node_id,
            "--replicas",
            str(replicas),
            "--loop",
            loop,
            *(arg for agent in agents for arg in ("--agents", agent)),
            *extra_args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._log_path = self.directory / f"{node_id}-{os.getpid()}-{id(self):x}.log"

    # --- lifecycle ---

    def start(self, *, wait: str | None = "ready", timeout: float = 20.0) -> Self:
        """Spawn the process; with ``wait`` return once it printed that event."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self._log_path.open("wb")
        try:
            proc = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=log, env=self.env, cwd=os.getcwd()
            )
        finally:
            log.close()
        _nodes.track(proc)
        self._proc = proc
        self._reader = threading.Thread(
            target=self._read, args=(proc,), name=f"node-{self.node_id}", daemon=True
        )
        self._reader.start()
        if wait is not None:
            self.wait_event(wait, timeout)
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                self._queue.put(event)
        proc.stdout.close()
        self._queue.put(None)

    def wait_event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        """The first event ``name`` not yet consumed (events before it are kept in
        ``events``); ``NodeProcessError`` if the process ends or ``timeout`` passes."""
        for event in self.events:
            if event.get("event") == name and not event.get("_seen"):
                event["_seen"] = True
                return event
        deadline = _clock.monotonic() + timeout
        while True:
            remaining = deadline - _clock.monotonic()
            if remaining <= 0:
                raise NodeProcessError(
                    f"{self.node_id}: no {name!r} event within {timeout}s\n{self.log_tail()}"
                )
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                self._queue.put(None)
                raise NodeProcessError(
                    f"{self.node_id}: exited ({self.returncode}) before {name!r}; "
                    f"events {self.events}\n{self.log_tail()}"
                )
            self.events.append(item)
            if item.get("event") == name:
                item["_seen"] = True
                return item

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise NodeProcessError(f"{self.node_id} was never started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit; its exit status."""
        if self._proc is None:
            raise NodeProcessError(f"{self.node_id} was never started")
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NodeProcessError(
                f"{self.node_id} still running after {timeout}s\n{self.log_tail()}"
            ) from None
        self._forget()
        return code

    def _signal(self, signum: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is written on the way out."""
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            self._forget()

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a graceful leave), then SIGKILL after ``timeout``; the exit status."""
        if self._proc is None:
            return None
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self._proc.wait(timeout=10)
        self._forget()
        return code

    def _forget(self) -> None:
        """The process has exited: stop tracking it and let the reader reach the end."""
        if self._proc is not None:
            _nodes.untrack(self._proc)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self._log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode(errors="replace")

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()

    def __repr__(self) -> str:
        state = "new" if self._proc is None else f"pid {self._proc.pid}"
        return f"<NodeProcess {self.node_id} {state}>"
