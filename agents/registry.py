"""The agent kinds a campaign can start, found through the ``sdl.agents`` entry-point group.

``sdl`` registers its own kinds in its ``pyproject.toml``; a lab's package adds one with an entry
point in its own metadata, e.g. ``[project.entry-points."sdl.agents"] "planner.mine" = "mylab.agents:Mine"``,
and a campaign then names it as ``planner: {kind: mine, settings: {...}}``. Names are
``<prefix>.<kind>`` with the prefix of the config section they belong in (``planner``,
``surrogate``, ``simulator``); the name is also the agent's default service name on the bus.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any

from pydantic import ValidationError

from sdl.agents.base import AgentContext, AgentKind, Role
from sdl.bus import Service
from sdl.settings import Section, describe_validation_error

ENTRY_POINT_GROUP = "sdl.agents"


def qualified(kind: str, prefix: str) -> str:
    """A kind as a config writes it (``bo``) as its entry-point name (``planner.bo``); full names pass."""
    return kind if "." in kind else f"{prefix}.{kind}"


def installed_kinds() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


@functools.cache  # a kind found stays found; a miss raises, which is not remembered: a plugin installed later is found
def agent_class(name: str, *, role: Role | None = None) -> type[AgentKind]:
    """The agent kind registered as ``name``; ValueError listing the installed ones otherwise."""
    kinds = installed_kinds()
    if name not in kinds:
        prefix = name.split(".")[0] + "."
        same = sorted(k.removeprefix(prefix) for k in kinds if k.startswith(prefix))
        raise ValueError(f"unknown agent kind {name!r}; installed: {', '.join(same or sorted(kinds)) or 'none'}")
    try:
        cls = kinds[name].load()
    except Exception as e:  # a broken plugin is a setup error of that plugin, said in one line
        raise ValueError(f"agent kind {name!r} ({kinds[name].value}) cannot be loaded: "
                         f"{type(e).__name__}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, AgentKind)):
        raise ValueError(f"entry point {name!r} ({kinds[name].value}) does not name an sdl.agents.base.AgentKind")
    if role is not None and cls.role != role:
        raise ValueError(f"agent kind {name!r} is a {cls.role}, not a {role}")
    return cls


def validate_settings(cls: type[AgentKind], settings: Any, *, name: str) -> Section:
    """``settings`` as the kind's own Settings model; ValueError with every problem on one line."""
    if isinstance(settings, cls.Settings):
        return settings
    try:
        return cls.Settings.model_validate(settings if settings is not None else {})
    except ValidationError as e:
        raise ValueError(f"settings of {name}: {describe_validation_error(e)}") from None


def build_service(name: str, settings: Section, context: AgentContext) -> Service:
    """Build the agent's bus service (inside its actor or process)."""
    cls = agent_class(name)
    return cls.build(validate_settings(cls, settings, name=name), context)
