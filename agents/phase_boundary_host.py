"""The phase-boundary simulator agent (``simulator.phase_boundary``): learns P(target phase state |
composition) from CALPHAD by active learning and hands the posterior to planners.

Method ``feasibility`` returns the current :class:`FeasibilityModel`, learning first
(``calphad_calls`` points, chosen by expected error reduction or least confidence) if it has not
yet; the CALPHAD equilibria are cached on disk, so a restarted agent relearns in seconds. It
provides the ``feasibility`` capability: a campaign whose planner weighs by P(feasible) asks it.
"""

from __future__ import annotations

import threading
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from sdl.agents.base import Agent, AgentContext
from sdl.agents.capabilities import FeasibilityRequest
from sdl.bus import ServiceError, method
from sdl.env.calphad import DEFAULT_DATABASE, default_cache_path
from sdl.env.phase_state import CalphadPhaseOracle, PhaseTarget
from sdl.settings import Section
from sdl.space import SearchSpace
from sdl.surrogates.phase_boundary import PhaseBoundaryLearner, candidate_pool
from sdl.surrogates.phase_classifier import FeasibilityModel
from sdl.wire import ErrorCode


class PhaseBoundarySettings(Section):
    """What the CALPHAD phase-boundary learner learns, and how."""

    target: PhaseTarget = PhaseTarget()
    database: str = Field(default=DEFAULT_DATABASE, description="path to a TDB file, or pycalphad:NAME")
    calphad_calls: int = Field(default=48, ge=4, le=2000, description="compositions labelled by CALPHAD")
    strategy: Literal["eer", "least_confidence", "random", "grid"] = "eer"
    degree: int = Field(default=3, ge=1, le=4, description="polynomial degree of the classifier's features")
    pool_size: int = Field(default=2048, ge=64, description="candidate compositions the learner chooses from")
    cache_path: str | None = Field(default=None, description="CALPHAD cache (default: ~/.cache/sdl)")

    @model_validator(mode="after")
    def _budget_fits_the_pool(self) -> PhaseBoundarySettings:
        if self.calphad_calls > self.pool_size:
            raise ValueError(f"calphad_calls {self.calphad_calls} exceeds pool_size {self.pool_size}: the learner "
                             "labels compositions from that pool")
        return self


class PhaseBoundaryAgent(Agent):
    role = "simulator"
    Settings = PhaseBoundarySettings
    provides = frozenset({"feasibility"})
    default_timeout_s = 900.0  # learning on a cold CALPHAD cache takes minutes

    @classmethod
    def check(cls, settings: PhaseBoundarySettings, context: AgentContext) -> None:
        context.require_space("the phase-boundary agent", composition_only=True)

    def __init__(self, settings: PhaseBoundarySettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        self.check(settings, context)
        comp = context.space.composition
        self.free = comp.free_elements
        self.oracle = CalphadPhaseOracle(self.free, comp.balance_element, settings.target, database=settings.database,
                                         cache_path=settings.cache_path or default_cache_path())
        bounds = np.array([comp.elements[e] for e in self.free])
        pool = candidate_pool(SearchSpace(composition=comp), settings.pool_size, seed=context.seed)
        self.learner = PhaseBoundaryLearner(self.oracle.label, pool, bounds, strategy=settings.strategy,
                                            degree=settings.degree, seed=context.seed)
        self._lock = threading.Lock()  # one learning run at a time, whichever slot asks

    def details(self) -> dict:
        return {"target": self.settings.target.model_dump(), "calphad_calls": self.learner.calls,
                "strategy": self.settings.strategy}

    @method(FeasibilityRequest)
    def feasibility(self, request: FeasibilityRequest) -> FeasibilityModel:
        budget = request.calphad_calls or self.settings.calphad_calls
        if budget > self.settings.pool_size:
            raise ServiceError(f"calphad_calls {budget} exceeds the candidate pool of {self.settings.pool_size}",
                               code=ErrorCode.INVALID_PAYLOAD)
        with self._lock:
            classifier = self.learner.run(max(budget, self.learner.calls))
            return FeasibilityModel.from_classifier(
                classifier, inputs=list(self.free), calphad_calls=self.learner.calls,
                target={"description": "single gamma at the solution temperature, no brittle phase at ageing",
                        **self.settings.target.model_dump()})

    def close(self) -> None:
        self.oracle.close()
