"""The generative agent (``surrogate.generative``): constrained alloys and microstructures on the bus,
on a GPU where the cluster has one.

Methods: ``generate`` (compositions for target conditions, from the conditional VAE whose decoder
ends in the capped-simplex projection) and ``microstructure`` (two-phase fields whose phase
fraction is exactly the one asked for, or the gamma-prime fraction the twin's CALPHAD predicts for
an alloy at a temperature). The models are plain torch (:mod:`sdl.surrogates.generative`); this
module trains them at start-up (the composition model) or on first use (the field model) and
serves them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (start-up import; see agents/mlip_host.py)
from pydantic import Field

from sdl.config import _Section
from sdl.protocol import (DesignPoint, GeneratedCompositions, GenerateRequest, MicrostructureFields,
                          MicrostructureRequest, Composition)
from sdl.service import Service, ServiceError, method
from sdl.space import SearchSpace
from sdl.surrogates.generative import (ledger_composition_data, train_composition_cvae, train_microstructure_vae,
                                       twin_composition_data, two_phase_fields)
from sdl.surrogates.mlip import choose_device


class GenerativeSettings(_Section):
    twin_samples: int = Field(default=4096, ge=64, le=1_000_000, description="twin alloys the composition model learns from")
    history: list[str] = Field(default_factory=list, description="campaign directories whose specimens it also learns from")
    epochs: int = Field(default=300, ge=1, le=100_000)
    field_size: int = Field(default=64, ge=16, le=512, description="microstructure fields are size x size pixels")
    field_samples: int = Field(default=2048, ge=16, le=100_000)
    field_epochs: int = Field(default=20, ge=1, le=10_000)
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    seed: int = 0


class GenerativeService(Service):
    kind = "surrogate"

    def __init__(self, *, space: SearchSpace | dict, settings: GenerativeSettings | dict | None = None) -> None:
        from sdl.env.twin import AlloyTwin

        self.space = SearchSpace.model_validate(space)
        if self.space.composition is None:
            raise ValueError("the generative agent makes compositions; the space has none")
        self.settings = GenerativeSettings.model_validate(settings or {})
        self.device = choose_device(self.settings.device)
        self.twin = AlloyTwin()
        comp = self.space.composition
        elements = list(comp.elements)
        data = twin_composition_data(self.twin, self.space, self.settings.twin_samples, seed=self.settings.seed)
        for directory in self.settings.history:
            data = data + ledger_composition_data(directory, elements)
        self.conditions = data.condition_names
        self.elements = elements
        self.model = train_composition_cvae(data, [comp.elements[e][0] for e in elements],
                                            [comp.elements[e][1] for e in elements], epochs=self.settings.epochs,
                                            seed=self.settings.seed, device=str(self.device))
        self.field_model = None

    def details(self) -> dict:
        return {"elements": self.elements, "conditions": self.conditions, "device": str(self.device),
                "microstructure_trained": self.field_model is not None}

    @method(GenerateRequest)
    def generate(self, request: GenerateRequest) -> GeneratedCompositions:
        missing = sorted(set(self.conditions) - set(request.target))
        unknown = sorted(set(request.target) - set(self.conditions))
        if missing or unknown:
            raise ServiceError(f"target needs exactly the conditions {self.conditions}; missing {missing}, unknown {unknown}")
        row = torch.tensor([[request.target[c] for c in self.conditions]], dtype=torch.float32, device=self.device)
        x = self.model.sample(row.expand(request.n, -1), torch.Generator().manual_seed(request.seed)).double().cpu()
        balance = self.space.composition.balance_element
        points = []
        for fractions in x.numpy():
            values = dict(zip(self.elements, fractions.tolist()))
            # the projection meets the sum to ~1e-7; the balance element takes the exact remainder
            values[balance] = 1.0 - sum(v for e, v in values.items() if e != balance)
            points.append(DesignPoint(composition=Composition(values)))
        return GeneratedCompositions(points=points, conditions=self.conditions)

    @method(MicrostructureRequest)
    def microstructure(self, request: MicrostructureRequest) -> MicrostructureFields:
        fraction = request.fraction
        if fraction is None:
            lo, hi = self.twin.temperature_range_k
            if not lo <= request.temperature_k <= hi:
                raise ServiceError(f"temperature {request.temperature_k} K is outside the twin's {lo}-{hi} K")
            try:
                fraction = float(self.twin.equilibrium([request.composition.root], request.temperature_k)["gamma_prime"][0])
            except ValueError as e:
                raise ServiceError(str(e)) from e
            if not 0.0 < fraction < 1.0:
                raise ServiceError(f"CALPHAD puts the gamma-prime fraction at {fraction:.3f} there: no two-phase field")
        if self.field_model is None:
            s = self.settings
            fields, fractions = two_phase_fields(s.field_samples, s.field_size, seed=s.seed)
            self.field_model = train_microstructure_vae(fields, fractions, epochs=s.field_epochs, seed=s.seed,
                                                        device=str(self.device))
        f = torch.full((request.n,), fraction, dtype=torch.float32, device=self.device)
        rho = self.field_model.sample(f, torch.Generator().manual_seed(request.seed)).cpu().numpy().astype(np.float64)
        return MicrostructureFields(fraction=fraction, fields=rho.tolist())


def spawn_generative_agent(options: dict, *, broker_address: str, service_name: str = "surrogate.generative",
                           num_cpus: float = 1.0):
    """Start the generative agent as a Ray actor, with a GPU when the cluster has one free."""
    import ray

    from sdl.agents.actor import spawn_agent

    gpus = 1.0 if ray.available_resources().get("GPU", 0.0) >= 1.0 else 0.0
    return spawn_agent("generative", options, broker_address=broker_address, service_name=service_name,
                       num_cpus=num_cpus, num_gpus=gpus)
