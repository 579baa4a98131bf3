"""The kinds of cells an interatomic potential of an alloy is used on, beyond the perfect bulk.

A potential for alloy design must be right where exploration of random bulk rarely goes: vacancies
and their migration (diffusion, ageing), surfaces (segregation, oxidation), strained cells (elastic
constants, misfit) and hot cells (melting, high-temperature creep). Each builder makes a physically
valid starting cell of one kind for a composition, tagged with ``atoms.info["kind"]``:

- ``bulk``: a cubic FCC supercell of a random solid solution (Vegard's-law lattice parameter);
- ``vacancy``: the same with one site emptied (``info["vacancy_position_ang"]``);
- ``surface_111`` / ``surface_100``: a slab of that facet, periodic in-plane, vacuum along the third
  cell vector (``pbc = (True, True, False)``);
- ``strained``: a bulk cell under a random strain whose principal values lie within +-``max_strain``
  (``info["strain"]``, the symmetric strain tensor applied to the cell);
- ``hot``: a bulk cell meant for MD at >= 1500 K (the temperature is the MD's; the cell is bulk).

:func:`vacancy_migration_path` gives the images of a vacancy hop (nudged elastic band between relaxed
end states, with the oracle's calculator): a held-out set of the saddle region, which MD at ordinary
temperatures almost never samples.

Plain ASE and numpy, seeded by a ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
from ase import Atoms
from ase.build import fcc100, fcc111
from ase.calculators.calculator import Calculator
from ase.neighborlist import neighbor_list
from ase.optimize import BFGS, FIRE

from sdl.env.atomistic import fcc_lattice_parameter_ang, random_solid_solution

CellKind = Literal["bulk", "vacancy", "surface_111", "surface_100", "strained", "hot"]
CELL_KINDS: tuple[str, ...] = get_args(CellKind)
HOT_TEMPERATURE_K = 1500.0  # "hot": at least this


def assign_species(atoms: Atoms, fractions: dict[str, float], rng: np.random.Generator) -> Atoms:
    """Species over the sites of ``atoms`` in the exact counts closest to ``fractions``, shuffled."""
    elements = list(fractions)
    p = np.asarray([fractions[e] for e in elements], dtype=float)
    p = p / p.sum()
    counts = np.floor(p * len(atoms)).astype(int)
    for k in np.argsort(-(p * len(atoms) - counts))[: len(atoms) - counts.sum()]:
        counts[k] += 1
    symbols = np.repeat(elements, counts)
    rng.shuffle(symbols)
    atoms.set_chemical_symbols(symbols.tolist())
    return atoms


def bulk_cell(fractions: dict[str, float], rng: np.random.Generator, *, repeat: int = 2) -> Atoms:
    atoms = random_solid_solution(fractions, rng, repeat=repeat, strain_sd=0.0, rattle_ang=0.0)
    atoms.info["kind"] = "bulk"
    return atoms


def vacancy_cell(fractions: dict[str, float], rng: np.random.Generator, *, repeat: int = 2) -> Atoms:
    atoms = bulk_cell(fractions, rng, repeat=repeat)
    site = int(rng.integers(len(atoms)))
    position = atoms.positions[site].copy()
    del atoms[site]
    atoms.info.update(kind="vacancy", vacancy_position_ang=position.tolist())
    return atoms


def surface_slab(fractions: dict[str, float], rng: np.random.Generator, *, facet: str = "111",
                 size: tuple[int, int, int] = (3, 3, 4), vacuum_ang: float = 8.0) -> Atoms:
    """A slab of ``size`` (in-plane repeats, layers) with ``vacuum_ang`` of vacuum on each side."""
    builders = {"111": fcc111, "100": fcc100}
    if facet not in builders:
        raise ValueError(f"facet {facet!r}: one of {', '.join(builders)}")
    a = fcc_lattice_parameter_ang(fractions)
    atoms = builders[facet]("Cu", size=size, a=a, vacuum=vacuum_ang)
    assign_species(atoms, fractions, rng)
    atoms.info["kind"] = f"surface_{facet}"
    return atoms


def strained_cell(fractions: dict[str, float], rng: np.random.Generator, *, repeat: int = 2,
                  max_strain: float = 0.05) -> Atoms:
    """A bulk cell under a symmetric strain: principal strains uniform in [-max_strain, max_strain],
    principal axes random."""
    atoms = bulk_cell(fractions, rng, repeat=repeat)
    axes, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    strain = axes @ np.diag(rng.uniform(-max_strain, max_strain, 3)) @ axes.T
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    atoms.info.update(kind="strained", strain=strain.tolist())
    return atoms


def hot_cell(fractions: dict[str, float], rng: np.random.Generator, *, repeat: int = 2) -> Atoms:
    atoms = bulk_cell(fractions, rng, repeat=repeat)
    atoms.info["kind"] = "hot"
    return atoms


def make_cell(kind: str, fractions: dict[str, float], rng: np.random.Generator, *, repeat: int = 2) -> Atoms:
    """A starting cell of ``kind`` (one of :data:`CELL_KINDS`)."""
    if kind == "bulk":
        return bulk_cell(fractions, rng, repeat=repeat)
    if kind == "vacancy":
        return vacancy_cell(fractions, rng, repeat=repeat)
    if kind in ("surface_111", "surface_100"):
        return surface_slab(fractions, rng, facet=kind.split("_")[1])
    if kind == "strained":
        return strained_cell(fractions, rng, repeat=repeat)
    if kind == "hot":
        return hot_cell(fractions, rng, repeat=repeat)
    raise ValueError(f"unknown cell kind {kind!r}; one of {', '.join(CELL_KINDS)}")


def vacancy_migration_path(fractions: dict[str, float], rng: np.random.Generator,
                           calculator: Callable[[], Calculator], *, repeat: int = 2, images: int = 5,
                           fmax_ev_per_ang: float = 0.05) -> list[Atoms]:
    """The intermediate images of one vacancy hop: a neighbour of the vacancy moves into it. Both end
    states are relaxed (positions, fixed cell) and the band is relaxed by NEB (climbing image), all
    with calculators from ``calculator()`` (one per image, as NEB needs); the images are returned
    without a calculator attached."""
    from ase.mep import NEB

    initial = vacancy_cell(fractions, rng, repeat=repeat)
    vacancy = np.asarray(initial.info["vacancy_position_ang"])
    # the atom to hop: the nearest to the empty site (through periodic images)
    probe = initial.copy()
    probe.append("H")
    probe.positions[-1] = vacancy
    i, j, d = neighbor_list("ijd", probe, 3.2)
    near = [(dist, jj) for ii, jj, dist in zip(i, j, d) if ii == len(probe) - 1 and jj < len(initial)]
    hopper = min(near)[1]
    final = initial.copy()
    final.positions[hopper] = vacancy
    for end in (initial, final):
        end.calc = calculator()
        BFGS(end, logfile=None).run(fmax=fmax_ev_per_ang, steps=200)
    band = [initial] + [initial.copy() for _ in range(images)] + [final]
    for image in band[1:-1]:
        image.calc = calculator()
    neb = NEB(band, climb=True, method="improvedtangent")
    neb.interpolate(method="idpp", mic=True)
    FIRE(neb, logfile=None).run(fmax=0.1, steps=300)
    path = []
    for k, image in enumerate(band[1:-1], start=1):
        copy = image.copy()
        copy.calc = None
        copy.info.update(kind="migration", image=k, hopper=int(hopper))
        path.append(copy)
    return path
