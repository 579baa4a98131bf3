"""Where an environments run's energy errors come from, from its kept committees (no rerun of the loop).

    python bench/mlip_energy_errors.py configs/mlip_environments_bulk.yaml runs/mlip/s57_bulk200_seed2 --seed 2 \
        --refit-energy-weights 1000
    python bench/mlip_energy_errors.py configs/mlip_environments_bulk.yaml runs/mlip/s57_bulk200_seed2 --seed 2 \
        --held-out '{"frames_per_start": 1, "md_interval": 80}'

Needs a run of ``bench/mlip_environments.py`` that kept its committees (stop 57 on). Rebuilds the held-out
sets, the first labels and the pool from the seed (a copy of the run's oracle journal answers the labels) and
prints: every kept committee's energy / force MAE per set on the held-out sets as this code builds them;
per arm, the production fit's signed energy error per held-out start (each start gives ``frames_per_start`` MD
frames of one composition, 4 in the configs, each migration path its NEB images, so with the configs a set's
energy MAE averages over 2-3 compositions); the labelled frames per kind, their
true energy per atom and largest force and the fit's training error on them; and refits of the loop's
committee with other energy weights (the production fit's settings otherwise) or with oracle-MD frames of
some kinds added (``--refit-with-oracle-md vacancy=8``). ``--held-out`` builds the
held-out sets with other settings (JSON, the config's ``environment_tests`` fields; the pool is unchanged), e.g.
one frame per start after 80 MD steps, the last of the 4 a start gives otherwise: 12 compositions per set.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sdl.instruments.atomistic import AseCalculatorOracle
from sdl.settings import ConfigError, load_yaml
from sdl.surrogates.mlip import labels_of, load_committee, train_committee
from sdl.surrogates.mlip_environments import (
    TEST_SETS,
    EnvironmentsConfig,
    build_environment_tests,
    energy_errors_mev_per_atom,
    first_labels_and_pool,
    largest_force_ev_per_ang,
    oracle_md_frames,
    per_set_errors,
)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("config", help="the run's environments config (YAML)")
parser.add_argument("run", type=Path, help="the run's --out folder")
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--refit-energy-weights", type=float, nargs="*", default=[])
parser.add_argument("--arms", nargs="+", default=["committee", "random"])
parser.add_argument("--refit-with-oracle-md", nargs="*", default=[], metavar="KIND=N",
                    help="refit each arm's loop committee on its labels plus N oracle-MD frames of KIND (a held-out "
                         "set's kind, drawn like the held-out sets but with another seed): do near-equilibrium "
                         "frames of a kind remove its energy offset?")
parser.add_argument("--held-out", type=json.loads, default={},
                    help="JSON of environment_tests fields that replace the config's for the held-out sets")
args = parser.parse_args()
try:
    extra_frames = {kind: int(n) for kind, n in (item.split("=") for item in args.refit_with_oracle_md)}
except ValueError:
    parser.error("--refit-with-oracle-md: give KIND=N pairs, e.g. vacancy=8 surfaces=8")
md_kinds = [k for k in TEST_SETS if k != "migration"]
if any(n < 1 for n in extra_frames.values()):
    parser.error("--refit-with-oracle-md: N must be at least 1")
if set(extra_frames) - set(md_kinds):
    parser.error(f"--refit-with-oracle-md: unknown kind {sorted(set(extra_frames) - set(md_kinds))}; allowed: {md_kinds}")
torch.set_num_threads(2)
config = load_yaml(EnvironmentsConfig, args.config, "config").model_copy(
    update={"device": "cpu", "seed": args.seed})
try:
    held_out = config.with_held_out(args.held_out)
except ConfigError as error:
    parser.error(f"--held-out: {error}")
if not (args.run / "environments.json").exists():
    parser.error(f"{args.run}: no environments.json; give the --out folder of a bench/mlip_environments.py run")
result = json.loads((args.run / "environments.json").read_text())[0]
started = time.perf_counter()
# a copy of the run's oracle journal answers the labels it holds; the run's own record is left as it was
journal = Path(tempfile.mkdtemp()) / "oracle.sqlite"
shutil.copy(args.run / f"oracle_seed{config.seed}.sqlite", journal)
oracle = AseCalculatorOracle(calculator=config.oracle.calculator, calculator_options=config.oracle.calculator_options,
                             journal_path=journal)
tests = build_environment_tests(held_out, oracle, np.random.default_rng(config.seed + 1000))
print("held-out sets: " + ", ".join(f"{k} {len(v)}" for k, v in tests.items()) + f" ({held_out.environment_tests})")
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


for name, frames in tests.items():
    e = [per_atom_energy(a) for a in frames]
    f = [largest_force_ev_per_ang(a) for a in frames]
    print(f"test     {name:12s} n={len(e):3d}  E/atom {np.mean(e):+.3f}±{np.std(e):.3f} eV  "
          f"max |F| {np.mean(f):.2f} eV/A")

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
        signed = energy_errors_mev_per_atom(predicted, frames)
        spread = np.array([1000 * p["energy_std"] / len(a) for p, a in zip(predicted, frames)])
        settings = held_out.environment_tests
        per_start = settings.images_per_path if name == "migration" else settings.frames_per_start
        groups = [signed[k:k + per_start] for k in range(0, len(signed), per_start)]
        print(f"  {name:9s} MAE {np.abs(signed).mean():5.2f}  mean signed {signed.mean():+5.2f}  "
              f"per start ({per_start} frames each): " + "  ".join(f"{g.mean():+5.2f}±{g.std():.2f}" for g in groups)
              + f"   committee energy sd {spread.mean():.2f}")
        if name == "surfaces":
            print("    test starts: " + ", ".join(
                f"{frames[k].info.get('kind', '?')} {frames[k].get_chemical_formula()}" for k in range(0, len(frames), settings.frames_per_start)))
    by_kind: dict[str, list] = {}
    for atoms, kind in zip(labelled, ["initial"] * len(initial) + [pool[i].info["kind"] for i in chosen]):
        by_kind.setdefault(kind, []).append(atoms)
    for kind, frames in sorted(by_kind.items()):
        e = [per_atom_energy(a) for a in frames]
        f = [largest_force_ev_per_ang(a) for a in frames]
        t = energy_errors_mev_per_atom(final.predict(frames), frames)
        print(f"  labelled {kind:12s} n={len(frames):3d}  E/atom {np.mean(e):+.3f}±{np.std(e):.3f} eV  "
              f"max |F| {np.mean(f):.2f} eV/A  training energy error MAE {np.mean(np.abs(t)):.2f} signed {np.mean(t):+.2f}")
    retrain = config.training.model_copy(update={"epochs": config.final_fit_epochs,
                                                 "learning_rate": config.retrain_learning_rate})
    refits = [(f"energy_weight {weight:g}", labelled, retrain.model_copy(update={"energy_weight": weight}))
              for weight in args.refit_energy_weights]
    if extra_frames:
        rng = np.random.default_rng(config.seed + 3000)  # not the held-out sets' or the pool's stream
        extra = [a for kind, n in extra_frames.items() for a in oracle_md_frames(kind, held_out, oracle, rng, n)]
        refits.append((f"+ oracle MD {args.refit_with_oracle_md}", labelled + extra, retrain))
    for name, frames, settings in refits:
        committee = load_committee(args.run / f"{arm}_seed{config.seed}_loop.pt", device="cpu")
        t0 = time.perf_counter()
        train_committee(committee, frames, settings, device="cpu", prepare=False)
        errors = per_set_errors(committee, tests)
        print(f"  refit {name} ({time.perf_counter() - t0:.0f} s): "
              + ", ".join(f"{k} {v['energy_mae_mev_per_atom']:.2f}/{v['force_mae_mev_per_ang']:.0f}"
                          for k, v in errors.items()) + "  (energy meV/atom / force meV/A)", flush=True)
oracle.close()
