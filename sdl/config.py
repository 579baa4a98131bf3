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

from sdl.env.calphad import DEFAULT_DATABASE
from sdl.env.phase_state import PhaseTarget
from sdl.protocol import ProcessStep, RouteLimits, describe_validation_error
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
    reference: float | None = Field(default=None, description="worst acceptable value (multi-objective reference point)")

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b

    def reached(self, value: float) -> bool:
        return self.target is not None and (value <= self.target if self.direction == "minimize" else value >= self.target)


class ConstraintConfig(_Section):
    """A measured constraint: feasible when the sum of ``measurements`` is >= ``at_least`` and/or <= ``at_most``."""

    measurements: list[str] = Field(min_length=1)
    at_least: float | None = None
    at_most: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> ConstraintConfig:
        if self.at_least is None and self.at_most is None:
            raise ValueError("a constraint needs at_least, at_most or both")
        return self

    def value(self, measurements: dict[str, float]) -> float | None:
        if not all(m in measurements for m in self.measurements):
            return None
        return float(sum(measurements[m] for m in self.measurements))

    def violation(self, value: float) -> float:
        low = 0.0 if self.at_least is None else max(0.0, self.at_least - value)
        high = 0.0 if self.at_most is None else max(0.0, value - self.at_most)
        return low + high

    def satisfied(self, measurements: dict[str, float]) -> bool | None:
        """True/False, or None when a measurement is missing."""
        value = self.value(measurements)
        return None if value is None else self.violation(value) == 0.0


class CausalPlannerConfig(_Section):
    """The causal planner (``planner.causal``, or the BO planner's warm start): what it learns from and how it ranks."""

    history: str = Field(description="a campaign run directory whose ledger the causal model learns from")
    graph_config: str = Field(default="configs/causal.yaml", description="the causal graph and mechanism settings")
    exploration: float = Field(default=0.0, ge=0.0, le=10.0, description="rank by mean + exploration x sd")
    candidates: int = Field(default=256, ge=8, le=65_536, description="Sobol' candidates scored per proposal")
    rows_per_candidate: int = Field(default=32, ge=4, description="history rows the do() averages over per candidate")
    posterior_samples: int = Field(default=64, ge=10, le=10_000, description="posterior draws each score averages over")
    fixed: dict[str, float] = Field(
        default_factory=dict, description="variables also held by do(), e.g. the campaign's ageing temperature")
    min_distance: float = Field(default=0.01, ge=0.0, description="skip candidates this close (max |dx|) to made ones")


class PlannerConfig(_Section):
    kind: Literal["random", "sobol", "bo", "causal"] = "sobol"
    timeout_s: float = Field(default=60.0, gt=0)
    num_cpus: float = Field(default=0.0, ge=0)
    # -- Bayesian optimisation (kind: bo) --
    acquisition: Literal["nei", "ei"] = Field(
        default="nei", description="one objective: noisy log-EI (over the feasible incumbents) or plug-in log-EI")
    feasibility: Literal["none", "classifier", "measured"] = Field(
        default="none", description="where P(feasible) comes from: the phase_boundary agent, or a GP on `constraint`"
    )
    constraint: ConstraintConfig | None = Field(
        default=None, description="what counts as feasible in the measurements (for 'measured', 'penalty' and reports)"
    )
    constraint_handling: Literal["probability", "penalty"] = Field(
        default="probability", description="probability: log EI + log P(feasible); penalty: objective - weight x violation"
    )
    update_classifier: bool = Field(
        default=False,
        description="feasibility 'classifier': also learn from each experiment's `constraint` verdict (Laplace update)",
    )
    feasibility_exponent: float = Field(
        default=1.0, ge=0.0, le=10.0, description="EI x P(feasible)^exponent; above 1 avoids failed specimens harder"
    )
    penalty_weight: float = Field(default=10.0, ge=0, description="objective standard deviations per unit violation")
    extra_objectives: list[ObjectiveConfig] = Field(
        default_factory=list, description="more objectives besides `objective`: multi-objective BO with log-NEHVI"
    )
    initial_points: int = Field(default=8, ge=2, description="Sobol' points before the first model")
    initial_design: Literal["sobol", "causal"] = Field(
        default="sobol", description="bo: the first points from Sobol', or the causal planner's best guesses")
    num_restarts: int = Field(default=8, ge=1)
    raw_samples: int = Field(default=512, ge=16)
    mc_samples: int = Field(default=128, ge=16)
    candidate_generator: Literal["sobol", "cvae"] = Field(
        default="sobol", description="bo: acquisition-search starts from Sobol' points, or half from a conditional "
                                     "VAE of the campaign's results (its projection keeps every alloy in bounds)")
    # -- causal reasoning over a past ledger (kind: causal, or initial_design: causal) --
    causal: CausalPlannerConfig | None = None

    @model_validator(mode="after")
    def _bo_options(self) -> PlannerConfig:
        if (self.kind == "causal" or (self.kind == "bo" and self.initial_design == "causal")) and self.causal is None:
            raise ValueError("the causal planner needs a `causal` section with at least `history` (a past campaign directory)")
        if self.kind == "bo":
            check_bo_options(self.feasibility, self.constraint, self.constraint_handling,
                             1 + len(self.extra_objectives), self.update_classifier)
        return self


def check_bo_options(feasibility: str, constraint: ConstraintConfig | None, constraint_handling: str,
                     n_objectives: int, update_classifier: bool) -> None:
    """The rules a BO planner's options obey, checked where a config is read and where a planner is built."""
    if feasibility == "measured" and constraint is None:
        raise ValueError("feasibility 'measured' needs a constraint (measurements and at_least/at_most)")
    if update_classifier and (feasibility != "classifier" or constraint is None):
        raise ValueError("update_classifier needs feasibility 'classifier' and a constraint giving the verdicts")
    if constraint_handling == "penalty":
        if constraint is None:
            raise ValueError("constraint_handling 'penalty' needs a constraint to penalise")
        if n_objectives > 1:
            raise ValueError("constraint_handling 'penalty' applies to a single objective")


class PhaseBoundaryConfig(_Section):
    """The CALPHAD phase-boundary learner (agent ``simulator.phase_boundary``)."""

    target: PhaseTarget = PhaseTarget()
    database: str = Field(default=DEFAULT_DATABASE, description="path to a TDB file, or pycalphad:NAME")
    calphad_calls: int = Field(default=48, ge=4, le=2000, description="compositions labelled by CALPHAD")
    strategy: Literal["eer", "least_confidence", "random", "grid"] = "eer"
    degree: int = Field(default=3, ge=1, le=4, description="polynomial degree of the classifier's features")
    pool_size: int = Field(default=2048, ge=64, description="candidate compositions the learner chooses from")
    cache_path: str | None = Field(default=None, description="CALPHAD cache (default: ~/.cache/sdl)")
    timeout_s: float = Field(default=900.0, gt=0, description="how long learning may take (a cold cache is slower)")


class ProcessPlannerConfig(_Section):
    """The process-planning agent ``planner.process``: a route per composition instead of one fixed route."""

    checkpoint: str | None = Field(
        default=None, description="policy from `sdl policy train` (its checkpoint directory); none: textbook route")
    require_checkpoint: bool = Field(
        default=False, description="refuse to start without the checkpoint (default: textbook route, said in the log)")
    limits: RouteLimits = Field(default_factory=RouteLimits, description="the furnace's limits every route must meet")
    timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _checkpoint_exists(self) -> ProcessPlannerConfig:
        if self.require_checkpoint and (self.checkpoint is None or not Path(self.checkpoint).expanduser().is_dir()):
            raise ValueError(f"process_planner.checkpoint {self.checkpoint} is not a directory; train one with "
                             "`sdl policy train CONFIG`, or unset require_checkpoint for the textbook route")
        return self


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
    process_planner: ProcessPlannerConfig | None = Field(
        default=None, description="ask planner.process for each experiment's route (instead of `process`)")
    planner: PlannerConfig = PlannerConfig()
    instruments: list[InstrumentConfig] = Field(min_length=1)
    workflow: list[str] = Field(
        default_factory=lambda: ["measure"],
        description="stations every specimen visits in order (e.g. melt, heat_treat, hardness, xrd)",
    )
    surrogate: SurrogateConfig | None = SurrogateConfig()
    phase_boundary: PhaseBoundaryConfig | None = Field(
        default=None, description="learn P(target phase state) from CALPHAD for the planner (feasibility: classifier)"
    )
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
        if self.planner.feasibility == "classifier" and self.planner.kind == "bo":
            if self.phase_boundary is None:
                raise ValueError("planner.feasibility 'classifier' needs a phase_boundary section")
        if self.process_planner is not None:
            if self.process:
                raise ValueError("give either a fixed `process` route or a `process_planner`, not both")
            if self.space.composition is None:
                raise ValueError("process_planner plans heat treatments for compositions; the space has none")
        if self.phase_boundary is not None and (self.space.composition is None or self.space.parameters):
            raise ValueError("phase_boundary learns over a composition-only space")
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
            mode="json", include={"seed", "problem", "space", "objective", "process", "process_planner", "planner", "instruments",
                     "workflow", "phase_boundary"}
        )
        design["objective"].pop("target", None)
        return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:16]


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The parsed YAML of ``path``; a missing file or bad YAML is a ConfigError that says so."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


def load_config(path: str | Path) -> CampaignConfig:
    return parse_config(read_yaml(path), source=str(path))


def parse_config(data: Any, *, source: str = "config") -> CampaignConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe_validation_error(e)}") from None
