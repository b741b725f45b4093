"""``make bench``: run the benchmarks and write a table and JSON under bench/results/.

Usage: ``python -m bench [--quick] [--only runtime|transport|cluster|placement|failover]``.
``--quick`` shrinks every size (for a smoke run); the figures reported in notes come from a
full run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

from bench import cluster, coordination, failover, placement, runtime, transport

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

CLUSTER_GOALS = {
    "call_latency_ratio": ("<=", 1.5),
    "cast_ratio": (">=", 1.0),
    "lookup_us": ("<=", 2.0),
    "find_by_capability_us": ("<=", 2.0),
    "detection_median_s": ("<", 1.0),
    "detection_max_s": ("<", 2.0),
}

CLUSTER_KEYS = [
    "raw_request_p50_us",
    "call_p50_us",
    "call_latency_ratio",
    "raw_request_p99_us",
    "call_p99_us",
    "raw_publish_per_s",
    "raw_batched_publish_per_s",
    "cast_per_s",
    "cast_ratio",
    "cast_batched_ratio",
    "cast_sent_per_s",
    "cast_delivered",
    "cast_mean_batch",
    "node_lease_lapses",
    "measuring_lease_lapses",
]

CLUSTER_ONCE_KEYS = [
    "dict_get_us",
    "lookup_us",
    "registry_lookup_us",
    "find_by_capability_us",
    "registry_find_by_capability_us",
    "find_by_capability_after_change_us",
    "registry_agents",
    "registry_load_s",
    "detection_median_s",
    "detection_max_s",
    "detection_min_s",
    "detection_after_last_renewal_median_s",
    "detection_ideal_s",
    "detection_kills",
]

CLUSTER_NOTES = """\
- `cast_per_s` counts signals the counter received (read back with `counter.read`), over
  the time from the first cast to that answer; `cast_sent_per_s` is the sender's own rate;
  `cast_delivered` the smallest share received in a repeat (the rest were refused as
  `mailbox_full` by the receiving node and dead-lettered there); `cast_mean_batch` the
  envelopes per NATS message the router sent. `raw_publish_per_s`: one message per signal
  of the cast envelope's size; `raw_batched_publish_per_s`: the same envelopes as JSON arrays
  of 512 (the router's `max_batch`), decoded by the receiver to count them.
- `raw_request_p50_us`: nats-py request/reply to another process, the call envelope's size.
- `lookup_us` / `find_by_capability_us`: through the `Cluster` facade; `registry_*`: the
  node's `Registry` directly; `dict_get_us`: a plain dict of the same size in the same loop
  (each figure includes the loop's own cost). `find_by_capability_after_change_us`: the first
  query after a holder changed (rebuilds a tuple of 1,000 holders). `registry_load_s`: writing
  the entries into the memory backend's bucket and seeing each in the watched cache.
- `detection_*`: from `kill -9` to `dead` in the observer's cache, over `detection_kills`
  kills; `detection_after_last_renewal_median_s` counts from the last renewal the observer
  saw; `detection_ideal_s` is the lease rule's window, F+m minus up to one renewal interval.
- `node_lease_lapses` / `measuring_lease_lapses`: "lease lapsed" warnings of the node
  process and of this process during the run (a loop starved of its renewals)."""

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


_OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}


def _verdict(key: str, value: float, goals: dict[str, tuple[str, float]] = GOALS) -> str:
    op, goal = goals[key]
    ok = _OPS[op](value, goal)
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


def _cell(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def bench_cluster(quick: bool) -> None:
    loops = _loops()[::-1]  # uvloop first when installed: the nodes' default loop
    flat, profile = cluster.run(loops, quick)
    (RESULTS / "cluster.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    others = loops[1:]
    header = "| metric | " + " | ".join(loops) + " | goal |"
    lines = [header, "|" + "---|" * (len(loops) + 2)]
    for key in CLUSTER_KEYS:
        cells = [_cell(flat[key])] + [_cell(flat.get(f"{loop}_{key}", "")) for loop in others]
        goal = _verdict(key, flat[key], CLUSTER_GOALS) if key in CLUSTER_GOALS else ""
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {goal} |")
    for key in CLUSTER_ONCE_KEYS:
        cells = [_cell(flat[key])] + ["" for _ in others]
        goal = _verdict(key, flat[key], CLUSTER_GOALS) if key in CLUSTER_GOALS else ""
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {goal} |")
    table = "\n".join(lines)
    (RESULTS / "cluster.md").write_text(
        "# Cluster benchmark\n\n"
        f"Topology: {flat['topology']}.\n\n"
        "Each goal is checked against the first loop's figures; the registry and failure "
        "detection are measured once, on that loop. Ratios compare with the raw nats-py "
        "layer measured in the same run.\n\n"
        f"{table}\n\n{CLUSTER_NOTES}\n\n## Profiles (cProfile)\n\n{profile}"
    )
    print(table)
    print(f"\nwritten: {RESULTS / 'cluster.json'}, {RESULTS / 'cluster.md'}")


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


LOCK_KEYS = [
    "call_by_id_p50_us",
    "call_by_capability_p50_us",
    "balancing_overhead_us",
    "raw_kv_cas_p50_us",
    "lock_p50_us",
    "lock_p99_us",
    "lock_latency_ratio",
    "barrier_p50_us",
    "barrier_ratio",
    "barrier_round_p50_us",
]

LOCK_GOALS = {"lock_latency_ratio": ("<=", 3.0)}

LOCK_NOTES = """\
- `call_by_id_p50_us` / `call_by_capability_p50_us`: `cluster.call` to an agent on another
  node of a `Cluster.local` (memory backend) by id, and through `Capability(...)` (the
  request strategy, both breakers, in-flight and latency bookkeeping), alternating in one
  run; `balancing_overhead_us` is the difference.
- `raw_kv_cas_p50_us`: one key-value compare-and-set (`update` at the current revision)
  through the project's transport against the same nats-server, in the same run.
- `lock_p50_us`: one uncontended acquire-and-release cycle: a compare-and-set onto the
  lock's `free` record (the fencing token is that write's revision), then a `free` record
  written at the token; `lock_latency_ratio` divides it by the raw compare-and-set.
- `barrier_p50_us`: a three-participant barrier's release latency, from the last
  participant's arrival until all three returned (a read and a compare-and-set, then the
  watch delivering the write); `barrier_ratio` against the raw compare-and-set;
  `barrier_round_p50_us`: a whole round, all three arriving at once."""


def bench_placement(quick: bool) -> None:
    decisions = placement.measure_decisions(quick)
    decisions.update(placement.measure_balanced_calls(quick))
    locks = coordination.run(quick, loop=_loops()[-1])
    flat: dict[str, Any] = {**decisions, **locks}
    flat["python"] = platform.python_version()
    flat["machine"] = platform.machine()
    (RESULTS / "placement.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    strategies = placement.table(decisions)
    lines = ["| metric | value | goal |", "|---|---|---|"]
    for key in LOCK_KEYS:
        goal = _verdict(key, flat[key], LOCK_GOALS) if key in LOCK_GOALS else ""
        lines.append(f"| {key} | {_cell(flat[key])} | {goal} |")
    lock_table = "\n".join(lines)
    (RESULTS / "placement.md").write_text(
        "# Placement, request balancing and coordination benchmark\n\n"
        "Decision cost of each strategy (pure `core` code, one process), then a lock "
        "acquire-and-release cycle and a barrier over one nats-server next to one raw "
        "key-value compare-and-set measured in the same run.\n\n"
        f"{strategies}\n\n{lock_table}\n\n{LOCK_NOTES}\n"
    )
    print(strategies)
    print()
    print(lock_table)
    print(f"\nwritten: {RESULTS / 'placement.json'}, {RESULTS / 'placement.md'}")


FAILOVER_NOTES = """\
- `failover_*_{n}`: per run, {n} critical counters on a fresh victim node process, each
  called once (`count.add`), then `kill -9` of the victim; from the kill each agent is
  polled, a `count.get` call every `poll_interval_s` (each may take 1 s, so a slow answer
  is not abandoned), until one answers from its new node with the restored total
  (`failover_wrong_*` counts answers that did not; they must be 0). Per agent: kill to the
  first answer, late by up to one poll interval. `failover_run_max_s_*` lists each run's
  slowest agent.
- `default_call_*_{n}`: one `cluster.call` per agent with the default timeout, made at the
  kill: what a single user call sees. Its first attempt goes to the dead node and is sent
  again, re-resolved, only after the router's `ack_timeout` (1 s) without an
  acknowledgement, so it answers about 1 s after the kill at best, 2 s when the death was
  declared later than that.
- `step_*`: medians per agent of where the time goes, as this client's caches see it: kill
  to death declared (`dead` in its membership cache: the lease rule, F+m after the last
  renewal), to the entry moved off the victim (the leader's compare-and-set), to `running`
  on the new node (its activation: read the state key, fencing write, start, mark running),
  to a call answered.
- `failover_*_{m}`: {m} critical counters on one victim, started {batch} at a time through
  `start_agent(..., node=victim, mode="critical")` (`start_per_s_{m}`). Here an agent is
  called only once this client's registry cache shows it `running` on its new node (polling
  a thousand agents from the kill would bury the survivors in refused calls while they
  restore); `failover_last_s_{m}` is the kill to the last agent answering.
  **`restore_per_s_{m}` = {m} / (last agent answering - death declared)**, the death
  declaration being the moment this client's membership cache shows the victim `dead`, so
  it covers planning, the leader's pipelined compare-and-sets, every activation and one
  call each; `restore_from_first_per_s_{m}` = ({m} - 1) / (last - first answering), which
  is large when most agents come back together. `moved_last_s_{m}` / `running_last_s_{m}`:
  the last entry moved / running in this client's cache, from the kill.
- `snapshot_put_ratio`: sequential `count.add` calls to a critical counter and to a plain
  one, both on node process s1; a critical agent's reply is released only after the
  snapshot holding the action committed, so `snapshot_cost_us` = critical p50 - plain p50
  is the persistence cost per action as a user sees it, divided by `raw_kv_put_p50_us`, a
  nats-py `kv.put` of the same bytes (`snapshot_bytes`, read from the agent's state key)
  into the same `state` bucket. Snapshots are written by group commit (`max_staleness=0`,
  the default): a lone action's write starts at once, and the actions that run while a
  write is in flight share the next one. `*_staleness50ms`: a counter started with
  `max_staleness=0.05`, which delays each write until its oldest change is 50 ms old
  (fewer writes under load; every reply waits that long).
- `durable_send_ratio`: `cluster.send` to one durable counter on s1, `asyncio.gather`
  batches of {sends_batch} in flight (a send returns once the node stored the signal in
  the `INBOX` stream and handed it to the mailbox), over nats-py `js.publish` with a
  `Nats-Msg-Id` of a payload the size of the stored signal (`send_payload_bytes`) to a
  subject of the same `INBOX` stream, same batches. `durable_applied_per_s`: until the
  counter's total shows every send applied.
- `client_undecodable_batches`: "undecodable batch" warnings of this process's router
  (must be 0: nats-server's "no responders" notices, sent to a router's reply subject when
  it publishes to a dead node, are dropped by the transport).
- `node_lease_lapses` / `measuring_lease_lapses`: "lease lapsed" warnings of the survivor
  node processes and of this process (a loop starved of its renewals): must be 0.

Where the time goes (the steps above and the profiles below):
- With a few agents, failover is the death declaration: everything after it (the leader's
  compare-and-set, the activation, the first answer) takes tens of milliseconds.
- With a thousand, the leader's compare-and-sets (64 in flight) and then the activations
  (three round trips each: a read, the fencing write, the `running` write; all entries at
  once) follow the death declaration; the nodes mostly wait on the store.
- A durable send: the receiving node issues the stores of a whole batch together (one
  connection keeps their order) and awaits their acknowledgements together, so a batch
  costs one JetStream round trip. What is left on the node is per signal (its profile):
  nats-py's publish and reply parsing for each store, decoding, running the action and
  its snapshots; the raw baseline pays only the first, in a process that does nothing
  else, and the path measured adds a hop (client -> node) whose sender pays an
  acknowledgement wait per send. Tried and dropped: a multiplexed store (one reply
  subscription and a timer per store instead of nats-py's `request` with its
  `wait_for`): 56-60 k publishes/s either way in a same-run comparison; a lighter wait
  than `asyncio.wait` for the sender's acknowledgement saves about 2 us of ~10 us. What
  would close the gap: fewer Python-level steps per signal (decode once for store and
  mailbox, a store that takes a batch of messages in one call), or a second process per
  node for the inbox path.
- A critical agent's action costs one snapshot write on top of the call when the agent is
  idle (group commit); the write is a compare-and-set of a bigger value than the raw put's
  plus the fence check and the outbox release."""


def bench_failover(quick: bool) -> None:
    flat, profile = failover.run(quick, loop=_loops()[-1])
    (RESULTS / "failover.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    sizes = failover.QUICK if quick else failover.FULL
    n, m = sizes.agents, sizes.large
    goals = {
        f"failover_median_s_{n}": ("<=", 2.0),
        f"failover_max_s_{n}": ("<=", 2.0),
        f"restore_per_s_{m}": (">=", 1000.0),
    }
    lines = ["| metric | value | goal |", "|---|---|---|"]
    for key, value in flat.items():
        if key == "topology":
            continue
        goal = _verdict(key, value, goals) if key in goals else ""
        lines.append(f"| {key} | {_cell(value)} | {goal} |")
    table = "\n".join(lines)
    notes = FAILOVER_NOTES.format(
        n=n, m=m, batch=failover.START_BATCH, sends_batch=failover.SEND_BATCH
    )
    (RESULTS / "failover.md").write_text(
        "# Failover benchmark\n\n"
        f"Topology: {flat['topology']}. Processes on {flat['loop']} (this one) and "
        f"{flat['node_loop']} (the nodes: uvloop when installed). Load average before / after "
        f"the run: {flat['load_average_before']} / {flat['load_average_after']}.\n\n"
        "Goals: each of the victim's critical agents serves again within 2 s of `kill -9`; "
        "at least 1,000 agents restored per second. Ratios compare with raw nats-py measured "
        "in the same run against the same server.\n\n"
        f"{table}\n\n{notes}\n\n## Profiles (cProfile)\n\n{profile}"
    )
    print(table)
    print(f"\nwritten: {RESULTS / 'failover.json'}, {RESULTS / 'failover.md'}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only",
        choices=["runtime", "transport", "cluster", "placement", "failover"],
        help="run one benchmark instead of all",
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "runtime"):
        bench_runtime(args.quick)
    if args.only in (None, "transport"):
        bench_transport(args.quick)
    if args.only in (None, "cluster"):
        bench_cluster(args.quick)
    if args.only in (None, "placement"):
        bench_placement(args.quick)
    if args.only in (None, "failover"):
        bench_failover(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
