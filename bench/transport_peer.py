"""The other process of the transport benchmark: a subscriber that counts and a responder.

Run as ``python -m bench.transport_peer --url nats://… --subject S --mode raw|transport``.
It subscribes to ``S.pub`` (counting; when it has the number announced on ``S.expect`` it
publishes the count on ``S.done``) and answers ``S.req`` with the request's payload. Both
modes do the same work, one through raw nats-py and one through agentcluster's transport,
so the publisher measures the two paths side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

PENDING = 2_000_000


async def _raw(url: str, subject: str) -> None:
    import nats

    nc = await nats.connect(url, name="bench-peer-raw")
    state = {"count": 0, "expect": -1}

    async def counted(msg: Any) -> None:
        state["count"] += 1
        if state["count"] == state["expect"]:
            await nc.publish(f"{subject}.done", str(state["count"]).encode())

    async def expect(msg: Any) -> None:
        state["count"] = 0
        state["expect"] = int(msg.data)
        await nc.publish(msg.reply, b"ok")

    async def echo(msg: Any) -> None:
        await nc.publish(msg.reply, msg.data)

    await nc.subscribe(
        f"{subject}.pub", cb=counted, pending_msgs_limit=PENDING, pending_bytes_limit=-1
    )
    await nc.subscribe(f"{subject}.expect", cb=expect)
    await nc.subscribe(f"{subject}.req", cb=echo)
    stop = asyncio.Event()

    async def quit_(msg: Any) -> None:
        stop.set()

    await nc.subscribe(f"{subject}.quit", cb=quit_)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.wait_for(stop.wait(), timeout=600)
    await nc.close()


async def _transport(url: str, subject: str) -> None:
    from agentcluster.transport.interface import Message
    from agentcluster.transport.nats import NatsConfig, connect

    conn = await connect(NatsConfig(servers=[url], name="bench-peer-transport"))
    state = {"count": 0, "expect": -1}

    async def counted(msg: Message) -> None:
        state["count"] += 1
        if state["count"] == state["expect"]:
            await conn.publish(f"{subject}.done", str(state["count"]).encode())

    async def expect(msg: Message) -> None:
        state["count"] = 0
        state["expect"] = int(msg.data)
        await conn.publish(msg.reply, b"ok")

    async def echo(msg: Message) -> None:
        await conn.publish(msg.reply, msg.data)

    async def quit_(msg: Message) -> None:
        stop.set()

    stop = asyncio.Event()
    await conn.subscribe(f"{subject}.pub", counted, pending_limit=PENDING)
    await conn.subscribe(f"{subject}.expect", expect)
    await conn.subscribe(f"{subject}.req", echo)
    await conn.subscribe(f"{subject}.quit", quit_)
    await conn.flush()
    print("ready", flush=True)
    await asyncio.wait_for(stop.wait(), timeout=600)
    await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transport_peer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--mode", choices=["raw", "transport"], required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    run = _raw if args.mode == "raw" else _transport
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(run(args.url, args.subject))
    else:
        asyncio.run(run(args.url, args.subject))
    return 0


if __name__ == "__main__":
    sys.exit(main())
