"""The MLIP agent (``surrogate.mlip``): a committee of machine-learned interatomic potentials on
the bus, on a GPU where the cluster has one (``num_gpus: auto``, its default).

Methods: ``predict`` (committee mean energy, forces, optional stress, and the committee spread
that tells an active learner where the potential is unsure), ``train`` (on structures an oracle
labelled, from scratch or warm-started: a round; before it, how unsure the committee was of the new
frames against how wrong it was sets the learned trust level), ``explore`` (MD with the committee,
stopped where a trajectory leaves the trust level: the frame an oracle should see) and ``state``
(which structures it has learned, in how many rounds). With ``rounds_dir`` every round is saved and
an agent started again continues from the last one. The model itself is plain torch: the project's
NEP-style potential (:mod:`sdl.surrogates.mlip`) or MACE (:mod:`sdl.surrogates.mace_potential`);
this module only serves it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from sdl.agents.base import Agent, AgentContext
from sdl.bus import Empty, ServiceError, method
from sdl.experiment import AtomicStructure, LabelledStructure
from sdl.settings import ResolvedPath, Section
from sdl.surrogates.mace_potential import MaceCommittee, MaceSettings
from sdl.surrogates.mlip import (
    Committee,
    MlipCalculator,
    MlipConfig,
    TrainingSettings,
    choose_device,
    load_committee,
    make_batch,
    save_committee,
    train_committee,
)
from sdl.surrogates.mlip_learning import nearest_neighbour_distance_ang
from sdl.surrogates.mlip_on_the_fly import run_trusted_md, trust_level
from sdl.wire import WireModel


class MlipSettings(Section):
    """A committee to train (``potential``) or a trained one to load (``checkpoint``).

    ``architecture: mace`` (the default for a new committee) hosts MACE (mace-torch, trained from
    scratch; its elements and cutoff from ``potential``, the rest from ``mace``); ``architecture: nep``
    the project's potential, ``potential`` its settings (14x faster MD on a CPU, 3-5x the force error
    at equal data: bench/mlip_vs_mace.py)."""

    architecture: Literal["nep", "mace"] = Field(
        default="mace", description="mace (the default for a new committee: 3-5x lower force error than nep at equal "
                                    "data, bench/mlip_vs_mace.py) or nep (14x faster MD on a CPU; the default with a "
                                    "checkpoint, which holds a nep committee)")
    potential: MlipConfig | None = Field(default=None, description="architecture of a new committee")
    mace: MaceSettings = MaceSettings()
    checkpoint: ResolvedPath | None = Field(default=None, description="a committee.pt from `sdl mlip active-learn`")
    committee_size: int = Field(default=3, ge=1, le=64)
    training: TrainingSettings = TrainingSettings()
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    seed: int = 0
    rounds_dir: ResolvedPath | None = Field(
        default=None, description="where each training round's committee and state are saved; an agent started "
                                  "again (a restarted actor, a resumed campaign) continues from the last (NEP)")
    target_force_mae_mev_per_ang: float = Field(default=50.0, gt=0, description="sets the learned trust level")

    @model_validator(mode="after")
    def _one_source(self) -> MlipSettings:
        if (self.potential is None) == (self.checkpoint is None):
            raise ValueError("give either a potential architecture (to train) or a checkpoint (to load)")
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise ValueError(f"MLIP checkpoint {self.checkpoint} does not exist; train one with `sdl mlip active-learn`")
        if self.architecture == "mace" and self.checkpoint is not None:
            raise ValueError("checkpoints hold NEP committees; a MACE committee is trained by the agent (give `potential`)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _checkpoints_are_nep(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("architecture") is None and data.get("checkpoint") is not None:
            return {**data, "architecture": "nep"}
        return data


class MlipTrainRequest(WireModel):
    structures: list[LabelledStructure] = Field(min_length=1)
    epochs: int | None = Field(default=None, ge=1, le=100000, description="default: the agent's training settings")
    warm_start: bool = Field(default=False, description="continue from the current weights and normalisation")


class MlipTrainSummary(WireModel):
    n_train: int
    train_s: float
    device: str
    final_loss: list[float]
    round: int = Field(default=1, ge=1, description="training rounds so far, this one included")
    checkpoint: str | None = None
    trust_level_ev_per_ang: float | None = None


class MlipState(WireModel):
    """What the committee has learned so far: which structures (their keys), in how many rounds."""

    trained: bool
    round: int
    trained_keys: list[str]
    trust_level_ev_per_ang: float | None


class MlipExploreRequest(WireModel):
    """MD with the committee from each start (at its temperature), checked every step against the
    learned trust level (or ``max_force_spread_ev_per_ang`` before one is learned)."""

    starts: list[AtomicStructure] = Field(min_length=1, max_length=10000)
    trajectories: list[str] = Field(description="a name per start")
    temperatures_k: list[float] = Field(description="a thermostat temperature per start")
    md_steps: int = Field(default=100, ge=1, le=1_000_000)
    snapshot_interval: int = Field(default=10, ge=1)
    timestep_fs: float = Field(default=2.0, gt=0, le=10)
    min_distance_fraction: float = Field(default=0.75, gt=0, lt=1, description="closer atoms: unphysical, dropped")
    max_force_spread_ev_per_ang: float = Field(default=1.0, gt=0, description="beyond: a wreck, never labelled")
    seed: int = 0

    @model_validator(mode="after")
    def _one_each(self) -> MlipExploreRequest:
        if not len(self.starts) == len(self.trajectories) == len(self.temperatures_k):
            raise ValueError(f"{len(self.starts)} starts, {len(self.trajectories)} trajectory names and "
                             f"{len(self.temperatures_k)} temperatures: give one of each per start")
        if any(not 0 < t <= 10000 for t in self.temperatures_k):
            raise ValueError("temperatures must lie in (0, 10000] K")
        return self


class ExploredFrame(WireModel):
    structure: AtomicStructure
    trajectory: str
    step: int
    max_force_spread_ev_per_ang: float
    untrusted: bool = Field(description="the frame where the trajectory left the trust level (stopped there)")


class MlipExploration(WireModel):
    frames: list[ExploredFrame]
    md_steps: int
    md_s: float
    trust_level_ev_per_ang: float | None


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
        self.round = 0
        self.trained_keys: list[str] = []
        self.calibration: list[tuple[float, float]] = []  # (spread, true worst-atom error) of each frame before learning it
        self.trust_level: float | None = None if self.committee is None else self.committee.trust_level_ev_per_ang
        self._resume_rounds()

    # -- rounds on disk ------------------------------------------------------------------------------

    def _state_path(self) -> Path | None:
        return None if self.settings.rounds_dir is None else self.settings.rounds_dir / "state.json"

    def _resume_rounds(self) -> None:
        """Continue from the last round saved in ``rounds_dir`` (NEP), if there is one."""
        path = self._state_path()
        if path is None or not path.is_file():
            return
        state = json.loads(path.read_text())
        if self.mace is not None:
            self.mace = MaceCommittee.load(state["checkpoint"], device=str(self.device))
        else:
            self.committee = load_committee(state["checkpoint"], device=str(self.device))
        self.round, self.trained_keys = state["round"], state["trained_keys"]
        self.calibration = [tuple(pair) for pair in state["calibration"]]
        self.trust_level = state["trust_level_ev_per_ang"]
        self.trained = True

    def _save_round(self) -> str | None:
        """The committee of this round and the state that names it; the state is replaced atomically,
        so a kill at any moment leaves the previous round or this one, whole."""
        path = self._state_path()
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = path.parent / f"round_{self.round:04d}.pt"
        if self.mace is not None:
            self.mace.save(checkpoint)
        else:
            self.committee.trust_level_ev_per_ang = self.trust_level
            save_committee(self.committee, checkpoint)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"round": self.round, "checkpoint": str(checkpoint), "trained_keys": self.trained_keys,
                                   "calibration": self.calibration, "trust_level_ev_per_ang": self.trust_level}))
        os.replace(tmp, path)
        return str(checkpoint)

    def details(self) -> dict:
        return {"architecture": self.settings.architecture, "elements": self.settings.potential.elements
                if self.mace is not None else self.committee.config.elements,
                "committee_size": self.settings.committee_size if self.mace is not None else len(self.committee.members),
                "device": str(self.device), "trained": self.trained,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None}

    @method(Empty)
    def state(self, _: Empty) -> MlipState:
        return MlipState(trained=self.trained, round=self.round, trained_keys=self.trained_keys,
                         trust_level_ev_per_ang=self.trust_level)

    @method(MlipTrainRequest)
    def train(self, request: MlipTrainRequest) -> MlipTrainSummary:
        structures = [item.to_atoms() for item in request.structures]
        if request.warm_start and not self.trained:
            raise ServiceError("warm_start asks to continue training, but this committee has not been trained yet")
        settings = self.training if request.epochs is None else self.training.model_copy(update={"epochs": request.epochs})
        keys = [item.structure.key() for item in request.structures]
        if self.trained:  # before learning them: how unsure the committee was of the new frames, and how wrong
            seen = set(self.trained_keys)
            new = [a for a, k in zip(structures, keys) if k not in seen]
            if new:
                self.calibration += self._calibration(new)
                self.trust_level = trust_level(self.calibration, self.settings.target_force_mae_mev_per_ang)
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
        train_s = time.perf_counter() - started
        self.round += 1
        self.trained_keys = keys
        checkpoint = self._save_round()
        return MlipTrainSummary(n_train=len(structures), train_s=train_s, device=str(self.device), final_loss=losses,
                                round=self.round, checkpoint=checkpoint, trust_level_ev_per_ang=self.trust_level)

    def _calibration(self, labelled: list) -> list[tuple[float, float]]:
        """(worst-atom spread, worst-atom true error) of each labelled structure, by the current committee."""
        forces, spreads = self._forces_and_spreads(labelled)
        return [(float(spread.max()), float(np.linalg.norm(f - a.get_forces(), axis=1).max()))
                for f, spread, a in zip(forces, spreads, labelled)]

    def _forces_and_spreads(self, structures: list) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per structure: committee-mean forces and each atom's force spread (eV/A)."""
        out = (self.mace if self.mace is not None else self.committee).predict(structures)
        return [p["forces"] for p in out], [p["forces_spread"] for p in out]

    @method(MlipExploreRequest)
    def explore(self, request: MlipExploreRequest) -> MlipExploration:
        """MLIP-driven MD from each start: trusted snapshots every ``snapshot_interval`` steps up to the
        first frame beyond the trust level, which is returned too (flagged ``untrusted``: the frame the
        oracle should see) unless it is a wreck (beyond ``max_force_spread_ev_per_ang``) or unphysical."""
        if not self.trained:
            raise ServiceError("the MLIP has not been trained; explore needs a committee that knows something")
        elements = self.settings.potential.elements if self.mace is not None else self.committee.config.elements
        unknown = sorted({e for s in request.starts for e in s.symbols} - set(elements))
        if unknown:
            raise ServiceError(f"the starts hold {unknown}; this committee knows {elements}")
        level = min(self.trust_level or request.max_force_spread_ev_per_ang, request.max_force_spread_ev_per_ang)
        calculator = self.mace.calculator() if self.mace is not None else MlipCalculator(self.committee,
                                                                                          device=str(self.device))
        frames, steps, started = [], 0, time.perf_counter()
        for index, (start, name, temperature) in enumerate(zip(request.starts, request.trajectories,
                                                               request.temperatures_k)):
            atoms = start.to_atoms()
            run = run_trusted_md(atoms, calculator, trust_level_ev_per_ang=level, temperature_k=temperature,
                                 steps=request.md_steps, timestep_fs=request.timestep_fs,
                                 snapshot_interval=request.snapshot_interval,
                                 rng=np.random.default_rng([request.seed, index]))
            steps += run.steps
            floor = request.min_distance_fraction * nearest_neighbour_distance_ang(atoms)
            candidates = [(f, False) for f in run.snapshots]
            candidates += [(f, True) for f in run.untrusted
                           if f.info["max_force_spread_ev_per_ang"] <= request.max_force_spread_ev_per_ang]
            for frame, untrusted in candidates:
                if nearest_neighbour_distance_ang(frame) < floor:
                    break  # the trajectory has left physical space; later frames are worse
                frames.append(ExploredFrame(structure=AtomicStructure.from_atoms(frame), trajectory=name,
                                            step=frame.info["step"], untrusted=untrusted,
                                            max_force_spread_ev_per_ang=frame.info["max_force_spread_ev_per_ang"]))
        return MlipExploration(frames=frames, md_steps=steps, md_s=time.perf_counter() - started,
                               trust_level_ev_per_ang=self.trust_level)

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
