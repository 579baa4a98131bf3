"""The hybrid surrogate on its own: is its uncertainty calibrated, and does the physics help the model?

    python bench/physics_surrogate.py --problems twin twin_truth_off twin_1350_1100 --sizes 5 10 20 40 \\
        --seeds 0 1 2 3 4 --out runs/bench/physics_surrogate

Issue 19 asks for a hybrid physics + ML surrogate with calibrated uncertainty, its design justified by an
ablation. The benches compare whole planners (experiments to 95 %); this script isolates the objective's
model. For each twin problem of the bench config, ``--seeds`` training sets of random alloys (hardness
measured with the problem's noise) of each ``--sizes``, and one held-out set of ``--test-points`` random
alloys (measured the same way), it fits the objective's GP exactly as the shipped planner's ``propose``
does (the planner's own ``_gp``, on the planner's own CALPHAD: never the truth's database) with the
physics in one of three places, everything else as shipped (gamma lengthscale prior, the same features):

- ``mean``: a prior mean linear in the planner's peak-hardness estimate, the GP on the residual (shipped);
- ``kernel``: the estimate as one more kernel input beside the composition;
- ``none``: the same GP without physics;

and beside them ``physics_only``: the estimate alone, its offset and slope fitted by least squares, the
residual's spread as the predictive sd (what the physics knows without a GP).

Per problem, size and arm it prints the medians over seeds of: RMSE against the held-out measurements
(HV), the same over the held-out alloys whose true hardness is in the top tenth (where a planner's
decisions are made), the mean negative log predictive density (NLPD, per alloy, of the measurement under
the predictive normal, observation noise included), and the share of held-out measurements inside the
central 50 % and 90 % predictive intervals (calibrated: 0.50 and 0.90), the latter also over the processable
held-out alloys alone (where a planner with a feasibility model proposes) and over the top tenth. With
``--design campaign`` the training alloys of each seed are the first ones a closed loop of the shipped planner
makes (its model's data in a campaign, gathered near the hardest alloys) instead of random ones. With
``--design next`` the test is the one a lab meets: fitted on a campaign's first n alloys, how well does the model
predict the measurement of the alloy the planner makes next (n from the first size to the last; the predictions
pooled over seeds and over the windows between consecutive sizes; ``mean z`` is their average standardised error,
negative where the model promised more than it measured). Writes ``surrogate.json`` and ``surrogate.png`` (RMSE
and 90 % coverage against training size, per problem) in ``--out``.

Stop 53 (records in bench/records/issue19/s53_physics_surrogate*): with 5 random alloys the shipped model's RMSE is
25-33 HV, the GP without physics 78-86; its 90 % intervals hold 73-90 % of the measurements. On a campaign's own
alloys they hold 93 % of the hardest tenth on the twin, 60-73 % on twin_truth_off (a wrong database makes the prior
mean confidently wrong). Stop 54 (s54_physics_surrogate_next): asked for the measurement of the alloy the planner makes
next (375 predictions: three twins, 5 seeds, fitted on 5-29 of the campaign's alloys), its 50 % and 90 % intervals hold
53 % and 88 % (the GP without physics 58 % and 92 %), standardised errors mean -0.19, sd 1.09: calibrated where the
planner decides, a little optimistic, as a model asked at the alloy it rates best will be.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sdl.agents.planner import ProposeRequest, make_planner
from sdl.bench import BenchPlannerSpec, closed_loop, load_bench_config, make_bench_planner
from sdl.bench.config import problem_context
from sdl.bench.problems import TwinProblem, make_problem

SHIPPED = "bo_physics_start_f75k90_gamma"
ARMS = ("mean", "kernel", "none", "physics_only")
Z50, Z90 = 0.6744897501960817, 1.6448536269514722  # central 50 % and 90 % intervals of a normal


def arm_spec(shipped: BenchPlannerSpec, arm: str) -> BenchPlannerSpec:
    """The shipped planner with its physics feature in the prior mean, the kernel, or nowhere."""
    settings = json.loads(json.dumps(shipped.settings))
    calphad = settings.setdefault("calphad", {})
    features = calphad.pop("objective_mean", None) or calphad.pop("objective_inputs", None) or ["peak_hardness_hv"]
    if arm == "kernel":
        calphad["objective_inputs"] = features
    elif arm in ("mean", "physics_only"):
        calphad["objective_mean"] = features
    return BenchPlannerSpec(name=f"{shipped.name}_{arm}", kind=shipped.kind, settings=settings,
                            constrained=shipped.constrained)


def random_alloys(problem, n: int, seed: int):
    return make_planner("random", problem_context(problem, seed)).propose(ProposeRequest(n=n))


def measured_hardness(problem, points, rng: np.random.Generator) -> np.ndarray:
    return np.array([row[problem.objective.measurement] for row in problem.measure(points, rng)])


def campaign_alloys(problem, spec: BenchPlannerSpec, n: int, seed: int):
    """The first ``n`` alloys a closed loop of the planner ``spec`` makes (``sdl bench``'s loop), with their
    measurements: the data its model is fitted on in a campaign, gathered where it expects the hardest alloys.
    (The shipped planner weighs by its own CALPHAD: it asks for no feasibility classifier.)"""
    observations = [o for o, _ in closed_loop(problem, make_bench_planner(spec, problem, seed), n, seed)]
    return [o.point for o in observations], np.array([o.measurements[problem.objective.measurement]
                                                      for o in observations])


def next_experiment_rows(name: str, problem, shipped: BenchPlannerSpec, planners: dict, sizes: list[int],
                         seeds: list[int]) -> list[dict]:
    """``--design next``: per seed one closed loop of the shipped planner; each arm fitted on its first n alloys
    predicts the measurement of alloy n + 1. Returns one row per prediction (arm, seed, n, measured, mean, sd)."""
    predictions = []
    for seed in seeds:
        points, values = campaign_alloys(problem, shipped, sizes[-1], seed)
        x = planners["none"].to_tensor(points)
        y = torch.tensor(values, dtype=x.dtype).reshape(-1, 1)
        for n in range(sizes[0], sizes[-1]):
            for arm, planner in planners.items():
                torch.manual_seed(seed)
                mean, sd = predict(planner, arm, x[:n], y[:n], x[n:n + 1])
                predictions.append({"problem": name, "arm": arm, "seed": seed, "size": n,
                                    "measured_hv": float(values[n]), "mean_hv": float(mean[0]), "sd_hv": float(sd[0])})
    return predictions


def interval_scores(mean: np.ndarray, sd: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """RMSE, NLPD and coverage of the central 50 % and 90 % intervals of measurements ``y`` under N(mean, sd^2)."""
    z = (y - mean) / sd
    return {"rmse_hv": float(np.sqrt(np.mean((y - mean) ** 2))),
            "nlpd": float(np.mean(0.5 * z ** 2 + np.log(sd) + 0.5 * math.log(2 * math.pi))),
            "coverage_50": float(np.mean(np.abs(z) <= Z50)), "coverage_90": float(np.mean(np.abs(z) <= Z90))}


def next_experiment_scores(predictions: list[dict]) -> dict[str, float]:
    """The pooled predictions' interval scores and their mean standardised error."""
    y, mean, sd = (np.array([p[k] for p in predictions]) for k in ("measured_hv", "mean_hv", "sd_hv"))
    return {**interval_scores(mean, sd, y), "mean_z": float(np.mean((y - mean) / sd)), "predictions": len(y)}


def scores(mean: np.ndarray, sd: np.ndarray, y: np.ndarray, top: np.ndarray, feasible: np.ndarray) -> dict[str, float]:
    """The held-out set's interval scores, with RMSE over the top tenth and 90 % coverage over the processable
    alloys and the top tenth."""
    z = (y - mean) / sd
    return {**interval_scores(mean, sd, y),
            "rmse_top_hv": float(np.sqrt(np.mean((y[top] - mean[top]) ** 2))),
            "coverage_90_feasible": float(np.mean(np.abs(z[feasible]) <= Z90)),
            "coverage_90_top": float(np.mean(np.abs(z[top]) <= Z90))}


def arm_planners(name: str, problem, shipped: BenchPlannerSpec) -> dict:
    """The shipped planner in each arm on ``problem``; only a twin has CALPHAD physics to ablate."""
    if not isinstance(problem, TwinProblem):
        raise SystemExit(f"{name} is not a twin problem: there is no CALPHAD physics to ablate on it")
    return {arm: make_bench_planner(arm_spec(shipped, arm), problem, seed=0) for arm in ARMS}


def predict(planner, arm: str, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Predictive mean and sd (observation noise included) of the held-out measurements."""
    if arm == "physics_only":
        features, _ = planner._physics_features(planner.settings.calphad.objective_mean)
        with torch.no_grad():
            design = torch.cat([torch.ones(len(x), 1, dtype=x.dtype), features(x)[:, :1]], dim=-1)
            design_test = torch.cat([torch.ones(len(x_test), 1, dtype=x.dtype), features(x_test)[:, :1]], dim=-1)
        coefficients, *_ = np.linalg.lstsq(design.numpy(), y[:, 0].numpy(), rcond=None)
        residual = y[:, 0].numpy() - design.numpy() @ coefficients
        sd = math.sqrt(max(float(residual @ residual) / max(len(x) - 2, 1), 1e-6))
        return design_test.numpy() @ coefficients, np.full(len(x_test), sd)
    model = planner._gp(x, y, physics=True)
    with torch.no_grad():
        posterior = model.posterior(x_test, observation_noise=True)
    return (posterior.mean[:, 0].detach().numpy(),  # the physics features keep their graph (for acquisition gradients)
            posterior.variance[:, 0].detach().clamp_min(1e-12).sqrt().numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/bench_physics.yaml")
    parser.add_argument("--problems", nargs="+", default=["twin", "twin_truth_off", "twin_1350_1100"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--test-points", type=int, default=300)
    parser.add_argument("--design", choices=["random", "campaign", "next"], default="random",
                        help="training alloys drawn at random, or the first ones a closed loop of the shipped "
                             "planner makes (one loop per seed, cut at each size), or that loop's first n alloys "
                             "to predict its next one (needs at least two sizes: the windows' edges)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/physics_surrogate")
    args = parser.parse_args()
    if min(args.sizes) < 3 or args.test_points < 20:
        parser.error("--sizes must be >= 3 (a GP and a fitted line need a few points) and --test-points >= 20")
    if args.design == "next" and (len(args.sizes) < 2 or args.sizes != sorted(set(args.sizes))):
        parser.error("--design next needs at least two increasing --sizes: the edges of the windows it pools over")
    torch.set_num_threads(args.threads)

    config = load_bench_config(args.config, check_on=lambda spec: spec.name in args.problems)
    specs = {p.name: p for p in config.problems}
    unknown = [name for name in args.problems if name not in specs]
    if unknown:
        parser.error(f"{unknown} are not problems of {args.config}; it has {sorted(specs)}")
    shipped = next((p for p in config.planners if p.name == SHIPPED), None)
    if shipped is None:
        parser.error(f"{args.config} has no planner {SHIPPED!r}, the shipped planner this script ablates")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.design == "next":
        return next_experiment_main(args, specs, shipped, out)
    results: list[dict] = []
    print(f"{'problem':>16} {'n':>3} {'arm':>13} {'RMSE':>6} {'top-10% RMSE':>12} {'NLPD':>6} "
          f"{'in 50%':>6} {'in 90%':>6} {'in 90%, feas.':>13} {'in 90%, top':>11}   "
          f"(HV; medians over {len(args.seeds)} seeds)")
    for name in args.problems:
        problem = make_problem(specs[name])
        try:
            planners = arm_planners(name, problem, shipped)
            started = time.perf_counter()
            test_points = random_alloys(problem, args.test_points, seed=10_000)
            y_test = measured_hardness(problem, test_points, np.random.default_rng([10_000, 7]))
            truth, feasible = problem.truth(test_points)
            top = truth >= np.quantile(truth, 0.9)
            x_test = planners["none"].to_tensor(test_points)
            loops = {seed: campaign_alloys(problem, shipped, max(args.sizes), seed) for seed in args.seeds} \
                if args.design == "campaign" else {}
            for n in args.sizes:
                rows = {arm: [] for arm in ARMS}
                for seed in args.seeds:
                    if args.design == "campaign":
                        points, values = loops[seed][0][:n], loops[seed][1][:n]
                    else:
                        points = random_alloys(problem, n, seed=seed)
                        values = measured_hardness(problem, points, np.random.default_rng([seed, 7]))
                    y = torch.tensor(values, dtype=x_test.dtype).reshape(-1, 1)
                    x = planners["none"].to_tensor(points)
                    for arm, planner in planners.items():
                        torch.manual_seed(seed)
                        mean, sd = predict(planner, arm, x, y, x_test)
                        row = {"problem": name, "size": n, "seed": seed, "arm": arm,
                               **scores(mean, sd, y_test, top, feasible)}
                        rows[arm].append(row)
                        results.append(row)
                for arm in ARMS:
                    med = {k: statistics.median(r[k] for r in rows[arm]) for k in
                           ("rmse_hv", "rmse_top_hv", "nlpd", "coverage_50", "coverage_90", "coverage_90_feasible",
                            "coverage_90_top")}
                    print(f"{name:>16} {n:>3} {arm:>13} {med['rmse_hv']:>6.1f} {med['rmse_top_hv']:>12.1f} "
                          f"{med['nlpd']:>6.2f} {med['coverage_50']:>6.2f} {med['coverage_90']:>6.2f} "
                          f"{med['coverage_90_feasible']:>13.2f} {med['coverage_90_top']:>11.2f}", flush=True)
            print(f"{name:>16}  ({time.perf_counter() - started:.0f} s; held-out hardness "
                  f"{y_test.min():.0f}-{y_test.max():.0f} HV, top tenth from {np.quantile(truth, 0.9):.0f})",
                  flush=True)
        finally:
            problem.close()
    (out / "surrogate.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    plot(results, args, out / "surrogate.png")
    print(f"wrote {out / 'surrogate.json'} and {out / 'surrogate.png'}")


def next_experiment_main(args, specs: dict, shipped: BenchPlannerSpec, out: Path) -> None:
    """``--design next`` per problem: the predictions, their scores per window and pooled, the record and plot."""
    windows = list(zip(args.sizes[:-1], args.sizes[1:]))
    predictions: list[dict] = []
    results: list[dict] = []
    print(f"{'problem':>16} {'fitted on':>9} {'arm':>13} {'RMSE':>6} {'NLPD':>6} {'in 50%':>6} {'in 90%':>6} "
          f"{'mean z':>6} {'count':>5}   (HV; the campaign's next measurement, pooled over {len(args.seeds)} seeds)")
    for name in args.problems:
        problem = make_problem(specs[name])
        try:
            planners = arm_planners(name, problem, shipped)
            started = time.perf_counter()
            ours = next_experiment_rows(name, problem, shipped, planners, args.sizes, args.seeds)
            predictions += ours
            pooled = [(args.sizes[0], args.sizes[-1])] if len(windows) > 1 else []
            for low, high in windows + pooled:
                for arm in ARMS:
                    # A pooled row has size None: it is not a point of the plot.
                    row = {"problem": name, "size": None if (low, high) in pooled else low, "window": [low, high - 1],
                           "arm": arm,
                           **next_experiment_scores([p for p in ours if p["arm"] == arm and low <= p["size"] < high])}
                    results.append(row)
                    print(f"{name:>16} {f'{low}-{high - 1}':>9} {arm:>13} {row['rmse_hv']:>6.1f} {row['nlpd']:>6.2f} "
                          f"{row['coverage_50']:>6.2f} {row['coverage_90']:>6.2f} {row['mean_z']:>+6.2f} "
                          f"{row['predictions']:>5}", flush=True)
            print(f"{name:>16}  ({time.perf_counter() - started:.0f} s)", flush=True)
        finally:
            problem.close()
    (out / "surrogate.json").write_text(json.dumps({"args": vars(args), "results": results,
                                                    "predictions": predictions}, indent=1))
    plot(results, args, out / "surrogate.png", sizes=[low for low, _ in windows])
    print(f"wrote {out / 'surrogate.json'} and {out / 'surrogate.png'}")


def plot(results: list[dict], args, path: Path, sizes: list[int] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = args.sizes if sizes is None else sizes
    fig, axes = plt.subplots(2, len(args.problems), figsize=(4.2 * len(args.problems), 6.5), squeeze=False,
                             sharex=True)
    for column, name in enumerate(args.problems):
        for arm in ARMS:
            for row, (key, label) in enumerate((("rmse_hv", "RMSE of the next measurement (HV)" if args.design == "next"
                                                 else "RMSE on held-out alloys (HV)"),
                                                ("coverage_90", "share inside the 90 % interval"))):
                medians = [statistics.median(r[key] for r in results
                                             if r["problem"] == name and r["arm"] == arm and r["size"] == n)
                           for n in sizes]
                axes[row, column].plot(sizes, medians, marker="o", label=arm)
                axes[row, column].set_ylabel(label)
        axes[1, column].axhline(0.9, color="grey", linestyle=":", linewidth=1)
        axes[0, column].set_title(name)
        axes[1, column].set_xlabel("campaign alloys fitted (window start)" if args.design == "next"
                                   else f"training alloys ({args.design})")
        axes[1, column].set_xticks(sizes)
    axes[0, 0].legend(title="physics in the GP's")
    fig.suptitle("The objective's model alone, predicting a campaign's next measurement; pooled over "
                 f"{len(args.seeds)} seeds" if args.design == "next" else
                 f"The objective's model alone, fitted on {args.design} alloys; medians over {len(args.seeds)} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
