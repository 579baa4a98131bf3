"""Where an environments run's energy errors come from, from its kept committees (no rerun of the loop).

    python bench/mlip_energy_errors.py configs/mlip_environments_bulk.yaml runs/mlip/s57_bulk200_seed2 --seed 2 \
        --refit-energy-weights 1000

Needs a run of ``bench/mlip_environments.py`` that kept its committees (stop 57 on). Rebuilds the held-out
sets, the first labels and the pool from the seed (the oracle journal of the run answers the labels) and
prints: every kept committee's energy / force MAE per set on the held-out sets as this code builds them;
per arm, the production fit's signed energy error per held-out start (each start gives 4 MD frames of one
composition, each migration path its NEB images, so a set's energy MAE averages over 2-3 compositions); the labelled frames per kind, their
true energy per atom and largest force and the fit's training error on them; and refits of the loop's
committee with other energy weights (the production fit's settings otherwise).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sdl.instruments.atomistic import AseCalculatorOracle
from sdl.settings import load_yaml
from sdl.surrogates.mlip import labels_of, load_committee, train_committee
from sdl.surrogates.mlip_environments import (
    FRAMES_PER_TEST_START,
    EnvironmentsConfig,
    build_environment_tests,
    first_labels_and_pool,
    per_set_errors,
)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("config", help="the run's environments config (YAML)")
parser.add_argument("run", type=Path, help="the run's --out folder")
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--refit-energy-weights", type=float, nargs="*", default=[])
parser.add_argument("--arms", nargs="+", default=["committee", "random"])
args = parser.parse_args()
torch.set_num_threads(2)
config = load_yaml(EnvironmentsConfig, args.config, "config").model_copy(
    update={"device": "cpu", "seed": args.seed})
result = json.loads((args.run / "environments.json").read_text())[0]
started = time.perf_counter()
oracle = AseCalculatorOracle(calculator=config.oracle.calculator, calculator_options=config.oracle.calculator_options,
                             journal_path=args.run / f"oracle_seed{config.seed}.sqlite")
tests = build_environment_tests(config, oracle, np.random.default_rng(config.seed + 1000))
initial, _, pool = first_labels_and_pool(config, oracle)
kinds, counts = np.unique([a.info["kind"] for a in pool], return_counts=True)
print(f"pool rebuilt in {time.perf_counter() - started:.0f} s: {dict(zip(kinds.tolist(), counts.tolist()))}, "
      f"recorded {result['pool']}", flush=True)

for path in sorted(args.run.glob("*_seed*_*.pt")):
    errors = per_set_errors(load_committee(path, device="cpu"), tests)
    print(f"| {path.stem:24s} | " + " | ".join(f"{v['energy_mae_mev_per_atom']:.1f} / {v['force_mae_mev_per_ang']:.0f}"
                                              for v in errors.values()) + " |  " + " / ".join(errors))


def per_atom_energy(atoms):
    return labels_of(atoms).energy_ev / len(atoms)


def max_force(atoms):
    return float(np.linalg.norm(labels_of(atoms).forces_ev_per_ang, axis=1).max())


for arm in args.arms:
    history = result["histories"][arm]
    chosen = [i for r in history["selected_pool_indices"] for i in r]
    if [pool[i].info["kind"] for i in chosen] != sum(history["selected_kinds"], []):
        raise SystemExit("the rebuilt pool is not the run's (another config, seed or code version?)")
    labelled = list(initial) + [oracle.label(pool[i]) for i in chosen]
    final = load_committee(args.run / f"{arm}_seed{config.seed}_final.pt", device="cpu")
    print(f"\n== {arm}: {len(labelled)} labels; final fit per set energy MAE meV/atom: "
          + ", ".join(f"{k} {v['energy_mae_mev_per_atom']:.2f}" for k, v in history["final_fit"]["errors"].items()))
    for name in ("surfaces", "strained", "vacancy", "migration"):
        frames = tests[name]
        predicted = final.predict(frames)
        signed = np.array([1000 * (p["energy"] - labels_of(a).energy_ev) / len(a) for p, a in zip(predicted, frames)])
        spread = np.array([1000 * p["energy_std"] / len(a) for p, a in zip(predicted, frames)])
        per_start = config.environment_tests.images_per_path if name == "migration" else FRAMES_PER_TEST_START
        groups = [signed[k:k + per_start] for k in range(0, len(signed), per_start)]
        print(f"  {name:9s} MAE {np.abs(signed).mean():5.2f}  mean signed {signed.mean():+5.2f}  "
              f"per start ({per_start} frames each): " + "  ".join(f"{g.mean():+5.2f}±{g.std():.2f}" for g in groups)
              + f"   committee energy sd {spread.mean():.2f}")
        if name == "surfaces":
            print("    test starts: " + ", ".join(
                f"{frames[k].info.get('kind', '?')} {frames[k].get_chemical_formula()}" for k in range(0, len(frames), FRAMES_PER_TEST_START)))
    by_kind: dict[str, list] = {}
    for atoms, kind in zip(labelled, ["initial"] * len(initial) + [pool[i].info["kind"] for i in chosen]):
        by_kind.setdefault(kind, []).append(atoms)
    for kind, frames in sorted(by_kind.items()):
        e = [per_atom_energy(a) for a in frames]
        f = [max_force(a) for a in frames]
        t = [1000 * p["energy"] / len(a) - 1000 * per_atom_energy(a) for p, a in zip(final.predict(frames), frames)]
        print(f"  labelled {kind:12s} n={len(frames):3d}  E/atom {np.mean(e):+.3f}±{np.std(e):.3f} eV  "
              f"max |F| {np.mean(f):.2f} eV/A  training energy error MAE {np.mean(np.abs(t)):.2f} signed {np.mean(t):+.2f}")
    e = [per_atom_energy(a) for a in tests["surfaces"]]
    f = [max_force(a) for a in tests["surfaces"]]
    print(f"  test     surfaces     n={len(e):3d}  E/atom {np.mean(e):+.3f}±{np.std(e):.3f} eV  max |F| {np.mean(f):.2f} eV/A")
    retrain = config.training.model_copy(update={"epochs": config.final_fit_epochs,
                                                 "learning_rate": config.retrain_learning_rate})
    for weight in args.refit_energy_weights:
        committee = load_committee(args.run / f"{arm}_seed{config.seed}_loop.pt", device="cpu")
        t0 = time.perf_counter()
        train_committee(committee, labelled, retrain.model_copy(update={"energy_weight": weight}), device="cpu",
                        prepare=False)
        errors = per_set_errors(committee, tests)
        print(f"  refit energy_weight {weight:g} ({time.perf_counter() - t0:.0f} s): "
              + ", ".join(f"{k} {v['energy_mae_mev_per_atom']:.2f}/{v['force_mae_mev_per_ang']:.0f}"
                          for k, v in errors.items()) + "  (energy meV/atom / force meV/A)", flush=True)
oracle.close()
