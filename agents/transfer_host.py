"""The transfer surrogate agent (``surrogate.transfer``): a Deep Sets model learned on another alloy
system (``sdl transfer pretrain``), adapted to this campaign's results and served on the bus.

Methods: ``fit`` (adapts the source model to the campaign's finished observations by the configured
regime, by default the new elements' embeddings and then every weight, and returns the observed point
with the best predicted value) and ``predict`` (ensemble mean and standard deviation of compositions,
before any fit the source model's own). It provides the ``recommendation`` capability, like the GP surrogate.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from sdl.agents.base import Agent, AgentContext
from sdl.agents.capabilities import FitRequest, FitSummary
from sdl.agents.surrogate_host import Prediction, PredictRequest
from sdl.bus import ServiceError, method
from sdl.settings import ResolvedPath, Section
from sdl.surrogates.deep_sets import DeepSetsEnsemble, TrainingSettings


class TransferSurrogateSettings(Section):
    source: ResolvedPath = Field(description="the Deep Sets checkpoint (source_model.pt of `sdl transfer pretrain`)")
    regime: Literal["embedding", "feature", "partial", "finetune", "embedding_finetune"] = Field(
        default="embedding_finetune", description=(
            "how the campaign's results adapt it: learn the embeddings of the elements the source never saw, "
            "retrain the head on the frozen encoder, fine-tune body and head, fine-tune every weight, or learn "
            "the new elements' embeddings and then fine-tune every weight (the best of the learning curves)"))
    training: TrainingSettings = TrainingSettings()


class TransferSurrogate(Agent):
    role = "surrogate"
    Settings = TransferSurrogateSettings
    provides = frozenset({"recommendation"})
    default_timeout_s = 300.0  # a fit trains every ensemble member

    @classmethod
    def check(cls, settings: TransferSurrogateSettings, context: AgentContext) -> None:
        space = context.require_space("the transfer surrogate", composition_only=True)
        source = DeepSetsEnsemble.load(settings.source)
        source.descriptors(list(space.composition.elements))
        try:
            source.check_regime(settings.regime, list(space.composition.elements))
        except ValueError as e:
            raise ValueError(f"{settings.source.name}: {e}") from None

    def __init__(self, settings: TransferSurrogateSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        self.elements = list(context.require_space("the transfer surrogate", composition_only=True).composition.elements)
        self.source = DeepSetsEnsemble.load(settings.source)
        self.model = self.source
        self.n_train = 0

    def details(self) -> dict:
        return {"model": "deep_sets", "property": self.source.property_name, "trained_on": self.model.trained_on,
                "regime": self.settings.regime, "n_train": self.n_train}

    def _fractions(self, points) -> np.ndarray:
        return np.array([[p.composition[e] for e in self.elements] for p in points])

    @method(FitRequest)
    def fit(self, request: FitRequest) -> FitSummary:
        if request.objective != self.source.property_name:  # adapted in the source's units: the same quantity only
            raise ServiceError(f"the transfer model predicts {self.source.property_name}; it cannot be fitted to "
                               f"{request.objective!r}")
        usable = [o for o in request.observations if o.status == "done" and request.objective in o.measurements]
        if len(usable) < 2:
            raise ServiceError(f"need at least 2 finished observations of {request.objective!r}, got {len(usable)}")
        x = self._fractions([o.point for o in usable])
        y = np.array([o.measurements[request.objective] for o in usable])
        self.model = self.source.fit(self.elements, x, y, regime=self.settings.regime, training=self.settings.training,
                                     seed=self.context.seed)
        self.n_train = len(usable)
        mean, sd = self.model.predict(self.elements, x)
        best = int(np.argmin(mean) if request.direction == "minimize" else np.argmax(mean))
        return FitSummary(n_train=len(usable), recommended=usable[best].point, recommended_mean=float(mean[best]),
                          recommended_std=float(sd[best]))

    @method(PredictRequest)
    def predict(self, request: PredictRequest) -> Prediction:
        mean, sd = self.model.predict(self.elements, self._fractions(request.points))
        return Prediction(mean=mean.tolist(), std=sd.tolist())
