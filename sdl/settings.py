"""The base of every configuration model: frozen pydantic sections, YAML reading, one-line errors.

Configs, agent settings and wire messages are validated once, at the edge, by pydantic models built
on :class:`Section`; an invalid one is refused with :class:`ConfigError` naming the field, what was
wrong and what is allowed (:func:`describe_validation_error`), never with a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

SectionT = TypeVar("SectionT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used, with the reason and the allowed values."""


class Section(BaseModel):
    """A configuration section: unknown keys are refused, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoSettings(Section):
    """Settings of something that has none."""


# A path as the user meant it: relative to the working directory where the config is loaded (where
# `sdl run` was started), made absolute there, so that an agent started in another process or on
# another node reads the same file.
ResolvedPath = Annotated[Path, AfterValidator(lambda path: path.expanduser().resolve())]


def describe_validation_error(error: ValidationError) -> str:
    """One clause per problem, joined on one line: where it is and what was wrong."""
    parts = []
    for item in error.errors(include_url=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in item["loc"])
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The parsed YAML of ``path``; a missing file or bad YAML is a ConfigError that says so."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; give a {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


def validate(model: type[SectionT], data: Any, *, source: str) -> SectionT:
    """``model`` validated from ``data`` (an empty file means all defaults); a ConfigError naming
    ``source`` and every problem otherwise."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe_validation_error(e)}") from None


def load_yaml(model: type[SectionT], path: str | Path, what: str = "config file") -> SectionT:
    """Read and validate a YAML file in one step."""
    return validate(model, read_yaml(path, what), source=str(path))
