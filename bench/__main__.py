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

from bench import runtime, transport

RESULTS = Path(__file__).parent / "results"

GOALS = {
    "cast_ratio": (">=", 0.25),
    "call_p50_us": ("<=", 25.0),
    "idle_agent_kb": ("<=", 10.0),
    "spawn_per_s": (">=", 50_000),
    "pubsub_ratio": (">=", 0.7),
    "request_latency_ratio": ("<=", 1.3),
    "kv_cas_latency_ratio": ("<=", 1.3),
}

TRANSPORT_KEYS = [
    "raw_pubsub_per_s",
    "pubsub_per_s",
    "pubsub_ratio",
    "raw_request_p50_us",
    "request_p50_us",
    "request_latency_ratio",
    "raw_request_p99_us",
    "request_p99_us",
    "raw_kv_cas_p50_us",
    "kv_cas_p50_us",
    "kv_cas_latency_ratio",
    "raw_kv_cas_p99_us",
    "kv_cas_p99_us",
    "memory_publish_per_s",
]


def _verdict(key: str, value: float) -> str:
    op, goal = GOALS[key]
    ok = value >= goal if op == ">=" else value <= goal
    return f"{'met' if ok else 'MISSED'} (goal {op} {goal:g})"


RUNTIME_KEYS = [
    "local_cast_per_s",
    "asyncio_queue_per_s",
    "cast_ratio",
    "call_p50_us",
    "call_p99_us",
    "idle_agent_kb",
    "idle_agent_traced_kb",
    "spawn_per_s",
]


def _table(results: list[dict[str, Any]], keys: list[str]) -> str:
    header = "| metric | " + " | ".join(r["loop"] for r in results) + " | goal |"
    lines = [header, "|" + "---|" * (len(results) + 2)]
    for key in keys:
        cells = [f"{r[key]:,}" if isinstance(r[key], int) else f"{r[key]:g}" for r in results]
        goal = _verdict(key, results[0][key]) if key in GOALS else ""
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {goal} |")
    return "\n".join(lines)


def _loops() -> list[str]:
    loops = ["asyncio"]
    try:
        import uvloop  # noqa: F401

        loops.append("uvloop")
    except ImportError:
        pass
    return loops


def _flat(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Default loop's figures at the top level, uvloop's beside them with a prefix."""
    flat = dict(results[0])
    flat.update({f"uvloop_{k}": v for k, v in (results[1] if len(results) > 1 else {}).items()})
    flat["python"] = platform.python_version()
    flat["machine"] = platform.machine()
    return flat


def bench_runtime(quick: bool) -> None:
    sizes = (
        {"runs": 1, "casts": 20_000, "calls": 2_000, "agents": 10_000}
        if quick
        else {"runs": 3, "casts": 200_000, "calls": 20_000, "agents": 100_000}
    )
    results = [runtime.run(loop, **sizes) for loop in _loops()]
    (RESULTS / "runtime.json").write_text(
        json.dumps(_flat(results), indent=2, sort_keys=True) + "\n"
    )
    table = _table(results, RUNTIME_KEYS)
    profile = runtime.profile_cast(sizes["casts"] // 4)
    (RESULTS / "runtime.md").write_text(
        "# Runtime benchmark\n\n"
        "Default loop first (the goals are checked against it); uvloop beside it.\n\n"
        f"{table}\n\n## Profile of the cast path (cProfile, top by own time)\n\n"
        f"```\n{profile}```\n"
    )
    print(table)
    print(f"\nwritten: {RESULTS / 'runtime.json'}, {RESULTS / 'runtime.md'}")


def bench_transport(quick: bool) -> None:
    sizes = (
        {"runs": 1, "msgs": 20_000, "requests": 1_000, "updates": 500}
        if quick
        else {"runs": 3, "msgs": 200_000, "requests": 5_000, "updates": 2_000}
    )
    loops = _loops()
    by_loop = transport.run(loops, sizes)
    results = [dict(by_loop[loop], loop=loop) for loop in loops]
    (RESULTS / "transport.json").write_text(
        json.dumps(_flat(results), indent=2, sort_keys=True) + "\n"
    )
    table = _table(results, TRANSPORT_KEYS)
    (RESULTS / "transport.md").write_text(
        "# Transport benchmark\n\n"
        "Raw nats-py and this transport against one local nats-server, measured back to back "
        "in each repeat; pub/sub goes to a subscriber in a second process. Default loop "
        "first (the goals are checked against it); uvloop beside it.\n\n"
        f"{table}\n"
    )
    print(table)
    print(f"\nwritten: {RESULTS / 'transport.json'}, {RESULTS / 'transport.md'}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only", choices=["runtime", "transport"], help="run one benchmark instead of all"
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "runtime"):
        bench_runtime(args.quick)
    if args.only in (None, "transport"):
        bench_transport(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
