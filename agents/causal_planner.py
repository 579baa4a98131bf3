"""The causal planner (``planner.causal``): alloys ranked by what making them would give.

It learns a structural causal model (:mod:`sdl.surrogates.causal`) from a past campaign's ledger,
then scores candidate compositions by E[objective | do(composition = c)] with its posterior sd,
so the confounding in the history (which alloys got which heat treatment) does not steer it.
Used as a campaign's planner (``planner: {kind: causal, settings: {history: DIR}}``) or as the BO
planner's warm start (``planner: {kind: bo, settings: {initial_design: causal, causal: {...}}}``):
its best guesses replace the first Sobol' points.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from pydantic import Field
from scipy.stats import qmc

from sdl.agents.base import AgentContext
from sdl.agents.planner import Planner, ProposeRequest
from sdl.experiment import Composition, DesignPoint, ExperimentResult
from sdl.ledger import LEDGER_FILENAME, Ledger, LedgerError, PlannedExperiment, finished_experiments
from sdl.settings import ResolvedPath, Section


class CausalSettings(Section):
    """What the causal planner learns from and how it ranks."""

    history: ResolvedPath = Field(description="a campaign run directory whose ledger the causal model learns from")
    graph_config: ResolvedPath = Field(default=Path("configs/causal.yaml"), validate_default=True,
                                       description="the causal graph and mechanism settings")
    exploration: float = Field(default=0.0, ge=0.0, le=10.0, description="rank by mean + exploration x sd")
    candidates: int = Field(default=256, ge=8, le=65_536, description="Sobol' candidates scored per proposal")
    rows_per_candidate: int = Field(default=32, ge=4, description="history rows the do() averages over per candidate")
    posterior_samples: int = Field(default=64, ge=10, le=10_000, description="posterior draws each score averages over")
    fixed: dict[str, float] = Field(
        default_factory=dict, description="variables also held by do(), e.g. the campaign's ageing temperature")
    min_distance: float = Field(default=0.01, ge=0.0, description="skip candidates this close (max |dx|) to made ones")


def history_frame(campaign_dir: str | Path):
    """One row per finished specimen of a campaign's ledger (:func:`sdl.surrogates.causal.specimen_frame`)."""
    from sdl.surrogates.causal import specimen_frame

    return specimen_frame((r.experiment_id, r.result.measurements, r.process)
                          for r in finished_experiments(campaign_dir))


def write_history(out_dir: str | Path, twin, n: int, seed: int = 0) -> Path:
    """Write the past practice's ``n`` specimens (:mod:`sdl.env.lab_history`: a confounded lab history
    from the twin) as a finished campaign ledger in ``out_dir``; return the ledger's path."""
    from sdl.env.lab_history import outcomes, past_practice

    out = Path(out_dir)
    if Ledger.exists_in(out):
        raise LedgerError(f"{out / LEDGER_FILENAME} exists; give a new directory")
    specimens = past_practice(n, seed)
    measured = outcomes(twin, specimens, seed=seed)
    tag = hashlib.sha256(f"history-{n}-{seed}".encode()).hexdigest()[:8]
    now = time.time()
    made = [(PlannedExperiment(f"h{i:05d}", DesignPoint(composition=Composition(s.composition)), tuple(s.route),
                               "past_practice", f"history-{tag}:h{i:05d}"),
             ExperimentResult(experiment_id=f"h{i:05d}", instrument="history", measurements=m,
                              started_at_unix_s=now, finished_at_unix_s=now))
            for i, (s, m) in enumerate(zip(specimens, measured), 1)]
    with Ledger.in_campaign(out, synchronous="normal") as ledger:
        ledger.set_meta(name="lab_history", practice="env/lab_history.py past_practice", seed=seed, n=n)
        ledger.import_finished(made, instrument="history")
    return out / LEDGER_FILENAME


class CausalPlanner(Planner):
    name = "causal"
    Settings = CausalSettings

    @classmethod
    def check(cls, settings: CausalSettings, context: AgentContext) -> None:
        from sdl.surrogates.causal import CausalGraph, load_causal_config
        from sdl.surrogates.identification import NotIdentifiable, simulation_check

        space = context.require_space("the causal planner", composition=True)
        config = load_causal_config(settings.graph_config)
        comp = space.composition
        if sorted(comp.elements) != sorted(config.elements) or comp.balance_element != config.balance:
            raise ValueError(f"the space's elements {sorted(comp.elements)} (balance {comp.balance_element}) differ "
                             f"from the causal graph's {sorted(config.elements)} (balance {config.balance})")
        graph = CausalGraph(config.graph)
        observed = graph.observed
        unknown = sorted(set(settings.fixed) - set(observed))
        if unknown:
            raise ValueError(f"cannot hold {unknown} fixed: not variables of the graph {observed}")
        # The planner scores alloys by simulating do(composition, fixed) with the SCM: refused at
        # config load, with the reason, where the graph does not let that simulation identify it.
        treatments = [*cls.treatments(comp.free_elements, observed), *settings.fixed]
        try:
            simulation_check(graph, treatments, config.outcome)
        except NotIdentifiable as e:
            raise ValueError(f"the causal planner cannot rank alloys by {config.outcome}: {e}") from None

    @staticmethod
    def treatments(free_elements, observed) -> list[str]:
        """The composition variables the planner sets by do(): x_<element> of every free element in the graph."""
        return [f"x_{e}" for e in free_elements if f"x_{e}" in observed]

    def __init__(self, settings: CausalSettings, context: AgentContext) -> None:
        from sdl.surrogates.causal import CausalGraph, load_causal_config

        super().__init__(settings, context)
        self.check(settings, context)
        config = load_causal_config(settings.graph_config)
        self.config = config
        self.graph = CausalGraph(config.graph)
        # Fewer posterior draws than an effect estimate uses: a proposal scores hundreds of alloys.
        config = config.model_copy(update={"mechanisms": config.mechanisms.model_copy(
            update={"posterior_samples": settings.posterior_samples})})
        self.scm = config.causal_model().fit(history_frame(settings.history))
        self.free = self.space.composition.free_elements

    def score(self, points: list[DesignPoint]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of E[outcome | do(composition, fixed)] for each point."""
        variables = {v: np.array([p.composition[v[2:]] for p in points])
                     for v in self.treatments(self.free, self.graph.observed)}
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
