"""The one activation path of a persistent agent: ``start_agent``, a takeover and a
failover all bring a critical or durable agent up through ``activate``.

Why one path (DESIGN.md, "Failover is reconciliation"): the fencing argument holds only if
every new owner does the same five steps in the same order —

1. the registry entry names this node and agent incarnation ``N`` with status
   ``starting`` (``start_agent`` wrote it; for a failover the leader did);
2. read the state key (``RestoreFailed`` if it is there but unreadable: the entry is
   marked ``failed``, never started fresh);
3. write the *fencing snapshot* — what was read, stamped with incarnation ``N`` — by
   compare-and-set at the revision read. A conflict means another writer: read again and
   restore again; a snapshot already at a higher incarnation aborts (``AgentFenced``).
   From here on every write is a compare-and-set on this owner's previous revision, so a
   zombie's next write loses;
4. for a durable agent, walk its inbox subject from the restored floor and replay what
   is not applied — each run's attempt committed before it runs, a signal past its
   attempt limit dead-lettered — then re-release the restored outbox;
5. mark the entry ``running`` by compare-and-set at the revision seen in step 1.

An error in any step marks the entry ``failed`` with its reason (except ``AgentFenced``:
someone newer owns the agent, and nothing is written). A retryable error — the store did
not answer, as while a stream elects its leader — is not the agent's failure: the whole
activation is tried again from step 2 while the entry still names this node and
incarnation, for up to the activation timeout, and if the store stays silent that long the
entry is left ``starting`` for the leader to plan again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agentcluster.cluster.control import load_agent_class
from agentcluster.cluster.keeper import AgentKeeper
from agentcluster.cluster.retrying import retry_for
from agentcluster.core.failover import ACTIVATION_TIMEOUT
from agentcluster.core.inbox_position import DeadLetter, InboxPosition, Run, Skip, replay_plan
from agentcluster.core.registry import AgentEntry, AgentMode, AgentStatus
from agentcluster.core.signal import Signal
from agentcluster.core.snapshots import Outbox, SnapshotEnvelope
from agentcluster.errors import (
    ActionFailed,
    AgentClusterError,
    AgentFenced,
    RevisionMismatch,
)

if TYPE_CHECKING:
    from agentcluster.agent.agent import Agent
    from agentcluster.cluster.node import ClusterNode

__all__ = ["DEFAULT_MAX_ATTEMPTS", "REPLAY_TIMEOUT", "activate", "persistent_options"]

_log = logging.getLogger("agentcluster.cluster.activation")

DEFAULT_MAX_ATTEMPTS = 3
"""Replays a signal may start before it is dead-lettered as a poison signal."""

REPLAY_TIMEOUT = 30.0
"""Seconds one replayed signal may take before the activation gives up on it."""

_FENCE_ROUNDS = 8

_LOCAL_OPTIONS = ("restart", "max_restarts", "restart_period", "mailbox_size")


def persistent_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``LocalNode.start_agent`` options a restart spec carries."""
    return {key: spec[key] for key in _LOCAL_OPTIONS if spec.get(key) is not None}


async def activate(node: ClusterNode, entry: AgentEntry, revision: int) -> AgentEntry:
    """Bring ``entry`` (``starting`` on this node at its incarnation, at ``revision``) up;
    returns the entry as written ``running``. Raises what failed, after marking it."""
    registry = node._registry()
    try:
        return await retry_for(
            lambda: _attempt(node, entry, revision),
            retry_on=lambda error: _transient(error) and _still_assigned(node, entry),
            within=ACTIVATION_TIMEOUT,
        )
    except AgentFenced:
        await _drop_local(node, entry.id, "fenced")
        raise
    except Exception as error:
        await _drop_local(node, entry.id, "activation_failed")
        if _transient(error):
            _log.warning("activation of %r left starting: %s", entry.id, error)
            raise
        reason = error.reason if isinstance(error, AgentClusterError) else "activation_failed"
        detail = f"{reason}: {type(error).__name__}: {error}"
        held = registry.revision_of(entry.id)
        current = registry.lookup(entry.id)
        if held is not None and current is not None and current.incarnation == entry.incarnation:
            failed = replace(
                current, status=AgentStatus.FAILED, reason=detail[:500], stamp=node._stamp()
            )
            try:
                await registry.write_at(failed, held)
            except AgentClusterError as write_error:
                _log.warning("could not mark %r failed: %s", entry.id, write_error)
        node.local.telemetry.emit(
            ("agentcluster", "agent", "activation_failed"),
            {"count": 1},
            {"agent_id": entry.id, "node_id": node.node_id, "error": detail},
        )
        raise


def _transient(error: Exception) -> bool:
    return (
        isinstance(error, AgentClusterError)
        and error.retryable
        and not isinstance(error, AgentFenced)
    )


def _still_assigned(node: ClusterNode, entry: AgentEntry) -> bool:
    current = node._registry().lookup(entry.id)
    return (
        not node.stopped
        and current is not None
        and current.node == node.node_id
        and current.incarnation == entry.incarnation
    )


async def _attempt(node: ClusterNode, entry: AgentEntry, revision: int) -> AgentEntry:
    """One try of the five steps; a transient failure leaves nothing running here."""
    try:
        return await _activate(node, entry, revision)
    except Exception as error:
        if _transient(error):
            await _drop_local(node, entry.id, "activation_retried")
        raise


def _check_entry(node: ClusterNode, entry: AgentEntry) -> None:
    """Abort (step 3) when the registry already names a newer incarnation: another node was
    given the agent while this activation ran, and writing the fencing snapshot, releasing
    the restored outbox or replaying the inbox would only be undone. The registry cache is
    a hint; the compare-and-sets of the state key and of the entry decide."""
    current = node._registry().lookup(entry.id)
    if current is not None and current.incarnation > entry.incarnation:
        raise AgentFenced(entry.id, entry.incarnation, current.incarnation)


async def _activate(node: ClusterNode, entry: AgentEntry, revision: int) -> AgentEntry:
    spec = dict(entry.spec or {})
    cls: type[Agent] = load_agent_class(spec["class"])
    durable = entry.mode is AgentMode.DURABLE
    store = node.state_store
    inbox = node.durable_inbox if durable else None
    assert store is not None
    clock = node.local.clock
    max_attempts = int(spec.get("max_attempts") or DEFAULT_MAX_ATTEMPTS)

    found: list[tuple[int, Signal | None]] = []
    for _ in range(_FENCE_ROUNDS):
        stored = await store.read(entry.id)
        envelope = stored.envelope
        if envelope is not None and envelope.agent_incarnation > entry.incarnation:
            raise AgentFenced(entry.id, entry.incarnation, envelope.agent_incarnation)
        _check_entry(node, entry)
        now = clock.monotonic()
        if envelope is not None:
            # Restore into a throwaway first: an unrestorable snapshot fails here, before
            # anything is written (RestoreFailed marks the entry failed).
            cls.restore(envelope.state, now)
            snapshot: dict[str, Any] = dict(envelope.state)
            outbox = list(envelope.outbox)
        else:
            snapshot = _fresh(cls, entry.id, spec.get("state"), now)
            outbox = []
        position: InboxPosition | None = None
        found = []
        if durable:
            assert inbox is not None
            position = (
                InboxPosition.from_json(envelope.inbox)
                if envelope is not None and envelope.inbox is not None
                else InboxPosition()
            )
            async for seq, signal, _raw in inbox.walk(entry.id, position.purge_below(), now):
                found.append((seq, signal))
            plan = replay_plan(position, [seq for seq, _ in found], max_attempts)
            position = plan.position
            decisions = plan.decisions
        _check_entry(node, entry)  # the walk may have taken a while
        fencing = SnapshotEnvelope(
            schema_version=snapshot["schema_version"],
            state=snapshot,
            schedules=snapshot.get("schedules", []),
            outbox=outbox,
            inbox=None if position is None else position.to_json(),
            agent_incarnation=entry.incarnation,
        )
        try:
            state_revision, pointer = await store.write(
                entry.id, fencing, stored.revision, replaces=stored.pointer
            )
        except AgentFenced:
            continue
        break
    else:
        raise AgentFenced(entry.id, entry.incarnation)
    telemetry = node.local.telemetry
    if telemetry.enabled:
        telemetry.emit(
            ("agentcluster", "agent", "committed"),
            {"count": 1},
            {
                "agent_id": entry.id,
                "incarnation": entry.incarnation,
                "kind": "fencing",
                "revision": state_revision,
                "node_id": node.node_id,
            },
        )

    options = persistent_options(spec)
    await node.local.start_agent(
        cls,
        entry.id,
        snapshot=snapshot,
        capabilities=tuple(entry.capabilities) or None,
        **options,
    )
    server = node.local.server(entry.id)
    keeper = AgentKeeper(
        node.keeper_deps(spec.get("max_staleness")),
        entry.id,
        entry.mode,
        entry.incarnation,
        revision=state_revision,
        pointer=pointer,
        outbox=Outbox.restored(outbox),
        position=position,
    )
    node.keepers[entry.id] = keeper
    keeper.attach(server)
    # The restored outbox is released only once the entry is ours (step 5): an activation
    # overtaken while it started (a slow mount, a long replay) must send nothing.
    restored = keeper.outbox.for_snapshot()
    _check_entry(node, entry)
    if durable:
        await _replay_in_time(node, entry, keeper, found, decisions)
        _check_entry(node, entry)
    keeper.running = True
    running = await _mark_running(node, entry, revision)
    keeper.release_restored(restored)
    return running


def _fresh(cls: type[Agent], agent_id: str, state: Any, now: float) -> dict[str, Any]:
    from agentcluster.agent.agent import apply_changes

    if state is None:
        agent = cls(agent_id)
    else:
        agent = cls(agent_id, apply_changes(cls.State(), state, f"{cls.__name__}.State"))
    return agent.snapshot(now)


async def _replay_in_time(
    node: ClusterNode,
    entry: AgentEntry,
    keeper: AgentKeeper,
    found: list[tuple[int, Signal | None]],
    decisions: tuple[Any, ...],
) -> None:
    """Replay while telling the leader the activation is alive: the entry is rewritten
    (``starting``, same incarnation, a fresh stamp) every third of the activation timeout,
    and a new revision restarts the planner's count. A long backlog then never looks like
    a stuck activation, which would be planned again, over and over. The rewrite is a
    compare-and-set: when the entry moved on, the replay stops (``AgentFenced``)."""
    config = node.failover.config if node.failover is not None else None
    every = (config.activation_timeout if config is not None else ACTIVATION_TIMEOUT) / 3
    replay = asyncio.create_task(_replay(node, keeper, found, decisions))
    alive = asyncio.create_task(_keep_starting(node, entry, every))
    try:
        await asyncio.wait((replay, alive), return_when=asyncio.FIRST_COMPLETED)
        if not replay.done():
            alive.result()  # it only ends by raising: the entry moved on, or the store failed
        replay.result()
    finally:
        for task in (replay, alive):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _keep_starting(node: ClusterNode, entry: AgentEntry, every: float) -> None:
    registry = node._registry()
    while True:
        await asyncio.sleep(every)
        try:
            found = await registry.read(entry.id)
        except AgentClusterError as error:
            if not error.retryable:
                raise
            continue  # the store did not answer: try again next time
        current, at = _still_ours(node, entry, found)
        if current.status is not AgentStatus.STARTING:
            raise AgentFenced(entry.id, entry.incarnation, current.incarnation)
        try:
            await registry.write_at(replace(current, stamp=node._stamp()), at)
        except RevisionMismatch:
            continue  # written meanwhile: the next look tells by whom
        except AgentClusterError as error:
            if not error.retryable:
                raise


async def _replay(
    node: ClusterNode,
    keeper: AgentKeeper,
    found: list[tuple[int, Signal | None]],
    decisions: tuple[Any, ...],
) -> None:
    signals = dict(found)
    first = True
    for decision in decisions:
        if isinstance(decision, Skip):
            continue
        seq = decision.seq
        signal = signals.get(seq)
        if signal is None:
            _log.error("inbox message %d of %r is undecodable: skipped", seq, keeper.agent_id)
            keeper.settle(seq)
            continue
        if isinstance(decision, DeadLetter):
            node.local.dead_letter(
                signal,
                ActionFailed(
                    signal.type,
                    "PoisonSignal",
                    f"started {decision.attempts} times during replays without finishing",
                    agent_id=keeper.agent_id,
                    node_id=node.node_id,
                ),
                keeper.agent_id,
            )
            keeper.settle(seq)
            continue
        assert isinstance(decision, Run)
        if not first:
            assert keeper.position is not None
            keeper.position = keeper.position.started(decision)
            await keeper.commit_now()
        first = False
        await keeper.run_replayed(seq, signal, REPLAY_TIMEOUT)
    if decisions:
        await keeper.commit_now()


async def _mark_running(node: ClusterNode, entry: AgentEntry, revision: int) -> AgentEntry:
    registry = node._registry()
    running = replace(entry, status=AgentStatus.RUNNING, reason=None, stamp=node._stamp())
    try:
        await registry.write_at(running, revision)
    except RevisionMismatch:
        found = await registry.read(entry.id)
        current, at = _still_ours(node, entry, found)
        running = replace(current, status=AgentStatus.RUNNING, reason=None, stamp=node._stamp())
        await registry.write_at(running, at)
    return running


def _still_ours(
    node: ClusterNode, entry: AgentEntry, found: tuple[AgentEntry, int] | None
) -> tuple[AgentEntry, int]:
    """The entry as read and its revision, when it still names this node at ``entry``'s
    incarnation; ``AgentFenced`` otherwise."""
    if found is None or found[0].incarnation != entry.incarnation or found[0].node != node.node_id:
        raise AgentFenced(
            entry.id, entry.incarnation, None if found is None else found[0].incarnation
        )
    return found


async def _drop_local(node: ClusterNode, agent_id: str, reason: str) -> None:
    keeper = node.keepers.pop(agent_id, None)
    if keeper is not None:
        await keeper.close()
    if node.local.lookup(agent_id) is not None:
        try:
            await node.local.stop_agent(agent_id, reason=reason)
        except AgentClusterError as error:
            _log.debug("stopping %r after %s: %s", agent_id, reason, error)
