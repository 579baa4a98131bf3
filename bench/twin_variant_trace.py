"""Diagnosis (issue 19): where the best feasible alloys of a twin variant lie, what a planner proposes
there, and what its feasibility classifier believes about them as experiments come in.

    python bench/twin_variant_trace.py --problem twin_1325_1075 --planner bo_physics --seeds 0,1

Problem and planner are taken by name from a bench config (configs/bench_physics.yaml by default), so
the arm traced is the arm benchmarked. Prints, for the problem (the twin or one of its variants):
- the band of alloys within 95 % of the best feasible hardness (4,000 Sobol' points of the space);
- each proposal of each seed (composition, noiseless hardness, feasible; for a planner with its own CALPHAD
  feasibility, the P(feasible) it believed after the verdicts so far and its CALPHAD margin), and when it
  first reaches 95 %;
- P(feasible) of the planner's classifier at the five best feasible alloys after 0, 12, 20 and all
  experiments (the CALPHAD-trained classifier, Laplace-updated with each measured verdict as the
  planner does with ``update_classifier``).
Writes the trace to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import qmc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/bench_physics.yaml"), help="bench config")
    parser.add_argument("--problem", default="twin_1325_1075", help="a twin problem of the config, by name")
    parser.add_argument("--planner", default="bo_physics", help="a planner of the config, by name")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("runs/twin_variant_trace.json"))
    args = parser.parse_args()

    from sdl.agents.planner import ProposeRequest
    from sdl.bench.config import BenchConfig, make_bench_planner
    from sdl.bench.problems import make_problem
    from sdl.experiment import Observation
    from sdl.settings import load_yaml
    from sdl.surrogates.phase_classifier import classifier_log_probability, update_classifier

    torch.set_num_threads(2)
    config = load_yaml(BenchConfig, args.config, "bench config")  # validated; the planners on first use
    problems = {p.name: p for p in config.problems}
    planners = {p.name: p for p in config.planners}
    if args.problem not in problems or args.planner not in planners:
        parser.error(f"{args.config} has problems {sorted(problems)} and planners {sorted(planners)}; "
                     f"got --problem {args.problem} --planner {args.planner}")
    spec = problems[args.problem].model_copy(update={"budget": args.budget})
    problem = make_problem(spec)
    space = problem.space
    sampler = qmc.Sobol(d=space.dimension, scramble=True, seed=0)
    points = []
    while len(points) < 4000:
        points.extend(space.from_unit_cube(sampler.random(1024))[0])
    points = points[:4000]
    hardness, feasible = problem.truth_in_bulk(points)
    best = float(hardness[feasible].max())
    good = feasible & (hardness >= 0.95 * best)
    free = list(space.composition.free_elements)
    comp = np.array([[p.composition[e] for e in free] for p in points])
    print(f"{args.problem}: feasible share {feasible.mean():.2f}; "
          f"best feasible {best:.1f} HV; {good.sum()} of {len(points)} points within 95 %")
    print("  band within 95 %: " + ", ".join(f"{e} {comp[good, j].min():.3f}-{comp[good, j].max():.3f}"
                                              for j, e in enumerate(free)))
    top = np.argsort(-np.where(feasible, hardness, -np.inf))[:5]
    columns = list(space.composition.elements)
    free_index = [columns.index(e) for e in free]

    def as_tensor(rows: list[dict]) -> torch.Tensor:
        return torch.tensor([[r[e] for e in columns] for r in rows], dtype=torch.double)

    best_rows = [points[i].composition.root for i in top]
    traces = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        planner = make_bench_planner(planners[args.planner], problem, seed)
        classifier = problem.feasibility_model(seed) if "feasibility" in planner.requires(planner.settings) else None
        rng = np.random.default_rng([seed, 7])
        observations, rows = [], []
        for k in range(args.budget):
            started = time.perf_counter()
            point = planner.propose(ProposeRequest(n=1, observations=observations, feasibility=classifier))[0]
            seconds = time.perf_counter() - started
            belief = ""
            calphad = getattr(planner, "calphad_feasibility", None)
            if calphad is not None:  # what the planner believed of the alloy it proposed
                model = calphad.updated(as_tensor(rows)[:, free_index],
                                        torch.tensor([float(r["feasible"]) for r in rows], dtype=torch.double)) \
                    if rows else calphad
                x_new = as_tensor([point.composition.root])[:, free_index]
                with torch.no_grad():
                    belief = (f"  P(feasible) {float(model.log_probability(x_new).exp()):.2f}"
                              f" margin {float(calphad.features.margin_k(x_new)):+6.1f} K")
            measured = problem.measure([point], rng)[0]
            observations.append(Observation(point=point, status="done", measurements=measured))
            value, ok = problem.truth([point])
            rows.append({**point.composition.root, "hardness_hv": float(value[0]), "feasible": bool(ok[0]),
                         "planner_s": seconds})
            print(f"seed {seed} {k:2d} " + " ".join(f"{e} {point.composition[e]:.4f}" for e in free)
                  + f"  {value[0]:6.1f} HV  {'feasible' if ok[0] else 'INFEASIBLE'}  {seconds:4.1f} s{belief}", flush=True)
        reached = next((k + 1 for k, r in enumerate(rows) if r["feasible"] and r["hardness_hv"] >= 0.95 * best), None)
        print(f"seed {seed}: 95 % of the best reached after {reached or 'more than ' + str(args.budget)} experiments; "
              f"{sum(not r['feasible'] for r in rows)} infeasible")
        calphad = getattr(planner, "calphad_feasibility", None)
        if calphad is not None:
            free_index = [columns.index(e) for e in free]
            for upto in (0, 12, 20, len(rows)):
                model = calphad if not upto else calphad.updated(
                    as_tensor(rows[:upto])[:, free_index],
                    torch.tensor([float(r["feasible"]) for r in rows[:upto]], dtype=torch.double))
                with torch.no_grad():
                    p = model.log_probability(as_tensor(best_rows)[:, free_index]).exp().numpy()
                print(f"  after {upto:2d} experiments: P(feasible) at the five best feasible alloys {np.round(p, 2)}; "
                      f"boundary shift {model.boundary_shift_k:+.1f} K")
        if classifier is not None:
            for upto in (0, 12, 20, len(rows)):
                model = classifier
                if upto:
                    model = update_classifier(classifier, columns, as_tensor(rows[:upto]),
                                              torch.tensor([float(r["feasible"]) for r in rows[:upto]], dtype=torch.double))
                with torch.no_grad():
                    p = classifier_log_probability(model, columns)(as_tensor(best_rows)).exp().numpy()
                print(f"  after {upto:2d} experiments: P(feasible) at the five best feasible alloys {np.round(p, 2)}")
        traces.append({"seed": seed, "reached": reached, "rows": rows})
    problem.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"problem": args.problem, "best_hv": best,
                                    "planner": args.planner, "traces": traces}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
