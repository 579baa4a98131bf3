"""What a campaign asks of the agent that provides a capability (:data:`sdl.agents.base.Capability`).

A plugin that provides one serves the method named here with these messages, whatever else it does:

* ``feasibility`` -- method ``feasibility``: :class:`FeasibilityRequest` -> :class:`FeasibilityModel`,
  P(feasible) for planners that weigh by it (the CALPHAD phase-boundary simulator provides it);
* ``recommendation`` -- method ``fit``: :class:`FitRequest` -> :class:`FitSummary`, the observed point
  with the best posterior mean, asked at the end of a campaign (the GP surrogate);
* ``truth`` -- method ``evaluate``: :class:`EvaluateRequest` -> :class:`Evaluation`, noiseless values
  for benchmarks; planners never ask (the test-function simulator).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sdl.experiment import DesignPoint, Observation
from sdl.surrogates.phase_classifier import FeasibilityModel
from sdl.wire import WireModel

__all__ = ["EvaluateRequest", "Evaluation", "FeasibilityModel", "FeasibilityRequest", "FitRequest", "FitSummary"]


class FeasibilityRequest(WireModel):
    calphad_calls: int | None = Field(default=None, ge=1, description="learn until this many (default: configured)")


class FitRequest(WireModel):
    observations: list[Observation]
    objective: str
    direction: Literal["minimize", "maximize"] = "minimize"


class FitSummary(WireModel):
    n_train: int
    recommended: DesignPoint | None
    recommended_mean: float | None
    recommended_std: float | None


class EvaluateRequest(WireModel):
    points: list[DesignPoint] = Field(min_length=1)


class Evaluation(WireModel):
    values: list[dict[str, float]]
