"""A pipeline: ordered stages across agents, each stage's answer the next stage's input.

Theory of operation. ``pipeline`` calls the stages one after the other. A stage is an
agent id, or ``Capability(name)`` — one holder picked by the cluster's routing (round
robin, passing over holders on suspected nodes) when the stage's turn comes. Stage ``i``
gets a signal of ``signal_type`` with data ``{"input": value, "stage": i}``, where
``value`` is the pipeline's ``data`` for stage 0 and the previous stage's answer after
that; the last stage's answer is the pipeline's result. The stage signals share one
``correlationid`` (the pipeline's id) and each names the previous one as its cause, so a
trace shows the whole run.

Each stage is bounded by ``timeout``; ``total_timeout``, when given, bounds the whole run
(a stage gets the smaller of ``timeout`` and what is left of it). The first stage that
fails — the action raised, no answer in time, no such agent or no holder, its node gone —
stops the pipeline with ``StageFailed(stage, target, cause)``: ``target`` is the agent
asked (for a capability stage, the holder picked, or ``capability:<name>`` when there was
none). Stages are not retried: a stage may have had effects, and whether running it again
is safe is the caller's to judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agentcluster.agent.node import Capability
from agentcluster.cluster.coordination.scatter import check_timeout, routing_of
from agentcluster.core.ids import new_id
from agentcluster.core.signal import Signal
from agentcluster.errors import AgentClusterError, CallTimeout, ConfigurationError, StageFailed

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = ["Stage", "pipeline"]

Stage = str | Capability
"""An agent id, or a capability one of whose holders runs the stage."""

STAGE_FAILED = ("agentcluster", "coordination", "pipeline", "stage_failed")


def _name(stage: Stage) -> str:
    return stage if isinstance(stage, str) else f"capability:{stage.name}"


async def pipeline(
    node: ClusterNode,
    stages: Sequence[Stage],
    data: Any,
    *,
    signal_type: str = "pipeline.process",
    timeout: float,
    total_timeout: float | None = None,
) -> Any:
    """Run ``data`` through ``stages`` in order and return the last stage's answer (see
    the module docstring); ``StageFailed`` names the first stage that failed."""
    outbound, _registry = routing_of(node)
    if not stages:
        raise ConfigurationError("a pipeline needs at least one stage")
    for stage in stages:
        if not isinstance(stage, str | Capability) or (
            isinstance(stage, Capability) and stage.mode != "one"
        ):
            raise ConfigurationError(
                f"a stage is an agent id or Capability(name) with mode 'one', not {stage!r}"
            )
    per_stage = check_timeout("timeout", timeout)
    clock = node.local.clock
    end = None
    if total_timeout is not None:
        end = clock.monotonic() + check_timeout("total_timeout", total_timeout)
    pipeline_id = new_id()
    value = data
    cause_id: str | None = None
    for index, stage in enumerate(stages):
        target = _name(stage)
        budget = per_stage if end is None else min(per_stage, end - clock.monotonic())
        signal = Signal(
            signal_type,
            {"input": value, "stage": index},
            correlationid=pipeline_id,
            causationid=cause_id,
        )
        try:
            if budget <= 0:
                raise CallTimeout(
                    f"pipeline {pipeline_id} spent its total_timeout of {total_timeout:g} s "
                    f"before stage {index}"
                )
            if isinstance(stage, Capability):
                (target,) = outbound.targets(stage, signal)
            value = await outbound.call(target, signal, timeout=budget)
        except AgentClusterError as error:
            node.local.telemetry.emit(
                STAGE_FAILED,
                {"stage": index},
                {"pipeline_id": pipeline_id, "target": target, "reason": error.reason},
            )
            raise StageFailed(index, target, error) from error
        cause_id = signal.id
    return value
