"""Properties of random FCC solid solutions from an ASE calculator: the labels of the transfer-learning
problem (a model learned on one alloy system, reused on another with one more element).

For each composition, a (repeat x repeat x repeat) cubic FCC supercell (108 atoms at repeat 3) with the
species drawn at random on the sites (:func:`sdl.env.atomistic.random_solid_solution`), scaled
isotropically over +-3 % of Vegard's lattice parameter and fitted with ASE's equation of state:

- ``mixing_energy_ev_per_atom``: E0 of the alloy per atom minus the atoms' pure-element E0 (each pure
  FCC metal at its own equilibrium), at the alloy's equilibrium volume, atoms on the ideal sites
  (unrelaxed positions: relaxing them costs ~20x, ~2 s an alloy, and the problem needs thousands);
- ``bulk_modulus_gpa`` and ``lattice_parameter_ang`` at that volume.

The default calculator is ASE's EMT (Al, Cu, Ni, Pd, Ag, Pt, Au), ~0.1 s an alloy on one core. The
arrangement of the atoms is random: the same composition with another seed differs by ~1-2 meV/atom
in mixing energy (108 atoms), which is the label's noise. Datasets are cached as .npz under
``SDL_CACHE_DIR`` (default ~/.cache/sdl), keyed by everything that defines them.

Plain ASE and numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.units import GPa

from sdl.env.atomistic import random_solid_solution

PROPERTIES = ("mixing_energy_ev_per_atom", "bulk_modulus_gpa", "lattice_parameter_ang")
EMT_ELEMENTS = ("Al", "Cu", "Ni", "Pd", "Ag", "Pt", "Au")
LATTICE_SCALES = np.linspace(0.97, 1.03, 7)  # +-3 % in lattice parameter, +-9 % in volume
LABEL_VERSION = 1  # bump when the labelling changes, so old caches are not reused


def _equilibrium(atoms) -> tuple[float, float, float]:
    """(E0 eV, V0 A^3, B GPa) of ``atoms`` scaled isotropically over LATTICE_SCALES."""
    cell = atoms.cell[:].copy()
    volumes, energies = [], []
    for scale in LATTICE_SCALES:
        atoms.set_cell(cell * scale, scale_atoms=True)
        atoms.calc = EMT()
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    atoms.set_cell(cell, scale_atoms=True)
    volume, energy, modulus = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    return float(energy), float(volume), float(modulus / GPa)


@lru_cache(maxsize=None)
def pure_energy_ev_per_atom(element: str) -> float:
    """E0 per atom of the pure FCC metal at its own equilibrium lattice parameter."""
    if element not in EMT_ELEMENTS:
        raise ValueError(f"EMT has no parameters for {element!r}; it covers {', '.join(EMT_ELEMENTS)}")
    atoms = bulk(element, "fcc", cubic=True)
    energy, _, _ = _equilibrium(atoms)
    return energy / len(atoms)


def solid_solution_properties(fractions: dict[str, float], seed: int, *, repeat: int = 3) -> dict[str, float]:
    """The three :data:`PROPERTIES` of one random solid solution (the arrangement drawn from ``seed``)."""
    unknown = sorted(set(fractions) - set(EMT_ELEMENTS))
    if unknown:
        raise ValueError(f"EMT has no parameters for {', '.join(unknown)}; it covers {', '.join(EMT_ELEMENTS)}")
    present = {e: x for e, x in fractions.items() if x > 0}
    atoms = random_solid_solution(present, np.random.default_rng(seed), repeat=repeat, strain_sd=0.0, rattle_ang=0.0)
    energy, volume, modulus = _equilibrium(atoms)
    reference = sum(pure_energy_ev_per_atom(s) for s in atoms.get_chemical_symbols())
    atoms_per_cubic_cell = 4
    return {"mixing_energy_ev_per_atom": (energy - reference) / len(atoms),
            "bulk_modulus_gpa": modulus,
            "lattice_parameter_ang": (volume / len(atoms) * atoms_per_cubic_cell) ** (1 / 3)}


def random_fractions(elements: Sequence[str], n: int, rng: np.random.Generator, *,
                     low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """``n`` compositions (n x len(elements)) uniform on the simplex, each fraction in [low, high]
    (by rejection; bounds that leave no room are refused)."""
    k = len(elements)
    if not 0 <= low < high <= 1 or low * k > 1 or high * k < 1:
        raise ValueError(f"fractions in [{low}, {high}] cannot sum to 1 over {k} elements")
    out = np.empty((0, k))
    while len(out) < n:
        draw = rng.dirichlet(np.ones(k), size=max(64, 4 * n))
        draw = draw[((draw >= low) & (draw <= high)).all(axis=1)]
        out = np.concatenate([out, draw])
    return out[:n]


@dataclass(frozen=True)
class AlloyDataset:
    """Compositions (rows: alloys; columns: ``elements``) and their labelled properties."""

    elements: tuple[str, ...]
    fractions: np.ndarray
    properties: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.fractions)

    def subset(self, index: np.ndarray) -> AlloyDataset:
        return AlloyDataset(self.elements, self.fractions[index], {k: v[index] for k, v in self.properties.items()})


def cache_dir() -> Path:
    return Path(os.environ.get("SDL_CACHE_DIR", Path.home() / ".cache" / "sdl")) / "solid_solutions"


def label_random_alloys(elements: Sequence[str], n: int, seed: int, *, repeat: int = 3, low: float = 0.0,
                        high: float = 1.0, cache: bool = True,
                        progress: Callable[[int, int], None] | None = None) -> AlloyDataset:
    """``n`` random alloys of ``elements`` (see :func:`random_fractions`), labelled; read from the cache
    when the same set was labelled before, otherwise computed (``progress(done, n)`` as it goes) and cached."""
    elements = tuple(elements)
    if len(set(elements)) != len(elements):
        raise ValueError(f"elements repeat: {elements}")
    key = json.dumps({"elements": elements, "n": n, "seed": seed, "repeat": repeat, "low": low, "high": high,
                      "calculator": "emt", "version": LABEL_VERSION})
    path = cache_dir() / f"{'-'.join(elements)}_{n}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if cache and path.is_file():
        try:
            with np.load(path) as stored:
                return AlloyDataset(elements, stored["fractions"], {p: stored[p] for p in PROPERTIES})
        except (OSError, ValueError, KeyError):
            pass  # a broken cache file is labelled again and replaced
    rng = np.random.default_rng(seed)
    fractions = random_fractions(elements, n, rng, low=low, high=high)
    arrangement_seeds = rng.integers(0, 2**31, size=n)
    rows = []
    for i, (x, s) in enumerate(zip(fractions, arrangement_seeds)):
        rows.append(solid_solution_properties(dict(zip(elements, x.tolist())), int(s), repeat=repeat))
        if progress is not None:
            progress(i + 1, n)
    data = AlloyDataset(elements, fractions, {p: np.array([r[p] for r in rows]) for p in PROPERTIES})
    if cache:
        write_atomically(path, lambda f: np.savez(f, fractions=fractions, **data.properties))
    return data


def write_atomically(path: Path, write: Callable) -> None:
    """``write(file)`` into a temporary file beside ``path``, then renamed onto it: a killed run leaves no
    half-written cache, and two runs writing the same cache at once do not mix their files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
