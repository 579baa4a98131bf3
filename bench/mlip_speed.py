"""MD speed of the MLIP beside ASE's EMT on the same FCC alloy cells, in atom-steps per second.

    python bench/mlip_speed.py                         # 256 and 2048 atoms (CPU here)
    python bench/mlip_speed.py --atoms 256 2048 10976  # add a >= 10,000-atom cell (on a GPU)
    python bench/mlip_speed.py --checkpoint runs/mlip/mlip/committee.pt

Both run the same ASE velocity-Verlet loop on the same random solid solution (NVE, 1 fs); the
MLIP is one member of the committee (what production MD uses; the committee's spread is for
active learning), float32, with a Verlet neighbour list (skin 0.5 A). The speed does not depend
on the weights, so without --checkpoint an untrained potential of the default architecture runs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase import units
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from sdl.env.atomistic import random_solid_solution
from sdl.surrogates.mlip import InteratomicPotential, MlipCalculator, MlipConfig, choose_device, load_committee

ELEMENTS = ["Ni", "Cu", "Al", "Pd"]


def cell_with(n_atoms: int, rng: np.random.Generator):
    repeat = round((n_atoms / 4) ** (1 / 3))
    if 4 * repeat**3 != n_atoms:
        raise SystemExit(f"{n_atoms} atoms is not a cubic FCC supercell (4 n^3: 256, 2048, 10976, ...)")
    return random_solid_solution(dict.fromkeys(ELEMENTS, 0.25), rng, repeat=repeat, rattle_ang=0.0)


def atom_steps_per_s(atoms, calculator, steps: int, warmup: int = 3) -> float:
    system = atoms.copy()
    system.calc = calculator
    thermalize_momenta(system, temperature_K=600, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(system, timestep=1.0 * units.fs)
    dynamics.run(warmup)  # neighbour list, allocations, CUDA kernels
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    dynamics.run(steps)
    return len(system) * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpoint", help="committee.pt from `sdl mlip active-learn` (first member runs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-emt", action="store_true", help="skip EMT (slow on very large cells)")
    args = parser.parse_args()

    device = choose_device(args.device)
    if args.checkpoint:
        potential = load_committee(args.checkpoint, device=str(device)).members[0]
    else:
        potential = InteratomicPotential(MlipConfig(elements=ELEMENTS))
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'})")
    print(f"{'atoms':>7} | {'MLIP atom-steps/s':>18} | {'EMT atom-steps/s':>17} | MLIP / EMT")
    rng = np.random.default_rng(0)
    for n in args.atoms:
        atoms = cell_with(n, rng)
        mlip = atom_steps_per_s(atoms, MlipCalculator(potential, device=str(device)), args.steps)
        emt = float("nan") if args.no_emt else atom_steps_per_s(atoms, EMT(), max(2, args.steps // 4))
        print(f"{n:>7} | {mlip:>18,.0f} | {emt:>17,.0f} | {mlip / emt:.2f}")


if __name__ == "__main__":
    main()
