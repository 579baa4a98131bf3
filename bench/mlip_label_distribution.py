"""Is a held-out set's energy offset the labels' distribution? The same label budget from the shared pool,
with a few frames of one kind swapped for near-equilibrium oracle-MD frames, or for more pool frames.

    python bench/mlip_label_distribution.py configs/mlip_environments_bulk.yaml --seed 2 --kind vacancy --swap 8 \\
        --out runs/mlip/label_distribution

The pool of ``bench/mlip_environments.py`` (the first committee's MD over the config's mix, the same seed)
holds distorted frames: the first committee, trained on 10 bulk cells, drives MD where its own forces are
wrong, and the frames it keeps lie well above the thermal equilibrium the held-out sets are drawn at
(oracle MD). There, every arm underpredicted the vacancy and migration energies on every frame. Three fits
from scratch (the config's training settings), each on ``--labels`` structures:

- ``pool``: the first labels and random pool frames (what the random arm labels, without its loop);
- ``pool+oracle_md``: the same, ``--swap`` of its bulk frames replaced by oracle-MD frames of ``--kind``
  (drawn like the held-out sets, at the kind's temperatures, with another seed: other compositions);
- ``pool+pool``: the same, ``--swap`` of its bulk frames replaced by unlabelled pool frames of ``--kind``
  (as many as the pool has left): more frames of the kind, from the pool's distribution.

If the swap for oracle-MD frames removes the kind's energy offset and the swap for pool frames does not, the
offset is the labels' distribution, not their number. ``--fits`` picks some of the three; each ``--training``
(JSON of training settings over the config's, e.g. '{"epochs": 400}' or '{"energy_weight": 1000}') fits
each of them once more, to ask whether the offset is the fit's convergence instead; ``--architecture mace``
fits MACE committees (mace-torch from scratch, the same cutoff) on the same labels instead:

    python bench/mlip_label_distribution.py configs/mlip_environments_bulk.yaml --seed 2 --fits pool \
        --training '{}' --training '{"energy_weight": 1000}' --training '{"epochs": 400}'

Prints per fit the energy MAE, mean signed energy error (meV/atom) and force MAE (meV/A) per held-out set
and on its own training labels per kind (an offset there too is a fit that has not converged; one only on the
held-out sets is one that does not generalise), and the labels' largest force per kind; writes
label_distribution.json in ``--out`` after every fit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from ase import Atoms

FITS = ("pool", "pool+oracle_md", "pool+pool")


def main() -> None:
    from sdl.surrogates.mlip_environments import OFF_DISTRIBUTION, TEST_SETS, largest_force_ev_per_ang

    md_kinds = [k for k in TEST_SETS if k != "migration"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="an environments config (YAML)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of held-out sets, first labels and pool")
    parser.add_argument("--kind", default="vacancy", choices=[k for k in md_kinds if k != "bulk"],
                        help="the kind whose frames are swapped in")
    parser.add_argument("--swap", type=int, default=8, help="bulk frames replaced by frames of --kind")
    parser.add_argument("--labels", type=int, default=200, help="labels per fit (first labels included)")
    parser.add_argument("--fits", nargs="+", choices=FITS, default=list(FITS), help="which fits to run")
    parser.add_argument("--architecture", choices=("nep", "mace"), default="nep",
                        help="the project's potential (the config's training) or MACE (MaceSettings' defaults)")
    parser.add_argument("--committee", type=int, help="models per fit (default: the config's committee_size)")
    parser.add_argument("--training", type=json.loads, action="append",
                        help="JSON of training settings over the architecture's, e.g. '{\"epochs\": 400}'; repeat "
                             "for several fits of each of --fits ('{}' is the default); default: the default")
    parser.add_argument("--held-out", type=json.loads, default=None,
                        help="JSON of environment_tests fields for a second group of held-out sets, e.g. "
                             "'{\"frames_per_start\": 1, \"md_interval\": 80}': one composition per frame")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("runs/mlip/label_distribution"))
    args = parser.parse_args()
    if min(args.swap, args.labels, 1 if args.committee is None else args.committee) < 1:
        parser.error("--swap, --labels and --committee must be at least 1")

    import torch

    from sdl.instruments.atomistic import AseCalculatorOracle
    from sdl.settings import ConfigError, load_yaml, validate
    from sdl.surrogates.mace_potential import MaceCommittee, MaceSettings
    from sdl.surrogates.mlip import Committee, TrainingSettings, train_committee
    from sdl.surrogates.mlip_environments import (
        EnvironmentsConfig,
        build_environment_tests,
        first_labels_and_pool,
        oracle_md_frames,
        per_set_errors,
    )

    torch.set_num_threads(args.threads)
    try:
        config = load_yaml(EnvironmentsConfig, args.config, "config")
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    config = config.model_copy(update={"device": "cpu", "seed": args.seed})
    # the pool's exploring committee stays the config's (its spread filters the pool); --committee sizes the fits
    fit_size = config.committee_size if args.committee is None else args.committee
    try:
        wide = None if args.held_out is None else config.with_held_out(args.held_out)
    except ConfigError as error:
        parser.error(f"--held-out: {error}")
    settings_type, defaults = ((TrainingSettings, config.training.model_dump()) if args.architecture == "nep"
                               else (MaceSettings, {"r_max_ang": config.potential.radial_cutoff_ang}))
    variants = {}  # label -> settings
    for override in args.training or [{}]:
        if not isinstance(override, dict):
            parser.error(f"--training: expected a JSON object of training settings, got {override!r}")
        try:
            variants[json.dumps(override, sort_keys=True) if override else "default"] = validate(
                settings_type, {**defaults, **override}, source="--training")
        except ConfigError as error:
            parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    oracle = AseCalculatorOracle(calculator=config.oracle.calculator,
                                 calculator_options=config.oracle.calculator_options,
                                 journal_path=args.out / f"oracle_seed{args.seed}.sqlite")
    groups = {"config": build_environment_tests(config, oracle, np.random.default_rng(config.seed + 1000))}
    if wide is not None:  # another stream than the config's sets: other compositions
        groups["--held-out"] = build_environment_tests(wide, oracle, np.random.default_rng(config.seed + 4000))
    initial, _, pool = first_labels_and_pool(config, oracle)
    kinds, counts = np.unique([a.info["kind"] for a in pool], return_counts=True)
    print(f"{time.perf_counter() - started:5.0f} s  held-out sets and pool of {len(pool)} frames: "
          f"{dict(zip(kinds.tolist(), counts.tolist()))}", flush=True)
    if args.labels - len(initial) > len(pool):
        raise SystemExit(f"--labels {args.labels}: the pool has only {len(pool)} frames besides "
                         f"{len(initial)} first labels")

    rng = np.random.default_rng(config.seed + 7)  # the random arm's stream
    drawn = [int(i) for i in rng.choice(len(pool), size=args.labels - len(initial), replace=False)]
    bulk_drawn = [i for i in drawn if pool[i].info["kind"] == "bulk"]
    pool_kinds = ["surface_111", "surface_100"] if args.kind == "surfaces" else [args.kind]
    spare = [i for i in range(len(pool)) if pool[i].info["kind"] in pool_kinds and i not in set(drawn)]
    n_pool_swap = min(args.swap, len(spare), len(bulk_drawn))
    if n_pool_swap < args.swap:
        print(f"the pool has {len(spare)} unlabelled {args.kind} frames left: pool+pool swaps {n_pool_swap}")
    md_frames = oracle_md_frames(args.kind, config, oracle, np.random.default_rng(config.seed + 3000),
                                 min(args.swap, len(bulk_drawn)))
    drop_md = set(bulk_drawn[:len(md_frames)])
    drop_pool = set(bulk_drawn[:n_pool_swap])
    labelled = {i: oracle.label(pool[i]) for i in drawn + spare[:n_pool_swap]}  # each frame labelled once
    fits = {
        "pool": list(initial) + [labelled[i] for i in drawn],
        "pool+oracle_md": list(initial) + [labelled[i] for i in drawn if i not in drop_md] + md_frames,
        "pool+pool": list(initial) + [labelled[i] for i in drawn if i not in drop_pool]
        + [labelled[i] for i in spare[:n_pool_swap]],
    }
    results = {}
    for (fit, labels), (variant, training) in itertools.product(
            ((k, v) for k, v in fits.items() if k in args.fits), variants.items()):
        name = " ".join([fit] + ([args.architecture] if args.architecture != "nep" else [])
                        + ([variant] if len(variants) > 1 else []))
        tagged: dict[str, list[Atoms]] = {}
        for atoms in labels:
            tagged.setdefault(atoms.info.get("kind", "bulk"), []).append(atoms)
        largest = {k: [largest_force_ev_per_ang(a) for a in v] for k, v in tagged.items()}
        t0 = time.perf_counter()
        if args.architecture == "nep":
            committee = Committee.new(config.potential, fit_size, seed=config.seed)
            train_committee(committee, labels, training, device="cpu")
        else:
            committee = MaceCommittee(config.potential.elements, training, size=fit_size,
                                      seed=config.seed, device="cpu")
            committee.train(labels)
        fit_s = time.perf_counter() - t0
        results[name] = {"fit": fit, "architecture": args.architecture, "training": training.model_dump(),
                         "labels": len(labels), "fit_s": fit_s,
                         "labels_per_kind": {k: len(v) for k, v in tagged.items()},
                         "labels_largest_force_ev_per_ang": {k: float(np.mean(v)) for k, v in largest.items()}}
        print(f"{time.perf_counter() - started:5.0f} s  {name:15s} {len(labels)} labels, fit {fit_s:.0f} s; "
              "labels (n, mean largest force eV/A): " + ", ".join(
                  f"{k} {len(v)} {np.mean(v):.1f}" for k, v in sorted(largest.items())), flush=True)
        for group, tests in {**groups, "training labels": tagged}.items():
            errors = per_set_errors(committee, tests)
            results[name][group] = {"errors": errors}
            print(f"      {group}{'' if group == 'training labels' else ' held-out sets'}: energy MAE / signed "
                  "meV/atom, force MAE meV/A: " + ", ".join(
                      f"{k} {e['energy_mae_mev_per_atom']:.1f} / {e['energy_mean_signed_mev_per_atom']:+.1f}, "
                      f"{e['force_mae_mev_per_ang']:.0f}" for k, e in errors.items()), flush=True)
        (args.out / "label_distribution.json").write_text(json.dumps(
            {"seed": args.seed, "kind": args.kind, "swap": args.swap, "pool_swap": n_pool_swap,
             "held_out": {k: config.environment_tests.model_dump() if k == "config"
                          else wide.environment_tests.model_dump() for k in groups},
             "fits": results}, indent=1))
    oracle.close()
    for group, tests in groups.items():
        largest = {k: float(np.mean([largest_force_ev_per_ang(a) for a in frames])) for k, frames in tests.items()}
        worst = {name: max(r[group]["errors"][k]["energy_mae_mev_per_atom"] for k in OFF_DISTRIBUTION)
                 for name, r in results.items()}
        print(f"{group} held-out sets ({len(tests['bulk'])} frames a set): mean largest force eV/A "
              + ", ".join(f"{k} {v:.1f}" for k, v in largest.items())
              + "; worst off-bulk energy MAE " + ", ".join(f"{k} {v:.1f}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
