"""The generative agent (``surrogate.generative``): constrained alloys and microstructures on the bus,
on a GPU where the cluster has one (``num_gpus: auto``, its default).

Methods: ``generate`` (compositions for target conditions, from the conditional VAE whose decoder
ends in the capped-simplex projection) and ``microstructure`` (two-phase fields whose phase
fraction is exactly the one asked for, or the gamma-prime fraction the twin's CALPHAD predicts for
an alloy at a temperature). The models are plain torch (:mod:`sdl.surrogates.generative`); this
module trains them at start-up (the composition model) or on first use (the field model) and
serves them. The generative *planner* (:mod:`sdl.agents.generative_planner`) proposes a campaign's
experiments with the same composition model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, model_validator

from sdl.agents.base import Agent, AgentContext
from sdl.bus import ServiceError, method
from sdl.experiment import Composition, DesignPoint
from sdl.ledger import finished_experiments
from sdl.settings import ResolvedPath, Section
from sdl.space import SearchSpace
from sdl.surrogates.generative import (
    CompositionData,
    measured_composition_data,
    train_composition_cvae,
    train_microstructure_vae,
    twin_composition_data,
    two_phase_fields,
)
from sdl.surrogates.mlip import choose_device
from sdl.surrogates.projection import project_capped_simplex
from sdl.wire import WireModel


def history_composition_data(campaign_dirs: Sequence[str | Path], elements: Sequence[str], *,
                             objective: str = "hardness_hv") -> list[CompositionData]:
    """The finished specimens of past campaigns' ledgers as training data, one set per campaign."""
    return [measured_composition_data(((r.point.composition.root, r.result.measurements)
                                       for r in finished_experiments(d) if r.point.composition is not None),
                                      elements, objective=objective)
            for d in campaign_dirs]


def composition_points(fractions: torch.Tensor, space: SearchSpace) -> list[DesignPoint]:
    """Generated fractions (n x elements, in the space's element order) as design points. The model's
    float32 projection meets each bound to ~1e-7; the exact projection again in float64 puts every
    element inside its bounds, and the balance element takes the exact remainder."""
    comp = space.composition
    low = torch.tensor([lo for lo, _ in comp.elements.values()], dtype=torch.double)
    high = torch.tensor([hi for _, hi in comp.elements.values()], dtype=torch.double)
    x = project_capped_simplex(fractions.detach().double().cpu(), low, high, 1.0)
    points = []
    for row in x.tolist():
        values = dict(zip(comp.elements, row))
        values[comp.balance_element] = 1.0 - sum(v for e, v in values.items() if e != comp.balance_element)
        points.append(DesignPoint(composition=Composition(values)))
    return points


class GenerativeSettings(Section):
    twin_samples: int = Field(default=4096, ge=64, le=1_000_000, description="twin alloys the composition model learns from")
    history: list[ResolvedPath] = Field(default_factory=list,
                                        description="campaign directories whose specimens it also learns from")
    epochs: int = Field(default=300, ge=1, le=100_000)
    field_size: int = Field(default=64, ge=16, le=512, description="microstructure fields are size x size pixels")
    field_samples: int = Field(default=2048, ge=16, le=100_000)
    field_epochs: int = Field(default=20, ge=1, le=10_000)
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    seed: int = 0


class GenerateRequest(WireModel):
    """Alloys with these target conditions (e.g. hardness_hv: 280, feasible: 1)."""

    target: dict[str, float] = Field(min_length=1, description="a value for every condition the model was trained on")
    n: int = Field(default=16, ge=1, le=100_000)
    seed: int = 0


class GeneratedCompositions(WireModel):
    points: list[DesignPoint]
    conditions: list[str]


class MicrostructureRequest(WireModel):
    """Two-phase fields with a given second-phase fraction, or the one CALPHAD predicts for an alloy at a temperature."""

    fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    composition: Composition | None = None
    temperature_k: float | None = Field(default=None, gt=0.0, description="with composition: where to ask CALPHAD")
    n: int = Field(default=1, ge=1, le=64)
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> MicrostructureRequest:
        if (self.fraction is None) == (self.composition is None):
            raise ValueError("give either fraction or composition (with temperature_k)")
        if self.composition is not None and self.temperature_k is None:
            raise ValueError("a composition needs temperature_k: the fraction is CALPHAD's gamma-prime there")
        return self


class MicrostructureFields(WireModel):
    fraction: float = Field(description="second-phase (gamma-prime) area fraction every field has exactly")
    fields: list[list[list[float]]] = Field(description="n fields, rows x columns, density in [0, 1]")


class GenerativeAgent(Agent):
    role = "surrogate"
    Settings = GenerativeSettings
    default_num_gpus = "auto"

    @classmethod
    def check(cls, settings: GenerativeSettings, context: AgentContext) -> None:
        context.require_space("the generative agent", composition=True)

    def __init__(self, settings: GenerativeSettings, context: AgentContext) -> None:
        from sdl.env.calphad import default_cache_path
        from sdl.env.twin import AlloyTwin

        super().__init__(settings, context)
        self.space = context.require_space("the generative agent", composition=True)
        self.device = choose_device(settings.device)
        self.twin = AlloyTwin(cache_path=default_cache_path())
        comp = self.space.composition
        self.elements = list(comp.elements)
        data = twin_composition_data(self.twin, self.space, settings.twin_samples, seed=settings.seed)
        for past in history_composition_data(settings.history, self.elements):
            data = data + past
        self.conditions = data.condition_names
        self.model = train_composition_cvae(data, [comp.elements[e][0] for e in self.elements],
                                            [comp.elements[e][1] for e in self.elements], epochs=settings.epochs,
                                            seed=settings.seed, device=str(self.device))
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
        x = self.model.sample(row.expand(request.n, -1), torch.Generator().manual_seed(request.seed))
        return GeneratedCompositions(points=composition_points(x, self.space), conditions=self.conditions)

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

    def close(self) -> None:
        self.twin.close()
