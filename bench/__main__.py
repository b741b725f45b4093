"""``make bench``: run the benchmarks and write a table and JSON under bench/results/.

Usage: ``python -m bench [--quick]``. ``--quick`` shrinks every size (for a smoke run);
the figures reported in notes come from a full run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

from bench import runtime

RESULTS = Path(__file__).parent / "results"

GOALS = {
    "cast_ratio": (">=", 0.25),
    "call_p50_us": ("<=", 25.0),
    "idle_agent_kb": ("<=", 10.0),
    "spawn_per_s": (">=", 50_000),
}


def _verdict(key: str, value: float) -> str:
    op, goal = GOALS[key]
    ok = value >= goal if op == ">=" else value <= goal
    return f"{'met' if ok else 'MISSED'} (goal {op} {goal:g})"


def _table(results: list[dict[str, Any]]) -> str:
    keys = [
        "local_cast_per_s",
        "asyncio_queue_per_s",
        "cast_ratio",
        "call_p50_us",
        "call_p99_us",
        "idle_agent_kb",
        "idle_agent_traced_kb",
        "spawn_per_s",
    ]
    header = "| metric | " + " | ".join(r["loop"] for r in results) + " | goal |"
    lines = [header, "|" + "---|" * (len(results) + 2)]
    for key in keys:
        cells = [f"{r[key]:,}" if isinstance(r[key], int) else f"{r[key]:g}" for r in results]
        goal = _verdict(key, results[0][key]) if key in GOALS else ""
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {goal} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    sizes = (
        {"runs": 1, "casts": 20_000, "calls": 2_000, "agents": 10_000}
        if args.quick
        else {"runs": 3, "casts": 200_000, "calls": 20_000, "agents": 100_000}
    )
    loops = ["asyncio"]
    try:
        import uvloop  # noqa: F401

        loops.append("uvloop")
    except ImportError:
        pass
    results = [runtime.run(loop, **sizes) for loop in loops]
    default = results[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    flat = dict(default)
    flat.update({f"uvloop_{k}": v for k, v in (results[1] if len(results) > 1 else {}).items()})
    flat["python"] = platform.python_version()
    flat["machine"] = platform.machine()
    (RESULTS / "runtime.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    table = _table(results)
    profile = runtime.profile_cast(sizes["casts"] // 4)
    (RESULTS / "runtime.md").write_text(
        "# Runtime benchmark\n\n"
        "Default loop first (the goals are checked against it); uvloop beside it.\n\n"
        f"{table}\n\n## Profile of the cast path (cProfile, top by own time)\n\n"
        f"```\n{profile}```\n"
    )
    print(table)
    print(f"\nwritten: {RESULTS / 'runtime.json'}, {RESULTS / 'runtime.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
