"""Actions: the unit of work an agent runs in answer to a signal.

An action is a class with a pydantic ``Params`` model, an optional ``Result`` model, and
``run(params, ctx)`` — a coroutine function, or a plain function that the runtime runs in
a bounded worker pool so it cannot block the event loop. ``run`` returns its result, or
``(result, directive)`` / ``(result, [directives])``; directives (``ctx.set(...)``,
``ctx.emit(...)``, ...) are applied by the agent server only after the action succeeded.

Per-action policy is declared on the class: ``timeout`` (seconds, None = the agent's
default), ``retry`` (a ``RetryPolicy``: exponential backoff with jitter), and an optional
``compensate(params, ctx, error)`` that runs once after the final failure — for undoing
side effects the action caused outside the agent.

``to_tool()`` describes the action for LLM function calling, so an agent's actions can be
offered to a model as tools without restating their schema.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agentcluster.agent.directives import Directive
from agentcluster.core.retry import NO_RETRY, RetryPolicy
from agentcluster.errors import ActionValidationError, ConfigurationError

if TYPE_CHECKING:
    from agentcluster.agent.context import Context

__all__ = ["Action", "NoParams", "split_outcome"]

_NAME_OK = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class NoParams(BaseModel):
    """Params of an action that takes none; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


class Action:
    """Base class of every action; subclass it and define ``run``."""

    name: ClassVar[str] = "action"
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    Result: ClassVar[type[BaseModel] | None] = None
    timeout: ClassVar[float | None] = None
    retry: ClassVar[RetryPolicy] = NO_RETRY

    _is_async: ClassVar[bool] = True
    _compensate_is_async: ClassVar[bool | None] = None
    _instance: ClassVar[Action | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = _snake(cls.__name__)
        if not _NAME_OK.match(cls.name):
            raise ConfigurationError(
                f"action name {cls.name!r} must match [a-zA-Z0-9_-]{{1,64}} (it is a tool name)"
            )
        if "description" not in cls.__dict__:
            cls.description = inspect.cleandoc(cls.__doc__) if cls.__doc__ else ""
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, BaseModel)):
            raise ConfigurationError(f"{cls.__name__}.Params must be a pydantic model class")
        if cls.Result is not None and not (
            isinstance(cls.Result, type) and issubclass(cls.Result, BaseModel)
        ):
            raise ConfigurationError(f"{cls.__name__}.Result must be a pydantic model class")
        if cls.timeout is not None and cls.timeout <= 0:
            raise ConfigurationError(f"{cls.__name__}.timeout must be positive, got {cls.timeout}")
        if not isinstance(cls.retry, RetryPolicy):
            raise ConfigurationError(f"{cls.__name__}.retry must be a RetryPolicy")
        cls._is_async = inspect.iscoroutinefunction(cls.run)
        compensate = cls.__dict__.get("compensate") or getattr(cls, "compensate", None)
        if compensate is not None and compensate is not Action.compensate:
            cls._compensate_is_async = inspect.iscoroutinefunction(compensate)
        else:
            cls._compensate_is_async = None
        cls._instance = None

    def run(self, params: Any, ctx: Context) -> Any:
        raise ConfigurationError(f"{type(self).__name__} does not define run(params, ctx)")

    def compensate(self, params: Any, ctx: Context, error: BaseException) -> Any:
        """Undo external side effects after the final failure; the default does nothing."""
        return None

    # --- used by the runtime ------------------------------------------------------

    @classmethod
    def instance(cls) -> Action:
        inst = cls._instance
        if inst is None:
            inst = cls._instance = cls()
        return inst

    @classmethod
    def validate_params(cls, data: Any) -> BaseModel:
        """Params from a signal's data; raises ActionValidationError listing each field."""
        model = cls.Params
        if type(data) is model:
            return data
        if data is None:
            data = {}
        elif isinstance(data, BaseModel):
            data = data.model_dump()
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ActionValidationError(cls.name, _errors(exc)) from None

    @classmethod
    def validate_result(cls, value: Any) -> Any:
        model = cls.Result
        if model is None or type(value) is model:
            return value
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            raise ActionValidationError(cls.name, _errors(exc), what="result") from None

    @classmethod
    def to_tool(cls, format: Literal["openai", "anthropic"] = "openai") -> dict[str, Any]:
        """A tool definition for LLM function calling, in OpenAI's or Anthropic's shape."""
        schema = cls.Params.model_json_schema()
        schema.pop("title", None)
        schema.setdefault("properties", {})
        if format == "openai":
            return {
                "type": "function",
                "function": {
                    "name": cls.name,
                    "description": cls.description,
                    "parameters": schema,
                },
            }
        if format == "anthropic":
            return {"name": cls.name, "description": cls.description, "input_schema": schema}
        raise ConfigurationError(f"unknown tool format {format!r}; use 'openai' or 'anthropic'")


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def split_outcome(value: Any) -> tuple[Any, Sequence[Directive]]:
    """Separate what ``run`` returned into (result, directives)."""
    if type(value) is tuple and len(value) == 2:
        second = value[1]
        if isinstance(second, Directive):
            return value[0], (second,)
        if isinstance(second, list | tuple) and all(isinstance(d, Directive) for d in second):
            return value[0], second
    elif isinstance(value, Directive):
        return None, (value,)
    return value, ()
