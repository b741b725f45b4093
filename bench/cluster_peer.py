"""The other processes of the cluster benchmark.

``python -m bench.cluster_peer raw --url nats://… --subject S [--loop uvloop]``: the raw
nats-py baseline's far end. It counts what arrives on ``S.one`` (one signal per message)
and on ``S.batch`` (a JSON array of signals per message, decoded with orjson to count
them, the least a receiver of a batch must do), and publishes the count on ``S.done``
once it has the number announced on ``S.expect``; it answers ``S.req`` with the request's
payload. ``S.quit`` stops it.

``python -m bench.cluster_peer profiled-node --profile-out FILE -- <agentcluster node
arguments>``: ``agentcluster node`` itself, with cProfile switched on by SIGUSR1 and off by
SIGUSR2 (which writes FILE), so a profile covers only the window being measured, not the
start-up. Used only for the profile; the measured node is a plain ``agentcluster node``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import signal
import sys
from typing import Any

import orjson

PENDING = 4_000_000


async def _raw(url: str, subject: str) -> None:
    import nats

    nc = await nats.connect(url, name="bench-cluster-peer")
    state = {"count": 0, "expect": -1}

    async def check() -> None:
        if state["count"] == state["expect"]:
            state["expect"] = -1
            await nc.publish(f"{subject}.done", str(state["count"]).encode())

    async def one(msg: Any) -> None:
        state["count"] += 1
        await check()

    async def batch(msg: Any) -> None:
        state["count"] += len(orjson.loads(msg.data))
        await check()

    async def expect(msg: Any) -> None:
        state["count"] = 0
        state["expect"] = int(msg.data)
        await nc.publish(msg.reply, b"ok")

    async def echo(msg: Any) -> None:
        await nc.publish(msg.reply, msg.data)

    stop = asyncio.Event()

    async def quit_(msg: Any) -> None:
        stop.set()

    for name, handler in (("one", one), ("batch", batch)):
        await nc.subscribe(
            f"{subject}.{name}", cb=handler, pending_msgs_limit=PENDING, pending_bytes_limit=-1
        )
    await nc.subscribe(f"{subject}.expect", cb=expect)
    await nc.subscribe(f"{subject}.req", cb=echo)
    await nc.subscribe(f"{subject}.quit", cb=quit_)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.wait_for(stop.wait(), timeout=900)
    await nc.close()


def _profiled_node(out: str, node_args: list[str]) -> None:
    from agentcluster.cli.main import main

    profiler = cProfile.Profile()

    def start(signum: int, frame: Any) -> None:
        profiler.enable()

    def stop(signum: int, frame: Any) -> None:
        profiler.disable()
        profiler.dump_stats(out + ".part")
        os.replace(out + ".part", out)
        profiler.clear()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["agentcluster", "node", *node_args]
    main()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_peer")
    modes = parser.add_subparsers(dest="mode", required=True)
    raw = modes.add_parser("raw")
    raw.add_argument("--url", required=True)
    raw.add_argument("--subject", required=True)
    raw.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    node = modes.add_parser("profiled-node")
    node.add_argument("--profile-out", required=True)
    node.add_argument("node_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.mode == "profiled-node":
        node_args = args.node_args[1:] if args.node_args[:1] == ["--"] else args.node_args
        _profiled_node(args.profile_out, node_args)
        return 0
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_raw(args.url, args.subject))
    else:
        asyncio.run(_raw(args.url, args.subject))
    return 0


if __name__ == "__main__":
    sys.exit(main())
