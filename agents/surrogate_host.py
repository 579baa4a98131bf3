"""The GP surrogate agent (``surrogate.gp``): a model of the measured objective, served on the bus.

Methods: ``fit`` (on the campaign's observations; returns the observed point with the best
posterior mean, the usual recommendation under noise) and ``predict``. It provides the
``recommendation`` capability: at the end of a campaign the loop asks it for the recommended point.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from sdl.agents.base import Agent, AgentContext
from sdl.agents.capabilities import FitRequest, FitSummary
from sdl.bus import ServiceError, method
from sdl.experiment import DesignPoint
from sdl.settings import NoSettings
from sdl.surrogates.gp import GaussianProcess
from sdl.wire import WireModel


class PredictRequest(WireModel):
    points: list[DesignPoint] = Field(min_length=1)


class Prediction(WireModel):
    mean: list[float]
    std: list[float]


class GpSurrogate(Agent):
    role = "surrogate"
    Settings = NoSettings
    provides = frozenset({"recommendation"})

    @classmethod
    def check(cls, settings: NoSettings, context: AgentContext) -> None:
        context.require_space("the GP surrogate")

    def __init__(self, settings: NoSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        self.space = context.require_space("the GP surrogate")
        self.model = GaussianProcess()

    def details(self) -> dict:
        return {"model": "gp", "fitted": self.model.model is not None}

    @method(FitRequest)
    def fit(self, request: FitRequest) -> FitSummary:
        usable = [o for o in request.observations if o.status == "done" and request.objective in o.measurements]
        if len(usable) < 2:
            raise ServiceError(f"need at least 2 finished observations of {request.objective!r}, got {len(usable)}")
        x = self.space.to_unit_cube([o.point for o in usable])
        y = np.array([o.measurements[request.objective] for o in usable])
        self.model.fit(x, y)
        mean, std = self.model.predict(x)
        best = int(np.argmin(mean) if request.direction == "minimize" else np.argmax(mean))
        return FitSummary(n_train=len(usable), recommended=usable[best].point, recommended_mean=float(mean[best]),
                          recommended_std=float(std[best]))

    @method(PredictRequest)
    def predict(self, request: PredictRequest) -> Prediction:
        if self.model.model is None:
            raise ServiceError("the surrogate has not been fitted; call fit first")
        mean, std = self.model.predict(self.space.to_unit_cube(request.points))
        return Prediction(mean=mean.tolist(), std=std.tolist())
