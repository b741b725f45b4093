"""Skills: a reusable bundle of actions, routes, sensors and a state namespace.

A skill is mounted onto any agent by listing it in ``Agent.skills``. Its state lives in
its own namespace (``agent.skill_states[skill.name]``), and its actions read and change
only that namespace through ``ctx.state`` / ``ctx.set``, so skills written by different
people cannot trample each other's fields. Mounting happens when the agent class is
defined: a name, action or route clash raises ``SkillMountError`` then, not at run time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from agentcluster.errors import ConfigurationError

if TYPE_CHECKING:
    from agentcluster.agent.action import Action
    from agentcluster.agent.sensor import Sensor

__all__ = ["Skill"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Skill:
    """Subclass and declare; skills are never instantiated."""

    name: ClassVar[str] = ""
    State: ClassVar[type[BaseModel] | None] = None
    actions: ClassVar[Sequence[type[Action]]] = ()
    routes: ClassVar[Mapping[str, Any]] = {}
    sensors: ClassVar[Sequence[Sensor]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.name or not _NAME.match(cls.name):
            raise ConfigurationError(
                f"skill {cls.__name__} needs a name of lowercase letters, digits and '_' "
                f"(got {cls.name!r})"
            )
        for attr in ("actions", "sensors"):
            if not isinstance(getattr(cls, attr), list | tuple):
                raise ConfigurationError(f"skill {cls.name!r}: {attr} must be a list or tuple")
        if not isinstance(cls.routes, Mapping):
            raise ConfigurationError(f"skill {cls.name!r}: routes must be a mapping")
        if cls.State is not None and not (
            isinstance(cls.State, type) and issubclass(cls.State, BaseModel)
        ):
            raise ConfigurationError(f"skill {cls.name!r}: State must be a pydantic model class")

    def __init__(self) -> None:
        raise TypeError("skills are declarations; list the class in Agent.skills")
