"""Seconds per BO planner iteration against the number of observations (2 CPU threads).

    python bench/planner_time.py --observations 25 50 100 --repeats 3

Problems: Hartmann-6 (6 continuous parameters) and the alloy composition space of the demo
(4 elements on the simplex, weighted by a feasibility classifier and updated by measured labels),
each with 3 experiments pending. Prints the median time of one ``propose`` call (GP fit +
acquisition optimisation) per size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from sdl.agents.bo_planner import BoPlanner
from sdl.agents.planner import RandomPlanner
from sdl.bench import TestFunctionProblem, TwinProblem
from sdl.protocol import Observation, ProposeRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    hartmann = TestFunctionProblem("hartmann6")
    twin = TwinProblem()
    feasibility = twin.feasibility_model(seed=0)
    cases = [
        ("hartmann6", hartmann, {"objectives": [hartmann.objective.model_dump()]}, None),
        ("twin, classifier + measured update", twin,
         {"objectives": [twin.objective.model_dump()], "feasibility": "classifier",
          "constraint": twin.constraint.model_dump(), "update_classifier": True}, feasibility),
    ]
    rng = np.random.default_rng(0)
    print(f"{'problem':>36} {'observations':>12} {'s / propose (median)':>22}")
    for name, problem, settings, model in cases:
        for n in args.observations:
            points = RandomPlanner(problem.space, seed=1).propose(ProposeRequest(n=n + 3))
            measured = problem.measure(points[:n], rng)
            observations = [Observation(point=p, status="done", measurements=m) for p, m in zip(points, measured)]
            times = []
            for r in range(args.repeats):
                planner = BoPlanner(problem.space, seed=r, settings=settings)
                started = time.perf_counter()
                planner.propose(ProposeRequest(n=1, observations=observations, pending=points[n:], feasibility=model))
                times.append(time.perf_counter() - started)
            print(f"{name:>36} {n:>12} {statistics.median(times):>22.2f}", flush=True)


if __name__ == "__main__":
    main()
