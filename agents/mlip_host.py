"""The MLIP agent (``surrogate.mlip``): a committee of machine-learned interatomic potentials on
the bus, on a GPU where the cluster has one (``num_gpus: auto``, its default).

Methods: ``predict`` (committee mean energy, forces, optional stress, and the committee spread
that tells an active learner where the potential is unsure) and ``train`` (on structures an
oracle labelled, from scratch or warm-started). The model itself is plain torch: the project's
NEP-style potential (:mod:`sdl.surrogates.mlip`) or MACE (:mod:`sdl.surrogates.mace_potential`);
this module only serves it.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field, model_validator

from sdl.agents.base import Agent, AgentContext
from sdl.bus import ServiceError, method
from sdl.experiment import AtomicStructure, LabelledStructure
from sdl.settings import ResolvedPath, Section
from sdl.surrogates.mace_potential import MaceCommittee, MaceSettings
from sdl.surrogates.mlip import (
    Committee,
    MlipConfig,
    TrainingSettings,
    choose_device,
    load_committee,
    make_batch,
    train_committee,
)
from sdl.wire import WireModel


class MlipSettings(Section):
    """A committee to train (``potential``) or a trained one to load (``checkpoint``).

    ``architecture: nep`` (the default) is the project's potential, ``potential`` its settings;
    ``architecture: mace`` hosts a MACE committee instead (mace-torch, trained from scratch; its
    elements and cutoff from ``potential``, the rest from ``mace``), so a lab that prefers MACE keeps
    the rest of the loop."""

    architecture: Literal["nep", "mace"] = "nep"
    potential: MlipConfig | None = Field(default=None, description="architecture of a new committee")
    mace: MaceSettings = MaceSettings()
    checkpoint: ResolvedPath | None = Field(default=None, description="a committee.pt from `sdl mlip active-learn`")
    committee_size: int = Field(default=3, ge=1, le=64)
    training: TrainingSettings = TrainingSettings()
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> MlipSettings:
        if (self.potential is None) == (self.checkpoint is None):
            raise ValueError("give either a potential architecture (to train) or a checkpoint (to load)")
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise ValueError(f"MLIP checkpoint {self.checkpoint} does not exist; train one with `sdl mlip active-learn`")
        if self.architecture == "mace" and self.checkpoint is not None:
            raise ValueError("checkpoints hold NEP committees; a MACE committee is trained by the agent (give `potential`)")
        return self


class MlipTrainRequest(WireModel):
    structures: list[LabelledStructure] = Field(min_length=1)
    epochs: int | None = Field(default=None, ge=1, le=100000, description="default: the agent's training settings")
    warm_start: bool = Field(default=False, description="continue from the current weights and normalisation")


class MlipTrainSummary(WireModel):
    n_train: int
    train_s: float
    device: str
    final_loss: list[float]


class MlipPredictRequest(WireModel):
    structures: list[AtomicStructure] = Field(min_length=1)
    stress: bool = False


class MlipPrediction(WireModel):
    """Committee mean and spread per structure; forces per atom."""

    energy_ev: list[float]
    energy_std_ev: list[float]
    forces_ev_per_ang: list[list[tuple[float, float, float]]]
    max_force_std_ev_per_ang: list[float] = Field(description="largest per-atom committee force spread")
    stress_ev_per_ang3: list[list[list[float]]] | None = None


class MlipAgent(Agent):
    role = "surrogate"
    Settings = MlipSettings
    default_num_gpus = "auto"

    def __init__(self, settings: MlipSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        self.device = choose_device(settings.device)
        self.training = settings.training
        self.checkpoint = settings.checkpoint
        self.mace: MaceCommittee | None = None
        if settings.architecture == "mace":
            mace = settings.mace.model_copy(update={"r_max_ang": settings.potential.radial_cutoff_ang})
            self.mace = MaceCommittee(settings.potential.elements, mace, size=settings.committee_size,
                                      seed=settings.seed, device=str(self.device))
            self.committee = None
            self.trained = False
        elif settings.checkpoint is not None:
            self.committee = load_committee(settings.checkpoint, device=str(self.device))
            self.trained = True
        else:
            self.committee = Committee.new(settings.potential, settings.committee_size, seed=settings.seed)
            self.trained = False

    def details(self) -> dict:
        return {"architecture": self.settings.architecture, "elements": self.settings.potential.elements
                if self.mace is not None else self.committee.config.elements,
                "committee_size": self.settings.committee_size if self.mace is not None else len(self.committee.members),
                "device": str(self.device), "trained": self.trained,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None}

    @method(MlipTrainRequest)
    def train(self, request: MlipTrainRequest) -> MlipTrainSummary:
        structures = [item.to_atoms() for item in request.structures]
        if request.warm_start and not self.trained:
            raise ServiceError("warm_start asks to continue training, but this committee has not been trained yet")
        settings = self.training if request.epochs is None else self.training.model_copy(update={"epochs": request.epochs})
        started = time.perf_counter()
        try:
            if self.mace is not None:
                losses = [h[-1] for h in self.mace.train(structures, warm_start=request.warm_start, epochs=request.epochs)]
            else:
                losses = [h["loss"][-1] for h in train_committee(self.committee, structures, settings,
                                                                 device=str(self.device), prepare=not request.warm_start)]
        except ValueError as e:
            raise ServiceError(str(e)) from e
        self.trained = True
        return MlipTrainSummary(n_train=len(structures), train_s=time.perf_counter() - started, device=str(self.device),
                                final_loss=losses)

    @method(MlipPredictRequest)
    def predict(self, request: MlipPredictRequest) -> MlipPrediction:
        if not self.trained:
            raise ServiceError("the MLIP has not been trained; call train first (or start the agent from a checkpoint)")
        structures = [s.to_atoms() for s in request.structures]
        if self.mace is not None:
            return self._predict_mace(request, structures)
        param = next(self.committee.parameters())
        try:
            batch = make_batch(structures, self.committee.config.elements, self.committee.config.radial_cutoff_ang,
                               device=param.device, dtype=param.dtype)
        except ValueError as e:
            raise ServiceError(str(e)) from e
        stress = request.stress and all(s.fully_periodic for s in request.structures)
        if request.stress and not stress:
            raise ServiceError("stress needs structures periodic in all three directions (bulk cells)")
        out = self.committee(batch, forces=True, stress=stress)
        owner = batch.structure.cpu().numpy()
        forces = out["forces"].cpu().double().numpy()
        spread = out["forces_std"].norm(dim=1).cpu().double().numpy()
        return MlipPrediction(
            energy_ev=out["energy"].cpu().double().tolist(),
            energy_std_ev=out["energy_std"].cpu().double().tolist(),
            forces_ev_per_ang=[forces[owner == k].tolist() for k in range(batch.n_structures)],
            max_force_std_ev_per_ang=[float(spread[owner == k].max()) for k in range(batch.n_structures)],
            stress_ev_per_ang3=out["stress"].cpu().double().tolist() if stress else None,
        )

    def _predict_mace(self, request: MlipPredictRequest, structures: list) -> MlipPrediction:
        if request.stress:
            raise ServiceError("stress is served by the NEP architecture; this agent hosts MACE")
        unknown = sorted({e for a in structures for e in a.get_chemical_symbols()} - set(self.mace.elements))
        if unknown:
            raise ServiceError(f"the structures hold {unknown}; this MACE committee knows {self.mace.elements}")
        out = self.mace.predict(structures)
        return MlipPrediction(energy_ev=[p["energy"] for p in out], energy_std_ev=[p["energy_std"] for p in out],
                              forces_ev_per_ang=[p["forces"].tolist() for p in out],
                              max_force_std_ev_per_ang=[float(p["forces_spread"].max()) for p in out])
