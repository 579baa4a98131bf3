"""The causal planner (``planner.causal``): alloys ranked by what making them would give.

It learns a structural causal model (:mod:`sdl.surrogates.causal`) from a past campaign's ledger,
then scores candidate compositions by E[objective | do(composition = c)] with its posterior sd,
so the confounding in the history (which alloys got which heat treatment) does not steer it.
Used as a campaign's planner (``planner: {kind: causal, causal: {...}}``) or as the BO planner's
warm start (``planner: {kind: bo, initial_design: causal, causal: {...}}``): its best guesses replace
the first Sobol' points.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import qmc

from sdl.agents.planner import Planner
from sdl.config import CausalPlannerConfig
from sdl.protocol import DesignPoint, ProposeRequest
from sdl.space import SearchSpace
from sdl.surrogates.causal import CausalGraph, ledger_frame, load_causal_config


class CausalPlanner(Planner):
    name = "causal"

    def __init__(self, space: SearchSpace, *, seed: int = 0, settings: CausalPlannerConfig | dict) -> None:
        super().__init__(space, seed=seed)
        self.settings = CausalPlannerConfig.model_validate(settings)
        config = load_causal_config(self.settings.graph_config)
        if space.composition is None:
            raise ValueError("the causal planner proposes compositions; the space has none")
        if sorted(space.composition.elements) != sorted(config.elements) or space.composition.balance_element != config.balance:
            raise ValueError(f"the space's elements {sorted(space.composition.elements)} (balance "
                             f"{space.composition.balance_element}) differ from the causal graph's {sorted(config.elements)} "
                             f"(balance {config.balance})")
        self.config = config
        self.graph = CausalGraph(config.graph)
        unknown = sorted(set(self.settings.fixed) - set(self.graph.observed))
        if unknown:
            raise ValueError(f"cannot hold {unknown} fixed: not variables of the graph {self.graph.observed}")
        # Fewer posterior draws than an effect estimate uses: a proposal scores hundreds of alloys.
        config = config.model_copy(update={"mechanisms": config.mechanisms.model_copy(
            update={"posterior_samples": self.settings.posterior_samples})})
        self.scm = config.causal_model().fit(ledger_frame(self.settings.history))
        self.free = [e for e in space.composition.elements if e != space.composition.balance_element]
        self.predicted: list[dict[str, float]] = []

    def score(self, points: list[DesignPoint]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of E[outcome | do(composition, fixed)] for each point."""
        variables = {f"x_{e}": np.array([p.composition[e] for p in points]) for e in self.free
                     if f"x_{e}" in self.graph.observed}
        variables.update({k: np.full(len(points), v) for k, v in self.settings.fixed.items()})
        draws = self.scm.interventional_means(variables, self.config.outcome,
                                              rows_per_candidate=self.settings.rows_per_candidate, seed=self.seed)
        return draws.mean(0), draws.std(0)

    def propose(self, request: ProposeRequest) -> list[DesignPoint]:
        position = len(request.observations) + len(request.pending)
        sampler = qmc.Sobol(d=self.space.dimension, scramble=True, seed=np.random.default_rng([self.seed, position]))
        candidates: list[DesignPoint] = []
        while len(candidates) < self.settings.candidates:
            accepted, _ = self.space.from_unit_cube(sampler.random(self.settings.candidates))
            candidates.extend(accepted)
        candidates = candidates[: self.settings.candidates]
        mean, std = self.score(candidates)
        order = np.argsort(-(mean + self.settings.exploration * std), kind="stable")
        made = [o.point for o in request.observations] + list(request.pending)
        taken: list[int] = []
        for i in order:
            near = [p for p in made + [candidates[j] for j in taken]
                    if p.composition is not None and max(abs(p.composition[e] - candidates[i].composition[e])
                                                         for e in self.free) < self.settings.min_distance]
            if not near:
                taken.append(int(i))
            if len(taken) == request.n:
                break
        outcome = self.config.outcome
        self.predicted = [{outcome: float(mean[i]), f"{outcome}_std": float(std[i])} for i in taken]
        return [candidates[i] for i in taken]
