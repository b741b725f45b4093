"""The far end of a benchmark: a ``python -m bench.<module>`` process that prints ``ready``
once it listens, started and stopped by PID."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_env() -> dict[str, str]:
    """This environment, with the repository on ``PYTHONPATH`` (``bench`` is not installed)."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@contextlib.contextmanager
def peer_process(module: str, args: list[str]) -> Iterator[subprocess.Popen[str]]:
    """Run ``python -m <module> <args>``, wait for its ``ready`` line, stop it on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=bench_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"benchmark peer {module} {args} did not start: {line!r}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
