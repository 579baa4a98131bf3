"""Causal bench: effects from a confounded lab history, against the twin's truth and DoWhy.

    python bench/causal_effect.py                       # history of 400 specimens, seed 0
    python bench/causal_effect.py --n 400 --seed 0 --out runs/causal_bench

The history is ``env/lab_history.py``'s past practice (Al-rich alloys mostly got a short, cold ageing
cycle; lean ones the full treatment; the era that decided both is not recorded). On it:

- ATE of Al (x_Al from --low to --high, Ni the balance): the back-door estimate, the fitted SCM's
  simulation under do(), the naive regression of hardness on Al, and the truth from the twin (each
  recorded specimen's Co, Cr and route, with Al set; noise-free), all in the same run;
- counterfactuals for --specimens recorded specimens ("had Al been 3 at.% higher"): the SCM's
  abduction-action-prediction against the twin's outcome for that specimen with the changed alloy
  (the same route, and the same measurement-noise draw the record carries), beside the error of
  the interventional prediction that ignores what the specimen itself showed;
- DoWhy (in its own venv, --dowhy-venv, created from PyPI when missing: its pins clash with ours):
  its identified back-door set and its linear-regression ATE on the same data.
Prints the figures, writes OUT/causal_bench.json and OUT/causal_bench.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

DOWHY_SCRIPT = r"""
import json, sys, warnings
import pandas as pd
warnings.filterwarnings("ignore")
from dowhy import CausalModel
args = json.loads(sys.argv[1])
data = pd.read_csv(args["csv"])
model = CausalModel(data=data, treatment=args["treatment"], outcome=args["outcome"], graph=args["gml"])
estimand = model.identify_effect(proceed_when_unidentifiable=False)
estimate = model.estimate_effect(estimand, method_name="backdoor.linear_regression",
                                 control_value=args["low"], treatment_value=args["high"])
print(json.dumps({"backdoor_set": sorted(estimand.get_backdoor_variables()), "ate": float(estimate.value)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="specimens in the history")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--low", type=float, default=0.05, help="x_Al of the control arm")
    parser.add_argument("--high", type=float, default=0.11, help="x_Al of the treated arm")
    parser.add_argument("--specimens", type=int, default=20, help="counterfactual queries")
    parser.add_argument("--config", type=Path, default=Path("configs/causal.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/causal_bench"))
    parser.add_argument("--dowhy-venv", type=Path, default=Path("/tmp/sdl-dowhy-venv"))
    parser.add_argument("--no-dowhy", action="store_true", help="skip the DoWhy cross-check")
    args = parser.parse_args()

    import torch

    from sdl.agents.causal_planner import history_frame, write_history
    from sdl.env.calphad import default_cache_path
    from sdl.env.lab_history import outcomes, past_practice
    from sdl.env.twin import AlloyTwin
    from sdl.ledger import Ledger
    from sdl.surrogates.causal import (
        CausalGraph,
        backdoor_effect,
        composition_change,
        load_causal_config,
        naive_effect,
        scm_effect,
    )
    from sdl.surrogates.dowhy_reference import dowhy_python, graph_gml

    torch.set_num_threads(2)
    config = load_causal_config(args.config)
    graph = CausalGraph(config.graph)
    twin = AlloyTwin(cache_path=default_cache_path())
    history_dir = args.out / f"history_n{args.n}_seed{args.seed}"
    if not Ledger.exists_in(history_dir):
        write_history(history_dir, twin, args.n, args.seed)
    data = history_frame(history_dir)
    specimens = past_practice(args.n, args.seed)  # the same draws the ledger holds, eras included
    if list(data.index) != [f"h{i:05d}" for i in range(1, len(specimens) + 1)]:
        raise RuntimeError(f"{history_dir} does not hold the practice's specimens in order; delete it to regenerate")
    values = np.linspace(args.low, args.high, 4)
    treatment, outcome = "x_Al", config.outcome

    # Truth: every recorded specimen's Co, Cr and route, with Al set; noise-free twin hardness.
    truth = []
    for a in values:
        hv = [twin.properties([{**s.composition, "Al": a, "Ni": 1 - a - s.composition["Co"] - s.composition["Cr"]}],
                              s.route, phase_state="table").hardness_hv[0] for s in specimens]
        truth.append(float(np.mean(hv)))
    truth = np.array(truth)

    started = time.perf_counter()
    backdoor = backdoor_effect(data, graph, treatment, outcome, values, settings=config.mechanisms)
    backdoor_s = time.perf_counter() - started
    naive = naive_effect(data, treatment, outcome, values, settings=config.mechanisms)
    started = time.perf_counter()
    scm = config.causal_model().fit(data)
    simulated = scm_effect(scm, treatment, outcome, values)
    scm_s = time.perf_counter() - started

    true_ate = truth[-1] - truth[0]
    rows = {"truth (twin)": (true_ate, 0.0)}
    for curve in (backdoor, simulated, naive):
        draws_sd = float(np.hypot(curve.std[-1], curve.std[0]))
        rows[curve.method] = (curve.difference(), draws_sd)

    # Counterfactuals: raise Al by 3 at.% (Ni the balance) for specimens where that stays in range.
    rng = np.random.default_rng(args.seed + 7)
    order = rng.permutation(len(specimens))
    ids = list(data.index)
    cf_rows = []
    for i in order:
        s = specimens[i]
        new_al = s.composition["Al"] + 0.03
        if new_al > 0.15:
            continue
        changed = composition_change(data.loc[ids[i]].to_dict(), {"Al": new_al}, elements=config.elements,
                                     balance=config.balance)
        cf = scm.counterfactual(i, changed)[outcome]
        factual_twin = outcomes(twin, [s], noise_hv=0.0)[0][outcome]
        noise = data.loc[ids[i], outcome] - factual_twin  # this record's measurement-noise draw
        new_comp = {**s.composition, "Al": new_al, "Ni": s.composition["Ni"] - 0.03}
        actual = twin.properties([new_comp], s.route, phase_state="table").hardness_hv[0] + noise
        route_vars = {k: data.loc[ids[i], k] for k in ("solution_temperature_k", "age_temperature_k",
                                                       "age_log10_duration_s")}
        interventional = scm.interventional_means({k: np.array([v]) for k, v in {**changed, **route_vars}.items()},
                                                  outcome, rows_per_candidate=64)[:, 0]
        cf_rows.append({"specimen": ids[i], "observed": float(data.loc[ids[i], outcome]), "actual": float(actual),
                        "counterfactual": float(cf.mean()), "counterfactual_sd": float(cf.std()),
                        "interventional": float(interventional.mean())})
        if len(cf_rows) == args.specimens:
            break
    cf_error = np.array([abs(r["counterfactual"] - r["actual"]) for r in cf_rows])
    int_error = np.array([abs(r["interventional"] - r["actual"]) for r in cf_rows])

    dowhy = None
    if not args.no_dowhy:
        csv = args.out / "history.csv"
        data[graph.observed].to_csv(csv, index=False)
        payload = json.dumps({"csv": str(csv), "treatment": treatment, "outcome": outcome, "gml": graph_gml(graph),
                              "low": args.low, "high": args.high})
        done = subprocess.run([str(dowhy_python(args.dowhy_venv)), "-c", DOWHY_SCRIPT, payload],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"DoWhy failed:\n{done.stderr[-2000:]}")
        else:
            dowhy = json.loads(done.stdout.strip().splitlines()[-1])
            rows["DoWhy back-door linear regression"] = (dowhy["ate"], float("nan"))

    print(f"history: {len(data)} specimens ({history_dir}); adjustment set found: {list(backdoor.adjustment)}")
    if dowhy is not None:
        print(f"DoWhy's back-door set: {dowhy['backdoor_set']}")
    print(f"ATE of Al {args.low:.2f} -> {args.high:.2f} on hardness (HV):")
    for name, (ate, sd) in rows.items():
        err = "" if name.startswith("truth") else f"   error {ate - true_ate:+7.1f} HV"
        print(f"  {name:36s} {ate:+8.1f} (sd {sd:4.1f}){err}")
    print(f"counterfactual 'Al + 3 at.%' on {len(cf_rows)} recorded specimens, vs the twin's outcome:")
    print(f"  abduction-action-prediction: MAE {cf_error.mean():.1f} HV (median {np.median(cf_error):.1f})")
    print(f"  interventional mean at the same alloy and route (no abduction): MAE {int_error.mean():.1f} HV")
    print(f"fit times: back-door regression {backdoor_s:.1f} s, SCM (4 mechanisms) + simulation {scm_s:.1f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    result = {"n": len(data), "seed": args.seed, "values": values.tolist(), "truth": truth.tolist(),
              "curves": {c.method: {"mean": c.mean.tolist(), "std": c.std.tolist()} for c in (backdoor, simulated, naive)},
              "ate": {k: v[0] for k, v in rows.items()}, "adjustment": list(backdoor.adjustment), "dowhy": dowhy,
              "counterfactuals": cf_rows, "counterfactual_mae_hv": float(cf_error.mean()),
              "interventional_mae_hv": float(int_error.mean())}
    (args.out / "causal_bench.json").write_text(json.dumps(result, indent=2))
    plot(values, truth, (backdoor, simulated, naive), cf_rows, args.out / "causal_bench.png")
    print(f"wrote {args.out / 'causal_bench.json'}, {args.out / 'causal_bench.png'}")


def plot(values, truth, curves, cf_rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(values, truth, "k-", lw=2, label="truth (twin)")
    for curve, color in zip(curves, ("C0", "C1", "C3")):
        left.plot(curve.values, curve.mean, color=color, label=curve.method)
        left.fill_between(curve.values, curve.mean - 2 * curve.std, curve.mean + 2 * curve.std, color=color, alpha=0.2)
    left.set_xlabel("Al mole fraction (intervened)")
    left.set_ylabel("hardness (HV)")
    left.set_title("E[hardness | do(Al)] from a confounded history")
    left.legend(fontsize=8)
    actual = [r["actual"] for r in cf_rows]
    right.errorbar(actual, [r["counterfactual"] for r in cf_rows], yerr=[2 * r["counterfactual_sd"] for r in cf_rows],
                   fmt="o", color="C1", label="counterfactual (abduction)")
    right.plot(actual, [r["interventional"] for r in cf_rows], "x", color="C7", label="interventional mean")
    lo, hi = min(actual), max(actual)
    right.plot([lo, hi], [lo, hi], "k--", lw=1)
    right.set_xlabel("twin: the same specimen with Al + 3 at.% (HV)")
    right.set_ylabel("predicted (HV)")
    right.set_title("Counterfactuals for recorded specimens")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
