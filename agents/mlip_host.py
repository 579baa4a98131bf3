"""The MLIP agent (``surrogate.mlip``): a committee of machine-learned interatomic potentials on
the bus, on a GPU where the cluster has one.

Methods: ``predict`` (committee mean energy, forces, optional stress, and the committee spread
that tells an active learner where the potential is unsure) and ``train`` (on structures an
oracle labelled, from scratch or warm-started). The model itself is plain torch
(:mod:`sdl.surrogates.mlip`); this module only serves it.
"""

from __future__ import annotations

import time
from pathlib import Path

# torch imports its compiler (torch._dynamo, seconds of imports) lazily on the first optimiser;
# inside a request handler that stalls the worker's heartbeat thread past the broker's liveness
# limit, so the agent imports it at start-up instead.
import torch._dynamo  # noqa: F401

from sdl.protocol import MlipPredictRequest, MlipPrediction, MlipTrainRequest, MlipTrainSummary
from sdl.service import Service, ServiceError, method
from sdl.surrogates.mlip import (
    Committee,
    MlipConfig,
    TrainingSettings,
    choose_device,
    load_committee,
    make_batch,
    train_committee,
)


class MlipService(Service):
    kind = "surrogate"

    def __init__(self, *, potential: MlipConfig | dict | None = None, checkpoint: str | None = None,
                 committee_size: int = 3, training: TrainingSettings | dict | None = None,
                 device: str = "auto", seed: int = 0) -> None:
        if (potential is None) == (checkpoint is None):
            raise ValueError("give the MLIP agent either a potential architecture (to train) or a checkpoint (to load)")
        self.device = choose_device(device)
        self.training = TrainingSettings.model_validate(training or {})
        self.checkpoint = checkpoint
        if checkpoint is not None:
            if not Path(checkpoint).is_file():
                raise ValueError(f"MLIP checkpoint {checkpoint} does not exist; train one with `sdl mlip active-learn`")
            self.committee = load_committee(checkpoint, device=str(self.device))
            self.trained = True
        else:
            self.committee = Committee.new(MlipConfig.model_validate(potential), committee_size, seed=seed)
            self.trained = False

    def details(self) -> dict:
        return {"elements": self.committee.config.elements, "committee_size": len(self.committee.members),
                "device": str(self.device), "trained": self.trained, "checkpoint": self.checkpoint}

    @method(MlipTrainRequest)
    def train(self, request: MlipTrainRequest) -> MlipTrainSummary:
        structures = [item.to_atoms() for item in request.structures]
        if request.warm_start and not self.trained:
            raise ServiceError("warm_start asks to continue training, but this committee has not been trained yet")
        settings = self.training if request.epochs is None else self.training.model_copy(update={"epochs": request.epochs})
        started = time.perf_counter()
        try:
            histories = train_committee(self.committee, structures, settings, device=str(self.device),
                                        prepare=not request.warm_start)
        except ValueError as e:
            raise ServiceError(str(e)) from e
        self.trained = True
        return MlipTrainSummary(n_train=len(structures), train_s=time.perf_counter() - started, device=str(self.device),
                                final_loss=[h["loss"][-1] for h in histories])

    @method(MlipPredictRequest)
    def predict(self, request: MlipPredictRequest) -> MlipPrediction:
        if not self.trained:
            raise ServiceError("the MLIP has not been trained; call train first (or start the agent from a checkpoint)")
        structures = [s.to_atoms() for s in request.structures]
        param = next(self.committee.parameters())
        try:
            batch = make_batch(structures, self.committee.config.elements, self.committee.config.radial_cutoff_ang,
                               device=param.device, dtype=param.dtype)
        except ValueError as e:
            raise ServiceError(str(e)) from e
        stress = request.stress and all(s.periodic for s in request.structures)
        if request.stress and not stress:
            raise ServiceError("stress needs periodic structures")
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

def spawn_mlip_agent(options: dict, *, broker_address: str, service_name: str = "surrogate.mlip",
                     num_cpus: float = 1.0):
    """Start the MLIP agent as a Ray actor, with a GPU when the cluster has one free (then the
    committee trains and predicts on it: ``device: auto`` inside the actor sees CUDA)."""
    import ray

    from sdl.agents.actor import spawn_agent

    gpus = 1.0 if ray.available_resources().get("GPU", 0.0) >= 1.0 else 0.0
    return spawn_agent("mlip", options, broker_address=broker_address, service_name=service_name,
                       num_cpus=num_cpus, num_gpus=gpus)
