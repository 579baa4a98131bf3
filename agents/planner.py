"""Planner agents: which experiments to run next.

A planner is a pure function of the search space, its seed, and what the campaign tells it (finished
observations and pending points), so a restarted planner actor or a resumed campaign asks again and
gets the same answer. The ``k``-th proposal of a campaign is always the same point for a given seed,
where ``k`` counts observations plus pending experiments.

This module holds the model-free planners (``random``, ``sobol``) and the bus service that hosts
any planner; model-based planners (BO, causal, process) live beside it.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.stats import qmc

from sdl.protocol import DesignPoint, ProposeRequest, Proposal
from sdl.service import Service, ServiceError, method
from sdl.space import SearchSpace

# Give up when this many candidates in a row are rejected by the composition bounds.
MAX_REJECTED_DRAWS = 2**20


class Planner:
    """Proposes ``n`` points given the campaign's history."""

    name = "planner"

    def __init__(self, space: SearchSpace, *, seed: int = 0) -> None:
        self.space = space
        self.seed = seed
        # What the planner expects of each point of its last proposal (e.g. objective mean and sd);
        # empty for planners without a model.
        self.predicted: list[dict[str, float]] = []

    def propose(self, request: ProposeRequest) -> list[DesignPoint]:
        raise NotImplementedError


class RandomPlanner(Planner):
    """Uniform random points in the space (uniform on the bounded composition simplex)."""

    name = "random"

    def propose(self, request: ProposeRequest) -> list[DesignPoint]:
        position = len(request.observations) + len(request.pending)
        rng = np.random.default_rng([self.seed, position])
        points: list[DesignPoint] = []
        drawn = 0
        while len(points) < request.n:
            batch = max(64, 4 * (request.n - len(points)))
            accepted, _ = self.space.from_unit_cube(rng.random((batch, self.space.dimension)))
            points.extend(accepted)
            drawn += batch
            if drawn > MAX_REJECTED_DRAWS and not points:
                raise ValueError("the composition bounds leave almost no volume; widen them")
        return points[: request.n]


class SobolPlanner(Planner):
    """A scrambled Sobol' sequence (scipy.stats.qmc) over the space; the k-th point is fixed by the seed."""

    name = "sobol"

    def __init__(self, space: SearchSpace, *, seed: int = 0) -> None:
        super().__init__(space, seed=seed)
        self._sampler = qmc.Sobol(d=space.dimension, scramble=True, seed=seed)
        self._sequence: list[DesignPoint] = []  # accepted points, in order; a memo of a fixed sequence
        self._drawn = 0

    def propose(self, request: ProposeRequest) -> list[DesignPoint]:
        return self.points(len(request.observations) + len(request.pending), request.n)

    def points(self, start: int, n: int) -> list[DesignPoint]:
        """Points ``start`` .. ``start + n - 1`` of the seed's sequence (inside the space)."""
        position = start
        while len(self._sequence) < position + n:
            if self._drawn > MAX_REJECTED_DRAWS and not self._sequence:
                raise ValueError("the composition bounds leave almost no volume; widen them")
            # Doubling keeps the total a power of two, which Sobol' balance properties need.
            m = 6 if self._drawn == 0 else int(np.log2(self._drawn))
            accepted, _ = self.space.from_unit_cube(self._sampler.random_base2(m=m))
            self._drawn += 2**m
            self._sequence.extend(accepted)
        return self._sequence[position : position + n]


PLANNERS: dict[str, type[Planner]] = {"random": RandomPlanner, "sobol": SobolPlanner}


def make_planner(kind: str, space: SearchSpace, *, seed: int, settings: dict | None = None) -> Planner:
    """A planner by name; ``settings`` configure the model-based ones (``bo``: :class:`BoSettings`)."""
    if kind == "bo":
        from sdl.agents.bo_planner import BoPlanner  # botorch import only where it is used

        if settings is None:
            raise ValueError("the bo planner needs settings (at least its objectives)")
        return BoPlanner(space, seed=seed, settings=settings)
    if kind == "causal":
        from sdl.agents.causal_planner import CausalPlanner  # pyro import only where it is used

        if settings is None:
            raise ValueError("the causal planner needs settings (at least `history`, a past campaign directory)")
        return CausalPlanner(space, seed=seed, settings=settings)
    try:
        cls = PLANNERS[kind]
    except KeyError:
        raise ValueError(f"unknown planner {kind!r}; available: {', '.join(sorted([*PLANNERS, 'bo', 'causal']))}") from None
    return cls(space, seed=seed)


class PlannerService(Service):
    """Hosts a planner on the bus as ``planner.<kind>``; method ``propose``."""

    kind = "planner"

    def __init__(self, *, planner: str, space: SearchSpace | dict, seed: int = 0, settings: dict | None = None) -> None:
        self.space = SearchSpace.model_validate(space)
        self.planner = make_planner(planner, self.space, seed=seed, settings=settings)

    def details(self) -> dict:
        return {"planner": self.planner.name, "seed": self.planner.seed, "space": self.space.model_dump(mode="json")}

    @method(ProposeRequest)
    def propose(self, request: ProposeRequest) -> Proposal:
        started = time.perf_counter()
        try:
            points = self.planner.propose(request)
        except ValueError as e:
            raise ServiceError(str(e), code="invalid_payload") from e
        return Proposal(points=points, planner=self.planner.name, planner_seconds=time.perf_counter() - started,
                        predicted=self.planner.predicted)
