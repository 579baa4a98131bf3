"""Planner agents: which experiments to run next.

A planner is a pure function of the search space, its seed, its settings and what the campaign tells
it (finished observations and pending points), so a restarted planner actor or a resumed campaign
asks again and gets the same answer. The ``k``-th proposal of a campaign is always the same point
for a given seed, where ``k`` counts observations plus pending experiments.

This module holds the planner contract (:class:`Planner`, the ``propose`` messages and the bus
service that hosts any planner) and the model-free planners (``random``, ``sobol``); each
model-based planner is its own module beside it (``bo_planner``, with its ``bo_settings`` and
``bo_acquisition``; ``causal_planner``, ``generative_planner``, ``peer_planners``).
"""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
from pydantic import Field
from scipy.stats import qmc

from sdl.agents.base import AgentContext, AgentKind
from sdl.agents.registry import agent_class, qualified, validate_settings
from sdl.bus import Service, ServiceError, method
from sdl.experiment import DesignPoint, Observation
from sdl.ledger.documents import ModelTrained
from sdl.settings import Section
from sdl.space import SearchSpace
from sdl.surrogates.phase_classifier import FeasibilityModel
from sdl.wire import ErrorCode, WireModel

# Give up when this many candidates in a row are rejected by the composition bounds.
MAX_REJECTED_DRAWS = 2**20


class ProposeRequest(WireModel):
    n: int = Field(ge=1, le=10_000)
    observations: list[Observation] = Field(default_factory=list)
    pending: list[DesignPoint] = Field(default_factory=list)
    feasibility: FeasibilityModel | None = Field(default=None, description="for planners that weigh by P(feasible)")


class Proposal(WireModel):
    points: list[DesignPoint]
    planner: str
    planner_seconds: float = Field(ge=0.0)
    predicted: list[dict[str, float]] = Field(
        default_factory=list, description="per point, what the planner expects (e.g. hardness_hv, hardness_hv_std)")
    trained: list[ModelTrained] = Field(
        default_factory=list, description="training rounds the planner had models run for this proposal (recorded)")


class Planner(AgentKind):
    """Proposes ``n`` points given the campaign's history. Built as ``Planner(settings, context)``."""

    role = "planner"
    name: ClassVar[str] = "planner"

    def __init__(self, settings: Section, context: AgentContext) -> None:
        self.settings = settings
        self.context = context
        self.space: SearchSpace = context.require_space(f"the {self.name} planner")
        self.seed = context.seed
        # What the planner expects of each point of its last proposal (e.g. objective mean and sd);
        # empty for planners without a model.
        self.predicted: list[dict[str, float]] = []
        # Training rounds it had models run for its last proposal (the campaign records them).
        self.trained: list[ModelTrained] = []

    @classmethod
    def check(cls, settings: Section, context: AgentContext) -> None:
        context.require_space(f"the {cls.name} planner")

    @classmethod
    def build(cls, settings: Section, context: AgentContext) -> Service:
        return PlannerService(cls(settings, context))

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

    def __init__(self, settings: Section, context: AgentContext) -> None:
        super().__init__(settings, context)
        self._sampler = qmc.Sobol(d=self.space.dimension, scramble=True, seed=self.seed)
        self._sequence: list[DesignPoint] = []  # accepted points, in order; a memo of a fixed sequence
        self._drawn = 0

    def propose(self, request: ProposeRequest) -> list[DesignPoint]:
        return self.points(len(request.observations) + len(request.pending), request.n)

    def points(self, start: int, n: int) -> list[DesignPoint]:
        """Points ``start`` .. ``start + n - 1`` of the seed's sequence (inside the space)."""
        while len(self._sequence) < start + n:
            if self._drawn > MAX_REJECTED_DRAWS and not self._sequence:
                raise ValueError("the composition bounds leave almost no volume; widen them")
            # Doubling keeps the total a power of two, which Sobol' balance properties need.
            m = 6 if self._drawn == 0 else int(np.log2(self._drawn))
            accepted, _ = self.space.from_unit_cube(self._sampler.random_base2(m=m))
            self._drawn += 2**m
            self._sequence.extend(accepted)
        return self._sequence[start : start + n]


def make_planner(kind: str, context: AgentContext, settings: Section | dict | None = None) -> Planner:
    """A planner of an installed kind (``bo`` or ``planner.bo``), built in this process, without a bus:
    what benchmarks and notebooks use. Its settings are validated by the kind's own model."""
    name = qualified(kind, "planner")
    cls = agent_class(name, role="planner")
    return cls(validate_settings(cls, settings, name=name), context)


class PlannerService(Service):
    """Hosts a planner on the bus (as ``planner.<kind>``); method ``propose``."""

    kind = "planner"

    def __init__(self, planner: Planner) -> None:
        self.planner = planner

    def details(self) -> dict:
        return {"planner": self.planner.name, "seed": self.planner.seed,
                "space": self.planner.space.model_dump(mode="json")}

    @method(ProposeRequest)
    def propose(self, request: ProposeRequest) -> Proposal:
        started = time.perf_counter()
        try:
            points = self.planner.propose(request)
        except ValueError as e:
            raise ServiceError(str(e), code=ErrorCode.INVALID_PAYLOAD) from e
        return Proposal(points=points, planner=self.planner.name, planner_seconds=time.perf_counter() - started,
                        predicted=self.planner.predicted, trained=self.planner.trained)
