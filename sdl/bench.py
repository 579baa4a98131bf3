"""``sdl bench CONFIG``: planners x problems x seeds, closed loop, in parallel as Ray tasks.

A benchmark run asks a planner for one experiment at a time, measures it on the problem (the
noisy view a lab gets), and records the noiseless truth beside it. Planners are the controller's own
(random, sobol, bo, constrained bo) and peers (BayBE, Ax) through adapters with the same
``propose`` interface. Problems are built in (the alloy twin, Branin, Hartmann-6, constrained
Hartmann-6), written in the bench YAML as formulas, or contributed by other packages through the
``sdl.bench_problems`` entry-point group (a callable returning a :class:`BenchProblem`).

Outputs, in the run directory: ``results.json`` (every run), ``table.md`` and ``regret.png``.
Benchmarks print figures; tests check correctness.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from sdl.config import ConfigError, ConstraintConfig, ObjectiveConfig, PhaseBoundaryConfig, _Section, read_yaml
from sdl.protocol import DesignPoint, FeasibilityModel, Observation, ProposeRequest, describe_validation_error
from sdl.space import SearchSpace

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

    def __init__(self, phase_boundary: PhaseBoundaryConfig | None = None, hardness_noise_hv: float = 5.0) -> None:
        from sdl.env.calphad import default_cache_path
        from sdl.env.twin import AlloyTwin
        from sdl.protocol import ProcessStep

        self.phase_boundary = phase_boundary or PhaseBoundaryConfig(calphad_calls=48)
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
        from sdl.agents.phase_boundary_host import PhaseBoundaryService
        from sdl.protocol import FeasibilityRequest

        service = PhaseBoundaryService(space=self.space, settings=self.phase_boundary, seed=seed)
        try:
            return service.feasibility(FeasibilityRequest())
        finally:
            service.oracle.close()

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


# -- config --------------------------------------------------------------------------------------


class ProblemSpec(_Section):
    """A problem: a built-in or entry-point name, or a formula problem (``parameters`` + ``objective``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    budget: int = Field(default=40, ge=2, le=2000, description="experiments per run")
    parameters: dict[str, Any] = Field(default_factory=dict, description="formula problems: name -> {low, high}")
    objective: str | None = Field(default=None, description="formula problems: sympy expression to optimise")
    direction: Literal["minimize", "maximize"] = "minimize"
    constraints: list[str] = Field(default_factory=list, description="formula problems: feasible when expr >= 0")
    noise_sd: float = Field(default=0.0, ge=0)
    phase_boundary: PhaseBoundaryConfig | None = Field(default=None, description="twin: the classifier's settings")

    @model_validator(mode="after")
    def _kind(self) -> ProblemSpec:
        if self.objective is not None and not self.parameters:
            raise ValueError(f"formula problem {self.name} needs parameters: {{name: {{low, high}}}}")
        return self


class PlannerSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    kind: Literal["random", "sobol", "bo", "baybe", "ax"]
    constrained: bool = Field(default=False, description="bo: use the problem's feasibility (classifier or measured)")
    constraint_handling: Literal["probability", "penalty"] = "probability"
    update_classifier: bool = Field(default=False, description="bo on the twin: classifier also learns from experiments")
    feasibility_exponent: float = Field(default=1.0, ge=0.0, le=10.0)
    initial_points: int = Field(default=8, ge=2)
    acquisition: Literal["nei", "ei"] = "nei"
    num_restarts: int = Field(default=8, ge=1)
    raw_samples: int = Field(default=512, ge=16)
    candidate_generator: Literal["sobol", "cvae"] = "sobol"


class BenchConfig(_Section):
    name: str = Field(default="bench", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seeds: int = Field(default=10, ge=1, le=1000)
    first_seed: int = Field(default=0, ge=0, description="seeds run are first_seed .. first_seed + seeds - 1")
    problems: list[ProblemSpec] = Field(min_length=1)
    planners: list[PlannerSpec] = Field(min_length=1)
    num_cpus: int | None = Field(default=2, ge=1, description="CPUs for a local Ray (tasks run one per CPU)")
    ray_address: str | None = None
    out: Path | None = Field(default=None, description="default: runs/bench/<name>")

    @model_validator(mode="after")
    def _unique(self) -> BenchConfig:
        for what, names in (("problem", [p.name for p in self.problems]), ("planner", [p.name for p in self.planners])):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{what} names must be unique; repeated: {repeated}")
        return self


def load_bench_config(path: str | Path) -> BenchConfig:
    data = read_yaml(path, "bench config")
    try:
        config = BenchConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe_validation_error(e)}") from None
    for spec in config.problems:
        make_problem(spec).close()  # fail now, not in a Ray task
    return config


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


# -- planners ------------------------------------------------------------------------------------


def make_bench_planner(spec: PlannerSpec, problem: BenchProblem, seed: int):
    """Something with ``propose(ProposeRequest) -> list[DesignPoint]``."""
    from sdl.agents.planner import make_planner

    if spec.kind in ("random", "sobol"):
        return make_planner(spec.kind, problem.space, seed=seed)
    if spec.kind == "bo":
        feasibility = "none"
        if spec.constrained and problem.constraint is not None:
            feasibility = "classifier" if problem.has_feasibility_model else "measured"
        handling = spec.constraint_handling if (spec.constrained and problem.constraint is not None) else "probability"
        if handling == "penalty":
            feasibility = "none"
        settings = {
            "objectives": [problem.objective.model_dump()],
            "acquisition": spec.acquisition,
            "feasibility": feasibility,
            "constraint": problem.constraint.model_dump() if problem.constraint else None,
            "constraint_handling": handling,
            "update_classifier": spec.update_classifier and feasibility == "classifier",
            "feasibility_exponent": spec.feasibility_exponent,
            "initial_points": spec.initial_points,
            "num_restarts": spec.num_restarts,
            "raw_samples": spec.raw_samples,
            "candidate_generator": spec.candidate_generator,
        }
        return make_planner("bo", problem.space, seed=seed, settings=settings)
    from sdl.agents.peer_planners import make_peer_planner

    return make_peer_planner(spec.kind, problem.space, problem.objective, problem.constraint, seed=seed,
                             initial_points=spec.initial_points)


# -- one run -------------------------------------------------------------------------------------


@dataclass
class RunResult:
    problem: str
    planner: str
    seed: int
    values: list[float] = field(default_factory=list)  # noiseless objective of each experiment
    feasible: list[bool] = field(default_factory=list)
    planner_seconds: list[float] = field(default_factory=list)
    setup_seconds: float = 0.0
    error: str | None = None


def run_one(problem_spec: ProblemSpec, planner_spec: PlannerSpec, seed: int) -> RunResult:
    """One closed loop: ``budget`` experiments, one at a time."""
    import torch

    torch.set_num_threads(1)  # one Ray task per CPU
    result = RunResult(problem_spec.name, planner_spec.name, seed)
    started = time.perf_counter()
    problem = make_problem(problem_spec)
    try:
        planner = make_bench_planner(planner_spec, problem, seed)
        feasibility = None
        if getattr(planner, "settings", None) is not None and planner.settings.feasibility == "classifier":
            feasibility = problem.feasibility_model(seed)
        result.setup_seconds = time.perf_counter() - started
        rng = np.random.default_rng([seed, 7])
        observations: list[Observation] = []
        for _ in range(problem_spec.budget):
            t0 = time.perf_counter()
            point = planner.propose(ProposeRequest(n=1, observations=observations, feasibility=feasibility))[0]
            result.planner_seconds.append(time.perf_counter() - t0)
            problem.space.check(point)
            measured = problem.measure([point], rng)[0]
            observations.append(Observation(point=point, status="done", measurements=measured))
            value, feasible = problem.truth([point])
            result.values.append(float(value[0]))
            result.feasible.append(bool(feasible[0]))
    except Exception as e:  # a failing planner is a result of the benchmark, not a crash of it
        result.error = f"{type(e).__name__}: {e}"
    finally:
        problem.close()
    return result


def reference(problem: BenchProblem, *, n: int = 10000, seed: int = 12345) -> dict[str, float]:
    """Best feasible and median value over a dense random sample (polished by SLSQP for parameter
    spaces), and the share of the space that is feasible."""
    from sdl.agents.planner import RandomPlanner

    points = RandomPlanner(problem.space, seed=seed).propose(ProposeRequest(n=n))
    values, feasible = problem.truth_in_bulk(points)
    sign = 1.0 if problem.objective.direction == "maximize" else -1.0
    best = float(np.max(sign * values[feasible])) * sign
    if not problem.space.composition and problem.space.parameters:
        best = _polish(problem, points, values, feasible, best)
    return {"best": best, "median": float(np.median(values)), "feasible_share": float(feasible.mean()),
            "success_share": float(np.mean(feasible & reached(problem, values, best, float(np.median(values)))))}


def _polish(problem: BenchProblem, points, values, feasible, best: float) -> float:
    from scipy.optimize import minimize

    sign = 1.0 if problem.objective.direction == "maximize" else -1.0
    names = list(problem.space.parameters)
    bounds = [(r.low, r.high) for r in problem.space.parameters.values()]

    def as_point(x):
        return DesignPoint(parameters=dict(zip(names, np.clip(x, *np.array(bounds).T).tolist())))

    def f(x):
        return -sign * problem.evaluate([as_point(x)])[0][problem.objective.measurement]

    constraints = []
    if problem.constraint is not None:
        c = problem.constraint
        # a hair inside the boundary, so the polished point is feasible by the exact test too
        constraints = [{"type": "ineq", "fun": lambda x: problem.evaluate([as_point(x)])[0][c.measurements[0]] - 1e-9}]
    order = np.argsort(-(sign * values) + np.where(feasible, 0, np.inf))[:5]
    for i in order:
        x0 = [points[i].parameters[n] for n in names]
        res = minimize(f, x0, method="SLSQP", bounds=bounds, constraints=constraints)
        _, ok = problem.truth([as_point(res.x)])
        value = float(-res.fun * sign)  # f = -sign * y
        if ok[0] and sign * value > sign * best:
            best = value
    return best


def reached(problem: BenchProblem, values: np.ndarray, best: float, median: float) -> np.ndarray:
    """Whether each value counts as success: within 95 % of the best (``fraction_of_best``) or having
    closed 95 % of the gap from the space's median to the best (``gap_closed``)."""
    if problem.success == "fraction_of_best":
        return values >= 0.95 * best if problem.objective.direction == "maximize" else values <= best / 0.95
    return (values - median) / (best - median) >= 0.95


# -- the whole bench -----------------------------------------------------------------------------


def run_bench(config: BenchConfig, *, progress: bool = True) -> dict[str, Any]:
    out = config.out or Path("runs") / "bench" / config.name
    out.mkdir(parents=True, exist_ok=True)
    problems = {spec.name: make_problem(spec) for spec in config.problems}  # built once: the twin tabulates
    try:
        return _run_tasks(config, problems, out, progress=progress)
    finally:
        for problem in problems.values():
            problem.close()


def _run_tasks(config: BenchConfig, problems: dict[str, BenchProblem], out: Path, *, progress: bool) -> dict[str, Any]:
    import ray
    from tqdm import tqdm

    references = {name: reference(problem) for name, problem in problems.items()}
    started_ray = not ray.is_initialized()
    if started_ray:
        if config.ray_address:
            ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=config.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(run_one)
        seeds = range(config.first_seed, config.first_seed + config.seeds)
        refs = [task.remote(p, q, seed) for p in config.problems for q in config.planners for seed in seeds]
        results: list[RunResult] = []
        with tqdm(total=len(refs), desc=f"bench {config.name}", unit="run", disable=not progress) as bar:
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                results.append(ray.get(done[0]))
                bar.update(1)
    finally:
        if started_ray:
            ray.shutdown()
    return write_outputs(config, problems, results, references, out)


def write_outputs(config: BenchConfig, problems: dict[str, BenchProblem], results: list[RunResult],
                  references: dict, out: Path) -> dict[str, Any]:
    """Summarise the runs and write results.json, table.md and regret.png in ``out``."""
    summary = summarise(config, problems, results, references)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"config": config.model_dump(mode="json"), "references": references, "summary": summary,
         "runs": [asdict(r) for r in results]}, indent=1))
    (out / "table.md").write_text(format_table(config, summary, references))
    plot_regret(config, problems, results, references, out / "regret.png")
    return {"out": str(out), "summary": summary, "references": references}


def _experiments_to_success(problem: BenchProblem, run: RunResult, ref: dict[str, float]) -> float:
    ok = reached(problem, np.asarray(run.values), ref["best"], ref["median"]) & np.asarray(run.feasible)
    hits = np.flatnonzero(ok)
    return float(hits[0] + 1) if len(hits) else math.inf


def best_so_far_regret(problem_direction: str, run: RunResult, best: float) -> np.ndarray:
    """Simple regret after each experiment: gap from the best feasible value found so far."""
    sign = 1.0 if problem_direction == "maximize" else -1.0
    values = np.where(np.asarray(run.feasible), sign * np.asarray(run.values), -np.inf)
    so_far = np.maximum.accumulate(values)
    return np.where(np.isfinite(so_far), sign * best - so_far, np.nan)


def summarise(config: BenchConfig, problems: dict[str, BenchProblem], results: list[RunResult],
              references: dict) -> dict[str, dict[str, dict]]:
    summary: dict[str, dict[str, dict]] = {}
    for spec in config.problems:
        problem = problems[spec.name]
        ref = references[spec.name]
        summary[spec.name] = {}
        for planner in config.planners:
            runs = [r for r in results if r.problem == spec.name and r.planner == planner.name]
            ok = [r for r in runs if r.error is None]
            row: dict[str, Any] = {"runs": len(runs), "errors": [r.error for r in runs if r.error]}
            if ok:
                hits = np.array([_experiments_to_success(problem, r, ref) for r in ok])
                regret = np.array([best_so_far_regret(problem.objective.direction, r, ref["best"])[-1] for r in ok])
                row.update({
                    "experiments_to_95": float(np.median(hits)),
                    "reached_95_share": float(np.isfinite(hits).mean()),
                    "final_regret_median": float(np.nanmedian(regret)) if np.isfinite(regret).any() else None,
                    "final_regret_q25_q75": np.nanpercentile(regret, [25, 75]).tolist() if np.isfinite(regret).any() else None,
                    "infeasible_share": float(np.median([1 - np.mean(r.feasible) for r in ok])),
                    "planner_s_per_iter": float(np.median([np.median(r.planner_seconds) for r in ok])),
                    "planner_s_at_end": float(np.median([np.mean(r.planner_seconds[-5:]) for r in ok])),
                })
            summary[spec.name][planner.name] = row
    return summary


def merge_results(result_files: list[Path], out: Path) -> dict[str, Any]:
    """Several ``results.json`` of one bench (e.g. seeds 0-9 today, 10-19 tomorrow, or planners run
    apart) as one: the union of their runs, summarised and plotted again in ``out``. Refused when
    they disagree on a problem's reference, which would make "95 % of the best" mean two things."""
    if not result_files:
        raise ValueError("nothing to merge: name at least one results.json")
    loaded = [json.loads(Path(f).read_text()) for f in result_files]
    references: dict = {}
    problems: dict[str, dict] = {}
    planners: dict[str, dict] = {}
    runs: dict[tuple, RunResult] = {}
    for f, data in zip(result_files, loaded):
        for name, ref in data["references"].items():
            if name in references and not math.isclose(references[name]["best"], ref["best"], rel_tol=1e-9):
                raise ValueError(f"{f}: problem {name!r} has best {ref['best']}, another file {references[name]['best']};"
                                 f" results of different problem definitions cannot be merged")
            references.setdefault(name, ref)
        for spec in data["config"]["problems"]:
            problems.setdefault(spec["name"], spec)
        for spec in data["config"]["planners"]:
            planners.setdefault(spec["name"], spec)
        for r in data["runs"]:
            runs[(r["problem"], r["planner"], r["seed"])] = RunResult(**r)  # a later file's run of a seed wins
    seeds = sorted({seed for _, _, seed in runs})
    config = BenchConfig.model_validate({**loaded[0]["config"], "problems": list(problems.values()),
                                         "planners": list(planners.values()), "seeds": len(seeds),
                                         "first_seed": seeds[0], "out": out})
    built = {spec.name: make_problem(spec) for spec in config.problems}
    try:
        return write_outputs(config, built, list(runs.values()), references, out)
    finally:
        for problem in built.values():
            problem.close()


def format_table(config: BenchConfig, summary: dict, references: dict) -> str:
    lines = [f"# Bench {config.name}: median over {config.seeds} seeds", ""]
    for problem, rows in summary.items():
        ref = references[problem]
        budget = next(p.budget for p in config.problems if p.name == problem)
        p = ref["success_share"]
        expected_random = math.log(0.5) / math.log(1 - p) if 0 < p < 1 else math.inf
        lines += [f"## {problem} (budget {budget}; best feasible {ref['best']:.4g}; feasible share of the space "
                  f"{ref['feasible_share']:.0%}; a random point succeeds with p = {p:.2%}, so random search needs "
                  f"a median {expected_random:.0f} experiments)", "",
                  "| planner | experiments to 95 % | runs reaching it | final simple regret [q25, q75] | "
                  "infeasible experiments | planner s/iter (median, last 5) |",
                  "|---|---|---|---|---|---|"]
        for name, row in rows.items():
            if row["runs"] != config.seeds:  # merged results can hold fewer seeds of some planners
                name = f"{name} ({row['runs']} seeds)"
            if "experiments_to_95" not in row:
                lines.append(f"| {name} | failed: {'; '.join(row['errors'])[:200]} | | | | |")
                continue
            hits = row["experiments_to_95"]
            hits_text = f"{hits:g}" if math.isfinite(hits) else f"> {budget}"
            regret, q = row["final_regret_median"], row["final_regret_q25_q75"]
            regret_text = f"{regret:.4g} [{q[0]:.3g}, {q[1]:.3g}]" if regret is not None else "no feasible point"
            lines.append(f"| {name} | {hits_text} | {row['reached_95_share']:.0%} | {regret_text} | "
                         f"{row['infeasible_share']:.0%} | {row['planner_s_per_iter']:.3f}, {row['planner_s_at_end']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot_regret(config: BenchConfig, problems: dict[str, BenchProblem], results: list[RunResult], references: dict,
                path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = config.problems
    fig, axes = plt.subplots(1, len(specs), figsize=(4.6 * len(specs), 3.8), squeeze=False)
    for ax, spec in zip(axes[0], specs):
        problem = problems[spec.name]
        for planner in config.planners:
            runs = [r for r in results if r.problem == spec.name and r.planner == planner.name and r.error is None]
            if not runs:
                continue
            curves = np.array([best_so_far_regret(problem.objective.direction, r, references[spec.name]["best"])
                               for r in runs])
            x = np.arange(1, curves.shape[1] + 1)
            with np.errstate(all="ignore"):
                q25, q50, q75 = (np.nanpercentile(curves, q, axis=0) for q in (25, 50, 75))
            ax.plot(x, q50, label=planner.name)
            ax.fill_between(x, q25, q75, alpha=0.18)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(spec.name)
        ax.set_xlabel("experiments")
        ax.set_ylabel("simple regret (feasible)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{config.name}: median and interquartile band over {config.seeds} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
