"""Bayesian-optimisation planner (BoTorch): which alloy to make next, under phase-stability constraints.

Model/acquisition split as in BoTorch. Inputs are the space's continuous parameters followed by
*every* element's mole fraction; the composition simplex is an equality constraint
(sum of fractions = 1) handed to ``optimize_acqf`` together with the element bounds, so proposals
lie on the simplex by construction, not by a penalty.

- Model: ``SingleTaskGP`` per objective (homoskedastic noise inferred: noise-aware), inputs
  normalised over the space's bounds, outcomes standardised. The GP sees the parameters and the
  *free* fractions only: the balance element is a linear function of them, and an ARD kernel over a
  redundant, collinear coordinate fits one lengthscale too many on a handful of points.
- Acquisition: noisy log expected improvement (``qLogNoisyExpectedImprovement``) over the feasible
  incumbents, or (``acquisition: ei``) plug-in log-EI over the best posterior mean at them, or
  log-NEHVI for several objectives; plus log P(feasible) per point. P(feasible) comes from the phase classifier
  learned on CALPHAD (sent with the request as a :class:`FeasibilityModel`) or from a GP on a
  measured constraint. Alternatively (``constraint_handling: penalty``) the objective itself is
  penalised by how far a measured constraint is violated.
- Batches: greedy sequential; each new point is chosen with the in-flight experiments and the
  points already chosen as pending points (``X_pending``), so an asynchronous campaign never asks
  twice for the same region.
- Deterministic for a seed: the initial design is the Sobol' planner's sequence and every random
  draw (restarts, QMC samples) is seeded by the seed and the campaign position.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import ChainedInputTransform, FilterFeatures, Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.optim import optimize_acqf
from botorch.optim.initializers import initialize_q_batch
from botorch.sampling import SobolQMCNormalSampler
from gpytorch.mlls import ExactMarginalLogLikelihood
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.stats import qmc

from sdl.agents.planner import Planner, SobolPlanner
from sdl.config import CausalPlannerConfig, ConstraintConfig, ObjectiveConfig, PlannerConfig, check_bo_options
from sdl.protocol import Composition, DesignPoint, FeasibilityModel, Observation, ProposeRequest
from sdl.space import SearchSpace
from sdl.surrogates.phase_classifier import log_probit_probability, polynomial_features
from sdl.surrogates.projection import project_capped_simplex

DTYPE = torch.double


class BoSettings(BaseModel):
    """How the BO planner works; the campaign config's ``planner`` section carries these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objectives: list[ObjectiveConfig] = Field(min_length=1, description="one: log-(N)EI; several: log-NEHVI")
    acquisition: Literal["nei", "ei"] = Field(
        default="nei", description="one objective: noisy log-EI (joint over the incumbents) or plug-in log-EI")
    feasibility: Literal["none", "classifier", "measured"] = "none"
    constraint: ConstraintConfig | None = Field(default=None, description="for feasibility 'measured' or penalty")
    update_classifier: bool = Field(
        default=False, description="update the CALPHAD classifier with each experiment's measured feasibility"
    )
    feasibility_exponent: float = Field(default=1.0, ge=0.0, le=10.0, description="EI x P(feasible)^exponent")
    constraint_handling: Literal["probability", "penalty"] = Field(
        default="probability", description="probability: log EI + log P(feasible); penalty: objective - weight x violation"
    )
    penalty_weight: float = Field(default=10.0, ge=0, description="objective standard deviations per unit violation")
    initial_points: int = Field(default=8, ge=2, description="Sobol' points before the first model")
    initial_design: Literal["sobol", "causal"] = Field(
        default="sobol", description="the first points: Sobol', or the causal planner's best guesses from a past ledger")
    causal: CausalPlannerConfig | None = None
    num_restarts: int = Field(default=8, ge=1)
    raw_samples: int = Field(default=512, ge=16)
    mc_samples: int = Field(default=128, ge=16)
    candidate_generator: Literal["sobol", "cvae"] = Field(
        default="sobol", description="starting candidates of the acquisition search: Sobol' points of the space, or "
                                     "half of them from a conditional VAE of the campaign's results (composition spaces)")

    @classmethod
    def from_config(cls, planner: PlannerConfig, objective: ObjectiveConfig) -> BoSettings:
        fields = planner.model_dump(include={"acquisition", "feasibility", "constraint", "constraint_handling",
                                             "penalty_weight",
                                             "update_classifier", "feasibility_exponent",
                                             "initial_points", "initial_design", "causal",
                                             "num_restarts", "raw_samples", "mc_samples", "candidate_generator"})
        return cls(objectives=[objective, *planner.extra_objectives], **fields)

    @model_validator(mode="after")
    def _consistent(self) -> BoSettings:
        check_bo_options(self.feasibility, self.constraint, self.constraint_handling, len(self.objectives),
                         self.update_classifier)
        if self.initial_design == "causal" and self.causal is None:
            raise ValueError("initial_design 'causal' needs the `causal` settings (at least `history`)")
        if self.candidate_generator == "cvae" and len(self.objectives) > 1:
            raise ValueError("candidate_generator 'cvae' conditions on one objective; use sobol with several")
        return self


class FeasibilityWeighted(AcquisitionFunction):
    """log acquisition + exponent x sum over the q points of log P(feasible): the hybrid EI x P(feasible)^exponent.

    An exponent above 1 is risk aversion: a failed specimen costs a furnace cycle, so a point at
    P = 0.5 must promise more improvement than EI x P alone asks.
    """

    def __init__(self, acquisition: AcquisitionFunction, log_feasibility, exponent: float = 1.0) -> None:
        super().__init__(model=acquisition.model)
        self.acquisition = acquisition
        self.log_feasibility = log_feasibility
        self.exponent = exponent

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.acquisition(X) + self.exponent * self.log_feasibility(X).sum(dim=-1)

    def set_X_pending(self, X_pending: torch.Tensor | None = None) -> None:
        self.acquisition.set_X_pending(X_pending)


class BoPlanner(Planner):
    name = "bo"

    def __init__(self, space: SearchSpace, *, seed: int = 0, settings: BoSettings | dict) -> None:
        super().__init__(space, seed=seed)
        self.settings = BoSettings.model_validate(settings)
        self.initial = SobolPlanner(space, seed=seed)
        if self.settings.candidate_generator == "cvae" and (space.composition is None or space.parameters):
            raise ValueError("candidate_generator 'cvae' generates compositions: it needs a composition-only space")
        self.warm_start = None
        if self.settings.initial_design == "causal":
            from sdl.agents.causal_planner import CausalPlanner

            self.warm_start = CausalPlanner(space, seed=seed, settings=self.settings.causal)
        self.columns = list(space.parameters) + (list(space.composition.elements) if space.composition else [])
        lows = [r.low for r in space.parameters.values()]
        highs = [r.high for r in space.parameters.values()]
        if space.composition is not None:
            lows += [lo for lo, _ in space.composition.elements.values()]
            highs += [hi for _, hi in space.composition.elements.values()]
        self.bounds = torch.tensor([lows, highs], dtype=DTYPE)
        self.equality_constraints = []
        # Columns the GP sees: everything but the balance element (see the module docstring).
        self.model_columns = torch.arange(len(self.columns))
        if space.composition is not None:
            self.model_columns = torch.tensor([i for i, name in enumerate(self.columns)
                                               if name != space.composition.balance_element])
            start = len(space.parameters)
            k = len(space.composition.elements)
            self.equality_constraints = [(torch.arange(start, start + k), torch.ones(k, dtype=DTYPE), 1.0)]

    # -- conversions ---------------------------------------------------------------------------

    def to_tensor(self, points: list[DesignPoint]) -> torch.Tensor:
        rows = []
        for p in points:
            row = [p.parameters[k] for k in self.space.parameters]
            if self.space.composition is not None:
                row += [p.composition[e] for e in self.space.composition.elements]
            rows.append(row)
        return torch.tensor(rows, dtype=DTYPE).reshape(len(points), len(self.columns))

    def to_point(self, x: torch.Tensor) -> DesignPoint:
        x = torch.minimum(torch.maximum(x.detach(), self.bounds[0]), self.bounds[1]).tolist()
        n = len(self.space.parameters)
        composition = None
        if self.space.composition is not None:
            comp = self.space.composition
            # SLSQP meets the equality only to ~1e-8, so a point on a bound can leave the balance
            # element just outside its own; the exact projection onto the bounded simplex puts it back.
            projected = project_capped_simplex(torch.tensor([x[n:]], dtype=DTYPE), self.bounds[0, n:],
                                               self.bounds[1, n:], 1.0)[0].tolist()
            fractions = dict(zip(comp.elements, projected))
            free = comp.free_elements
            fractions[comp.balance_element] = min(max(1.0 - math.fsum(fractions[e] for e in free), 0.0), 1.0)
            composition = Composition({e: fractions[e] for e in comp.elements})
        return DesignPoint(parameters=dict(zip(self.space.parameters, x[:n])), composition=composition)

    # -- models --------------------------------------------------------------------------------

    def _gp(self, x: torch.Tensor, y: torch.Tensor) -> SingleTaskGP:
        # Fitted from scratch each time: a planner is a pure function of its request, so a restarted
        # actor proposes what the lost one would have (about 0.6 s at 100 observations, 2 threads).
        keep = self.model_columns
        inputs = ChainedInputTransform(free=FilterFeatures(feature_indices=keep),
                                       normalize=Normalize(d=len(keep), bounds=self.bounds[:, keep]))
        model = SingleTaskGP(x, y, input_transform=inputs, outcome_transform=Standardize(m=y.shape[-1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # input-scaling and fit-restart warnings on small data sets
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model

    def _log_feasibility(self, request: ProposeRequest, done: list[Observation]):
        s = self.settings
        if s.constraint_handling == "penalty" or s.feasibility == "none":
            return None
        if s.feasibility == "classifier":
            if request.feasibility is None:
                raise ValueError("this planner weighs by a feasibility classifier, but the request carries none")
            model = request.feasibility
            if s.update_classifier and s.constraint is not None:
                labelled = [(o, s.constraint.satisfied(o.measurements)) for o in done]
                labelled = [(o, ok) for o, ok in labelled if ok is not None]
                if labelled:
                    model = update_classifier(model, self.columns, self.to_tensor([o.point for o, _ in labelled]),
                                              torch.tensor([float(ok) for _, ok in labelled], dtype=DTYPE))
            return classifier_log_probability(model, self.columns)
        rows = [(o, s.constraint.value(o.measurements)) for o in done]
        rows = [(o, v) for o, v in rows if v is not None]
        if len(rows) < 2:
            return None
        model = self._gp(self.to_tensor([o.point for o, _ in rows]),
                         torch.tensor([[v] for _, v in rows], dtype=DTYPE))
        c = s.constraint

        def log_probability(X: torch.Tensor) -> torch.Tensor:
            posterior = model.posterior(X)
            mean = posterior.mean.squeeze(-1)
            std = posterior.variance.clamp_min(1e-12).sqrt().squeeze(-1)
            out = torch.zeros_like(mean)
            if c.at_least is not None:
                out = out + torch.special.log_ndtr((mean - c.at_least) / std)
            if c.at_most is not None:
                out = out + torch.special.log_ndtr((c.at_most - mean) / std)
            return out

        return log_probability

    # -- proposing -----------------------------------------------------------------------------

    def _training_data(self, observations: list[Observation]) -> tuple[list[Observation], torch.Tensor]:
        s = self.settings
        names = [o.measurement for o in s.objectives]
        done = [o for o in observations if o.status == "done" and all(n in o.measurements for n in names)]
        y = torch.tensor([[o.measurements[n] for n in names] for o in done], dtype=DTYPE).reshape(len(done), len(names))
        signs = torch.tensor([1.0 if o.direction == "maximize" else -1.0 for o in s.objectives], dtype=DTYPE)
        y = y * signs  # BoTorch maximises
        if s.constraint_handling == "penalty" and len(done) > 1:
            violation = torch.tensor([s.constraint.violation(v) if (v := s.constraint.value(o.measurements)) is not None
                                      else 0.0 for o in done], dtype=DTYPE)
            y[:, 0] = y[:, 0] - s.penalty_weight * y[:, 0].std() * violation
        return done, y

    def propose(self, request: ProposeRequest) -> list[DesignPoint]:
        self.predicted = []
        done, y = self._training_data(request.observations)
        if len(done) < self.settings.initial_points:
            return self._initial_design(request)
        position = len(request.observations) + len(request.pending)
        torch.manual_seed(self.seed * 1_000_003 + position)
        x = self.to_tensor([o.point for o in done])
        model = self._gp(x, y)
        log_feasibility = self._log_feasibility(request, done)
        pending = self.to_tensor(request.pending) if request.pending else None
        chosen: list[torch.Tensor] = []
        feasible = self._observed_feasible(x, done, log_feasibility)
        generated = self._generated_candidates(x, y, feasible, seed=position) \
            if self.settings.candidate_generator == "cvae" else None
        for i in range(request.n):
            x_pending = torch.cat([t for t in ([pending] if pending is not None else []) + chosen], dim=0) \
                if (pending is not None or chosen) else None
            acquisition = self._acquisition(model, x, y, x_pending, feasible, seed=position + i)
            if log_feasibility is not None:
                acquisition = FeasibilityWeighted(acquisition, log_feasibility, self.settings.feasibility_exponent)
            chosen.append(self._optimize(acquisition, seed=position + i, generated=generated))
        return [self.to_point(c[0]) for c in chosen]

    def _observed_feasible(self, x: torch.Tensor, done: list[Observation], log_feasibility) -> torch.Tensor:
        """Which observations count as feasible incumbents: measured where a constraint is measured,
        else P(feasible) >= 0.5 from the classifier. Improvement is measured against feasible results
        only; an infeasible high value must not make the feasible region look worthless."""
        s = self.settings
        if s.constraint is not None and s.feasibility == "measured":
            verdicts = [s.constraint.satisfied(o.measurements) for o in done]
            return torch.tensor([v is not False for v in verdicts])
        if log_feasibility is not None:
            with torch.no_grad():
                return log_feasibility(x) >= math.log(0.5)
        return torch.ones(len(done), dtype=torch.bool)

    def _initial_design(self, request: ProposeRequest) -> list[DesignPoint]:
        """The Sobol' sequence; with a feasibility classifier, only its points with P(feasible) >= 0.5
        (an alloy CALPHAD says cannot be processed is not worth a first experiment either). With
        ``initial_design: causal``, the causal planner's best guesses from the past ledger instead."""
        if self.warm_start is not None:
            points = self.warm_start.propose(request)
            self.predicted = self.warm_start.predicted
            return points
        if self.settings.feasibility != "classifier" or request.feasibility is None:
            return self.initial.propose(request)
        position = len(request.observations) + len(request.pending)
        log_probability = classifier_log_probability(request.feasibility, self.columns)
        kept: list[DesignPoint] = []
        scanned = 0
        while len(kept) < position + request.n:
            chunk = self.initial.points(scanned, 256)
            scanned += len(chunk)
            with torch.no_grad():
                ok = log_probability(self.to_tensor(chunk)) >= math.log(0.5)
            kept.extend(p for p, good in zip(chunk, ok.tolist()) if good)
            if scanned > 64 * (position + request.n) and not kept:
                return self.initial.propose(request)  # the classifier rules out (almost) everything: ignore it
        return kept[position: position + request.n]

    def _acquisition(self, model, x, y, x_pending, feasible, *, seed: int) -> AcquisitionFunction:
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.settings.mc_samples]), seed=self.seed + seed)
        if y.shape[-1] == 1 and self.settings.acquisition == "nei" and feasible.any():
            # Improvement over the feasible incumbents sampled jointly with the candidate: a point
            # measured many times stops looking better than itself, so the search moves on (the
            # plug-in form below re-proposed one alloy up to 20 times on the twin).
            return qLogNoisyExpectedImprovement(model, X_baseline=x[feasible], sampler=sampler, X_pending=x_pending,
                                                prune_baseline=True, cache_root=False)
        if y.shape[-1] == 1:
            with torch.no_grad():
                mean = model.posterior(x).mean.squeeze(-1)
            # With no feasible result yet, any feasible point improves: P(feasible) does the steering.
            best_f = mean[feasible].max() if feasible.any() else mean.min()
            return qLogExpectedImprovement(model, best_f=best_f, sampler=sampler, X_pending=x_pending)
        x = x[feasible] if feasible.sum() >= 2 else x
        return qLogNoisyExpectedHypervolumeImprovement(model, ref_point=self.reference_point(y), X_baseline=x,
                                                       sampler=sampler, X_pending=x_pending, prune_baseline=True,
                                                       cache_root=False)

    def reference_point(self, y: torch.Tensor) -> list[float]:
        """The configured worst values (sign-flipped to maximisation), else the observed worst minus 10 % of the range."""
        ref = []
        for j, o in enumerate(self.settings.objectives):
            if o.reference is not None:
                ref.append(o.reference if o.direction == "maximize" else -o.reference)
            else:
                column = y[:, j]
                ref.append(float(column.min() - 0.1 * (column.max() - column.min()).clamp_min(1e-9)))
        return ref

    def _generated_candidates(self, x: torch.Tensor, y: torch.Tensor, feasible: torch.Tensor, *, seed: int) -> torch.Tensor:
        """Half the raw samples from a conditional VAE of the results so far, asked for the best
        feasible value: alloys like the best ones, each inside the bounds by the VAE's projection
        layer. Trained from scratch each call (a planner stays a pure function of its request)."""
        from sdl.surrogates.generative import CompositionData, train_composition_cvae

        comp = self.space.composition
        elements = list(comp.elements)
        index = [self.columns.index(e) for e in elements]
        data = CompositionData(elements, x[:, index].numpy(),
                               np.column_stack([y[:, 0].numpy(), feasible.numpy().astype(float)]), ["objective", "feasible"])
        model = train_composition_cvae(data, [comp.elements[e][0] for e in elements],
                                       [comp.elements[e][1] for e in elements], epochs=200, batch_size=64,
                                       seed=self.seed * 1_000_003 + seed)
        best = float(y[feasible, 0].max()) if feasible.any() else float(y[:, 0].max())
        n = self.settings.raw_samples // 2
        fractions = model.sample(torch.tensor([[best, 1.0]]).expand(n, -1),
                                 torch.Generator().manual_seed(self.seed + seed)).double()
        out = torch.zeros(n, len(self.columns), dtype=DTYPE)
        out[:, index] = fractions
        return out

    def _optimize(self, acquisition: AcquisitionFunction, *, seed: int, generated: torch.Tensor | None = None
                  ) -> torch.Tensor:
        s = self.settings
        # Starting points: Sobol' points of the space itself (on the simplex, inside the bounds),
        # and the generator's where one is used; BoTorch's initialize_q_batch keeps a good, diverse
        # subset as restarts.
        sobol_n = s.raw_samples - (0 if generated is None else len(generated))
        sampler = qmc.Sobol(d=self.space.dimension, scramble=True, seed=self.seed * 7919 + seed)
        raw: list[DesignPoint] = []
        while len(raw) < sobol_n:
            accepted, _ = self.space.from_unit_cube(sampler.random(s.raw_samples))
            raw.extend(accepted)
        raw_x = self.to_tensor(raw[:sobol_n])
        if generated is not None:
            raw_x = torch.cat([raw_x, generated])
        raw_x = raw_x.unsqueeze(1)
        with torch.no_grad():
            values = torch.cat([acquisition(chunk) for chunk in raw_x.split(128)])
        starts, _ = initialize_q_batch(raw_x, values, n=min(s.num_restarts, len(raw_x)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optimizer warnings are retried inside optimize_acqf
            candidate, _ = optimize_acqf(acquisition, bounds=self.bounds, q=1, num_restarts=len(starts),
                                         batch_initial_conditions=starts,
                                         equality_constraints=self.equality_constraints or None,
                                         options={"maxiter": 200})
        return candidate.detach()


def classifier_features(model: FeasibilityModel, columns: list[str]):
    """X (... x d, the planner's columns) -> the classifier's polynomial features; differentiable in X."""
    missing = [name for name in model.inputs if name not in columns]
    if missing:
        raise ValueError(f"the feasibility model needs inputs {missing} that the search space lacks")
    index = torch.tensor([columns.index(name) for name in model.inputs])
    low = torch.tensor(model.low, dtype=DTYPE)
    span = torch.tensor(model.span, dtype=DTYPE)
    return lambda X: polynomial_features((X[..., index] - low) / span, model.degree)


def classifier_log_probability(model: FeasibilityModel, columns: list[str]):
    """log P(feasible | X) from a classifier posterior; differentiable in X (... x d)."""
    features = classifier_features(model, columns)
    mean = torch.tensor(model.weight_mean, dtype=DTYPE)
    cov = torch.tensor(model.weight_covariance, dtype=DTYPE)

    def log_probability(X: torch.Tensor) -> torch.Tensor:
        phi = features(X)
        return log_probit_probability(phi @ mean, ((phi @ cov) * phi).sum(dim=-1).clamp_min(0.0))

    return log_probability


def update_classifier(model: FeasibilityModel, columns: list[str], x: torch.Tensor, labels: torch.Tensor,
                      *, iterations: int = 25) -> FeasibilityModel:
    """The classifier's posterior updated with experiments' measured feasibility (Laplace approximation).

    The CALPHAD-trained Gaussian posterior over the weights is the prior; each experiment adds a
    Bernoulli likelihood. Newton's method finds the new mode, the Hessian there gives the new
    covariance. Experiments land where the planner wants to go, which is where the boundary matters,
    so a few labels there correct the classifier more than many CALPHAD points elsewhere. Written
    here because the update must run inside the planner, on the posterior it was sent.
    """
    phi = classifier_features(model, columns)(x)
    prior_mean = torch.tensor(model.weight_mean, dtype=DTYPE)
    prior_precision = torch.linalg.inv(torch.tensor(model.weight_covariance, dtype=DTYPE))
    w = prior_mean.clone()
    for _ in range(iterations):
        p = torch.sigmoid(phi @ w)
        gradient = phi.T @ (labels - p) - prior_precision @ (w - prior_mean)
        hessian = (phi.T * (p * (1 - p))) @ phi + prior_precision
        step = torch.linalg.solve(hessian, gradient)
        w = w + step
        if step.abs().max() < 1e-8:
            break
    p = torch.sigmoid(phi @ w)
    covariance = torch.linalg.inv((phi.T * (p * (1 - p))) @ phi + prior_precision)
    covariance = 0.5 * (covariance + covariance.T)
    return model.model_copy(update={"weight_mean": w.tolist(), "weight_covariance": covariance.tolist()})


def feasibility_probability(model: FeasibilityModel, points: list[DesignPoint]) -> np.ndarray:
    """P(feasible) at design points, for reports and benchmarks."""
    columns = list(model.inputs)
    x = torch.tensor([[p.composition[e] if p.composition is not None and e in p.composition.root
                       else p.parameters[e] for e in columns] for p in points], dtype=DTYPE)
    with torch.no_grad():
        return classifier_log_probability(model, columns)(x).exp().numpy()
