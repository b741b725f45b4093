"""Dead letters that outlive their node: the bounded durable stream ``DEADLETTERS``.

Every dead letter a cluster node records (the sender's for ``send`` and ``call``, the
receiver's for ``cast``; see DESIGN.md "Signals and delivery") is also published to the
stream on subject ``deadletters.<encoded node id>`` as JSON: the signal (CloudEvents JSON),
the reason, the agent, the node, the wall time and the error. Anyone can read them back
(``read``), from any node, after the node that wrote them is gone.

The stream is bounded (``max_msgs``, ``max_bytes``): when full, the oldest letters make
room (``discard="old"`` — dead letters are a record, not acknowledged signals). Publishing
runs on its own task from a bounded queue, so recording a dead letter never waits on the
store; a letter the queue cannot take, or that the store refuses until the shipper gives
up, stays in the node's in-memory ``DeadLetterStore`` and is counted in ``unshipped``,
never dropped silently. Each letter is published with a de-duplication id (signal id,
agent id, reason), so a publish repeated after a timeout is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from agentcluster.agent.dead_letters import DeadLetter
from agentcluster.core import codec
from agentcluster.core.retry import RetryPolicy
from agentcluster.errors import AgentClusterError, ConnectionClosed
from agentcluster.transport.interface import Connection, Storage, Stream, StreamConfig
from agentcluster.transport.names import decode_token, encode_token

__all__ = ["DEAD_LETTER_STREAM", "DeadLetterShipper", "StoredDeadLetter", "read_dead_letters"]

_log = logging.getLogger("agentcluster.cluster.dead_letters")

DEAD_LETTER_STREAM = "DEADLETTERS"
_BACKOFF = RetryPolicy(max_retries=8, base_delay=0.1, max_delay=2.0, jitter=0.0)
_UNUSED = random.Random(0)  # the policy is not jittered: nothing is drawn
_PREFIX = "deadletters"


def dead_letter_subject(node_id: str) -> str:
    return f"{_PREFIX}.{encode_token(node_id)}"


def stream_config(
    replicas: int = 1,
    storage: Storage = "file",
    max_msgs: int = 100_000,
    max_bytes: int = 256 * 1024 * 1024,
) -> StreamConfig:
    return StreamConfig(
        DEAD_LETTER_STREAM,
        (f"{_PREFIX}.>",),
        replicas=replicas,
        storage=storage,
        discard="old",
        max_msgs=max_msgs,
        max_bytes=max_bytes,
    )


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter read back from the stream: the signal as CloudEvents JSON."""

    seq: int
    node_id: str
    reason: str
    agent_id: str | None
    at: float
    signal: dict[str, Any]
    error: dict[str, Any] | None


def encode_letter(letter: DeadLetter, now: float) -> bytes:
    return orjson.dumps(
        {
            "signal": orjson.Fragment(codec.encode(letter.signal, now)),
            "reason": letter.reason,
            "agent_id": letter.agent_id,
            "node_id": letter.node_id,
            "at": letter.at,
            "error": letter.error,
        },
        default=str,
    )


class DeadLetterShipper:
    """Publishes a node's dead letters to the stream (module docstring)."""

    def __init__(
        self,
        conn: Connection,
        node_id: str,
        now: Any,
        *,
        replicas: int = 1,
        storage: Storage = "file",
        queue_limit: int = 10_000,
        publish_timeout: float = 2.0,
        attempts: int = 5,
    ) -> None:
        self._conn = conn
        self.node_id = node_id
        self._now = now
        self._config = stream_config(replicas, storage)
        self._subject = dead_letter_subject(node_id)
        self._queue: deque[DeadLetter] = deque()
        self._limit = queue_limit
        self._timeout = publish_timeout
        self._attempts = attempts
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._stream: Stream | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.shipped = 0
        self.unshipped = 0

    @property
    def stream(self) -> Stream:
        if self._stream is None:
            raise ConnectionClosed(f"dead letters of {self.node_id!r} are not started")
        return self._stream

    async def start(self) -> None:
        self._stream = await self._conn.stream(self._config)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"dead-letters[{self.node_id}]"
        )

    def offer(self, letter: DeadLetter) -> None:
        """Queue a letter for the stream; never waits (the sink of a ``DeadLetterStore``)."""
        if self._task is None or len(self._queue) >= self._limit:
            self.unshipped += 1
            return
        self._queue.append(letter)
        self._drained.clear()
        self._wake.set()

    async def stop(self, timeout: float = 1.0) -> None:
        """Ship what is queued (up to ``timeout``), then stop; the rest counts as unshipped."""
        task, self._task = self._task, None
        if task is None:
            return
        if self._queue and not task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._drained.wait()
        # The flag and the wake end the loop even when the cancellation is lost: on
        # Python 3.11, ``asyncio.wait_for`` (under nats-py's request) swallows a cancel
        # that arrives as its reply does, and the loop would wait on ``_wake`` for ever.
        self._stopping = True
        task.cancel()
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.unshipped += len(self._queue)
        self._queue.clear()

    async def _run(self) -> None:
        stream = self._stream
        assert stream is not None
        while not self._stopping:
            if not self._queue:
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            letter = self._queue[0]
            data = encode_letter(letter, self._now())
            msg_id = f"{letter.signal.id}:{letter.agent_id or ''}:{letter.reason}"
            for attempt in range(self._attempts):
                try:
                    await stream.publish(self._subject, data, msg_id=msg_id, timeout=self._timeout)
                    self.shipped += 1
                    break
                except ConnectionClosed:
                    self.unshipped += len(self._queue)
                    self._queue.clear()
                    return
                except AgentClusterError as error:
                    if attempt + 1 == self._attempts or not getattr(error, "retryable", False):
                        _log.warning("dead letter %s not stored: %s", letter.signal.id, error)
                        self.unshipped += 1
                        break
                    await asyncio.sleep(_BACKOFF.delay(attempt + 1, _UNUSED))
            self._queue.popleft()


async def read_dead_letters(
    stream: Stream,
    node_id: str,
    *,
    from_seq: int = 1,
    limit: int = 1000,
    timeout: float = 2.0,
) -> list[StoredDeadLetter]:
    """The dead letters ``node_id`` stored, oldest first, from ``from_seq`` (at most
    ``limit``); works after that node is gone."""
    subject = dead_letter_subject(node_id)
    letters: list[StoredDeadLetter] = []
    seq = from_seq
    while len(letters) < limit:
        stored = await stream.next_message(subject, seq, timeout=timeout)
        if stored is None:
            break
        raw = orjson.loads(stored.data)
        letters.append(
            StoredDeadLetter(
                seq=stored.seq,
                node_id=decode_token(stored.subject.split(".", 1)[1]),
                reason=raw["reason"],
                agent_id=raw.get("agent_id"),
                at=raw["at"],
                signal=raw["signal"],
                error=raw.get("error"),
            )
        )
        seq = stored.seq + 1
    return letters
