"""The MLIP active-learning planner (``planner.mlip_al``): which structures the DFT instrument labels next.

Active learning of an interatomic potential run as a campaign, so that the ledger holds every oracle
call and every training round and a killed run resumes with nothing lost or labelled twice. Each
proposal:

1. Until ``initial_structures`` labelled results are in: random bulk solid solutions (what a lab has
   first), the ``k``-th fixed by the seed; no more than that many out at once, and nothing more until
   they are labelled (the campaign asks again after each result).
2. Then it consults ``surrogate.mlip`` over the bus (granted exactly these calls): once the ledger
   holds ``labels_per_round`` labelled results the committee has not learned, a training round on all
   of them (warm after the first), recorded as a ``model.trained`` document with this proposal.
3. After each round, exploration by MLIP-driven MD over the configured mix of cell kinds
   (:class:`~sdl.surrogates.mlip_environments.MixEntry`), stopped where a trajectory leaves the learned
   trust level: the pool, the untrusted frames in it.
4. Selection from the pool of structures neither labelled nor pending: the largest worst-atom
   committee spread (``selection: committee``) or uniformly (``random``, the baseline), at most
   ``max_per_trajectory`` from a trajectory.

The planner keeps only a cache (the pool); what it knows comes from the observations the campaign
passes and from the surrogate's own saved rounds, so a restarted planner or a resumed campaign
carries on.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from sdl.agents.base import AgentContext
from sdl.agents.mlip_host import (
    MlipExploration,
    MlipExploreRequest,
    MlipPrediction,
    MlipPredictRequest,
    MlipState,
    MlipTrainRequest,
    MlipTrainSummary,
)
from sdl.agents.planner import Planner, ProposeRequest
from sdl.bus import BusClient, Empty
from sdl.env.atomistic import random_composition, random_solid_solution
from sdl.env.cell_kinds import make_cell
from sdl.experiment import AtomicStructure, DesignPoint, LabelledStructure, Observation
from sdl.ledger.documents import ModelTrained
from sdl.settings import Section
from sdl.surrogates.mlip_environments import MixEntry, default_mix
from sdl.surrogates.mlip_learning import most_uncertain


class MlipAlExploration(Section):
    """MLIP-driven Langevin MD from each start of the mix, once per training round."""

    md_steps: int = Field(default=100, ge=1)
    snapshot_interval: int = Field(default=10, ge=1)
    timestep_fs: float = Field(default=2.0, gt=0, le=10)
    min_distance_fraction: float = Field(default=0.75, gt=0, lt=1)
    max_force_spread_ev_per_ang: float = Field(default=1.0, gt=0, description="beyond: a wreck, never labelled")
    max_per_trajectory: int = Field(default=1, ge=1)


class MlipAlSettings(Section):
    surrogate: str = Field(default="surrogate.mlip", description="the MLIP agent's service")
    repeat: int = Field(default=2, ge=1, le=6, description="bulk cells of 4 repeat^3 atoms")
    initial_structures: int = Field(default=10, ge=1)
    rattle_ang: float = Field(default=0.05, ge=0, description="of the initial random bulk cells")
    retrain_epochs: int = Field(default=40, ge=1, description="epochs of each warm round after the first")
    labels_per_round: int = Field(default=5, ge=1, description="new labelled results that call for a training round")
    mix: list[MixEntry] = Field(default_factory=default_mix, min_length=1,
                                description="cell kinds explored: starts per temperature (what the potential is for)")
    exploration: MlipAlExploration = Field(default_factory=MlipAlExploration, description="the MD of each round")
    selection: Literal["committee", "random"] = Field(
        default="committee", description="committee: the worst atom's spread; random: the baseline, same pool")
    timeout_s: float = Field(default=3600.0, gt=0, description="for one training round or exploration")


class MlipAlPlanner(Planner):
    """Selects structures for the oracle from MLIP-driven exploration; see the module docstring."""

    name = "mlip_al"
    Settings = MlipAlSettings
    default_num_gpus = 0.0  # the committee's work happens in surrogate.mlip, on its GPU
    default_timeout_s = 3600.0  # a proposal may wait for a training round and an exploration

    def __init__(self, settings: MlipAlSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        self.elements = list(self.space.composition.elements)
        self.pool: list[tuple[AtomicStructure, dict[str, str]]] = []  # (structure, tags) from the last exploration
        self.pool_round = -1
        self.scores: dict[str, float] = {}  # structure key -> worst-atom spread by the current committee
        self._client: BusClient | None = None

    @classmethod
    def check(cls, settings: MlipAlSettings, context: AgentContext) -> None:
        context.require_space("the mlip_al planner (the potential's elements)", composition_only=True)

    @classmethod
    def consults(cls, settings: MlipAlSettings) -> tuple[str, ...]:
        return tuple(f"{settings.surrogate}:{m}" for m in ("state", "train", "explore", "predict"))

    def _call(self, method: str, payload, reply_type, *, timeout_s: float | None = None):
        if self._client is None:
            self._client = self.context.bus_client("the mlip_al planner")
        reply = self._client.request(self.settings.surrogate, method, payload,
                                     timeout_s=timeout_s or self.settings.timeout_s)
        return reply_type.model_validate(reply)

    def propose(self, request: ProposeRequest) -> list[DesignPoint]:
        self.trained, self.predicted = [], []
        labelled = [o for o in request.observations if _is_label(o)]
        position = len(request.observations) + len(request.pending)
        if len(labelled) < self.settings.initial_structures:
            # no more than the initial design: the rest waits for the first committee (none while it is out)
            out = sum(p.tags.get("trajectory") == "initial" for p in request.pending)
            return [self._initial(position + i)
                    for i in range(min(request.n, self.settings.initial_structures - len(labelled) - out))]
        state = self._train_if_behind(labelled)
        taken = {o.point.structure.key() for o in request.observations if o.point.structure is not None}
        taken |= {p.structure.key() for p in request.pending if p.structure is not None}
        if self.pool_round != state.round or not any(s.key() not in taken for s, _ in self.pool):
            self._explore(state.round, position)
        candidates = [(s, t) for s, t in self.pool if s.key() not in taken]
        if not candidates:
            raise ValueError("exploration found no new physical structure to label; widen the mix or the MD")
        chosen = self._select(candidates, request.n, position)
        return [DesignPoint.of_structure(structure, self.elements, tags={**tags, "round": str(state.round)})
                for structure, tags in (candidates[i] for i in chosen)]

    def _initial(self, k: int) -> DesignPoint:
        rng = np.random.default_rng([self.seed, k])
        atoms = random_solid_solution(random_composition(self.elements, rng), rng, repeat=self.settings.repeat,
                                      rattle_ang=self.settings.rattle_ang)
        return DesignPoint.of_structure(AtomicStructure.from_atoms(atoms), self.elements,
                                        tags={"cell_kind": "bulk", "trajectory": "initial", "round": "0"})

    def _train_if_behind(self, labelled: list[Observation]) -> MlipState:
        """A training round on every labelled result once ``labels_per_round`` of them are new to the surrogate."""
        state = self._call("state", Empty(), MlipState, timeout_s=60.0)
        keys = {o.point.structure.key() for o in labelled}
        if state.trained and len(keys - set(state.trained_keys)) < self.settings.labels_per_round:
            return state  # too few new labels for a round: the committee selects as it is
        structures = [LabelledStructure(structure=o.point.structure, energy_ev=o.measurements["energy_ev"],
                                        forces_ev_per_ang=o.arrays["forces_ev_per_ang"],
                                        stress_ev_per_ang3=o.arrays.get("stress_ev_per_ang3")) for o in labelled]
        summary = self._call("train", MlipTrainRequest(structures=structures, warm_start=state.trained,
                                                       epochs=self.settings.retrain_epochs if state.trained else None),
                             MlipTrainSummary)
        self.trained.append(ModelTrained(service=self.settings.surrogate, round=summary.round, n_train=summary.n_train,
                                         train_s=summary.train_s, final_loss=summary.final_loss,
                                         checkpoint=summary.checkpoint,
                                         trust_level_ev_per_ang=summary.trust_level_ev_per_ang))
        return MlipState(trained=True, round=summary.round, trained_keys=[s.structure.key() for s in structures],
                         trust_level_ev_per_ang=summary.trust_level_ev_per_ang)

    def _explore(self, round_: int, position: int) -> None:
        rng = np.random.default_rng([self.seed, round_, position])
        starts, names, temperatures, kinds = [], [], [], {}
        for entry in self.settings.mix:
            for temperature in entry.temperatures_k:
                for s in range(entry.starts):
                    fractions = random_composition(self.elements, rng)
                    starts.append(AtomicStructure.from_atoms(make_cell(entry.kind, fractions, rng,
                                                                       repeat=self.settings.repeat)))
                    names.append(f"r{round_}-{entry.kind}-{temperature:g}K-{s}")
                    temperatures.append(temperature)
                    kinds[names[-1]] = entry.kind
        e = self.settings.exploration
        explored = self._call("explore", MlipExploreRequest(
            starts=starts, trajectories=names, temperatures_k=temperatures, md_steps=e.md_steps,
            snapshot_interval=min(e.snapshot_interval, e.md_steps), timestep_fs=e.timestep_fs,
            min_distance_fraction=e.min_distance_fraction, max_force_spread_ev_per_ang=e.max_force_spread_ev_per_ang,
            seed=int(rng.integers(2**31))), MlipExploration)
        self.scores = {}
        self.pool = [(f.structure, {"cell_kind": kinds[f.trajectory], "trajectory": f.trajectory,
                                    "untrusted": "yes" if f.untrusted else "no"}) for f in explored.frames]
        self.pool_round = round_

    def _select(self, candidates: list[tuple[AtomicStructure, dict[str, str]]], n: int, position: int) -> list[int]:
        k = min(n, len(candidates))
        if self.settings.selection == "random":
            rng = np.random.default_rng([self.seed, position, 7])
            return [int(i) for i in rng.choice(len(candidates), size=k, replace=False)]
        # the committee changes only in a training round, after which the pool is explored anew: a frame's
        # score holds until then, and a campaign that proposes one structure at a time scores each frame once
        unscored = [s for s, _ in candidates if s.key() not in self.scores]
        for start in range(0, len(unscored), 256):
            part = unscored[start:start + 256]
            spreads = self._call("predict", MlipPredictRequest(structures=part), MlipPrediction,
                                 timeout_s=600.0).max_force_std_ev_per_ang
            self.scores.update(zip((s.key() for s in part), spreads))
        scores = [self.scores[s.key()] for s, _ in candidates]
        chosen = most_uncertain([tags["trajectory"] for _, tags in candidates], np.asarray(scores), k,
                                self.settings.exploration.max_per_trajectory)
        self.predicted = [{"max_force_spread_ev_per_ang": float(scores[i])} for i in chosen]
        return chosen


def _is_label(observation: Observation) -> bool:
    return (observation.status == "done" and observation.point.structure is not None
            and "energy_ev" in observation.measurements and "forces_ev_per_ang" in observation.arrays)
