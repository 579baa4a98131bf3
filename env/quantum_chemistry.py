"""The first-principles oracle for molecules: Kohn-Sham DFT with PySCF, and the G2-1 reference set.

- :func:`g2_1_names`, :func:`reference_atomization_kcal`: the 55 molecules of the G2-1 set and the
  experimental atomization energies that follow from the data ASE ships in :mod:`ase.data.g2_1`
  (Curtiss, Raghavachari, Redfern and Pople, J. Chem. Phys. 106, 1063 (1997) for the atoms;
  Staroverov, Scuseria, Tao and Perdew, J. Chem. Phys. 119, 12129 (2003) for the molecules'
  enthalpies of formation, zero-point energies and thermal corrections; geometries MP2(full)/6-31G(d)).
- :func:`build_molecule`: a PySCF ``Mole`` of a G2-1 molecule or atom, or of any ASE ``Atoms``.
- :func:`run_scf`: a self-consistent calculation with a libxc functional by name (``pbe``, ``scan``,
  ``b3lyp``...) or with any GGA given as a PySCF ``eval_xc`` callable (how a learned functional
  enters); a calculation that does not converge with DIIS is finished by second-order SCF.
- :func:`grid_density`: the density of a finished calculation on its integration grid (weights, spin
  densities and their gradients' contractions) with the energy that does not depend on the
  functional: what a functional is trained on. :func:`reference_densities` caches them per system.

Energies are in hartree inside this module (PySCF's unit); kcal/mol only where stated in the name.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import g2_1

KCAL_PER_HARTREE = 627.509474  # CODATA 2018
EvalXc = Callable  # PySCF's eval_xc(xc_code, rho, spin, relativity, deriv, omega, verbose)


def g2_1_names() -> list[str]:
    """The 55 molecules of G2-1, in ASE's order."""
    return list(g2_1.molecule_names)


def g2_1_atoms_of(names: Sequence[str]) -> list[str]:
    """The atoms the molecules ``names`` are made of (each once, in ASE's order)."""
    wanted = {symbol for name in names for symbol in Atoms(g2_1.data[name]["symbols"]).get_chemical_symbols()}
    return [atom for atom in g2_1.atom_names if atom in wanted]


def _formation_enthalpy_0k_kcal(name: str) -> float:
    """Delta_f H(0 K) of a molecule from its 298 K value: H(298)-H(0) of the molecule removed, that of
    the elements in their standard states (the atoms' "thermal correction" in G2-1) put back."""
    data = g2_1.data[name]
    elements = sum(g2_1.data[s]["thermal correction"] for s in Atoms(data["symbols"]).get_chemical_symbols())
    return data["enthalpy"] - data["thermal correction"] + elements


def reference_atomization_kcal(name: str) -> float:
    """The experimental atomization energy D_e (kcal/mol, at rest: D_0 plus the zero-point energy)."""
    if name not in g2_1.molecule_names:
        raise ValueError(f"{name!r} is not a G2-1 molecule; they are {', '.join(g2_1.molecule_names)}")
    data = g2_1.data[name]
    atoms_0k = sum(g2_1.data[s]["enthalpy"] for s in Atoms(data["symbols"]).get_chemical_symbols())
    return atoms_0k - _formation_enthalpy_0k_kcal(name) + data["ZPE"]


def atom_counts(name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for symbol in Atoms(g2_1.data[name]["symbols"]).get_chemical_symbols():
        counts[symbol] = counts.get(symbol, 0) + 1
    return counts


def build_molecule(system: str | Atoms, basis: str, *, charge: int = 0, spin: int | None = None):
    """A PySCF ``Mole``: a G2-1 molecule or atom by name (its geometry and spin from ASE's data), or an
    ASE ``Atoms`` (spin = number of unpaired electrons, default the lowest the electron count allows)."""
    from pyscf import gto

    if isinstance(system, str):
        if system not in g2_1.data:
            raise ValueError(f"{system!r} is not in G2-1: molecules {', '.join(g2_1.molecule_names)}; "
                             f"atoms {', '.join(g2_1.atom_names)}")
        data = g2_1.data[system]
        atoms = Atoms(data["symbols"], positions=data["positions"])
        spin = int(round(sum(data["magmoms"]))) if data["magmoms"] else 0
    else:
        atoms = system
    n_electrons = int(atoms.get_atomic_numbers().sum()) - charge
    if spin is None:
        spin = n_electrons % 2
    try:
        return gto.M(atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                     unit="Angstrom", basis=basis, charge=charge, spin=spin, verbose=0)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"cannot build {atoms.get_chemical_formula()} in basis {basis!r} with charge {charge} "
                         f"and {spin} unpaired electrons: {e}") from None


@dataclass
class ScfResult:
    energy_ha: float
    converged: bool
    seconds: float
    iterations: int
    mf: object  # the PySCF mean-field object, for densities and gradients


def make_ks(mol, xc: str | EvalXc, *, grid_level: int = 3):
    """An RKS (closed shell) or UKS object with ``xc`` set: a libxc name, or a GGA ``eval_xc`` callable."""
    from pyscf import dft

    mf = dft.UKS(mol) if mol.spin else dft.RKS(mol)
    if callable(xc):
        mf = mf.define_xc_(xc, xctype="GGA")
    else:
        mf.xc = xc
    mf.grids.level = grid_level
    mf.conv_tol = 1e-9
    mf.max_cycle = 100
    return mf


def run_scf(mol, xc: str | EvalXc, *, grid_level: int = 3, dm0=None) -> ScfResult:
    """A self-consistent calculation: DIIS; where it does not converge, again from where it stopped with
    a level shift and damping; then (libxc functionals, which have second derivatives) second-order SCF."""
    mf = make_ks(mol, xc, grid_level=grid_level)
    cycles = {"n": 0}
    mf.callback = lambda env: cycles.__setitem__("n", cycles["n"] + 1)
    start = time.perf_counter()
    energy = mf.kernel(dm0=dm0)
    if not mf.converged:
        mf.level_shift, mf.damp, mf.max_cycle = 0.3, 0.5, 300
        energy = mf.kernel(dm0=mf.make_rdm1())
    if not mf.converged and not callable(xc):
        newton = mf.newton()
        newton.callback = mf.callback
        energy = newton.kernel(newton.mo_coeff, newton.mo_occ)
        mf = newton
    return ScfResult(float(energy), bool(mf.converged), time.perf_counter() - start, cycles["n"], mf)


@dataclass
class GridDensity:
    """A converged density on its integration grid (atomic units) and what does not depend on E_xc."""

    weights: np.ndarray
    rho_a: np.ndarray  # spin densities
    rho_b: np.ndarray
    sigma_aa: np.ndarray  # grad rho_a . grad rho_a, etc.
    sigma_ab: np.ndarray
    sigma_bb: np.ndarray
    energy_without_xc_ha: float  # kinetic + external + Hartree + nuclear repulsion of this density
    hartree_ha: float
    xc_ha: float  # E_xc of the functional that made the density

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("weights", "rho_a", "rho_b", "sigma_aa", "sigma_ab", "sigma_bb")}


def grid_density(result: ScfResult, *, min_density: float = 1e-10) -> GridDensity:
    """The density of a converged calculation on the grid it was integrated on (points where the total
    density is below ``min_density`` dropped: they hold no energy a functional could notice)."""
    mf = result.mf
    mol, grids, ni = mf.mol, mf.grids, mf._numint
    dm = np.asarray(mf.make_rdm1())
    dms = dm if dm.ndim == 3 else np.stack([dm / 2, dm / 2])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("weights", "a", "b")}
    for ao, _, weight, _ in ni.block_loop(mol, grids, mol.nao, deriv=1):
        parts["weights"].append(weight)
        parts["a"].append(ni.eval_rho(mol, ao, dms[0], xctype="GGA"))
        parts["b"].append(ni.eval_rho(mol, ao, dms[1], xctype="GGA"))
    weights = np.concatenate(parts["weights"])
    a, b = np.concatenate(parts["a"], axis=1), np.concatenate(parts["b"], axis=1)
    keep = a[0] + b[0] >= min_density
    a, b, weights = a[:, keep], b[:, keep], weights[keep]
    # the energy terms of the converged density, as the last SCF energy evaluation left them
    hartree, exc = float(mf.scf_summary["coul"]), float(mf.scf_summary["exc"])
    return GridDensity(weights=weights, rho_a=a[0], rho_b=b[0], sigma_aa=np.einsum("xn,xn->n", a[1:4], a[1:4]),
                       sigma_ab=np.einsum("xn,xn->n", a[1:4], b[1:4]), sigma_bb=np.einsum("xn,xn->n", b[1:4], b[1:4]),
                       energy_without_xc_ha=result.energy_ha - exc, hartree_ha=hartree, xc_ha=exc)


def cache_dir() -> Path:
    """Where converged reference densities are kept (``SDL_CACHE_DIR`` overrides ~/.cache/sdl)."""
    return Path(os.environ.get("SDL_CACHE_DIR", Path.home() / ".cache" / "sdl")) / "kohn_sham"


def reference_densities(names: Sequence[str], *, xc: str = "pbe", basis: str = "def2-tzvp", grid_level: int = 3,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, GridDensity]:
    """Self-consistent ``xc`` densities of G2-1 systems on their grids, cached as .npz files keyed by
    system, functional, basis and grid (a second call reads them back)."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(names):
        key = hashlib.sha256(f"{name}|{xc}|{basis}|{grid_level}|v1".encode()).hexdigest()[:16]
        path = folder / f"{name}-{key}.npz"
        if path.exists():
            with np.load(path) as f:
                scalars = {k: float(f[k]) for k in ("energy_without_xc_ha", "hartree_ha", "xc_ha")}
                out[name] = GridDensity(**{k: f[k] for k in GridDensity.__dataclass_fields__ if k not in scalars},
                                        **scalars)
        else:
            result = run_scf(build_molecule(name, basis), xc, grid_level=grid_level)
            if not result.converged:
                raise RuntimeError(f"{name}: the {xc} reference calculation did not converge")
            density = grid_density(result)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **density.arrays(), energy_without_xc_ha=density.energy_without_xc_ha,
                     hartree_ha=density.hartree_ha, xc_ha=density.xc_ha)
            tmp.replace(path)  # whole files only: a killed run leaves no half-written cache
            out[name] = density
        if progress is not None:
            progress(i + 1, len(names))
    return out
