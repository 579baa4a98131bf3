"""The surrogate-host agent: a surrogate model of the measured objective, served on the bus.

Methods: ``fit`` (on the campaign's observations; returns the observed point with the best
posterior mean, the usual recommendation under noise) and ``predict``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from sdl.protocol import FitRequest, FitSummary, Prediction, PredictRequest
from sdl.service import Service, ServiceError, method
from sdl.space import SearchSpace
from sdl.surrogates.gp import GaussianProcess

SURROGATES = {"gp": GaussianProcess}


class SurrogateHostService(Service):
    kind = "surrogate"

    def __init__(self, *, model: Literal["gp"] = "gp", space: SearchSpace | dict) -> None:
        if model not in SURROGATES:
            raise ValueError(f"unknown surrogate {model!r}; available: {', '.join(SURROGATES)}")
        self.model_name = model
        self.space = SearchSpace.model_validate(space)
        self.model = SURROGATES[model]()

    def details(self) -> dict:
        return {"model": self.model_name, "fitted": self.model.model is not None}

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
        return FitSummary(
            n_train=len(usable),
            recommended=usable[best].point,
            recommended_mean=float(mean[best]),
            recommended_std=float(std[best]),
        )

    @method(PredictRequest)
    def predict(self, request: PredictRequest) -> Prediction:
        if self.model.model is None:
            raise ServiceError("the surrogate has not been fitted; call fit first")
        mean, std = self.model.predict(self.space.to_unit_cube(request.points))
        return Prediction(mean=mean.tolist(), std=std.tolist())
