"""How many oracle calls can the choice of what to label save? One run, several selection rules.

    python bench/mlip_selection.py configs/mlip.yaml --max-oracle-calls 70 --out runs/mlip/selection
    python bench/mlip_selection.py configs/mlip.yaml --arms committee random true_error --seeds 0 1 2

Arms, each from the same initial structures and the same held-out set: committee spread and
extrapolation grade (the active learners), random selection, and a bound no active learner can
reach: ``true_error`` labels the frames whose committee forces are furthest from the oracle's,
with the oracle run on every candidate on the side (those runs are not counted as calls). If even
the bound needs nearly as many calls as random, no uncertainty measure can do much better on this
problem: every frame the exploration offers teaches about as much as any other.

Arms run two at a time, each in its own process with one thread. Each seed draws its own held-out
set, initial structures and exploration. Prints, per seed and arm, the oracle calls to reach the
config's target force MAE and their ratio to random's (same seed); writes selection.png (the first
seed's curves) and selection.json in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ARMS = ("committee", "grade", "random", "true_error")


def run(config_json: str, arm: str, test: list, out: str) -> dict:
    """One arm of one seed (the seed is the config's), in a worker process."""
    import torch

    from sdl.instruments.atomistic import AseCalculatorOracle
    from sdl.surrogates.mlip import structure_errors
    from sdl.surrogates.mlip_learning import ActiveLearningConfig, run_arm

    torch.set_num_threads(1)
    config = ActiveLearningConfig.model_validate_json(config_json)
    # the bound's side oracle: its own instance (in memory), so its calls never reach the arm's count
    reference = AseCalculatorOracle(calculator=config.oracle.calculator, calculator_options=config.oracle.calculator_options)

    def true_error(committee, candidates, labelled):
        return np.array([e.forces_ev_per_ang.mean() for e in structure_errors(committee, [reference.label(a) for a in candidates])])

    oracle = AseCalculatorOracle(calculator=config.oracle.calculator, calculator_options=config.oracle.calculator_options,
                                 journal_path=Path(out) / f"oracle_{arm}_seed{config.seed}.sqlite")
    try:
        started = time.perf_counter()
        curve, _ = run_arm(config, arm, oracle, test, score=true_error if arm == "true_error" else None,
                           progress=lambda s, n, mae: print(f"seed {config.seed} {arm:>11} {n:>4} calls  force MAE {mae:6.1f} meV/A  "
                                                            f"{time.perf_counter() - started:6.0f} s", flush=True))
    finally:
        oracle.close()
        reference.close()
    return vars(curve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="an `sdl mlip active-learn` config (YAML)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--max-oracle-calls", type=int, help="override the config's budget")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the config's)")
    parser.add_argument("--out", type=Path, default=Path("runs/mlip/selection"))
    args = parser.parse_args()

    from sdl.instruments.atomistic import AseCalculatorOracle
    from sdl.surrogates.mlip_learning import (
        LearningCurve,
        build_test_set,
        load_active_learning_config,
        plot_learning_curves,
    )

    config = load_active_learning_config(args.config)
    # the same number of labels for every arm: a convergence stop would end arms at different budgets
    update = {"convergence_tolerance": 0.0, "device": "cpu"}
    if args.max_oracle_calls:
        update["max_oracle_calls"] = args.max_oracle_calls
    config = config.model_copy(update=update)
    seeds = args.seeds or [config.seed]
    configs = {seed: config.model_copy(update={"seed": seed}) for seed in seeds}
    args.out.mkdir(parents=True, exist_ok=True)
    # one held-out set per seed, labelled once, for every arm (each oracle call may be a DFT run)
    tests = {}
    for seed, seed_config in configs.items():
        oracle = AseCalculatorOracle(calculator=config.oracle.calculator, calculator_options=config.oracle.calculator_options,
                                     journal_path=args.out / f"oracle_test_set_seed{seed}.sqlite")
        try:
            tests[seed] = build_test_set(seed_config, oracle, np.random.default_rng(seed + 1000))
        finally:
            oracle.close()
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = {(seed, arm): pool.submit(run, configs[seed].model_dump_json(), arm, tests[seed], str(args.out))
                   for seed in seeds for arm in args.arms}
        curves = {key: LearningCurve(**future.result()) for key, future in futures.items()}

    target, energy_target = config.target_force_mae_mev_per_ang, config.target_energy_mae_mev_per_atom
    calls = {key: curve.calls_to_reach(target) for key, curve in curves.items()}
    energy_calls = {key: curve.calls_to_reach_energy(energy_target) for key, curve in curves.items()}
    print(f"\noracle calls to a held-out force MAE of {target:g} meV/A and an energy MAE of {energy_target:g} meV/atom "
          f"(budget {config.max_oracle_calls}):")
    for seed in seeds:
        for arm in args.arms:
            n, random_n = calls[seed, arm], calls.get((seed, "random"))
            ratio = f"{n / random_n:.0%} of random's" if n and random_n else ""
            energy_n = energy_calls[seed, arm]
            print(f"  seed {seed} {arm:>11}: force {n if n else '> budget':>8} {ratio:>16}   "
                  f"energy {energy_n if energy_n else '> budget'}")
    (args.out / "selection.json").write_text(json.dumps({
        "config": config.model_dump(mode="json"), "seeds": seeds,
        "calls_to_target": {f"{seed}/{arm}": n for (seed, arm), n in calls.items()},
        "calls_to_energy_target": {f"{seed}/{arm}": n for (seed, arm), n in energy_calls.items()},
        "curves": {f"{seed}/{arm}": vars(c) for (seed, arm), c in curves.items()}}, indent=1))
    plot_learning_curves({arm: curves[seeds[0], arm] for arm in args.arms}, configs[seeds[0]], args.out / "selection.png")
    print(f"wrote {args.out}/selection.png (seed {seeds[0]}), selection.json")


if __name__ == "__main__":
    main()
