"""Seconds per BO planner iteration against the number of observations (2 CPU threads).

    python bench/planner_time.py --observations 25 50 100 --repeats 3 --planners bo_constrained bo_cautious_wide

Problems: Hartmann-6 (6 continuous parameters, default BO settings) and the alloy composition
space of the demo (4 elements on the simplex, weighted by a feasibility classifier and updated by
measured labels) with each named BO planner of the bench config, all with 3 experiments pending.
Prints the median time of one ``propose`` call (GP fit + acquisition optimisation) per size, of a
planner that has proposed once before (as in a running campaign: its CALPHAD tables are loaded and its
physics features tabulated; the GP is fitted from scratch at every call all the same). Where that first
call took noticeably longer, it is printed too.

Stop 39 (issue 19's scale target: <= 2 s at 100 observations, <= 5 s at 1,000), 2 threads:

    python bench/planner_time.py --config configs/bench_physics.yaml \
        --planners bo_physics_start bo_calphad_floor --observations 100 1000 --repeats 2

    bo_physics_start  1.33 s at 100, 4.82 s at 1,000   (stop 38: 5.9 s and 74.6 s)
    bo_calphad_floor  0.84 s at 100, 2.06 s at 1,000
    hartmann6         0.49 s at 100, 1.02 s at 1,000

Stop 43, noisy EI caching its incumbents' posterior root (cache_root), --planners bo_physics_start_f75k90
bo_calphad_floor (three runs of the first on an idle machine; the spread is the machine's and the data's):

    bo_physics_start_f75k90  1.25-1.36 s at 100, 4.50-5.15 s at 1,000   (without the cache: 1.79 and 4.73 s)
    bo_calphad_floor         0.94 s at 100, 2.13 s at 1,000
    hartmann6                0.41 s at 100, 1.01 s at 1,000

Stop 45, at most 10 restarts of the acquisition search past 256 observations (``num_restarts_at_scale``; the
same acquisition value to 1e-4 on four twin data sets of 1,000), --planners bo_physics_start_f75k90 --repeats 2:

    bo_physics_start_f75k90  1.17 s at 100, 3.79 s at 1,000
    hartmann6                0.52 s at 100, 1.11 s at 1,000

Stop 50, the shipped planner now with the gamma lengthscale prior, --planners bo_physics_start_f75k90_gamma
bo_physics_start_f75k90 --repeats 3 (one run on an idle machine; a run with --repeats 2 just before gave 1.89/4.41
and 2.32/3.54 s, the spread of this machine):

    bo_physics_start_f75k90_gamma  1.43 s at 100, 3.37 s at 1,000
    bo_physics_start_f75k90        1.94 s at 100, 3.24 s at 1,000
    hartmann6                      0.44 s at 100, 1.01 s at 1,000
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from sdl.agents.base import AgentContext
from sdl.agents.planner import ProposeRequest, make_planner
from sdl.bench import BenchPlannerSpec, TestFunctionProblem, TwinProblem, load_bench_config, make_bench_planner
from sdl.experiment import Observation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default="configs/bench.yaml", help="bench config whose BO planners are timed")
    parser.add_argument("--planners", nargs="+", default=["bo_constrained", "bo_cautious_wide"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    specs = {p.name: p for p in load_bench_config(args.config).planners}
    unknown = [name for name in args.planners if name not in specs or specs[name].kind != "bo"]
    if unknown:
        parser.error(f"{unknown} are not BO planners of {args.config}; it has "
                     f"{sorted(n for n, p in specs.items() if p.kind == 'bo')}")
    hartmann = TestFunctionProblem("hartmann6")
    twin = TwinProblem()
    feasibility = twin.feasibility_model(seed=0)
    cases = [("hartmann6", hartmann, BenchPlannerSpec(name="bo", kind="bo"), None)]
    cases += [(f"twin, {name}", twin, specs[name], feasibility) for name in args.planners]
    rng = np.random.default_rng(0)
    print(f"{'problem, planner':>36} {'observations':>12} {'s / propose (median)':>22}")
    for name, problem, spec, model in cases:
        for n in args.observations:
            points = make_planner("random", AgentContext(space=problem.space, seed=1)).propose(ProposeRequest(n=n + 3))
            measured = problem.measure(points[:n], rng)
            observations = [Observation(point=p, status="done", measurements=m) for p, m in zip(points, measured)]
            request = ProposeRequest(n=1, observations=observations, pending=points[n:], feasibility=model)
            times, first = [], []
            for r in range(args.repeats):
                planner = make_bench_planner(spec, problem, seed=r)
                for timings in (first, times):
                    started = time.perf_counter()
                    planner.propose(request)
                    timings.append(time.perf_counter() - started)
            note = f"   (first call {statistics.median(first):.2f})" if statistics.median(first) > 1.2 * statistics.median(times) else ""
            print(f"{name:>36} {n:>12} {statistics.median(times):>22.2f}{note}", flush=True)


if __name__ == "__main__":
    main()
