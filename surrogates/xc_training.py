"""Training the learned XC functional on G2-1 atomization energies, and evaluating it self-consistently.

The recipe (``sdl xc train``):

1. Self-consistent PBE densities of every molecule and atom on their integration grids (cached).
2. The two networks are fitted to PBE's enhancement factors on those densities' points, so training
   starts from PBE and learns a correction to it.
3. Training, non-self-consistently on the fixed PBE densities (E = E[n] without xc + E_xc^model[n]):
   the squared error of the training molecules' atomization energies (kcal/mol), plus penalties for
   what a GGA cannot hold by construction: the H atom's energy and self-interaction (E_xc = -J), the
   linearity of E(N) for half an electron of H (E_xc[n/2] = -J[n/2]), the Levy-Perdew correlation
   scaling inequalities (E_c[n_l] > l E_c[n] for l > 1, < for l < 1) on every training density; and a
   pull towards the PBE fit (few data, many weights).
4. Whole molecules are held out (a seeded split); the atoms are shared, as every atomization energy
   needs them. The result is evaluated self-consistently (:func:`scf_atomization`).

Energies in hartree, except names ending in ``_kcal``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, model_validator

from sdl.env.quantum_chemistry import (
    KCAL_PER_HARTREE,
    GridDensity,
    atom_counts,
    build_molecule,
    g2_1_atoms_of,
    g2_1_names,
    reference_atomization_kcal,
    reference_densities,
    run_scf,
)
from sdl.settings import Section, load_yaml
from sdl.surrogates.xc_functional import (
    DensityVariables,
    XcFunctional,
    pbe_energy_density,
    pyscf_eval_xc,
)

Progress = Callable[[str, int, int], None]
SCALING_SAMPLE = 0.1  # share of the grid points the correlation scaling inequalities are penalised on
LIBXC_FUNCTIONALS = {"pbe": "pbe", "scan": "scan", "b3lyp": "b3lyp", "lda": "lda,pw_mod", "blyp": "b88,lyp"}


class PenaltyWeights(Section):
    one_electron: float = Field(default=1.0, ge=0, description="H atom: (E + 1/2)^2 and (E_xc + J)^2, kcal^2")
    fractional_charge: float = Field(default=0.01, ge=0, description="half an electron of H: (E_xc + J)^2")
    correlation_scaling: float = Field(default=10.0, ge=0, description="violations of the Levy-Perdew inequalities")
    pbe_prior: float = Field(default=1.0, ge=0, description="sum of squared weight changes from the PBE fit")


class XcConfig(Section):
    name: str = "g2_1"
    basis: str = "def2-tzvp"
    grid_level: int = Field(default=3, ge=0, le=9)
    molecules: list[str] | None = Field(default=None, description="G2-1 molecules (default: all 55)")
    test_fraction: float = Field(default=0.3, gt=0, lt=1)
    split_seed: int = 0
    hidden: int = Field(default=8, ge=2)
    layers: int = Field(default=2, ge=1)
    pbe_fit_steps: int = Field(default=2000, ge=0)
    steps: int = Field(default=300, ge=0, description="Adam steps on atomization energies")
    learning_rate: float = Field(default=3e-3, gt=0)
    penalties: PenaltyWeights = PenaltyWeights()
    compare: list[str] = Field(default_factory=lambda: ["pbe", "scan", "b3lyp"],
                               description=f"libxc functionals run beside it: {', '.join(LIBXC_FUNCTIONALS)}")
    seed: int = 0
    out: Path | None = Field(default=None, description="run folder (default runs/xc/<name>)")

    @model_validator(mode="after")
    def _check(self) -> XcConfig:
        unknown = sorted(set(self.molecules or []) - set(g2_1_names()))
        if unknown:
            raise ValueError(f"not G2-1 molecules: {', '.join(unknown)}; allowed: {', '.join(g2_1_names())}")
        if self.molecules is not None and len(self.molecules) < 2:
            raise ValueError("molecules: give at least two (one to train on, one to hold out)")
        bad = sorted(set(self.compare) - set(LIBXC_FUNCTIONALS))
        if bad:
            raise ValueError(f"compare: unknown functional(s) {', '.join(bad)}; allowed: {', '.join(LIBXC_FUNCTIONALS)}")
        return self

    @property
    def folder(self) -> Path:
        return self.out or Path("runs/xc") / self.name

    @property
    def checkpoint(self) -> Path:
        return self.folder / "functional.pt"

    def molecule_names(self) -> list[str]:
        return list(self.molecules) if self.molecules is not None else g2_1_names()

    def split(self) -> tuple[list[str], list[str]]:
        """(training, held-out) molecules: whole molecules are held out."""
        names = self.molecule_names()
        order = np.random.default_rng(self.split_seed).permutation(len(names))
        n_test = max(1, int(round(self.test_fraction * len(names))))
        test = sorted(names[i] for i in order[:n_test])
        return [n for n in names if n not in test], test


def load_xc_config(path: str | Path) -> XcConfig:
    return load_yaml(XcConfig, path, "XC functional config")


# -- the data as tensors --------------------------------------------------------------------------

class DensitySet:
    """Grid densities of many systems in one set of tensors, with a system index per point."""

    def __init__(self, densities: dict[str, GridDensity]) -> None:
        self.names = list(densities)
        arrays = [d.arrays() for d in densities.values()]
        self.tensors = {k: torch.tensor(np.concatenate([a[k] for a in arrays])) for k in arrays[0]}
        self.index = torch.repeat_interleave(torch.arange(len(arrays)), torch.tensor([len(a["weights"]) for a in arrays]))
        f64 = torch.float64
        self.energy_without_xc = torch.tensor([d.energy_without_xc_ha for d in densities.values()], dtype=f64)
        self.hartree = torch.tensor([d.hartree_ha for d in densities.values()], dtype=f64)
        self.pbe_xc = torch.tensor([d.xc_ha for d in densities.values()], dtype=f64)

    def density_args(self, scale: float = 1.0, points: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(rho_a, rho_b, sigma_aa, sigma_ab, sigma_bb) of the uniformly scaled density n_l(r) = l^3 n(l r)
        at the scaled points (rho scales as l^3, sigma as l^8), at all points or at ``points``."""
        t = {k: (v if points is None else v[points]) for k, v in self.tensors.items()}
        return (t["rho_a"] * scale**3, t["rho_b"] * scale**3,
                *(t[k] * scale**8 for k in ("sigma_aa", "sigma_ab", "sigma_bb")))

    def integrate(self, per_volume: torch.Tensor, scale: float = 1.0, points: torch.Tensor | None = None,
                  point_weight: float = 1.0) -> torch.Tensor:
        """Per-system integrals (the scaled grid's volume elements are the weights / l^3); over a
        subsample ``points`` each point counts ``point_weight`` times."""
        index = self.index if points is None else self.index[points]
        weights = self.tensors["weights"] if points is None else self.tensors["weights"][points] * point_weight
        out = torch.zeros(len(self.names), dtype=per_volume.dtype)
        return out.index_add(0, index, weights / scale**3 * per_volume)


def _atomization_matrix(molecules: Sequence[str], systems: Sequence[str]) -> torch.Tensor:
    """A (molecules x systems) matrix M with atomization energies = M @ total energies."""
    column = {s: i for i, s in enumerate(systems)}
    m = torch.zeros(len(molecules), len(systems), dtype=torch.float64)
    for row, name in enumerate(molecules):
        m[row, column[name]] = -1.0
        for atom, count in atom_counts(name).items():
            m[row, column[atom]] += count
    return m


def fit_to_pbe(model: XcFunctional, data: DensitySet, *, steps: int, seed: int,
               progress: Progress | None = None) -> None:
    """Fit both networks to PBE's energy densities at (a sample of) the data's points."""
    generator = torch.Generator().manual_seed(seed)
    n = data.tensors["rho_a"] + data.tensors["rho_b"]
    probability = data.tensors["weights"].abs() * n  # sample where the electrons are
    sample = torch.multinomial(probability / probability.sum(), min(40000, len(n)), replacement=True,
                               generator=generator)
    args = tuple(a[sample] for a in data.density_args())
    with torch.no_grad():
        px, pc = pbe_energy_density(*args)
        variables = DensityVariables(*args)  # fixed points: their local variables once, not every step
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
    for step in range(steps):
        optimiser.zero_grad()
        mx, mc = model.energy_of(variables)
        loss = (((mx - px) / px.abs().clamp(min=1e-12)) ** 2).mean() \
            + (((mc - pc) / pc.abs().clamp(min=1e-12)) ** 2).mean()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None and (step + 1) % 50 == 0:
            progress("fit networks to PBE", step + 1, steps)


class Objective:
    """The training loss: atomization errors of the training molecules plus the penalties."""

    def __init__(self, config: XcConfig, data: DensitySet, train: Sequence[str]) -> None:
        self.config, self.data = config, data
        self.train_matrix = _atomization_matrix(train, data.names)
        self.train_reference = torch.tensor([reference_atomization_kcal(m) for m in train], dtype=torch.float64)
        self.h = data.names.index("H")
        h_points = data.index == self.h
        t = data.tensors
        self.h_weights = t["weights"][h_points]
        # the scaling inequalities are checked on a fixed random tenth of the points (an unbiased
        # estimate of each system's E_c, at a tenth of the cost of a second and third full pass)
        generator = torch.Generator().manual_seed(config.seed)
        self.scaling_points = torch.nonzero(torch.rand(len(t["weights"]), generator=generator,
                                                       dtype=torch.float64) < SCALING_SAMPLE).squeeze(-1)
        # the densities are fixed: their local variables are computed once
        with torch.no_grad():
            self.variables = DensityVariables(*data.density_args(), share_equal_spins=True)
            self.h_half = DensityVariables(t["rho_a"][h_points] / 2, t["rho_b"][h_points] / 2,
                                           t["sigma_aa"][h_points] / 4, t["sigma_ab"][h_points] / 4,
                                           t["sigma_bb"][h_points] / 4)
            self.scaled = {scale: DensityVariables(*data.density_args(scale, self.scaling_points))
                           for scale in (0.5, 1.0, 2.0)}

    def energies(self, model: XcFunctional) -> tuple[torch.Tensor, torch.Tensor]:
        """(total energies, E_xc) per system, on the fixed densities."""
        exc = self.data.integrate(sum(model.energy_of(self.variables)))
        return self.data.energy_without_xc + exc, exc

    def __call__(self, model: XcFunctional, prior: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.config.penalties
        total, exc = self.energies(model)
        errors = self.train_matrix @ total * KCAL_PER_HARTREE - self.train_reference
        atomization = (errors**2).mean()
        h_energy = (total[self.h] + 0.5) * KCAL_PER_HARTREE
        h_self_interaction = (exc[self.h] + self.data.hartree[self.h]) * KCAL_PER_HARTREE
        one_electron = h_energy**2 + h_self_interaction**2
        half_x, half_c = model.energy_of(self.h_half)
        half = ((self.h_weights * (half_x + half_c)).sum() + self.data.hartree[self.h] / 4) * KCAL_PER_HARTREE
        scaling = 0.0
        points = self.scaling_points
        ec_sampled = self.data.integrate(model.correlation_of(self.scaled[1.0]), 1.0, points, 1 / SCALING_SAMPLE)
        for scale in (0.5, 2.0):
            ec_scaled = self.data.integrate(model.correlation_of(self.scaled[scale]), scale, points,
                                            1 / SCALING_SAMPLE)
            # Levy and Perdew (1985): E_c[n_l] > l E_c[n] for l > 1 and < for l < 1
            violation = scale * ec_sampled - ec_scaled if scale > 1 else ec_scaled - scale * ec_sampled
            scaling = scaling + (torch.relu(violation) * KCAL_PER_HARTREE).pow(2).sum()
        drift = sum(((p - p0) ** 2).sum() for p, p0 in zip(model.parameters(), prior))
        loss = (atomization + w.one_electron * one_electron + w.fractional_charge * half**2
                + w.correlation_scaling * scaling
                + w.pbe_prior * drift)
        parts = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in (
            ("train_mae_kcal", errors.abs().mean()), ("h_atom_error_kcal", h_energy),
            ("h_self_interaction_kcal", h_self_interaction), ("half_electron_kcal", half),
            ("scaling_penalty", scaling), ("loss", loss))}
        return loss, parts


def non_scf_atomization_kcal(model: XcFunctional | None, data: DensitySet, molecules: Sequence[str]) -> np.ndarray:
    """Atomization energies on the fixed densities (``None``: PBE itself, i.e. the reference SCF)."""
    with torch.no_grad():
        if model is None:
            total = data.energy_without_xc + data.pbe_xc
        else:
            e_x, e_c = model.energy_density(*data.density_args())
            total = data.energy_without_xc + data.integrate(e_x + e_c)
    return (_atomization_matrix(molecules, data.names) @ total * KCAL_PER_HARTREE).numpy()


def train(config: XcConfig, *, progress: Progress | None = None) -> dict:
    """PBE densities -> PBE fit -> training -> checkpoint, with the held-out error on the PBE densities
    (the self-consistent evaluation is :func:`benchmark`)."""
    torch.manual_seed(config.seed)
    train_molecules, test_molecules = config.split()
    systems = g2_1_atoms_of(config.molecule_names()) + config.molecule_names()
    systems = (["H"] if "H" not in systems else []) + systems
    report = None if progress is None else (lambda done, total: progress("PBE densities", done, total))
    data = DensitySet(reference_densities(systems, basis=config.basis, grid_level=config.grid_level,
                                          progress=report))
    model = XcFunctional(config.hidden, config.layers)
    model.exchange_net.float()  # single precision while training; double again before it is saved
    model.correlation_net.float()
    fit_to_pbe(model, data, steps=config.pbe_fit_steps, seed=config.seed, progress=progress)
    prior = [p.detach().clone() for p in model.parameters()]
    objective = Objective(config, data, train_molecules)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(config.steps, 1))
    history = []
    start = time.perf_counter()
    for step in range(config.steps):
        optimiser.zero_grad()
        loss, parts = objective(model, prior)
        loss.backward()
        optimiser.step()
        schedule.step()
        history.append(parts)
        if progress is not None:
            progress("train on atomization energies", step + 1, config.steps)
    train_s = time.perf_counter() - start
    model.double()
    config.folder.mkdir(parents=True, exist_ok=True)
    model.save(config.checkpoint, basis=config.basis, grid_level=config.grid_level, train=train_molecules,
               test=test_molecules)
    reference = np.array([reference_atomization_kcal(m) for m in test_molecules])
    pbe_non_scf = non_scf_atomization_kcal(None, data, test_molecules)
    learned_non_scf = non_scf_atomization_kcal(model, data, test_molecules)
    summary = {"checkpoint": str(config.checkpoint), "train": train_molecules, "test": test_molecules,
               "train_s": train_s, "final": history[-1] if history else {},
               "held_out_mae_kcal_non_scf": {"pbe": float(np.abs(pbe_non_scf - reference).mean()),
                                             "learned": float(np.abs(learned_non_scf - reference).mean())}}
    (config.folder / "train.json").write_text(json.dumps({**summary, "history": history}, indent=1))
    return summary


# -- self-consistent evaluation ---------------------------------------------------------------------

def resolve_functional(name_or_checkpoint: str | Path):
    """A libxc name (see LIBXC_FUNCTIONALS), or a checkpoint path -> what :func:`run_scf` takes."""
    key = str(name_or_checkpoint).lower()
    if key in LIBXC_FUNCTIONALS:
        return LIBXC_FUNCTIONALS[key]
    return pyscf_eval_xc(XcFunctional.load(name_or_checkpoint))


def scf_atomization(functional: str | Path, molecules: Sequence[str], *, basis: str, grid_level: int,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Self-consistent energies of the molecules and their atoms with one functional: per system the
    energy, convergence, seconds and iterations; per molecule the atomization energy (kcal/mol)."""
    xc = resolve_functional(functional)
    systems = g2_1_atoms_of(molecules) + list(molecules)
    runs = {}
    for i, name in enumerate(systems):
        result = run_scf(build_molecule(name, basis), xc, grid_level=grid_level)
        runs[name] = {"energy_ha": result.energy_ha, "converged": result.converged, "seconds": result.seconds,
                      "iterations": result.iterations}
        if progress is not None:
            progress(i + 1, len(systems))
    atomization = {m: (sum(c * runs[a]["energy_ha"] for a, c in atom_counts(m).items()) - runs[m]["energy_ha"])
                   * KCAL_PER_HARTREE for m in molecules}
    return {"systems": runs, "atomization_kcal": atomization}


def benchmark(config: XcConfig, checkpoint: str | Path, *, progress: Progress | None = None) -> dict:
    """The learned functional beside ``config.compare`` (PBE is always run: the cost baseline), all
    self-consistent in the same basis and grid: atomization errors per molecule, MAE on the held-out and
    the training molecules, SCF convergence and time per SCF."""
    model = XcFunctional.load(checkpoint)
    test = list(model.metadata.get("test") or config.split()[1])
    molecules = config.molecule_names()
    functionals = list(dict.fromkeys(["pbe", *config.compare])) + ["learned"]
    reference = {m: reference_atomization_kcal(m) for m in molecules}
    runs = {}
    for name in functionals:
        report = None if progress is None else (lambda done, total, name=name: progress(f"SCF {name}", done, total))
        runs[name] = scf_atomization(checkpoint if name == "learned" else name, molecules, basis=config.basis,
                                     grid_level=config.grid_level, progress=report)
    summary = {}
    for name, run in runs.items():
        errors = {m: run["atomization_kcal"][m] - reference[m] for m in molecules}
        systems = run["systems"]
        time_ratio = [systems[s]["seconds"] / runs["pbe"]["systems"][s]["seconds"] for s in systems]
        summary[name] = {
            "held_out_mae_kcal": float(np.mean([abs(errors[m]) for m in test])),
            "training_mae_kcal": float(np.mean([abs(errors[m]) for m in molecules if m not in test] or [np.nan])),
            "all_mae_kcal": float(np.mean(np.abs(list(errors.values())))),
            "converged": sum(s["converged"] for s in systems.values()), "systems": len(systems),
            "median_scf_s": float(np.median([s["seconds"] for s in systems.values()])),
            "median_time_vs_pbe": float(np.median(time_ratio)), "errors_kcal": errors}
    out = {"basis": config.basis, "grid_level": config.grid_level, "checkpoint": str(checkpoint), "test": test,
           "reference_kcal": reference, "functionals": summary, "runs": runs}
    config.folder.mkdir(parents=True, exist_ok=True)
    (config.folder / "bench.json").write_text(json.dumps(out, indent=1))
    return out
