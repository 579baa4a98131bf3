"""Benchmark problems: a space, an objective, optionally a measured constraint, and the truth.

Built in: the alloy twin, BoTorch's Branin, Hartmann-6 and constrained Hartmann-6; written in the
bench YAML as formulas (sympy); or contributed by other packages through the ``sdl.bench_problems``
entry-point group (a callable returning a :class:`BenchProblem`).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from sdl.agents.phase_boundary_host import PhaseBoundarySettings
from sdl.experiment import DesignPoint
from sdl.objective import ConstraintConfig, ObjectiveConfig
from sdl.settings import ConfigError, Section
from sdl.space import SearchSpace
from sdl.surrogates.phase_classifier import FeasibilityModel

ENTRY_POINT_GROUP = "sdl.bench_problems"
BUILTIN_PROBLEMS = ("twin", "branin", "hartmann6", "hartmann6_constrained")


# -- problems ------------------------------------------------------------------------------------


class BenchProblem:
    """A benchmark problem: a space, an objective, optionally a measured constraint, and the truth.

    Subclass it (or build one from YAML) and implement :meth:`evaluate`, which returns noiseless
    measurements for rows of points; :meth:`measure` adds the problem's noise.
    """

    name: str = "problem"
    space: SearchSpace
    objective: ObjectiveConfig
    constraint: ConstraintConfig | None = None
    noise_sd: dict[str, float] = {}
    success: Literal["fraction_of_best", "gap_closed"] = "gap_closed"
    has_feasibility_model = False  # True where feasibility_model() learns one before any experiment
    heat_treatment_k: tuple[float, float] | None = None  # (solution, ageing) K: the campaign's route, where it has one

    def evaluate(self, points: list[DesignPoint]) -> list[dict[str, float]]:
        raise NotImplementedError

    def measure(self, points: list[DesignPoint], rng: np.random.Generator) -> list[dict[str, float]]:
        out = self.evaluate(points)
        for row in out:
            for name, sd in self.noise_sd.items():
                row[name] += float(rng.normal(0.0, sd))
        return out

    def truth(self, points: list[DesignPoint]) -> tuple[np.ndarray, np.ndarray]:
        """Noiseless objective values and feasibility of ``points``."""
        rows = self.evaluate(points)
        values = np.array([r[self.objective.measurement] for r in rows])
        feasible = np.array([True if self.constraint is None else bool(self.constraint.satisfied(r)) for r in rows])
        return values, feasible

    def truth_in_bulk(self, points: list[DesignPoint]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`truth` for the reference's thousands of points (a problem may approximate it where
        that cannot change the best feasible value or which points count as success)."""
        return self.truth(points)

    def feasibility_model(self, seed: int) -> FeasibilityModel | None:
        """A feasibility classifier learned before any experiment (the twin's, from CALPHAD); None if none."""
        return None

    def close(self) -> None:
        pass


class TestFunctionProblem(BenchProblem):
    """One of BoTorch's synthetic test functions (see :mod:`sdl.env.test_functions`)."""

    __test__ = False

    def __init__(self, name: str) -> None:
        from sdl.env.test_functions import get_problem

        self.problem = get_problem(name)
        self.name = name
        self.space = self.problem.space
        self.objective = ObjectiveConfig(measurement="y", direction=self.problem.direction)
        slacks = [m for m in self.problem.measurement_names if m.startswith("c")]
        self.constraint = ConstraintConfig(measurements=slacks[:1], at_least=0.0) if slacks else None

    def evaluate(self, points: list[DesignPoint]) -> list[dict[str, float]]:
        values = self.problem.evaluate(self.problem.to_array(points))
        return [{k: float(v[i]) for k, v in values.items()} for i in range(len(points))]


class TwinProblem(BenchProblem):
    """Maximise aged hardness on the alloy twin; feasible = the target phase state (CALPHAD truth,
    the exact equilibrium at the alloy's composition): single gamma at 1300 K (solutionising
    dissolves all gamma-prime) and no brittle phase at 1050 K.

    Measurements: ``hardness_hv`` (with the hardness tester's 5 HV scatter) and ``processable``
    (1 or 0: what XRD and metallography of the specimen would tell). The constrained planner gets,
    before any experiment, the phase classifier the phase-boundary agent learns from CALPHAD.
    """

    name = "twin"
    success = "fraction_of_best"
    has_feasibility_model = True
    SPACE = {"composition": {"elements": {"Ni": [0.45, 0.98], "Al": [0.02, 0.145], "Co": [0.0, 0.185],
                                          "Cr": [0.0, 0.185]}, "balance": "Ni"}}  # as configs/demo.yaml

    def __init__(self, phase_boundary: PhaseBoundarySettings | None = None, hardness_noise_hv: float = 5.0) -> None:
        from sdl.env.calphad import default_cache_path
        from sdl.env.twin import AlloyTwin
        from sdl.experiment import ProcessStep

        self.phase_boundary = phase_boundary or PhaseBoundarySettings(calphad_calls=48)
        target = self.phase_boundary.target
        self.space = SearchSpace.model_validate(self.SPACE)
        self.objective = ObjectiveConfig(measurement="hardness_hv", direction="maximize")
        self.constraint = ConstraintConfig(measurements=["processable"], at_least=0.5)
        self.noise_sd = {"hardness_hv": hardness_noise_hv}
        self.route = [
            ProcessStep(operation="solutionise", temperature_k=target.solution_temperature_k, duration_s=7200,
                        quench_medium="water"),
            ProcessStep(operation="age", temperature_k=target.ageing_temperature_k, duration_s=14400,
                        quench_medium="water"),
        ]
        self.twin = AlloyTwin(cache_path=default_cache_path())
        self.heat_treatment_k = (target.solution_temperature_k, target.ageing_temperature_k)

    def evaluate(self, points: list[DesignPoint]) -> list[dict[str, float]]:
        compositions = [p.composition.root for p in points]
        hardness = self.twin.properties(compositions, self.route).hardness_hv
        ok = self._processable(compositions, self.twin.exact_equilibrium)
        return [{"hardness_hv": float(h), "processable": float(o)} for h, o in zip(hardness, ok)]

    def _processable(self, compositions, equilibrium) -> np.ndarray:
        target = self.phase_boundary.target
        at_solution = equilibrium(compositions, target.solution_temperature_k)
        at_ageing = equilibrium(compositions, target.ageing_temperature_k)
        return np.array([target.reached({c: float(v[i]) for c, v in at_solution.items()},
                                        {c: float(v[i]) for c, v in at_ageing.items()})
                         for i in range(len(compositions))])

    def truth_in_bulk(self, points: list[DesignPoint]) -> tuple[np.ndarray, np.ndarray]:
        """Hardness of every point; processable by the exact equilibrium for every point that could
        be the best feasible one or count as success, by the interpolated table for the rest (the
        exact one costs ~50 ms a point; the table misjudges only near phase boundaries, which
        changes the reported feasible share a little and nothing else)."""
        compositions = [p.composition.root for p in points]
        hardness = self.twin.properties(compositions, self.route, phase_state="table").hardness_hv
        feasible = self._processable(self.twin.free_fractions(compositions), self.twin.table)
        order = np.argsort(-hardness)
        exact = np.zeros(len(points), dtype=bool)
        best = None
        for i in order:  # hardest first, until the best feasible one is known and all within 95 % of it
            if best is not None and hardness[i] < 0.95 * best:
                break
            feasible[i] = self._processable([compositions[i]], self.twin.exact_equilibrium)[0]
            exact[i] = True
            if best is None and feasible[i]:
                best = hardness[i]
        self.exact_reference_points = int(exact.sum())
        return hardness, feasible
    def feasibility_model(self, seed: int) -> FeasibilityModel:
        from sdl.agents.base import AgentContext
        from sdl.agents.capabilities import FeasibilityRequest
        from sdl.agents.phase_boundary_host import PhaseBoundaryAgent

        agent = PhaseBoundaryAgent(self.phase_boundary, AgentContext(space=self.space, seed=seed))
        try:
            return agent.feasibility(FeasibilityRequest())
        finally:
            agent.close()

    def close(self) -> None:
        self.twin.close()


class FormulaProblem(BenchProblem):
    """A problem written in the bench YAML: formulas (sympy syntax) over named parameters."""

    def __init__(self, spec: ProblemSpec) -> None:
        import sympy

        self.name = spec.name
        self.space = SearchSpace(parameters=spec.parameters)
        self.objective = ObjectiveConfig(measurement="y", direction=spec.direction)
        names = list(spec.parameters)
        symbols = sympy.symbols(names)
        local = dict(zip(names, symbols))

        def compile_formula(text: str, what: str):
            try:
                expression = sympy.parse_expr(text, local_dict=local)
            except Exception as e:  # sympy raises several types for bad syntax
                raise ConfigError(f"problem {spec.name}: cannot read {what} {text!r}: {e}") from None
            unknown = sorted(str(s) for s in expression.free_symbols if str(s) not in names)
            if unknown:
                raise ConfigError(f"problem {spec.name}: {what} uses {unknown}, not among parameters {names}")
            return sympy.lambdify(symbols, expression, "numpy")

        self._objective = compile_formula(spec.objective, "objective")
        self._constraints = [compile_formula(c, "constraint") for c in spec.constraints]
        if len(spec.constraints) > 1:
            raise ConfigError(f"problem {spec.name}: one constraint is supported (got {len(spec.constraints)})")
        if spec.constraints:
            self.constraint = ConstraintConfig(measurements=["c1"], at_least=0.0)
        self.noise_sd = {"y": spec.noise_sd} if spec.noise_sd else {}

    def evaluate(self, points: list[DesignPoint]) -> list[dict[str, float]]:
        columns = [np.array([p.parameters[n] for p in points]) for n in self.space.parameters]
        y = np.broadcast_to(np.asarray(self._objective(*columns), dtype=float), (len(points),))
        rows = [{"y": float(v)} for v in y]
        for j, c in enumerate(self._constraints):
            slack = np.broadcast_to(np.asarray(c(*columns), dtype=float), (len(points),))
            for row, s in zip(rows, slack):
                row[f"c{j + 1}"] = float(s)
        return rows


class ProblemSpec(Section):
    """A problem: a built-in or entry-point name, or a formula problem (``parameters`` + ``objective``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    budget: int = Field(default=40, ge=2, le=2000, description="experiments per run")
    parameters: dict[str, Any] = Field(default_factory=dict, description="formula problems: name -> {low, high}")
    objective: str | None = Field(default=None, description="formula problems: sympy expression to optimise")
    direction: Literal["minimize", "maximize"] = "minimize"
    constraints: list[str] = Field(default_factory=list, description="formula problems: feasible when expr >= 0")
    noise_sd: float = Field(default=0.0, ge=0)
    phase_boundary: PhaseBoundarySettings | None = Field(default=None, description="twin: the classifier's settings")

    @model_validator(mode="after")
    def _kind(self) -> ProblemSpec:
        if self.objective is not None and not self.parameters:
            raise ValueError(f"formula problem {self.name} needs parameters: {{name: {{low, high}}}}")
        return self


def make_problem(spec: ProblemSpec) -> BenchProblem:
    if spec.objective is not None:
        return FormulaProblem(spec)
    if spec.name == "twin":
        return TwinProblem(spec.phase_boundary)
    if spec.name in BUILTIN_PROBLEMS:
        return TestFunctionProblem(spec.name)
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec.name]
    if not found:
        available = sorted({*BUILTIN_PROBLEMS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
        raise ConfigError(f"unknown problem {spec.name!r}: not built in, not in entry points {ENTRY_POINT_GROUP!r}, "
                          f"and no objective formula given; available: {', '.join(available)}")
    problem = found[0].load()()
    if not isinstance(problem, BenchProblem):
        raise ConfigError(f"entry point {spec.name!r} returned {type(problem).__name__}, not a BenchProblem")
    return problem


def reached(problem: BenchProblem, values: np.ndarray, best: float, median: float) -> np.ndarray:
    """Whether each value counts as success: within 95 % of the best (``fraction_of_best``) or having
    closed 95 % of the gap from the space's median to the best (``gap_closed``)."""
    if problem.success == "fraction_of_best":
        return values >= 0.95 * best if problem.objective.direction == "maximize" else values <= best / 0.95
    return (values - median) / (best - median) >= 0.95
