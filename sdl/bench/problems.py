"""Benchmark problems: a space, an objective, optionally a measured constraint, and the truth.

Built in: the alloy twin, BoTorch's Branin, Hartmann-6 and constrained Hartmann-6; written in the
bench YAML as formulas (sympy); or contributed by other packages through the ``sdl.bench_problems``
entry-point group (a callable returning a :class:`BenchProblem`).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from sdl.agents.phase_boundary_host import PhaseBoundarySettings
from sdl.experiment import DesignPoint, ProcessStep
from sdl.instruments.limits import ProcessLimits
from sdl.objective import ConstraintConfig, ObjectiveConfig
from sdl.process_design import DesignedHold, corner_points, designed_route
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
    reference_points: int = 10000  # random points the reference's best and median come from
    # exact evaluations a local search may spend improving the reference's best, where the truth is not smooth
    # enough for SLSQP's polish of parameter spaces (0: none)
    reference_search_evaluations: int = 0
    has_feasibility_model = False  # True where feasibility_model() learns one before any experiment
    # (solution, ageing) K: the campaign's heat treatment, where it has one; ageing None where it is designed,
    # as the space parameter named ageing_parameter
    heat_treatment_k: tuple[float, float | None] | None = None
    ageing_parameter: str | None = None

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

    def cached_reference(self, key: str, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
        """The reference summary (:func:`sdl.bench.runner.reference`) that ``key`` (its sample and search)
        names: ``compute()`` here; a problem whose truth is slow keeps it between benches."""
        return compute()

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


class AgeingDesign(Section):
    """The ageing hold (the twin route's second step, after solutionising) as design variables beside the
    composition (joint composition and process design)."""

    HOLD: ClassVar[DesignedHold] = DesignedHold(step=2, temperature_k="ageing_temperature_k",
                                                duration="ageing_duration_h")

    ageing_temperature_k: tuple[float, float] = Field(default=(1000.0, 1150.0), description="range of the ageing hold")
    ageing_duration_h: tuple[float, float] = Field(default=(0.5, 24.0), description="range of its duration")
    limits: ProcessLimits = Field(default_factory=ProcessLimits, description="the furnace's: the ranges must fit")

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        """Each designed parameter's (low, high)."""
        return {self.HOLD.temperature_k: self.ageing_temperature_k, self.HOLD.duration: self.ageing_duration_h}

    @model_validator(mode="after")
    def _fits(self) -> AgeingDesign:
        (t_low, t_high), (h_low, h_high) = self.ageing_temperature_k, self.ageing_duration_h
        if not (t_low < t_high and 0 < h_low < h_high):
            raise ValueError(f"ranges must be (low, high) with low < high (and durations > 0); got ageing_temperature_k "
                             f"{self.ageing_temperature_k}, ageing_duration_h {self.ageing_duration_h}")
        ageing = ProcessStep(operation="age", temperature_k=t_low, duration_s=1.0, quench_medium="water")  # overwritten
        for corner in corner_points([self.HOLD], self.ranges):  # the solutionising step is the target's, not designed
            # LimitExceeded (a ValueError) names the limit
            self.limits.check_step(self.HOLD.applied(ageing, corner), number=self.HOLD.step)
        return self


class TwinVariant(Section):
    """What makes a twin problem other than the default one, besides its target phase state
    (``phase_boundary.target``): a truth that disagrees with everyone's database, and the ageing hold
    as design variables."""

    truth_shifts_j_per_mol: dict[str, float] = Field(
        default_factory=dict, description="constants (J/mol) added to parameters of the *truth's* database only, e.g. "
                                          "{'G(L12_FCC,NI:AL:VA;0)': -300}: planners keep the unperturbed one")
    process_design: AgeingDesign | None = Field(default=None, description="the ageing hold as design variables")
    process_policy: str | None = Field(
        default=None, description="or: each alloy gets the route a trained process policy plans for it ('shipped', "
                                  "or a policy file or run directory): the planner designs the composition only")

    @model_validator(mode="after")
    def _one_process(self) -> TwinVariant:
        if self.process_design is not None and self.process_policy is not None:
            raise ValueError("give either process_design (the ageing hold designed with the composition) or "
                             "process_policy (the route a trained policy plans), not both")
        return self


class TwinProblem(BenchProblem):
    """Maximise aged hardness on the alloy twin; feasible = the target phase state (CALPHAD truth,
    the exact equilibrium at the alloy's composition): single gamma at 1300 K (solutionising
    dissolves all gamma-prime) and no brittle phase at 1050 K (or other temperatures: the
    ``phase_boundary.target``).

    Measurements: ``hardness_hv`` (with the hardness tester's 5 HV scatter) and ``processable``
    (1 or 0: what XRD and metallography of the specimen would tell). The constrained planner gets,
    before any experiment, the phase classifier the phase-boundary agent learns from CALPHAD.

    A :class:`TwinVariant` can make the truth's thermodynamics disagree with the database every
    planner and the classifier use (the truth reads a shifted copy; nobody else is told), and can
    make the ageing temperature and time design variables (then no classifier is offered: it knows
    one ageing temperature only).
    """

    success = "fraction_of_best"
    SPACE = {"composition": {"elements": {"Ni": [0.45, 0.98], "Al": [0.02, 0.145], "Co": [0.0, 0.185],
                                          "Cr": [0.0, 0.185]}, "balance": "Ni"}}  # as configs/demo.yaml
    SOLUTION_DURATION_S = 7200.0
    AGEING_DURATION_S = 14400.0
    # truth_in_bulk computes exactly every point the interpolated table puts within this share of
    # its hardest (the table understates near-solvus alloys by up to ~20 %)
    SCREEN_SHARE = 0.75

    def __init__(self, phase_boundary: PhaseBoundarySettings | None = None, hardness_noise_hv: float = 5.0, *,
                 variant: TwinVariant | None = None, name: str = "twin") -> None:
        from sdl.env.calphad import DEFAULT_DATABASE, default_cache_path, shifted_database
        from sdl.env.twin import AlloyTwin, TwinConfig

        self.name = name
        self.variant = variant or TwinVariant()
        self.phase_boundary = phase_boundary or PhaseBoundarySettings(calphad_calls=48)
        target = self.phase_boundary.target
        design = self.variant.process_design
        space = dict(self.SPACE)
        if design is not None:
            space["parameters"] = {name: dict(zip(("low", "high"), r)) for name, r in design.ranges.items()}
        self.space = SearchSpace.model_validate(space)
        self.objective = ObjectiveConfig(measurement="hardness_hv", direction="maximize")
        self.constraint = ConstraintConfig(measurements=["processable"], at_least=0.5)
        self.noise_sd = {"hardness_hv": hardness_noise_hv}
        self.has_feasibility_model = design is None
        # 10,000 random points are sparse in composition x ageing hold: their best is ~10 HV below what planners
        # find; the local search from the sample's best three closes that (333 -> 342.6 HV, ~3 min once, cached)
        self.reference_search_evaluations = 720 if design else 0
        self.heat_treatment_k = (target.solution_temperature_k, None if design else target.ageing_temperature_k)
        self.ageing_parameter = "ageing_temperature_k" if design else None
        database = DEFAULT_DATABASE
        if self.variant.truth_shifts_j_per_mol:
            database = str(shifted_database(DEFAULT_DATABASE, self.variant.truth_shifts_j_per_mol,
                                            default_cache_path().parent / "databases"))
        self.twin = AlloyTwin(TwinConfig(database=database), cache_path=default_cache_path())
        self.policy = None
        if self.variant.process_policy is not None:
            from sdl.agents.process_policy import SHIPPED_POLICY, ProcessPolicy

            path = SHIPPED_POLICY if self.variant.process_policy == "shipped" else self.variant.process_policy
            try:  # the policy plans on its own model of the alloy (the unperturbed database), not the truth
                self.policy = ProcessPolicy(path)
            except (OSError, ValueError, KeyError) as e:
                raise ConfigError(f"problem {name}: cannot load process_policy {self.variant.process_policy!r}: {e}") from None
            self._policy_routes: dict[tuple, list[ProcessStep]] = {}

    def routes(self, points: list[DesignPoint]) -> list[list[ProcessStep]]:
        """Each specimen's heat treatment: the target's, its own ageing hold in a joint design, or the
        process policy's plan for it."""
        if self.policy is not None:
            return [self._policy_route(p.composition.root) for p in points]
        target = self.phase_boundary.target
        solution = ProcessStep(operation="solutionise", temperature_k=target.solution_temperature_k,
                               duration_s=self.SOLUTION_DURATION_S, quench_medium="water")
        age = ProcessStep(operation="age", temperature_k=target.ageing_temperature_k,
                          duration_s=self.AGEING_DURATION_S, quench_medium="water")
        if self.variant.process_design is None:
            return [[solution, age]] * len(points)
        return [list(designed_route([solution, age], [AgeingDesign.HOLD], p)) for p in points]

    def _policy_route(self, composition: dict[str, float]) -> list[ProcessStep]:
        """The route the process planner would hand out for this alloy: the policy's, or the textbook's
        where that promises more (:func:`choose_route`); never as cast, which no campaign measures."""
        from sdl.agents.process_policy import choose_route

        key = tuple(round(composition[e], 12) for e in self.twin.free_elements)
        if key not in self._policy_routes:
            steps, _, policy_return = self.policy.route(composition)
            book, _, book_return = self.policy.textbook(composition)
            self._policy_routes[key] = steps if choose_route(steps, policy_return, book_return) == "policy" else book
        return self._policy_routes[key]

    def _grouped(self, compute, compositions: list[dict[str, float]], routes: list[list[ProcessStep]]) -> np.ndarray:
        """``compute(compositions, routes)`` vectorised over specimens whose routes share one sequence of
        operations (the twin's condition for per-specimen routes), and stitched back in order."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(routes):
            groups.setdefault(tuple(s.operation for s in r), []).append(i)
        out = np.empty(len(routes))
        for index in groups.values():
            out[index] = compute([compositions[i] for i in index], [routes[i] for i in index])
        return out

    def evaluate(self, points: list[DesignPoint]) -> list[dict[str, float]]:
        compositions = [p.composition.root for p in points]
        routes = self.routes(points)
        hardness = self._grouped(lambda c, r: self.twin.properties(c, r).hardness_hv, compositions, routes)
        ok = self._processable(compositions, routes, self.twin.exact_equilibrium)
        return [{"hardness_hv": float(h), "processable": float(o)} for h, o in zip(hardness, ok)]

    def _processable(self, compositions, routes, equilibrium) -> np.ndarray:
        target = self.phase_boundary.target
        ageing_k = np.array([r[-1].temperature_k for r in routes])
        at_solution = equilibrium(compositions, target.solution_temperature_k)
        at_ageing = equilibrium(compositions, ageing_k)
        return np.array([target.reached({c: float(v[i]) for c, v in at_solution.items()},
                                        {c: float(v[i]) for c, v in at_ageing.items()})
                         for i in range(len(compositions))])

    def truth_in_bulk(self, points: list[DesignPoint]) -> tuple[np.ndarray, np.ndarray]:
        """Hardness and processability of every point: exact (as :meth:`evaluate`) for every point
        that could be the best feasible one or count as success, from the interpolated table for the
        rest (the exact one costs ~50 ms a point). The table is only a screen: near the solvus it
        can understate hardness by up to a fifth (a spurious undissolved fraction, see
        :mod:`sdl.env.twin`), so every point the table puts within :data:`SCREEN_SHARE` of its
        hardest is computed exactly; that changes the reported feasible share a little and nothing
        else."""
        compositions = [p.composition.root for p in points]
        routes = self.routes(points)
        hardness = self._grouped(lambda c, r: self.twin.properties(c, r, phase_state="table").hardness_hv,
                                 compositions, routes)
        feasible = self._processable(self.twin.free_fractions(compositions), routes, self.twin.table)
        screened = np.flatnonzero(hardness >= self.SCREEN_SHARE * hardness.max())
        chosen = [compositions[i] for i in screened]
        chosen_routes = [routes[i] for i in screened]
        hardness[screened] = self._grouped(lambda c, r: self.twin.properties(c, r).hardness_hv, chosen, chosen_routes)
        feasible[screened] = self._processable(chosen, chosen_routes, self.twin.exact_equilibrium)
        self.exact_reference_points = len(screened)
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
    phase_boundary: PhaseBoundarySettings | None = Field(default=None, description="twin: the classifier's settings "
                                                         "and the target phase state")
    twin: TwinVariant | None = Field(default=None, description="a twin problem of another name: a truth that disagrees "
                                                               "with the planners' database, the ageing hold designed")
    solid_solution: dict[str, Any] | None = Field(
        default=None, description="a multi-component FCC solid solution labelled by EMT ({} for the six-component "
                                  "Cu-Ni-Pd-Ag-Au-Pt mixing-energy problem; see sdl.bench.solid_solution_problem)")

    @model_validator(mode="after")
    def _kind(self) -> ProblemSpec:
        if self.objective is not None and not self.parameters:
            raise ValueError(f"formula problem {self.name} needs parameters: {{name: {{low, high}}}}")
        if self.solid_solution is not None and (self.objective is not None or self.twin is not None):
            raise ValueError(f"problem {self.name}: give one of a formula (objective), a twin or a solid_solution")
        if self.solid_solution is not None:  # its module builds on this one: validated here, at load, all the same
            from pydantic import ValidationError

            from sdl.bench.solid_solution_problem import SolidSolutionSpec
            from sdl.settings import describe_validation_error

            try:
                SolidSolutionSpec.model_validate(self.solid_solution)
            except ValidationError as e:
                raise ValueError(f"solid_solution: {describe_validation_error(e)}") from None
        return self

    @property
    def kind(self) -> Literal["formula", "solid_solution", "twin", "named"]:
        """What builds it: a formula, EMT labels of solid solutions, the CALPHAD twin (each costs minutes on
        a cold cache), or a built-in / entry-point problem by name."""
        if self.objective is not None:
            return "formula"
        if self.solid_solution is not None:
            return "solid_solution"
        if self.name == "twin" or self.twin is not None:
            return "twin"
        return "named"


def make_problem(spec: ProblemSpec) -> BenchProblem:
    if spec.kind == "formula":
        return FormulaProblem(spec)
    if spec.kind == "solid_solution":
        from sdl.bench.solid_solution_problem import SolidSolutionProblem, SolidSolutionSpec

        return SolidSolutionProblem(SolidSolutionSpec.model_validate(spec.solid_solution), name=spec.name)
    if spec.kind == "twin":
        return TwinProblem(spec.phase_boundary, variant=spec.twin, name=spec.name)
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
