"""Running a bench: one closed loop per (problem, planner, seed) as a Ray task, each asking its planner
for one experiment at a time, measuring it on the problem (the noisy view a lab gets) and recording
the noiseless truth beside it; the problems' references (best feasible value) computed once."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from sdl.agents.planner import Planner, ProposeRequest, RandomPlanner
from sdl.bench.config import BenchConfig, BenchPlannerSpec, make_bench_planner, problem_context
from sdl.bench.problems import BenchProblem, ProblemSpec, make_problem, reached
from sdl.experiment import DesignPoint, Observation
from sdl.settings import NoSettings
from sdl.surrogates.phase_classifier import FeasibilityModel

LOST_RUN = "the run's Ray worker was lost: "  # the error of a run that did not end by itself

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


def run_one(problem_spec: ProblemSpec, planner_spec: BenchPlannerSpec, seed: int) -> RunResult:
    """One closed loop: ``budget`` experiments, one at a time."""
    import torch

    result = RunResult(problem_spec.name, planner_spec.name, seed)
    started = time.perf_counter()
    problem = make_problem(problem_spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one Ray task per CPU; restored below, for a caller that runs it in-process
    try:
        planner = make_bench_planner(planner_spec, problem, seed)
        feasibility = problem.feasibility_model(seed) if "feasibility" in planner.requires(planner.settings) else None
        result.setup_seconds = time.perf_counter() - started
        for observation, seconds in closed_loop(problem, planner, problem_spec.budget, seed, feasibility):
            result.planner_seconds.append(seconds)
            value, feasible = problem.truth([observation.point])
            result.values.append(float(value[0]))
            result.feasible.append(bool(feasible[0]))
    except Exception as e:  # a failing planner is a result of the benchmark, not a crash of it
        result.error = f"{type(e).__name__}: {e}"
    finally:
        problem.close()
        torch.set_num_threads(threads)
    return result


def closed_loop(problem: BenchProblem, planner: Planner, budget: int, seed: int,
                feasibility: FeasibilityModel | None = None) -> Iterator[tuple[Observation, float]]:
    """``budget`` experiments, one at a time: the planner proposes from every result so far, the problem
    measures the proposal (the noisy view a lab gets, seeded by ``seed``). Yields each observation and the
    seconds its proposal took."""
    rng = np.random.default_rng([seed, 7])
    observations: list[Observation] = []
    for _ in range(budget):
        t0 = time.perf_counter()
        point = planner.propose(ProposeRequest(n=1, observations=observations, feasibility=feasibility))[0]
        seconds = time.perf_counter() - t0
        problem.space.check(point)
        observations.append(Observation(point=point, status="done", measurements=problem.measure([point], rng)[0]))
        yield observations[-1], seconds


def reference(problem: BenchProblem, *, n: int | None = None, seed: int = 12345) -> dict[str, float]:
    """Best feasible and median value over a dense random sample (``problem.reference_points`` unless
    ``n``; the best polished by SLSQP for parameter spaces, or by a local search where the problem asks for
    one), and the share of the space that is feasible."""
    n = problem.reference_points if n is None else n
    key = f"points {n} seed {seed} search {problem.reference_search_evaluations}"
    return problem.cached_reference(key, lambda: _reference(problem, n, seed))


def _reference(problem: BenchProblem, n: int, seed: int) -> dict[str, float]:
    points = RandomPlanner(NoSettings(), problem_context(problem, seed)).propose(ProposeRequest(n=n))
    values, feasible = problem.truth_in_bulk(points)
    sign = 1.0 if problem.objective.direction == "maximize" else -1.0
    best = float(np.max(sign * values[feasible])) * sign
    if problem.reference_search_evaluations:
        best = _local_search(problem, points, values, feasible, best, seed)
    elif not problem.space.composition and problem.space.parameters:
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


def _local_search(problem: BenchProblem, points, values, feasible, best: float, seed: int,
                  *, starts: int = 3, batch: int = 24) -> float:
    """The best feasible value a batched (1 + ``batch``) evolution strategy finds from the sample's best ``starts``
    points, in the unit cube, its step halved after each batch without improvement. Written here because the
    truth it serves (the twin's) has a yes/no feasibility and kinks where phases appear, which SLSQP's gradients
    cannot follow, and scipy's derivative-free methods neither take the composition's balance constraint nor
    evaluate a batch at once (the twin's truth is vectorised)."""
    sign = 1.0 if problem.objective.direction == "maximize" else -1.0
    rounds = max(1, problem.reference_search_evaluations // (starts * batch))
    rng = np.random.default_rng([seed, 11])
    for i in np.argsort(-(sign * values) + np.where(feasible, 0, np.inf))[:starts]:
        if not feasible[i]:
            break
        x, fx, step = problem.space.to_unit_cube([points[i]])[0], sign * float(values[i]), 0.05
        for _ in range(rounds):
            u = np.clip(x + step * rng.standard_normal((batch, len(x))), 0, 1)
            candidates, accepted = problem.space.from_unit_cube(u)
            if not candidates:  # every row's balance element out of bounds
                step /= 2
                continue
            v, ok = problem.truth(candidates)
            gains = np.where(ok, sign * v, -np.inf)
            if gains.max() > fx:
                j = int(np.argmax(gains))
                x, fx = u[accepted][j], float(gains[j])
            else:
                step /= 2
        best = sign * max(sign * best, fx)
    return best


# -- the whole bench -----------------------------------------------------------------------------


def run_tasks(config: BenchConfig, *, progress: bool = True, finished: Sequence[RunResult] = (),
              on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Every (problem, planner, seed) of the config not among ``finished``, one Ray task per CPU; each
    result handed to ``on_result`` as it ends. Without the progress bar, one line per run on stderr. A
    task whose Ray worker was lost (killed, out of memory) is a run with that error (:data:`LOST_RUN`), not
    the end of the bench."""
    import ray
    from ray.exceptions import RayError, RayTaskError
    from tqdm import tqdm

    started_ray = not ray.is_initialized()
    if started_ray:
        if config.ray_address:
            ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=config.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(run_one)
        seeds = range(config.first_seed, config.first_seed + config.seeds)
        skip = {(r.problem, r.planner, r.seed) for r in finished}
        # Seed by seed, every planner on a seed before the next seed: a bench stopped early leaves whole pairs
        # in its journal for the seed-by-seed comparison.
        jobs = {task.remote(p, q, seed): (p.name, q.name, seed) for p in config.problems for seed in seeds
                for q in config.planners if (p.name, q.name, seed) not in skip}
        results: list[RunResult] = list(finished)
        started = time.perf_counter()
        with tqdm(total=len(jobs), desc=f"bench {config.name}", unit="run", disable=not progress) as bar:
            pending = list(jobs)
            for count in range(1, len(jobs) + 1):
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    result = ray.get(done[0])
                except RayTaskError:
                    raise  # run_one keeps a planner's failure as its result: this is the bench's own bug
                except RayError as e:  # a lost worker (killed, out of memory, its node gone) fails its run only
                    result = RunResult(*jobs[done[0]], error=f"{LOST_RUN}{type(e).__name__}")
                results.append(result)
                if on_result is not None:
                    on_result(result)
                bar.update(1)
                if not progress:
                    outcome = "failed" if result.error else "done"
                    print(f"bench {config.name}: {count}/{len(jobs)} {result.problem} {result.planner} seed "
                          f"{result.seed} {outcome} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        return results
    finally:
        if started_ray:
            ray.shutdown()
