"""Boundary accuracy of the active-learned phase classifier vs CALPHAD calls, against random and grid
sampling of the same budget.

    python bench/phase_boundary.py --seeds 5 --budgets 16 24 32 48 64

Truth: the target phase state (single gamma at the solution temperature, no brittle phase at the
ageing temperature) from pycalphad on a dense held-out grid over the demo's composition space.
Score: the misclassified share of the held-out grid (the misclassified area, as a fraction of the
space). Prints a table (median and quartiles over seeds) and writes a PNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sdl.env.calphad import default_cache_path
from sdl.env.phase_state import CalphadPhaseOracle, PhaseTarget
from sdl.space import SearchSpace
from sdl.surrogates.phase_boundary import STRATEGIES, PhaseBoundaryLearner, candidate_pool

SPACE = SearchSpace.model_validate({"composition": {
    "elements": {"Ni": [0.45, 0.98], "Al": [0.02, 0.145], "Co": [0.0, 0.185], "Cr": [0.0, 0.185]}, "balance": "Ni"}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 24, 32, 48, 64])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--held-out-points", type=int, default=14, help="grid points per element axis")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/phase_boundary.png"))
    args = parser.parse_args()

    free = SPACE.composition.free_elements
    oracle = CalphadPhaseOracle(free, SPACE.composition.balance_element, PhaseTarget(), cache_path=default_cache_path())
    bounds = np.array([SPACE.composition.elements[e] for e in free])
    started = time.perf_counter()
    axes = {e: np.linspace(lo, hi, args.held_out_points) for e, (lo, hi) in zip(free, bounds)}
    held_x, held_y = oracle.label_grid(axes)
    inside = (1 - held_x.sum(axis=1) >= SPACE.composition.elements["Ni"][0])
    held_x, held_y = held_x[inside], held_y[inside]
    print(f"held-out grid: {len(held_x)} compositions, {held_y.mean():.1%} in the target state "
          f"({time.perf_counter() - started:.1f} s)")

    errors = {s: np.full((args.seeds, len(args.budgets)), np.nan) for s in args.strategies}
    seconds = {s: [] for s in args.strategies}
    for strategy in args.strategies:
        for seed in range(args.seeds):
            pool = candidate_pool(SPACE, 2048, seed=seed)
            for j, budget in enumerate(args.budgets):
                t0 = time.perf_counter()
                # Grid and random designs of each budget stand alone; the active learners go on from
                # where the previous budget stopped (labels already paid for).
                if strategy in ("grid", "random") or j == 0:
                    learner = PhaseBoundaryLearner(oracle.label, pool, bounds, strategy=strategy, seed=seed)
                classifier = learner.run(budget)
                seconds[strategy].append(time.perf_counter() - t0)
                p, _ = classifier.predict(held_x)
                errors[strategy][seed, j] = np.mean((p > 0.5) != (held_y > 0.5))
            print(f"{strategy:>16} seed {seed}: " + " ".join(f"{e:.3f}" for e in errors[strategy][seed]), flush=True)

    print(f"\nmisclassified share of the held-out grid (median [q25, q75] over {args.seeds} seeds)")
    print(f"{'CALPHAD calls':>16} " + " ".join(f"{b:>20}" for b in args.budgets))
    for strategy, e in errors.items():
        q25, q50, q75 = np.percentile(e, [25, 50, 75], axis=0)
        print(f"{strategy:>16} " + " ".join(f"{m:7.3f} [{a:.3f},{b:.3f}]" for m, a, b in zip(q50, q25, q75)))
    print(f"oracle calls computed by pycalphad this run: {oracle.equilibria.computed_points} (rest from the cache)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for strategy, e in errors.items():
        q25, q50, q75 = np.percentile(e, [25, 50, 75], axis=0)
        ax.plot(args.budgets, q50, marker="o", label=strategy)
        ax.fill_between(args.budgets, q25, q75, alpha=0.2)
    ax.set_xlabel("CALPHAD calls (compositions labelled)")
    ax.set_ylabel("misclassified share of held-out grid")
    ax.set_title("Phase-boundary active learning (Ni-Al-Co-Cr, pycalphad)")
    ax.legend()
    ax.grid(alpha=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
