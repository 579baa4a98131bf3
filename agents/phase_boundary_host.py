"""The phase-boundary simulator agent: learns P(target phase state | composition) from CALPHAD by
active learning and hands the posterior to planners.

Served as ``simulator.phase_boundary``. Method ``feasibility`` returns the current
:class:`FeasibilityModel`, learning first (``calphad_calls`` points, chosen by expected error
reduction or least confidence) if it has not yet; the CALPHAD equilibria are cached on disk, so a
restarted agent relearns in seconds.
"""

from __future__ import annotations

import threading
import numpy as np

from sdl.config import PhaseBoundaryConfig
from sdl.env.calphad import default_cache_path
from sdl.env.phase_state import CalphadPhaseOracle
from sdl.protocol import FeasibilityModel, FeasibilityRequest
from sdl.service import Service, ServiceError, method
from sdl.space import SearchSpace
from sdl.surrogates.phase_boundary import PhaseBoundaryLearner, candidate_pool


class PhaseBoundaryService(Service):
    kind = "simulator"

    def __init__(self, *, space: SearchSpace | dict, settings: PhaseBoundaryConfig | dict | None = None,
                 seed: int = 0) -> None:
        self.space = SearchSpace.model_validate(space)
        self.settings = PhaseBoundaryConfig.model_validate(settings or {})
        if self.space.composition is None:
            raise ValueError("the phase-boundary agent needs a search space with a composition")
        comp = self.space.composition
        self.free = comp.free_elements
        self.oracle = CalphadPhaseOracle(self.free, comp.balance_element, self.settings.target,
                                         database=self.settings.database,
                                         cache_path=self.settings.cache_path or default_cache_path())
        bounds = np.array([comp.elements[e] for e in self.free])
        pool = candidate_pool(SearchSpace(composition=comp), self.settings.pool_size, seed=seed)
        self.learner = PhaseBoundaryLearner(self.oracle.label, pool, bounds, strategy=self.settings.strategy,
                                            degree=self.settings.degree, seed=seed)
        self._lock = threading.Lock()  # one learning run at a time, whichever slot asks

    def details(self) -> dict:
        return {"target": self.settings.target.model_dump(), "calphad_calls": self.learner.calls,
                "strategy": self.settings.strategy}

    @method(FeasibilityRequest)
    def feasibility(self, request: FeasibilityRequest) -> FeasibilityModel:
        budget = request.calphad_calls or self.settings.calphad_calls
        if budget > self.settings.pool_size:
            raise ServiceError(f"calphad_calls {budget} exceeds the candidate pool of {self.settings.pool_size}",
                               code="invalid_payload")
        with self._lock:
            classifier = self.learner.run(max(budget, self.learner.calls))
            mean, cov = classifier.posterior_gaussian()
            low, span = classifier.scaling
            return FeasibilityModel(
                inputs=list(self.free), low=low.tolist(), span=span.tolist(),
                degree=classifier.degree, weight_mean=mean.tolist(), weight_covariance=cov.tolist(),
                calphad_calls=self.learner.calls,
                target={"description": "single gamma at the solution temperature, no brittle phase at ageing",
                        **self.settings.target.model_dump()},
            )
