"""Atomistic configurations of a multi-component FCC alloy: what the MLIP learns and is tested on.

- :func:`random_solid_solution`: a supercell of the FCC lattice (Vegard's-law lattice parameter
  from ASE's reference lattice constants), species drawn at random for a composition, the cell
  strained and the atoms rattled: the "random solid solutions" of the issue.
- :func:`md_snapshots`: Langevin molecular dynamics with any ASE calculator (the oracle, for a
  held-out set; the MLIP, to explore during active learning), snapshots every few steps.

Plain ASE and numpy; seeded by a ``numpy.random.Generator`` so a set can be rebuilt exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.data import atomic_numbers, reference_states
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta


def fcc_lattice_parameter_ang(fractions: dict[str, float]) -> float:
    """Vegard's law over the elements' reference FCC lattice constants (ASE's table)."""
    total = 0.0
    for element, x in fractions.items():
        state = reference_states[atomic_numbers[element]]
        if state is None or state.get("symmetry") != "fcc":
            raise ValueError(f"{element} is not FCC in ASE's reference states; the alloy cell is FCC")
        total += x * state["a"]
    return total / sum(fractions.values())


def random_composition(elements: Sequence[str], rng: np.random.Generator, *, concentration: float = 1.0) -> dict[str, float]:
    """Mole fractions from a Dirichlet distribution (``concentration`` 1: uniform on the simplex)."""
    x = rng.dirichlet(np.full(len(elements), concentration))
    return dict(zip(elements, x.tolist()))


def random_solid_solution(fractions: dict[str, float], rng: np.random.Generator, *, repeat: int = 2,
                          strain_sd: float = 0.02, rattle_ang: float = 0.05) -> Atoms:
    """A (repeat x repeat x repeat) cubic FCC supercell (4 repeat^3 atoms) of a random solid solution."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    elements = list(fractions)
    p = np.asarray([fractions[e] for e in elements], dtype=float)
    if np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"fractions must be >= 0 with a positive sum, got {fractions}")
    atoms = bulk("Cu", "fcc", a=fcc_lattice_parameter_ang(fractions), cubic=True).repeat(repeat)
    # exact counts closest to the composition, then shuffled over the sites
    counts = np.floor(p / p.sum() * len(atoms)).astype(int)
    for k in np.argsort(-(p / p.sum() * len(atoms) - counts))[: len(atoms) - counts.sum()]:
        counts[k] += 1
    symbols = np.repeat(elements, counts)
    rng.shuffle(symbols)
    atoms.set_chemical_symbols(symbols.tolist())
    strain = np.eye(3) + np.triu(rng.normal(0.0, strain_sd, (3, 3)))
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
    atoms.positions += rng.normal(0.0, rattle_ang, atoms.positions.shape)
    return atoms


def md_snapshots(atoms: Atoms, calculator, *, temperature_k: float, steps: int, interval: int,
                 rng: np.random.Generator, timestep_fs: float = 2.0, friction_per_fs: float = 0.02) -> list[Atoms]:
    """Langevin NVT MD from ``atoms`` with ``calculator``; a copy every ``interval`` steps (no labels attached)."""
    if interval < 1 or steps < interval:
        raise ValueError(f"need steps >= interval >= 1, got steps={steps}, interval={interval}")
    system = atoms.copy()
    system.calc = calculator
    thermalize_momenta(system, temperature_K=temperature_k, rng=rng)
    dynamics = Langevin(system, timestep=timestep_fs * units.fs, temperature_K=temperature_k,
                        friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    snapshots = []
    for _ in range(steps // interval):
        dynamics.run(interval)
        snapshot = system.copy()
        snapshot.calc = None
        snapshots.append(snapshot)
    return snapshots
