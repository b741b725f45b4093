"""Agents: a state schema, actions, routes, capabilities, skills and sensors.

A subclass of ``Agent`` is a *declaration*; everything derived from it (the route trie,
the action table, which hooks are overridden, the skills mounted) is compiled once when
the class is defined, so starting an agent costs one small object and its state model —
cheap enough to run one agent per user, session or document. Clashes between the agent
and its skills are refused at that moment, not when a signal arrives.

An instance holds only what differs between agents of one class: its id, its state, the
states of its skills' namespaces and its pending schedules. ``snapshot()`` writes these
as JSON-safe data with the class's ``schema_version``; ``restore()`` reads them back,
upgrading older versions through ``migrate`` and raising ``RestoreFailed`` — never
starting from a fresh state — when that is impossible.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from agentcluster.agent.action import Action, _errors
from agentcluster.agent.sensor import Sensor
from agentcluster.agent.skill import Skill
from agentcluster.core.routes import Router
from agentcluster.errors import (
    ActionValidationError,
    ConfigurationError,
    RestoreFailed,
    SkillMountError,
)

__all__ = ["Agent", "AgentState", "RouteEntry", "apply_changes"]


class AgentState(BaseModel):
    """Default state schema: any JSON-safe fields, set by ``ctx.set``."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """What a route leads to: an action class or a handler, and its state namespace."""

    target: type[Action] | Callable[..., Any] | str
    namespace: str | None
    is_action: bool
    label: str


@dataclass(slots=True)
class ScheduleEntry:
    key: str
    action: str
    params: dict[str, Any] | None
    due: float
    every: float | None
    handle: Any = None


class _Compiled:
    __slots__ = (
        "actions",
        "has_after",
        "has_before",
        "has_error",
        "has_mount",
        "has_shutdown",
        "namespaces",
        "router",
        "sensors",
        "skill_states",
    )

    def __init__(self) -> None:
        self.router: Router[RouteEntry] = Router()
        self.actions: dict[str, type[Action]] = {}
        self.namespaces: dict[str, str | None] = {}
        self.skill_states: dict[str, type[BaseModel]] = {}
        self.sensors: tuple[Sensor, ...] = ()
        self.has_mount = self.has_shutdown = False
        self.has_before = self.has_after = self.has_error = False


_set = object.__setattr__


def _shallow_copy(model: BaseModel) -> BaseModel:
    # What BaseModel.__copy__ does, without its generality: this runs on every change.
    new = model.__class__.__new__(model.__class__)
    _set(new, "__dict__", model.__dict__.copy())
    _set(new, "__pydantic_fields_set__", model.__pydantic_fields_set__.copy())
    extra = model.__pydantic_extra__
    _set(new, "__pydantic_extra__", None if extra is None else extra.copy())
    private = model.__pydantic_private__
    _set(new, "__pydantic_private__", None if private is None else private.copy())
    return new


def apply_changes(model: BaseModel, changes: Mapping[str, Any], label: str) -> BaseModel:
    """A copy of ``model`` with ``changes`` validated field by field (not the whole model)."""
    new = _shallow_copy(model)
    validator = model.__pydantic_validator__
    try:
        for name, value in changes.items():
            validator.validate_assignment(new, name, value)
    except ValidationError as exc:
        raise ActionValidationError(label, _errors(exc), what="state change") from None
    return new


_HOOKS = ("mount", "shutdown", "on_before_run", "on_after_run", "on_error")


class Agent:
    """Base class of every agent; subclass it and declare what it holds and does."""

    State: ClassVar[type[BaseModel]] = AgentState
    schema_version: ClassVar[int] = 1
    actions: ClassVar[Sequence[type[Action]]] = ()
    routes: ClassVar[Mapping[str, Any]] = {}
    capabilities: ClassVar[Sequence[str]] = ()
    skills: ClassVar[Sequence[type[Skill]]] = ()
    sensors: ClassVar[Sequence[Sensor]] = ()
    mailbox_size: ClassVar[int] = 1024
    action_timeout: ClassVar[float | None] = 30.0
    reentrant: ClassVar[bool] = False
    # Keeps running while its node is paused (a lapsed lease): only for agents that read,
    # or fence their own writes, such as the cluster's failure detector.
    runs_while_paused: ClassVar[bool] = False
    crash_on: ClassVar[tuple[type[BaseException], ...]] = ()

    _compiled: ClassVar[_Compiled]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._compiled = _compile(cls)

    def __init__(self, id: str, state: BaseModel | None = None) -> None:
        self.id = id
        if state is not None and not isinstance(state, self.State):
            raise ConfigurationError(
                f"{type(self).__name__} needs a {self.State.__name__} state, "
                f"not {type(state).__name__}"
            )
        self.state: BaseModel = state if state is not None else self.State()
        compiled = self._compiled
        self.skill_states: dict[str, BaseModel] = (
            {name: model() for name, model in compiled.skill_states.items()}
            if compiled.skill_states
            else {}
        )
        self.schedules: dict[str, ScheduleEntry] = {}
        # Copy-on-write: only agents that register or remove actions at run time get
        # their own router and action table.
        self._router: Router[RouteEntry] = compiled.router
        self._actions: dict[str, type[Action]] = compiled.actions
        self._namespaces: dict[str, str | None] = compiled.namespaces

    # --- hooks (sync or async; the runtime skips the ones not overridden) ----------

    def mount(self, ctx: Any) -> Any:
        """Runs after the agent starts or restarts; may return directives."""
        return None

    def shutdown(self, reason: str) -> Any:
        """Runs when the agent stops, with the reason ("normal", "restart", ...)."""
        return None

    def on_before_run(self, action: type[Action], params: BaseModel, ctx: Any) -> Any:
        """Runs before each action; raising rejects the action."""
        return None

    def on_after_run(self, action: type[Action], result: Any, ctx: Any) -> Any:
        """Runs after each successful action, before its directives are applied."""
        return None

    def on_error(self, error: BaseException, ctx: Any) -> Any:
        """Runs after an action's final failure; raising crashes the agent."""
        return None

    # --- state, routes and actions ------------------------------------------------

    def namespace_state(self, namespace: str | None) -> BaseModel:
        return self.state if namespace is None else self.skill_states[namespace]

    def set_state(self, changes: Mapping[str, Any], namespace: str | None, label: str) -> None:
        if namespace is None:
            self.state = apply_changes(self.state, changes, label)
        else:
            self.skill_states[namespace] = apply_changes(
                self.skill_states[namespace], changes, label
            )

    def route(self, signal_type: str) -> tuple[RouteEntry, ...]:
        return self._router.match(signal_type)

    def action_named(self, name: str) -> type[Action] | None:
        return self._actions.get(name)

    def action_namespace(self, action: type[Action]) -> str | None:
        return self._namespaces.get(action.name)

    def action_names(self) -> list[str]:
        return sorted(self._actions)

    def register_action(self, action: type[Action], pattern: str | None, priority: int) -> None:
        existing = self._actions.get(action.name)
        if existing is not None and existing is not action:
            raise ConfigurationError(
                f"agent {self.id!r} already has an action named {action.name!r}"
            )
        self._own_tables()
        compiled = self._compiled
        namespace = (
            compiled.namespaces.get(action.name)
            if compiled.actions.get(action.name) is action
            else None
        )
        self._actions[action.name] = action
        self._namespaces[action.name] = namespace
        if pattern is not None:
            entry = RouteEntry(action, namespace, True, action.name)
            # Registering again (a retried or repeated "learn") must not route twice.
            if not any(
                r.pattern == pattern and r.target == entry and r.priority == priority
                for r in self._router.routes()
            ):
                self._router.add(pattern, entry, priority)

    def remove_action(self, action: type[Action] | str) -> bool:
        name = action if isinstance(action, str) else action.name
        target = self._actions.get(name)
        if target is None:
            return False
        self._own_tables()
        del self._actions[name]
        self._namespaces.pop(name, None)
        for route in self._router.routes():
            if route.target.is_action and route.target.target is target:
                self._router.remove(route.pattern, route.target)
        return True

    def _own_tables(self) -> None:
        compiled = self._compiled
        if self._router is compiled.router:
            self._router = compiled.router.copy()
            self._actions = dict(compiled.actions)
            self._namespaces = dict(compiled.namespaces)

    # --- snapshots ----------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """JSON-safe data from which ``restore`` rebuilds this agent.

        Pending schedules are written with their remaining delay, measured from ``now``
        (monotonic seconds; the runtime passes its clock's reading).
        """
        schedules = []
        for entry in self.schedules.values():
            remaining = entry.due - now if now is not None else 0.0
            schedules.append(
                {
                    "key": entry.key,
                    "action": entry.action,
                    "params": copy.deepcopy(entry.params),
                    "due_in_ms": max(0, round(remaining * 1000)),
                    "every_ms": None if entry.every is None else round(entry.every * 1000),
                }
            )
        snap: dict[str, Any] = {
            "agent": f"{type(self).__module__}:{type(self).__qualname__}",
            "id": self.id,
            "schema_version": self.schema_version,
            "state": self.state.model_dump(mode="json"),
            "skills": {
                name: model.model_dump(mode="json") for name, model in self.skill_states.items()
            },
            "schedules": schedules,
        }
        return snap

    @classmethod
    def migrate(cls, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Upgrade a snapshot written at ``version`` to ``schema_version``.

        Override to support old snapshots; the default refuses, so an old snapshot is
        never read as if it were current.
        """
        raise RestoreFailed(
            f"{cls.__name__} has no migration from schema version {version} to {cls.schema_version}"
        )

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any], now: float = 0.0) -> Agent:
        """Rebuild an agent from ``snapshot``; raises RestoreFailed, never resets."""
        try:
            if not isinstance(snapshot, Mapping):
                raise RestoreFailed(f"a snapshot is a mapping, not {type(snapshot).__name__}")
            # A deep copy: ``migrate`` may edit what it is given, and the caller's snapshot
            # must survive a failed restore intact (to retry it, or to restore it elsewhere).
            data = copy.deepcopy(dict(snapshot))
            agent_id = data["id"]
            version = data.get("schema_version")
            if isinstance(version, bool) or not isinstance(version, int):
                raise RestoreFailed(f"snapshot has no integer schema_version: {version!r}")
            if version > cls.schema_version:
                raise RestoreFailed(
                    f"snapshot schema version {version} is newer than "
                    f"{cls.__name__}.schema_version {cls.schema_version}"
                )
            if version < cls.schema_version:
                try:
                    data = cls.migrate(version, data)
                except RestoreFailed:
                    raise
                except Exception as exc:
                    raise RestoreFailed(
                        f"{cls.__name__}.migrate from schema version {version} failed: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                if not isinstance(data, dict):
                    raise RestoreFailed(f"{cls.__name__}.migrate returned {type(data).__name__}")
            state = cls.State.model_validate(data["state"])
            agent = cls(agent_id, state)
            for name, raw in (data.get("skills") or {}).items():
                model = cls._compiled.skill_states.get(name)
                if model is None:
                    raise RestoreFailed(f"snapshot holds state of unknown skill {name!r}")
                agent.skill_states[name] = model.model_validate(raw)
            for item in data.get("schedules") or ():
                if item["action"] not in cls._compiled.actions:
                    raise RestoreFailed(f"snapshot schedules unknown action {item['action']!r}")
                every = item.get("every_ms")
                agent.schedules[item["key"]] = ScheduleEntry(
                    key=item["key"],
                    action=item["action"],
                    params=item.get("params"),
                    due=now + item["due_in_ms"] / 1000,
                    every=None if every is None else every / 1000,
                )
        except RestoreFailed as exc:
            if exc.agent_id is None:
                exc.agent_id = snapshot.get("id") if isinstance(snapshot, Mapping) else None
            raise
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise RestoreFailed(
                f"cannot restore {cls.__name__} from snapshot: {type(exc).__name__}: {exc}",
                agent_id=snapshot.get("id") if isinstance(snapshot, Mapping) else None,
            ) from exc
        return agent

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r}>"


def _overrides(cls: type, name: str) -> bool:
    return getattr(cls, name) is not getattr(Agent, name)


def _compile(cls: type[Agent]) -> _Compiled:
    compiled = _Compiled()
    if not (isinstance(cls.State, type) and issubclass(cls.State, BaseModel)):
        raise ConfigurationError(f"{cls.__name__}.State must be a pydantic model class")
    if cls.mailbox_size < 1:
        raise ConfigurationError(f"{cls.__name__}.mailbox_size must be at least 1")
    if cls.action_timeout is not None and cls.action_timeout <= 0:
        raise ConfigurationError(f"{cls.__name__}.action_timeout must be positive or None")
    if not isinstance(cls.schema_version, int) or cls.schema_version < 1:
        raise ConfigurationError(f"{cls.__name__}.schema_version must be an integer >= 1")
    for hook in _HOOKS:
        if _overrides(cls, hook):
            setattr(compiled, f"has_{hook.removeprefix('on_').removesuffix('_run')}", True)

    owner: dict[str, str] = {}  # pattern or action name -> who declared it

    def add_action(action: Any, namespace: str | None, who: str) -> None:
        if not (isinstance(action, type) and issubclass(action, Action)):
            raise ConfigurationError(f"{who}: {action!r} is not an Action subclass")
        existing = compiled.actions.get(action.name)
        if existing is not None and existing is not action:
            raise SkillMountError(
                f"{cls.__name__}: action name {action.name!r} is declared by both "
                f"{owner[action.name]} and {who}"
            )
        if existing is None:
            compiled.actions[action.name] = action
            compiled.namespaces[action.name] = namespace
            owner[action.name] = who

    def add_routes(routes: Mapping[str, Any], namespace: str | None, who: str) -> None:
        for pattern, value in routes.items():
            key = f"route:{pattern}"
            if key in owner:
                raise SkillMountError(
                    f"{cls.__name__}: route {pattern!r} is declared by both {owner[key]} and {who}"
                )
            owner[key] = who
            for target, priority in _route_targets(value, who, pattern):
                if isinstance(target, type) and issubclass(target, Action):
                    add_action(target, namespace, who)
                    entry = RouteEntry(target, namespace, True, target.name)
                elif isinstance(target, str):
                    if not callable(getattr(cls, target, None)):
                        raise ConfigurationError(
                            f"{who}: route {pattern!r} leads to {target!r}, which is not a "
                            f"method of {cls.__name__}"
                        )
                    entry = RouteEntry(target, namespace, False, target)
                elif callable(target) and not isinstance(target, type | str):
                    entry = RouteEntry(target, namespace, False, _callable_name(target))
                else:
                    raise ConfigurationError(
                        f"{who}: route {pattern!r} leads to {target!r}, which is neither an "
                        "Action subclass, a method name of the agent nor a function"
                    )
                compiled.router.add(pattern, entry, priority)

    for attr in ("actions", "capabilities", "skills", "sensors"):
        _check_sequence(getattr(cls, attr), f"{cls.__name__}.{attr}")
    if not isinstance(cls.routes, Mapping):
        raise ConfigurationError(f"{cls.__name__}.routes must be a mapping of pattern to target")
    for cap in cls.capabilities:
        if not isinstance(cap, str) or not cap:
            raise ConfigurationError(f"{cls.__name__}: capability {cap!r} is not a non-empty str")

    for action in cls.actions:
        add_action(action, None, cls.__name__)
    add_routes(cls.routes, None, cls.__name__)
    sensors: list[Sensor] = _sensors(cls.sensors, cls.__name__)

    skill_names: set[str] = set()
    for skill in cls.skills:
        if not (isinstance(skill, type) and issubclass(skill, Skill)):
            raise ConfigurationError(f"{cls.__name__}: {skill!r} is not a Skill subclass")
        name = getattr(skill, "name", None)
        if not isinstance(name, str) or not name:
            raise SkillMountError(f"{cls.__name__}: skill {skill!r} has no name")
        if name in skill_names:
            raise SkillMountError(f"{cls.__name__}: skill {name!r} is mounted twice")
        if name in cls.State.model_fields:
            raise SkillMountError(
                f"{cls.__name__}: skill namespace {name!r} clashes with a state field"
            )
        skill_names.add(name)
        who = f"skill {name!r}"
        namespace = name if skill.State is not None else None
        if skill.State is not None:
            compiled.skill_states[name] = skill.State
        for action in skill.actions:
            add_action(action, namespace, who)
        add_routes(skill.routes, namespace, who)
        sensors.extend(_sensors(skill.sensors, who))
    compiled.sensors = tuple(sensors)
    return compiled


def _check_sequence(value: Any, what: str) -> None:
    # A bare class or string would be iterated item by item (``capabilities = "search"``
    # would declare six one-letter capabilities), so only lists and tuples are accepted.
    if not isinstance(value, list | tuple):
        raise ConfigurationError(f"{what} must be a list or tuple, got {value!r}")


def _sensors(declared: Sequence[Any], who: str) -> list[Sensor]:
    out = []
    for sensor in declared:
        if not isinstance(sensor, Sensor):
            raise ConfigurationError(
                f"{who}: {sensor!r} is not a Sensor instance (declare e.g. IntervalSensor(1.0))"
            )
        out.append(sensor)
    return out


def _route_targets(value: Any, who: str, pattern: str) -> list[tuple[Any, int]]:
    """Route values: a target, ``(target, priority)``, or a list of either."""
    items = value if isinstance(value, list) else [value]
    out: list[tuple[Any, int]] = []
    for item in items:
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[1], int):
                raise ConfigurationError(
                    f"{who}: route {pattern!r} must map to a target or (target, priority)"
                )
            out.append((item[0], item[1]))
        else:
            out.append((item, 0))
    return out


def _callable_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
