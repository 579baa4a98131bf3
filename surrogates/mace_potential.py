"""MACE, the field's reference architecture, trained from scratch on the same labels as the project's
potential, as a committee with an ASE calculator: so that a lab that prefers MACE keeps the rest of
the loop, and so that the NEP-style potential of :mod:`sdl.surrogates.mlip` is measured against it.

The model, its data pipeline, its E0s, its scale/shift statistics and its loss are ``mace-torch``'s
own (``ScaleShiftMACE``, ``AtomicData``, ``compute_average_E0s``, ``compute_mean_rms_energy_forces``,
``WeightedEnergyForcesLoss``); only the training loop is written here, because mace-torch's trainer is
its command line (files, validation splits, checkpoints on disk) and a campaign trains in memory,
warm, every round. No foundation weights: every member starts from its own seed.

Plain torch and ASE: no Ray, no bus.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers
from pydantic import BaseModel, ConfigDict, Field

from sdl.surrogates.mlip import Committee, choose_device, labels_of, load_committee

# Where the labels sit on the copies handed to mace's data pipeline (its own default keys are
# REF_energy / REF_forces; naming them keeps the oracle's SinglePointCalculator out of it).
_ENERGY_KEY, _FORCES_KEY = "sdl_energy", "sdl_forces"


class MaceSettings(BaseModel):
    """A small MACE for CPU work (MACE-MP's small model: 128 channels, L = 0; 32 channels keep training
    and MD affordable on two cores), trained with mace-torch's default loss weights (energy 1, forces 100)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r_max_ang: float = Field(default=5.0, gt=1.0, le=12.0, description="cutoff, as the NEP potential's radial one")
    channels: int = Field(default=32, ge=4, le=256)
    max_l: int = Field(default=0, ge=0, le=3, description="largest L of the hidden features (0: invariant "
                                                         "messages, as MACE-MP's small model; 1 is 2.5x slower here)")
    max_ell: int = Field(default=3, ge=1, le=4, description="spherical harmonics of the edges")
    correlation: int = Field(default=3, ge=1, le=4, description="body order minus one")
    num_interactions: int = Field(default=2, ge=1, le=4)
    num_bessel: int = Field(default=8, ge=2, le=16)
    epochs: int = Field(default=150, ge=1, le=100000)
    batch_structures: int = Field(default=4, ge=1)
    learning_rate: float = Field(default=1e-2, gt=0)
    final_learning_rate: float = Field(default=5e-4, gt=0)
    energy_weight: float = Field(default=1.0, ge=0)
    forces_weight: float = Field(default=100.0, ge=0)
    # mace-torch's Stage Two (--stage_two, formerly --swa): the last epochs at a 1000x energy weight and a low
    # learning rate, "to help converge" the energies, which the force-dominated loss above leaves loose
    # (without it, 40 epochs on 200 labels fit the slabs' energies to 77 meV/atom). mace also averages the
    # weights over those epochs (SWA); this loop does not.
    stage_two_fraction: float = Field(default=0.0, ge=0.0, lt=1.0,
                                      description="the last fraction of epochs in Stage Two (mace-torch's: 0.25); 0: none")
    stage_two_energy_weight: float = Field(default=1000.0, ge=0)
    stage_two_forces_weight: float = Field(default=100.0, ge=0)
    stage_two_learning_rate: float = Field(default=1e-3, gt=0)


def _hidden_irreps(settings: MaceSettings):
    from e3nn import o3

    return o3.Irreps(" + ".join(f"{settings.channels}x{l}{'e' if l % 2 == 0 else 'o'}"
                                for l in range(settings.max_l + 1)))  # noqa: E741


class _Data:
    """Labelled structures in mace's graph form, with the z table and E0s the model is built on."""

    def __init__(self, structures: Sequence[Atoms], elements: Sequence[str], r_max_ang: float) -> None:
        from mace import data as mace_data
        from mace.tools import AtomicNumberTable

        self.z_table = AtomicNumberTable(sorted(atomic_numbers[e] for e in elements))
        keys = mace_data.KeySpecification(info_keys={"energy": _ENERGY_KEY}, arrays_keys={"forces": _FORCES_KEY})
        configs = []
        for atoms in structures:
            labels = labels_of(atoms)
            copy_ = atoms.copy()
            copy_.calc = None
            copy_.info[_ENERGY_KEY] = labels.energy_ev
            copy_.arrays[_FORCES_KEY] = labels.forces_ev_per_ang
            configs.append(mace_data.config_from_atoms(copy_, key_specification=keys))
        self.configs = configs
        self.graphs = [mace_data.AtomicData.from_config(c, z_table=self.z_table, cutoff=r_max_ang) for c in configs]

    def loader(self, batch_structures: int, *, shuffle: bool, seed: int = 0):
        from mace.tools import torch_geometric

        generator = torch.Generator().manual_seed(seed)
        return torch_geometric.dataloader.DataLoader(self.graphs, batch_size=batch_structures, shuffle=shuffle,
                                                     drop_last=False, generator=generator)


def new_mace(settings: MaceSettings, data: _Data, *, seed: int) -> torch.nn.Module:
    """A ScaleShiftMACE with E0s by least squares on the labels (mace's ``--E0s average``) and the
    energy shift / force scale of the labels (mace's ``rms_forces_scaling``)."""
    from e3nn import o3
    from mace import modules
    from mace.data.utils import compute_average_E0s

    torch.manual_seed(seed)
    e0 = compute_average_E0s(data.configs, data.z_table)
    atomic_energies = np.array([e0[z] for z in data.z_table.zs])
    loader = data.loader(max(len(data.graphs), 1), shuffle=False)
    mean, rms = modules.scaling_classes["rms_forces_scaling"](loader, atomic_energies)
    return modules.ScaleShiftMACE(
        r_max=settings.r_max_ang, num_bessel=settings.num_bessel, num_polynomial_cutoff=5, max_ell=settings.max_ell,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=settings.num_interactions, num_elements=len(data.z_table), hidden_irreps=_hidden_irreps(settings),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=atomic_energies, avg_num_neighbors=modules.compute_avg_num_neighbors(loader),
        atomic_numbers=data.z_table.zs, correlation=settings.correlation, gate=torch.nn.functional.silu,
        atomic_inter_scale=float(np.atleast_1d(rms)[0]), atomic_inter_shift=float(np.atleast_1d(mean)[0]))


def train_mace(model: torch.nn.Module, data: _Data, settings: MaceSettings, *, device: torch.device, seed: int,
               epochs: int | None = None, progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Adam (AMSGrad, as mace-torch) with an exponential decay to ``final_learning_rate``; mace's
    weighted energy + forces loss, with its Stage Two weights and learning rate over the last
    ``stage_two_fraction`` of the epochs. Returns the mean loss of each epoch."""
    from mace.modules.loss import WeightedEnergyForcesLoss

    epochs = settings.epochs if epochs is None else epochs
    model.to(device).train()
    loss_fn = WeightedEnergyForcesLoss(energy_weight=settings.energy_weight, forces_weight=settings.forces_weight).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, amsgrad=True)
    decay = (settings.final_learning_rate / settings.learning_rate) ** (1 / max(epochs, 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=decay)
    stage_two_from = epochs - round(settings.stage_two_fraction * epochs)
    history = []
    for epoch in range(epochs):
        if epoch == stage_two_from:
            loss_fn = WeightedEnergyForcesLoss(energy_weight=settings.stage_two_energy_weight,
                                               forces_weight=settings.stage_two_forces_weight).to(device)
            for group in optimiser.param_groups:
                group["lr"] = settings.stage_two_learning_rate
        total, batches = 0.0, 0
        for batch in data.loader(settings.batch_structures, shuffle=True, seed=seed * 100003 + epoch):
            batch = batch.to(device)
            optimiser.zero_grad()
            out = model(batch.to_dict(), training=True, compute_force=True)
            loss = loss_fn(batch, out)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # mace-torch's default clip
            optimiser.step()
            total += float(loss.detach())
            batches += 1
        if epoch < stage_two_from:
            scheduler.step()
        history.append(total / max(batches, 1))
        if progress is not None:
            progress(epoch + 1, epochs)
    model.eval()
    return history


class MaceCommittee:
    """Independently seeded MACE models on the same labels; their spread is the uncertainty, and
    mace-torch's ``MACECalculator`` over all of them is the ASE calculator (its committee mean,
    with ``forces_comm`` per member)."""

    def __init__(self, elements: Sequence[str], settings: MaceSettings | None = None, *, size: int = 3, seed: int = 0,
                 device: str = "auto") -> None:
        if size < 1:
            raise ValueError(f"committee size {size}: at least one model")
        self.elements = list(elements)
        self.settings = settings or MaceSettings()
        self.size = size
        self.seed = seed
        self.device = choose_device(device)
        self.models: list[torch.nn.Module] = []
        self.train_s = 0.0

    def train(self, structures: Sequence[Atoms], *, warm_start: bool = False, epochs: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> list[list[float]]:
        """Fit every member (from scratch, E0s and scales from these labels; or warm, keeping them);
        each member's mean loss per epoch."""
        if not structures:
            raise ValueError("no labelled structures to train on")
        unknown = sorted({s for a in structures for s in a.get_chemical_symbols()} - set(self.elements))
        if unknown:
            raise ValueError(f"structures hold {unknown}; this committee knows {self.elements}")
        from mace.tools.torch_tools import default_dtype

        started = time.perf_counter()
        with default_dtype("float32"):  # mace builds its tensors in torch's default dtype
            data = _Data(structures, self.elements, self.settings.r_max_ang)
            if not warm_start or not self.models:
                self.models = [new_mace(self.settings, data, seed=self.seed + k) for k in range(self.size)]
            n = epochs or self.settings.epochs
            histories = []
            for k, model in enumerate(self.models):
                step = None if progress is None else (lambda done, total, k=k: progress(k * total + done, self.size * total))
                histories.append(train_mace(model, data, self.settings, device=self.device, seed=self.seed + k, epochs=n,
                                            progress=step))
        self.train_s = time.perf_counter() - started
        return histories

    def save(self, path) -> None:
        """The whole committee (mace's own way: the modules pickled) with what rebuilds it."""
        torch.save({"elements": self.elements, "settings": self.settings.model_dump(), "size": self.size,
                    "seed": self.seed, "models": [m.cpu() for m in self.models]}, path)
        for model in self.models:
            model.to(self.device)

    @classmethod
    def load(cls, path, *, device: str = "auto") -> MaceCommittee:
        saved = torch.load(path, map_location="cpu", weights_only=False)  # mace pickles its modules
        committee = cls(saved["elements"], MaceSettings.model_validate(saved["settings"]), size=saved["size"],
                        seed=saved["seed"], device=device)
        committee.models = [m.to(committee.device).eval() for m in saved["models"]]
        return committee

    def calculator(self, device: str | None = None):
        """mace-torch's ASE calculator over the committee (float32)."""
        from mace.calculators import MACECalculator

        if not self.models:
            raise ValueError("the MACE committee has not been trained")
        models = [copy.deepcopy(m).eval() for m in self.models]
        return MACECalculator(models=models, device=str(device or self.device), default_dtype="float32")

    def predict(self, structures: Sequence[Atoms]) -> list[dict[str, np.ndarray]]:
        """Per structure: committee-mean ``energy`` (eV) and ``forces`` (eV/A), the members' energy sd
        ``energy_std`` (eV) and the per-atom force spread ``forces_spread`` (eV/A, the norm of the
        members' sd), through the ASE calculator."""
        calculator = self.calculator()
        out = []
        for atoms in structures:
            copy_ = atoms.copy()
            copy_.calc = calculator
            forces = copy_.get_forces()
            members = calculator.results.get("forces_comm")
            sd = np.zeros_like(forces) if members is None or len(members) < 2 else np.asarray(members).std(0, ddof=1)
            energies = calculator.results.get("energy_comm")
            energy_sd = 0.0 if energies is None or len(energies) < 2 else float(np.std(energies, ddof=1))
            out.append({"energy": copy_.get_potential_energy(), "energy_std": energy_sd, "forces": forces,
                        "forces_spread": np.linalg.norm(sd, axis=1)})
        return out


def load_any_committee(path, *, device: str = "auto") -> Committee | MaceCommittee:
    """A committee saved by either architecture the MLIP agent hosts: ours (weights only, read as such)
    or MACE (mace pickles its modules). Both answer ``predict`` alike."""
    import pickle

    try:
        return load_committee(path, device=device)
    except pickle.UnpicklingError:  # not weights only: a MACE committee (MaceCommittee.save)
        return MaceCommittee.load(path, device=device)
