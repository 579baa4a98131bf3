"""The bench YAML: problems x planners x seeds. A planner is named like a campaign's,
``{name, kind, settings}``, its settings validated by the agent kind's own model; ``constrained:
true`` hands it the problem's constraint (and, for ``bo``, the feasibility model the problem offers:
the twin's CALPHAD classifier, else a GP on the measured constraint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import Field, model_validator

from sdl.agents.base import AgentContext
from sdl.agents.planner import Planner, make_planner
from sdl.agents.registry import agent_class, qualified, validate_settings
from sdl.bench.problems import BenchProblem, ProblemSpec, make_problem
from sdl.settings import ConfigError, Section, load_yaml


class BenchPlannerSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    kind: str = Field(description="a planner kind (random, sobol, bo, causal, generative, ax, baybe, or a plugin's)")
    settings: dict[str, Any] = Field(default_factory=dict, description="the kind's own settings")
    constrained: bool = Field(default=False, description="give the planner the problem's constraint")

    @model_validator(mode="after")
    def _kind(self) -> BenchPlannerSpec:
        agent_class(self.agent_kind, role="planner")  # ValueError listing the installed planners
        return self

    @property
    def agent_kind(self) -> str:
        return qualified(self.kind, "planner")


class BenchConfig(Section):
    name: str = Field(default="bench", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seeds: int = Field(default=10, ge=1, le=1000)
    first_seed: int = Field(default=0, ge=0, description="seeds run are first_seed .. first_seed + seeds - 1")
    problems: list[ProblemSpec] = Field(min_length=1)
    planners: list[BenchPlannerSpec] = Field(min_length=1)
    num_cpus: int | None = Field(default=2, ge=1, description="CPUs for a local Ray (tasks run one per CPU)")
    ray_address: str | None = None
    out: Path | None = Field(default=None, description="default: runs/bench/<name>")
    baseline: str | None = Field(default=None, description="a planner every other is compared with seed by seed "
                                                           "(wins/ties/losses, bootstrap CI of the median difference)")

    @model_validator(mode="after")
    def _unique(self) -> BenchConfig:
        for what, names in (("problem", [p.name for p in self.problems]), ("planner", [p.name for p in self.planners])):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{what} names must be unique; repeated: {repeated}")
        if self.baseline is not None and self.baseline not in {p.name for p in self.planners}:
            raise ValueError(f"baseline {self.baseline!r} is not one of the planners "
                             f"({', '.join(p.name for p in self.planners)})")
        return self


def load_bench_config(path: str | Path, *,
                      check_on: Callable[[ProblemSpec], bool] = lambda spec: True) -> BenchConfig:
    """The bench config, every planner's settings validated on every problem (those ``check_on`` accepts)
    now, not in a Ray task. (A planner that cannot work on a problem, such as a composition generator on
    Branin, is a row of the results that says why, not a refused config.)"""
    config = load_yaml(BenchConfig, path, "bench config")
    for problem_spec in filter(check_on, config.problems):
        problem = make_problem(problem_spec)
        try:
            for spec in config.planners:
                try:
                    planner_settings(spec, problem)
                except ValueError as e:
                    raise ConfigError(f"{path}: planner {spec.name} on problem {problem.name}: {e}") from None
        finally:
            problem.close()
    return config


def problem_context(problem: BenchProblem, seed: int) -> AgentContext:
    return AgentContext(space=problem.space, objective=problem.objective, seed=seed)


def planner_settings(spec: BenchPlannerSpec, problem: BenchProblem) -> Section:
    """The planner's settings on this problem: its own, plus the problem's constraint when constrained."""
    settings = dict(spec.settings)
    own_calphad = spec.agent_kind == "planner.bo" and settings.get("feasibility") == "calphad"
    if spec.constrained and problem.constraint is not None:
        settings["constraint"] = problem.constraint.model_dump()
        if spec.agent_kind == "planner.bo" and not (own_calphad and problem.heat_treatment_k is not None):
            penalty = settings.get("constraint_handling") == "penalty"
            settings["feasibility"] = "none" if penalty else (
                "classifier" if problem.has_feasibility_model else "measured")
    if own_calphad and problem.constraint is None:
        settings["feasibility"] = "none"  # an unconstrained problem: nothing to be feasible about
    if problem.heat_treatment_k is None:
        settings.pop("calphad", None)  # CALPHAD features need the campaign's heat treatment: alloy problems only
        if settings.get("initial_design") == "physics":
            settings["initial_design"] = "sobol"  # and so does the physics guess
    elif settings.get("feasibility") == "calphad" or "calphad" in settings:
        # The planner's own CALPHAD at the campaign's heat treatment (the route, not the truth's database).
        solution_k, ageing_k = problem.heat_treatment_k
        ageing = {"ageing_temperature_k": ageing_k} if ageing_k is not None else {
            "ageing_temperature_parameter": problem.ageing_parameter}  # a joint composition and process design
        settings["calphad"] = {"solution_temperature_k": solution_k, **ageing, **settings.get("calphad", {})}
    if spec.agent_kind == "planner.bo" and settings.get("feasibility") != "classifier":
        settings.pop("update_classifier", None)  # it refines a classifier only where the problem has one
    if spec.agent_kind == "planner.bo" and settings.get("feasibility", "none") == "none":
        settings.pop("feasibility_floor", None)  # a chance constraint only where there is a P(feasible)
    if spec.agent_kind == "planner.bo" and settings.get("feasibility") != "calphad":
        settings.pop("feasibility_floor_known_shift", None)  # it speaks of the planner's own database's error
    if spec.agent_kind == "planner.bo" and settings.get("feasibility") != "measured":
        settings.pop("feasibility_acquisition", None)  # it samples a measured constraint's GP: where one is modelled
        settings.pop("constraint_scale", None)  # and this is how that GP sees the values
    return validate_settings(agent_class(spec.agent_kind), settings, name=spec.name)


def make_bench_planner(spec: BenchPlannerSpec, problem: BenchProblem, seed: int) -> Planner:
    """The planner, built in this process (no bus): ``propose(ProposeRequest) -> list[DesignPoint]``."""
    return make_planner(spec.agent_kind, problem_context(problem, seed), planner_settings(spec, problem))
