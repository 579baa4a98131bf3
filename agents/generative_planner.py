"""The generative planner (``planner.generative``): alloys drawn for a target property from a
conditional VAE whose decoder ends in the capped-simplex projection.

Every proposal retrains the composition CVAE (:mod:`sdl.surrogates.generative`) from scratch on
what is known: a prior (the twin's alloys, labelled by its textbook route, and past campaigns'
specimens) and the campaign's own results, conditioned on (objective, feasible). It then asks for
the target value (the objective's ``target``, or the best result so far stretched by ``stretch``)
with feasible = 1, and proposes the drawn alloys farthest from what was already made. Every
proposal lies inside the element bounds and sums to 1 by construction, and the planner stays a
pure function of its request (the training seed is the campaign position).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from sdl.agents.base import AgentContext
from sdl.agents.generative_host import composition_points, history_composition_data
from sdl.agents.planner import Planner, ProposeRequest, SobolPlanner
from sdl.experiment import DesignPoint
from sdl.objective import ConstraintConfig
from sdl.settings import NoSettings, ResolvedPath, Section
from sdl.surrogates.generative import CompositionData, train_composition_cvae, twin_composition_data

TWIN_OBJECTIVE = "hardness_hv"  # what the twin's prior data measure


class GenerativePlannerSettings(Section):
    target: float | None = Field(default=None, description="objective value to generate for (default: the "
                                                           "campaign's objective.target, else the best so far stretched)")
    stretch: float = Field(default=0.05, ge=0.0, le=1.0, description="without a target: ask for best x (1 + stretch)")
    twin_samples: int = Field(default=1024, ge=0, le=1_000_000,
                              description="prior alloys labelled by the twin (0: none; the objective must be hardness_hv)")
    history: list[ResolvedPath] = Field(default_factory=list,
                                        description="past campaign directories it also learns from")
    constraint: ConstraintConfig | None = Field(
        default=None, description="what makes a result feasible (default: no brittle phase seen by XRD)")
    initial_points: int = Field(default=4, ge=1, description="Sobol' points first, when there is no prior")
    epochs: int = Field(default=150, ge=1, le=100_000)
    candidates: int = Field(default=256, ge=1, le=100_000, description="alloys drawn per proposal")


class GenerativePlanner(Planner):
    name = "generative"
    Settings = GenerativePlannerSettings

    @classmethod
    def check(cls, settings: GenerativePlannerSettings, context: AgentContext) -> None:
        context.require_space("the generative planner", composition_only=True)
        if settings.twin_samples and context.objective.measurement != TWIN_OBJECTIVE:
            raise ValueError(f"twin_samples label alloys by {TWIN_OBJECTIVE}; the objective is "
                             f"{context.objective.measurement} (set twin_samples: 0)")

    def __init__(self, settings: GenerativePlannerSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        self.check(settings, context)
        comp = self.space.composition
        self.elements = list(comp.elements)
        self.low = [comp.elements[e][0] for e in self.elements]
        self.high = [comp.elements[e][1] for e in self.elements]
        self.objective = context.objective
        self.prior = self._prior()
        self.initial = SobolPlanner(NoSettings(), context)

    def _prior(self) -> CompositionData | None:
        parts = history_composition_data(self.settings.history, self.elements, objective=self.objective.measurement)
        if self.settings.twin_samples:
            from sdl.env.calphad import default_cache_path
            from sdl.env.twin import AlloyTwin

            twin = AlloyTwin(cache_path=default_cache_path())
            try:
                parts.insert(0, twin_composition_data(twin, self.space, self.settings.twin_samples, seed=self.seed))
            finally:
                twin.close()
        if not parts:
            return None
        prior = parts[0]
        for part in parts[1:]:
            prior = prior + part
        return prior

    def _feasible(self, measurements: dict[str, float]) -> float:
        if self.settings.constraint is not None:
            return float(self.settings.constraint.satisfied(measurements) is not False)
        return 0.0 if measurements.get("xrd_brittle_detected", 0.0) > 0.5 else 1.0

    def propose(self, request: ProposeRequest) -> list[DesignPoint]:
        name = self.objective.measurement
        done = [o for o in request.observations if o.status == "done" and name in o.measurements]
        if self.prior is None and len(done) < self.settings.initial_points:
            return self.initial.propose(request)
        position = len(request.observations) + len(request.pending)
        data = self.prior
        if done:
            ours = CompositionData(self.elements, np.array([[o.point.composition[e] for e in self.elements] for o in done]),
                                   np.array([[o.measurements[name], self._feasible(o.measurements)] for o in done]),
                                   [name, "feasible"])
            data = ours if data is None else data + ours
        model = train_composition_cvae(data, self.low, self.high, epochs=self.settings.epochs, batch_size=64,
                                       seed=self.seed * 1_000_003 + position)
        target = self._target(done)
        condition = torch.tensor([[target, 1.0]], dtype=torch.float32).expand(self.settings.candidates, -1)
        drawn = composition_points(model.sample(condition, torch.Generator().manual_seed(self.seed + position)),
                                   self.space)
        made = [o.point for o in request.observations] + list(request.pending)
        chosen = _farthest(self._array(drawn), self._array(made), request.n)
        self.predicted = [{f"{name}_target": target} for _ in chosen]
        return [drawn[i] for i in chosen]

    def _array(self, points: list[DesignPoint]) -> np.ndarray:
        return np.array([[p.composition[e] for e in self.elements] for p in points]).reshape(-1, len(self.elements))

    def _target(self, done) -> float:
        if self.settings.target is not None:
            return self.settings.target
        if self.objective.target is not None:
            return self.objective.target
        values = [o.measurements[self.objective.measurement] for o in done]
        if not values:
            values = self.prior.conditions[:, 0].tolist()
        best = self.objective.best(values)
        sign = 1.0 if self.objective.direction == "maximize" else -1.0
        return best + sign * self.settings.stretch * abs(best)


def _farthest(candidates: np.ndarray, made: np.ndarray, n: int) -> list[int]:
    """Greedy max-min selection: each pick is the candidate farthest (max |dx|) from the made alloys
    and the earlier picks, so a batch spreads out and nothing is made twice."""
    chosen: list[int] = []
    reference = made
    for _ in range(min(n, len(candidates))):
        if len(reference):
            distance = np.abs(candidates[:, None, :] - reference[None, :, :]).max(-1).min(-1)
        else:
            distance = np.zeros(len(candidates))
        distance[chosen] = -np.inf
        pick = int(np.argmax(distance)) if len(reference) else len(chosen)
        chosen.append(pick)
        reference = np.vstack([reference, candidates[pick:pick + 1]]) if len(reference) else candidates[pick:pick + 1]
    return chosen
