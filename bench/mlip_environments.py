"""Does active learning pay where a potential is used beyond the bulk? Pool-based, per-kind test sets.

    python bench/mlip_environments.py configs/mlip_environments.yaml --seeds 0 1 2 --out runs/mlip/environments

Per seed: held-out sets per kind labelled by the oracle (bulk, vacancy, migration = NEB images of a
vacancy hop, surfaces, strained, hot); the first labels are random bulk cells (what a lab has first);
a committee trained on them explores the config's mix of cell kinds by MD (the pool); then every arm
labels from that same pool, ``per_iteration`` frames a round, retraining warm each round:
``committee`` (the worst atom's committee spread), ``committee_mean`` (the structure's mean spread),
``random`` (uniform over the pool) and the ``true_error`` bound (the worst atom's true error; the
oracle's side runs on the pool are not counted).

Prints per seed and arm the final force MAE per set, how well the committee's spread ranks the true
errors on the pooled held-out sets (Spearman rho) and the trust level learned from the labelled frames, the oracle calls each arm needs to reach random's
final mean force MAE over the off-distribution sets (and their ratio to random's calls), the bulk
error at equal calls against random's, and the kinds each arm selected; writes environments.json and
environments.png (the first seed's learning curves per set) in ``--out``. With ``final_fit_epochs`` in the
config, each arm's labels are also fitted once more to convergence (the potential a lab would then use)
and that fit's energy and force MAE per set are printed beside the loop's last model.
Each arm's committee is kept in ``--out`` (``{arm}_seed{seed}_loop.pt``, and ``_final.pt`` after the
final fit; ``sdl.surrogates.mlip.load_committee`` reads them), and environments.json lists the pool
frames each round labelled, so a result can be examined after the run without repeating it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ARMS = ("committee", "committee_mean", "grade", "random", "true_error")


def one_seed(config, arms: list[str], out: Path) -> dict:
    from sdl.instruments.atomistic import AseCalculatorOracle
    from sdl.surrogates.mlip import labels_of
    from sdl.surrogates.mlip_environments import (
        OFF_DISTRIBUTION,
        build_environment_tests,
        calls_to_reach,
        first_labels_and_pool,
        mean_force_mae,
        run_pool_arm,
    )

    started = time.perf_counter()
    say = lambda what: print(f"seed {config.seed} {time.perf_counter() - started:6.0f} s  {what}", flush=True)  # noqa: E731
    oracle = AseCalculatorOracle(calculator=config.oracle.calculator, calculator_options=config.oracle.calculator_options,
                                 journal_path=out / f"oracle_seed{config.seed}.sqlite")
    try:
        tests = build_environment_tests(config, oracle, np.random.default_rng(config.seed + 1000))
        say("held-out sets: " + ", ".join(f"{k} {len(v)}" for k, v in tests.items()))
        initial, committee, pool = first_labels_and_pool(config, oracle)
        kinds, counts = np.unique([a.info["kind"] for a in pool], return_counts=True)
        pool_mix = dict(zip(kinds.tolist(), counts.tolist()))
        say(f"pool of {len(pool)} frames: {pool_mix}")
        reference = None
        if "true_error" in arms:
            side = AseCalculatorOracle(calculator=config.oracle.calculator,
                                       calculator_options=config.oracle.calculator_options)  # not counted
            reference = [labels_of(side.label(a)).forces_ev_per_ang for a in pool]
            side.close()
        histories = {arm: run_pool_arm(config, arm, oracle, initial, committee, pool, tests, reference_forces=reference,
                                       progress=lambda arm, n: say(f"{arm:>14} {n:>4} calls"), save_dir=out)
                     for arm in arms}
    finally:
        oracle.close()
    result = {"seed": config.seed, "pool": pool_mix, "test_sets": {k: len(v) for k, v in tests.items()},
              "histories": histories}
    if "random" in histories:
        final_random = mean_force_mae(histories["random"]["errors"][-1], OFF_DISTRIBUTION)
        random_calls = calls_to_reach(histories["random"], OFF_DISTRIBUTION, final_random)
        result["random_final_off_distribution_mae"] = final_random
        result["calls_to_random_final"] = {arm: calls_to_reach(h, OFF_DISTRIBUTION, final_random)
                                           for arm, h in histories.items()}
        result["random_calls"] = random_calls
        bulk_random = histories["random"]["errors"][-1]["bulk"]["force_mae_mev_per_ang"]
        result["bulk_vs_random_at_final"] = {arm: h["errors"][-1]["bulk"]["force_mae_mev_per_ang"] / bulk_random
                                             for arm, h in histories.items()}
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    from sdl.surrogates.mlip_environments import TEST_SETS

    colours = {"committee": "C0", "committee_mean": "C9", "random": "C7", "true_error": "C3"}
    labels = {"committee": "active: worst-atom committee spread", "committee_mean": "active: mean spread",
              "random": "random from the same pool", "true_error": "bound: worst-atom true error"}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    for ax, name in zip(axes.ravel(), TEST_SETS):
        for arm, history in result["histories"].items():
            ax.plot(history["oracle_calls"], [e[name]["force_mae_mev_per_ang"] for e in history["errors"]], "o-", ms=3,
                    color=colours.get(arm, "k"), label=labels.get(arm, arm))
        ax.set_title(f"{name} ({result['test_sets'][name]} held-out cells)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())  # "60" reads faster than "6 x 10^1"
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.grid(alpha=0.3, which="both")
    for ax in axes[1]:
        ax.set_xlabel("oracle calls")
    for ax in axes[:, 0]:
        ax.set_ylabel("force MAE (meV/Å)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Active learning from one pool (seed {result['seed']}; pool {result['pool']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="an environments config (YAML)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=["committee", "random", "true_error"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-oracle-calls", type=int, help="override the config's budget")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("runs/mlip/environments"))
    args = parser.parse_args()

    import torch

    from sdl.settings import load_yaml
    from sdl.surrogates.mlip_environments import TEST_SETS, EnvironmentsConfig

    torch.set_num_threads(args.threads)
    config = load_yaml(EnvironmentsConfig, args.config, "MLIP environments config")
    update = {"device": "cpu"}
    if args.max_oracle_calls:
        update["max_oracle_calls"] = args.max_oracle_calls
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        results.append(one_seed(config.model_copy(update={**update, "seed": seed}), args.arms, args.out))
        (args.out / "environments.json").write_text(json.dumps(results, indent=1))
    plot(results[0], args.out / "environments.png")
    for r in results:
        print(f"\nseed {r['seed']}: pool {r['pool']}")
        print("| arm | " + " | ".join(TEST_SETS) + " | calls to random's final off-dist. MAE | bulk vs random |")
        print("|---|" + "---|" * (len(TEST_SETS) + 2))
        for arm, h in r["histories"].items():
            final = h["errors"][-1]
            cells = " | ".join(f"{final[s]['force_mae_mev_per_ang']:.0f}" for s in TEST_SETS)
            calls = r.get("calls_to_random_final", {}).get(arm)
            ratio = "" if calls is None or not r.get("random_calls") else f" ({calls / r['random_calls']:.2f}x random)"
            print(f"| {arm} | {cells} | {calls if calls is not None else '> budget'}{ratio} | "
                  f"{r.get('bulk_vs_random_at_final', {}).get(arm, float('nan')):.2f} |")
        print("energy MAE (meV/atom; target <= 5) per set, the loop's last model and the production fit on its labels:")
        for arm, h in r["histories"].items():
            fits = [("loop", h["errors"][-1])] + ([(f"fit {h['final_fit']['epochs']} ep", h["final_fit"]["errors"])]
                                                  if "final_fit" in h else [])
            for label, errors in fits:
                cells = " | ".join(f"{errors[s]['energy_mae_mev_per_atom']:.1f} / {errors[s]['force_mae_mev_per_ang']:.0f}"
                                   for s in TEST_SETS)
                print(f"| {arm} {label} | {cells} |  (energy meV/atom / force meV/A)")
        for arm, h in r["histories"].items():
            rho = h["uncertainty_ranking"]
            level = h["trust_level_ev_per_ang"]
            print(f"  {arm}: Spearman rho over the pooled held-out sets, worst-atom spread vs worst-atom error "
                  f"{rho['worst_atom']:.2f}, mean spread vs force MAE {rho['structure_mean']:.2f} (target >= 0.6); "
                  f"learned trust level {'n/a' if level is None else f'{level:.3f} eV/A'}")
        for arm, h in r["histories"].items():
            kinds, counts = np.unique([k for rnd in h["selected_kinds"] for k in rnd], return_counts=True)
            print(f"  {arm} selected: {dict(zip(kinds.tolist(), counts.tolist()))}")
    ratios = [r["calls_to_random_final"]["committee"] / r["random_calls"] for r in results
              if r.get("random_calls") and r.get("calls_to_random_final", {}).get("committee")]
    if ratios:
        print(f"\nmedian over seeds, committee's calls / random's to random's final off-distribution MAE: "
              f"{np.median(ratios):.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
