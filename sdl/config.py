"""Campaign configuration: YAML validated by pydantic, with defaults that run on one machine.

Every section has defaults, so a config names only what differs. An invalid file raises
:class:`ConfigError` naming the field, what was wrong, and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sdl.protocol import ProcessStep, describe_validation_error
from sdl.space import SearchSpace


class ConfigError(ValueError):
    """A configuration file that cannot be used, with the reason and the allowed values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BusConfig(_Section):
    """Where the broker listens. ``*`` picks a free port; a lab with external instruments fixes one."""

    frontend: str = "tcp://127.0.0.1:*"
    events: str = "tcp://127.0.0.1:*"
    advertise_host: str | None = Field(
        default=None, description="host name peers use to reach a broker bound to 0.0.0.0 (default: this node's IP)"
    )
    join_timeout_s: float = Field(default=180.0, gt=0, description="how long to wait for every agent to join")

    @field_validator("frontend", "events")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not re.fullmatch(r"(tcp://[^:\s]+:(\*|\d{1,5}))|(ipc://\S+)", value):
            raise ValueError(f"{value!r} is not a ZeroMQ endpoint; use tcp://HOST:PORT, tcp://HOST:* or ipc://PATH")
        return value


class RayConfig(_Section):
    address: str | None = Field(default=None, description="existing cluster ('auto' or HOST:PORT); None starts one")
    num_cpus: int | None = Field(default=2, ge=1, description="CPUs for a local Ray started by the campaign")
    max_restarts: int = Field(default=3, ge=-1, description="times Ray restarts a dead agent (-1: forever)")


class LedgerConfig(_Section):
    synchronous: Literal["full", "normal"] = "full"


class ObjectiveConfig(_Section):
    measurement: str = "y"
    direction: Literal["minimize", "maximize"] = "minimize"
    target: float | None = Field(default=None, description="stop once the best measured value reaches this")

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b

    def reached(self, value: float) -> bool:
        return self.target is not None and (value <= self.target if self.direction == "minimize" else value >= self.target)


class PlannerConfig(_Section):
    kind: Literal["random", "sobol"] = "sobol"
    timeout_s: float = Field(default=60.0, gt=0)
    num_cpus: float = Field(default=0.0, ge=0)


class InstrumentConfig(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$", description="joins the bus as instrument.<name>")
    driver: str
    station: str = Field(default="measure", pattern=r"^[a-z][a-z0-9_]*$", description="its step in the workflow")
    host: Literal["ray", "external"] = Field(
        default="ray", description="ray: the campaign starts it as an actor; external: `sdl instrument serve`"
    )
    capacity: int = Field(default=1, ge=1, le=64, description="specimens it handles at once")
    timeout_s: float = Field(default=60.0, gt=0, description="per attempt, before a retry")
    retries: int = Field(default=2, ge=0, le=20)
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def service_name(self) -> str:
        return f"instrument.{self.name}"

    @model_validator(mode="after")
    def _driver_options(self) -> InstrumentConfig:
        from sdl.instruments.base import driver_class

        try:
            driver_class(self.driver).Parameters.model_validate(self.options)
        except ValidationError as e:
            raise ValueError(f"options of driver {self.driver!r}: {describe_validation_error(e)}") from None
        return self


class SurrogateConfig(_Section):
    model: Literal["gp"] = "gp"
    num_cpus: float = Field(default=0.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)


class StopConfig(_Section):
    max_experiments: int = Field(default=40, ge=1, description="budget: experiments finished, done or failed")
    max_in_flight: int = Field(default=4, ge=1, description="experiments dispatched and not yet finished")
    max_wall_s: float | None = Field(default=None, gt=0)


class CampaignConfig(_Section):
    name: str = Field(default="campaign", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seed: int = 0
    problem: str | None = Field(
        default=None, description="test problem a simulator agent serves as ground truth (benchmarks only)"
    )
    space: SearchSpace
    objective: ObjectiveConfig = ObjectiveConfig()
    process: list[ProcessStep] = Field(default_factory=list, description="heat-treatment route for every experiment")
    planner: PlannerConfig = PlannerConfig()
    instruments: list[InstrumentConfig] = Field(min_length=1)
    workflow: list[str] = Field(
        default_factory=lambda: ["measure"],
        description="stations every specimen visits in order (e.g. melt, heat_treat, hardness, xrd)",
    )
    surrogate: SurrogateConfig | None = SurrogateConfig()
    stop: StopConfig = StopConfig()
    bus: BusConfig = BusConfig()
    ray: RayConfig = RayConfig()
    ledger: LedgerConfig = LedgerConfig()
    campaign_dir: Path | None = Field(default=None, description="default: runs/<name>")

    @model_validator(mode="after")
    def _consistent(self) -> CampaignConfig:
        names = [i.name for i in self.instruments]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"instrument names must be unique; repeated: {duplicates}")
        stations = {i.station for i in self.instruments}
        unserved = [s for s in self.workflow if s not in stations]
        if unserved:
            raise ValueError(f"workflow stations {unserved} have no instrument; instruments serve {sorted(stations)}")
        unused = sorted(stations - set(self.workflow))
        if unused:
            raise ValueError(f"instruments serve stations {unused} that are not in the workflow {self.workflow}")
        if self.problem is not None:
            from sdl.env.test_functions import get_problem

            problem = get_problem(self.problem)
            if set(self.space.parameters) != set(problem.parameter_names):
                raise ValueError(
                    f"space.parameters {sorted(self.space.parameters)} must match the parameters of problem "
                    f"{self.problem!r}: {problem.parameter_names}"
                )
        return self

    def design_fingerprint(self) -> str:
        """Hash of what defines the experiments (space, planner, seed, process, instruments).

        A resumed campaign must match it; stop rules, addresses and Ray settings may change.
        """
        design = self.model_dump(
            mode="json", include={"seed", "problem", "space", "objective", "process", "planner", "instruments", "workflow"}
        )
        design["objective"].pop("target", None)
        return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path) -> CampaignConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_config(data, source=str(path))


def parse_config(data: Any, *, source: str = "config") -> CampaignConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe_validation_error(e)}") from None
