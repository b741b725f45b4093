"""Starting and stopping agents on another node: restart specs and the node control service.

An agent that may be started by another process (``start_agent(..., node="n2")`` from a
client, a node process's ``--agents``, failover later) is named by its **restart spec**:
JSON holding the import path of its class (``"module:Class"``) and the parameters of the
start (initial state, capabilities, restart type, the resources it reserves and the
placement strategy that chose its node). ``spec_of`` builds it and refuses a
class that another process could not import (defined in ``__main__`` or inside a
function); ``load_agent_class`` turns the path back into the class and checks it is an
``Agent``.

Every node answers requests on ``ac.node.<encoded id>.ctl`` (core request/reply; a request
is idempotent for an id, so a caller may repeat one whose reply was lost): ``start``
starts the agent there and registers it, ``stop`` stops it. The reply is the registry
entry, or the error as ``wire.error_to_dict`` so the caller raises the same typed error
the node did.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from agentcluster.agent.agent import Agent
from agentcluster.cluster.wire import error_from_dict, error_to_dict
from agentcluster.core.registry import AgentEntry
from agentcluster.errors import (
    AgentClusterError,
    ConfigurationError,
    NodeUnavailable,
    NoResponders,
    RequestTimeout,
)
from agentcluster.transport.interface import Connection, Message, Subscription
from agentcluster.transport.names import encode_token

if TYPE_CHECKING:
    from agentcluster.cluster.node import ClusterNode

__all__ = [
    "AgentSource",
    "NodeControl",
    "class_path",
    "control_subject",
    "load_agent_class",
    "remember_class",
    "request_start",
    "request_stop",
    "spec_of",
]

_log = logging.getLogger("agentcluster.cluster.control")

AgentSource = type[Agent] | str | Mapping[str, Any]
"""What ``start_agent`` takes: a class, an import path ``"module:Class"``, or a spec."""

_SPEC_KEYS = frozenset(
    {
        "class",
        "state",
        "capabilities",
        "restart",
        "resources",
        "placement",
        "mode",
        "max_staleness",
        "max_attempts",
        "mailbox_size",
        "max_restarts",
        "restart_period",
    }
)

_KNOWN_CLASSES: dict[str, type[Agent]] = {}
"""Classes started in this process, by path: ``Cluster.local`` fails an agent over to
another node of the same process, which may restore a class no other process could import
(defined in a function or in ``__main__``). Bounded; the oldest is forgotten first."""

_KNOWN_LIMIT = 4096


def remember_class(agent: type[Agent]) -> str:
    """Record ``agent`` under its path for ``load_agent_class`` in this process."""
    path = class_path(agent, importable=False)
    _KNOWN_CLASSES.pop(path, None)
    _KNOWN_CLASSES[path] = agent
    while len(_KNOWN_CLASSES) > _KNOWN_LIMIT:
        del _KNOWN_CLASSES[next(iter(_KNOWN_CLASSES))]
    return path


def control_subject(node_id: str) -> str:
    return f"ac.node.{encode_token(node_id)}.ctl"


def class_path(agent: type[Agent], *, importable: bool = True) -> str:
    """The import path of ``agent``. With ``importable`` (for a start in another
    process), ``ConfigurationError`` when another process could not import it."""
    module, qualname = agent.__module__, agent.__qualname__
    if importable and (module == "__main__" or "<locals>" in qualname):
        raise ConfigurationError(
            f"agent class {qualname!r} of module {module!r} cannot be imported by another "
            "process; define it at the top level of an importable module"
        )
    return f"{module}:{qualname}"


def spec_of(source: AgentSource, **params: Any) -> dict[str, Any]:
    """The restart spec of ``source``: ``{"class": path, ...params}`` (JSON-ready).

    ``params`` hold the start's parameters (``state``, ``capabilities``, ``restart``);
    ones that are ``None`` are left out, and anything not JSON-serialisable is refused.
    """
    if isinstance(source, type):
        spec: dict[str, Any] = {"class": class_path(source)}
    elif isinstance(source, str):
        spec = {"class": source}
    elif isinstance(source, Mapping):
        spec = dict(source)
        if not isinstance(spec.get("class"), str):
            raise ConfigurationError(f"an agent spec needs a 'class' import path, got {spec!r}")
    else:
        raise ConfigurationError(
            f"start_agent takes an Agent class, 'module:Class' or a spec, not {source!r}"
        )
    for key, value in params.items():
        if value is not None:
            spec[key] = list(value) if isinstance(value, tuple) else value
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigurationError(f"unknown agent spec keys {unknown}; known: {sorted(_SPEC_KEYS)}")
    try:
        orjson.dumps(spec)
    except TypeError as error:
        raise ConfigurationError(f"agent spec is not JSON: {error}") from None
    return spec


def load_agent_class(path: str) -> type[Agent]:
    """Import ``"module:Class"``; ``ConfigurationError`` naming what is missing."""
    known = _KNOWN_CLASSES.get(path)
    if known is not None:
        return known
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise ConfigurationError(f"an agent class path is 'module:Class', got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(f"cannot import module {module_name!r}: {error}") from None
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no {qualname!r}") from None
    if not (isinstance(target, type) and issubclass(target, Agent)):
        raise ConfigurationError(f"{path!r} is not an Agent class")
    return target


class NodeControl:
    """Answers ``start`` and ``stop`` requests for one node (module docstring)."""

    def __init__(self, node: ClusterNode, connection: Connection) -> None:
        self._node = node
        self._conn = connection
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self._conn.subscribe(control_subject(self._node.node_id), self._on)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except AgentClusterError:
                pass
            self._sub = None
        for task in list(self._tasks):
            task.cancel()

    async def _on(self, msg: Message) -> None:
        if not msg.reply:
            return
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Message) -> None:
        try:
            request = orjson.loads(msg.data)
            if not isinstance(request, dict):
                raise ConfigurationError("a control request is a JSON object")
            reply: dict[str, Any] = {"ok": await self._handle(request)}
        except asyncio.CancelledError:
            raise
        except AgentClusterError as error:
            reply = {"error": error_to_dict(error)}
        except Exception as error:  # a supervision boundary: the caller gets it typed
            _log.exception("control request on %r failed", self._node.node_id)
            reply = {"error": error_to_dict(error)}
        try:
            await self._conn.publish(msg.reply, orjson.dumps(reply))
        except AgentClusterError:
            _log.warning("could not answer a control request on %r", self._node.node_id)

    async def _handle(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        agent_id = request.get("id")
        if not isinstance(agent_id, str) or not agent_id:
            raise ConfigurationError(f"a control request needs an agent 'id', got {agent_id!r}")
        if op == "start":
            spec = request.get("spec")
            if not isinstance(spec, dict):
                raise ConfigurationError("a start request needs a 'spec' object")
            entry = await self._node.start_agent(spec, agent_id)
            registry = self._node.registry
            revision = None if registry is None else registry.revision_of(agent_id)
            return {"entry": orjson.loads(entry.to_bytes()), "revision": revision}
        if op == "stop":
            return await self._node.stop_agent(agent_id)
        raise ConfigurationError(f"unknown control op {op!r}; known: start, stop")


async def _request(conn: Connection, node_id: str, body: dict[str, Any], timeout: float) -> Any:
    try:
        raw = await conn.request(control_subject(node_id), orjson.dumps(body), timeout=timeout)
    except (NoResponders, RequestTimeout) as error:
        raise NodeUnavailable(
            f"node {node_id!r} did not answer a {body['op']} request: {error}",
            node_id=node_id,
        ) from None
    reply = orjson.loads(raw.data)
    if "error" in reply:
        raise error_from_dict(reply["error"])
    return reply["ok"]


async def request_start(
    conn: Connection, node_id: str, agent_id: str, spec: Mapping[str, Any], timeout: float
) -> tuple[AgentEntry, int | None]:
    """Start an agent on ``node_id`` from its spec: its entry and the entry's revision.
    Raises the node's typed error."""
    body = {"op": "start", "id": agent_id, "spec": dict(spec)}
    reply = await _request(conn, node_id, body, timeout)
    revision = reply.get("revision")
    return AgentEntry.from_bytes(orjson.dumps(reply["entry"])), (
        revision if isinstance(revision, int) else None
    )


async def request_stop(conn: Connection, node_id: str, agent_id: str, timeout: float) -> bool:
    return bool(await _request(conn, node_id, {"op": "stop", "id": agent_id}, timeout))
